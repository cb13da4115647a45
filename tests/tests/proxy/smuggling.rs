//! Framing is decided once, by the proxy that reads a message, and nothing
//! in the message can change it for the next hop: the upstream sees exactly
//! the requests the client sent, the client exactly the responses the
//! upstream sent. Each case runs on both HTTP/1.1 paths: the fast path
//! (origin-form requests) and the general stack (absolute-form requests,
//! which the fast path hands over). Raw bytes, because no client library
//! would send these messages; what the upstream saw is the proof.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use divert_tests::raw::{Responses, header, raw_upstream, read_request_head};
use divert_tests::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PORT: u16 = 8080;

/// The request target that takes `path` down each HTTP/1.1 path.
fn targets(addr: SocketAddr, path: &str) -> [(&'static str, String); 2] {
    [
        ("the fast path", path.to_owned()),
        ("the general stack", format!("http://{addr}{path}")),
    ]
}

/// A request whose body is a whole request of its own.
const INNER: &str = "GET /smuggled HTTP/1.1\r\nHost: web\r\n\r\n";

/// The attack of the isolation issue: `Connection` names the field the
/// request is framed by. Were it dropped, the upstream would read an empty
/// POST and then `GET /smuggled`, a request no routing, tap or metric saw,
/// whose response another client of the pooled connection would get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_holds_a_request_reaches_the_upstream_as_that_body() {
    let w = Diverted::start("web", PORT).await;
    let host = w.addr;
    let chunked_inner = format!("{:x}\r\n{INNER}\r\n0\r\n\r\n", INNER.len());
    let framings = [
        (
            format!(
                "Content-Length: {}\r\nConnection: content-length",
                INNER.len()
            ),
            INNER.to_owned(),
        ),
        (
            format!(
                "Connection: keep-alive, Content-Length\r\nContent-Length: {}",
                INNER.len()
            ),
            INNER.to_owned(),
        ),
        (
            "Transfer-Encoding: chunked\r\nConnection: transfer-encoding".to_owned(),
            chunked_inner,
        ),
    ];
    let mut expected = Vec::new();
    for (path_name, target) in targets(host, "/outer") {
        for (fields, body) in &framings {
            let mut s = TcpStream::connect(host).await.expect("connect");
            let request = format!(
                "POST {target} HTTP/1.1\r\nHost: {host}\r\n{fields}\r\n\r\n{body}\
                 GET /after HTTP/1.1\r\nHost: {host}\r\n\r\n"
            );
            s.write_all(request.as_bytes()).await.expect("send");
            let mut responses = Responses::default();
            let (head, got) = responses.next(&mut s, true).await;
            assert!(
                head.starts_with("HTTP/1.1 200 "),
                "{path_name}, {fields:?}: {head}"
            );
            assert_eq!(
                got,
                format!("web@staging {}\n", INNER.len()),
                "{path_name}, {fields:?}: the upstream got the whole body"
            );
            let (head, got) = responses.next(&mut s, true).await;
            assert!(
                head.starts_with("HTTP/1.1 200 "),
                "{path_name}, {fields:?}: {head}"
            );
            assert_eq!(got, "web@staging 0\n", "{path_name}, {fields:?}");
            expected.push(("POST".to_owned(), "/outer".to_owned(), INNER.len()));
            expected.push(("GET".to_owned(), "/after".to_owned(), 0));
            let seen: Vec<(String, String, usize)> = w
                .staging
                .seen()
                .into_iter()
                .map(|s| (s.method, s.path, s.body_len))
                .collect();
            assert_eq!(
                seen, expected,
                "{path_name}, {fields:?}: exactly the requests the client sent"
            );
        }
    }
    assert_eq!(w.alice.count(), 0);
}

/// An upstream whose every response says `Connection: content-length`:
/// were the field dropped, the client could not tell where the body ends
/// and would hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_framed_by_a_nominated_field_reaches_the_client_framed() {
    let (dialed, _proxy, task) = raw_upstream(PORT, |mut s| async move {
        while read_request_head(&mut s).await {
            let answer =
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\nok";
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    for (path_name, target) in targets(dialed, "/") {
        let mut s = TcpStream::connect(dialed).await.expect("connect");
        let request = format!("GET {target} HTTP/1.1\r\nHost: {dialed}\r\n\r\n");
        let mut responses = Responses::default();
        for turn in 0..2 {
            s.write_all(request.as_bytes()).await.expect("send");
            let (head, body) = responses.next(&mut s, true).await;
            assert!(
                head.starts_with("HTTP/1.1 200 "),
                "{path_name} {turn}: {head}"
            );
            assert_eq!(
                header(&head, "content-length"),
                Some("2"),
                "{path_name}: {head}"
            );
            assert_eq!(body, "ok", "{path_name} {turn}");
        }
    }
    task.abort();
}

/// A keep-alive connection that idles while the table changes: its next
/// request goes by the new table. Here alice's namespace stops opting in,
/// so her key must no longer reach her copy. And the idle connection holds
/// no table: the old one is freed while it idles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_keep_alive_connection_is_routed_by_the_table_of_its_time() {
    let staging = Upstream::start("web", "staging").await;
    let alice = Upstream::start("web", "alice").await;
    let (ip, alice_ip) = (unique_ip(), unique_ip());
    let services = format!(
        "{}{}",
        service_yaml("web", "staging", ip, PORT, &[staging.addr]),
        service_yaml("web", "alice", alice_ip, PORT, &[alice.addr])
    );
    let opted_in = format!(
        "namespaces:\n  - name: staging\n  - {{ name: alice, sharedNamespace: staging }}\nservices:\n{services}"
    );
    let opted_out = format!("namespaces:\n  - name: staging\nservices:\n{services}");
    let p = TestProxy::start(&opted_in).await;
    let dialed = SocketAddr::new(ip, PORT);
    for (turn, (path_name, target)) in targets(dialed, "/").into_iter().enumerate() {
        if turn > 0 {
            p.reload(&opted_in).await;
        }
        let mut s = TcpStream::connect(dialed).await.expect("connect");
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {dialed}\r\nbaggage: okteto-divert=alice\r\n\r\n"
        );
        let mut responses = Responses::default();
        s.write_all(request.as_bytes()).await.expect("send");
        let (_, body) = responses.next(&mut s, true).await;
        assert_eq!(body, "web@alice 0\n", "{path_name}: alice opted in");

        // The connection idles; alice opts out meanwhile.
        let old = Arc::downgrade(&p.proxy.shared.tables.load());
        p.reload(&opted_out).await;
        let freed = async {
            while old.strong_count() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        assert!(
            tokio::time::timeout(Duration::from_secs(5), freed)
                .await
                .is_ok(),
            "{path_name}: the old table is still held while the connection idles"
        );

        s.write_all(request.as_bytes()).await.expect("send");
        let (head, body) = responses.next(&mut s, true).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{path_name}: {head}");
        assert_eq!(
            body, "web@staging 0\n",
            "{path_name}: a key of a namespace that no longer opts in is ignored"
        );
    }
    assert_eq!(alice.count(), 2, "one request per path before the change");
    assert_eq!(staging.count(), 2, "one request per path after it");
}

/// RFC 9110 §15.2: a proxy forwards the 1xx responses it did not ask for
/// itself; `103 Early Hints` lets a browser start loading what the page
/// will need while the page is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_hints_reach_the_client_before_the_final_response() {
    let (dialed, _proxy, task) = raw_upstream(PORT, |mut s| async move {
        while read_request_head(&mut s).await {
            let answer =
                b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload; as=style\r\n\r\n\
                           HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npage";
            if s.write_all(answer).await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut s = TcpStream::connect(dialed).await.expect("connect");
    let request = format!("GET /page HTTP/1.1\r\nHost: {dialed}\r\n\r\n");
    let mut responses = Responses::default();
    for turn in 0..2 {
        s.write_all(request.as_bytes()).await.expect("send");
        let (hints, _) = responses.next(&mut s, false).await;
        assert!(hints.starts_with("HTTP/1.1 103 "), "{turn}: {hints}");
        assert_eq!(
            header(&hints, "link"),
            Some("</app.css>; rel=preload; as=style")
        );
        let (head, body) = responses.next(&mut s, true).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{turn}: {head}");
        assert_eq!(body, "page");
    }
    task.abort();
}

/// A body coded with gzip and delimited by the close keeps its
/// `Transfer-Encoding`: curl, asked to decode transfer codings, gets the
/// text back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_coded_to_the_close_reaches_the_client_decodable() {
    if !have_tool("curl", &["--version"]) {
        skip_or_fail("curl is not installed");
        return;
    }
    // "hello, coded world\n", gzipped (mtime 0).
    const GZIPPED: [u8; 39] = [
        31, 139, 8, 0, 0, 0, 0, 0, 2, 255, 203, 72, 205, 201, 201, 215, 81, 72, 206, 79, 73, 77,
        81, 40, 207, 47, 202, 73, 225, 2, 0, 62, 73, 45, 36, 19, 0, 0, 0,
    ];
    let (dialed, _proxy, task) = raw_upstream(PORT, |mut s| async move {
        if read_request_head(&mut s).await {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
                .await;
            let _ = s.write_all(&GZIPPED).await;
        }
    })
    .await;
    for (path_name, target) in targets(dialed, "/coded") {
        let url = format!("http://{dialed}/coded");
        let (status, body) = curl(&["--tr-encoding", "--request-target", &target, &url]).await;
        assert_eq!(status, 200, "{path_name}");
        assert_eq!(body, "hello, coded world\n", "{path_name}");
    }
    task.abort();
}
