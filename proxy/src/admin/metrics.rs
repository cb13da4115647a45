//! `/metrics`: a fresh registry per scrape, filled from the proxy's state.
//! The request path only touches atomics ([`crate::metrics`]); the cost of
//! building the exposition is paid by the scraper, every 10 s or so.

use std::time::Instant;

use divert_core::admin::{counter, encode_registry, gauge};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::shared::Shared;

/// A fresh registry per scrape, read from the proxy's state: the request
/// path only touches atomics ([`crate::metrics`]).
pub(super) fn scrape(shared: &Shared, started: Instant) -> String {
    let status = shared.tables.status();
    let table = shared.tables.load();
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
        shared.tables.age().as_secs_f64(),
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
        started.elapsed().as_secs_f64(),
    );
    gauge(
        &mut registry,
        "draining",
        "1 once the proxy is shutting down (no longer accepting)",
        f64::from(u8::from(shared.drain.is_draining())),
    );
    gauge(
        &mut registry,
        "tap_watchers",
        "Tap watchers connected now",
        shared.tap.watchers() as f64,
    );
    gauge(
        &mut registry,
        "client_connections",
        "Client connections open now (HTTP and opaque), against --max-connections",
        shared.slots.open() as f64,
    );
    gauge(
        &mut registry,
        "client_connections_limit",
        "The most client connections served at once (--max-connections)",
        shared.slots.max() as f64,
    );
    counter(
        &mut registry,
        "connections_refused",
        "Client connections closed at once because --max-connections were open",
        shared.slots.refused(),
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
        *shared.tables.rejected_updates().borrow(),
    );
    let dropped = Family::<[(&'static str, String); 2], Counter>::default();
    for c in shared.drops.counts() {
        dropped
            .get_or_create(&[("service", c.service), ("destination", c.destination)])
            .inc_by(c.count);
    }
    registry.register(
        "key_dropped",
        "Calls to a service made without the divert key while the app was serving only requests with one: it did not pass the key on",
        dropped,
    );
    registry.register_collector(Box::new(shared.metrics.clone()));
    encode_registry(&registry)
}
