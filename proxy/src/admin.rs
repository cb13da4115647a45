//! The admin HTTP server: `/live`, `/ready` and `/metrics` (Prometheus text).
//!
//! [`serve`] is a small HTTP/1 server for any handler (the controller uses it
//! too); [`ProxyAdmin`] is the proxy's own handler.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header, request::Parts};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;

use crate::Shared;

/// Answers one admin request from its head.
pub type Handler = Arc<dyn Fn(&Parts) -> Response<Full<Bytes>> + Send + Sync>;

/// Serves `handler` on `listener` forever (GET and HEAD only).
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let handler = handler.clone();
                async move {
                    let (parts, _) = req.into_parts();
                    let resp = if parts.method == Method::GET || parts.method == Method::HEAD {
                        handler(&parts)
                    } else {
                        text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into())
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
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

/// A Prometheus text exposition.
pub fn metrics(body: String) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

/// The proxy's admin endpoints.
pub struct ProxyAdmin {
    shared: Arc<Shared>,
    /// Whether the table comes from the controller (then readiness waits for
    /// its first snapshot).
    discovery: bool,
    started: Instant,
}

impl ProxyAdmin {
    pub fn handler(shared: Arc<Shared>, discovery: bool) -> Handler {
        let admin = ProxyAdmin {
            shared,
            discovery,
            started: Instant::now(),
        };
        Arc::new(move |parts| admin.answer(parts))
    }

    fn answer(&self, parts: &Parts) -> Response<Full<Bytes>> {
        match parts.uri.path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => self.ready(),
            "/metrics" => metrics(self.metrics()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready or /metrics\n".into(),
            ),
        }
    }

    fn ready(&self) -> Response<Full<Bytes>> {
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
            body.push_str(&format!(", controller revision {}", status.revision));
        }
        if let Some(since) = status.stale_since {
            body.push_str(&format!(
                "; table stale for {}s: {}",
                since.elapsed().as_secs(),
                status.last_error.as_deref().unwrap_or("not connected")
            ));
        }
        body.push('\n');
        text(StatusCode::OK, body)
    }

    /// A fresh registry per scrape, read from the proxy's state: scrapes are
    /// rare, and nothing on the request path touches these.
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
        encode_registry(&registry)
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

/// The registry in the Prometheus text format.
pub fn encode_registry(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}
