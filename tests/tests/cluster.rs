//! Divert end to end: installed as users install it, the Movies example
//! deployed as users deploy it, every pod injected by the API server calling
//! our webhook, run with `divert-proxy init`'s real iptables, the proxy as a native
//! sidecar fed by the controller, and the app; routing proven by what the
//! apps saw.
//!
//! One scenario, two back-ends (`divert_tests::backend`): the test control
//! plane and its pod runner (the default, and CI), or with
//! `DIVERT_E2E_CONTEXT=1` the current kube context of a real cluster, which
//! `tests/cluster-e2e.sh` sets up.
//!
//! The scenario is one test in [`PHASES`], run in order: each phase builds on
//! what those before it made (the install, the pods, the addresses they
//! found), so none can run alone, but each is a method of [`Scenario`] named
//! after what it proves. The run prints `phase N/M: <name>` as each starts,
//! and a failure (in the phase, or in a task it spawned) is printed under
//! the name of its phase, not only as a line of this file.
//! `DIVERT_SCENARIO_UNTIL=<name or number>` stops after that phase, to
//! iterate on the early ones.
//!
//! Run it alone with `cargo test -p divert-tests --test cluster` (root, Go;
//! `cargo build -p divert-cli -p divert-sidecar` first).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[path = "cluster/istio.rs"]
mod istio;
#[path = "cluster/kubelet.rs"]
mod kubelet;

use divert_tests::TempDir;
use divert_tests::backend::{Backend, PortForward};
use divert_tests::cluster::build::istiocheck;
use divert_tests::cluster::images::Images;
use divert_tests::cluster::{WAIT, eventually, eventually_none, pod_ready};
use divert_tests::netns::{divert_bin, sidecar_bin};
use divert_tests::{crate_dir, curl_with, ok, output_with_input, run, try_curl_with};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

/// Set to a phase's name or number to stop after it.
const UNTIL_ENV: &str = "DIVERT_SCENARIO_UNTIL";

/// A phase of the scenario: a method of [`Scenario`], boxed so that the
/// phases can be listed.
type Phase = for<'a> fn(&'a mut Scenario) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

/// The scenario, phase by phase, in the order it runs; each name says what
/// the phase proves.
const PHASES: &[(&str, Phase)] = &[
    ("Gateway API's HTTPRoute kind is served", |s| {
        Box::pin(s.httproute_kind_is_served())
    }),
    ("divert install, and the controller runs", |s| {
        Box::pin(s.install())
    }),
    ("the Movies example deploys and gets ready", |s| {
        Box::pin(s.movies_example_deploys())
    }),
    (
        "every pod is injected: divert init, then the proxy as a native sidecar",
        |s| Box::pin(s.every_pod_is_injected()),
    ),
    ("a client pod runs in staging", |s| {
        Box::pin(s.client_pod_runs())
    }),
    ("routing by key over HTTP/1.1 and h2c", |s| {
        Box::pin(s.routing_by_key())
    }),
    (
        "alice's key travels down the chain, to staging's api by its short name",
        |s| Box::pin(s.key_travels_down_the_chain()),
    ),
    ("in alice's pods a request with no key is alice's", |s| {
        Box::pin(s.own_namespace_default())
    }),
    ("gRPC calls routed each by its own key", |s| {
        Box::pin(s.grpc_calls_routed_by_key())
    }),
    (
        "a key an app drops is found, with where it went; one kept never is",
        |s| Box::pin(s.dropped_keys_are_found()),
    ),
    ("divert check passes", |s| Box::pin(s.check_passes())),
    (
        "divert tap shows staging's decisions to a viewer, and refuses others",
        |s| Box::pin(s.tap_for_a_viewer()),
    ),
    ("divert trace shows where api lost alice's key", |s| {
        Box::pin(s.trace_shows_where_the_key_was_lost())
    }),
    (
        "a divert token bound to no pod does not stream the table",
        |s| Box::pin(s.token_bound_to_no_pod_is_refused()),
    ),
    (
        "pods that opt out, another mesh's, or in a namespace that did not opt in, are left alone",
        |s| Box::pin(s.bystanders_are_not_injected()),
    ),
    ("a caller without a sidecar reaches alice's copy", |s| {
        Box::pin(s.caller_without_a_sidecar_reaches_alice())
    }),
    (
        "a divert token bound to a pod Divert did not inject does not stream the table",
        |s| Box::pin(s.token_of_an_uninjected_pod_is_refused()),
    ),
    (
        "a proxy's admin port keeps its table to the pod and the controller",
        |s| Box::pin(s.admin_port_keeps_the_table_private()),
    ),
    (
        "the API server holds the controller to its own objects",
        |s| Box::pin(s.controller_is_held_to_its_own_objects()),
    ),
    ("bob's key at staging's rent pod reaches bob's rent", |s| {
        Box::pin(s.bob_reaches_his_rent_at_the_end_of_the_chain())
    }),
    ("h2c and gRPC through the receiving pod, by key", |s| {
        Box::pin(s.h2c_and_grpc_through_the_receiving_pod())
    }),
    (
        "a real kubelet probes through the proxy; envFrom, a read-only non-root app",
        |s| Box::pin(s.kubelet_probes_through_the_proxy()),
    ),
    (
        "the sidecar restarts: requests recover within one retry",
        |s| Box::pin(s.sidecar_restart_recovers()),
    ),
    (
        "the kubelet restarts: the pods keep running and routing",
        |s| Box::pin(s.kubelet_restart_keeps_the_pods()),
    ),
    (
        "staging's Ingress and HTTPRoute are copied to alice and bob",
        |s| Box::pin(s.ingress_and_route_are_copied()),
    ),
    ("preview URLs through nginx", |s| {
        Box::pin(s.preview_urls_through_nginx())
    }),
    (
        "the key cookie through the ingress: off, set, followed, cleared, a WebSocket",
        |s| Box::pin(s.key_cookie_through_the_ingress()),
    ),
    ("an edit of staging's Ingress reaches every copy", |s| {
        Box::pin(s.ingress_edit_reaches_the_copies())
    }),
    (
        "divert preview and divert check list each namespace's URLs",
        |s| Box::pin(s.preview_lists_the_urls()),
    ),
    (istio::PHASE_NAME, |s| {
        Box::pin(s.istio_driver_writes_istios_routes())
    }),
    ("carol's divert deploy, divert ls and a time limit", |s| {
        Box::pin(s.carol_deploys())
    }),
    ("divert deploy names each mistake", |s| {
        Box::pin(s.deploy_names_each_mistake())
    }),
    ("divert destroy deletes carol's namespace", |s| {
        Box::pin(s.carol_destroys())
    }),
    (
        "dana with only the edit role deploys through a ConfigMap",
        |s| Box::pin(s.dana_deploys_with_the_edit_role()),
    ),
    ("dana's Ingresses cannot take staging's hosts", |s| {
        Box::pin(s.dana_cannot_take_staging_hosts())
    }),
    ("dana may not tap staging", |s| {
        Box::pin(s.dana_may_not_tap_staging())
    }),
    (
        "dana's destroy withdraws her request; without staging's consent it is refused",
        |s| Box::pin(s.dana_destroys_and_consent_is_needed()),
    ),
    (
        "controller down: pods still created, proxies keep routing",
        |s| Box::pin(s.controller_down()),
    ),
    ("alice scaled to zero: her key falls back to staging", |s| {
        Box::pin(s.alice_scaled_to_zero())
    }),
    (
        "alice's label removed: her copies go, her own Ingress stays",
        |s| Box::pin(s.alice_unlabelled()),
    ),
    ("namespace alice deleted: her key is ignored", |s| {
        Box::pin(s.alice_deleted())
    }),
    ("uninstall removes everything", |s| Box::pin(s.uninstall())),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divert_installs_injects_and_routes_on_a_real_control_plane() {
    name_failures_after_their_phase();
    let until = until();
    let started = Instant::now();
    under_way(Some("the back-end starts, before phase 1".to_string()));
    prebuild_istiocheck(until);
    let Some(backend) = Backend::start(images(), "curlimages/curl:8.10.1").await else {
        return;
    };
    eprintln!("cluster ready in {:.1}s", started.elapsed().as_secs_f64());
    let mut scenario = Scenario::new(backend);
    let mut passed = 0;
    for (i, (name, phase)) in PHASES.iter().enumerate() {
        let n = format!("{}/{}", i + 1, PHASES.len());
        eprintln!("phase {n}: {name}");
        under_way(Some(format!("phase {n}: {name}")));
        let phase_started = Instant::now();
        phase(&mut scenario).await;
        eprintln!(
            "phase {n} passed in {:.1}s",
            phase_started.elapsed().as_secs_f64()
        );
        passed += 1;
        if until == Some(i) {
            eprintln!("{UNTIL_ENV}: stopping after phase {n}");
            break;
        }
    }
    under_way(Some("the back-end stops, after the phases".to_string()));
    drop(scenario);
    under_way(None);
    eprintln!(
        "{passed} of {} phases passed in {:.1}s",
        PHASES.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Builds `istiocheck` before the cluster starts, when the scenario will
/// reach the istio phase. Cold, it is minutes of Go build on every core:
/// run inside a phase, that load fell on the probes and deadlines of
/// everything the cluster runs. A failed build is kept, and reported by the
/// phase that needs it.
fn prebuild_istiocheck(until: Option<usize>) {
    let reached = PHASES
        .iter()
        .position(|(name, _)| *name == istio::PHASE_NAME)
        .is_some_and(|istio| until.is_none_or(|u| u >= istio));
    if reached && divert_tests::cluster::available() {
        let _ = istiocheck();
    }
}

/// The phase under way, for the panic hook.
static UNDER_WAY: Mutex<Option<String>> = Mutex::new(None);

fn under_way(phase: Option<String>) {
    *UNDER_WAY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = phase;
}

/// Makes every panic, on the test's thread or in a task a phase spawned,
/// print first the phase under way: the scenario's steps look alike, and a
/// line number alone does not say how far it got.
fn name_failures_after_their_phase() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let phase = UNDER_WAY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(phase) = phase {
            eprintln!("FAILED in {phase}");
        }
        default(info);
    }));
}

/// The index of the phase `DIVERT_SCENARIO_UNTIL` names, if set; a name
/// that is no phase's fails at once, with the list.
fn until() -> Option<usize> {
    let until = std::env::var(UNTIL_ENV).ok()?;
    let found = PHASES
        .iter()
        .enumerate()
        .position(|(i, (name, _))| *name == until || (i + 1).to_string() == until);
    if found.is_none() {
        let names: Vec<String> = PHASES
            .iter()
            .enumerate()
            .map(|(i, (name, _))| format!("{}: {name}", i + 1))
            .collect();
        panic!(
            "{UNTIL_ENV}={until:?} names no phase; the phases:\n{}",
            names.join("\n")
        );
    }
    found
}
/// The image table: the `divert` image is the binary under test, the
/// Movies example's stand-in image is the test app, curl's image is curl.
fn images() -> Images {
    Images::default()
        .with("divert", divert_bin(), (2102, 2102))
        .also("divert", sidecar_bin())
        .with(
            "hashicorp/http-echo",
            PathBuf::from(env!("CARGO_BIN_EXE_movieapp")),
            (65532, 65532),
        )
        .with(
            "curlimages/curl",
            PathBuf::from("/usr/bin/curl"),
            (100, 101),
        )
        .with(
            "divert-e2e-ingress",
            PathBuf::from(env!("CARGO_BIN_EXE_ingress-standin")),
            (0, 0),
        )
}

/// A test fixture (tests/fixtures), with `image` replaced by the back-end's
/// own where it has one.
fn fixture(file: &str, image: (&str, Option<&str>)) -> Vec<u8> {
    let path = crate_dir().join("fixtures").join(file);
    let yaml =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    match image {
        (from, Some(to)) => yaml.replace(&format!("image: {from}"), &format!("image: {to}")),
        (_, None) => yaml,
    }
    .into_bytes()
}

/// The Ingresses of namespace `ns`.
fn ingresses(client: &kube::Client, ns: &str) -> Api<Ingress> {
    Api::namespaced(client.clone(), ns)
}

/// The HTTPRoutes of namespace `ns`.
fn routes(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &divert_controller::copies::plan::http_route(),
    )
}

/// Whether `meta` is of a preview copy the controller made.
fn managed(meta: &kube::api::ObjectMeta) -> bool {
    divert_controller::copies::is_managed(meta)
}

/// `kubectl scale`, as a user does it.
async fn scale(backend: &Backend, ns: &str, deployment: &str, replicas: u32) {
    let mut c = backend.kubectl();
    c.args([
        "-n",
        ns,
        "scale",
        &format!("deployment/{deployment}"),
        &format!("--replicas={replicas}"),
    ]);
    ok(c, None).await;
}

async fn deployment_ready(api: &Api<Deployment>, name: &str) -> Option<()> {
    let d = api.get_opt(name).await.ok()??;
    let want = d.spec.as_ref()?.replicas.unwrap_or(1);
    let status = d.status?;
    (status.ready_replicas.unwrap_or(0) == want && status.updated_replicas.unwrap_or(0) == want)
        .then_some(())
}

/// A Movies example manifest as the back-end's cluster can run it: on a real
/// cluster the app's image replaces http-echo (same flags).
fn example(backend: &Backend, file: &str) -> Vec<u8> {
    let path = crate_dir()
        .parent()
        .expect("workspace")
        .join("deploy/examples")
        .join(file);
    let yaml =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let Some(app) = backend.app_image() else {
        return yaml.into_bytes();
    };
    yaml.lines()
        .map(|l| match l.split_once("image: hashicorp/http-echo") {
            Some((indent, _)) => format!("{indent}image: {app}\n"),
            None => format!("{l}\n"),
        })
        .collect::<String>()
        .into_bytes()
}

/// Where `divert tap` and the fake proxies run: the controller's pod (as
/// `kubectl exec` would), against the port its Deployment names `grpc`.
struct ControllerPod {
    name: String,
    container: String,
    grpc_port: i32,
    /// Where the pods do not see the test's files: a forward of the gRPC
    /// port to this machine, where the commands that read them run.
    forward: Option<PortForward>,
}

/// What the phases share: the back-end and what a phase hands on to those
/// after it. A value an earlier phase hands on is `None` until it runs.
struct Scenario {
    // Dropped first, as the test used to drop it before its temporary
    // directories.
    backend: Backend,
    client: kube::Client,
    /// Tokens and the CA as files, for commands run in pods: the pod
    /// runner's exec sees this host's files.
    secrets: TempDir,
    /// carol's and dana's working directory: their manifests, `kubectl`,
    /// dana's kubeconfig.
    work: TempDir,
    /// What `divert install` printed: applied by the install, deleted by
    /// the uninstall.
    manifests: Option<String>,
    controller_pod: Option<ControllerPod>,
    /// The pod IP of staging's frontend, called by pods without a sidecar.
    frontend_ip: Option<String>,
    /// alice's own Ingress as it was made, which nothing may write.
    notes: Option<Ingress>,
    /// The pod IP of the ingress controller stand-in.
    nginx_ip: Option<String>,
    /// dana's service account's token: her only credentials.
    dana_token: Option<String>,
}

/// A value an earlier phase hands on (`what`), failing with its name if
/// that phase did not run.
fn handed<'a, T>(value: &'a Option<T>, what: &str) -> &'a T {
    value
        .as_ref()
        .unwrap_or_else(|| panic!("{what}: an earlier phase hands it on, and did not run"))
}

/// `args` as owned strings, as the commands run in pods take them.
fn strings(args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| (*a).to_owned())
        .collect::<Vec<String>>()
}

/// Each hop of a call chain the Movies app reports: who served it and the
/// baggage it saw.
fn hops(seen: &Value) -> Vec<(Value, Value)> {
    let mut hops = Vec::new();
    let mut at = seen;
    while at.is_object() {
        hops.push((at["servedBy"].clone(), at["baggage"].clone()));
        at = &at["downstream"];
    }
    hops
}

/// The baggage that carries key `k`, as the apps report it.
fn key(k: &str) -> Value {
    json!([format!("okteto-divert={k}")])
}

impl Scenario {
    fn new(backend: Backend) -> Scenario {
        Scenario {
            client: backend.client(),
            backend,
            secrets: TempDir::readable_by_all("auth"),
            work: TempDir::new("workflow"),
            manifests: None,
            controller_pod: None,
            frontend_ip: None,
            notes: None,
            nginx_ip: None,
            dana_token: None,
        }
    }

    fn kubectl(&self, args: &[&str]) -> Command {
        let mut c = self.backend.kubectl();
        c.args(args);
        c
    }

    /// The controller's Deployment lives here.
    fn controller(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), "divert")
    }

    fn namespaces(&self) -> Api<Namespace> {
        Api::all(self.client.clone())
    }

    fn frontend_ip(&self) -> &str {
        handed(&self.frontend_ip, "staging's frontend's pod IP").as_str()
    }

    /// The CA `divert install` published, as a file.
    fn ca_file(&self) -> PathBuf {
        self.secrets.path().join("ca.crt")
    }

    /// A command run in the client pod.
    async fn in_client(&self, argv: &[String]) -> Command {
        self.backend.exec("staging", "curl", "curl", argv).await
    }

    /// curl in the client pod: the app's JSON answer, which must be a 200.
    async fn curl(&self, args: Vec<String>) -> Value {
        let c = self.in_client(&["curl".into()]).await;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl_with(c, &args).await;
        assert_eq!(code, 200, "curl {args:?}: {body}");
        serde_json::from_str::<Value>(&body)
            .unwrap_or_else(|e| panic!("curl {args:?}: {e}: {body}"))
    }

    /// GET `url` from the client pod carrying alice's key.
    async fn as_alice(&self, url: &str) -> Value {
        self.curl(vec![
            "-H".into(),
            "baggage: okteto-divert=alice".into(),
            url.into(),
        ])
        .await
    }

    /// A curl from plain/bystander, which has no sidecar.
    async fn curl_in_bystander(&self) -> Command {
        self.backend
            .exec("plain", "bystander", "sleep", &["curl".to_string()])
            .await
    }

    /// Writes the token `kubectl args` creates to the file `name` of the
    /// secrets, and returns its path.
    async fn token_file(&self, name: &str, args: &[&str]) -> String {
        let (kubectl, path) = (self.kubectl(args), self.secrets.path().join(name));
        let token = ok(kubectl, None).await;
        std::fs::write(&path, token.trim()).expect("write a token");
        path.display().to_string()
    }

    /// `divert tap --controller` with the token in file `token`, run where
    /// [`Scenario::beside_controller`] says.
    async fn tap_as(&self, token: &str, extra: Vec<String>) -> Command {
        let mut argv = vec![
            "divert".to_string(),
            "tap".into(),
            "--controller".into(),
            self.controller_url(),
            "--controller-ca".into(),
            self.ca_file().display().to_string(),
            "--token-file".into(),
            token.to_string(),
            "--output".into(),
            "json".into(),
        ];
        argv.extend(extra);
        self.beside_controller(&argv).await
    }

    /// The controller's gRPC URL from where [`Scenario::beside_controller`]
    /// runs a command.
    fn controller_url(&self) -> String {
        let pod = handed(&self.controller_pod, "the controller's pod");
        let port = match &pod.forward {
            Some(f) => i32::from(f.port),
            None => pod.grpc_port,
        };
        format!("https://127.0.0.1:{port}")
    }

    /// `argv` (a command of Divert's image, `divert` or `divert-proxy`) run
    /// beside the controller with the test's files: in the controller's pod
    /// where the pods see them, else on this machine through the forward.
    async fn beside_controller(&self, argv: &[String]) -> Command {
        let pod = handed(&self.controller_pod, "the controller's pod");
        if pod.forward.is_none() {
            return self
                .backend
                .exec("divert", &pod.name, &pod.container, argv)
                .await;
        }
        let program = match argv[0].as_str() {
            "divert-proxy" => sidecar_bin(),
            _ => divert_bin(),
        };
        let mut c = Command::new(program);
        c.args(&argv[1..]);
        c
    }

    /// `divert tap` refused: it exits with 1; returns what it said.
    async fn refused(&self, token: &str, extra: Vec<String>) -> String {
        let out = run(self.tap_as(token, extra).await).await;
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// A proxy started in the controller's pod with the token in file
    /// `token`, which the controller must refuse, saying `why`.
    async fn fake_proxy(&self, token: String, why: &'static str) {
        let argv = vec![
            "divert-proxy".to_string(),
            "proxy".into(),
            "--discovery".into(),
            self.controller_url(),
            "--controller-ca".into(),
            self.ca_file().display().to_string(),
            "--controller-token".into(),
            token,
            "--controller-name".into(),
            "divert-controller.divert.svc".into(),
            "--admin-addr".into(),
            "127.0.0.1:14191".into(),
        ];
        let cmd = self.beside_controller(&argv).await;
        let proxy = divert_tests::netns::Process::spawn(cmd, "divert proxy ready");
        assert!(
            proxy.wait_for_log("Unauthenticated", WAIT) && proxy.log().contains(why),
            "a fake proxy was not refused ({why}): {}",
            proxy.log()
        );
    }

    /// GET `path` of `host` through the ingress controller stand-in, from
    /// plain/bystander: the app's JSON answer if it is a 200.
    async fn via_nginx(&self, host: &str, path: &str) -> Option<Value> {
        let nginx_ip = handed(&self.nginx_ip, "the ingress controller's pod IP");
        let url = format!("http://{nginx_ip}:8080{path}");
        let header = format!("Host: {host}");
        let c = self.curl_in_bystander().await;
        let (code, body) = try_curl_with(c, &["-H", &header, &url]).await.ok()?;
        (code == 200).then(|| serde_json::from_str::<Value>(&body).ok())?
    }

    /// `target` of `host` through the ingress controller stand-in, from
    /// plain/bystander, over HTTP/1.1 or (`h2`) h2c with prior knowledge:
    /// the status, the response head's fields (lowercase names), the body.
    async fn at_the_edge(
        &self,
        h2: bool,
        host: &str,
        target: &str,
        extra: &[&str],
    ) -> divert_tests::Headed {
        let nginx_ip = handed(&self.nginx_ip, "the ingress controller's pod IP");
        let port = if h2 {
            divert_tests::ingress::h2c_port(8080)
        } else {
            8080
        };
        let mut args = vec![
            "curl".to_string(),
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "-D".into(),
            "-".into(),
            "-H".into(),
            format!("Host: {host}"),
        ];
        if h2 {
            args.push("--http2-prior-knowledge".into());
        }
        args.extend(extra.iter().map(|a| (*a).to_string()));
        args.push(format!("http://{nginx_ip}:{port}{target}"));
        let c = self
            .backend
            .exec("plain", "bystander", "sleep", &args)
            .await;
        divert_tests::Headed::parse(&ok(c, None).await)
    }

    /// Whether alice's key from the client pod is served by `want`. While a
    /// copy scales down, its endpoint may refuse before the proxies hear it
    /// is gone (502): callers poll for the answer, as a client retries.
    async fn routed(&self, want: &str) -> Option<()> {
        let c = self.in_client(&["curl".into()]).await;
        let (code, body) = try_curl_with(
            c,
            &[
                "-H",
                "baggage: okteto-divert=alice",
                "http://frontend:8080/",
            ],
        )
        .await
        .ok()?;
        let seen: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && seen["servedBy"] == want).then_some(())
    }

    /// `PATH` for the developer's commands: the working directory (its
    /// `kubectl`) first.
    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.work.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    /// Writes a manifest to the working directory; returns its path.
    fn manifest(&self, name: &str, body: &str) -> String {
        let path = self.work.path().join(name);
        std::fs::write(&path, body).expect("write a manifest");
        path.display().to_string()
    }

    /// carol's Okteto manifest, in the working directory.
    const OKTETO: &str = "okteto.yml";

    /// The path of carol's Okteto manifest, which her deploy writes.
    fn okteto(&self) -> String {
        self.work.path().join(Self::OKTETO).display().to_string()
    }

    /// `divert <subcommand>` as the developer runs it, with the admin's
    /// rights.
    fn workflow(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut c = self.backend.divert(subcommand);
        c.args(args).env("PATH", self.path_env());
        c
    }

    /// dana's kubeconfig: her token, nothing else.
    fn dev_config(&self) -> PathBuf {
        self.work.path().join("dev.kubeconfig")
    }

    /// `divert <subcommand>` with dana's rights.
    fn as_dev(&self, subcommand: &str, args: &[&str]) -> Command {
        let mut c = Command::new(divert_bin());
        c.arg(subcommand)
            .arg("--kubeconfig")
            .arg(self.dev_config())
            .args(args)
            .env("PATH", self.path_env());
        c
    }
}
/// The phases, in the order of [`PHASES`].
impl Scenario {
    /// Gateway API's HTTPRoute kind is served, as on a cluster with Gateway
    /// API (a real cluster that has it already keeps its own).
    async fn httproute_kind_is_served(&self) {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let crd = "httproutes.gateway.networking.k8s.io";
        if crds.get_opt(crd).await.expect("read CRDs").is_none() {
            ok(
                self.kubectl(&["apply", "-f", "-"]),
                Some(fixture("httproute-crd.yaml", ("", None))),
            )
            .await;
        }
        eventually("the HTTPRoute kind is served", || async {
            routes(&self.client, "default")
                .list(&ListParams::default())
                .await
                .ok()
        })
        .await;
    }

    /// Divert installs as users install it, `divert install | kubectl apply
    /// -f -`, and the controller runs as a pod with its own token and RBAC.
    async fn install(&mut self) {
        let manifests = ok(self.backend.install(), None).await;
        let applied = ok(
            self.kubectl(&["apply", "-f", "-"]),
            Some(manifests.clone().into_bytes()),
        )
        .await;
        eprintln!("{applied}");
        self.manifests = Some(manifests);
        let controller = self.controller();
        eventually(
            "the controller runs as a pod with its own token and RBAC",
            || deployment_ready(&controller, "divert-controller"),
        )
        .await;
    }

    /// The Movies example, deployed as the README deploys it, gets ready.
    async fn movies_example_deploys(&self) {
        for file in [
            "movies-staging.yaml",
            "movies-alice.yaml",
            "movies-bob.yaml",
        ] {
            let manifest = example(&self.backend, file);
            let input = manifest.clone();
            let cmd = self.kubectl(&["apply", "-f", "-"]);
            let first = tokio::task::spawn_blocking(move || output_with_input(cmd, &input))
                .await
                .expect("join")
                .expect("run kubectl apply");
            // The file makes alice's namespace, labelled, and then her
            // Service: the controller may make its lead Service of that
            // name in between, after kubectl looked and before it created
            // (docs/troubleshooting.md). Applied again, kubectl takes the
            // lead Service over, as users are told to do.
            let stderr = String::from_utf8_lossy(&first.stderr).into_owned();
            if !first.status.success() {
                assert!(stderr.contains("(AlreadyExists)"), "{file}: {stderr}");
                eprintln!("{file}: applied again after: {stderr}");
                ok(self.kubectl(&["apply", "-f", "-"]), Some(manifest)).await;
            }
        }
        for (ns, names) in [
            ("staging", &["frontend", "api", "catalog", "rent"][..]),
            ("alice", &["frontend"][..]),
            ("bob", &["rent"][..]),
        ] {
            let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
            for name in names {
                let what = format!("{ns}/{name} is ready");
                eventually(&what, || deployment_ready(&api, name)).await;
            }
        }
    }

    /// Every pod was injected by the API server calling the webhook: the
    /// proxy is a native sidecar, after divert init. Also prints what
    /// injection adds to a pod's start (BENCHMARKS.md): divert init's run,
    /// and the proxy's start until its first table from the controller (its
    /// startup probe on /ready), before the app's container starts.
    async fn every_pod_is_injected(&self) {
        for ns in ["staging", "alice", "bob"] {
            let pods = Api::<Pod>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default())
                .await
                .expect("list pods");
            assert!(!pods.items.is_empty());
            for p in pods.items {
                let name = p.metadata.name.clone().unwrap_or_default();
                let annotations = p.metadata.annotations.clone().unwrap_or_default();
                assert!(
                    annotations.contains_key("divert.dev/injected"),
                    "{ns}/{name}: {annotations:?}"
                );
                let inits: Vec<(String, Option<String>)> = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.init_containers.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| (c.name, c.restart_policy))
                    .collect();
                assert_eq!(
                    inits,
                    [
                        ("divert-init".to_string(), None),
                        ("divert-proxy".to_string(), Some("Always".to_string()))
                    ],
                    "{ns}/{name}"
                );
            }
        }

        for ns in ["staging", "alice"] {
            for p in Api::<Pod>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default())
                .await
                .expect("list pods")
                .items
            {
                let name = p.metadata.name.unwrap_or_default();
                if let Some(start) = self.backend.describe_start(ns, &name) {
                    eprintln!("start of {ns}/{name}: {start}");
                }
            }
        }
    }

    /// A client pod in staging, made as users make one, gets Ready.
    async fn client_pod_runs(&self) {
        ok(
            self.kubectl(&[
                "-n",
                "staging",
                "run",
                "curl",
                &format!("--image={}", self.backend.client_image()),
                "--restart=Never",
                "--command",
                "--",
                "sleep",
                "3600",
            ]),
            None,
        )
        .await;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), "staging");
        eventually("the client pod is Ready", || async {
            let p = pods.get_opt("curl").await.ok()??;
            pod_ready(&p).then_some(())
        })
        .await;
    }

    /// HTTP/1.1 and h2c are routed by the key each request carries; what
    /// the app saw proves where it went, and the baggage arrives unchanged.
    async fn routing_by_key(&self) {
        for proto in [None, Some("--http2-prior-knowledge")] {
            for (baggage, want) in [
                (None, "frontend@staging"),
                (Some("okteto-divert=alice"), "frontend@alice"),
                (Some("okteto-divert=nobody"), "frontend@staging"),
                (
                    Some("team=movies, okteto-divert=alice;ttl=60"),
                    "frontend@alice",
                ),
            ] {
                let mut args: Vec<String> = proto.iter().map(|p| p.to_string()).collect();
                if let Some(b) = baggage {
                    args.extend(["-H".into(), format!("baggage: {b}")]);
                }
                args.push("http://frontend:8080/".into());
                let seen = self.curl(args).await;
                assert_eq!(seen["servedBy"], want, "{proto:?} {baggage:?}: {seen}");
                let want_proto = if proto.is_some() {
                    "HTTP/2.0"
                } else {
                    "HTTP/1.1"
                };
                assert_eq!(seen["protocol"], want_proto, "{seen}");
                let want_baggage: Vec<&str> = baggage.into_iter().collect();
                assert_eq!(
                    seen["baggage"],
                    json!(want_baggage),
                    "baggage arrives unchanged: {seen}"
                );
            }
        }
    }

    /// Along the chain: alice's frontend calls `api` by its short name;
    /// alice has no api, so her pod's DNS search list finds staging's, and
    /// the key travels on.
    async fn key_travels_down_the_chain(&self) {
        let chain = self
            .as_alice("http://frontend:8080/call/api:8080/movies")
            .await;
        assert_eq!(chain["servedBy"], "frontend@alice", "{chain}");
        assert_eq!(chain["downstream"]["servedBy"], "api@staging", "{chain}");
        assert_eq!(
            chain["downstream"]["baggage"],
            json!(["okteto-divert=alice"]),
            "{chain}"
        );
    }

    /// In alice's pods, a request with no key is alice's (the proxy's
    /// own-namespace default, in transparent mode fed by the controller):
    /// her frontend calling staging's frontend by its full name reaches her
    /// own copy. The first hop names alice's Service, so no key is needed.
    /// And a short name in alice's pod finds her copy where she has one.
    async fn own_namespace_default(&self) {
        let own = self
            .curl(vec![
                "http://frontend.alice:8080/call/frontend.staging:8080/own".into(),
            ])
            .await;
        assert_eq!(own["servedBy"], "frontend@alice", "{own}");
        assert_eq!(
            own["downstream"]["servedBy"], "frontend@alice",
            "own-namespace default: {own}"
        );
        assert_eq!(
            own["downstream"]["baggage"],
            json!([]),
            "no key was sent: {own}"
        );
        let short = self
            .as_alice("http://frontend:8080/call/frontend:8080/short")
            .await;
        assert_eq!(short["downstream"]["servedBy"], "frontend@alice", "{short}");
    }

    /// gRPC (Python grpcio): each call routed by its own key, concurrent
    /// streams on one channel, then the same calls again.
    async fn grpc_calls_routed_by_key(&self) {
        let out = ok(
            self.in_client(&[
                "python3".into(),
                self.backend.grpc_client(),
                "frontend:8080".into(),
                "multiplex".into(),
                "alice".into(),
                "-".into(),
                "nobody".into(),
            ])
            .await,
            None,
        )
        .await;
        let calls: Value = serde_json::from_str(out.trim()).expect("JSON from grpc_client.py");
        let served: Vec<String> = calls
            .as_array()
            .expect("a list of calls")
            .iter()
            .map(|c| {
                let s = &c["served_by"];
                format!(
                    "{}@{}",
                    s["service"].as_str().unwrap_or(""),
                    s["namespace"].as_str().unwrap_or("")
                )
            })
            .collect();
        let once = ["frontend@alice", "frontend@staging", "frontend@staging"];
        assert_eq!(served, [once, once].concat(), "{calls}");
    }

    /// The proxies find an app that does not pass the key on. First,
    /// staging's api serves alice's requests (which wait there, then call
    /// catalog with the key) while requests without a key come through it
    /// too and call catalog without one: every call is right, and nothing
    /// is reported, though keyed requests were in flight at each unkeyed
    /// call. Then api drops alice's key on its way to catalog: api's proxy
    /// counts it against catalog, and `divert check` names it.
    async fn dropped_keys_are_found(&self) {
        // The keyed requests wait at api for 3 s; the others reach api after
        // 0.5 s, and call catalog at once.
        let keyed = "http://frontend:8080/call/api:8080/wait/3000/call/catalog:9090/kept";
        let plain = "http://frontend:8080/wait/500/call/api:8080/call/catalog:9090/plain";
        let calls = (0..9).map(|i| async move {
            let seen = if i % 3 == 0 {
                self.as_alice(keyed).await
            } else {
                self.curl(vec![plain.into()]).await
            };
            (i % 3 == 0, seen)
        });
        for (is_keyed, seen) in futures_util::future::join_all(calls).await {
            let catalog = &seen["downstream"]["downstream"];
            assert_eq!(catalog["servedBy"], "catalog@staging", "{seen}");
            let want = if is_keyed {
                json!(["okteto-divert=alice"])
            } else {
                json!([])
            };
            assert_eq!(catalog["baggage"], want, "{seen}");
        }
        let api_ip = eventually("staging's api has a pod IP", || async {
            Api::<Pod>::namespaced(self.client.clone(), "staging")
                .list(&ListParams::default().labels("app.kubernetes.io/name=api"))
                .await
                .ok()?
                .items
                .into_iter()
                .find_map(|p| p.status?.pod_ip)
        })
        .await;
        let metrics_url = format!("http://{api_ip}:4191/metrics");
        // api's proxy's drops, and its request, connection and timeout
        // counts (for a failure's message).
        let drops = || async {
            let (code, text) =
                curl_with(self.in_client(&["curl".into()]).await, &[&metrics_url]).await;
            assert_eq!(code, 200, "{text}");
            let lines = |prefix: &str| {
                text.lines()
                    .filter(|l| l.starts_with(prefix))
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            };
            let counts = [
                "divert_proxy_requests_total",
                "divert_proxy_tcp_",
                "divert_proxy_timeouts_total",
            ]
            .iter()
            .flat_map(|prefix| lines(prefix))
            .collect::<Vec<_>>();
            (lines("divert_proxy_key_dropped_total"), counts.join("\n"))
        };
        let (none, requests) = drops().await;
        assert_eq!(
            none,
            Vec::<String>::new(),
            "nothing was dropped:\n{requests}"
        );
        let key_check = || async {
            let mut check = self.backend.check();
            check.args(["--output", "json"]);
            let out = ok(check, None).await;
            let report: Value = serde_json::from_str(&out).expect("divert check's JSON");
            report["checks"]
                .as_array()
                .and_then(|all| all.iter().find(|c| c["id"] == "key-propagation"))
                .cloned()
                .unwrap_or_else(|| panic!("no key-propagation check in {report}"))
        };
        let before = key_check().await;
        assert_eq!(before["warning"], Value::Null, "{before}");

        // A drop made while another request without a key is in flight at
        // api (a kubelet probe, every 5 s) is not counted, by design: it
        // could be that request's. So alice's chain goes again until one is
        // counted, a few times at most.
        let mut sent = 0;
        let counted = loop {
            let dropped = self
                .as_alice("http://frontend:8080/call/api:8080/drop/catalog:9090/lost")
                .await;
            sent += 1;
            assert_eq!(dropped["servedBy"], "frontend@alice", "{dropped}");
            assert_eq!(
                dropped["downstream"]["baggage"],
                json!(["okteto-divert=alice"]),
                "{dropped}"
            );
            assert_eq!(
                dropped["downstream"]["downstream"]["baggage"],
                json!([]),
                "api dropped it: {dropped}"
            );
            let (dropped, requests) = drops().await;
            if !dropped.is_empty() || sent == 5 {
                break (dropped, requests);
            }
        };
        let (dropped, requests) = counted;
        let series =
            "divert_proxy_key_dropped_total{service=\"api\",destination=\"catalog.staging\"} ";
        assert!(
            dropped.len() == 1
                && dropped[0]
                    .strip_prefix(series)
                    .and_then(|n| n.parse::<u32>().ok())
                    .is_some_and(|n| (1..=sent).contains(&n)),
            "{dropped:?} after {sent} drops; api's proxy routed:\n{requests}"
        );
        let reported = eventually("divert check reports api's drop", || async {
            let check = key_check().await;
            (check["warning"] == true).then_some(check)
        })
        .await;
        let detail = reported["detail"].to_string();
        assert!(
            detail.contains("staging/api → catalog.staging: ")
                && detail.contains(" without the key"),
            "{reported}"
        );
        assert!(
            reported["hint"].to_string().contains("OpenTelemetry"),
            "{reported}"
        );
    }

    /// `divert check` passes against the real cluster.
    async fn check_passes(&self) {
        let report = ok(self.backend.check(), None).await;
        eprintln!("{report}");
    }

    /// A client with the controller's own identity (a token of its service
    /// account).
    pub(crate) async fn as_controller(&self) -> kube::Client {
        let controller_token = ok(
            self.kubectl(&["-n", "divert", "create", "token", "divert-controller"]),
            None,
        )
        .await;
        let path = self.secrets.path().join("controller.kubeconfig");
        self.backend.kubeconfig_with_token(&controller_token, &path);
        let config = kube::config::Kubeconfig::read_from(&path).expect("a kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
            .await
            .expect("a client config");
        kube::Client::try_from(config).expect("the controller's client")
    }

    /// Finds the controller's running pod (again, after it was replaced)
    /// and how to reach its gRPC port.
    pub(crate) async fn find_controller_pod(&mut self) {
        let deployment = self
            .controller()
            .get("divert-controller")
            .await
            .expect("get the controller's Deployment");
        let template = deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("the controller's pod template");
        let container = template.containers[0].name.clone();
        let grpc_port = template.containers[0]
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("grpc"))
            .expect("the controller's grpc port")
            .container_port;
        let controller_pod = eventually("the controller's pod runs", || async {
            Api::<Pod>::namespaced(self.client.clone(), "divert")
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|p| {
                    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                        && p.metadata.deletion_timestamp.is_none()
                })?
                .metadata
                .name
        })
        .await;
        let forward = (!self.backend.pods_share_files()).then(|| {
            let port = u16::try_from(grpc_port).expect("a port");
            self.backend.port_forward("divert", &controller_pod, port)
        });
        self.controller_pod = Some(ControllerPod {
            name: controller_pod,
            container,
            grpc_port,
            forward,
        });
    }

    /// `divert tap --controller` shows the decisions of staging's proxies to
    /// a person who may read staging's pods' logs, over TLS verified with
    /// the CA `divert install` published, with their own token; with no
    /// namespace, only the proxies of namespaces they may tap. A namespace
    /// they may not read, and no valid token, are refused.
    async fn tap_for_a_viewer(&mut self) {
        self.find_controller_pod().await;
        let ca = Api::<ConfigMap>::namespaced(self.client.clone(), "divert")
            .get("divert-ca")
            .await
            .expect("the CA's ConfigMap is published")
            .data
            .and_then(|mut d| d.remove("ca.crt"))
            .expect("ca.crt");
        std::fs::write(self.ca_file(), &ca).expect("write the CA");
        for args in [
            &["-n", "staging", "create", "serviceaccount", "viewer"][..],
            &[
                "-n",
                "staging",
                "create",
                "rolebinding",
                "viewer",
                "--clusterrole=view",
                "--serviceaccount=staging:viewer",
            ],
        ] {
            ok(self.kubectl(args), None).await;
        }
        let this: &Scenario = self;
        let viewer = this
            .token_file("viewer", &["-n", "staging", "create", "token", "viewer"])
            .await;
        let tap_events = |token: String, extra: Vec<String>, n: usize| async move {
            let mut extra = extra;
            extra.extend(["-n".to_string(), n.to_string()]);
            let tap = tokio::spawn(run(this.tap_as(&token, extra).await));
            let deadline = Instant::now() + WAIT;
            while !tap.is_finished() {
                assert!(Instant::now() < deadline, "divert tap saw no decision");
                this.as_alice("http://frontend:8080/tap").await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let tapped = tap.await.expect("join the tap");
            let out = String::from_utf8_lossy(&tapped.stdout).into_owned();
            assert!(
                tapped.status.success(),
                "divert tap: {out}{}",
                String::from_utf8_lossy(&tapped.stderr)
            );
            out.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect::<Vec<Value>>()
        };
        let events = tap_events(
            viewer.clone(),
            strings(&["--proxy-namespace", "staging", "--key", "alice"]),
            1,
        )
        .await;
        assert_eq!(events[0]["key"], "alice", "{}", events[0]);
        assert_eq!(events[0]["decision"], "diverted", "{}", events[0]);
        // With no namespace, only the proxies of namespaces the viewer may
        // tap: alice's proxies see the same requests, and are left out.
        let events = tap_events(viewer.clone(), strings(&["--key", "alice"]), 4).await;
        for e in &events {
            assert_eq!(e["proxyNamespace"], "staging", "{e}");
        }
        // Refused: a namespace the viewer may not read, and no valid token.
        let e = this
            .refused(&viewer, strings(&["--proxy-namespace", "alice"]))
            .await;
        assert!(
            e.contains("PermissionDenied") && e.contains("get pods/log"),
            "{e}"
        );
        let garbage = this.secrets.path().join("garbage");
        std::fs::write(&garbage, "not.a.token").expect("write");
        let e = this
            .refused(&garbage.display().to_string(), Vec::new())
            .await;
        assert!(e.contains("Unauthenticated"), "{e}");
    }

    /// `divert trace` through the controller, for someone who may read the
    /// logs of staging's and alice's pods: the Movies chain, with api
    /// calling catalog without alice's key, as a tree whose break is at
    /// api → catalog, live; then, with `--since`, the same trees again from
    /// what the proxies kept.
    async fn trace_shows_where_the_key_was_lost(&self) {
        ok(
            self.kubectl(&["-n", "staging", "create", "serviceaccount", "tracer"]),
            None,
        )
        .await;
        for ns in ["staging", "alice"] {
            ok(
                self.kubectl(&[
                    "-n",
                    ns,
                    "create",
                    "rolebinding",
                    "tracer",
                    "--clusterrole=view",
                    "--serviceaccount=staging:tracer",
                ]),
                None,
            )
            .await;
        }
        let token = self
            .token_file("tracer", &["-n", "staging", "create", "token", "tracer"])
            .await;
        let mut argv = vec![
            "divert".to_string(),
            "trace".into(),
            "--controller".into(),
            self.controller_url(),
            "--controller-ca".into(),
            self.ca_file().display().to_string(),
            "--token-file".into(),
            token,
            "--key".into(),
            "alice".into(),
            "--limit".into(),
            "4".into(),
            "--output".into(),
            "json".into(),
        ];
        argv.extend(strings(&["--settle", "1s"]));
        let trace = tokio::spawn(run(self.beside_controller(&argv).await));
        let deadline = Instant::now() + WAIT;
        while !trace.is_finished() {
            assert!(Instant::now() < deadline, "divert trace printed no 4 trees");
            self.as_alice("http://frontend:8080/call/api:8080/drop/catalog:9090/trace")
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let traced = trace.await.expect("join divert trace");
        let out = String::from_utf8_lossy(&traced.stdout).into_owned();
        assert!(
            traced.status.success(),
            "divert trace: {out}{}",
            String::from_utf8_lossy(&traced.stderr)
        );
        let whole = |out: &str| -> bool {
            out.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .any(|t| {
                    let api = &t["children"][0];
                    let catalog = &api["children"][0];
                    (&t["service"], &t["copy"]) == (&json!("frontend"), &json!("alice"))
                        && (&api["service"], &api["copy"], &api["keyDropped"])
                            == (&json!("api"), &json!("staging"), &json!(false))
                        && (&catalog["service"], &catalog["keyDropped"])
                            == (&json!("catalog"), &json!(true))
                })
        };
        // The relay dials every proxy as the watch starts: the first trees
        // may miss a part, the last ones have it all.
        assert!(
            whole(&out),
            "no tree with the break at api → catalog: {out}"
        );

        // What went by is kept: the same trees, from the proxies' history.
        let at = argv.iter().position(|a| a == "--limit").expect("--limit");
        argv.splice(at..at + 2, strings(&["--since", "5m"]));
        let kept = run(self.beside_controller(&argv).await).await;
        let out = String::from_utf8_lossy(&kept.stdout).into_owned();
        assert!(
            kept.status.success(),
            "divert trace --since: {out}{}",
            String::from_utf8_lossy(&kept.stderr)
        );
        assert!(whole(&out), "--since: no tree with the break: {out}");
        eprintln!("{} trees kept", out.lines().count());
    }

    /// A proxy is a pod Divert injected, proven by its pod's token for the
    /// `divert` audience: a token of that audience bound to no pod does not
    /// stream the table.
    async fn token_bound_to_no_pod_is_refused(&self) {
        let not_a_pod = self
            .token_file(
                "unbound",
                &[
                    "-n",
                    "staging",
                    "create",
                    "token",
                    "viewer",
                    "--audience",
                    "divert",
                ],
            )
            .await;
        self.fake_proxy(not_a_pod, "bound to its pod").await;
    }

    /// Pods the webhook must leave alone: one that opts out in an opted-in
    /// namespace, one in a namespace with no label, and pods another mesh
    /// injects (by its switch on the pod, and on the namespace, which the
    /// controller learns from its watch). Opting out is not a fault:
    /// `divert check` still passes once the pod runs; another mesh's pod
    /// is, and `divert check` names it until it is gone.
    async fn bystanders_are_not_injected(&self) {
        self.another_meshs_pods_are_left_to_it().await;
        self.namespaces()
            .patch(
                "plain",
                &PatchParams::apply("divert-tests"),
                &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}})),
            )
            .await
            .expect("namespace plain");
        for (ns, labels) in [
            ("staging", json!({"divert.dev/inject": "disabled"})),
            ("plain", json!({})),
        ] {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
            let pod = eventually("the pod is admitted", || async {
                api.patch("bystander", &PatchParams::apply("divert-tests"), &Patch::Apply(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "bystander", "namespace": ns, "labels": labels},
                    "spec": {"terminationGracePeriodSeconds": 1,
                             "containers": [{"name": "sleep", "image": self.backend.client_image(), "command": ["sleep", "3600"]}]}
                }))).await.ok()
            })
            .await;
            assert_eq!(
                container_names(&pod),
                ["sleep"],
                "{ns}/bystander is not injected"
            );
        }
        eventually("staging/bystander runs", || async {
            let p = Api::<Pod>::namespaced(self.client.clone(), "staging")
                .get_opt("bystander")
                .await
                .ok()??;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
        ok(self.backend.check(), None).await;
    }

    /// Linkerd's and Istio's webhooks run after Divert's (their
    /// configurations' names sort after `divert-injector`), so the pods they
    /// will inject have none of their containers yet: Divert reads their
    /// switches. No mesh runs here; what is proven is that Divert leaves
    /// the pod alone and says so.
    async fn another_meshs_pods_are_left_to_it(&self) {
        let staging: Api<Pod> = Api::namespaced(self.client.clone(), "staging");
        let create = |name: &'static str, annotations: serde_json::Value| {
            let staging = staging.clone();
            let image = self.backend.client_image();
            async move {
                staging
                    .patch(name, &PatchParams::apply("divert-tests"), &Patch::Apply(json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": name, "namespace": "staging", "annotations": annotations},
                        "spec": {"terminationGracePeriodSeconds": 1,
                                 "containers": [{"name": "sleep", "image": image, "command": ["sleep", "3600"]}]}
                    })))
                    .await
                    .ok()
            }
        };
        // The pod's own switch.
        let linkerd = eventually("staging/meshed-linkerd is admitted", || {
            create("meshed-linkerd", json!({"linkerd.io/inject": "enabled"}))
        })
        .await;
        assert_eq!(
            container_names(&linkerd),
            ["sleep"],
            "Linkerd's pod is left to it"
        );
        // The namespace's switch, once the controller's watch has seen it.
        self.namespaces()
            .patch(
                "staging",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"istio-injection": "enabled"}}})),
            )
            .await
            .expect("label staging for Istio");
        eventually("a pod made in staging now is left to Istio", || async {
            let pod = create("meshed-istio", json!({})).await?;
            if container_names(&pod) == ["sleep"] {
                return Some(());
            }
            // Made before the watch saw the label: make it again.
            let _ = staging
                .delete("meshed-istio", &DeleteParams::default().grace_period(0))
                .await;
            gone(&staging, "meshed-istio").await;
            None
        })
        .await;
        let report = eventually("divert check names both pods", || async {
            let out = run(self.backend.check()).await;
            let report = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.code() == Some(1)
                && report
                    .contains("staging/meshed-linkerd is not diverted: Linkerd injects the pod")
                && report.contains("staging/meshed-istio is not diverted: Istio injects the pod"))
            .then_some(report)
        })
        .await;
        assert!(
            !report.contains("rollout restart"),
            "no restart brings Divert into them: {report}"
        );
        self.namespaces()
            .patch(
                "staging",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"istio-injection": null}}})),
            )
            .await
            .expect("unlabel staging");
        for name in ["meshed-linkerd", "meshed-istio"] {
            staging
                .delete(name, &DeleteParams::default().grace_period(0))
                .await
                .expect("delete the meshed pods");
            gone(&staging, name).await;
        }
    }

    /// Routing at the receiving pod: plain/bystander has no sidecar and
    /// sends straight to the pod IP of staging's frontend, as an ingress
    /// controller does. Staging's inbound proxy sends alice's key on to her
    /// frontend, whose own call goes on down the chain; other requests stay
    /// where they were sent. Every app's readiness probe (httpGet, from the
    /// node) has gone through its pod's inbound proxy all along.
    async fn caller_without_a_sidecar_reaches_alice(&mut self) {
        let pod_ip = eventually(
            "plain/bystander runs and staging's frontend has a pod IP",
            || async {
                let p = Api::<Pod>::namespaced(self.client.clone(), "plain")
                    .get_opt("bystander")
                    .await
                    .ok()??;
                (p.status?.phase.as_deref() == Some("Running")).then_some(())?;
                let list = Api::<Pod>::namespaced(self.client.clone(), "staging")
                    .list(&ListParams::default().labels("app.kubernetes.io/name=frontend"))
                    .await
                    .ok()?;
                list.items.into_iter().find_map(|p| p.status?.pod_ip)
            },
        )
        .await;
        self.frontend_ip = Some(pod_ip);
        let this: &Scenario = self;
        let from_bystander = |headers: &'static [&'static str], path: &'static str| {
            let url = format!("http://{}:8080{path}", this.frontend_ip());
            async move {
                let c = this.curl_in_bystander().await;
                let mut args: Vec<String> = Vec::new();
                for h in headers {
                    args.extend(["-H".into(), (*h).to_string()]);
                }
                args.push(url);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let (code, body) = curl_with(c, &args).await;
                assert_eq!(code, 200, "{args:?}: {body}");
                serde_json::from_str::<Value>(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
            }
        };
        let chain =
            from_bystander(&["baggage: okteto-divert=alice"], "/call/api:8080/movies").await;
        assert_eq!(chain["servedBy"], "frontend@alice", "{chain}");
        assert_eq!(chain["downstream"]["servedBy"], "api@staging", "{chain}");
        assert_eq!(chain["baggage"], json!(["okteto-divert=alice"]), "{chain}");
        let plain_call = from_bystander(&[], "/").await;
        assert_eq!(plain_call["servedBy"], "frontend@staging", "{plain_call}");
    }

    /// A token of the `divert` audience bound to a pod Divert did not
    /// inject (plain/bystander) does not stream the table either.
    async fn token_of_an_uninjected_pod_is_refused(&self) {
        let uninjected = self
            .token_file(
                "uninjected",
                &[
                    "-n",
                    "plain",
                    "create",
                    "token",
                    "default",
                    "--audience",
                    "divert",
                    "--bound-object-kind",
                    "Pod",
                    "--bound-object-name",
                    "bystander",
                ],
            )
            .await;
        self.fake_proxy(uninjected, "was not injected by Divert")
            .await;
    }

    /// A proxy's admin port answers any pod for kubelet and Prometheus, but
    /// its table and its tap only the pod's loopback and the controller.
    async fn admin_port_keeps_the_table_private(&self) {
        let admin = |path: &str| {
            let url = format!("http://{}:4191{path}", self.frontend_ip());
            async move {
                let c = self.curl_in_bystander().await;
                try_curl_with(c, &[&url]).await.expect("curl runs")
            }
        };
        assert_eq!(admin("/routes").await.0, 403);
        assert_eq!(admin("/metrics").await.0, 200);
        assert_eq!(admin("/live").await.0, 200);
    }

    /// The API server holds the controller to its own objects in divert
    /// namespaces, whatever its ClusterRole allows: with the controller's
    /// own token, a Service in kube-system or in the shared namespace, a
    /// Service it did not make, or a label on a Namespace that is not
    /// Divert's, is refused.
    async fn controller_is_held_to_its_own_objects(&self) {
        let as_controller = self.as_controller().await;
        for ns in ["kube-system", "staging"] {
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": "hijack", "namespace": ns,
                             "labels": {"divert.dev/managed-by": "divert-controller"}},
                "spec": {"ports": [{"port": 53}]}
            }))
            .expect("a Service");
            let refused = Api::<Service>::namespaced(as_controller.clone(), ns)
                .create(&kube::api::PostParams::default(), &svc)
                .await
                .expect_err("the controller may not write a Service there");
            assert!(
                refused.to_string().contains("only in divert namespaces"),
                "{ns}: {refused}"
            );
        }
        // An existing Service it did not make: the API server's own.
        let hijack = Api::<Service>::namespaced(as_controller.clone(), "default")
            .patch(
                "kubernetes",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"hijacked": "yes"}}})),
            )
            .await
            .expect_err("the controller may not write another's Service");
        assert!(
            hijack.to_string().contains("only objects it made"),
            "{hijack}"
        );
        let relabel = Api::<Namespace>::all(as_controller.clone())
            .patch(
                "staging",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"team": "hijacked"}}})),
            )
            .await
            .expect_err("the controller may change only Divert's own labels");
        assert!(
            relabel.to_string().contains("only divert.dev/ labels"),
            "{relabel}"
        );
    }

    /// Routing at the receiving pod, at the end of the chain: staging's rent
    /// pod, called by its IP with bob's key, sends the request on to bob's
    /// rent.
    async fn bob_reaches_his_rent_at_the_end_of_the_chain(&self) {
        let rent_ip = eventually("staging's rent has a pod IP", || async {
            let list = Api::<Pod>::namespaced(self.client.clone(), "staging")
                .list(&ListParams::default().labels("app.kubernetes.io/name=rent"))
                .await
                .ok()?;
            list.items.into_iter().find_map(|p| p.status?.pod_ip)
        })
        .await;
        let (code, body) = curl_with(
            self.curl_in_bystander().await,
            &[
                "-H",
                "baggage: okteto-divert=bob",
                &format!("http://{rent_ip}:8080/"),
            ],
        )
        .await;
        assert_eq!(code, 200, "{body}");
        let rent: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(rent["servedBy"], "rent@bob", "{rent}");
    }

    /// h2c and gRPC through the same inbound hop (staging's frontend, from
    /// a pod without a sidecar), each stream and call by its own key.
    async fn h2c_and_grpc_through_the_receiving_pod(&self) {
        let pod_ip = self.frontend_ip();
        let (code, body) = curl_with(
            self.curl_in_bystander().await,
            &[
                "--http2-prior-knowledge",
                "-H",
                "baggage: okteto-divert=alice",
                &format!("http://{pod_ip}:8080/h2c"),
            ],
        )
        .await;
        let h2c: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
        assert_eq!(
            (code, &h2c["servedBy"], &h2c["protocol"]),
            (200, &json!("frontend@alice"), &json!("HTTP/2.0")),
            "{h2c}"
        );
        let out = ok(
            self.backend
                .exec(
                    "plain",
                    "bystander",
                    "sleep",
                    &[
                        "python3".into(),
                        self.backend.grpc_client(),
                        format!("{pod_ip}:8080"),
                        "multiplex".into(),
                        "alice".into(),
                        "-".into(),
                    ],
                )
                .await,
            None,
        )
        .await;
        let calls: Value = serde_json::from_str(out.trim()).expect("JSON from grpc_client.py");
        let namespaces: Vec<&Value> = calls
            .as_array()
            .expect("a list of calls")
            .iter()
            .map(|c| &c["served_by"]["namespace"])
            .collect();
        assert_eq!(
            namespaces,
            [
                &json!("alice"),
                &json!("staging"),
                &json!("alice"),
                &json!("staging")
            ],
            "{calls}"
        );
    }

    /// The edge: staging's Ingress (from the example) and an HTTPRoute of
    /// staging get a copy in alice and in bob with their own hosts; bob, who
    /// runs no frontend, gets a Service that leads to staging's; alice's own
    /// frontend Service stays hers. A user's own Ingress in alice is made
    /// here and left as it is throughout.
    async fn ingress_and_route_are_copied(&mut self) {
        let notes = ingresses(&self.client, "alice")
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                    "metadata": {"name": "notes", "namespace": "alice"},
                    "spec": {"ingressClassName": "nginx", "rules": [{"host": "notes-alice.movies.test",
                        "http": {"paths": [{"path": "/notes", "pathType": "Prefix",
                        "backend": {"service": {"name": "frontend", "port": {"number": 8080}}}}]}}]}
                }))
                .expect("an Ingress"),
            )
            .await
            .expect("alice's own Ingress");
        self.notes = Some(notes);
        routes(&self.client, "staging")
            .create(
                &Default::default(),
                &serde_json::from_value(json!({
                    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "frontend", "namespace": "staging"},
                    "spec": {"parentRefs": [{"name": "public"}],
                        "hostnames": ["frontend-staging.movies.test"],
                        "rules": [{"backendRefs": [{"name": "frontend", "port": 8080}]}]}
                }))
                .expect("an HTTPRoute"),
            )
            .await
            .expect("staging's HTTPRoute");
        for ns in ["alice", "bob"] {
            let copy = eventually(&format!("{ns} has a copy of staging's Ingress"), || async {
                ingresses(&self.client, ns).get_opt("frontend").await.ok()?
            })
            .await;
            assert!(managed(&copy.metadata), "{copy:?}");
            let hosts: Vec<_> = copy
                .spec
                .iter()
                .flat_map(|s| s.rules.iter().flatten())
                .filter_map(|r| r.host.clone())
                .collect();
            assert_eq!(hosts, [format!("frontend-{ns}.movies.test")]);
            let route = eventually(
                &format!("{ns} has a copy of staging's HTTPRoute"),
                || async { routes(&self.client, ns).get_opt("frontend").await.ok()? },
            )
            .await;
            let spec = &route.data["spec"];
            assert_eq!(
                spec["hostnames"],
                json!([format!("frontend-{ns}.movies.test")])
            );
            assert_eq!(spec["parentRefs"][0]["namespace"], "staging", "{spec}");
            assert_eq!(
                spec["rules"][0]["filters"],
                json!([{"type": "RequestHeaderModifier", "requestHeaderModifier":
                    {"add": [{"name": "baggage", "value": format!("okteto-divert={ns}")}]}}]),
                "{spec}"
            );
        }
        let lead = eventually(
            "bob has a Service frontend leading to staging's",
            || async {
                Api::<Service>::namespaced(self.client.clone(), "bob")
                    .get_opt("frontend")
                    .await
                    .ok()?
            },
        )
        .await;
        assert!(managed(&lead.metadata), "{lead:?}");
        assert!(
            lead.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_none(),
            "{lead:?}"
        );
        // alice runs frontend: her own Service is hers, even where the
        // controller had made one first (her `kubectl apply` raced the copy)
        // and released it when she applied hers over it.
        eventually("alice's frontend Service is hers", || async {
            let svc = Api::<Service>::namespaced(self.client.clone(), "alice")
                .get_opt("frontend")
                .await
                .ok()??;
            let selected = svc.spec.as_ref()?.selector.is_some();
            (selected && !managed(&svc.metadata)).then_some(())
        })
        .await;
    }

    /// Through nginx, which sends to pod IPs as ingress-nginx does: alice's
    /// and bob's preview URLs carry their keys down the whole chain, the
    /// shared URL is unchanged, and alice's own Ingress is served.
    /// The key cookie, as a browser gets it, through the ingress stand-in
    /// over HTTP/1.1 and h2c: off while staging does not allow it; once its
    /// owner annotates it, `?divert=alice` answers 303 with the cookie, the
    /// cookie takes the request (and the calls after it) to alice's copy,
    /// uncached, a WebSocket handshake with it reaches alice's frontend,
    /// `?divert=` clears it, and a cookie naming a namespace that did not
    /// opt in changes nothing. The annotation removed, it is off again.
    async fn key_cookie_through_the_ingress(&self) {
        const HOST: &str = "frontend-staging.movies.test";
        let served_by = |got: &divert_tests::Headed| -> Value {
            serde_json::from_str::<Value>(&got.body).map_or(Value::Null, |v| v["servedBy"].clone())
        };
        let off = self
            .at_the_edge(false, HOST, "/movies?divert=alice", &[])
            .await;
        assert_eq!(
            (off.status, served_by(&off)),
            (200, json!("frontend@staging")),
            "off: {off:?}"
        );
        assert_eq!(off.field("set-cookie"), None);

        let annotation = format!("{}=enabled", divert_core::names::annotation::KEY_COOKIE);
        ok(
            self.kubectl(&["annotate", "namespace", "staging", &annotation]),
            None,
        )
        .await;
        eventually("staging's proxies accept ?divert=", || async {
            let got = self.at_the_edge(false, HOST, "/?divert=alice", &[]).await;
            (got.status == 303).then_some(())
        })
        .await;
        for h2 in [false, true] {
            let what = if h2 { "h2c" } else { "HTTP/1.1" };
            let set = self
                .at_the_edge(h2, HOST, "/call/api:8080/movies?divert=alice", &[])
                .await;
            assert_eq!(set.status, 303, "{what}");
            assert_eq!(
                set.field("location"),
                Some("/call/api:8080/movies"),
                "{what}"
            );
            assert_eq!(
                set.field("set-cookie"),
                Some("divert=alice; Path=/; Max-Age=28800; HttpOnly; SameSite=Lax"),
                "{what}"
            );
            let followed = self
                .at_the_edge(
                    h2,
                    HOST,
                    "/call/api:8080/movies",
                    &["-H", "Cookie: divert=alice"],
                )
                .await;
            assert_eq!(followed.status, 200, "{what}: {followed:?}");
            let chain: Value = serde_json::from_str(&followed.body).expect("the app's JSON");
            assert_eq!(
                hops(&chain),
                [
                    (json!("frontend@alice"), key("alice")),
                    (json!("api@staging"), key("alice")),
                ],
                "{what}: {chain}"
            );
            assert_eq!(followed.field("cache-control"), Some("no-store"), "{what}");
            let cleared = self.at_the_edge(h2, HOST, "/?divert=", &[]).await;
            assert_eq!(cleared.status, 303, "{what}");
            assert_eq!(
                cleared.field("set-cookie"),
                Some("divert=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"),
                "{what}"
            );
            let plain = self
                .at_the_edge(h2, HOST, "/movies", &["-H", "Cookie: divert=plain"])
                .await;
            assert_eq!(
                served_by(&plain),
                json!("frontend@staging"),
                "{what}: plain did not opt in"
            );
            assert_eq!(plain.field("cache-control"), None, "{what}");
        }
        let nginx = format!(
            "{}:8080",
            handed(&self.nginx_ip, "the ingress controller's pod IP")
        );
        let ws = self
            .backend
            .exec(
                "plain",
                "bystander",
                "sleep",
                &[
                    "python3".into(),
                    self.backend.python("ws.py"),
                    "client".into(),
                    format!("ws://{HOST}/chat"),
                    "cookie=alice".into(),
                    "2".into(),
                    nginx,
                ],
            )
            .await;
        let replies: Vec<String> =
            serde_json::from_str(ok(ws, None).await.trim()).expect("ws.py's JSON");
        assert_eq!(replies, ["frontend@alice:m0", "frontend@alice:m1"]);

        let removed = format!("{}-", divert_core::names::annotation::KEY_COOKIE);
        ok(
            self.kubectl(&["annotate", "namespace", "staging", &removed]),
            None,
        )
        .await;
        eventually("staging's proxies ignore ?divert= again", || async {
            let got = self
                .at_the_edge(false, HOST, "/movies?divert=alice", &[])
                .await;
            (got.status == 200 && served_by(&got) == json!("frontend@staging")).then_some(())
        })
        .await;
        let after = self
            .at_the_edge(true, HOST, "/movies", &["-H", "Cookie: divert=alice"])
            .await;
        assert_eq!(
            served_by(&after),
            json!("frontend@staging"),
            "off again: {after:?}"
        );
    }

    async fn preview_urls_through_nginx(&mut self) {
        ok(
            self.kubectl(&["apply", "-f", "-"]),
            Some(fixture(
                "ingress-standin.yaml",
                ("divert-e2e-ingress:0.1.0", self.backend.ingress_image()),
            )),
        )
        .await;
        let nginx_ip = eventually("the ingress controller runs", || async {
            let list = Api::<Pod>::namespaced(self.client.clone(), "ingress")
                .list(&ListParams::default())
                .await
                .ok()?;
            let p = list.items.into_iter().next()?;
            let status = p.status?;
            (status.phase.as_deref() == Some("Running")).then_some(())?;
            status.pod_ip
        })
        .await;
        self.nginx_ip = Some(nginx_ip);
        let chain = "/call/api:8080/call/catalog:9090/call/rent:8080/movies";
        let alice = eventually("frontend-alice.movies.test is served", || {
            self.via_nginx("frontend-alice.movies.test", chain)
        })
        .await;
        assert_eq!(
            hops(&alice),
            [
                (json!("frontend@alice"), key("alice")),
                (json!("api@staging"), key("alice")),
                (json!("catalog@staging"), key("alice")),
                (json!("rent@staging"), key("alice")),
            ],
            "{alice}"
        );
        let bob = eventually("frontend-bob.movies.test is served", || {
            self.via_nginx("frontend-bob.movies.test", "/call/rent:8080/movies")
        })
        .await;
        assert_eq!(
            hops(&bob),
            [
                (json!("frontend@staging"), key("bob")),
                (json!("rent@bob"), key("bob")),
            ],
            "{bob}"
        );
        let shared = eventually("frontend-staging.movies.test is served", || {
            self.via_nginx("frontend-staging.movies.test", "/call/rent:8080/movies")
        })
        .await;
        assert_eq!(
            hops(&shared),
            [
                (json!("frontend@staging"), json!([])),
                (json!("rent@staging"), json!([])),
            ],
            "the shared URL is unchanged: {shared}"
        );
        let notes_seen = eventually("alice's own Ingress is served", || {
            self.via_nginx("notes-alice.movies.test", "/notes")
        })
        .await;
        assert_eq!(notes_seen["servedBy"], "frontend@alice", "{notes_seen}");
    }

    /// An edit of staging's Ingress reaches every copy.
    async fn ingress_edit_reaches_the_copies(&self) {
        ingresses(&self.client, "staging")
            .patch(
                "frontend",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {
                    "nginx.ingress.kubernetes.io/proxy-read-timeout": "30"}}})),
            )
            .await
            .expect("edit staging's Ingress");
        for ns in ["alice", "bob"] {
            eventually(&format!("the edit reaches {ns}'s copy"), || async {
                let copy = ingresses(&self.client, ns)
                    .get_opt("frontend")
                    .await
                    .ok()??;
                let a = copy.metadata.annotations?;
                (a.get("nginx.ingress.kubernetes.io/proxy-read-timeout")? == "30").then_some(())
            })
            .await;
        }
    }

    /// `divert preview` lists each namespace's URLs and what it runs (bob's
    /// Service that leads to staging's is not his), `divert check` shows the
    /// same beside each namespace, and a namespace that is not a divert
    /// namespace is refused.
    async fn preview_lists_the_urls(&self) {
        for (ns, want) in [
            (
                "alice",
                "alice (diverts from staging)\n  URLs:     http://frontend-alice.movies.test  http://notes-alice.movies.test\n  services: frontend\n",
            ),
            (
                "bob",
                "bob (diverts from staging)\n  URLs:     http://frontend-bob.movies.test\n  services: rent\n",
            ),
        ] {
            let mut preview = self.backend.divert("preview");
            preview.args(["-n", ns]);
            let listed = ok(preview, None).await;
            assert_eq!(listed, want, "{listed}");
        }
        let checked = ok(self.backend.check(), None).await;
        assert!(
            checked.contains("alice → staging: runs frontend; http://frontend-alice.movies.test"),
            "{checked}"
        );
        assert!(
            checked.contains("bob → staging: runs rent; http://frontend-bob.movies.test"),
            "{checked}"
        );
        let mut not_divert = self.backend.divert("preview");
        not_divert.args(["-n", "staging"]);
        let out = run(not_divert).await;
        assert_eq!(out.status.code(), Some(1));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("staging is not a divert namespace"),
            "{out:?}"
        );
    }

    /// The developer's workflow: carol deploys only her frontend from an
    /// Okteto manifest whose objects name no namespace (the commands'
    /// kubeconfig puts them in hers). Her preview URL serves her copy, the
    /// manifest's debug: true reaches her proxies, `divert ls` shows her;
    /// deployed again with a time limit it converges on the same state, and
    /// once the time is over she no longer diverts but keeps her workloads.
    /// Deployed again, she diverts again.
    async fn carol_deploys(&self) {
        self.backend.kubectl_in(self.work.path());
        let alice_yaml =
            String::from_utf8(example(&self.backend, "movies-alice.yaml")).expect("UTF-8");
        let carol_yaml: String = alice_yaml
            .split("\n---\n")
            .filter(|doc| !doc.contains("kind: Namespace") && doc.contains("kind:"))
            .map(|doc| {
                doc.lines()
                    .filter(|l| l.trim() != "namespace: alice")
                    .map(|l| format!("{}\n", l.replace("frontend@alice", "frontend@carol")))
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("---\n");
        std::fs::write(self.work.path().join("carol.yaml"), carol_yaml).expect("write carol.yaml");
        let okteto = self.manifest(
            Self::OKTETO,
            "deploy:\n  commands:\n  - name: Deploy carol's frontend\n    command: kubectl apply -f carol.yaml\n  \
             divert:\n    namespace: ${OKTETO_SHARED_NAMESPACE:-staging}\n    debug: true\n\
             destroy:\n- kubectl delete -f carol.yaml --wait=false\n",
        );
        let deploy_started = Instant::now();
        let deployed = ok(
            self.workflow("deploy", &["-f", &okteto, "-n", "carol"]),
            None,
        )
        .await;
        assert!(
            deployed.contains("Preview URLs:\n  http://frontend-carol.movies.test\n"),
            "{deployed}"
        );
        assert!(deployed.contains("Your services: frontend\n"), "{deployed}");
        // The manifest's debug: true reaches her pods' proxies.
        let pod = Api::<Pod>::namespaced(self.client.clone(), "carol")
            .list(&ListParams::default().labels("app.kubernetes.io/name=frontend"))
            .await
            .expect("carol's pods")
            .items
            .into_iter()
            .next()
            .expect("carol's frontend pod");
        let proxy_args = pod
            .spec
            .and_then(|s| s.init_containers)
            .unwrap_or_default()
            .into_iter()
            .find(|c| c.name == "divert-proxy")
            .and_then(|c| c.args)
            .unwrap_or_default();
        assert!(
            proxy_args
                .iter()
                .any(|a| a.ends_with("divert::decision=debug")),
            "{proxy_args:?}"
        );
        let carol = eventually("frontend-carol.movies.test is served", || {
            self.via_nginx("frontend-carol.movies.test", "/call/rent:8080/movies")
        })
        .await;
        eprintln!(
            "divert deploy to the first request served through the preview URL: {:.1}s",
            deploy_started.elapsed().as_secs_f64()
        );
        assert_eq!(
            hops(&carol),
            [
                (json!("frontend@carol"), key("carol")),
                (json!("rent@staging"), key("carol")),
            ],
            "{carol}"
        );
        // divert ls shows her.
        let ls = || async {
            let listed = ok(self.workflow("ls", &["-o", "json"]), None).await;
            let all: Value =
                serde_json::from_str(&listed).unwrap_or_else(|e| panic!("{e}: {listed}"));
            all.as_array()
                .expect("a list")
                .iter()
                .find(|n| n["namespace"] == "carol")
                .cloned()
        };
        let listed = eventually("divert ls counts carol's proxy", || async {
            ls().await.filter(|c| c["proxies"] == 1)
        })
        .await;
        assert_eq!(listed["sharedNamespace"], "staging", "{listed}");
        assert_eq!(listed["services"], json!(["frontend"]), "{listed}");
        assert_eq!(
            listed["urls"],
            json!(["http://frontend-carol.movies.test"]),
            "{listed}"
        );
        assert_eq!(
            listed["pods"],
            json!({"ready": 1, "injected": 1, "total": 1}),
            "{listed}"
        );
        assert_eq!(listed["ttlSeconds"], Value::Null, "{listed}");
        // Again, now with a time limit: the docs' "iterate" converges on the
        // same state.
        let again = ok(
            self.workflow("deploy", &["-f", &okteto, "-n", "carol", "--ttl", "10s"]),
            None,
        )
        .await;
        let summary = |out: &str| out[out.find("Preview URLs:").unwrap_or(0)..].to_owned();
        assert!(
            again.contains("deployment.apps/frontend unchanged"),
            "{again}"
        );
        assert_eq!(summary(&again), summary(&deployed));
        let ttl = ls().await.map(|c| c["ttlSeconds"].clone());
        assert!(
            ttl.as_ref()
                .and_then(Value::as_i64)
                .is_some_and(|t| (1..=10).contains(&t))
                || ttl.is_none(),
            "ten seconds at most, or already over: {ttl:?}"
        );
        // Once it is over, carol no longer diverts: no label, no copies, her
        // frontend still there.
        eventually("carol's time runs out", || async {
            let ns = self.namespaces().get_opt("carol").await.ok()??;
            let labelled = ns
                .metadata
                .labels
                .unwrap_or_default()
                .contains_key("divert.dev/shared-namespace");
            let copy = ingresses(&self.client, "carol")
                .get_opt("frontend")
                .await
                .ok()?;
            (!labelled && copy.is_none()).then_some(())
        })
        .await;
        assert!(
            Api::<Deployment>::namespaced(self.client.clone(), "carol")
                .get_opt("frontend")
                .await
                .expect("get")
                .is_some(),
            "her workloads stay"
        );
        assert!(ls().await.is_none(), "divert ls no longer lists carol");
        // Deployed again, she diverts again.
        ok(
            self.workflow("deploy", &["-f", &okteto, "-n", "carol"]),
            None,
        )
        .await;
    }

    /// Each mistake in an Okteto manifest, or in its commands, gets its own
    /// message and exit code; a failed command's output is shown.
    async fn deploy_names_each_mistake(&self) {
        for (body, code, says) in [
            (
                "deploy: [\"true\"]\ndivert:\n  namespace: nosuch\n",
                1,
                "the shared namespace nosuch does not exist",
            ),
            (
                "deploy: [\"true\"]\ndivert:\n  namespace: plain\n",
                1,
                "plain is not set up for Divert",
            ),
            (
                "deploy: [\"true\"]\ndivert:\n  driver: istio\n  namespace: staging\n",
                1,
                "this cluster's Divert was installed without the istio driver",
            ),
            (
                "deploy: [\"true\"]\ndivert:\n  driver: linkerd\n  namespace: staging\n",
                64,
                "divert: unknown driver \"linkerd\", expected divert, nginx or istio at line 3",
            ),
            (
                "deploy:\n  commands: {frontend: true}\n  divert:\n    namespace: staging\n",
                64,
                "deploy.commands: invalid type: map, expected a sequence at line 2",
            ),
            (
                "deploy:\n- echo the-command-said-this; exit 3\ndivert:\n  namespace: staging\n",
                1,
                "failed with exit status 3",
            ),
        ] {
            let file = self.manifest("mistake.yml", body);
            let out = run(self.workflow("deploy", &["-f", &file, "-n", "carol"])).await;
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            assert_eq!(out.status.code(), Some(code), "{body}: {stdout}{stderr}");
            assert!(stderr.contains(says), "{body}: {stderr}");
            if code == 1 && says.contains("exit status") {
                assert!(
                    stdout.contains("the-command-said-this"),
                    "its output shown: {stdout}"
                );
            }
        }
    }

    /// `divert destroy`: the destroy commands, the label and the copies go,
    /// and the namespace with --delete-namespace.
    async fn carol_destroys(&self) {
        let destroyed = run(self.workflow(
            "destroy",
            &["-f", &self.okteto(), "-n", "carol", "--delete-namespace"],
        ))
        .await;
        assert!(
            destroyed.status.success(),
            "{}",
            String::from_utf8_lossy(&destroyed.stderr)
        );
        assert!(
            self.namespaces()
                .get_opt("carol")
                .await
                .expect("get carol")
                .is_none(),
            "carol is deleted"
        );
    }

    /// dana may only edit her own namespace (the built-in edit role bound
    /// there, a service account's token as her credentials): she can
    /// neither read nor label namespaces, so divert deploy asks the
    /// controller with a ConfigMap, which staging allows for namespaces of
    /// team movies; her preview URL serves her copy.
    async fn dana_deploys_with_the_edit_role(&mut self) {
        for args in [
            &["create", "namespace", "dana"][..],
            &["label", "namespace", "dana", "team=movies"],
            &["-n", "dana", "create", "serviceaccount", "dev"],
            &[
                "-n",
                "dana",
                "create",
                "rolebinding",
                "dev-edit",
                "--clusterrole=edit",
                "--serviceaccount=dana:dev",
            ],
            &[
                "annotate",
                "namespace",
                "staging",
                "divert.dev/divert-allowed=team=movies",
            ],
        ] {
            ok(self.kubectl(args), None).await;
        }
        let token = ok(
            self.kubectl(&["-n", "dana", "create", "token", "dev", "--duration=1h"]),
            None,
        )
        .await;
        self.backend
            .kubeconfig_with_token(&token, &self.dev_config());
        self.dana_token = Some(token);
        std::fs::write(
            self.work.path().join("carol.yaml"),
            std::fs::read_to_string(self.work.path().join("carol.yaml"))
                .expect("read carol.yaml")
                .replace("frontend@carol", "frontend@dana"),
        )
        .expect("write dana's frontend");
        let out = run(self.as_dev("deploy", &["-f", &self.okteto(), "-n", "dana"])).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{stdout}{stderr}");
        assert!(
            stderr.contains("asked for with the ConfigMap divert"),
            "says which way it used: {stderr}"
        );
        assert!(
            stdout.contains("Preview URLs:\n  http://frontend-dana.movies.test\n"),
            "{stdout}"
        );
        let dana = eventually("frontend-dana.movies.test is served", || {
            self.via_nginx("frontend-dana.movies.test", "/")
        })
        .await;
        assert_eq!(dana["servedBy"], "frontend@dana", "{dana}");
        assert_eq!(dana["baggage"], key("dana"), "{dana}");
    }

    /// The takeover of the isolation issue, tried with dana's own
    /// credentials: an Ingress of a class nobody serves whose hosts are
    /// staging's frontend by its cluster names and by its public URL, and
    /// another dressed as one of the controller's copies. Preview hosts are
    /// made from staging's Ingresses only, so neither claims anything.
    async fn dana_cannot_take_staging_hosts(&self) {
        let dana_client = {
            let config =
                kube::config::Kubeconfig::read_from(self.dev_config()).expect("dana's kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(config, &Default::default())
                .await
                .expect("dana's client config");
            kube::Client::try_from(config).expect("dana's client")
        };
        let takeover = |name: &str, forged: bool| {
            let mut metadata = json!({"name": name, "namespace": "dana"});
            if forged {
                metadata["labels"] = json!({"divert.dev/managed-by": "divert-controller"});
                metadata["annotations"] = json!({"divert.dev/copied-from": "staging/frontend"});
            }
            let rules: Vec<Value> = [
                "frontend",
                "frontend.staging",
                "frontend.staging.svc.cluster.local",
                "frontend-staging.movies.test",
            ]
            .iter()
            .map(|h| {
                json!({"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "frontend", "port": {"number": 8080}}}}]}})
            })
            .collect();
            serde_json::from_value::<Ingress>(json!({
                "metadata": metadata,
                "spec": {"ingressClassName": "nobody-serves-this", "rules": rules}
            }))
            .expect("an Ingress")
        };
        let dana_ingresses: Api<Ingress> = Api::namespaced(dana_client, "dana");
        for (name, forged) in [("takeover", false), ("forged", true)] {
            dana_ingresses
                .create(&kube::api::PostParams::default(), &takeover(name, forged))
                .await
                .unwrap_or_else(|e| panic!("dana may create Ingresses in her namespace: {e}"));
        }
        // A marker after them, on staging's side: once dana's preview host
        // for it routes, the controller has seen her Ingresses too (one
        // watch, in order) and every proxy has the map that followed.
        ingresses(&self.client, "staging")
            .create(
                &kube::api::PostParams::default(),
                &serde_json::from_value::<Ingress>(json!({
                    "metadata": {"name": "marker", "namespace": "staging"},
                    "spec": {"ingressClassName": "nginx", "rules": [{"host": "marker-staging.movies.test",
                        "http": {"paths": [{"path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "frontend", "port": {"name": "http"}}}}]}}]}
                }))
                .expect("an Ingress"),
            )
            .await
            .expect("create staging's marker Ingress");
        let unkeyed_from_staging = |host: &'static str| async move {
            let c = self.in_client(&["curl".into()]).await;
            let (code, body) = try_curl_with(
                c,
                &[
                    "http://frontend.staging:8080/",
                    "-H",
                    &format!("Host: {host}"),
                ],
            )
            .await
            .ok()?;
            (code == 200).then(|| serde_json::from_str::<Value>(&body).ok())?
        };
        eventually("dana's preview host of staging's marker routes", || async {
            let seen = unkeyed_from_staging("marker-dana.movies.test").await?;
            (seen["servedBy"] == "frontend@dana").then_some(())
        })
        .await;
        for host in [
            "frontend",
            "frontend.staging",
            "frontend.staging.svc.cluster.local",
            "frontend-staging.movies.test",
        ] {
            let seen = unkeyed_from_staging(host).await.expect("staging answers");
            assert_eq!(
                (&seen["servedBy"], &seen["baggage"]),
                (&json!("frontend@staging"), &json!([])),
                "an unkeyed call for {host} stays staging's: {seen}"
            );
        }
        let shared = self
            .via_nginx("frontend-staging.movies.test", "/")
            .await
            .expect("staging's URL is served");
        assert_eq!(shared["servedBy"], "frontend@staging", "{shared}");
        assert_eq!(shared["baggage"], json!([]), "{shared}");
        let dana = self
            .via_nginx("frontend-dana.movies.test", "/")
            .await
            .expect("dana's preview URL still works");
        assert_eq!(dana["servedBy"], "frontend@dana", "{dana}");
        ingresses(&self.client, "staging")
            .delete("marker", &DeleteParams::default())
            .await
            .expect("delete the marker");
    }

    /// Nor can dana watch staging's requests through the controller: she
    /// may not read staging's pods' logs.
    async fn dana_may_not_tap_staging(&self) {
        let token = handed(&self.dana_token, "dana's token");
        let dana_token = self.secrets.path().join("dana");
        std::fs::write(&dana_token, token.trim()).expect("write dana's token");
        let e = self
            .refused(
                &dana_token.display().to_string(),
                strings(&["--proxy-namespace", "staging"]),
            )
            .await;
        assert!(e.contains("PermissionDenied"), "{e}");
    }

    /// dana's destroy withdraws the request, and the controller takes its
    /// label back; the namespace is hers to keep. Without staging's consent
    /// the request is refused, with the reason.
    async fn dana_destroys_and_consent_is_needed(&self) {
        let out = run(self.as_dev("destroy", &["-f", &self.okteto(), "-n", "dana"])).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = self.namespaces().get("dana").await.expect("dana stays");
        assert!(
            !ns.metadata
                .labels
                .unwrap_or_default()
                .contains_key("divert.dev/shared-namespace"),
            "the controller removed the label it set"
        );
        ok(
            self.kubectl(&[
                "annotate",
                "namespace",
                "staging",
                "divert.dev/divert-allowed-",
            ]),
            None,
        )
        .await;
        let out = run(self.as_dev(
            "deploy",
            &["-f", &self.okteto(), "-n", "dana", "--wait", "30s"],
        ))
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("staging does not let namespaces opt in"),
            "{stderr}"
        );
    }

    /// failurePolicy Ignore: with the controller stopped, a new pod is still
    /// created (uninjected), and the proxies keep routing on their last
    /// table; with the controller back, `divert check` names the pod that
    /// missed its proxy, with the fix, and once it is gone every proxy has
    /// reconnected and the check passes.
    async fn controller_down(&self) {
        scale(&self.backend, "divert", "divert-controller", 0).await;
        let pods_in = |ns: &str| Api::<Pod>::namespaced(self.client.clone(), ns);
        eventually_none(
            "the controller's pod is gone",
            &pods_in("divert"),
            &ListParams::default(),
        )
        .await;
        let while_down = pods_in("staging")
            .patch("while-down", &PatchParams::apply("divert-tests"), &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "while-down", "namespace": "staging"},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "sleep", "image": self.backend.client_image(), "command": ["sleep", "3600"]}]}
            })))
            .await
            .expect("a pod is created while the webhook is down");
        assert!(
            while_down
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_none(),
            "created without injection"
        );
        let seen = self.as_alice("http://frontend:8080/").await;
        assert_eq!(
            seen["servedBy"], "frontend@alice",
            "routing on a stale table: {seen}"
        );
        scale(&self.backend, "divert", "divert-controller", 1).await;
        let controller = self.controller();
        eventually("the controller is back", || {
            deployment_ready(&controller, "divert-controller")
        })
        .await;
        let report = eventually("divert check names staging/while-down", || async {
            let out = run(self.backend.check()).await;
            let report = String::from_utf8_lossy(&out.stdout).into_owned();
            (out.status.code() == Some(1) && report.contains("staging/while-down"))
                .then_some(report)
        })
        .await;
        eprintln!("{report}");
        assert!(
            report.contains("webhook was unreachable"),
            "the hint names the cause: {report}"
        );
        pods_in("staging")
            .delete("while-down", &DeleteParams::default())
            .await
            .expect("delete while-down");
        eventually("every proxy reconnects and divert check passes", || async {
            run(self.backend.check())
                .await
                .status
                .success()
                .then_some(())
        })
        .await;
    }

    /// Alice's frontend scaled to zero: her key falls back to staging's
    /// copy; scaled back, it reaches hers again.
    async fn alice_scaled_to_zero(&self) {
        scale(&self.backend, "alice", "frontend", 0).await;
        eventually("alice's key falls back to staging", || {
            self.routed("frontend@staging")
        })
        .await;
        scale(&self.backend, "alice", "frontend", 1).await;
        eventually("alice's key reaches her copy again", || {
            self.routed("frontend@alice")
        })
        .await;
    }

    /// Alice's label removed: her copies go, her own Ingress stays as it
    /// was (never written), and bob's copies stay.
    async fn alice_unlabelled(&self) {
        self.namespaces()
            .patch(
                "alice",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"divert.dev/shared-namespace": null}}}),
                ),
            )
            .await
            .expect("unlabel alice");
        eventually("alice's copies are deleted", || async {
            let ingress = ingresses(&self.client, "alice")
                .get_opt("frontend")
                .await
                .ok()?;
            let route = routes(&self.client, "alice")
                .get_opt("frontend")
                .await
                .ok()?;
            (ingress.is_none() && route.is_none()).then_some(())
        })
        .await;
        let kept = ingresses(&self.client, "alice")
            .get("notes")
            .await
            .expect("alice's own Ingress");
        let notes = handed(&self.notes, "alice's own Ingress as it was made");
        assert_eq!(
            (kept.metadata.resource_version, kept.spec),
            (notes.metadata.resource_version.clone(), notes.spec.clone()),
            "the user's Ingress is never written"
        );
        assert!(
            ingresses(&self.client, "bob")
                .get_opt("frontend")
                .await
                .expect("get")
                .is_some(),
            "bob's copies stay"
        );
    }

    /// Namespace alice deleted: the table drops it, and her key is ignored.
    async fn alice_deleted(&self) {
        self.namespaces()
            .delete("alice", &DeleteParams::default())
            .await
            .expect("delete namespace alice");
        eventually("the table drops alice", || self.routed("frontend@staging")).await;
        eventually("namespace alice is gone", || async {
            self.namespaces()
                .get_opt("alice")
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
    }

    /// Uninstall removes every object the install made: the divert
    /// namespace and the cluster-scoped objects too.
    async fn uninstall(&self) {
        let manifests = handed(&self.manifests, "what divert install printed");
        ok(
            self.kubectl(&["delete", "--wait=true", "-f", "-"]),
            Some(manifests.clone().into_bytes()),
        )
        .await;
        let namespaces = self.namespaces();
        eventually("the divert namespace is gone", || async {
            namespaces
                .get_opt("divert")
                .await
                .ok()?
                .is_none()
                .then_some(())
        })
        .await;
        let gone = (
            Api::<ClusterRole>::all(self.client.clone())
                .get_opt("divert-controller")
                .await
                .expect("get"),
            Api::<ClusterRoleBinding>::all(self.client.clone())
                .get_opt("divert-controller")
                .await
                .expect("get"),
            Api::<MutatingWebhookConfiguration>::all(self.client.clone())
                .get_opt("divert-injector")
                .await
                .expect("get"),
        );
        assert!(
            gone.0.is_none() && gone.1.is_none() && gone.2.is_none(),
            "uninstall left cluster-scoped objects: {gone:?}"
        );
    }
}

/// Waits until the object `name` is gone.
async fn gone<K>(api: &Api<K>, name: &str)
where
    K: Clone + k8s_openapi::serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} is gone"), || async {
        api.get_opt(name).await.ok()?.is_none().then_some(())
    })
    .await;
}

/// A pod's init containers and containers, by name, in order.
fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.init_containers
                .iter()
                .flatten()
                .chain(s.containers.iter())
        })
        .map(|c| c.name.clone())
        .collect()
}
