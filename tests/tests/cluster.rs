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
//! Run it alone with `cargo test -p divert-tests --test cluster` (root, Go;
//! `cargo build -p divert-cli -p divert-sidecar` first).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use divert_tests::backend::Backend;
use divert_tests::cluster::images::Images;
use divert_tests::cluster::{WAIT, eventually, eventually_none};
use divert_tests::netns::{divert_bin, sidecar_bin};
use divert_tests::{crate_dir, curl_with, ok, run, try_curl_with};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divert_installs_injects_and_routes_on_a_real_control_plane() {
    let started = Instant::now();
    let Some(backend) = Backend::start(images(), "curlimages/curl:8.10.1").await else {
        return;
    };
    let client = backend.client();
    eprintln!("cluster ready in {:.1}s", started.elapsed().as_secs_f64());
    let kubectl = |args: &[&str]| {
        let mut c = backend.kubectl();
        c.args(args);
        c
    };

    // Installed as users install it: `divert install | kubectl apply -f -`.
    let manifests = ok(backend.install(), None).await;
    let applied = ok(
        kubectl(&["apply", "-f", "-"]),
        Some(manifests.clone().into_bytes()),
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
    for file in ["movies-staging.yaml", "movies-alice.yaml"] {
        ok(
            kubectl(&["apply", "-f", "-"]),
            Some(example(&backend, file)),
        )
        .await;
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
            if let Some(start) = backend.describe_start(ns, &name) {
                eprintln!("start of {ns}/{name}: {start}");
            }
        }
    }

    // A client pod in staging, made as users make one.
    ok(
        kubectl(&[
            "-n",
            "staging",
            "run",
            "curl",
            &format!("--image={}", backend.client_image()),
            "--restart=Never",
            "--command",
            "--",
            "sleep",
            "3600",
        ]),
        None,
    )
    .await;
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
    // A command run in the client pod.
    let in_client = {
        let backend = &backend;
        move |argv: Vec<String>| async move { backend.exec("staging", "curl", "curl", &argv).await }
    };
    let curl = |args: Vec<String>| async move {
        let c = in_client(vec!["curl".into()]).await;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl_with(c, &args).await;
        assert_eq!(code, 200, "curl {args:?}: {body}");
        serde_json::from_str::<Value>(&body)
            .unwrap_or_else(|e| panic!("curl {args:?}: {e}: {body}"))
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
    let out = ok(
        in_client(vec![
            "python3".into(),
            backend.grpc_client(),
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
    // Concurrent streams on one channel, then the same calls again.
    let once = ["frontend@alice", "frontend@staging", "frontend@staging"];
    assert_eq!(served, [once, once].concat(), "{calls}");

    // `divert check` passes against the real cluster.
    let report = ok(backend.check(), None).await;
    eprintln!("{report}");

    // `divert tap --controller` shows the decisions of staging's proxies,
    // run with the image's own binary in the controller's pod (as `kubectl
    // exec` would), against the port its Deployment names `grpc`.
    let deployment = controller
        .get("divert-controller")
        .await
        .expect("get the controller's Deployment");
    let template = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("the controller's pod template");
    let container = &template.containers[0];
    let grpc_port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .expect("the controller's grpc port")
        .container_port;
    let controller_pod = eventually("the controller's pod runs", || async {
        Api::<Pod>::namespaced(client.clone(), "divert")
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
    let tap = {
        let argv = [
            "divert".to_string(),
            "tap".into(),
            "--controller".into(),
            format!("http://127.0.0.1:{grpc_port}"),
            "--proxy-namespace".into(),
            "staging".into(),
            "--key".into(),
            "alice".into(),
            "-n".into(),
            "1".into(),
            "--output".into(),
            "json".into(),
        ];
        let c = backend
            .exec("divert", &controller_pod, &container.name, &argv)
            .await;
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
    ok(backend.check(), None).await;

    // Routing at the receiving pod: plain/bystander has no sidecar and sends
    // straight to the pod IP of staging's frontend, as an ingress controller
    // does. Staging's inbound proxy sends alice's key on to her frontend,
    // whose own call goes on down the chain; other requests stay where they
    // were sent. Every app's readiness probe (httpGet, from the node) has
    // gone through its pod's inbound proxy all along.
    let pod_ip = eventually(
        "plain/bystander runs and staging's frontend has a pod IP",
        || async {
            let p = Api::<Pod>::namespaced(client.clone(), "plain")
                .get_opt("bystander")
                .await
                .ok()??;
            (p.status?.phase.as_deref() == Some("Running")).then_some(())?;
            let list = Api::<Pod>::namespaced(client.clone(), "staging")
                .list(&ListParams::default().labels("app.kubernetes.io/name=frontend"))
                .await
                .ok()?;
            list.items.into_iter().find_map(|p| p.status?.pod_ip)
        },
    )
    .await;
    let from_bystander = |headers: &'static [&'static str], path: &'static str| {
        let (backend, url) = (&backend, format!("http://{pod_ip}:8080{path}"));
        async move {
            let c = backend
                .exec("plain", "bystander", "sleep", &["curl".to_string()])
                .await;
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
    let chain = from_bystander(&["baggage: okteto-divert=alice"], "/call/api:8080/movies").await;
    assert_eq!(chain["servedBy"], "frontend@alice", "{chain}");
    assert_eq!(chain["downstream"]["servedBy"], "api@staging", "{chain}");
    assert_eq!(chain["baggage"], json!(["okteto-divert=alice"]), "{chain}");
    let plain_call = from_bystander(&[], "/").await;
    assert_eq!(plain_call["servedBy"], "frontend@staging", "{plain_call}");

    // Preview hosts: an Ingress in alice names her host, one in staging the
    // shared one. A request for her host, with no key, reaching staging's
    // frontend pod (as from an ingress controller) is hers: her key is added
    // to its baggage and it goes on to her frontend and down the chain. The
    // shared host stays staging's.
    for (ns, host) in [
        ("staging", "frontend-staging.movies.test"),
        ("alice", "frontend-alice.movies.test"),
    ] {
        Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(client.clone(), ns)
            .patch(
                "frontend",
                &PatchParams::apply("divert-tests"),
                &Patch::Apply(json!({
                    "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                    "metadata": {"name": "frontend", "namespace": ns},
                    "spec": {"rules": [{"host": host, "http": {"paths": [{
                        "path": "/", "pathType": "Prefix",
                        "backend": {"service": {"name": "frontend", "port": {"number": 8080}}}
                    }]}}]}
                })),
            )
            .await
            .unwrap_or_else(|e| panic!("ingress in {ns}: {e}"));
    }
    let preview = eventually("alice's preview host reaches her frontend", || async {
        let seen = from_bystander(
            &["Host: frontend-alice.movies.test"],
            "/call/api:8080/movies",
        )
        .await;
        (seen["servedBy"] == "frontend@alice").then_some(seen)
    })
    .await;
    assert_eq!(
        preview["baggage"],
        json!(["okteto-divert=alice"]),
        "{preview}"
    );
    assert_eq!(
        preview["downstream"]["servedBy"], "api@staging",
        "{preview}"
    );
    assert_eq!(
        preview["downstream"]["baggage"],
        json!(["okteto-divert=alice"]),
        "the key travels on: {preview}"
    );
    let shared = from_bystander(&["Host: frontend-staging.movies.test"], "/").await;
    assert_eq!(shared["servedBy"], "frontend@staging", "{shared}");
    assert_eq!(shared["baggage"], json!([]), "{shared}");
    // `divert preview` lists alice's URL and what she runs.
    let mut preview = backend.divert("preview");
    preview.args(["-n", "alice"]);
    let listed = ok(preview, None).await;
    assert_eq!(
        listed,
        "alice (diverts from staging)\n  URLs:     http://frontend-alice.movies.test\n  services: frontend\n",
        "{listed}"
    );
    // `divert check` shows the same beside the namespace.
    let checked = ok(backend.check(), None).await;
    assert!(
        checked.contains("alice → staging: runs frontend; http://frontend-alice.movies.test"),
        "{checked}"
    );
    let mut not_divert = backend.divert("preview");
    not_divert.args(["-n", "staging"]);
    let out = run(not_divert).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("staging is not a divert namespace"),
        "{out:?}"
    );

    // failurePolicy Ignore: with the controller stopped, a new pod is still
    // created (uninjected), and the proxies keep routing on their last
    // table; with the controller back, every proxy reconnects, and `divert
    // check` names the pod that missed its proxy, with the fix.
    scale(&backend, "divert", "divert-controller", 0).await;
    let pods_in = |ns: &str| Api::<Pod>::namespaced(client.clone(), ns);
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
    scale(&backend, "divert", "divert-controller", 1).await;
    eventually("the controller is back", || {
        deployment_ready(&controller, "divert-controller")
    })
    .await;
    let report = eventually("divert check names staging/while-down", || async {
        let out = run(backend.check()).await;
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
        run(backend.check()).await.status.success().then_some(())
    })
    .await;

    // Alice's frontend scaled to zero: her key falls back to staging's copy.
    scale(&backend, "alice", "frontend", 0).await;
    // While a copy scales down, its endpoint may refuse before the proxies
    // hear it is gone (502): poll for the answer, as a client retries.
    let routed = |want: &'static str| async move {
        let c = in_client(vec!["curl".into()]).await;
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
    };
    eventually("alice's key falls back to staging", || {
        routed("frontend@staging")
    })
    .await;
    scale(&backend, "alice", "frontend", 1).await;
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
    ok(
        kubectl(&["delete", "--wait=true", "-f", "-"]),
        Some(manifests.into_bytes()),
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
    drop(backend);
}
