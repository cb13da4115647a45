//! The controller's admin endpoints: `/live`, `/ready` (once the table is
//! complete) and `/metrics` (Prometheus text format), served by the proxy's
//! admin server.

use std::sync::Arc;

use divert_proxy::admin::{Handler, counter, encode_registry, gauge, metrics, text};
use http::StatusCode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::store::Store;

/// Labelled counts from elsewhere (services skipped, by reason).
pub type SkippedFn = Arc<dyn Fn() -> Vec<(String, u64)> + Send + Sync>;

#[derive(Clone)]
pub struct Admin {
    pub store: Arc<Store>,
    pub skipped: Option<SkippedFn>,
}

/// Serves the admin endpoints on `listener` forever.
pub async fn serve(listener: TcpListener, admin: Admin) {
    divert_proxy::admin::serve(listener, admin.handler()).await;
}

impl Admin {
    pub fn handler(self) -> Handler {
        Arc::new(move |parts| match parts.uri.path() {
            "/live" => text(StatusCode::OK, "live\n".into()),
            "/ready" => self.ready(),
            "/metrics" => metrics(self.metrics()),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /live, /ready or /metrics\n".into(),
            ),
        })
    }

    fn ready(&self) -> http::Response<http_body_util::Full<bytes::Bytes>> {
        let stats = self.store.stats();
        if self.store.is_synced() {
            text(
                StatusCode::OK,
                format!(
                    "ready: revision {}, {} services, {} divert namespaces, {} proxies\n",
                    stats.revision, stats.services, stats.namespaces, stats.subscribers
                ),
            )
        } else {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: still listing namespaces, services and endpoint slices\n".into(),
            )
        }
    }

    /// A fresh registry per scrape, filled from the store: scrapes are rare,
    /// and nothing on the update path has to touch a metric.
    fn metrics(&self) -> String {
        let stats = self.store.stats();
        let mut registry = Registry::with_prefix("divert_controller");
        gauge(
            &mut registry,
            "table_revision",
            "Revision of the routing table",
            stats.revision as f64,
        );
        gauge(
            &mut registry,
            "services",
            "Services in the routing table",
            stats.services as f64,
        );
        gauge(
            &mut registry,
            "divert_namespaces",
            "Namespaces opted in as divert namespaces",
            stats.namespaces as f64,
        );
        gauge(
            &mut registry,
            "proxies",
            "Proxies watching the table now",
            stats.subscribers as f64,
        );
        gauge(
            &mut registry,
            "synced",
            "1 once namespaces, services and endpoint slices were listed",
            f64::from(u8::from(self.store.is_synced())),
        );
        counter(
            &mut registry,
            "updates_sent",
            "Table messages (snapshots and updates) handed to proxies",
            stats.updates_sent,
        );
        if let Some(skipped) = &self.skipped {
            let family = Family::<Vec<(String, String)>, Gauge>::default();
            for (reason, n) in skipped() {
                family
                    .get_or_create(&vec![("reason".to_string(), reason)])
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            registry.register(
                "services_skipped",
                "Services left out of the table, by reason",
                family,
            );
        }
        encode_registry(&registry)
    }
}
