//! `divert check` as users run it, against a fake API server: plain HTTP on
//! loopback, answering the exact paths a real API server serves with the
//! fixtures of `cli/testdata/check/` (certificates made fresh). This proves the
//! fetching side (the requests made, the service proxy paths of `/proxies`
//! and `/key-drops`, how answers and failures are read), the output and the
//! exit status; the judging is unit-tested in `cli/src/check.rs`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::core::ObjectList;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use serde_json::{Value, json};

mod common;
use common::{TempDir, free_port, kubeconfig};

const PROXIES_PATH: &str =
    "/api/v1/namespaces/divert/services/divert-controller:admin/proxy/proxies";
const COPIES_PATH: &str = "/api/v1/namespaces/divert/services/divert-controller:admin/proxy/copies";
const KEY_DROPS_PATH: &str =
    "/api/v1/namespaces/divert/services/divert-controller:admin/proxy/key-drops";

fn divert() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_divert"));
    for var in [
        "KUBECONFIG",
        "KUBERNETES_SERVICE_HOST",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

fn testdata(scenario: &str, file: &str) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/check");
    let path = dir.join(scenario).join(file);
    let path = if path.exists() {
        path
    } else {
        dir.join("healthy").join(file)
    };
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh CA and a serving certificate for the controller in `divert`, PEM.
fn tls() -> (String, String) {
    let now = time::OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "divert webhook CA (divert)");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(365);
    let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut params =
        CertificateParams::new(vec!["divert-controller.divert.svc".to_owned()]).expect("params");
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let cert = params.signed_by(&key, &ca).expect("certificate");
    (ca.pem(), cert.pem())
}

/// What the fake API server answers, by path (the query is ignored): the
/// status and the JSON body.
fn routes(scenario: &str) -> BTreeMap<String, (u16, String)> {
    let (ca, cert) = tls();
    let mut secret: Secret =
        serde_json::from_value(testdata(scenario, "secret.json")).expect("Secret");
    secret
        .data
        .get_or_insert_default()
        .insert("tls.crt".into(), ByteString(cert.into_bytes()));
    let mut webhook: MutatingWebhookConfiguration =
        serde_json::from_value(testdata(scenario, "mutatingwebhookconfiguration.json"))
            .expect("MutatingWebhookConfiguration");
    for w in webhook.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(ByteString(ca.clone().into_bytes()));
    }
    let ok = |v: Value| (200, v.to_string());
    let mut routes = BTreeMap::from([
        (
            "/version".to_owned(),
            ok(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.1",
                "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828", "gitTreeState": "clean",
                "buildDate": "2025-05-15T08:19:08Z", "goVersion": "go1.24.2",
                "compiler": "gc", "platform": "linux/amd64"
            })),
        ),
        (
            "/apis/apps/v1/namespaces/divert/deployments/divert-controller".to_owned(),
            ok(testdata(scenario, "deployment.json")),
        ),
        (
            "/api/v1/namespaces/divert/secrets/divert-webhook-tls".to_owned(),
            ok(serde_json::to_value(&secret).expect("JSON")),
        ),
        (
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/divert-injector"
                .to_owned(),
            ok(serde_json::to_value(&webhook).expect("JSON")),
        ),
        (
            "/api/v1/namespaces".to_owned(),
            ok(testdata(scenario, "namespaces.json")),
        ),
        (
            PROXIES_PATH.to_owned(),
            ok(testdata(scenario, "proxies.json")),
        ),
        (
            KEY_DROPS_PATH.to_owned(),
            ok(testdata(scenario, "key-drops.json")),
        ),
        (COPIES_PATH.to_owned(), ok(json!({"problems": []}))),
    ]);
    // Each namespace's pods, as the API server lists them.
    let namespaces: ObjectList<Namespace> =
        serde_json::from_value(testdata(scenario, "namespaces.json")).expect("NamespaceList");
    let pods = testdata(scenario, "pods.json");
    let all: ObjectList<Pod> = serde_json::from_value(pods.clone()).expect("PodList");
    for ns in namespaces
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
    {
        let items: Vec<&Pod> = all
            .items
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns.as_str()))
            .collect();
        let mut list = pods.clone();
        list["items"] = serde_json::to_value(items).expect("JSON");
        routes.insert(format!("/api/v1/namespaces/{ns}/pods"), ok(list));
        // No Ingresses or Services: the previews are empty.
        let empty = |kind: &str, api_version: &str| {
            ok(json!({"kind": kind, "apiVersion": api_version,
                      "metadata": {"resourceVersion": "1"}, "items": []}))
        };
        routes.insert(
            format!("/apis/networking.k8s.io/v1/namespaces/{ns}/ingresses"),
            empty("IngressList", "networking.k8s.io/v1"),
        );
        routes.insert(
            format!("/api/v1/namespaces/{ns}/services"),
            empty("ServiceList", "v1"),
        );
    }
    routes
}

fn status(code: u16, reason: &str, message: &str) -> String {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code
    })
    .to_string()
}

/// A fake API server on loopback (plain HTTP), serving `routes`; unknown
/// paths get the API server's 404 Status. Records each request's path and
/// query.
struct FakeApi {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    fn start(routes: BTreeMap<String, (u16, String)>) -> FakeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let routes = Arc::new(routes);
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let routes = routes.clone();
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req: hyper::Request<_>| {
                            let uri = req.uri().clone();
                            if let Ok(mut seen) = seen.lock() {
                                seen.push(
                                    uri.path_and_query()
                                        .map_or_else(|| uri.path().to_owned(), ToString::to_string),
                                );
                            }
                            let (code, body) =
                                routes.get(uri.path()).cloned().unwrap_or_else(|| {
                                    (
                                        404,
                                        status(
                                            404,
                                            "NotFound",
                                            &format!("{} not found", uri.path()),
                                        ),
                                    )
                                });
                            async move {
                                Ok::<_, Infallible>(
                                    hyper::Response::builder()
                                        .status(code)
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(body)))
                                        .expect("a response"),
                                )
                            }
                        });
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        FakeApi { addr, requests }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn check(server: &str, extra: &[&str]) -> Output {
    let dir = TempDir::new("run");
    let config = kubeconfig(&dir, server);
    divert()
        .arg("check")
        .arg("--kubeconfig")
        .arg(&config)
        .args(extra)
        .output()
        .expect("run divert check")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_healthy_cluster_passes_and_check_reads_only_what_it_needs() {
    let api = FakeApi::start(routes("healthy"));
    let out = check(&api.url(), &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for line in [
        "✔ the controller is running and ready",
        "✔ the webhook certificate is valid for more than 60 days",
        "✔ the webhook configuration trusts the certificate's CA",
        "✔ every divert namespace has its shared namespace",
        "✔ pods in opted-in namespaces run the proxy",
        "✔ every injected pod's proxy is connected to the controller",
        "✔ apps pass the divert key on",
        "✔ the controller made every preview copy and route",
        "All 8 checks passed.",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in:\n{stdout}"
        );
    }
    let mut paths: Vec<String> = api
        .requests()
        .into_iter()
        .map(|p| p.split('?').next().unwrap_or_default().to_owned())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces",
            "/api/v1/namespaces/alice/pods",
            "/api/v1/namespaces/alice/services",
            "/api/v1/namespaces/bob/pods",
            "/api/v1/namespaces/bob/services",
            "/api/v1/namespaces/divert/secrets/divert-webhook-tls",
            COPIES_PATH,
            KEY_DROPS_PATH,
            PROXIES_PATH,
            "/api/v1/namespaces/staging/pods",
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/divert-injector",
            "/apis/apps/v1/namespaces/divert/deployments/divert-controller",
            // The istio driver's gateway copies (404 here: no Istio).
            "/apis/networking.istio.io/v1/namespaces/alice/virtualservices",
            "/apis/networking.istio.io/v1/namespaces/bob/virtualservices",
            "/apis/networking.k8s.io/v1/namespaces/alice/ingresses",
            "/apis/networking.k8s.io/v1/namespaces/bob/ingresses",
            "/apis/networking.k8s.io/v1/namespaces/staging/ingresses",
            "/apis/networking.k8s.io/v1/namespaces/staging/ingresses",
            "/version",
        ]
    );
}

#[test]
fn failures_exit_1_and_json_says_which() {
    let api = FakeApi::start(routes("proxy-missing"));
    let out = check(&api.url(), &["--output", "json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    assert_eq!(report["namespace"], "divert");
    assert_eq!(report["passed"], false);
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["passed"] == false)
        .filter_map(|c| c["id"].as_str())
        .collect();
    assert_eq!(failed, ["proxies-connected"]);
}

#[test]
fn a_missing_install_fails_each_check_with_a_hint() {
    // An API server with nothing of Divert on it: every get is a 404.
    let mut routes = routes("healthy");
    routes.retain(|path, _| path == "/version" || path == "/api/v1/namespaces");
    let api = FakeApi::start(routes);
    let out = check(&api.url(), &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    for line in [
        "✘ the controller is running and ready",
        "    Deployment divert/divert-controller not found: Divert is not installed in namespace divert",
        "    hint: install it: divert install | kubectl apply -f -",
        "    Secret divert/divert-webhook-tls not found",
        "    MutatingWebhookConfiguration divert-injector not found: no pod is injected",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?} in:\n{stdout}"
        );
    }
    // The controller's /proxies through the service proxy: the API server's
    // 404 is reported with the path.
    assert!(
        stdout.contains(&format!("(GET {PROXIES_PATH}): 404 NotFound")),
        "{stdout}"
    );
}

#[test]
fn a_controller_the_api_server_cannot_reach_fails_the_proxies_check() {
    let mut routes = routes("healthy");
    routes.insert(
        PROXIES_PATH.to_owned(),
        (
            503,
            status(
                503,
                "ServiceUnavailable",
                "no endpoints available for service \"divert-controller:admin\"",
            ),
        ),
    );
    let api = FakeApi::start(routes);
    let out = check(&api.url(), &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("503 ServiceUnavailable: no endpoints available for service"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✘ every injected pod's proxy is connected to the controller"),
        "{stdout}"
    );
}

#[test]
fn an_unreachable_cluster_exits_2_saying_so() {
    let server = format!("http://127.0.0.1:{}", free_port());
    let out = check(&server, &[]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("cannot reach the Kubernetes API server"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    let out = check(&server, &["--output", "json"]);
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["passed"], false);
    assert!(
        report["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach")),
        "{report}"
    );
}

#[test]
fn an_api_server_that_never_answers_times_out_with_exit_2() {
    // Accepts connections and says nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let out = check(&format!("http://{addr}"), &["--timeout", "300ms"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stderr.contains("no answer within 300ms"), "{stderr}");
}

#[test]
fn a_missing_kubeconfig_exits_2_naming_it() {
    let out = divert()
        .args(["check", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .expect("run divert check");
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/kubeconfig"), "{stderr}");
}

#[test]
fn bad_flags_exit_64() {
    for (args, flag) in [
        (&["--output", "yaml"][..], "--output"),
        (&["--namespace", "Not_A_Namespace"][..], "--namespace"),
        (&["--timeout", "soon"][..], "--timeout"),
    ] {
        let out = divert()
            .arg("check")
            .args(args)
            .output()
            .expect("run divert check");
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}
