//! Request and connection metrics.
//!
//! Everything the request path touches is a plain atomic counter in a fixed
//! array: no lock, no map lookup and no allocation per request. The per-target
//! namespace counters hang off each [`crate::table::Service`] (found once per
//! service object, under a lock, then cached), so cardinality is bounded by the
//! namespaces in the table, and capped at [`MAX_NAMESPACE_LABELS`] beyond that.
//! The admin server turns them into Prometheus text per scrape (`encode`).

mod encode;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
// A lock taken once per service object and per scrape, never per request.
#[allow(clippy::disallowed_types)]
use std::sync::Mutex;
use std::time::Duration;

use crate::baggage::Rejection;
use crate::limits::Timeout;
use crate::protocol::Protocol;
use crate::reason::{Decision, Reason};
use crate::semantics::cookie;

/// Past this many target namespaces that the table still routes to, the rest
/// share the label `target_namespace="_other"`.
pub const MAX_NAMESPACE_LABELS: usize = 500;
const OTHER_NAMESPACE: &str = "_other";

/// One protocol of each connection class ([`Protocol::connection_label`]),
/// in the order of `Metrics::connections`.
const CONNECTION_CLASSES: [Protocol; 3] = [Protocol::Http1, Protocol::Tls, Protocol::Opaque];

fn connection_class(p: Protocol) -> usize {
    match p {
        Protocol::Http1 | Protocol::Http2 | Protocol::Grpc => 0,
        Protocol::Tls => 1,
        Protocol::Opaque => 2,
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

type Counters<const N: usize> = [AtomicU64; N];

fn zeros<const N: usize>() -> Counters<N> {
    std::array::from_fn(|_| AtomicU64::new(0))
}

/// Counters of the requests sent to one target namespace.
#[derive(Debug)]
pub struct TargetStats {
    namespace: Box<str>,
    /// [protocol][reason]
    requests: [Counters<{ Reason::COUNT }>; Protocol::COUNT],
    /// [protocol][decision][status class]
    responses: [[Counters<5>; Decision::COUNT]; Protocol::COUNT],
}

impl TargetStats {
    fn new(namespace: &str) -> Self {
        TargetStats {
            namespace: namespace.into(),
            requests: std::array::from_fn(|_| zeros()),
            responses: std::array::from_fn(|_| std::array::from_fn(|_| zeros())),
        }
    }

    pub fn request(&self, protocol: Protocol, reason: Reason) {
        self.requests[protocol.index()][reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn response(&self, protocol: Protocol, decision: Decision, status: u16) {
        self.responses[protocol.index()][decision as usize][status_class(status)]
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_BOUNDS_MICROS: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug)]
pub struct Histogram {
    /// Per bucket, not cumulative; the last one is +Inf.
    buckets: Counters<15>,
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: zeros(),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BOUNDS_MICROS
            .iter()
            .position(|&b| micros <= b)
            .unwrap_or(LATENCY_BOUNDS_MICROS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// (sum in seconds, count, per-bucket counts with their upper bounds).
    /// Not cumulative: the encoder accumulates them.
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Ordering::Relaxed);
            count += n;
            let bound = LATENCY_BOUNDS_MICROS
                .get(i)
                .map_or(f64::INFINITY, |&m| m as f64 / 1e6);
            buckets.push((bound, n));
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}

/// Why an upstream could not be reached or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    ConnectRefused,
    ConnectTimeout,
    ConnectUnreachable,
    ConnectOther,
    Handshake,
    Request,
    NoEndpoints,
}

impl UpstreamFailure {
    const ALL: [UpstreamFailure; 7] = [
        UpstreamFailure::ConnectRefused,
        UpstreamFailure::ConnectTimeout,
        UpstreamFailure::ConnectUnreachable,
        UpstreamFailure::ConnectOther,
        UpstreamFailure::Handshake,
        UpstreamFailure::Request,
        UpstreamFailure::NoEndpoints,
    ];

    fn is_connect(self) -> bool {
        matches!(
            self,
            UpstreamFailure::ConnectRefused
                | UpstreamFailure::ConnectTimeout
                | UpstreamFailure::ConnectUnreachable
                | UpstreamFailure::ConnectOther
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::ConnectRefused => "refused",
            UpstreamFailure::ConnectTimeout => "timeout",
            UpstreamFailure::ConnectUnreachable => "unreachable",
            UpstreamFailure::ConnectOther => "other",
            UpstreamFailure::Handshake => "handshake",
            UpstreamFailure::Request => "request",
            UpstreamFailure::NoEndpoints => "no_endpoints",
        }
    }
}

/// Why a request's key was not used: the baggage was unusable, or its key
/// names a namespace it may not divert to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRejection {
    Baggage(Rejection),
    NotOptedIn,
    OtherSharedNamespace,
}

const KEY_REJECTIONS: [KeyRejection; 6] = [
    KeyRejection::Baggage(Rejection::TooManyMembers),
    KeyRejection::Baggage(Rejection::TooLong),
    KeyRejection::Baggage(Rejection::Malformed),
    KeyRejection::Baggage(Rejection::BadEncoding),
    KeyRejection::NotOptedIn,
    KeyRejection::OtherSharedNamespace,
];

impl KeyRejection {
    fn index(self) -> usize {
        match self {
            KeyRejection::Baggage(Rejection::TooManyMembers) => 0,
            KeyRejection::Baggage(Rejection::TooLong) => 1,
            KeyRejection::Baggage(Rejection::Malformed) => 2,
            KeyRejection::Baggage(Rejection::BadEncoding) => 3,
            KeyRejection::NotOptedIn => 4,
            KeyRejection::OtherSharedNamespace => 5,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyRejection::Baggage(r) => r.as_str(),
            KeyRejection::NotOptedIn => "not_opted_in",
            KeyRejection::OtherSharedNamespace => "other_shared_namespace",
        }
    }
}

/// Connection counters of one protocol.
#[derive(Debug, Default)]
struct ConnectionStats {
    opened: AtomicU64,
    closed: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

impl ConnectionStats {
    fn open(&self) -> u64 {
        self.opened
            .load(Ordering::Relaxed)
            .saturating_sub(self.closed.load(Ordering::Relaxed))
    }
}

/// Every counter of the proxy.
#[derive(Debug)]
#[allow(clippy::disallowed_types)]
pub struct Metrics {
    /// Per target namespace; looked up once per service object (then cached
    /// in it), under this lock.
    targets: Mutex<HashMap<Box<str>, Arc<TargetStats>>>,
    /// Requests passed through (no target namespace).
    passthrough: Arc<TargetStats>,
    /// Namespaces past [`MAX_NAMESPACE_LABELS`].
    other: Arc<TargetStats>,
    /// [protocol][decision]
    latency: [[Histogram; Decision::COUNT]; Protocol::COUNT],
    /// By [`Protocol::connection_label`]: http, tls, opaque.
    connections: [ConnectionStats; CONNECTION_CLASSES.len()],
    upstream_failures: Counters<7>,
    key_rejections: Counters<6>,
    /// By [`Timeout`], in the order of [`Timeout::ALL`].
    timeouts: Counters<{ Timeout::ALL.len() }>,
    /// HTTP/1 request heads past the size limit (answered 431).
    heads_too_large: AtomicU64,
    /// Events lost because a tap watcher's buffer was full.
    pub(crate) tap_dropped: AtomicU64,
    /// HTTP/2 connections closed for resetting streams ([`crate::resets`]).
    reset_floods: AtomicU64,
    /// By [`cookie::Outcome`], in the order of its `ALL`.
    key_cookies: Counters<{ cookie::Outcome::ALL.len() }>,
}

// The lock is made here; see `Metrics::targets`.
#[allow(clippy::disallowed_types)]
impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            targets: Mutex::default(),
            passthrough: Arc::new(TargetStats::new("")),
            other: Arc::new(TargetStats::new(OTHER_NAMESPACE)),
            latency: Default::default(),
            connections: Default::default(),
            upstream_failures: zeros(),
            key_rejections: zeros(),
            timeouts: zeros(),
            heads_too_large: AtomicU64::new(0),
            tap_dropped: AtomicU64::new(0),
            reset_floods: AtomicU64::new(0),
            key_cookies: zeros(),
        }
    }
}

impl Metrics {
    /// The counters of target namespace `namespace` (callers cache the result).
    pub fn target(&self, namespace: &str) -> Arc<TargetStats> {
        let Ok(mut map) = self.targets.lock() else {
            return self.other.clone();
        };
        if let Some(s) = map.get(namespace) {
            return s.clone();
        }
        if map.len() >= MAX_NAMESPACE_LABELS {
            // Free the labels of namespaces no service of any live table
            // points at any more (deleted divert namespaces, the usual
            // churn): only this map still holds their counters.
            map.retain(|_, s| Arc::strong_count(s) > 1);
            if map.len() >= MAX_NAMESPACE_LABELS {
                return self.other.clone();
            }
        }
        let s = Arc::new(TargetStats::new(namespace));
        map.insert(namespace.into(), s.clone());
        s
    }

    /// The counters of passed-through requests.
    pub fn passthrough(&self) -> &Arc<TargetStats> {
        &self.passthrough
    }

    pub fn latency(&self, protocol: Protocol, decision: Decision, d: Duration) {
        self.latency[protocol.index()][decision as usize].observe(d);
    }

    pub fn upstream_failure(&self, f: UpstreamFailure) {
        self.upstream_failures[f as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn key_rejected(&self, r: KeyRejection) {
        self.key_rejections[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a wait that ran out.
    pub fn timeout(&self, t: Timeout) {
        self.timeouts[t as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an HTTP/2 connection closed for giving up on too many streams.
    pub fn reset_flood(&self) {
        self.reset_floods.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what became of a key cookie or parameter.
    pub fn key_cookie(&self, o: cookie::Outcome) {
        self.key_cookies[o.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request head refused for its size.
    pub fn head_too_large(&self) {
        self.heads_too_large.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection of `protocol` as open until the guard drops; bytes
    /// are added to it as they flow ([`ConnectionGuard::add_bytes`]).
    pub fn connection(self: &Arc<Self>, protocol: Protocol) -> ConnectionGuard {
        let class = connection_class(protocol);
        self.connections[class]
            .opened
            .fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: self.clone(),
            class,
        }
    }
}

/// An open connection, for the connection gauges.
#[derive(Debug)]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
    /// Index into `Metrics::connections`.
    class: usize,
}

impl ConnectionGuard {
    /// Bytes read from and written to the client.
    pub fn add_bytes(&self, read: u64, written: u64) {
        let c = &self.metrics.connections[self.class];
        if read > 0 {
            c.read_bytes.fetch_add(read, Ordering::Relaxed);
        }
        if written > 0 {
            c.written_bytes.fetch_add(written, Ordering::Relaxed);
        }
    }
}

impl ConnectionGuard {
    /// The bytes read and written so far on connections of this one's
    /// class.
    #[cfg(test)]
    pub(crate) fn class_bytes(&self) -> (u64, u64) {
        let c = &self.metrics.connections[self.class];
        (
            c.read_bytes.load(Ordering::Relaxed),
            c.written_bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections[self.class]
            .closed
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters as a scrape shows them, for tests here and beside the
/// code that counts.
#[cfg(test)]
pub(crate) fn scrape(m: &Arc<Metrics>) -> String {
    let mut registry = prometheus_client::registry::Registry::with_prefix("divert_proxy");
    registry.register_collector(Box::new(m.clone()));
    let mut out = String::new();
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_appear_with_their_labels() {
        let m = Arc::new(Metrics::default());
        let alice = m.target("alice");
        alice.request(Protocol::Http1, Reason::Diverted);
        alice.request(Protocol::Http1, Reason::Diverted);
        alice.response(Protocol::Http1, Decision::Diverted, 200);
        alice.response(Protocol::Http1, Decision::Diverted, 503);
        m.passthrough()
            .request(Protocol::Grpc, Reason::UnknownDestination);
        m.key_rejected(KeyRejection::Baggage(Rejection::TooLong));
        m.upstream_failure(UpstreamFailure::ConnectRefused);
        m.latency(
            Protocol::Http1,
            Decision::Diverted,
            Duration::from_micros(700),
        );
        let text = scrape(&m);
        assert!(text.contains(r#"divert_proxy_requests_total{protocol="http1",decision="diverted",reason="diverted",target_namespace="alice"} 2"#), "{text}");
        assert!(text.contains(r#"divert_proxy_responses_total{protocol="http1",decision="diverted",target_namespace="alice",status_class="5xx"} 1"#), "{text}");
        assert!(text.contains(r#"divert_proxy_requests_total{protocol="grpc",decision="passthrough",reason="unknown_destination",target_namespace=""} 1"#), "{text}");
        assert!(
            text.contains(r#"divert_proxy_baggage_rejected_total{reason="too_long"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"divert_proxy_upstream_connect_errors_total{reason="refused"} 1"#),
            "{text}"
        );
        // 700 µs: above the first bound, so cumulative 0 there and 1 from
        // the second on.
        for (le, n) in [("0.0005", 0), ("0.001", 1), ("10", 1), ("+Inf", 1)] {
            let line = format!(
                r#"divert_proxy_response_latency_seconds_bucket{{protocol="http1",decision="diverted",le="{le}"}} {n}"#
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
        assert!(text.contains(r#"divert_proxy_response_latency_seconds_count{protocol="http1",decision="diverted"} 1"#), "{text}");
        // The same namespace is the same counters.
        assert!(Arc::ptr_eq(&alice, &m.target("alice")));
    }

    /// docs/metrics.md promises 500 `target_namespace` labels.
    #[test]
    fn namespace_labels_are_capped() {
        let m = Metrics::default();
        // Held, as services of the table hold them.
        let held: Vec<_> = (0..500).map(|i| m.target(&format!("ns-{i}"))).collect();
        let extra = m.target("one-too-many");
        assert_eq!(&*extra.namespace, OTHER_NAMESPACE);
        assert_eq!(&*m.target("ns-3").namespace, "ns-3");
        // Namespaces gone from the table free their labels.
        drop(held);
        let fresh = m.target("one-too-many");
        assert_eq!(&*fresh.namespace, "one-too-many");
    }

    #[test]
    fn histogram_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 60.0031).abs() < 1e-6, "{sum}");
        assert_eq!(buckets[0], (0.0005, 1));
        assert_eq!(buckets[2], (0.0025, 0));
        assert_eq!(buckets[3], (0.005, 1));
        assert_eq!(buckets.last().map(|b| b.1), Some(1));
        assert!(buckets.last().is_some_and(|b| b.0.is_infinite()));
    }

    #[test]
    fn connection_guards_count_open_connections_by_protocol() {
        let m = Arc::new(Metrics::default());
        let g = m.connection(Protocol::Tls);
        let o = m.connection(Protocol::Opaque);
        assert_eq!(
            m.connections.iter().map(ConnectionStats::open).sum::<u64>(),
            2
        );
        g.add_bytes(10, 20);
        assert_eq!(
            m.connections.iter().map(ConnectionStats::open).sum::<u64>(),
            2
        );
        drop(o);
        drop(g);
        assert_eq!(
            m.connections.iter().map(ConnectionStats::open).sum::<u64>(),
            0
        );
        let text = scrape(&m);
        assert!(
            text.contains(r#"divert_proxy_tcp_read_bytes_total{protocol="tls"} 10"#),
            "{text}"
        );
        assert!(
            text.contains(r#"divert_proxy_tcp_open_connections{protocol="tls"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn status_classes() {
        assert_eq!(STATUS_CLASSES[status_class(101)], "1xx");
        assert_eq!(STATUS_CLASSES[status_class(204)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(404)], "4xx");
        assert_eq!(STATUS_CLASSES[status_class(599)], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(0)], "1xx");
        assert_eq!(STATUS_CLASSES[status_class(999)], "5xx");
    }
}
