//! The HTTP/1 request path: raw bytes through a real proxy listener (bind
//! mode, the whole path from accept to the upstream pool) to an in-process
//! upstream. Beyond not panicking or hanging: whatever the proxy answers is
//! an HTTP/1 response, and whatever it forwards the upstream's own HTTP
//! parser accepts.
//!
//! And the requests the upstream gets are the ones the client sent (no
//! request smuggling): a strict reference reader of RFC 9112 ([`sent`])
//! works out the requests the input surely holds (their method, target and
//! body), stopping at the first thing it is not sure of. The upstream
//! answers each request with a digest of what it got, and every answer of
//! the upstream's that reaches the client must carry, in order, the digest
//! of the request the client sent in that place, with the body the
//! upstream sent. The proxy may refuse a request (its own answer has no
//! digest), never change one.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use divert_proxy::Proxy;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The upstream's answer header: the digest of the request it got.
const SEEN: &str = "x-fuzz-seen";

/// Set when the upstream could not parse what the proxy sent it.
static UPSTREAM_PARSE_ERROR: AtomicBool = AtomicBool::new(false);

struct Harness {
    runtime: tokio::runtime::Runtime,
    dialed: SocketAddr,
    _proxy: Proxy,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let runtime = divert_fuzz::runtime();
        let (dialed, proxy) = runtime.block_on(async {
            divert_fuzz::ignore_sigpipe();
            let up = divert_fuzz::upstream(serve_upstream).await;
            divert_fuzz::proxy_on(Ipv4Addr::new(127, 93, 0, 1), |port| format!(
                "namespaces:\n  - name: staging\n  - {{ name: alice, sharedNamespace: staging }}\nservices:\n  - {{ name: web, namespace: staging, addresses: [127.93.0.1], ports: [{{ port: {port} }}], endpoints: [\"{up}\"] }}\n  - {{ name: web, namespace: alice, addresses: [127.93.0.2], ports: [{{ port: {port} }}], endpoints: [\"{up}\"] }}\n"
            ), Duration::from_secs(2)).await
        });
        Harness {
            runtime,
            dialed,
            _proxy: proxy,
        }
    })
}

/// The upstream: answers each request with the digest of what it got, and
/// flags what it could not parse.
async fn serve_upstream(s: TcpStream) {
    let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
        let method = req.method().as_str().to_owned();
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(String::new, |pq| pq.as_str().to_owned());
        // Read the body whole: its framing is part of the test.
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let seen = format!(
            "{:016x}",
            digest(method.as_bytes(), target.as_bytes(), &body)
        );
        let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("{seen}\n"))));
        if let Ok(v) = hyper::header::HeaderValue::from_str(&seen) {
            resp.headers_mut().insert(SEEN, v);
        }
        Ok::<_, std::convert::Infallible>(resp)
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(s), svc)
        .with_upgrades()
        .await;
    if let Err(e) = served
        && e.is_parse()
    {
        eprintln!("upstream parse error: {e}");
        UPSTREAM_PARSE_ERROR.store(true, Ordering::SeqCst);
    }
}

fuzz_target!(|data: &[u8]| {
    // HTTP/1 only: the HTTP/2 preface switches the connection to HTTP/2,
    // whose answers are frames.
    if data.len() > 64 * 1024
        || b"PRI * HTTP/2.0".starts_with(&data[..data.len().min(14)]) && !data.is_empty()
    {
        return;
    }
    let h = harness();
    let answer = h.runtime.block_on(async {
        let mut s = TcpStream::connect(h.dialed)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        // The proxy may close before reading everything: not a failure.
        let _ = s.write_all(data).await;
        let _ = s.shutdown().await;
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut chunk = [0u8; 4096];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "the proxy neither answered nor closed in 10 s"
        );
        got
    });
    if !answer.is_empty() {
        assert!(
            answer.starts_with(b"HTTP/1."),
            "not an HTTP/1 response: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        );
    }
    assert!(
        !UPSTREAM_PARSE_ERROR.load(Ordering::SeqCst),
        "the upstream could not parse what the proxy forwarded"
    );
    check_answers(&sent(data), &answer);
});

/// FNV-1a over a request's method, target and body, as the upstream got
/// them and as the client sent them.
fn digest(method: &[u8], target: &[u8], body: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [method, b" ", target, b" ", body] {
        for &b in part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A request the client surely sent.
struct Sent {
    digest: u64,
    head: bool,
}

/// The requests at the start of `data`, read the strict way RFC 9112 allows
/// no doubt about: origin-form HTTP/1.1 (RFC 3986 characters) with one Host, no Upgrade or
/// Expect, a body framed by one Content-Length or by one Transfer-Encoding
/// ending in chunked (without extensions or trailers), and nothing a
/// Connection header says but `close`. It stops at the first request it is
/// not sure of: what follows is not judged.
fn sent(data: &[u8]) -> Vec<Sent> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let rest = &data[at..];
        if rest[0] == b'\r' || rest[0] == b'\n' {
            break;
        }
        let mut fields = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut fields);
        let Ok(httparse::Status::Complete(len)) = req.parse(rest) else {
            break;
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
            break;
        };
        // Origin form only, of RFC 3986's path and query characters: a
        // fragment or a byte outside them is a target parsers may read
        // differently, and so no proof either way.
        let plain = target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:@/?".contains(&b));
        if method == "CONNECT" || !target.starts_with('/') || !plain {
            break;
        }
        let mut hosts = 0;
        let mut length: Option<usize> = None;
        let mut lengths_agree = true;
        let mut codings = 0;
        let mut chunked = false;
        let mut close = false;
        let mut unsure = false;
        for f in req.headers.iter() {
            let name = f.name.to_ascii_lowercase();
            let value = f.value.trim_ascii();
            match name.as_str() {
                "host" => hosts += 1,
                "content-length" => {
                    for v in value.split(|&b| b == b',') {
                        let v = v.trim_ascii();
                        let n = std::str::from_utf8(v)
                            .ok()
                            .filter(|v| {
                                !v.is_empty()
                                    && v.len() < 10
                                    && v.bytes().all(|b| b.is_ascii_digit())
                            })
                            .and_then(|v| v.parse::<usize>().ok());
                        match (n, length) {
                            (Some(n), None) => length = Some(n),
                            (Some(n), Some(m)) if n == m => {}
                            _ => lengths_agree = false,
                        }
                    }
                }
                "transfer-encoding" => {
                    codings += 1;
                    chunked = value
                        .rsplit(|&b| b == b',')
                        .next()
                        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                }
                "connection" => {
                    close |= value
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
                }
                "upgrade" | "expect" => unsure = true,
                _ => {}
            }
        }
        if unsure
            || hosts != 1
            || !lengths_agree
            || (codings > 0 && (length.is_some() || codings > 1 || !chunked))
        {
            break;
        }
        let after = &rest[len..];
        let (body, used) = if codings == 1 {
            match dechunk(after) {
                Some(b) => b,
                None => break,
            }
        } else {
            let n = length.unwrap_or(0);
            if after.len() < n {
                break;
            }
            (after[..n].to_vec(), n)
        };
        out.push(Sent {
            digest: digest(method.as_bytes(), target.as_bytes(), &body),
            head: method == "HEAD",
        });
        at += len + used;
        if close {
            break;
        }
    }
    out
}

/// A chunked body read strictly: its bytes and how many input bytes it
/// took; `None` for anything RFC 9112 §7.1 leaves room to read otherwise.
fn dechunk(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let line_end = data[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = &data[at..at + line_end];
        if size.is_empty() || size.len() > 8 || !size.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let n = usize::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()?;
        at += line_end + 2;
        if n == 0 {
            return (data.get(at..at + 2)? == b"\r\n").then_some((body, at + 2));
        }
        body.extend_from_slice(data.get(at..at + n)?);
        at += n;
        if data.get(at..at + 2)? != b"\r\n" {
            return None;
        }
        at += 2;
    }
}

/// Every answer of the upstream's in `answer` carries the digest of the
/// request the client sent in its place, and its body as sent.
fn check_answers(sent: &[Sent], answer: &[u8]) {
    let mut at = 0;
    let mut k = 0;
    while at < answer.len() && k < sent.len() {
        let mut fields = [httparse::EMPTY_HEADER; 100];
        let mut resp = httparse::Response::new(&mut fields);
        let Ok(httparse::Status::Complete(len)) = resp.parse(&answer[at..]) else {
            return;
        };
        let status = resp.code.unwrap_or(0);
        let value = |name: &str| {
            resp.headers
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name))
                .map(|f| String::from_utf8_lossy(f.value).trim().to_owned())
        };
        at += len;
        if (100..200).contains(&status) {
            continue;
        }
        let seen = value(SEEN);
        let length: usize = value("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body_len = if sent[k].head || status == 204 || status == 304 {
            0
        } else {
            length
        };
        let body = &answer[at..answer.len().min(at + body_len)];
        if let Some(seen) = seen {
            let want = format!("{:016x}", sent[k].digest);
            assert_eq!(
                seen, want,
                "request {k}: the upstream got a request other than the one the client sent"
            );
            if !sent[k].head {
                assert_eq!(
                    body,
                    format!("{want}\n").as_bytes(),
                    "response {k}: the client got a body other than the upstream's"
                );
            }
        } else if value("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
            return;
        }
        at += body_len;
        k += 1;
    }
}
