//! The admission webhook over real TLS: certificates made by openssl, the
//! webhook served by the controller's code, and curl posting a real
//! AdmissionReview as the API server would. Also: the certificate is rotated
//! on disk and the webhook serves the new one without a restart.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use divert_controller::copies::Feed;
use divert_controller::store::{Change, Store};
use divert_controller::webhook::{self, ReloadingCert, TlsFiles};
use divert_proto::discovery::v1 as pb;
use divert_tests::netns::run_ok;
use divert_tests::{TempDir, crate_dir, have_tool};
use kube::core::DynamicObject;
use kube::core::admission::AdmissionReview;
use serde_json::Value;
use tokio::net::TcpListener;

/// A CA and a serving certificate for localhost / 127.0.0.1 signed by it, as
/// `<prefix>-ca.pem`, `<prefix>-cert.pem`, `<prefix>-key.pem`.
fn make_certs(dir: &Path, prefix: &str) {
    let p = |s: &str| dir.join(format!("{prefix}-{s}")).display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                &format!("/CN={prefix} test CA"),
            ])
            .args(ec)
            .args(["-keyout", &p("ca-key.pem"), "-out", &p("ca.pem")]),
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-subj", "/CN=divert-controller.divert.svc"])
            .args(ec)
            .args(["-keyout", &p("key.pem"), "-out", &p("csr.pem")]),
    );
    let ext = dir.join(format!("{prefix}-ext.cnf"));
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").expect("ext");
    run_ok(Command::new("openssl").args([
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        &p("csr.pem"),
        "-CA",
        &p("ca.pem"),
        "-CAkey",
        &p("ca-key.pem"),
        "-CAcreateserial",
        "-extfile",
        &ext.display().to_string(),
        "-out",
        &p("cert.pem"),
    ]));
}

/// POSTs `review` to the webhook with curl, trusting `ca`; None if curl
/// could not complete the exchange (a TLS failure, say).
fn post(port: u16, ca: &Path, review: &Value) -> Option<AdmissionReview<DynamicObject>> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--fail", "--cacert"])
        .arg(ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("https://localhost:{port}/inject"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(review.to_string().as_bytes())?;
            }
            child.wait_with_output()
        })
        .expect("run curl");
    if !out.status.success() {
        return None;
    }
    Some(serde_json::from_slice(&out.stdout).expect("an AdmissionReview comes back"))
}

fn review() -> Value {
    let text = std::fs::read_to_string(crate_dir().join("fixtures/admission-review-pod.json"))
        .expect("fixture");
    serde_json::from_str(&text).expect("fixture parses")
}

/// The pod after applying the response's JSON patch to the request's pod.
fn patched_pod(request: &Value, response: &AdmissionReview<DynamicObject>) -> Option<Value> {
    let resp = response.response.as_ref().expect("a response");
    assert!(resp.allowed, "{resp:?}");
    let patch = resp.patch.as_ref()?;
    let patch: json_patch::Patch = serde_json::from_slice(patch).expect("a JSON patch");
    let mut pod = request["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).expect("the patch applies");
    Some(pod)
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_injects_over_tls_and_follows_a_rotated_certificate() {
    if !have_tool("curl", &["--version"]) || !have_tool("openssl", &["version"]) {
        return;
    }
    let dir = TempDir::new("webhook");
    make_certs(dir.path(), "one");
    let files = TlsFiles {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::copy(dir.path().join("one-cert.pem"), &files.cert).expect("copy");
    std::fs::copy(dir.path().join("one-key.pem"), &files.key).expect("copy");

    let store = Store::new();
    store.apply([Change::Namespace(pb::Namespace {
        name: "alice".into(),
        shared_namespace: "staging".into(),
        ..pb::Namespace::default()
    })]);
    let cert = ReloadingCert::load(files.clone()).expect("certificate loads");
    tokio::spawn(cert.clone().watch(Duration::from_millis(20)));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let ca_one = dir.path().join("one-ca.pem");
    // As `divert controller` injects: the proxies get the CA to verify it.
    let settings = divert_inject::Settings {
        controller_ca: Some(std::fs::read_to_string(&ca_one).expect("the CA")),
        ..divert_inject::Settings::default()
    };
    let feed = Feed::default();
    tokio::spawn(webhook::serve(
        listener,
        cert.server_config().expect("TLS configuration"),
        webhook::pod_mutator(store, feed.clone(), settings),
    ));

    // A pod created in alice's namespace is injected, as a divert namespace of staging.
    let request = review();
    let response = tokio::task::block_in_place(|| post(port, &ca_one, &request))
        .expect("the webhook answers over TLS");
    let resp = response.response.as_ref().expect("response");
    assert_eq!(resp.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    let pod = patched_pod(&request, &response).expect("a patch");
    let init = names(&pod["spec"]["initContainers"]);
    assert_eq!(init[..2], ["divert-init", "divert-proxy"], "{init:?}");
    assert_eq!(names(&pod["spec"]["containers"]), ["frontend"]);
    let searches = pod["spec"]["dnsConfig"]["searches"].to_string();
    assert!(searches.contains("staging.svc.cluster.local"), "{searches}");
    let env = pod["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("OKTETO_SHARED_ENVIRONMENT"), "{env}");
    assert!(env.contains("API_URL"), "the app's own env stays: {env}");
    let proxy_env = pod["spec"]["initContainers"][1]["env"].to_string();
    assert!(
        proxy_env.contains("DIVERT_CONTROLLER_CA") && proxy_env.contains("BEGIN CERTIFICATE"),
        "the proxy gets the controller's CA: {proxy_env}"
    );
    let volumes = pod["spec"]["volumes"].to_string();
    assert!(
        volumes.contains("\"audience\":\"divert\""),
        "and its token: {volumes}"
    );

    // A pod that opts out, and an update, pass untouched.
    let mut opted_out = review();
    opted_out["request"]["object"]["metadata"]["annotations"] =
        serde_json::json!({ "divert.dev/inject": "disabled" });
    let response = tokio::task::block_in_place(|| post(port, &ca_one, &opted_out)).expect("answer");
    assert!(patched_pod(&opted_out, &response).is_none());
    let mut update = review();
    update["request"]["operation"] = "UPDATE".into();
    update["request"]["oldObject"] = update["request"]["object"].clone();
    let response = tokio::task::block_in_place(|| post(port, &ca_one, &update)).expect("answer");
    assert!(patched_pod(&update, &response).is_none());

    // Once the watch sees alice asking Linkerd to inject, her pods are left
    // to Linkerd, whose webhook runs after this one: no proxy of Divert's,
    // only staging's DNS search, so that short names still resolve.
    let linkerd: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "alice", "annotations": {"linkerd.io/inject": "enabled"}}}),
    )
    .expect("a namespace");
    feed.update(|s| s.apply_any_namespace(&linkerd));
    let response = tokio::task::block_in_place(|| post(port, &ca_one, &request)).expect("answer");
    let meshed = patched_pod(&request, &response).expect("the DNS search");
    assert!(
        meshed["spec"]["initContainers"].is_null(),
        "{}",
        meshed["spec"]["initContainers"]
    );
    assert_eq!(names(&meshed["spec"]["containers"]), ["frontend"]);
    let searches = meshed["spec"]["dnsConfig"]["searches"].to_string();
    assert!(searches.contains("staging.svc.cluster.local"), "{searches}");
    let plain: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "alice"}}))
            .expect("a namespace");
    feed.update(|s| s.apply_any_namespace(&plain));
    let response = tokio::task::block_in_place(|| post(port, &ca_one, &request)).expect("answer");
    assert!(
        patched_pod(&request, &response).is_some(),
        "and injected again without it"
    );

    // Rotate: a new CA and certificate written over the mounted files.
    make_certs(dir.path(), "two");
    let ca_two = dir.path().join("two-ca.pem");
    assert!(
        tokio::task::block_in_place(|| post(port, &ca_two, &request)).is_none(),
        "the new CA is not trusted before the rotation"
    );
    std::fs::copy(dir.path().join("two-key.pem"), &files.key).expect("copy");
    std::fs::copy(dir.path().join("two-cert.pem"), &files.cert).expect("copy");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::task::block_in_place(|| post(port, &ca_two, &request)).is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate is not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        tokio::task::block_in_place(|| post(port, &ca_one, &request)).is_none(),
        "the old certificate is gone"
    );
    // A broken pair on disk keeps the working one.
    std::fs::write(&files.key, "not a key").expect("write");
    assert!(cert.reload().is_err());
    assert!(tokio::task::block_in_place(|| post(port, &ca_two, &request)).is_some());
}
