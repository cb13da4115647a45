//! The admin server: `/live`, `/ready`, `/metrics` (Prometheus text),
//! `/routes` (the table, and where a given request would go and why),
//! `/log-level`, and the tap's gRPC service, all on one port (HTTP/1 and
//! HTTP/2).
//!
//! [`serve`] serves any [`Handler`] (the controller uses it too);
//! [`ProxyAdmin`] is the proxy's own, and [`serve_proxy`] adds the tap.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use divert_core::logging::LogControl;
use divert_proto::tap::v1::tap_server::TapServer;
use http::{HeaderValue, Method, Response, StatusCode, header, request::Parts};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::json;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;
use tonic::codegen::Service as _;

use crate::Shared;
use crate::baggage::percent_decode;
use crate::metrics::Decision;
use crate::table::{NamespaceKind, Table, Target};
use crate::tap::TapService;

/// The most request body an admin endpoint reads (a log filter).
const MAX_BODY: usize = 4096;
/// How often an idle HTTP/2 admin connection (a tap) is pinged, and how long
/// the answer may take.
const ADMIN_KEEPALIVE: Duration = Duration::from_secs(20);

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
    /// GET or HEAD: reads only.
    pub fn is_read(&self) -> bool {
        self.parts.method == Method::GET || self.parts.method == Method::HEAD
    }

    /// The value of query parameter `name`, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        self.parts.uri.query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| {
                let v = v.replace('+', " ");
                percent_decode(v.as_bytes()).map_or(v.clone(), |d| d.into_owned())
            })
        })
    }
}

/// Answers one admin request.
pub type Handler = Arc<dyn Fn(&AdminRequest) -> Response<Full<Bytes>> + Send + Sync>;

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    serve_inner(listener, handler, None).await;
}

/// Serves the proxy's admin endpoints and its tap on `listener`.
pub async fn serve_proxy(listener: TcpListener, admin: ProxyAdmin) {
    let tap = TapServer::new(TapService(admin.shared.tap.clone()));
    serve_inner(listener, admin.into_handler(), Some(tap)).await;
}

type Tap = TapServer<TapService>;

async fn serve_inner(listener: TcpListener, handler: Handler, tap: Option<Tap>) {
    loop {
        let (stream, peer) = divert_core::accept::next(&listener).await;
        let handler = handler.clone();
        let tap = tap.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<Incoming>| {
                let handler = handler.clone();
                let tap = tap.clone();
                async move {
                    if let Some(mut tap) = tap
                        && req.uri().path().starts_with("/divert.tap.v1.Tap/")
                    {
                        return tap.call(req).await;
                    }
                    let (parts, body) = req.into_parts();
                    let body = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(b) => b.to_bytes(),
                        Err(_) => {
                            return Ok(text(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                format!("admin request bodies are limited to {MAX_BODY} bytes\n"),
                            )
                            .map(tonic::body::Body::new));
                        }
                    };
                    let req = AdminRequest { parts, body, peer };
                    Ok::<_, Infallible>(handler(&req).map(tonic::body::Body::new))
                }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // A tap client that vanishes without closing (its pod killed) is
            // noticed by the pings going unanswered, and its watcher removed.
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(ADMIN_KEEPALIVE))
                .keep_alive_timeout(ADMIN_KEEPALIVE);
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
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

/// The proxy's admin endpoints.
pub struct ProxyAdmin {
    shared: Arc<Shared>,
    /// Whether the table comes from the controller (then readiness waits for
    /// its first snapshot).
    discovery: bool,
    started: Instant,
    log: Option<Arc<dyn LogControl>>,
}

impl ProxyAdmin {
    pub fn new(shared: Arc<Shared>, discovery: bool) -> Self {
        ProxyAdmin {
            shared,
            discovery,
            started: Instant::now(),
            log: None,
        }
    }

    /// Lets `/log-level` read and (from localhost) change the log filter.
    pub fn with_log_control(mut self, log: Arc<dyn LogControl>) -> Self {
        self.log = Some(log);
        self
    }

    /// The endpoints without the tap, as a [`Handler`].
    pub fn handler(shared: Arc<Shared>, discovery: bool) -> Handler {
        ProxyAdmin::new(shared, discovery).into_handler()
    }

    pub fn into_handler(self) -> Handler {
        Arc::new(move |req| self.answer(req))
    }

    fn answer(&self, req: &AdminRequest) -> Response<Full<Bytes>> {
        let path = req.uri.path();
        if path == "/log-level" {
            return self.log_level(req);
        }
        if !req.is_read() {
            return method_not_allowed("GET");
        }
        match path {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => self.ready(),
            "/metrics" => metrics(self.metrics()),
            "/routes" => self.routes(req),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready, /metrics, /routes, /routes?dst=ADDR&key=KEY or /log-level\n"
                    .into(),
            ),
        }
    }

    fn ready(&self) -> Response<Full<Bytes>> {
        if self.shared.drain.is_draining() {
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: draining, {} connections still open\n",
                    self.shared.drain.open()
                ),
            );
        }
        let status = self.shared.table_status.borrow().clone();
        let table = self.shared.tables.load();
        if self.discovery && status.updates_applied == 0 {
            let why = status.last_error.as_deref().unwrap_or("connecting");
            return text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: no routing table from the controller yet ({why})\n"),
            );
        }
        let mut body = format!(
            "ready: table version {}, {} services",
            table.version(),
            table.service_count()
        );
        if self.discovery {
            let _ = write!(body, ", controller revision {}", status.revision);
        }
        if let Some(since) = status.stale_since {
            let _ = write!(
                body,
                "; table stale for {}s: {}",
                since.elapsed().as_secs(),
                status.last_error.as_deref().unwrap_or("not connected")
            );
        }
        body.push('\n');
        text(StatusCode::OK, body)
    }

    /// `GET /log-level` shows the filter; `PUT` with a filter as the body
    /// replaces it, from localhost only.
    fn log_level(&self, req: &AdminRequest) -> Response<Full<Bytes>> {
        let Some(log) = &self.log else {
            return text(
                StatusCode::NOT_FOUND,
                "this proxy's log level is not adjustable at run time\n".into(),
            );
        };
        if req.is_read() {
            return text(StatusCode::OK, format!("{}\n", log.current()));
        }
        // PUT only: a web page can send a POST to localhost without asking
        // (a "simple" request), but not a PUT.
        if req.method != Method::PUT {
            return method_not_allowed("GET, PUT");
        }
        if !is_loopback(req.peer.ip()) {
            return text(
                StatusCode::FORBIDDEN,
                "changing the log level is allowed from localhost only (use kubectl port-forward, or exec into the pod)\n".into(),
            );
        }
        // A page served from a DNS-rebound name reaches localhost as its own
        // origin; it still names itself in Host (and Origin).
        if req.headers.contains_key(header::ORIGIN) || !names_localhost(req) {
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
            Err(e) => text(
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid log filter {filter:?}: {e}; try `debug` or `info,divert::decision=debug`\n"
                ),
            ),
        }
    }

    /// `GET /routes`: the table. With `dst` (and optionally `key`): where a
    /// request to `dst` carrying `key` would go, and why.
    fn routes(&self, req: &AdminRequest) -> Response<Full<Bytes>> {
        let table = self.shared.tables.load();
        match req.query("dst") {
            Some(dst) => self.route_of(&table, &dst, req.query("key")),
            None => json(
                StatusCode::OK,
                &table_json(&table, req.query("namespace").as_deref()),
            ),
        }
    }

    fn route_of(&self, table: &Table, dst: &str, key: Option<String>) -> Response<Full<Bytes>> {
        let Some(addr) = resolve_dst(table, dst) else {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "dst {dst:?} is neither IP:PORT nor SERVICE.NAMESPACE:PORT of a service in the table\n"
                ),
            );
        };
        let key = key.filter(|k| !k.is_empty());
        let own = self.shared.own_namespace();
        let route = table.route(addr, key.as_deref(), own);
        let dialed = table.by_dialed(addr).map(|d| {
            format!(
                "{}.{}:{}",
                d.service.name,
                d.service.namespace,
                d.port().port
            )
        });
        let (target_namespace, endpoints): (&str, Vec<String>) = match &route.target {
            Target::Service {
                port, namespace, ..
            } => (
                namespace,
                port.endpoints.iter().map(|e| e.addr.to_string()).collect(),
            ),
            Target::Passthrough(a) => ("", vec![a.to_string()]),
        };
        json(
            StatusCode::OK,
            &json!({
                "dst": addr.to_string(),
                "dialedService": dialed,
                "key": key,
                "ownNamespaceDefault": own,
                "target": route.describe(),
                "targetNamespace": target_namespace,
                "endpoints": endpoints,
                "decision": Decision::of(route.reason).as_str(),
                "reason": route.reason.as_str(),
                "why": route.reason.explain(),
                "tableVersion": table.version(),
            }),
        )
    }

    /// A fresh registry per scrape, read from the proxy's state: the request
    /// path only touches atomics ([`crate::metrics`]).
    fn metrics(&self) -> String {
        let status = self.shared.table_status.borrow().clone();
        let table = self.shared.tables.load();
        let mut registry = Registry::with_prefix("divert_proxy");
        gauge(
            &mut registry,
            "table_version",
            "Version of the routing table in use (bumped by every change)",
            table.version() as f64,
        );
        gauge(
            &mut registry,
            "table_age_seconds",
            "Seconds since the routing table last changed",
            self.shared.tables.age().as_secs_f64(),
        );
        gauge(
            &mut registry,
            "table_services",
            "Services in the routing table",
            table.service_count() as f64,
        );
        gauge(
            &mut registry,
            "table_stale",
            "1 while the table may be out of date (the controller is unreachable)",
            f64::from(u8::from(status.stale_since.is_some())),
        );
        gauge(
            &mut registry,
            "table_stale_seconds",
            "How long the table has been stale (0 when current)",
            status
                .stale_since
                .map_or(0.0, |s| s.elapsed().as_secs_f64()),
        );
        gauge(
            &mut registry,
            "controller_revision",
            "The controller revision the table reflects",
            status.revision as f64,
        );
        gauge(
            &mut registry,
            "uptime_seconds",
            "Seconds since the proxy started",
            self.started.elapsed().as_secs_f64(),
        );
        gauge(
            &mut registry,
            "draining",
            "1 once the proxy is shutting down (no longer accepting)",
            f64::from(u8::from(self.shared.drain.is_draining())),
        );
        gauge(
            &mut registry,
            "tap_watchers",
            "Tap watchers connected now",
            self.shared.tap.watchers() as f64,
        );
        counter(
            &mut registry,
            "table_updates",
            "Table snapshots and updates applied from the controller",
            status.updates_applied,
        );
        counter(
            &mut registry,
            "table_rejected_updates",
            "Updates of the table's source that were rejected (the table stayed)",
            *self.shared.rejected_updates().borrow(),
        );
        registry.register_collector(Box::new(self.shared.metrics.clone()));
        encode_registry(&registry)
    }
}

/// Loopback, IPv4-mapped IPv6 included.
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Whether the request's Host (or HTTP/2 authority) is `localhost` or a
/// loopback address, with any port.
fn names_localhost(req: &AdminRequest) -> bool {
    let host = req
        .uri
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let h = req.headers.get(header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = h.parse().ok()?;
            Some(authority.host().to_owned())
        });
    let Some(host) = host else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(is_loopback)
}

/// `IP:PORT`, or `NAME.NAMESPACE:PORT` of a service in the table (its first
/// address).
fn resolve_dst(table: &Table, dst: &str) -> Option<SocketAddr> {
    if let Ok(a) = dst.parse() {
        return Some(a);
    }
    let (host, port) = dst.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let (name, namespace) = host.split_once('.')?;
    let service = table.service(namespace, name)?;
    service
        .addresses
        .first()
        .map(|&ip| SocketAddr::new(ip, port))
}

/// The table as JSON, optionally one namespace's part of it.
fn table_json(table: &Table, only: Option<&str>) -> serde_json::Value {
    let mut namespaces: Vec<_> = table
        .namespaces()
        .filter(|(n, _)| only.is_none_or(|o| o == *n))
        .map(|(name, kind)| match kind {
            NamespaceKind::Shared => json!({"name": name, "kind": "shared"}),
            NamespaceKind::DivertOf(s) => {
                json!({"name": name, "kind": "divert", "sharedNamespace": &**s})
            }
        })
        .collect();
    namespaces.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut services: Vec<_> = table
        .services()
        .filter(|s| only.is_none_or(|o| o == &*s.namespace))
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let services: Vec<_> = services
        .into_iter()
        .map(|s| {
            json!({
                "namespace": &*s.namespace,
                "name": &*s.name,
                "addresses": s.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "ports": s.ports.iter().map(|p| json!({
                    "name": p.name.as_deref(),
                    "port": p.port,
                    "endpoints": p.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "version": table.version(),
        "namespaces": namespaces,
        "services": services,
    })
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

/// The registry in the Prometheus text format (0.0.4, what `/metrics` says it serves).
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
    use crate::Config;
    use crate::table::TableSpec;

    struct FakeLog(Mutex<String>);

    impl LogControl for FakeLog {
        fn current(&self) -> String {
            self.0.lock().unwrap().clone()
        }
        fn set(&self, filter: &str) -> Result<(), String> {
            if filter.contains('[') {
                return Err("bad directive".into());
            }
            *self.0.lock().unwrap() = filter.into();
            Ok(())
        }
    }

    fn admin(log: bool) -> (ProxyAdmin, Arc<FakeLog>) {
        let spec: TableSpec = serde_yaml_ng::from_str(
            "namespaces:\n  - name: staging\n  - { name: alice, sharedNamespace: staging }\nservices:\n  - { name: web, namespace: staging, addresses: ['10.0.0.1'], ports: [{ port: 80 }], endpoints: ['10.1.0.1'] }\n",
        )
        .unwrap();
        let table = Table::build(&spec, 1, None).unwrap();
        let shared = Shared::new(Config::default(), table);
        let fake = Arc::new(FakeLog(Mutex::new("info".into())));
        let mut a = ProxyAdmin::new(shared, false);
        if log {
            a = a.with_log_control(fake.clone());
        }
        (a, fake)
    }

    fn request(method: Method, uri: &str, body: &str, peer: &str) -> AdminRequest {
        let (parts, ()) = http::Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "localhost:4191")
            .body(())
            .unwrap()
            .into_parts();
        AdminRequest {
            parts,
            body: Bytes::from(body.to_owned()),
            peer: peer.parse().unwrap(),
        }
    }

    #[test]
    fn the_log_level_changes_from_localhost_only() {
        let (a, log) = admin(true);
        let r = a.answer(&request(
            Method::PUT,
            "/log-level",
            "debug",
            "10.0.0.9:5000",
        ));
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(log.current(), "info");
        for peer in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
            let r = a.answer(&request(Method::PUT, "/log-level", " debug\n", peer));
            assert_eq!(r.status(), StatusCode::OK, "{peer}");
        }
        assert_eq!(log.current(), "debug");
        let r = a.answer(&request(Method::PUT, "/log-level", "info,[", "127.0.0.1:1"));
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(log.current(), "debug");
        for method in [Method::POST, Method::DELETE] {
            let r = a.answer(&request(method, "/log-level", "trace", "127.0.0.1:1"));
            assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        }
        // What a browser page would send: an Origin, or (DNS rebinding) its
        // own name as Host.
        let mut from_page = request(Method::PUT, "/log-level", "trace", "127.0.0.1:1");
        from_page.parts.headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:4191"),
        );
        assert_eq!(a.answer(&from_page).status(), StatusCode::FORBIDDEN);
        let mut rebound = request(Method::PUT, "/log-level", "trace", "127.0.0.1:1");
        rebound
            .parts
            .headers
            .insert(header::HOST, HeaderValue::from_static("evil.example:4191"));
        assert_eq!(a.answer(&rebound).status(), StatusCode::FORBIDDEN);
        for host in ["127.0.0.1:4191", "[::1]:4191", "LOCALHOST"] {
            let mut ok = request(Method::PUT, "/log-level", "debug", "127.0.0.1:1");
            ok.parts
                .headers
                .insert(header::HOST, HeaderValue::from_str(host).unwrap());
            assert_eq!(a.answer(&ok).status(), StatusCode::OK, "{host}");
        }
        assert_eq!(log.current(), "debug");
        // Reading it is allowed from anywhere.
        let r = a.answer(&request(Method::GET, "/log-level", "", "10.0.0.9:5000"));
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn without_a_log_control_the_level_is_fixed() {
        let (a, _) = admin(false);
        let r = a.answer(&request(Method::PUT, "/log-level", "debug", "127.0.0.1:1"));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn other_endpoints_only_read() {
        let (a, _) = admin(false);
        let r = a.answer(&request(Method::PUT, "/metrics", "", "127.0.0.1:1"));
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET");
    }

    #[test]
    fn readiness_fails_while_draining() {
        let (a, _) = admin(false);
        let r = a.answer(&request(Method::GET, "/ready", "", "127.0.0.1:1"));
        assert_eq!(r.status(), StatusCode::OK);
        a.shared.drain.start();
        let r = a.answer(&request(Method::GET, "/ready", "", "127.0.0.1:1"));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
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
    fn destinations_resolve_by_address_or_service_name() {
        let (a, _) = admin(false);
        let table = a.shared.tables.load();
        let want: SocketAddr = "10.0.0.1:80".parse().unwrap();
        for dst in [
            "10.0.0.1:80",
            "web.staging:80",
            "web.staging.svc:80",
            "web.staging.svc.cluster.local:80",
        ] {
            assert_eq!(resolve_dst(&table, dst), Some(want), "{dst}");
        }
        assert_eq!(resolve_dst(&table, "web.nowhere:80"), None);
        assert_eq!(resolve_dst(&table, "web.staging"), None);
    }
}
