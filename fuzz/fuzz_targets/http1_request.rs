//! The HTTP/1 request path: raw bytes through a real proxy listener (bind
//! mode, the whole path from accept to the upstream pool) to an in-process
//! upstream. Beyond not panicking or hanging: whatever the proxy answers is
//! an HTTP/1 response, and whatever it forwards the upstream's own HTTP
//! parser accepts: a request the proxy let through must never reach the
//! upstream as bytes that mean something else (request smuggling).
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use divert_proxy::limits::Limits;
use divert_proxy::registry::parse;
use divert_proxy::{Config, Proxy, Source};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"));
        let (dialed, proxy) = runtime.block_on(async {
            // libFuzzer's main is C's, so Rust's start-up never set SIGPIPE
            // aside: a write to a socket the proxy closed would kill the
            // fuzzer. Tokio's handler replaces the default action for good.
            let pipe = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
                .unwrap_or_else(|e| panic!("SIGPIPE handler: {e}"));
            drop(pipe);
            let upstream = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .unwrap_or_else(|e| panic!("upstream: {e}"));
            let up = upstream.local_addr().unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(async move {
                while let Ok((s, _)) = upstream.accept().await {
                    tokio::spawn(async move {
                        let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                            // Read the body whole: its framing is part of the test.
                            let n = req.into_body().collect().await.map_or(0, |b| b.to_bytes().len());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                Bytes::from(format!("{n}\n")),
                            )))
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
                    });
                }
            });
            // A free port for the dialed address (bind mode binds it).
            let port = std::net::TcpListener::bind((Ipv4Addr::new(127, 93, 0, 1), 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_else(|e| panic!("a free port: {e}"));
            let yaml = format!(
                "namespaces:\n  - name: staging\n  - {{ name: alice, sharedNamespace: staging }}\nservices:\n  - {{ name: web, namespace: staging, addresses: [127.93.0.1], ports: [{{ port: {port} }}], endpoints: [\"{up}\"] }}\n  - {{ name: web, namespace: alice, addresses: [127.93.0.2], ports: [{{ port: {port} }}], endpoints: [\"{up}\"] }}\n"
            );
            let spec = parse(&yaml).unwrap_or_else(|e| panic!("{e:?}"));
            let config = Config {
                limits: Limits {
                    header_read_timeout: Duration::from_millis(500),
                    request_body_timeout: Duration::from_millis(500),
                    response_timeout: Duration::from_secs(2),
                    ..Limits::default()
                },
                ..Config::default()
            };
            let proxy = Proxy::start(config, Source::Static(spec)).unwrap_or_else(|e| panic!("{e}"));
            let listening = proxy.listening(1).await;
            assert!(listening.failed.is_empty(), "{:?}", listening.failed);
            (SocketAddr::from(([127, 93, 0, 1], port)), proxy)
        });
        Harness {
            runtime,
            dialed,
            _proxy: proxy,
        }
    })
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
});
