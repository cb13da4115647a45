//! HTTP/2 with prior knowledge (h2c) through the proxy: curl, nghttp, and one
//! connection multiplexing streams with different keys.

use std::net::SocketAddr;
use std::process::Command;

use divert_tests::*;

const PORT: u16 = 8080;

struct World {
    staging: Upstream,
    alice: Upstream,
    bob: Upstream,
    web: SocketAddr,
    _proxy: TestProxy,
}

async fn world() -> World {
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let bob = Upstream::start("web", "bob").await;
    let ip = unique_ip();
    let mut yaml = String::from(
        "namespaces:\n  - { name: alice, sharedNamespace: staging }\n  - { name: bob, sharedNamespace: staging }\nservices:\n",
    );
    yaml += &service_yaml("web", "staging", ip, PORT, &[staging.addr]);
    yaml += &service_yaml("web", "alice", unique_ip(), PORT, &[alice.addr]);
    yaml += &service_yaml("web", "bob", unique_ip(), PORT, &[bob.addr]);
    let proxy = TestProxy::start(&yaml).await;
    World {
        staging,
        alice,
        bob,
        web: SocketAddr::new(ip, PORT),
        _proxy: proxy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_prior_knowledge() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let w = world().await;
    let url = format!("http://{}/h2", w.web);
    let (code, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "baggage: okteto-divert=alice",
        &url,
    ])
    .await;
    assert_eq!((code, body.split(' ').next()), (200, Some("web@alice")));
    let (code, body) = curl(&["--http2-prior-knowledge", &url]).await;
    assert_eq!((code, body.split(' ').next()), (200, Some("web@staging")));
    // The upstream got HTTP/2 too, with the baggage unchanged.
    let seen = w.alice.seen();
    assert_eq!(seen[0].version, http::Version::HTTP_2);
    assert_eq!(seen[0].baggage, ["okteto-divert=alice"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nghttp_streams_on_one_connection() {
    if !have_tool("nghttp", &["--version"]) {
        return;
    }
    let w = world().await;
    let urls: Vec<String> = (0..4).map(|i| format!("http://{}/n{i}", w.web)).collect();
    let mut cmd = Command::new("nghttp");
    // -n: discard bodies; -s: print per-stream stats; four URIs, one connection.
    cmd.args(["-n", "-s", "-H", "baggage: okteto-divert=bob"])
        .args(&urls);
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nghttp failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches(" 200 ").count(), 4, "{stdout}");
    assert_eq!(w.bob.count(), 4);
    assert_eq!(w.staging.count() + w.alice.count(), 0);
    // Four streams, one multiplexed upstream connection.
    assert_eq!(w.bob.connections(), 1);
}

/// One client connection carries concurrent streams with different keys; each
/// is routed on its own, as the upstreams' records show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_with_different_keys_on_one_connection() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let w = world().await;
    let stream = tokio::net::TcpStream::connect(w.web)
        .await
        .expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let keys: [&'static str; 8] = ["alice", "bob", "", "alice", "nobody", "bob", "alice", ""];
    let calls = keys.into_iter().enumerate().map(|(i, key)| {
        let mut sender = sender.clone();
        let uri = format!("http://{}/stream/{i}", w.web);
        async move {
            let mut req = http::Request::get(uri);
            if !key.is_empty() {
                req = req.header("baggage", format!("okteto-divert={key}"));
            }
            let resp = sender
                .send_request(req.body(Empty::<Bytes>::new()).expect("request"))
                .await
                .expect("response");
            let served = resp.headers()["x-served-by"]
                .to_str()
                .expect("ascii")
                .to_string();
            let _ = resp.into_body().collect().await;
            served
        }
    });
    let served = futures_join_all(calls).await;
    let want: Vec<&str> = keys
        .iter()
        .map(|k| match *k {
            "alice" => "web@alice",
            "bob" => "web@bob",
            _ => "web@staging",
        })
        .collect();
    assert_eq!(served, want);
    assert_eq!(
        (w.alice.count(), w.bob.count(), w.staging.count()),
        (3, 2, 3)
    );
    // Each stream's path tells which request the upstream saw.
    let mut alice_paths: Vec<String> = w.alice.seen().into_iter().map(|s| s.path).collect();
    alice_paths.sort();
    assert_eq!(alice_paths, ["/stream/0", "/stream/3", "/stream/6"]);
}

/// Drives futures concurrently on this task (no extra dependency for join_all).
async fn futures_join_all<F: std::future::Future<Output = String> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) -> Vec<String> {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("join"));
    }
    out
}

/// A body streams through in both directions at once: the upstream's
/// `/echo` answers before the request body has ended, and each piece the
/// client sends comes back before it sends the next (nothing in between
/// waits for the whole body), ending with the client's end of stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_and_its_echo_stream_through_together() {
    use std::time::Duration;
    let w = world().await;
    let mut sender = h2_client(w.web).await;
    let req = http::Request::post(format!("http://{}/echo", w.web))
        .header("baggage", "okteto-divert=bob")
        .body(())
        .expect("request");
    let (resp, mut up) = sender.send_request(req, false).expect("send");
    let limit = Duration::from_secs(10);
    up.send_data(bytes::Bytes::from_static(b"one"), false)
        .expect("first piece");
    let resp = tokio::time::timeout(limit, resp)
        .await
        .expect("head within the limit")
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-served-by"], "web@bob");
    let mut down = resp.into_body();
    let mut next = async || {
        let chunk = tokio::time::timeout(limit, down.data())
            .await
            .expect("a piece within the limit")
            .map(|r| r.expect("piece"));
        if let Some(c) = &chunk {
            let _ = down.flow_control().release_capacity(c.len());
        }
        chunk
    };
    assert_eq!(next().await.as_deref(), Some(&b"one"[..]));
    up.send_data(bytes::Bytes::from_static(b"two"), true)
        .expect("last piece");
    assert_eq!(next().await.as_deref(), Some(&b"two"[..]));
    // Then the end (an empty last piece may come first).
    loop {
        match next().await {
            None => break,
            Some(c) => assert!(c.is_empty(), "nothing after the last piece: {c:?}"),
        }
    }
}
