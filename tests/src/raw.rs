//! HTTP/1.1 as raw bytes, for the tests that must send or answer exactly
//! what a hostile client or a faulty upstream would: no client library
//! would write these messages.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{TestProxy, service_yaml, unique_ip};

/// How long any raw read waits before the test fails.
const LIMIT: Duration = Duration::from_secs(10);

/// Reads a request head off a raw upstream connection; false if the peer
/// closed first.
pub async fn read_request_head(s: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

/// A raw upstream that runs `serve` on each connection, and a proxy in
/// front of it: `raw.staging` dialed at the returned address and `port`.
/// Abort the task when done.
pub async fn raw_upstream<F, Fut>(
    port: u16,
    serve: F,
) -> (SocketAddr, TestProxy, tokio::task::JoinHandle<()>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = upstream.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = upstream.accept().await {
            tokio::spawn(serve(s));
        }
    });
    let ip = unique_ip();
    let yaml = format!(
        "services:\n{}",
        service_yaml("raw", "staging", ip, port, &[addr])
    );
    let proxy = TestProxy::start(&yaml).await;
    (SocketAddr::new(ip, port), proxy, task)
}

/// Sends `request` as raw bytes and reads one response: its head, and a
/// body of the length the head says.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("send");
    read_response(&mut s, true).await
}

/// Reads one response off `s`: its head and, when `with_body`, a body of
/// the length its Content-Length says (none for a HEAD request's answer).
pub async fn read_response(s: &mut TcpStream, with_body: bool) -> (String, String) {
    Responses::default().next(s, with_body).await
}

/// Reads one response after another off one connection, keeping the bytes
/// that arrive past each for the next: answers to requests sent in one
/// write may well arrive in one read.
#[derive(Debug, Default)]
pub struct Responses {
    got: Vec<u8>,
}

impl Responses {
    /// The next response's head and, when `with_body`, its body of the
    /// length its Content-Length says.
    pub async fn next(&mut self, s: &mut TcpStream, with_body: bool) -> (String, String) {
        let got = &mut self.got;
        let read = async {
            let mut chunk = [0u8; 1024];
            loop {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).into_owned();
                    let len = if with_body {
                        header(&head, "content-length").map_or(0, |v| v.parse().unwrap_or(0))
                    } else {
                        0
                    };
                    if got.len() >= end + 4 + len {
                        let body =
                            String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
                        got.drain(..end + 4 + len);
                        return (head, body);
                    }
                }
                let n = s.read(&mut chunk).await.expect("read");
                assert!(n > 0, "closed before a whole response: {got:?}");
                got.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(LIMIT, read)
            .await
            .expect("a response within 10 s")
    }
}

/// The value of header `name` in a response head, if present.
pub fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// Waits for the peer to close `s`, reading (and dropping) what it sends
/// first; `Err` with what came if it is still open after `limit`.
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let wait = async {
        let mut chunk = [0u8; 1024];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    match tokio::time::timeout(limit, wait).await {
        Ok(()) => Ok(got),
        Err(_) => Err(got),
    }
}

/// The value of one series in a Prometheus text exposition: `series` is
/// the name with its labels, as written (`divert_proxy_timeouts_total{timeout="idle"}`).
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}
