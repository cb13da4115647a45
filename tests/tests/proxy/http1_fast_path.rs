//! What the HTTP/1.1 fast path (divert_proxy::h1) must get right beyond
//! the cases every HTTP/1.1 test covers: several requests in one write,
//! a connection it hands to the general stack halfway, responses framed
//! by the close or carrying trailers, and an upstream that answers before
//! the request body is through. Raw bytes on both sides where a client
//! library would hide what happened; what the upstream saw proves routing.

use std::time::Duration;

use divert_tests::raw::{
    Responses, closed_within, header, raw_upstream, read_request_head, read_response,
};
use divert_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PORT: u16 = 8080;

async fn world() -> Diverted {
    Diverted::start("web", PORT).await
}

/// Reads from `s` until `end` has arrived (or fails the test after 10 s).
async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let read = async {
        let mut chunk = [0u8; 1024];
        while !got.windows(end.len()).any(|w| w == end) {
            let n = s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the bytes within 10 s");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_one_write_are_each_routed_by_their_own_baggage() {
    let w = world().await;
    let host = w.addr;
    let three = format!(
        "GET /1 HTTP/1.1\r\nHost: {host}\r\nbaggage: okteto-divert=alice\r\n\r\n\
         POST /2 HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello\
         POST /3 HTTP/1.1\r\nHost: {host}\r\nbaggage: a=1, okteto-divert=alice\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
    let mut s = TcpStream::connect(w.addr).await.expect("connect");
    s.write_all(three.as_bytes()).await.expect("send");
    let mut responses = Responses::default();
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let (head, body) = responses.next(&mut s, true).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        bodies.push(body);
    }
    assert_eq!(
        bodies,
        ["web@alice 0\n", "web@staging 5\n", "web@alice 3\n"]
    );
    let paths = |u: &Upstream| u.seen().iter().map(|s| s.path.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&w.alice), ["/1", "/3"]);
    assert_eq!(paths(&w.staging), ["/2"]);
    // Each upstream connection was reused, not one per request.
    assert_eq!(w.alice.connections(), 1);
}

/// The fast path hands a connection to the general stack at the first
/// request it does not take; the requests before and after are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_handed_over_halfway_keeps_its_order_and_routing() {
    let w = world().await;
    let host = w.addr;
    let mut s = TcpStream::connect(w.addr).await.expect("connect");
    s.write_all(
        format!(
            "GET /fast HTTP/1.1\r\nHost: {host}\r\nbaggage: okteto-divert=alice\r\n\r\n\
             PUT /expect HTTP/1.1\r\nHost: {host}\r\nbaggage: okteto-divert=alice\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .expect("send");
    let mut responses = Responses::default();
    let (head, body) = responses.next(&mut s, true).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "web@alice 0\n");
    let (head, _) = responses.next(&mut s, false).await;
    assert!(
        head.starts_with("HTTP/1.1 100 "),
        "hyper answers the Expect: {head}"
    );
    s.write_all(b"ok").await.expect("the body");
    let (head, body) = responses.next(&mut s, true).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "web@alice 2\n");
    s.write_all(format!("GET /after HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let (_, body) = responses.next(&mut s, true).await;
    assert_eq!(body, "web@staging 0\n");
    let paths = |u: &Upstream| u.seen().iter().map(|s| s.path.clone()).collect::<Vec<_>>();
    assert_eq!(paths(&w.alice), ["/fast", "/expect"]);
    assert_eq!(paths(&w.staging), ["/after"]);
}

/// RFC 9112 §6.3 item 8: a response without a length runs to the close;
/// the client gets all of it, and `connection: close`, and then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_that_runs_to_the_close_reaches_the_client_whole() {
    let (dialed, _proxy, task) = raw_upstream(PORT, |mut s| async move {
        if read_request_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.0 200 OK\r\nX-Up: 1\r\n\r\nall of it, ")
                .await;
            let _ = s.write_all(b"until the close").await;
        }
    })
    .await;
    let mut s = TcpStream::connect(dialed).await.expect("connect");
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {dialed}\r\n\r\n").as_bytes())
        .await
        .expect("send");
    let got = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy closes the client connection after the body");
    task.abort();
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert_eq!(header(head, "connection"), Some("close"), "{head}");
    assert_eq!(header(head, "x-up"), Some("1"));
    assert_eq!(body, "all of it, until the close");
}

/// A chunked response goes through as it came, trailers included, and the
/// upstream connection is reused after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_response_keeps_its_chunks_and_trailers() {
    let (dialed, _proxy, task) = raw_upstream(PORT, |mut s| async move {
        while read_request_head(&mut s).await {
            let sent = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nx-sum: 9\r\n\r\n")
                .await;
            if sent.is_err() {
                return;
            }
        }
    })
    .await;
    let mut s = TcpStream::connect(dialed).await.expect("connect");
    for _ in 0..2 {
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {dialed}\r\n\r\n").as_bytes())
            .await
            .expect("send");
        let got = read_until(&mut s, b"x-sum: 9\r\n\r\n").await;
        let text = String::from_utf8_lossy(&got);
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert_eq!(header(head, "transfer-encoding"), Some("chunked"), "{head}");
        assert_eq!(
            body,
            "4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nx-sum: 9\r\n\r\n"
        );
    }
    task.abort();
}

/// An upstream may answer before it has read the whole body (a 413, say).
/// The client gets that answer at once, not after a stalled upload, and
/// the connection then closes: the rest of its body was never read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_the_body_ends_reaches_the_client_and_ends_the_connection() {
    let (dialed, _proxy, task) = raw_upstream(PORT, |mut s| async move {
        if read_request_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n")
                .await;
            // Keep the connection open, reading nothing more.
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    })
    .await;
    let mut s = TcpStream::connect(dialed).await.expect("connect");
    s.write_all(
        format!("POST /up HTTP/1.1\r\nHost: {dialed}\r\nContent-Length: 100000000\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("send");
    s.write_all(&[b'x'; 4096]).await.expect("some of the body");
    let (head, body) = read_response(&mut s, true).await;
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    assert_eq!(body, "too big\n");
    closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("the proxy closes the connection");
    task.abort();
}

/// An interim answer while the body is still coming (a 100 nobody asked
/// for) is not the upstream's answer: it is passed on, the upload goes on,
/// and the final response is the one the client gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interim_answer_during_the_upload_does_not_end_it() {
    let (interim_sent, interim_seen) = tokio::sync::oneshot::channel::<()>();
    let interim_sent = std::sync::Mutex::new(Some(interim_sent));
    let interim_sent = std::sync::Arc::new(interim_sent);
    let (dialed, _proxy, task) = raw_upstream(PORT, move |mut s| {
        let interim_sent = interim_sent.clone();
        async move {
            // Reads the head and the 10-byte body, answering 100 between.
            let mut got = Vec::new();
            let mut chunk = [0u8; 1024];
            let mut told = false;
            loop {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    if !told {
                        let _ = s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                        if let Some(tx) = interim_sent.lock().expect("lock").take() {
                            let _ = tx.send(());
                        }
                        told = true;
                    }
                    if got.len() >= end + 4 + 10 {
                        let body = String::from_utf8_lossy(&got[end + 4..]).into_owned();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = s.write_all(answer.as_bytes()).await;
                        return;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        }
    })
    .await;
    let mut s = TcpStream::connect(dialed).await.expect("connect");
    s.write_all(
        format!("POST /up HTTP/1.1\r\nHost: {dialed}\r\nContent-Length: 10\r\n\r\nfirst")
            .as_bytes(),
    )
    .await
    .expect("send");
    tokio::time::timeout(Duration::from_secs(10), interim_seen)
        .await
        .expect("the upstream answers 100 within 10 s")
        .expect("the upstream task");
    let mut responses = Responses::default();
    let (interim, _) = responses.next(&mut s, false).await;
    assert!(interim.starts_with("HTTP/1.1 100 "), "passed on: {interim}");
    s.write_all(b"-last").await.expect("the rest of the body");
    let (head, body) = responses.next(&mut s, true).await;
    task.abort();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "first-last");
}

/// A keep-alive connection idle past a second lets its buffers go; the
/// next request, whose first byte is then read on its own, is served as
/// any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_past_a_second_is_served_as_before() {
    let w = world().await;
    let host = w.addr;
    let mut s = TcpStream::connect(w.addr).await.expect("connect");
    let mut responses = Responses::default();
    let request =
        format!("GET /first HTTP/1.1\r\nHost: {host}\r\nbaggage: okteto-divert=alice\r\n\r\n");
    s.write_all(request.as_bytes()).await.expect("send");
    let (_, body) = responses.next(&mut s, true).await;
    assert_eq!(body, "web@alice 0\n");
    // Past the idle mark (one second), the buffers are gone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let request = format!(
        "POST /second HTTP/1.1\r\nHost: {host}\r\nbaggage: okteto-divert=alice\r\nContent-Length: 3\r\n\r\nabc"
    );
    s.write_all(&request.as_bytes()[..1])
        .await
        .expect("the first byte");
    s.write_all(&request.as_bytes()[1..])
        .await
        .expect("the rest");
    let (head, body) = responses.next(&mut s, true).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(body, "web@alice 3\n");
    let paths: Vec<String> = w.alice.seen().iter().map(|s| s.path.clone()).collect();
    assert_eq!(paths, ["/first", "/second"]);
}
