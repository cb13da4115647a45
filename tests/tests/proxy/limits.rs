//! Every wait bounded and the connections capped, seen from outside: a
//! client that stalls, an upstream that stalls, too many clients. Each limit
//! is set short, each test proves what the peer saw (a close, a status) and
//! that the proxy counted it in `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use divert_proxy::Config;
use divert_proxy::admin::ProxyAdmin;
use divert_proxy::limits::Limits;
use divert_tests::raw::{closed_within, header, raw_exchange, read_response, sample};
use divert_tests::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const PORT: u16 = 8080;
const SHORT: Duration = Duration::from_millis(300);
/// How long a test waits for what a limit of [`SHORT`] must bring about.
const DEADLINE: Duration = Duration::from_secs(10);

/// `web` in staging behind a proxy with `limits`, and the proxy's admin
/// server (its own header read timeout [`SHORT`]).
struct World {
    upstream: Upstream,
    web: SocketAddr,
    admin: SocketAddr,
    _proxy: TestProxy,
}

async fn world(limits: Limits) -> World {
    let upstream = Upstream::start("web", "staging").await;
    let ip = unique_ip();
    let yaml = format!(
        "services:\n{}",
        service_yaml("web", "staging", ip, PORT, &[upstream.addr])
    );
    let config = Config {
        limits,
        ..Config::default()
    };
    let proxy = TestProxy::start_with(&yaml, config).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin = listener.local_addr().expect("admin addr");
    tokio::spawn(divert_proxy::admin::serve_with_limit(
        listener,
        ProxyAdmin::new(proxy.proxy.shared.clone(), false),
        SHORT,
    ));
    World {
        upstream,
        web: SocketAddr::new(ip, PORT),
        admin,
        _proxy: proxy,
    }
}

async fn counted(admin: SocketAddr, series: &str) -> f64 {
    let (code, text) = curl(&[&format!("http://{admin}/metrics")]).await;
    assert_eq!(code, 200);
    sample(&text, series).unwrap_or(0.0)
}

fn timeouts(which: &str) -> String {
    format!("divert_proxy_timeouts_total{{timeout=\"{which}\"}}")
}

fn get(addr: SocketAddr, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes()
}

/// In bind mode nothing but the proxy bounds the wait for a first request:
/// a client that says nothing, or stops inside the HTTP/2 preface or an
/// HTTP/1.1 head, is closed at the header read timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stall_before_a_whole_request_head_are_closed() {
    let w = world(Limits {
        header_read_timeout: SHORT,
        ..Limits::default()
    })
    .await;
    let stalls: [&[u8]; 3] = [
        b"",
        b"PRI * HTTP/2.0\r\n",
        b"GET / HTTP/1.1\r\nHost: web\r\nx-slow: 1\r\n",
    ];
    for stall in stalls {
        let mut s = TcpStream::connect(w.web).await.expect("connect");
        s.write_all(stall).await.expect("send");
        let closed = closed_within(&mut s, DEADLINE).await;
        assert!(
            closed.is_ok(),
            "{:?}: still open after {DEADLINE:?}",
            String::from_utf8_lossy(stall)
        );
    }
    assert!(counted(w.admin, &timeouts("header_read")).await >= 3.0);
    // A client that sends its request at once is served as ever.
    let (head, _) = raw_exchange(w.web, &get(w.web, "/")).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(w.upstream.count(), 1);
}

/// An HTTP/2 connection whose streams have all ended gets GOAWAY and is
/// closed once idle for the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_without_streams_is_closed() {
    let w = world(Limits {
        idle_timeout: SHORT,
        ..Limits::default()
    })
    .await;
    let tcp = TcpStream::connect(w.web).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/", w.web))
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert!(body.starts_with(b"web@staging"));
    let ended = tokio::time::timeout(DEADLINE, conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the connection ends cleanly (GOAWAY) within {DEADLINE:?}: {ended:?}"
    );
    assert!(counted(w.admin, &timeouts("idle")).await >= 1.0);
}

/// A request body that stops coming fails the request with 408 at the
/// request body timeout, instead of holding the proxy and the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_gets_408() {
    let w = world(Limits {
        request_body_timeout: SHORT,
        ..Limits::default()
    })
    .await;
    let mut s = TcpStream::connect(w.web).await.expect("connect");
    let head = format!(
        "POST /x HTTP/1.1\r\nHost: {}\r\nContent-Length: 10\r\n\r\nabc",
        w.web
    );
    s.write_all(head.as_bytes()).await.expect("send");
    let (head, body) = read_response(&mut s, true).await;
    assert!(head.starts_with("HTTP/1.1 408 "), "{head}\n{body}");
    assert!(body.contains("stalled"), "{body}");
    assert!(counted(w.admin, &timeouts("request_body")).await >= 1.0);
}

/// The same over HTTP/2: a stream whose body stops coming is answered 408,
/// and the upstream's half of it is reset rather than left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_http2_request_body_gets_408() {
    let w = world(Limits {
        request_body_timeout: SHORT,
        ..Limits::default()
    })
    .await;
    let mut sender = h2_client(w.web).await;
    let req = http::Request::post(format!("http://{}/x", w.web))
        .body(())
        .expect("request");
    let (resp, mut body) = sender.send_request(req, false).expect("send");
    body.send_data(Bytes::from_static(b"abc"), false)
        .expect("a piece of the body");
    let resp = tokio::time::timeout(DEADLINE, resp)
        .await
        .expect("answered within the deadline")
        .expect("response");
    assert_eq!(resp.status(), 408);
    assert!(counted(w.admin, &timeouts("request_body")).await >= 1.0);
    drop(body);
}

/// An upstream that does not answer in time: 504 to an HTTP client; a
/// gRPC call ends at its own grpc-timeout with DEADLINE_EXCEEDED (4), even
/// with the proxy's response timeout off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gets_504_and_a_grpc_call_its_deadline() {
    let w = world(Limits {
        response_timeout: SHORT,
        ..Limits::default()
    })
    .await;
    let (head, body) = raw_exchange(w.web, &get(w.web, "/hold")).await;
    assert!(head.starts_with("HTTP/1.1 504 "), "{head}");
    assert!(body.contains("no response head within"), "{body}");
    assert!(counted(w.admin, &timeouts("response_head")).await >= 1.0);
    w.upstream.release();

    let w = world(Limits {
        response_timeout: Duration::ZERO,
        ..Limits::default()
    })
    .await;
    let call = format!(
        "POST /hold HTTP/1.1\r\nHost: {}\r\ncontent-type: application/grpc\r\ngrpc-timeout: 300m\r\nte: trailers\r\ncontent-length: 0\r\n\r\n",
        w.web
    );
    let (head, _) = raw_exchange(w.web, call.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(header(&head, "grpc-status"), Some("4"), "{head}");
    assert!(counted(w.admin, &timeouts("response_head")).await >= 1.0);
    w.upstream.release();
}

/// The response timeout counts from the end of the request body, as
/// Envoy's does: an upload that takes longer than it, each piece within the
/// body timeout, is answered, not cut off with a 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_longer_than_the_response_timeout_is_answered() {
    let w = world(Limits {
        response_timeout: SHORT,
        ..Limits::default()
    })
    .await;
    let mut s = TcpStream::connect(w.web).await.expect("connect");
    let head = format!(
        "POST /x HTTP/1.1\r\nHost: {}\r\nContent-Length: 10\r\n\r\nabcde",
        w.web
    );
    s.write_all(head.as_bytes()).await.expect("send");
    // Deliberately past the response timeout, well within the body timeout.
    tokio::time::sleep(SHORT * 3).await;
    s.write_all(b"fghij").await.expect("send the rest");
    let (head, body) = read_response(&mut s, true).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}\n{body}");
    assert_eq!(body, "web@staging 10\n");
}

/// Past the connection cap a new connection is closed at once and counted,
/// while the open ones go on being served; a freed place is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_are_closed_and_open_ones_served() {
    let w = world(Limits {
        max_connections: 2,
        ..Limits::default()
    })
    .await;
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(w.web).await.expect("connect");
        s.write_all(&get(w.web, "/")).await.expect("send");
        let (head, _) = read_response(&mut s, true).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        open.push(s);
    }
    let mut refused = TcpStream::connect(w.web).await.expect("connect");
    let _ = refused.write_all(&get(w.web, "/")).await;
    let got = closed_within(&mut refused, DEADLINE).await;
    assert_eq!(got, Ok(Vec::new()), "closed without an answer");
    assert!(counted(w.admin, "divert_proxy_connections_refused_total").await >= 1.0);
    // The open ones are still served.
    open[0]
        .write_all(&get(w.web, "/again"))
        .await
        .expect("send");
    let (head, _) = read_response(&mut open[0], true).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    // One closes; its place is free once the proxy has seen it go.
    drop(open.pop());
    a_freed_place_is_taken(w.web, "/later").await;
}

/// Once a server at its connection cap has seen one go, a new connection
/// to `addr` is taken again (and `path` answered), within [`DEADLINE`].
async fn a_freed_place_is_taken(addr: SocketAddr, path: &str) {
    let started = tokio::time::Instant::now();
    loop {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(&get(addr, path)).await;
        if let Err(still_open) = closed_within(&mut s, Duration::from_millis(200)).await {
            assert!(still_open.is_empty() || still_open.starts_with(b"HTTP/1.1 200 "));
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no place freed in {DEADLINE:?}"
        );
    }
}

/// The admin server closes a client that sends no whole request in time,
/// and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_closes_clients_that_stall() {
    let w = world(Limits::default()).await;
    for stall in [&b""[..], b"PRI * HTTP/2.0\r\n", b"GET /live HTTP/1.1\r\n"] {
        let mut s = TcpStream::connect(w.admin).await.expect("connect");
        s.write_all(stall).await.expect("send");
        assert!(
            closed_within(&mut s, DEADLINE).await.is_ok(),
            "{:?}",
            String::from_utf8_lossy(stall)
        );
    }
    // The first two by the admin server's own watch, the third by hyper's.
    assert!(counted(w.admin, &timeouts("admin_header_read")).await >= 3.0);
}

/// Request heads past `--max-request-head`: an HTTP/1.1 client gets 431 and
/// the proxy counts it; an HTTP/2 client's oversized header list gets 431
/// too (from the HTTP/2 layer, not counted). Neither reaches the upstream;
/// a head within the limit does, over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_past_the_limit_are_refused_over_both_protocols() {
    if !have_tool("curl", &["--version"]) {
        return;
    }
    let limit = 16 * 1024;
    let w = world(Limits {
        max_request_head: limit,
        ..Limits::default()
    })
    .await;
    let big = format!("x-big: {}", "b".repeat(limit + 1024));
    let url = format!("http://{}/", w.web);
    let (code, _) = curl(&["-H", &big, &url]).await;
    assert_eq!(code, 431);
    assert!(counted(w.admin, "divert_proxy_request_heads_too_large_total").await >= 1.0);
    let h2 = try_curl_with(
        std::process::Command::new("curl"),
        &["--http2-prior-knowledge", "-H", &big, &url],
    )
    .await;
    assert!(
        matches!(h2, Ok((431, _))),
        "an HTTP/2 header list past the limit gets 431: {h2:?}"
    );
    assert_eq!(
        w.upstream.count(),
        0,
        "no oversized head reached the upstream"
    );
    let small = format!("x-small: {}", "s".repeat(limit / 2));
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let (code, _) = curl(&[proto, "-H", &small, &url]).await;
        assert_eq!(code, 200, "{proto}");
    }
    assert_eq!(w.upstream.count(), 2);
}

/// An idle HTTP/2 connection gets GOAWAY and a PING; a client that never
/// answers the PING (nor anything else) is dropped one idle timeout later
/// instead of being kept for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_client_that_never_answers_the_goaway_ping_is_dropped() {
    let w = world(Limits {
        idle_timeout: SHORT,
        ..Limits::default()
    })
    .await;
    // The preface and an empty SETTINGS frame; then silence.
    let mut s = TcpStream::connect(w.web).await.expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    let got = closed_within(&mut s, DEADLINE).await;
    assert!(
        got.is_ok(),
        "still open after {DEADLINE:?}: {:?}",
        got.err().map(|b| b.len())
    );
    assert!(counted(w.admin, &timeouts("goaway_ack")).await >= 1.0);
}

/// A client that opens streams and resets each once it has reached the
/// upstream (the work done, the answer never waited for) is closed after
/// the allowance, instead of making the upstream do thousands of requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_every_stream_it_opens_is_closed() {
    let w = world(Limits::default()).await;
    let tcp = TcpStream::connect(w.web).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut sent = 0usize;
    for _ in 0..3000 {
        let Ok(mut ready) = client.clone().ready().await else {
            break;
        };
        let req = http::Request::get(format!("http://{}/hold", w.web))
            .body(())
            .expect("request");
        let Ok((response, mut stream)) = ready.send_request(req, true) else {
            break;
        };
        sent += 1;
        // Reset once the upstream has it: the worst case for the upstream.
        let reached = async {
            while w.upstream.count() < sent {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        if tokio::time::timeout(DEADLINE, reached).await.is_err() {
            break;
        }
        stream.send_reset(h2::Reason::CANCEL);
        drop(response);
    }
    w.upstream.release();
    let allowance = divert_proxy::resets::ALLOWANCE as usize;
    assert!(
        sent <= allowance + 10,
        "{sent} streams opened before the connection was closed"
    );
    assert!(w.upstream.count() <= allowance + 10);
    let ended = tokio::time::timeout(DEADLINE, conn).await;
    assert!(ended.is_ok(), "the connection ends within {DEADLINE:?}");
    assert_eq!(
        counted(w.admin, "divert_proxy_http2_reset_floods_total").await,
        1.0
    );
}

/// The admin server takes at most its cap of connections (kubelet's probe
/// on a connection of its own is then refused, not the process starved of
/// file descriptors), and closes an HTTP/2 connection left without streams
/// even when its client answers every ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_caps_its_connections_and_closes_idle_http2_ones() {
    let w = world(Limits::default()).await;
    // An HTTP/2 client that answers pings, idle after one request.
    let tcp = TcpStream::connect(w.admin).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/live", w.admin))
        .body(Empty::new())
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    drop(resp);
    let ended = tokio::time::timeout(DEADLINE, conn).await;
    assert!(
        matches!(ended, Ok(Ok(_))),
        "the idle admin connection ends within {DEADLINE:?}: {ended:?}"
    );

    // The cap, with an admin server whose timers are long.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin = listener.local_addr().expect("admin addr");
    tokio::spawn(divert_proxy::admin::serve_with_limit(
        listener,
        ProxyAdmin::new(w._proxy.proxy.shared.clone(), false),
        DEADLINE * 3,
    ));
    let mut held = Vec::new();
    for _ in 0..divert_core::admin::MAX_CONNECTIONS {
        let mut s = TcpStream::connect(admin).await.expect("connect");
        s.write_all(&get(admin, "/live")).await.expect("send");
        let (head, _) = read_response(&mut s, true).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        held.push(s);
    }
    let mut refused = TcpStream::connect(admin).await.expect("connect");
    let _ = refused.write_all(&get(admin, "/live")).await;
    assert_eq!(
        closed_within(&mut refused, DEADLINE).await,
        Ok(Vec::new()),
        "past the cap: closed without an answer"
    );
    // A place freed is taken again.
    drop(held.pop());
    a_freed_place_is_taken(admin, "/live").await;
}

/// A proxy started with a low open-file limit raises it to the hard limit
/// and caps its client connections below what it holds, saying so: a flood
/// of idle connections is then refused at the cap, while the admin server
/// (kubelet's probes) and the connections within the cap go on working,
/// instead of every socket failing with "too many open files".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_fits_the_open_file_limit() {
    if !have_tool("prlimit", &["--version"]) {
        skip_or_fail("prlimit (util-linux) is not installed");
        return;
    }
    let upstream = Upstream::start("web", "staging").await;
    let ip = unique_ip();
    let dir = TempDir::new("nofile");
    let registry = dir.path().join("registry.yaml");
    std::fs::write(
        &registry,
        format!(
            "services:\n{}",
            service_yaml("web", "staging", ip, PORT, &[upstream.addr])
        ),
    )
    .expect("write registry");
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let nofile: u64 = 256;
    let cap = (nofile - divert_proxy::limits::RESERVED_FDS) / 2;
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(divert_tests::netns::sidecar_bin())
        .args(["proxy", "--registry"])
        .arg(&registry)
        .args(["--admin-addr", &admin.to_string()]);
    let proxy = divert_tests::netns::Process::spawn(cmd, "divert proxy ready");
    assert!(
        proxy.log().contains(&format!("max_connections={cap}")),
        "the log says the cap chosen: {}",
        proxy.log()
    );
    let web = SocketAddr::new(ip, PORT);
    // Idle connections, many more than the limit holds.
    let mut idle = Vec::new();
    for _ in 0..nofile + 44 {
        match TcpStream::connect(web).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("the listen queue refused a connection: {e}"),
        }
    }
    let (code, body) = curl(&[&format!("http://{admin}/live")]).await;
    assert_eq!(code, 200, "the admin server still answers: {body}");
    assert!(counted(admin, "divert_proxy_connections_refused_total").await >= 1.0);
    // The first connections, within the cap, are served.
    idle[0].write_all(&get(web, "/")).await.expect("send");
    let (head, _) = read_response(&mut idle[0], true).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    drop(idle);
    drop(proxy);
}
