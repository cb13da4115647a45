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
use divert_tests::cluster::{self, Cluster};
use divert_tests::netns::divert_bin;
use divert_tests::{crate_dir, curl_with, have_python_modules, have_tool, python_with, run};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

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
            let steps: Vec<String> = node
                .kubelet
                .timeline(ns, &name)
                .iter()
                .map(|(step, at)| format!("{step} +{}ms", at.as_millis()))
                .collect();
            eprintln!("start of {ns}/{name}: {}", steps.join(", "));
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
    let chain = curl(vec![
        "-H".into(),
        "baggage: okteto-divert=alice".into(),
        "http://frontend:8080/call/api:8080/movies".into(),
    ])
    .await;
    assert_eq!(chain["servedBy"], "frontend@alice", "{chain}");
    assert_eq!(chain["downstream"]["servedBy"], "api@staging", "{chain}");
    assert_eq!(
        chain["downstream"]["baggage"],
        json!(["okteto-divert=alice"]),
        "{chain}"
    );

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
    let mut check = Command::new(divert_bin());
    check
        .arg("check")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig());
    let report = ok(check).await;
    eprintln!("{report}");

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
    drop(node);
}
