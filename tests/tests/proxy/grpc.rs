//! gRPC through the proxy with a client from another stack (Python grpcio):
//! unary, server-, client- and bidi-streaming, concurrent calls with different
//! keys on one channel, per-call balancing, status passthrough and UNAVAILABLE.

use std::net::SocketAddr;

use divert_tests::grpc::GrpcUpstream;
use divert_tests::*;
use serde_json::Value;

const PORT: u16 = 9090;

fn ready() -> bool {
    have_python_modules(&["grpc", "grpc_tools"])
}

struct World {
    staging: GrpcUpstream,
    alice: GrpcUpstream,
    catalog: SocketAddr,
    _proxy: TestProxy,
}

async fn world() -> World {
    let staging = GrpcUpstream::start("staging").await;
    let alice = GrpcUpstream::start("alice").await;
    let ip = unique_ip();
    let mut yaml = String::from(
        "namespaces:\n  - { name: alice, sharedNamespace: staging }\n  - { name: bob, sharedNamespace: staging }\nservices:\n",
    );
    yaml += &service_yaml("catalog", "staging", ip, PORT, &[staging.addr]);
    yaml += &service_yaml("catalog", "alice", unique_ip(), PORT, &[alice.addr]);
    let proxy = TestProxy::start(&yaml).await;
    World {
        staging,
        alice,
        catalog: SocketAddr::new(ip, PORT),
        _proxy: proxy,
    }
}

async fn client(addr: SocketAddr, args: &[&str]) -> Value {
    let mut argv = vec![addr.to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    serde_json::from_str(&python("grpc_client.py", &argv).await).expect("client prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_routed_by_key() {
    if !ready() {
        return;
    }
    let w = world().await;
    let v = client(w.catalog, &["unary", "alice"]).await;
    assert_eq!(
        v["served_by"]["namespace"].as_str().expect("string"),
        "alice"
    );
    assert_eq!(
        v["served_by"]["baggage"].as_str().expect("string"),
        "okteto-divert=alice"
    );
    let v = client(w.catalog, &["unary", "bob"]).await;
    assert_eq!(
        v["served_by"]["namespace"].as_str().expect("string"),
        "staging"
    );
    let v = client(w.catalog, &["unary", "-"]).await;
    assert_eq!(
        v["served_by"]["namespace"].as_str().expect("string"),
        "staging"
    );
    assert_eq!(w.alice.calls().len(), 1);
    assert_eq!(w.staging.calls().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_calls_routed_by_key() {
    if !ready() {
        return;
    }
    let w = world().await;
    let v = client(w.catalog, &["server-stream", "alice", "5"]).await;
    assert_eq!(v["count"].as_u64().expect("number"), 5);
    assert_eq!(strings(&v["namespaces"]), ["alice"]);

    let v = client(w.catalog, &["client-stream", "alice", "4"]).await;
    assert_eq!(v["text"].as_str().expect("string"), "n0,n1,n2,n3");
    assert_eq!(
        v["served_by"]["namespace"].as_str().expect("string"),
        "alice"
    );

    let v = client(w.catalog, &["bidi", "alice", "6"]).await;
    assert_eq!(strings(&v["texts"]), ["n0", "n1", "n2", "n3", "n4", "n5"]);
    assert_eq!(strings(&v["namespaces"]), ["alice"]);

    let v = client(w.catalog, &["bidi", "-", "3"]).await;
    assert_eq!(strings(&v["namespaces"]), ["staging"]);

    let methods: Vec<_> = w.alice.calls().iter().map(|c| c.method).collect();
    assert_eq!(methods, ["StreamMovies", "CollectNotes", "Chat"]);
    assert_eq!(w.staging.calls().len(), 1);
}

/// One grpcio channel is one HTTP/2 connection: its concurrent calls carry
/// different keys and each reaches the right upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_different_keys_on_one_channel() {
    if !ready() {
        return;
    }
    let w = world().await;
    let keys = ["alice", "bob", "-", "alice", "mallory", "alice"];
    let mut args = vec!["multiplex"];
    args.extend(keys);
    let v = client(w.catalog, &args).await;
    let results = v.as_array().expect("list");
    assert_eq!(results.len(), keys.len() * 2);
    for r in results {
        let key = r["key"].as_str().expect("string");
        let ns = r["served_by"]["namespace"].as_str().expect("string");
        let want = if key == "alice" { "alice" } else { "staging" };
        assert_eq!(ns, want, "key {key}");
    }
    assert_eq!(w.alice.calls().len(), 6);
    assert_eq!(w.staging.calls().len(), 6);
    assert!(
        w.alice
            .calls()
            .iter()
            .all(|c| c.baggage == "okteto-divert=alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_balanced_per_call_not_per_connection() {
    if !ready() {
        return;
    }
    let a = GrpcUpstream::start("staging").await;
    let b = GrpcUpstream::start("staging").await;
    let ip = unique_ip();
    let yaml = format!(
        "services:\n{}",
        service_yaml("catalog", "staging", ip, PORT, &[a.addr, b.addr])
    );
    let _p = TestProxy::start(&yaml).await;
    let keys = ["-"; 5];
    let mut args = vec!["multiplex"];
    args.extend(keys);
    client(SocketAddr::new(ip, PORT), &args).await;
    // Ten calls on one client connection, spread over both endpoints.
    assert_eq!((a.calls().len(), b.calls().len()), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_and_trailers_pass_through() {
    if !ready() {
        return;
    }
    let w = world().await;
    let v = client(w.catalog, &["status", "alice"]).await;
    assert_eq!(v["code"].as_str().expect("string"), "RESOURCE_EXHAUSTED");
    assert_eq!(
        v["details"].as_str().expect("string"),
        "too many from alice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_unavailable_with_a_message() {
    if !ready() {
        return;
    }
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let ip = unique_ip();
    let yaml = format!(
        "services:\n{}",
        service_yaml("catalog", "staging", ip, PORT, &[dead])
    );
    let _p = TestProxy::start(&yaml).await;
    let argv = vec![
        "unavailable".to_string(),
        format!("{ip}:{PORT}"),
        "-".to_string(),
    ];
    let v: Value =
        serde_json::from_str(&python("grpc_client.py", &argv).await).expect("client prints JSON");
    assert_eq!(v["code"].as_str().expect("string"), "UNAVAILABLE");
    let details = v["details"].as_str().expect("string");
    assert!(
        details.contains(&format!("catalog.staging:{PORT} ({dead})")),
        "{details}"
    );
    assert!(details.contains("connect"), "{details}");
}

/// A JSON array of strings, as the Python client prints them.
fn strings(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|x| x.as_str().expect("string"))
        .collect()
}
