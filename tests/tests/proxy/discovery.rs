//! The control plane end to end: Kubernetes objects go into the controller
//! through the same interface its watches use ([`ClusterState`]), the
//! controller streams the table over real gRPC to two proxies, and curl
//! through each proxy shows where alice's requests go as her namespace gains a
//! service, while the controller is gone, and after it comes back.

use std::future::pending;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use divert_controller::cluster::ClusterState;
use divert_controller::store::{Change, Store};
use divert_proxy::discovery::DiscoverySettings;
use divert_proxy::{Config, Proxy, Shared, Source};
use divert_tests::{Upstream, curl, have_tool, unique_ip};
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tokio::net::TcpListener;

fn namespace(name: &str, shared: Option<&str>) -> Namespace {
    let labels = match shared {
        Some(s) => json!({ "kubernetes.io/metadata.name": name, "divert.dev/shared-namespace": s }),
        None => json!({ "kubernetes.io/metadata.name": name }),
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": name, "uid": format!("uid-ns-{name}"), "resourceVersion": "1", "labels": labels },
        "spec": { "finalizers": ["kubernetes"] },
        "status": { "phase": "Active" }
    }))
    .expect("namespace")
}

fn service(ns: &str, name: &str, cluster_ip: IpAddr) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": ns, "uid": format!("uid-svc-{ns}-{name}"), "resourceVersion": "1" },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip.to_string(),
            "clusterIPs": [cluster_ip.to_string()],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080 }],
            "selector": { "app": name }
        },
        "status": { "loadBalancer": {} }
    }))
    .expect("service")
}

fn slice(ns: &str, svc: &str, endpoint: SocketAddr) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{svc}-abcde"),
            "namespace": ns,
            "uid": format!("uid-eps-{ns}-{svc}"),
            "resourceVersion": "1",
            "labels": {
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            },
            "ownerReferences": [{ "apiVersion": "v1", "kind": "Service", "name": svc, "uid": format!("uid-svc-{ns}-{svc}"), "controller": true, "blockOwnerDeletion": true }]
        },
        "addressType": "IPv4",
        "endpoints": [{ "addresses": [endpoint.ip().to_string()], "conditions": { "ready": true, "serving": true, "terminating": false } }],
        "ports": [{ "name": "http", "port": endpoint.port(), "protocol": "TCP" }]
    }))
    .expect("slice")
}

/// The controller's gRPC server on `addr`, in a runtime of its own so that
/// killing it ends every connection at once, as a process exit would.
struct Controller {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Controller {
    fn start(addr: SocketAddr, store: Arc<Store>) -> (SocketAddr, Controller) {
        let std = {
            let _enter = tokio::runtime::Handle::current().enter();
            divert_proxy::listen::bind(addr).expect("bind controller")
        };
        let addr = std.local_addr().expect("addr");
        let listener = std.into_std().expect("std listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    _ = divert_controller::server::serve(listener, store, divert_controller::auth::Access::Open, None, pending()) => {}
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task with it.
        });
        (
            addr,
            Controller {
                stop: Some(stop),
                thread: Some(thread),
            },
        )
    }

    fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// A proxy fed by the controller, serving on a local port as if every
/// connection had been dialed to `dst` (there is one service to ask about).
async fn proxy(controller: SocketAddr, pod: &str, dst: SocketAddr) -> (Proxy, SocketAddr) {
    let mut settings = DiscoverySettings::new(format!("http://{controller}"));
    settings.proxy.pod = pod.into();
    settings.backoff_min = Duration::from_millis(10);
    settings.backoff_max = Duration::from_millis(100);
    let proxy = Proxy::start_transparent(Config::default(), Source::Discovery(settings), &[])
        .expect("proxy starts");
    let addr = serve_as_if_dialed(&proxy, dst).await;
    (proxy, addr)
}

/// A local port where `proxy` serves every connection as if it had been
/// dialed to `dst`.
async fn serve_as_if_dialed(proxy: &Proxy, dst: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shared = proxy.shared.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            tokio::spawn(divert_proxy::http::serve_connection(
                stream,
                divert_proxy::protocol::Protocol::Http1,
                divert_proxy::conn::Conn {
                    dst,
                    peer,
                    direction: divert_core::direction::Direction::Outbound,
                },
                shared.clone(),
            ));
        }
    });
    addr
}

/// An admin server on a local port.
async fn admin(handler: divert_core::admin::Handler) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(divert_core::admin::serve(listener, handler));
    addr
}

async fn revision_reached(shared: &Shared, revision: u64) {
    let mut rx = shared.tables.watch_status();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|s| s.connected && s.revision >= revision),
    )
    .await
    .expect("the proxy reaches the revision within 10 s")
    .expect("status channel");
}

async fn served_by(proxy: SocketAddr, key: Option<&str>) -> String {
    let url = format!("http://{proxy}/");
    let header = key.map(|k| format!("baggage: okteto-divert={k}"));
    let mut args = vec![url.as_str()];
    if let Some(h) = &header {
        args.extend(["-H", h]);
    }
    let (code, body) = curl(&args).await;
    assert_eq!(code, 200, "{body}");
    body.split_whitespace().next().unwrap_or("").to_string()
}

/// Upstreams for web in staging and alice, and a synced store holding
/// staging (running web) and alice (opted in; running web only if
/// `alice_runs_web`).
struct World {
    web_staging: Upstream,
    web_alice: Upstream,
    web_dst: SocketAddr,
    store: Arc<Store>,
    cluster: ClusterState,
    first: u64,
}

async fn world(alice_runs_web: bool) -> World {
    let web_staging = Upstream::start("web", "staging").await;
    let web_alice = Upstream::start("web", "alice").await;
    let web_ip = unique_ip();
    let store = Store::new();
    let mut cluster = ClusterState::new();
    let mut changes: Vec<Change> = Vec::new();
    changes.extend(cluster.apply_namespace(&namespace("staging", None)));
    changes.extend(cluster.apply_namespace(&namespace("alice", Some("staging"))));
    changes.extend(cluster.apply_service(&service("staging", "web", web_ip)));
    changes.extend(cluster.apply_slice(&slice("staging", "web", web_staging.addr)));
    if alice_runs_web {
        changes.extend(cluster.apply_service(&service("alice", "web", unique_ip())));
        changes.extend(cluster.apply_slice(&slice("alice", "web", web_alice.addr)));
    }
    let first = store.apply(changes);
    store.set_synced();
    World {
        web_staging,
        web_alice,
        web_dst: SocketAddr::new(web_ip, 80),
        store,
        cluster,
        first,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_follow_the_controller_and_survive_it() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    // The cluster: staging runs web; alice opted in but runs nothing yet.
    let World {
        web_staging: _web_staging,
        web_alice,
        web_dst,
        store,
        mut cluster,
        first,
    } = world(false).await;

    let (ctl_addr, ctl) = Controller::start("127.0.0.1:0".parse().expect("addr"), store.clone());
    let (p1, a1) = proxy(ctl_addr, "proxy-1", web_dst).await;
    let (p2, a2) = proxy(ctl_addr, "proxy-2", web_dst).await;
    revision_reached(&p1.shared, first).await;
    revision_reached(&p2.shared, first).await;
    for a in [a1, a2] {
        assert_eq!(served_by(a, Some("alice")).await, "web@staging");
    }
    assert_eq!(store.stats().subscribers, 2);
    // What `divert check` will ask: who is watching.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{ctl_addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = divert_proto::discovery::v1::discovery_client::DiscoveryClient::new(channel);
    let listed = client
        .list_proxies(divert_proto::discovery::v1::ListProxiesRequest {})
        .await
        .expect("list proxies")
        .into_inner();
    let mut pods: Vec<String> = listed
        .proxies
        .iter()
        .filter_map(|p| p.proxy.as_ref().map(|i| i.pod.clone()))
        .collect();
    pods.sort();
    assert_eq!(pods, ["proxy-1", "proxy-2"]);
    assert!(listed.proxies.iter().all(|p| p.revision == first));

    // Both admin servers tell what they see.
    let ctl_admin = admin(
        divert_controller::admin::Admin {
            store: store.clone(),
            skipped: None,
            copies: None,
        }
        .handler(),
    )
    .await;
    let (code, body) = curl(&[&format!("http://{ctl_admin}/ready")]).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("2 proxies"), "{body}");
    let (_, body) = curl(&[&format!("http://{ctl_admin}/metrics")]).await;
    assert!(body.contains("divert_controller_proxies 2"), "{body}");
    let p1_admin = admin(divert_proxy::admin::ProxyAdmin::handler(
        p1.shared.clone(),
        true,
    ))
    .await;
    let (code, body) = curl(&[&format!("http://{p1_admin}/ready")]).await;
    assert_eq!(code, 200, "{body}");
    assert!(!body.contains("stale"), "{body}");
    let (_, body) = curl(&[&format!("http://{p1_admin}/metrics")]).await;
    assert!(body.contains("divert_proxy_table_stale 0"), "{body}");

    // alice deploys her web: both proxies reach the new revision (a poll
    // against a deadline, not a wall-clock window: how fast a change spreads
    // is measured in bench/discovery.sh) and route her requests to it.
    let alice_ip = unique_ip();
    let started = Instant::now();
    let mut changes = cluster.apply_service(&service("alice", "web", alice_ip));
    changes.extend(cluster.apply_slice(&slice("alice", "web", web_alice.addr)));
    let revision = store.apply(changes);
    revision_reached(&p1.shared, revision).await;
    revision_reached(&p2.shared, revision).await;
    eprintln!("the change reached both proxies in {:?}", started.elapsed());
    for a in [a1, a2] {
        assert_eq!(served_by(a, Some("alice")).await, "web@alice");
        assert_eq!(served_by(a, None).await, "web@staging");
    }

    // The controller dies: the proxies say their table is stale, and keep
    // routing with it.
    tokio::task::block_in_place(|| ctl.kill());
    for p in [&p1, &p2] {
        let mut rx = p.shared.tables.watch_status();
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| s.is_stale()))
            .await
            .expect("stale within 10 s")
            .expect("status channel");
    }
    for a in [a1, a2] {
        assert_eq!(served_by(a, Some("alice")).await, "web@alice");
    }
    let (code, body) = curl(&[&format!("http://{p1_admin}/ready")]).await;
    assert_eq!(code, 200, "a stale table still routes: {body}");
    assert!(body.contains("stale"), "{body}");
    let (_, body) = curl(&[&format!("http://{p1_admin}/metrics")]).await;
    assert!(body.contains("divert_proxy_table_stale 1"), "{body}");

    // It comes back (same address) with a newer view: alice deleted her web.
    let store2 = Store::new();
    let mut changes = Vec::new();
    changes.extend(cluster.delete_service("alice", "web"));
    changes.extend(cluster.delete_slice("alice", "web-abcde"));
    assert!(!changes.is_empty());
    let revision = store2.apply(cluster.table());
    store2.set_synced();
    let (_, ctl2) = Controller::start(ctl_addr, store2.clone());
    for p in [&p1, &p2] {
        revision_reached(&p.shared, revision).await;
        assert!(!p.shared.tables.status().is_stale());
    }
    for a in [a1, a2] {
        assert_eq!(served_by(a, Some("alice")).await, "web@staging");
    }
    assert_eq!(store2.stats().subscribers, 2);
    assert_eq!(web_alice.count(), 4);
    tokio::task::block_in_place(|| ctl2.kill());
}

/// A proxy in namespace `ns` whose admin server (with the tap) listens on a
/// loopback port it reports to the controller, as `divert-proxy proxy --admin-addr
/// 0.0.0.0:4191` does in a pod.
async fn tapped_proxy(
    controller: SocketAddr,
    pod: &str,
    ns: &str,
    dst: SocketAddr,
) -> (Proxy, SocketAddr) {
    let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let mut settings = DiscoverySettings::new(format!("http://{controller}"));
    settings.proxy.pod = pod.into();
    settings.proxy.namespace = ns.into();
    settings.proxy.admin_port = u32::from(admin.local_addr().expect("addr").port());
    let config = Config {
        namespace: Some(ns.into()),
        pod: Some(pod.into()),
        ..Config::default()
    };
    let proxy =
        Proxy::start_transparent(config, Source::Discovery(settings), &[]).expect("proxy starts");
    tokio::spawn(divert_proxy::admin::serve(
        admin,
        divert_proxy::admin::ProxyAdmin::new(proxy.shared.clone(), true),
    ));
    let addr = serve_as_if_dialed(&proxy, dst).await;
    (proxy, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn divert_tap_through_the_controller_watches_a_namespaces_proxies() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    // staging and alice both run web.
    // The upstreams are bound so they live as long as the test.
    let World {
        web_staging: _web_staging,
        web_alice: _web_alice,
        web_dst,
        store,
        first,
        ..
    } = world(true).await;
    let (ctl_addr, _ctl) = Controller::start("127.0.0.1:0".parse().expect("addr"), store.clone());
    let (p1, a1) = tapped_proxy(ctl_addr, "frontend-1", "staging", web_dst).await;
    let (p2, a2) = tapped_proxy(ctl_addr, "frontend-2", "staging", web_dst).await;
    let (p3, a3) = tapped_proxy(ctl_addr, "worker-1", "batch", web_dst).await;
    for p in [&p1, &p2, &p3] {
        revision_reached(&p.shared, first).await;
    }

    // Every proxy of staging, alice's requests only.
    let tap = std::process::Command::new(divert_tests::netns::divert_bin())
        .args(["tap", "--controller", &format!("http://{ctl_addr}")])
        .args(["--proxy-namespace", "staging", "--key", "alice", "-n", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start divert tap");
    let deadline = Instant::now() + Duration::from_secs(10);
    while p1.shared.tap.watchers() == 0 || p2.shared.tap.watchers() == 0 {
        assert!(
            Instant::now() < deadline,
            "the controller never tapped both staging proxies"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        p3.shared.tap.watchers(),
        0,
        "a proxy of another namespace was tapped"
    );

    assert_eq!(served_by(a3, Some("alice")).await, "web@alice");
    assert_eq!(served_by(a1, None).await, "web@staging");
    assert_eq!(served_by(a1, Some("alice")).await, "web@alice");
    assert_eq!(served_by(a2, Some("alice")).await, "web@alice");

    let out = tokio::task::spawn_blocking(move || tap.wait_with_output())
        .await
        .expect("join")
        .expect("divert tap output");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "divert tap failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("divert tap --controller printed:\n{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let mut pods: Vec<&str> = lines
        .iter()
        .map(|l| {
            assert!(l.contains("key=alice"), "{l}");
            assert!(l.contains("-> web.alice:80"), "{l}");
            assert!(l.contains(" 200 "), "{l}");
            if l.contains("staging/frontend-1") {
                "frontend-1"
            } else if l.contains("staging/frontend-2") {
                "frontend-2"
            } else {
                panic!("an event from an unexpected proxy: {l}")
            }
        })
        .collect();
    pods.sort();
    assert_eq!(pods, ["frontend-1", "frontend-2"]);
    // The watch ended with the CLI: the proxies stop building events.
    let deadline = Instant::now() + Duration::from_secs(10);
    while p1.shared.tap.watchers() + p2.shared.tap.watchers() > 0 {
        assert!(
            Instant::now() < deadline,
            "the proxies' watchers outlived the tap"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
