//! What the fuzz targets that drive a real proxy share: their runtime, and
//! a proxy in bind mode on an address of its own.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use divert_proxy::limits::Limits;
use divert_proxy::registry::parse;
use divert_proxy::{Config, Proxy, Source};

/// The runtime a target's harness runs the proxy and its peers on.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"))
}

/// Sets SIGPIPE aside for good; call it inside the runtime. libFuzzer's
/// main is C's, so Rust's start-up never did, and a write to a socket the
/// peer closed would kill the fuzzer: tokio's handler replaces the default
/// action.
pub fn ignore_sigpipe() {
    let pipe = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe())
        .unwrap_or_else(|e| panic!("SIGPIPE handler: {e}"));
    drop(pipe);
}

/// An upstream on a free loopback port that runs `serve` in a task of its
/// own for each connection; its address.
pub async fn upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap_or_else(|e| panic!("upstream: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// A proxy in bind mode on a free port of `ip`, routing by the registry
/// that `registry` writes for that port; and the address its clients dial.
/// Its waits for a client are short (half a second for a head or a piece
/// of a body), so an input that stalls costs little time; it waits
/// `response_timeout` for an upstream's answer.
pub async fn proxy_on(
    ip: Ipv4Addr,
    registry: impl FnOnce(u16) -> String,
    response_timeout: Duration,
) -> (SocketAddr, Proxy) {
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        request_body_timeout: Duration::from_millis(500),
        response_timeout,
        ..Limits::default()
    };
    let port = std::net::TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("a free port: {e}"));
    let spec = parse(&registry(port)).unwrap_or_else(|e| panic!("{e:?}"));
    let config = Config {
        limits,
        ..Config::default()
    };
    let proxy = Proxy::start(config, Source::Static(spec)).unwrap_or_else(|e| panic!("{e}"));
    let listening = proxy.listening(1).await;
    assert!(listening.failed.is_empty(), "{:?}", listening.failed);
    (SocketAddr::from((ip, port)), proxy)
}
