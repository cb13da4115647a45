//! The proxy's admin endpoints, served by [`divert_core::admin`]: `/live`,
//! `/ready`, `/metrics` (Prometheus text), `/routes` (the table, and where a
//! given request would go and why), `/log-level`, `/probe/tcp/<port>` (the
//! app's TCP probes, in `probe`) and the tap's gRPC service, all on one
//! port (HTTP/1 and HTTP/2).
//!
//! The port answers every address, for kubelet's probes and Prometheus, so
//! what reveals traffic or the cluster's layout (the tap and `/routes`)
//! answers only a client on the pod's loopback (`kubectl port-forward`, an
//! operator in the pod) and the controller, which presents the key its
//! Discovery stream gave this proxy ([`crate::discovery::ControllerKey`]).
//! `/live`, `/ready`, `/metrics` and the probes stay open.

mod metrics;
mod probe;
mod routes;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use divert_core::admin::{
    self, AdminRequest, Handler, Mount, Peer, log_level, method_not_allowed, text,
};
use divert_core::logging::LogControl;
use divert_proto::tap::v1::tap_server::TapServer;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::net::TcpListener;
use tonic::codegen::Service as _;

use crate::limits::Timeout;
use crate::shared::Shared;
use crate::tap::TapService;

/// Serves the proxy's admin endpoints and its tap on `listener`.
pub async fn serve(listener: TcpListener, admin: ProxyAdmin) {
    serve_within(
        listener,
        admin,
        admin::HEADER_READ_TIMEOUT,
        admin::IDLE_TIMEOUT,
    )
    .await;
}

/// [`serve`], with a header read timeout, and an idle timeout for HTTP/2
/// connections without streams, of `limit` (tests).
pub async fn serve_with_limit(listener: TcpListener, admin: ProxyAdmin, limit: Duration) {
    serve_within(listener, admin, limit, limit).await;
}

async fn serve_within(listener: TcpListener, admin: ProxyAdmin, limit: Duration, idle: Duration) {
    let tap = TapServer::new(TapService {
        tap: admin.shared.tap.clone(),
        drops: admin.shared.drops.clone(),
    });
    let key = admin.shared.controller_key.clone();
    let mount = Mount::new("/divert.tap.v1.Tap/", move |req| {
        let mut tap = tap.clone();
        let allowed = req
            .extensions()
            .get::<Peer>()
            .is_some_and(|p| p.is_loopback())
            || key.presented_by(
                req.headers()
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            );
        async move {
            if !allowed {
                return tonic::Status::unauthenticated(NOT_YOURS).into_http::<admin::Body>();
            }
            match tap.call(req).await {
                Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
                Err(never) => match never {},
            }
        }
    });
    let probes = probe::mount(admin.shared.config.pod_ip);
    let metrics = admin.shared.metrics.clone();
    let options = admin::Options {
        mounts: vec![mount, probes],
        on_timeout: Some(Arc::new(move || {
            metrics.timeout(Timeout::AdminHeaderRead);
        })),
        header_read_timeout: limit,
        idle_timeout: idle,
        max_connections: admin::MAX_CONNECTIONS,
    };
    admin::serve_with(listener, admin.into_handler(), options).await;
}

/// Why the tap or `/routes` was refused.
const NOT_YOURS: &str =
    "the tap and /routes answer only this pod's loopback (kubectl port-forward) and the controller";

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
            return log_level(self.log.as_deref(), req);
        }
        if !req.is_read() {
            return method_not_allowed("GET");
        }
        match path {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => self.ready(),
            "/metrics" => admin::metrics(metrics::scrape(&self.shared, self.started)),
            "/routes" if !self.may_read_routes(req) => {
                text(StatusCode::FORBIDDEN, format!("{NOT_YOURS}\n"))
            }
            "/routes" => routes::answer(
                &self.shared.tables,
                &routes::Namespaces {
                    own: self.shared.config.namespace.as_deref(),
                    default_key: self.shared.own_namespace(),
                },
                req,
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready, /metrics, /routes, /routes?dst=ADDR&key=KEY[&direction=inbound&host=HOST] or /log-level\n"
                    .into(),
            ),
        }
    }

    /// A client on this host that names it (not a page that rebound a DNS
    /// name to localhost), or the controller with its key.
    fn may_read_routes(&self, req: &AdminRequest) -> bool {
        req.is_local()
            || self.shared.controller_key.presented_by(
                req.headers
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
            )
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
        let status = self.shared.tables.status();
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
}

#[cfg(test)]
pub(crate) mod tests {
    use http::{Method, header};

    use super::*;
    use crate::shared::Config;
    use crate::table::{Table, TableSpec};

    pub(crate) fn admin() -> ProxyAdmin {
        let spec: TableSpec = serde_yaml_ng::from_str(
            "namespaces:\n  - name: staging\n  - { name: alice, sharedNamespace: staging }\nservices:\n  - { name: web, namespace: staging, addresses: ['10.0.0.1'], ports: [{ port: 80 }], endpoints: ['10.1.0.1'] }\n",
        )
        .unwrap();
        let table = Table::build(&spec, 1, None).unwrap();
        ProxyAdmin::new(Shared::new(Config::default(), table), false)
    }

    fn request(method: Method, uri: &str) -> AdminRequest {
        AdminRequest::build(method, uri, Bytes::new(), ([127, 0, 0, 1], 1).into()).unwrap()
    }

    #[test]
    fn without_a_log_control_the_level_is_fixed() {
        let r = admin().answer(&request(Method::PUT, "/log-level"));
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn other_endpoints_only_read() {
        let r = admin().answer(&request(Method::PUT, "/metrics"));
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[header::ALLOW], "GET");
    }

    #[test]
    fn readiness_fails_while_draining() {
        let a = admin();
        let r = a.answer(&request(Method::GET, "/ready"));
        assert_eq!(r.status(), StatusCode::OK);
        a.shared.drain.start();
        let r = a.answer(&request(Method::GET, "/ready"));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
