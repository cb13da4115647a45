//! HTTP/1.1 through the proxy with curl: every branch of the routing rule,
//! keep-alive, chunked bodies, Expect: 100-continue, streaming, balancing and
//! errors. Routing is proven by what the upstreams recorded.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use divert_proxy::table::{Table, TableSpec};
use divert_proxy::{Config, Shared};
use divert_tests::raw::{raw_exchange, read_request_head};
use divert_tests::*;
use tokio::net::TcpListener;

const PORT: u16 = 8080;

/// staging (shared) with alice and bob diverting from it; prod (shared) with
/// carla diverting from it; lonely never opted in.
struct World {
    staging: Upstream,
    alice: Upstream,
    lonely: Upstream,
    carla: Upstream,
    prod: Upstream,
    web: SocketAddr,
    _proxy: TestProxy,
}

async fn world() -> World {
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let lonely = Upstream::start("web", "lonely").await;
    let carla = Upstream::start("web", "carla").await;
    let prod = Upstream::start("web", "prod").await;
    let web_ip = unique_ip();
    let mut yaml = String::from(
        "namespaces:\n  - name: staging\n  - { name: alice, sharedNamespace: staging }\n  - { name: bob, sharedNamespace: staging }\n  - name: prod\n  - { name: carla, sharedNamespace: prod }\nservices:\n",
    );
    yaml += &service_yaml("web", "staging", web_ip, PORT, &[staging.addr]);
    yaml += &service_yaml("web", "alice", unique_ip(), PORT, &[alice.addr]);
    yaml += &service_yaml("web", "lonely", unique_ip(), PORT, &[lonely.addr]);
    yaml += &service_yaml("web", "prod", unique_ip(), PORT, &[prod.addr]);
    yaml += &service_yaml("web", "carla", unique_ip(), PORT, &[carla.addr]);
    let proxy = TestProxy::start(&yaml).await;
    World {
        staging,
        alice,
        lonely,
        carla,
        prod,
        web: SocketAddr::new(web_ip, PORT),
        _proxy: proxy,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_branch_of_the_routing_rule() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let w = world().await;
    let url = format!("http://{}/movies", w.web);
    let cases: [(&[&str], &str, &str); 9] = [
        (
            &["okteto-divert=alice"],
            "web@alice",
            "valid key, namespace runs the service",
        ),
        (
            &["okteto-divert=bob"],
            "web@staging",
            "valid key, namespace does not run it",
        ),
        (
            &["okteto-divert=carla"],
            "web@staging",
            "key of another shared namespace",
        ),
        (
            &["okteto-divert=lonely"],
            "web@staging",
            "key of a namespace that did not opt in",
        ),
        (
            &["okteto-divert=staging"],
            "web@staging",
            "the shared namespace is not a key",
        ),
        (&[], "web@staging", "no key"),
        (
            &["okteto-divert=alice,garbage"],
            "web@staging",
            "malformed baggage",
        ),
        (
            &["userId=7", "okteto-divert=alice;p=1"],
            "web@alice",
            "second baggage header",
        ),
        (
            &["okteto-divert = al%69ce "],
            "web@alice",
            "whitespace and percent-encoding",
        ),
    ];
    for (baggage, expected, why) in cases {
        let mut args: Vec<String> = Vec::new();
        for b in baggage {
            args.push("-H".into());
            args.push(format!("baggage: {b}"));
        }
        args.push(url.clone());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, body) = curl(&argv).await;
        assert_eq!(code, 200, "{why}");
        assert!(
            body.starts_with(expected),
            "{why}: got {body:?}, want {expected}"
        );
    }
    // What the upstreams saw: the counts of each, and the baggage unchanged.
    assert_eq!(w.alice.count(), 3);
    assert_eq!(w.staging.count(), 6);
    assert_eq!(
        (w.lonely.count(), w.carla.count(), w.prod.count()),
        (0, 0, 0)
    );
    let seen = w.alice.seen();
    assert_eq!(seen[1].baggage, ["userId=7", "okteto-divert=alice;p=1"]);
    assert_eq!(seen[2].baggage, ["okteto-divert = al%69ce"]);
    assert_eq!(seen[0].path, "/movies");
    assert_eq!(seen[0].version, http::Version::HTTP_11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_both_sides() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let w = world().await;
    let url = format!("http://{}/", w.web);
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{num_connects} "])
        .args(["-H", "baggage: okteto-divert=alice"]);
    for _ in 0..4 {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let out = run(cmd).await;
    assert!(out.status.success());
    // curl opened one connection to the proxy and reused it...
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 0 0 0");
    // ...and the proxy reused one upstream connection for the four requests.
    assert_eq!(w.alice.count(), 4);
    assert_eq!(w.alice.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_with_expect_100_continue() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let w = world().await;
    let dir = TempDir::new("upload");
    let file = dir.path().join("body.bin");
    let size = 3 * 1024 * 1024 + 17;
    std::fs::write(&file, vec![b'x'; size]).expect("write body");
    let url = format!("http://{}/upload", w.web);
    let data = format!("@{}", file.display());
    // curl waits up to a minute for the 100 before it sends the body, past
    // its 10 s limit: the upload completes only if the 100 comes.
    let (code, body) = curl(&[
        "-H",
        "baggage: okteto-divert=alice",
        "-H",
        "Transfer-Encoding: chunked",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "60",
        "--data-binary",
        &data,
        &url,
    ])
    .await;
    assert_eq!(code, 200);
    assert_eq!(body.trim(), format!("web@alice {size}"));
    let seen = w.alice.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].body_len, size);
}

/// RFC 9110 §10.1.1: a client that sends `Expect: 100-continue` may wait for
/// the 100 before it sends the body. The proxy sends it once the request is
/// on its way to the upstream, and the final response follows the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_its_100_before_the_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world().await;
    let mut s = tokio::net::TcpStream::connect(w.web)
        .await
        .expect("connect");
    let body = b"0123456789";
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: {}\r\nbaggage: okteto-divert=alice\r\n\
             Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            w.web,
            body.len()
        )
        .as_bytes(),
    )
    .await
    .expect("send the head");
    // Only the head went: what comes back first is the 100 and nothing else.
    let mut got = Vec::new();
    let head_end = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n");
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut chunk = [0u8; 512];
        while head_end(&got).is_none() {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the proxy closed before the 100: {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the 100 within 10 s of the head");
    let interim = String::from_utf8_lossy(&got).into_owned();
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "first answer: {interim:?}"
    );
    assert_eq!(w.alice.count(), 0, "no final answer before the body");
    // Then the body, and the final response.
    s.write_all(body).await.expect("send the body");
    let mut rest = got.split_off(head_end(&got).map_or(0, |e| e + 4));
    let want = format!("web@alice {}\n", body.len());
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut chunk = [0u8; 512];
        while !String::from_utf8_lossy(&rest).ends_with(&want) {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed before the response: {rest:?}");
            rest.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("the final response within 10 s of the body");
    let response = String::from_utf8_lossy(&rest);
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert_eq!(w.alice.seen()[0].body_len, body.len());
}

/// The upstream echoes each chunk as it arrives; the client sends the next
/// chunk only after the previous one came back. A proxy that buffered whole
/// bodies (either way) would never finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_stream_both_ways() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use hyper_util::rt::TokioIo;

    let w = world().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let stream = tokio::net::TcpStream::connect(w.web)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::post(format!("http://{}/echo", w.web))
        .header("baggage", "okteto-divert=alice")
        .body(body)
        .expect("request");
    tx.send(Ok(Frame::data(Bytes::from_static(b"chunk-0"))))
        .await
        .expect("send");
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
        .await
        .expect("response head while the body is still open")
        .expect("response");
    assert_eq!(resp.headers()["x-served-by"], "web@alice");
    let mut body = resp.into_body();
    for i in 1..=5 {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(10), body.frame())
            .await
            .expect("echo of the previous chunk while the request is still open")
            .expect("a frame")
            .expect("frame ok");
        assert_eq!(frame.into_data().expect("data"), format!("chunk-{}", i - 1));
        tx.send(Ok(Frame::data(Bytes::from(format!("chunk-{i}")))))
            .await
            .expect("send");
    }
    drop(tx);
    let rest = body.collect().await.expect("rest").to_bytes();
    assert_eq!(rest, "chunk-5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_balanced_across_endpoints() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let a = Upstream::start("web", "staging").await;
    let b = Upstream::start("web", "staging").await;
    let ip = unique_ip();
    let yaml = format!(
        "services:\n{}",
        service_yaml("web", "staging", ip, PORT, &[a.addr, b.addr])
    );
    let _p = TestProxy::start(&yaml).await;
    let url = format!("http://{ip}:{PORT}/");
    let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 10).collect();
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null"]).args(&urls);
    assert!(run(cmd).await.status.success());
    // Ten requests on one downstream connection, spread per request.
    assert_eq!((a.count(), b.count()), (5, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_and_no_endpoints() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    // A port nothing listens on: bind one, note it, close it.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr")
    };
    let (ip1, ip2) = (unique_ip(), unique_ip());
    let yaml = format!(
        "services:\n{}  - {{ name: empty, namespace: staging, addresses: ['{ip2}'], ports: [{{ port: {PORT} }}] }}\n",
        service_yaml("down", "staging", ip1, PORT, &[dead])
    );
    let _p = TestProxy::start(&yaml).await;

    let (code, body) = curl(&[&format!("http://{ip1}:{PORT}/")]).await;
    assert_eq!(code, 502);
    assert!(
        body.contains(&format!("down.staging:{PORT} ({dead})")),
        "{body}"
    );
    assert!(body.contains("connect"), "{body}");

    let (code, body) = curl(&[&format!("http://{ip2}:{PORT}/")]).await;
    assert_eq!(code, 503);
    assert!(body.contains(&format!("empty.staging:{PORT}")), "{body}");
    assert!(body.contains("no endpoints"), "{body}");
}

/// A destination that is not in the table is forwarded exactly where the
/// client dialed. Bind mode only listens on table addresses, so this hands a
/// connection to the shared serving path with that original destination, as
/// transparent mode does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_passes_through() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let elsewhere = Upstream::start("db-api", "outside").await;
    let shared: Arc<Shared> = Shared::new(
        Config::default(),
        Table::build(&TableSpec::default(), 1, None).expect("empty table"),
    );
    let front = TcpListener::bind((unique_ip(), 0)).await.expect("bind");
    let front_addr = front.local_addr().expect("addr");
    let original = elsewhere.addr;
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = front.accept().await else {
                continue;
            };
            tokio::spawn(divert_proxy::http::serve_connection(
                s,
                divert_proxy::protocol::Protocol::Http1,
                divert_proxy::conn::Conn {
                    dst: original,
                    peer,
                    direction: divert_core::direction::Direction::Outbound,
                },
                shared.clone(),
            ));
        }
    });
    let (code, body) = curl(&[
        "-H",
        "baggage: okteto-divert=alice",
        &format!("http://{front_addr}/q"),
    ])
    .await;
    task.abort();
    assert_eq!(code, 200);
    assert!(body.starts_with("db-api@outside"), "{body}");
    assert_eq!(elsewhere.seen()[0].baggage, ["okteto-divert=alice"]);
}

/// An upstream that never completes the TCP handshake (a listener whose
/// accept queue is full drops further SYNs) is answered with 502 after the
/// configured connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_answers_502() {
    use std::time::Duration;

    if !have_tool("curl", &["--version"]) {
        return;
    }
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    sock.listen(0).expect("listen");
    let stuck: SocketAddr = sock.local_addr().expect("addr").as_socket().expect("inet");
    // Fill the accept queue until a connect no longer completes.
    let mut held = Vec::new();
    loop {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(stuck),
        )
        .await
        {
            Ok(Ok(s)) => held.push(s),
            Ok(Err(e)) => panic!("filling the accept queue: {e}"),
            Err(_) => break,
        }
        assert!(held.len() < 64, "the accept queue never filled");
    }
    let ip = unique_ip();
    let yaml = format!(
        "services:\n{}",
        service_yaml("slow", "staging", ip, PORT, &[stuck])
    );
    let mut config = divert_proxy::Config::default();
    config.connect.connect_timeout = Duration::from_millis(200);
    let _p = TestProxy::start_with(&yaml, config).await;
    let (code, body) = curl(&[&format!("http://{ip}:{PORT}/")]).await;
    assert_eq!(code, 502);
    assert!(body.contains("connect timed out after 200ms"), "{body}");
    drop(held);
}

/// What an upstream that answers only a connection's first request does
/// with the connection then.
#[derive(Clone, Copy)]
enum AfterFirst {
    /// Closes it, without saying `Connection: close` first.
    Close,
    /// Waits for the next request on it, then resets it.
    ResetNext,
}

/// Sends `n` GETs over one curl (one kept-alive client connection) to a
/// service whose endpoint answers each connection's first request with a
/// 200 and then does `after`: the statuses curl saw, and how many
/// connections the upstream accepted. `None` when curl is missing.
async fn gets_to_an_upstream_that_answers_once(
    n: usize,
    after: AfterFirst,
) -> Option<(String, usize)> {
    use tokio::io::AsyncWriteExt;

    if !have_tool("curl", &["--version"]) {
        return None;
    }
    let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = server.accept().await else {
                continue;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                if let AfterFirst::ResetNext = after
                    && read_request_head(&mut s).await
                {
                    let _ = socket2::SockRef::from(&s).set_linger(Some(std::time::Duration::ZERO));
                }
            });
        }
    });
    let ip = unique_ip();
    let yaml = format!(
        "services:\n{}",
        service_yaml("answers-once", "staging", ip, PORT, &[addr])
    );
    let _p = TestProxy::start(&yaml).await;
    let url = format!("http://{ip}:{PORT}/");
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-w", "%{http_code} "]);
    for _ in 0..n {
        cmd.args(["-o", "/dev/null", &url]);
    }
    let out = run(cmd).await;
    task.abort();
    let codes = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Some((codes, accepted.load(std::sync::atomic::Ordering::Relaxed)))
}

/// An upstream that closes every connection right after its response (as
/// servers do at their keep-alive limit) leaves stale connections in the pool;
/// the proxy must notice and reconnect instead of answering 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_idle_connections_loses_no_request() {
    let Some((codes, accepted)) =
        gets_to_an_upstream_that_answers_once(20, AfterFirst::Close).await
    else {
        return;
    };
    assert_eq!(codes, ["200"; 20].join(" "), "every request answered 200");
    assert_eq!(accepted, 20, "one upstream connection per request");
}

/// An upstream that resets a kept-alive connection when the next request
/// arrives on it (it had closed the connection just before, and the kernel
/// answers the request with a reset): a request that may be sent again is
/// sent again on a fresh connection, and the client never sees the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_resets_an_idle_connection_under_a_get_loses_no_request() {
    let Some((codes, accepted)) =
        gets_to_an_upstream_that_answers_once(3, AfterFirst::ResetNext).await
    else {
        return;
    };
    assert_eq!(codes, "200 200 200", "every request answered 200");
    assert_eq!(accepted, 3, "a fresh upstream connection after each reset");
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with two,
/// is a 400; CONNECT is refused. None of them reaches an upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_one_host_and_connect_are_refused_before_routing() {
    let w = world().await;
    let cases: [(&str, String); 3] = [
        (
            "400",
            "GET / HTTP/1.1\r\nbaggage: okteto-divert=alice\r\n\r\n".to_owned(),
        ),
        (
            "400",
            format!(
                "GET / HTTP/1.1\r\nHost: {}\r\nHost: other.example\r\nbaggage: okteto-divert=alice\r\n\r\n",
                w.web
            ),
        ),
        (
            "501",
            format!(
                "CONNECT {0} HTTP/1.1\r\nHost: {0}\r\nbaggage: okteto-divert=alice\r\n\r\n",
                w.web
            ),
        ),
    ];
    for (status, request) in cases {
        let (head, body) = raw_exchange(w.web, request.as_bytes()).await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?} got {head}"
        );
        assert!(body.starts_with("divert: request: "), "{body}");
    }
    assert_eq!(
        w.alice.count() + w.staging.count(),
        0,
        "no upstream saw them"
    );
    // The same connection path still serves a well-formed request.
    let (head, body) = raw_exchange(
        w.web,
        format!(
            "GET / HTTP/1.1\r\nHost: {}\r\nbaggage: okteto-divert=alice\r\n\r\n",
            w.web
        )
        .as_bytes(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.starts_with("web@alice"), "{body}");
}

/// An upstream that answers 101 to a request that did not ask to upgrade
/// gets its client a 502, not a connection switched to a protocol it never
/// offered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_the_client_did_not_ask_for_is_not_passed_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = upstream.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                if !read_request_head(&mut s).await {
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: surprise\r\n\r\n")
                    .await;
                // Hold the connection open, as a switched one would be.
                let _ = s.read(&mut [0u8; 64]).await;
            });
        }
    });
    let ip = unique_ip();
    let yaml = format!(
        "services:\n{}",
        service_yaml("odd", "staging", ip, PORT, &[addr])
    );
    let _p = TestProxy::start(&yaml).await;
    let dialed = SocketAddr::new(ip, PORT);
    let (head, body) = raw_exchange(
        dialed,
        format!("GET / HTTP/1.1\r\nHost: {dialed}\r\n\r\n").as_bytes(),
    )
    .await;
    task.abort();
    assert!(head.starts_with("HTTP/1.1 502 "), "{head}");
    assert!(body.contains("did not ask to upgrade"), "{body}");
}
