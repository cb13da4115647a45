//! Routing at the receiving pod (the routing rule's step 7), in network namespaces
//! with real iptables: `divert-proxy init` programs staging's and alice's
//! pods, each runs its proxy, and a caller pod *without* a sidecar (an
//! ingress controller, a pod that did not opt in) dials staging's pod IP
//! directly with real clients (curl, Python grpcio and websockets, raw TCP).
//! What the apps record proves where each request went and through whom.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use divert_tests::grpc::GrpcUpstream;
use divert_tests::netns::{self, Lan, Netns, Pod, Process, divert_bin, run_ok, sidecar_bin};
use divert_tests::raw::sample;
use divert_tests::tcp::{self, echo_after_eof_server};
use divert_tests::ws::WsServer;
use divert_tests::{TempDir, Upstream, curl_with, have_python_modules, have_tool, python_with};

const PROXY_UID: u32 = 2102;
/// The app port of the web service, on both pods.
const WEB: u16 = 8080;
/// A port of staging's pod the annotation keeps away from the proxy.
const SKIPPED: u16 = 9999;

fn sock(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn divert_init(ns: &Netns, args: &[&str]) {
    run_ok(ns.command(sidecar_bin()).arg("init").args(args));
}

/// The pod's proxy, as the sidecar runs it: transparent, its namespace and
/// IP from the downward API, the admin server on every address (kubelet
/// probes it).
fn start_proxy(pod: &Pod, namespace: &str, registry: &std::path::Path) -> Process {
    let mut cmd = pod.ns.command_as(PROXY_UID, sidecar_bin());
    cmd.args([
        "--log-level",
        "debug",
        "proxy",
        "--transparent",
        "--registry",
    ])
    .arg(registry)
    .args(["--namespace", namespace, "--admin-addr", "0.0.0.0:4191"])
    .args(["--pod-ip", &pod.ipv4.to_string()]);
    Process::spawn(cmd, "divert proxy ready")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_pod_go_to_the_keys_copy_of_its_service() {
    if !netns::available()
        || !have_tool("curl", &["--version"])
        || !have_python_modules(&["grpc", "grpc_tools", "websockets"])
    {
        return;
    }
    let mut lan = Lan::new();
    let caller = lan.pod("caller");
    let staging = lan.pod("staging");
    let alice = lan.pod("alice");
    let (s4, a4) = (staging.ipv4, alice.ipv4);

    // The apps.
    let web_staging = Upstream::serve(staging.ns.listen(sock(s4, WEB)), "web", "staging");
    let web_alice = Upstream::serve(alice.ns.listen(sock(a4, WEB)), "web", "alice");
    let skipped = Upstream::serve(staging.ns.listen(sock(s4, SKIPPED)), "metrics", "staging");
    let grpc_staging = GrpcUpstream::serve(staging.ns.listen(sock(s4, 9090)), "staging");
    let grpc_alice = GrpcUpstream::serve(alice.ns.listen(sock(a4, 9090)), "alice");
    let chat_staging =
        WsServer::start_with(staging.ns.command("python3"), "chat@staging", s4.into());
    let chat_alice = WsServer::start_with(alice.ns.command("python3"), "chat@alice", a4.into());
    let echo = tokio::spawn(echo_after_eof_server(staging.ns.listen(sock(s4, 7000))));

    // Both pods as injection makes them.
    let skip = SKIPPED.to_string();
    divert_init(&staging.ns, &["--skip-inbound-ports", &skip]);
    divert_init(&alice.ns, &[]);
    let dir = TempDir::readable_by_all("inbound");
    let registry = dir.path().join("registry.yaml");
    let (ws_s, ws_a) = (chat_staging.addr.port(), chat_alice.addr.port());
    std::fs::write(
        &registry,
        format!(
            "namespaces:
  - {{ name: staging }}
  - {{ name: alice, sharedNamespace: staging }}
  - {{ name: bob, sharedNamespace: staging }}
services:
  - {{ name: web, namespace: staging, addresses: ['10.96.0.10'], ports: [{{ name: http, port: 80, targetPort: {WEB} }}], endpoints: ['{s4}'] }}
  - {{ name: web, namespace: alice, addresses: ['10.96.1.10'], ports: [{{ name: http, port: 80, targetPort: {WEB} }}], endpoints: ['{a4}'] }}
  - {{ name: catalog, namespace: staging, addresses: ['10.96.0.20'], ports: [{{ name: grpc, port: 9090 }}], endpoints: ['{s4}'] }}
  - {{ name: catalog, namespace: alice, addresses: ['10.96.1.20'], ports: [{{ name: grpc, port: 9090 }}], endpoints: ['{a4}'] }}
  - {{ name: chat, namespace: staging, addresses: ['10.96.0.40'], ports: [{{ name: ws, port: 80, targetPort: {ws_s} }}], endpoints: ['{s4}'] }}
  - {{ name: chat, namespace: alice, addresses: ['10.96.1.40'], ports: [{{ name: ws, port: 80, targetPort: {ws_a} }}], endpoints: ['{a4}'] }}
  - {{ name: db, namespace: staging, addresses: ['10.96.0.30'], ports: [{{ name: echo, port: 7000 }}], endpoints: ['{s4}'] }}
hosts:
  - {{ host: web-alice.example.com, namespace: alice }}
"
        ),
    )
    .expect("write registry");
    let staging_proxy = start_proxy(&staging, "staging", &registry);
    let alice_proxy = start_proxy(&alice, "alice", &registry);

    let curl = || caller.ns.command("curl");
    let key = |k: &str| format!("baggage: okteto-divert={k}");
    let web = format!("http://{s4}:{WEB}");

    // GET `path` on staging's pod from the caller, with `headers`: which
    // app answered (its name and the request body's length).
    let answer = |path: &'static str, headers: Vec<String>| {
        let (cmd, url) = (curl(), format!("{web}{path}"));
        async move {
            let mut args: Vec<&str> = headers.iter().flat_map(|h| ["-H", h.as_str()]).collect();
            args.push(&url);
            let (code, body) = curl_with(cmd, &args).await;
            assert_eq!(code, 200, "{path}: {body}");
            body.trim().to_string()
        }
    };

    // HTTP/1.1 to staging's pod: no key and keys that do not count stay
    // there; alice's key goes on to her pod.
    for (path, k, served_by) in [
        ("/none", None, "web@staging"),
        ("/alice", Some("alice"), "web@alice"),
        ("/bob", Some("bob"), "web@staging"),
        ("/mallory", Some("mallory"), "web@staging"),
    ] {
        let headers = k.map(key).into_iter().collect();
        assert_eq!(
            answer(path, headers).await,
            format!("{served_by} 0"),
            "{path}"
        );
    }
    // Alice's key at her own pod is delivered there.
    let (code, body) = curl_with(
        curl(),
        &["-H", &key("alice"), &format!("http://{a4}:{WEB}/home")],
    )
    .await;
    assert_eq!((code, body.trim()), (200, "web@alice 0"));
    // h2c with prior knowledge, one stream per key on separate connections.
    let (code, body) = curl_with(
        curl(),
        &[
            "--http2-prior-knowledge",
            "-H",
            &key("alice"),
            &format!("{web}/h2"),
        ],
    )
    .await;
    assert_eq!((code, body.trim()), (200, "web@alice 0"));

    // What the apps saw: every request came through their own pod's proxy
    // (from the pod's own address), alice's with her baggage unchanged and
    // without the hop marker; staging saw none of hers.
    let staging_seen = web_staging.seen();
    let paths: Vec<&str> = staging_seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["/none", "/bob", "/mallory"]);
    for s in &staging_seen {
        assert_eq!(
            s.peer.ip(),
            IpAddr::from(s4),
            "{} came through staging's proxy",
            s.path
        );
    }
    let alice_seen = web_alice.seen();
    let paths: Vec<(&str, http::Version)> = alice_seen
        .iter()
        .map(|s| (s.path.as_str(), s.version))
        .collect();
    assert_eq!(
        paths,
        [
            ("/alice", http::Version::HTTP_11),
            ("/home", http::Version::HTTP_11),
            ("/h2", http::Version::HTTP_2)
        ]
    );
    for s in &alice_seen {
        assert_eq!(
            s.peer.ip(),
            IpAddr::from(a4),
            "{} came through alice's proxy",
            s.path
        );
        assert_eq!(
            s.baggage,
            ["okteto-divert=alice"],
            "baggage is forwarded unchanged"
        );
        assert!(
            s.headers.get("divert-inbound-hop").is_none(),
            "{:?}",
            s.headers
        );
    }

    // A preview host: a request from outside with no key is alice's. Her
    // key joins the members its baggage had, so her app passes it on; a key
    // of the request's own wins over the host.
    for (path, headers, served_by) in [
        ("/preview", vec!["Host: web-alice.example.com"], "web@alice"),
        (
            "/preview-team",
            vec!["Host: WEB-ALICE.example.com:8080", "baggage: team=movies"],
            "web@alice",
        ),
        (
            "/preview-bob",
            vec!["Host: web-alice.example.com", "baggage: okteto-divert=bob"],
            "web@staging",
        ),
    ] {
        let headers = headers.into_iter().map(String::from).collect();
        assert_eq!(
            answer(path, headers).await,
            format!("{served_by} 0"),
            "{path}"
        );
    }
    let baggage_of = |seen: Vec<divert_tests::Seen>, path: &str| {
        seen.into_iter()
            .find(|s| s.path == path)
            .map(|s| s.baggage)
            .unwrap_or_else(|| panic!("{path} was not seen"))
    };
    assert_eq!(
        baggage_of(web_alice.seen(), "/preview"),
        ["okteto-divert=alice"]
    );
    assert_eq!(
        baggage_of(web_alice.seen(), "/preview-team"),
        ["team=movies,okteto-divert=alice"]
    );
    assert_eq!(
        baggage_of(web_staging.seen(), "/preview-bob"),
        ["okteto-divert=bob"]
    );

    // gRPC, per call.
    let grpc = |k: &'static str| {
        let cmd = caller.ns.command("python3");
        let args = [format!("{s4}:9090"), "unary".to_string(), k.to_string()];
        async move { python_with(cmd, "grpc_client.py", &args).await }
    };
    let out = grpc("alice").await;
    assert!(out.contains("\"namespace\": \"alice\""), "{out}");
    let out = grpc("-").await;
    assert!(out.contains("\"namespace\": \"staging\""), "{out}");
    assert_eq!(
        (grpc_alice.calls().len(), grpc_staging.calls().len()),
        (1, 1)
    );

    // A WebSocket upgrade, tunnelled through both proxies.
    let ws = |k: &'static str| {
        let cmd = caller.ns.command("python3");
        let args = [
            "client".to_string(),
            format!("ws://{}/chat", chat_staging.addr),
            k.to_string(),
            "2".to_string(),
        ];
        async move { python_with(cmd, "ws.py", &args).await }
    };
    let replies: Vec<String> = serde_json::from_str(&ws("alice").await).expect("JSON");
    assert_eq!(replies, ["chat@alice:m0", "chat@alice:m1"]);
    let replies: Vec<String> = serde_json::from_str(&ws("-").await).expect("JSON");
    assert_eq!(replies, ["chat@staging:m0", "chat@staging:m1"]);

    // Not HTTP: delivered untouched, the half-close included.
    let got = tcp::exchange(
        caller.ns.connect(sock(s4, 7000)).expect("connect"),
        b"hello\n",
    );
    assert_eq!(got, b"echo: hello\n");

    // A skipped port never meets the proxy: the app sees the caller itself,
    // and alice's key does nothing there.
    let (code, body) = curl_with(
        curl(),
        &[
            "-H",
            &key("alice"),
            &format!("http://{s4}:{SKIPPED}/metrics"),
        ],
    )
    .await;
    assert_eq!((code, body.trim()), (200, "metrics@staging 0"));
    assert_eq!(
        skipped
            .seen()
            .iter()
            .map(|s| s.peer.ip())
            .collect::<Vec<_>>(),
        [IpAddr::from(caller.ipv4)]
    );
    // Neither does the proxy's admin port, which kubelet probes.
    let (code, body) = curl_with(curl(), &[&format!("http://{s4}:4191/ready")]).await;
    assert_eq!(code, 200, "{body}");
    // A tcpSocket probe as injection rewrites it: the proxy dials the app's
    // port on the pod's IP, and says whether it answered.
    let probe = |port: u16| {
        let (cmd, url) = (curl(), format!("http://{s4}:4191/probe/tcp/{port}"));
        async move { curl_with(cmd, &[&url]).await }
    };
    let (code, body) = probe(WEB).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = probe(7001).await;
    assert_eq!(code, 503, "nothing listens on 7001: {body}");

    // Staging's proxy explains the decision for a request into its pod, to
    // a client on the pod's loopback (kubectl port-forward, an operator in
    // the pod); another pod is refused: the table is the cluster's layout.
    let query = format!("routes?dst={s4}:{WEB}&direction=inbound&host=web-alice.example.com");
    let (code, body) = curl_with(
        caller.ns.command("curl"),
        &[&format!("http://{s4}:4191/{query}")],
    )
    .await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = curl_with(
        staging.ns.command("curl"),
        &[&format!("http://127.0.0.1:4191/{query}")],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    // The tap likewise: another pod cannot watch this pod's requests.
    let mut tap = caller.ns.command(divert_bin());
    tap.args(["tap", "--proxy", &format!("{s4}:4191"), "-n", "1"]);
    let out = divert_tests::run(tap).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    let route: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(route["target"], "web.alice:80", "{route}");
    assert_eq!(route["keyFromHost"], true, "{route}");

    // Each proxy counted what it did: staging's sent alice's requests on,
    // alice's delivered them as forwarded.
    let metrics = |pod: &Pod| {
        let url = format!("http://{}:4191/metrics", pod.ipv4);
        let cmd = caller.ns.command("curl");
        async move { curl_with(cmd, &[&url]).await.1 }
    };
    let text = metrics(&staging).await;
    let diverted = sample(
        &text,
        r#"divert_proxy_requests_total{protocol="http1",decision="diverted",reason="diverted",target_namespace="alice"}"#,
    );
    assert!(diverted.is_some_and(|n| n >= 1.0), "{text}");
    let text = metrics(&alice).await;
    let forwarded = sample(
        &text,
        r#"divert_proxy_requests_total{protocol="http1",decision="shared",reason="forwarded",target_namespace=""}"#,
    );
    assert!(forwarded.is_some_and(|n| n >= 1.0), "{text}");

    assert!(
        staging_proxy.wait_for_log(
            "direction=inbound protocol=http1 key=alice",
            Duration::from_secs(10)
        ),
        "{}",
        staging_proxy.log()
    );
    drop((staging_proxy, alice_proxy));
    echo.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_routed_through_a_pod_to_another_address_is_not_proxied_legacy() {
    routed_through_a_pod("legacy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_routed_through_a_pod_to_another_address_is_not_proxied_nft() {
    routed_through_a_pod("nft").await;
}

/// Any pod can route a packet through a neighbour: here the caller routes
/// an address of another pod via staging's pod, which forwards packets (as
/// a node or a router pod would). Interception takes only what is for the
/// pod's own addresses, so the connection is forwarded as it came: the far
/// end sees the caller, and never a connection the proxy made from
/// staging's pod with the proxy's exemption from its own rules.
async fn routed_through_a_pod(mode: &str) {
    if !netns::available() {
        return;
    }
    let mut lan = Lan::new();
    let caller = lan.pod("caller");
    let staging = lan.pod("staging");
    let far = lan.pod("far");
    // An address of the far pod that is not on the pods' subnet, reached
    // from the caller through staging's pod.
    let foreign: std::net::Ipv4Addr = "10.99.0.1".parse().expect("an address");
    far.ns
        .ip(&["addr", "add", &format!("{foreign}/32"), "dev", "eth0"]);
    let via = staging.ipv4.to_string();
    caller
        .ns
        .ip(&["route", "add", &format!("{foreign}/32"), "via", &via]);
    staging.ns.ip(&[
        "route",
        "add",
        &format!("{foreign}/32"),
        "via",
        &far.ipv4.to_string(),
    ]);
    run_ok(
        staging
            .ns
            .command("sysctl")
            .args(["-qw", "net.ipv4.ip_forward=1"]),
    );
    let app = Upstream::serve(far.ns.listen(sock(foreign, WEB)), "web", "far");
    divert_init(&staging.ns, &["--mode", mode]);
    let dir = TempDir::readable_by_all("routed");
    let registry = dir.path().join("registry.yaml");
    std::fs::write(&registry, "services: []\n").expect("write registry");
    let proxy = start_proxy(&staging, "staging", &registry);

    let (code, body) = curl_with(
        caller.ns.command("curl"),
        &[&format!("http://{foreign}:{WEB}/through")],
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let peers: Vec<IpAddr> = app.seen().iter().map(|s| s.peer.ip()).collect();
    assert_eq!(
        peers,
        [IpAddr::from(caller.ipv4)],
        "the far end sees the caller, not a connection from staging's pod"
    );
    // The proxy saw no connection at all.
    let (_, text) = curl_with(
        caller.ns.command("curl"),
        &[&format!("http://{}:4191/metrics", staging.ipv4)],
    )
    .await;
    let accepted: f64 = text
        .lines()
        .filter(|l| l.starts_with("divert_proxy_tcp_connections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(accepted, 0.0, "{text}");
    drop(proxy);
}
