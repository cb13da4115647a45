//! The admin server every Divert process runs: plain HTTP/1 and HTTP/2 on
//! one port, for probes, metrics and operators. The proxy and the controller
//! each hand it a [`Handler`] with their own endpoints; the proxy also mounts
//! its tap (a streaming gRPC service) and its TCP probes (which dial) under
//! path prefixes with [`Mount`].
//!
//! Admin requests are rare, so this path may allocate freely; what it must
//! not do is read or wait without limit: bodies are capped at [`MAX_BODY`],
//! connections at [`MAX_CONNECTIONS`] (past it a new one is closed at once),
//! a client that vanishes from an HTTP/2 connection is found by pings, and
//! one that keeps an HTTP/2 connection without streams open for
//! [`IDLE_TIMEOUT`] is closed, whether or not it answers pings.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header, request::Parts};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::idle::{Activity, Held};
use crate::logging::LogControl;

/// The most request body an admin endpoint reads (a log filter).
pub const MAX_BODY: usize = 4096;
/// The most admin connections open at once: kubelet's probes, a Prometheus
/// scrape, a few taps. Past it, a new connection is closed at once.
pub const MAX_CONNECTIONS: usize = 128;
/// How long an HTTP/2 admin connection may stay open without a stream (a
/// tap is a stream); HTTP/1 ones are closed by [`HEADER_READ_TIMEOUT`]
/// between requests. After its GOAWAY the client gets as long again to
/// answer the PING, then the connection is dropped.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often an idle HTTP/2 admin connection (a tap) is pinged, and how long
/// the answer may take.
const KEEPALIVE: Duration = Duration::from_secs(20);
/// How long a client may take to send a whole request head, from its
/// connection's start or, on HTTP/1.1, from its previous request's end (an
/// idle keep-alive connection is closed then); and how long a request body.
/// Probes, scrapes and `divert` send theirs at once.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One admin request: its head (through `Deref`), body and peer.
#[derive(Debug)]
pub struct AdminRequest {
    pub parts: Parts,
    pub body: Bytes,
    pub peer: SocketAddr,
}

impl Deref for AdminRequest {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.parts
    }
}

impl AdminRequest {
    /// A request made in place rather than read off a connection (tests,
    /// in-process callers), as a client on this host sends it: `Host:
    /// localhost`, from `peer`.
    pub fn build(
        method: Method,
        uri: &str,
        body: impl Into<Bytes>,
        peer: SocketAddr,
    ) -> Result<AdminRequest, http::Error> {
        let (parts, ()) = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "localhost")
            .body(())?
            .into_parts();
        Ok(AdminRequest {
            parts,
            body: body.into(),
            peer,
        })
    }

    /// GET or HEAD: reads only.
    pub fn is_read(&self) -> bool {
        self.parts.method == Method::GET || self.parts.method == Method::HEAD
    }

    /// The value of query parameter `name`, with `+` as a space and
    /// percent-decoded (the form encoding of the HTML standard).
    pub fn query(&self, name: &str) -> Option<String> {
        self.parts.uri.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| {
                let v = v.replace('+', " ");
                crate::percent::decode(v.as_bytes()).map_or(v.clone(), |d| d.into_owned())
            })
        })
    }

    /// Whether the request comes from this host and names it: a loopback
    /// peer, `Host` (or the HTTP/2 authority) `localhost` or a loopback
    /// address, and no `Origin`. A page served from a DNS-rebound name reaches
    /// localhost as its own origin, but still names itself in Host (and
    /// Origin), so this is what a change of state asks for.
    pub fn is_local(&self) -> bool {
        is_loopback(self.peer.ip())
            && !self.headers.contains_key(header::ORIGIN)
            && self.names_localhost()
    }

    /// Whether every name the request gives for the server is this host:
    /// the target's authority (absolute form, or HTTP/2's `:authority`) and
    /// the Host header, each when present, and at least one of them.
    fn names_localhost(&self) -> bool {
        let authority = self.uri.authority().map(|a| a.host());
        let host = match self.headers.get(header::HOST) {
            None => None,
            Some(h) => {
                let Some(parsed) = h
                    .to_str()
                    .ok()
                    .and_then(|h| h.parse::<http::uri::Authority>().ok())
                else {
                    return false;
                };
                Some(parsed)
            }
        };
        let names = [authority, host.as_ref().map(|a| a.host())];
        names.iter().any(Option::is_some) && names.iter().flatten().all(|n| is_local_name(n))
    }
}

/// `localhost` or a loopback address (bracketed for IPv6).
fn is_local_name(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// Loopback, IPv4-mapped IPv6 included.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// The peer of a request handed to a [`Mount`], in its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

impl Peer {
    /// Whether the peer is on this host (loopback).
    pub fn is_loopback(self) -> bool {
        is_loopback(self.0.ip())
    }
}

/// Answers one admin request.
pub type Handler = Arc<dyn Fn(&AdminRequest) -> Response<Full<Bytes>> + Send + Sync>;

/// A response body of any kind: a whole one, or a gRPC stream.
pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

type Call =
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync;

/// A service that takes the request as it streams in (gRPC), or answers only
/// after waiting on something (a dial), mounted under a path prefix beside
/// the [`Handler`].
#[derive(Clone)]
pub struct Mount {
    prefix: &'static str,
    call: Arc<Call>,
}

impl Mount {
    /// Requests whose path starts with `prefix` go to `call`.
    pub fn new<F, Fut>(prefix: &'static str, call: F) -> Mount
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Mount {
            prefix,
            call: Arc::new(move |req| Box::pin(call(req))),
        }
    }
}

/// Told each time a client's head or body takes past [`HEADER_READ_TIMEOUT`]
/// (the proxy counts it in its metrics).
pub type OnTimeout = Arc<dyn Fn() + Send + Sync>;

/// What an admin server serves beside its [`Handler`], and its limits.
#[derive(Clone)]
pub struct Options {
    /// Services under path prefixes, tried in order.
    pub mounts: Vec<Mount>,
    pub on_timeout: Option<OnTimeout>,
    /// [`HEADER_READ_TIMEOUT`] unless a test wants it shorter.
    pub header_read_timeout: Duration,
    /// [`IDLE_TIMEOUT`] unless a test wants it shorter.
    pub idle_timeout: Duration,
    /// [`MAX_CONNECTIONS`] unless a test wants fewer.
    pub max_connections: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mounts: Vec::new(),
            on_timeout: None,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    serve_with(listener, handler, Options::default()).await;
}

/// Serves `handler`, and what `options` add, on `listener` until the task
/// is dropped.
pub async fn serve_with(listener: TcpListener, handler: Handler, options: Options) {
    let Options {
        mounts,
        on_timeout,
        header_read_timeout: limit,
        idle_timeout,
        max_connections,
    } = options;
    let mounts: Arc<[Mount]> = mounts.into();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    loop {
        let (stream, peer) = crate::accept::next(&listener).await;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, max_connections, "admin connection refused: too many open");
            drop(stream);
            continue;
        };
        let handler = handler.clone();
        let (mounts, on_timeout) = (mounts.clone(), on_timeout.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let asked = Arc::new(AtomicBool::new(false));
            let activity = Arc::new(Activity::default());
            let svc = service_fn({
                let asked = asked.clone();
                let on_timeout = on_timeout.clone();
                let activity = activity.clone();
                move |mut req: Request<Incoming>| {
                    req.extensions_mut().insert(Peer(peer));
                    let handler = handler.clone();
                    let mounts = mounts.clone();
                    let on_timeout = on_timeout.clone();
                    let busy = activity.open();
                    asked.store(true, Ordering::Relaxed);
                    async move {
                        let resp = if let Some(m) = mounts
                            .iter()
                            .find(|m| req.uri().path().starts_with(m.prefix))
                        {
                            (m.call)(req).await
                        } else {
                            answer(&handler, req, peer, limit, on_timeout.as_ref())
                                .await
                                .map(boxed)
                        };
                        Ok::<_, Infallible>(resp.map(|b| Held::new(b, Some(busy)).boxed_unsync()))
                    }
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limit);
            // A tap client that vanishes without closing (its pod killed) is
            // noticed by the pings going unanswered, and its watcher removed.
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(KEEPALIVE))
                .keep_alive_timeout(KEEPALIVE);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            // Until hyper knows the protocol, nothing of its own bounds the
            // wait: a client that says nothing, or stops inside the HTTP/2
            // preface, is closed when no request has come by the limit.
            let first = tokio::time::sleep(limit);
            let idle = activity.idle(idle_timeout);
            tokio::pin!(first, idle);
            let result = loop {
                tokio::select! {
                    // The first request's timer before the idle one: a client
                    // that never asked is a timeout, counted, not an idle
                    // connection.
                    biased;
                    r = conn.as_mut() => break r,
                    () = &mut first, if !first.is_elapsed() => {
                        if !asked.load(Ordering::Relaxed) {
                            if let Some(f) = &on_timeout {
                                f();
                            }
                            return;
                        }
                    }
                    () = &mut idle, if asked.load(Ordering::Relaxed) => {
                        // HTTP/1 is closed by its header timer between
                        // requests; this is an HTTP/2 connection without a
                        // stream, pings answered or not.
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(idle_timeout, conn.as_mut()).await;
                        return;
                    }
                }
            };
            if let Err(e) = result
                && e.downcast_ref::<hyper::Error>()
                    .is_some_and(hyper::Error::is_timeout)
                && let Some(f) = &on_timeout
            {
                f();
            }
        });
    }
}

async fn answer(
    handler: &Handler,
    req: Request<Incoming>,
    peer: SocketAddr,
    limit: Duration,
    on_timeout: Option<&OnTimeout>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let read = tokio::time::timeout(limit, Limited::new(body, MAX_BODY).collect());
    match read.await {
        Ok(Ok(body)) => handler(&AdminRequest {
            parts,
            body: body.to_bytes(),
            peer,
        }),
        Ok(Err(_)) => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("admin request bodies are limited to {MAX_BODY} bytes\n"),
        ),
        Err(_) => {
            if let Some(f) = on_timeout {
                f();
            }
            text(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not come within {limit:?}\n"),
            )
        }
    }
}

/// A whole body as a [`Body`].
pub fn boxed(body: Full<Bytes>) -> Body {
    body.map_err(|never| match never {}).boxed_unsync()
}

/// A plain-text response.
pub fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
    body.push('\n');
    let mut r = text(status, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A Prometheus text exposition.
pub fn metrics(body: String) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// 405 for a method an endpoint does not take.
pub fn method_not_allowed(allowed: &str) -> Response<Full<Bytes>> {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed: use {allowed}\n"),
    );
    if let Ok(v) = HeaderValue::from_str(allowed) {
        r.headers_mut().insert(header::ALLOW, v);
    }
    r
}

/// `/log-level`: `GET` shows the filter; `PUT` with a filter as the body
/// replaces it, from this host only ([`AdminRequest::is_local`]). `None`:
/// the process's level is fixed.
pub fn log_level(log: Option<&dyn LogControl>, req: &AdminRequest) -> Response<Full<Bytes>> {
    let Some(log) = log else {
        return text(
            StatusCode::NOT_FOUND,
            "this process's log level is not adjustable at run time\n".into(),
        );
    };
    if req.is_read() {
        return text(StatusCode::OK, format!("{}\n", log.current()));
    }
    // PUT only: a web page can send a POST to localhost without asking (a
    // "simple" request), but not a PUT.
    if req.method != Method::PUT {
        return method_not_allowed("GET, PUT");
    }
    if !is_loopback(req.peer.ip()) {
        return text(
            StatusCode::FORBIDDEN,
            "changing the log level is allowed from localhost only (use kubectl port-forward, or exec into the pod)\n".into(),
        );
    }
    if !req.is_local() {
        return text(
            StatusCode::FORBIDDEN,
            "changing the log level needs Host: localhost (or a loopback address) and no Origin: send it with curl, not from a browser\n".into(),
        );
    }
    let Ok(filter) = std::str::from_utf8(&req.body) else {
        return text(
            StatusCode::BAD_REQUEST,
            "the body must be a log filter in UTF-8, such as `debug` or `info,divert::decision=debug`\n".into(),
        );
    };
    let filter = filter.trim();
    match log.set(filter) {
        Ok(()) => {
            tracing::info!(filter, "log level changed through the admin API");
            text(StatusCode::OK, format!("{}\n", log.current()))
        }
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

/// Registers a gauge holding `value`.
pub fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// Registers a counter holding `value`.
pub fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The registry in the Prometheus text format (0.0.4, what `/metrics` says
/// it serves).
pub fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::logging::LogError;

    struct FakeLog(Mutex<String>);

    impl LogControl for FakeLog {
        fn current(&self) -> String {
            self.0.lock().unwrap().clone()
        }
        fn set(&self, filter: &str) -> Result<(), LogError> {
            if filter.contains('[') {
                return Err(LogError::Rejected {
                    filter: filter.into(),
                    reason: "bad directive".into(),
                });
            }
            *self.0.lock().unwrap() = filter.into();
            Ok(())
        }
    }

    fn request(method: Method, uri: &str, body: &str, peer: &str) -> AdminRequest {
        AdminRequest::build(method, uri, body.to_owned(), peer.parse().unwrap()).unwrap()
    }

    #[test]
    fn the_log_level_changes_from_localhost_only() {
        let log = FakeLog(Mutex::new("info".into()));
        let answer = |req: &AdminRequest| log_level(Some(&log), req);
        let r = answer(&request(
            Method::PUT,
            "/log-level",
            "debug",
            "10.0.0.9:5000",
        ));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(log.current(), "info");
        for peer in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            let r = answer(&request(Method::PUT, "/log-level", " debug\n", peer));
            assert_eq!(r.status(), StatusCode::OK, "{peer}");
        }
        assert_eq!(log.current(), "debug");
        let r = answer(&request(Method::PUT, "/log-level", "info,[", "127.0.0.1:1"));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(log.current(), "debug");
        for method in [Method::POST, Method::DELETE] {
            let r = answer(&request(method, "/log-level", "trace", "127.0.0.1:1"));
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        }
        // What a browser page would send: an Origin, or (DNS rebinding) its
        // own name as Host.
        let mut from_page = request(Method::PUT, "/log-level", "trace", "127.0.0.1:1");
        from_page.parts.headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:4191"),
        );
        assert_eq!(answer(&from_page).status(), StatusCode::FORBIDDEN);
        let mut rebound = request(Method::PUT, "/log-level", "trace", "127.0.0.1:1");
        rebound
            .parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("evil.example:4191"));
        assert_eq!(answer(&rebound).status(), StatusCode::FORBIDDEN);
        for host in ["127.0.0.1:4191", "[::1]:4191", "LOCALHOST"] {
            let mut ok = request(Method::PUT, "/log-level", "debug", "127.0.0.1:1");
            ok.parts
                .headers
                .insert(header::HOST, HeaderValue::from_str(host).unwrap());
            assert_eq!(answer(&ok).status(), StatusCode::OK, "{host}");
        }
        assert_eq!(log.current(), "debug");
        // An absolute-form target names the server too: both names must be
        // this host.
        for (uri, host) in [
            ("http://evil.example:4191/log-level", "localhost:4191"),
            ("http://localhost:4191/log-level", "evil.example"),
        ] {
            let mut absolute = request(Method::PUT, uri, "trace", "127.0.0.1:1");
            absolute
                .parts
                .headers
                .insert(header::HOST, HeaderValue::from_static(host));
            assert_eq!(
                answer(&absolute).status(),
                StatusCode::FORBIDDEN,
                "{uri} {host}"
            );
        }
        let ok = request(
            Method::PUT,
            "http://127.0.0.1:4191/log-level",
            "debug",
            "127.0.0.1:1",
        );
        assert_eq!(answer(&ok).status(), StatusCode::OK);
        assert_eq!(log.current(), "debug");
        // Reading it is allowed from anywhere.
        let r = answer(&request(Method::GET, "/log-level", "", "10.0.0.9:5000"));
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn without_a_log_control_the_level_is_fixed() {
        let r = log_level(
            None,
            &request(Method::PUT, "/log-level", "debug", "127.0.0.1:1"),
        );
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn query_values_are_decoded() {
        let r = request(
            Method::GET,
            "/routes?dst=%5B%3A%3A1%5D%3A80&key=a+b&x",
            "",
            "127.0.0.1:1",
        );
        assert_eq!(r.query("dst").as_deref(), Some("[::1]:80"));
        assert_eq!(r.query("key").as_deref(), Some("a b"));
        assert_eq!(r.query("x").as_deref(), Some(""));
        assert_eq!(r.query("y"), None);
    }

    #[test]
    fn a_405_names_the_methods_allowed() {
        let r = method_not_allowed("GET");
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET");
    }
}
