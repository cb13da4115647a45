//! Message framing through the proxy, both ways, from raw bytes: a request
//! or response means the same after the proxy as before it (RFC 9112 §6).
//! Each case is what a client library would never send, so each test
//! writes the bytes itself; what the upstream or client got proves it.

use std::net::SocketAddr;

use divert_tests::raw::{header, raw_exchange, read_request_head, read_response};
use divert_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const PORT: u16 = 8080;

async fn world() -> Diverted {
    Diverted::start("web", PORT).await
}

/// hyper sends a GET or HEAD whose body length it does not know as
/// bodiless; the proxy must forward a chunked one's body all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_get_or_head_keeps_its_body() {
    let w = world().await;
    let request = |method: &str| {
        format!(
            "{method} /x HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            w.addr
        )
    };
    let (head, body) = raw_exchange(w.addr, request("GET").as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "web@staging 11\n", "the upstream got all 11 bytes");

    let mut s = TcpStream::connect(w.addr).await.expect("connect");
    s.write_all(request("HEAD").as_bytes()).await.expect("send");
    let (head, _) = read_response(&mut s, false).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let seen = w.staging.seen();
    let methods: Vec<(&str, usize)> = seen
        .iter()
        .map(|s| (s.method.as_str(), s.body_len))
        .collect();
    assert_eq!(methods, [("GET", 11), ("HEAD", 11)]);
}

/// RFC 9112 §6.3: a response with both Transfer-Encoding and Content-Length
/// is framed by the former, and the latter must not be forwarded. Before,
/// the client got `Content-Length: 3` and the first 3 bytes of "hello".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_content_length_and_chunked_is_reframed() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = upstream.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = upstream.accept().await {
            tokio::spawn(async move {
                while read_request_head(&mut s).await {
                    let sent = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
                        .await;
                    if sent.is_err() {
                        return;
                    }
                }
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
    // curl, twice on one connection: a wrong length would show in the body,
    // or as garbage before the second response. curl writes each body, then
    // its status line.
    let url = format!("http://{dialed}/x");
    let (code, body) = curl(&[&url, &url]).await;
    assert_eq!(code, 200);
    assert_eq!(body, "hello\n200hello");
    // And the head as sent: no Content-Length of 3 is left.
    let mut s = TcpStream::connect(dialed).await.expect("connect");
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {dialed}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let (head, _) = read_response(&mut s, false).await;
    task.abort();
    assert_ne!(header(&head, "content-length"), Some("3"), "{head}");
}

/// A chunked request body that breaks off into garbage is the client's
/// fault: 400 from the proxy, not a 502 that blames the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_400_not_a_502() {
    let w = world().await;
    let request = format!(
        "POST /x HTTP/1.1\r\nHost: {}\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nnot a chunk\r\n0\r\n\r\n",
        w.addr
    );
    let (head, body) = raw_exchange(w.addr, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}\n{body}");
    assert!(
        body.starts_with("divert: request: the request body is malformed"),
        "{body}"
    );
}

/// `Connection` names hop-by-hop headers, but one naming Host or baggage
/// must not take them off the request: the next hop routes by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_strip_host_or_baggage() {
    let w = world().await;
    let request = format!(
        "GET /x HTTP/1.1\r\nHost: {}\r\nConnection: host, baggage, x-hop\r\nbaggage: okteto-divert=alice\r\nx-hop: 1\r\n\r\n",
        w.addr
    );
    let (head, body) = raw_exchange(w.addr, request.as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(body.starts_with("web@alice"), "{body}");
    let seen = w.alice.seen();
    assert_eq!(seen[0].baggage, ["okteto-divert=alice"]);
    assert_eq!(
        seen[0].headers.get("host").map(|h| h.as_bytes()),
        Some(w.addr.to_string().as_bytes())
    );
    assert!(seen[0].headers.get("x-hop").is_none(), "named, so removed");
    assert_eq!(w.staging.count(), 0);
}
