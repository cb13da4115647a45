//! Divert end to end on the real control plane: installed as users install
//! it, the Movies example deployed as users deploy it, every pod injected by
//! the real API server calling our webhook, run by the pod runner (`divert
//! init` with real iptables in the pod's namespace, the proxy as a native
//! sidecar fed by the controller, the app), and routing proven by what the
//! apps saw.
//!
//! Run it alone with `cargo test -p divert-tests --test cluster` (root, Go;
//! `cargo build -p divert-cli` first).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use divert_tests::cluster::images::Images;
use divert_tests::cluster::{self, Cluster, WAIT, eventually};
use divert_tests::netns::divert_bin;
use divert_tests::{
    crate_dir, curl_with, have_python_modules, have_tool, python_with, run, try_curl_with,
};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

/// The image table: the `divert` image is the binary under test, the
/// Movies example's stand-in image is the test app, curl's image is curl.
fn images() -> Images {
    Images::default()
        .with("divert", divert_bin(), (2102, 2102))
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
}

/// Runs `cmd` with `input` on its stdin; fails the test unless it succeeds.
async fn pipe(mut cmd: Command, input: Vec<u8>) -> String {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&input)?;
        }
        child.wait_with_output()
    })
    .await
    .expect("join")
    .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn ok(cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn divert_check(cluster: &Cluster) -> Command {
    let mut check = Command::new(divert_bin());
    check
        .arg("check")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig());
    check
}

/// `kubectl scale`, as a user does it.
async fn scale(cluster: &Cluster, ns: &str, deployment: &str, replicas: u32) {
    let mut c = cluster.kubectl();
    c.args([
        "-n",
        ns,
        "scale",
        &format!("deployment/{deployment}"),
        &format!("--replicas={replicas}"),
    ]);
    ok(c).await;
}

async fn deployment_ready(api: &Api<Deployment>, name: &str) -> Option<()> {
    let d = api.get_opt(name).await.ok()??;
    let want = d.spec.as_ref()?.replicas.unwrap_or(1);
    let status = d.status?;
    (status.ready_replicas.unwrap_or(0) == want && status.updated_replicas.unwrap_or(0) == want)
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divert_installs_injects_and_routes_on_a_real_control_plane() {
    if !cluster::available()
        || !have_tool("curl", &["--version"])
        || !have_python_modules(&["grpc", "grpc_tools"])
    {
        return;
    }
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let node = cluster.start_node(images()).await;
    let client = cluster.client().await;
    eprintln!(
        "cluster and node ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Installed as users install it: `divert install | kubectl apply -f -`.
    let manifests = ok({
        let mut c = Command::new(divert_bin());
        c.arg("install");
        c
    })
    .await;
    let applied = pipe(
        {
            let mut c = cluster.kubectl();
            c.args(["apply", "-f", "-"]);
            c
        },
        manifests.clone().into_bytes(),
    )
    .await;
    eprintln!("{applied}");
    let controller: Api<Deployment> = Api::namespaced(client.clone(), "divert");
    eventually(
        "the controller runs as a pod with its own token and RBAC",
        || deployment_ready(&controller, "divert-controller"),
    )
    .await;

    // The Movies example, as the README deploys it.
    let examples = crate_dir()
        .parent()
        .expect("workspace")
        .join("deploy/examples");
    for file in ["movies-staging.yaml", "movies-alice.yaml"] {
        let mut c = cluster.kubectl();
        c.args(["apply", "-f"]).arg(examples.join(file));
        ok(c).await;
    }
    for (ns, names) in [
        ("staging", &["frontend", "api", "catalog", "rent"][..]),
        ("alice", &["frontend"][..]),
    ] {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        for name in names {
            let what = format!("{ns}/{name} is ready");
            eventually(&what, || deployment_ready(&api, name)).await;
        }
    }

    // Every pod was injected by the API server calling the webhook: the
    // proxy is a native sidecar, after divert init.
    for ns in ["staging", "alice"] {
        let pods = Api::<Pod>::namespaced(client.clone(), ns)
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

    // What injection adds to a pod's start (BENCHMARKS.md): divert init's
    // run, and the proxy's start until its first table from the controller
    // (its startup probe on /ready), before the app's container starts.
    for ns in ["staging", "alice"] {
        for p in Api::<Pod>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .expect("list pods")
            .items
        {
            let name = p.metadata.name.unwrap_or_default();
            eprintln!(
                "start of {ns}/{name}: {}",
                node.kubelet.describe_start(ns, &name)
            );
        }
    }

    // A client pod in staging, made as users make one.
    let mut run_curl = cluster.kubectl();
    run_curl.args([
        "-n",
        "staging",
        "run",
        "curl",
        "--image=curlimages/curl:8.10.1",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
    ok(run_curl).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "staging");
    eventually("the client pod is Ready", || async {
        let p = pods.get_opt("curl").await.ok()??;
        let ready = p
            .status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        ready.then_some(())
    })
    .await;
    let (client_ns, _) = node
        .kubelet
        .pod_network("staging", "curl")
        .expect("the client's network");
    let curl = |args: Vec<String>| {
        let client_ns = client_ns.clone();
        async move {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &client_ns, "curl"]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, body) = curl_with(c, &args).await;
            assert_eq!(code, 200, "curl {args:?}: {body}");
            serde_json::from_str::<Value>(&body)
                .unwrap_or_else(|e| panic!("curl {args:?}: {e}: {body}"))
        }
    };

    // GET `url` from the client pod carrying alice's key.
    let as_alice = |url: &str| {
        curl(vec![
            "-H".into(),
            "baggage: okteto-divert=alice".into(),
            url.into(),
        ])
    };

    // HTTP/1.1 and h2c, by the key each request carries; what the app saw
    // proves where it went.
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
            let seen = curl(args).await;
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

    // Along the chain: alice's frontend calls `api` by its short name; alice
    // has no api, so her pod's DNS search list finds staging's, and the key
    // travels on.
    let chain = as_alice("http://frontend:8080/call/api:8080/movies").await;
    assert_eq!(chain["servedBy"], "frontend@alice", "{chain}");
    assert_eq!(chain["downstream"]["servedBy"], "api@staging", "{chain}");
    assert_eq!(
        chain["downstream"]["baggage"],
        json!(["okteto-divert=alice"]),
        "{chain}"
    );

    // In alice's pods, a request with no key is alice's (the proxy's
    // own-namespace default, in transparent mode fed by the controller):
    // her frontend calling staging's frontend by its full name reaches her
    // own copy. The first hop names alice's Service, so no key is needed.
    let own = curl(vec![
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
    // A short name in alice's pod finds her copy where she has one.
    let short = as_alice("http://frontend:8080/call/frontend:8080/short").await;
    assert_eq!(short["downstream"]["servedBy"], "frontend@alice", "{short}");

    // gRPC (Python grpcio): each call routed by its own key.
    let mut py = Command::new("ip");
    py.args(["netns", "exec", &client_ns, "python3"]);
    let out = python_with(
        py,
        "grpc_client.py",
        &[
            "frontend:8080".into(),
            "multiplex".into(),
            "alice".into(),
            "-".into(),
            "nobody".into(),
        ],
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
    // Concurrent streams on one channel, then the same calls again.
    let once = ["frontend@alice", "frontend@staging", "frontend@staging"];
    assert_eq!(served, [once, once].concat(), "{calls}");

    // `divert check` passes against the real cluster.
    let report = ok(divert_check(&cluster)).await;
    eprintln!("{report}");

    // `divert tap --controller` shows the decisions of staging's proxies
    // (run in the client pod, where the controller's Service resolves).
    let tap = {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &client_ns])
            .arg(divert_bin())
            .args([
                "tap",
                "--controller",
                "http://divert-controller.divert.svc:8086",
                "--proxy-namespace",
                "staging",
                "--key",
                "alice",
                "-n",
                "1",
                "--output",
                "json",
            ]);
        tokio::spawn(run(c))
    };
    let deadline = Instant::now() + WAIT;
    while !tap.is_finished() {
        assert!(Instant::now() < deadline, "divert tap saw no decision");
        as_alice("http://frontend:8080/tap").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tapped = tap.await.expect("join the tap");
    let line = String::from_utf8_lossy(&tapped.stdout).into_owned();
    assert!(
        tapped.status.success(),
        "divert tap: {line}{}",
        String::from_utf8_lossy(&tapped.stderr)
    );
    let event: Value = serde_json::from_str(line.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(event["key"], "alice", "{event}");
    assert_eq!(event["decision"], "diverted", "{event}");

    // Pods the webhook must leave alone: one that opts out in an opted-in
    // namespace, one in a namespace with no label. `divert check` names the
    // first, with its hint.
    let plain: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    plain
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
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let pod = eventually("the pod is admitted", || async {
            api.patch("bystander", &PatchParams::apply("divert-tests"), &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "bystander", "namespace": ns, "labels": labels},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "sleep", "image": "curlimages/curl", "command": ["sleep", "3600"]}]}
            }))).await.ok()
        })
        .await;
        let names: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
            })
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(names, ["sleep"], "{ns}/bystander is not injected");
    }
    // Opting out is not a fault: `divert check` still passes once the pod
    // runs.
    eventually("staging/bystander runs", || async {
        let p = Api::<Pod>::namespaced(client.clone(), "staging")
            .get_opt("bystander")
            .await
            .ok()??;
        (p.status?.phase.as_deref() == Some("Running")).then_some(())
    })
    .await;
    ok(divert_check(&cluster)).await;

    // failurePolicy Ignore: with the controller stopped, a new pod is still
    // created (uninjected), and the proxies keep routing on their last
    // table; with the controller back, every proxy reconnects, and `divert
    // check` names the pod that missed its proxy, with the fix.
    scale(&cluster, "divert", "divert-controller", 0).await;
    let pods_in = |ns: &str| Api::<Pod>::namespaced(client.clone(), ns);
    eventually("the controller's pod is gone", || async {
        pods_in("divert")
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
    let while_down = pods_in("staging")
        .patch("while-down", &PatchParams::apply("divert-tests"), &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "while-down", "namespace": "staging"},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "sleep", "image": "curlimages/curl", "command": ["sleep", "3600"]}]}
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
    let seen = as_alice("http://frontend:8080/").await;
    assert_eq!(
        seen["servedBy"], "frontend@alice",
        "routing on a stale table: {seen}"
    );
    scale(&cluster, "divert", "divert-controller", 1).await;
    eventually("the controller is back", || {
        deployment_ready(&controller, "divert-controller")
    })
    .await;
    let report = eventually("divert check names staging/while-down", || async {
        let out = run(divert_check(&cluster)).await;
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code() == Some(1) && report.contains("staging/while-down")).then_some(report)
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
        run(divert_check(&cluster))
            .await
            .status
            .success()
            .then_some(())
    })
    .await;

    // Alice's frontend scaled to zero: her key falls back to staging's copy.
    scale(&cluster, "alice", "frontend", 0).await;
    // While a copy scales down, its endpoint may refuse before the proxies
    // hear it is gone (502): poll for the answer, as a client retries.
    let routed = |want: &'static str| {
        let client_ns = client_ns.clone();
        async move {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &client_ns, "curl"]);
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
    };
    eventually("alice's key falls back to staging", || {
        routed("frontend@staging")
    })
    .await;
    scale(&cluster, "alice", "frontend", 1).await;
    eventually("alice's key reaches her copy again", || {
        routed("frontend@alice")
    })
    .await;

    // Namespace alice deleted: the table drops it, and her key is ignored.
    plain
        .delete("alice", &DeleteParams::default())
        .await
        .expect("delete namespace alice");
    eventually("the table drops alice", || routed("frontend@staging")).await;
    eventually("namespace alice is gone", || async {
        plain.get_opt("alice").await.ok()?.is_none().then_some(())
    })
    .await;

    // Uninstall removes every object the install made.
    pipe(
        {
            let mut c = cluster.kubectl();
            c.args(["delete", "--wait=true", "-f", "-"]);
            c
        },
        manifests.into_bytes(),
    )
    .await;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    eventually("the divert namespace is gone", || async {
        namespaces
            .get_opt("divert")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    // The cluster-scoped objects too.
    let gone = (
        Api::<ClusterRole>::all(client.clone())
            .get_opt("divert-controller")
            .await
            .expect("get"),
        Api::<ClusterRoleBinding>::all(client.clone())
            .get_opt("divert-controller")
            .await
            .expect("get"),
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get_opt("divert-injector")
            .await
            .expect("get"),
    );
    assert!(
        gone.0.is_none() && gone.1.is_none() && gone.2.is_none(),
        "uninstall left cluster-scoped objects: {gone:?}"
    );
    drop(node);
}
