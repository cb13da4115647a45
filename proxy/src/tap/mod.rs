//! Tap: live routing decisions for whoever watches (`divert tap`), over gRPC
//! on the admin port.
//!
//! With nobody watching, the request path pays one relaxed atomic load
//! ([`Tap::is_watched`]). With watchers, each decision is matched against
//! every watcher's filter and sample on borrowed data, and an event is built
//! only for those that want it. Each watcher has a bounded buffer; a full one
//! drops the event and the next one sent carries the count.
//!
//! Requests with a key are also kept, watched or not, in a short
//! [`history`] that a watch can ask for first (`divert trace --since`).

mod history;

use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use divert_core::direction::Direction;
use divert_proto::tap::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::Stream;

use crate::metrics::Metrics;
use crate::reason::{Decision, Reason};
use crate::spans::{Links, Spans};

/// Events buffered per watcher before new ones are dropped.
pub const WATCHER_BUFFER: usize = 1024;
/// Watchers one proxy serves at once: each adds work to every request.
pub const MAX_WATCHERS: usize = 16;
/// Events of requests with a key kept for `divert trace --since`, unless
/// told otherwise (`--tap-history`).
pub const DEFAULT_HISTORY: usize = 256;

/// One routing decision, borrowed from the request path.
pub struct Record<'a> {
    pub at: SystemTime,
    pub direction: Direction,
    pub protocol: &'static str,
    pub method: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub key: Option<&'a str>,
    pub original_dst: SocketAddr,
    /// `name.namespace:port`, or the passthrough address.
    pub target: &'a dyn fmt::Display,
    pub target_namespace: &'a str,
    pub service: &'a str,
    pub endpoint: Option<SocketAddr>,
    pub reason: Reason,
    pub status: u16,
    pub latency: Duration,
    pub error: Option<&'a dyn fmt::Display>,
    pub baggage_rejected: Option<&'static str>,
    /// It went out without the key while keyed requests were in flight.
    pub key_dropped: bool,
    /// The key it should have carried, when the requests in flight had one.
    pub dropped_key: Option<&'a str>,
    /// One of those requests.
    pub dropped_during: Option<&'a str>,
    /// Its place in its call tree.
    pub links: Links,
}

#[derive(Debug)]
struct Watcher {
    id: u64,
    namespace: String,
    service: String,
    key: String,
    /// The share of matching events to send, in 1/2^32 units.
    ratio: u64,
    seen: AtomicU64,
    dropped: AtomicU64,
    tx: mpsc::Sender<pb::TapEvent>,
}

impl Watcher {
    fn wants(&self, r: &Record<'_>) -> bool {
        (self.namespace.is_empty() || self.namespace == r.target_namespace)
            && (self.service.is_empty() || self.service == r.service)
            && (self.key.is_empty()
                || Some(self.key.as_str()) == r.key
                || Some(self.key.as_str()) == r.dropped_key)
            && self.sampled()
    }

    /// Deterministic sampling, no random number per request: the n-th
    /// matching event is sent when floor(n * ratio) moves, which sends
    /// exactly `ratio` of them over any long run.
    fn sampled(&self) -> bool {
        let n = u128::from(self.seen.fetch_add(1, Ordering::Relaxed));
        let r = u128::from(self.ratio);
        ((n + 1) * r) >> 32 != (n * r) >> 32
    }
}

/// The proxy's tap: its watchers, and who the proxy is (put in every event).
#[derive(Debug)]
pub struct Tap {
    watching: AtomicUsize,
    watchers: RwLock<Vec<Arc<Watcher>>>,
    next_id: AtomicU64,
    pod: String,
    namespace: String,
    metrics: Arc<Metrics>,
    /// The span ids of the requests routed while someone watches.
    pub spans: Spans,
    history: Option<history::History>,
}

impl Tap {
    pub fn new(pod: String, namespace: String, metrics: Arc<Metrics>) -> Self {
        Tap {
            watching: AtomicUsize::new(0),
            watchers: RwLock::default(),
            next_id: AtomicU64::new(0),
            pod,
            namespace,
            metrics,
            spans: Spans::default(),
            history: None,
        }
    }

    /// Keeps the last `cap` requests with a key (0: none).
    pub fn with_history(mut self, cap: usize) -> Self {
        self.history = history::History::new(cap);
        self
    }

    /// Whether a request is looked at closely (its span, its request line):
    /// someone watches, or it has a key (`keyed`, or it dropped one) and
    /// the proxy keeps a history.
    #[inline]
    pub fn looks(&self, keyed: bool) -> bool {
        self.is_watched() || (keyed && self.history.is_some())
    }

    /// Whether anyone watches; callers skip building a [`Record`] otherwise.
    #[inline]
    pub fn is_watched(&self) -> bool {
        self.watching.load(Ordering::Relaxed) > 0
    }

    /// How many watchers there are.
    pub fn watchers(&self) -> usize {
        self.watching.load(Ordering::Relaxed)
    }

    /// Keeps a decision if it has a key, and offers it to every watcher.
    pub fn publish(&self, r: &Record<'_>) {
        if let Some(h) = &self.history
            && (r.key.is_some() || r.dropped_key.is_some())
        {
            h.keep(r);
        }
        if !self.is_watched() {
            return;
        }
        let Ok(watchers) = self.watchers.read() else {
            return;
        };
        let mut event: Option<pb::TapEvent> = None;
        for w in watchers.iter().filter(|w| w.wants(r)) {
            let mut e = event.get_or_insert_with(|| self.event(r)).clone();
            e.dropped_before = w.dropped.swap(0, Ordering::Relaxed);
            if let Err(mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e)) =
                w.tx.try_send(e)
            {
                w.dropped.fetch_add(1 + e.dropped_before, Ordering::Relaxed);
                self.metrics.tap_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn event(&self, r: &Record<'_>) -> pb::TapEvent {
        pb::TapEvent {
            unix_micros: unix_micros(r.at),
            proxy_pod: self.pod.clone(),
            proxy_namespace: self.namespace.clone(),
            protocol: r.protocol.to_owned(),
            method: r.method.to_owned(),
            authority: r.authority.to_owned(),
            path: r.path.to_owned(),
            key: r.key.unwrap_or_default().to_owned(),
            original_dst: r.original_dst.to_string(),
            target: r.target.to_string(),
            target_namespace: r.target_namespace.to_owned(),
            service: r.service.to_owned(),
            endpoint: r.endpoint.map(|e| e.to_string()).unwrap_or_default(),
            decision: Decision::of(r.reason).as_str().to_owned(),
            reason: r.reason.as_str().to_owned(),
            status: u32::from(r.status),
            latency_micros: u64::try_from(r.latency.as_micros()).unwrap_or(u64::MAX),
            error: r.error.map(ToString::to_string).unwrap_or_default(),
            dropped_before: 0,
            baggage_rejected: r.baggage_rejected.unwrap_or_default().to_owned(),
            direction: r.direction.as_str().to_owned(),
            key_dropped: r.key_dropped,
            dropped_key: r.dropped_key.unwrap_or_default().to_owned(),
            dropped_during: r.dropped_during.unwrap_or_default().to_owned(),
            span_id: r.links.span,
            parent_span_id: r.links.parent,
            trace_id: r.links.trace.map(|t| t.id_hex()).unwrap_or_default(),
            trace_parent_id: r.links.trace.map(|t| t.parent_hex()).unwrap_or_default(),
        }
    }

    /// Adds a watcher; its events arrive on the returned stream, which removes
    /// the watcher when dropped. `None` when [`MAX_WATCHERS`] already watch.
    pub fn watch(self: &Arc<Self>, req: &pb::TapRequest) -> Option<EventStream> {
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        const ONE: u64 = 1 << 32;
        let ratio = if req.sample_ratio > 0.0 && req.sample_ratio < 1.0 {
            ((req.sample_ratio * ONE as f64) as u64).max(1)
        } else {
            ONE
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let watcher = Arc::new(Watcher {
            id,
            namespace: req.namespace.clone(),
            service: req.service.clone(),
            key: req.key.clone(),
            ratio,
            seen: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            tx,
        });
        let Ok(mut w) = self.watchers.write() else {
            return None;
        };
        if w.len() >= MAX_WATCHERS {
            return None;
        }
        w.push(watcher.clone());
        self.watching.store(w.len(), Ordering::Relaxed);
        drop(w);
        if req.since_micros > 0
            && let Some(h) = &self.history
        {
            h.since(req.since_micros, |r| {
                if watcher.wants(r) && watcher.tx.try_send(self.event(r)).is_err() {
                    watcher.dropped.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Some(EventStream {
            rx,
            remaining: if req.max_events == 0 {
                u64::MAX
            } else {
                req.max_events
            },
            tap: self.clone(),
            id,
        })
    }

    fn unwatch(&self, id: u64) {
        if let Ok(mut w) = self.watchers.write() {
            w.retain(|w| w.id != id);
            self.watching.store(w.len(), Ordering::Relaxed);
        }
    }
}

/// Microseconds since the Unix epoch (0 before it).
fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// One watcher's events; ends after `max_events`.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::Receiver<pb::TapEvent>,
    remaining: u64,
    tap: Arc<Tap>,
    id: u64,
}

impl Stream for EventStream {
    type Item = Result<pb::TapEvent, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(e)) => {
                self.remaining -= 1;
                if self.remaining == 0 {
                    // Stop being offered events at once, not when dropped.
                    self.tap.unwatch(self.id);
                }
                Poll::Ready(Some(Ok(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        self.tap.unwatch(self.id);
    }
}

/// The gRPC service (`divert.tap.v1.Tap`): the tap, and the keys this
/// pod's app dropped.
#[derive(Debug, Clone)]
pub struct TapService {
    pub tap: Arc<Tap>,
    pub drops: Arc<crate::drops::Drops>,
}

#[tonic::async_trait]
impl pb::tap_server::Tap for TapService {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: tonic::Request<pb::TapRequest>,
    ) -> Result<tonic::Response<EventStream>, tonic::Status> {
        let req = request.into_inner();
        if !(0.0..=1.0).contains(&req.sample_ratio) {
            return Err(tonic::Status::invalid_argument(format!(
                "sample_ratio {} is outside (0, 1] (0 means 1)",
                req.sample_ratio
            )));
        }
        let Some(events) = self.tap.watch(&req) else {
            return Err(tonic::Status::resource_exhausted(format!(
                "this proxy already serves {MAX_WATCHERS} tap watchers; stop one and try again"
            )));
        };
        tracing::info!(
            namespace = %req.namespace,
            service = %req.service,
            key = %req.key,
            sample_ratio = req.sample_ratio,
            "tap watcher added"
        );
        Ok(tonic::Response::new(events))
    }

    async fn key_drops(
        &self,
        _request: tonic::Request<pb::KeyDropsRequest>,
    ) -> Result<tonic::Response<pb::KeyDropsResponse>, tonic::Status> {
        let drops = self
            .drops
            .counts()
            .into_iter()
            .map(|c| pb::KeyDrop {
                proxy_pod: self.tap.pod.clone(),
                proxy_namespace: self.tap.namespace.clone(),
                service: c.service,
                destination: c.destination,
                count: c.count,
                last_unix_micros: unix_micros(c.last),
            })
            .collect();
        Ok(tonic::Response::new(pb::KeyDropsResponse {
            drops,
            unreachable: Vec::new(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    impl Record<'static> {
        /// A request from web to movies, diverted to alice's copy.
        pub(crate) fn for_tests() -> Self {
            Record {
                direction: Direction::Outbound,
                at: UNIX_EPOCH + Duration::from_micros(1_700_000_000_000_123),
                protocol: "http1",
                method: "GET",
                authority: "movies:8080",
                path: "/api",
                key: Some("alice"),
                original_dst: "10.0.0.1:8080".parse().unwrap(),
                target: &"movies.alice:8080",
                target_namespace: "alice",
                service: "movies",
                endpoint: Some("10.1.0.1:8080".parse().unwrap()),
                reason: Reason::Diverted,
                status: 200,
                latency: Duration::from_micros(1500),
                error: None,
                baggage_rejected: None,
                key_dropped: false,
                dropped_key: None,
                dropped_during: None,
                links: Links::default(),
            }
        }
    }

    fn record<'a>(key: Option<&'a str>, ns: &'a str, service: &'a str) -> Record<'a> {
        Record {
            key,
            target_namespace: ns,
            service,
            ..Record::for_tests()
        }
    }

    pub(super) fn tap() -> Arc<Tap> {
        Arc::new(Tap::new(
            "web-1".into(),
            "staging".into(),
            Arc::new(Metrics::default()),
        ))
    }

    #[tokio::test]
    async fn nobody_watching_costs_a_load_and_watchers_come_and_go() {
        let tap = tap();
        assert!(!tap.is_watched());
        let s = tap.watch(&pb::TapRequest::default()).unwrap();
        assert!(tap.is_watched());
        drop(s);
        assert!(!tap.is_watched());
    }

    #[tokio::test]
    async fn filters_select_events() {
        let tap = tap();
        let mut by_key = tap
            .watch(&pb::TapRequest {
                key: "alice".into(),
                ..Default::default()
            })
            .unwrap();
        let mut by_ns_service = tap
            .watch(&pb::TapRequest {
                namespace: "staging".into(),
                service: "api".into(),
                ..Default::default()
            })
            .unwrap();
        tap.publish(&record(Some("alice"), "alice", "movies"));
        tap.publish(&record(Some("bob"), "staging", "api"));
        tap.publish(&record(None, "staging", "movies"));
        let e = by_key.next().await.unwrap().unwrap();
        assert_eq!(
            (e.key.as_str(), e.target_namespace.as_str()),
            ("alice", "alice")
        );
        assert_eq!(e.proxy_pod, "web-1");
        assert_eq!(e.unix_micros, 1_700_000_000_000_123);
        assert_eq!(e.decision, "diverted");
        assert_eq!(e.latency_micros, 1500);
        let e = by_ns_service.next().await.unwrap().unwrap();
        assert_eq!((e.key.as_str(), e.service.as_str()), ("bob", "api"));
        // Nothing else matched either.
        assert!(by_key.rx.try_recv().is_err());
        assert!(by_ns_service.rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn sampling_and_max_events() {
        let tap = tap();
        let mut s = tap
            .watch(&pb::TapRequest {
                sample_ratio: 0.25,
                max_events: 2,
                ..Default::default()
            })
            .unwrap();
        for _ in 0..8 {
            tap.publish(&record(None, "staging", "api"));
        }
        assert!(s.next().await.is_some());
        assert!(s.next().await.is_some());
        // Two of eight were sampled, and two were wanted: done.
        assert!(s.next().await.is_none());
        assert!(!tap.is_watched());
    }

    #[test]
    fn sampling_sends_the_ratio_asked_for() {
        for (ratio, of, want) in [
            (0.7, 1000, 700),
            (0.4, 1000, 400),
            (0.25, 8, 2),
            (0.001, 10_000, 10),
        ] {
            let tap = tap();
            let mut s = tap
                .watch(&pb::TapRequest {
                    sample_ratio: ratio,
                    ..Default::default()
                })
                .unwrap();
            for _ in 0..of {
                tap.publish(&record(None, "staging", "api"));
            }
            let mut got = 0;
            while s.rx.try_recv().is_ok() {
                got += 1;
            }
            assert!(
                (got - want as i64).abs() <= 1,
                "{ratio}: {got} of {of}, want {want}"
            );
        }
    }

    #[tokio::test]
    async fn requests_with_a_key_are_kept_and_a_watch_since_a_time_gets_them_first() {
        let tap = Arc::new(
            Tap::new(
                "web-1".into(),
                "staging".into(),
                Arc::new(Metrics::default()),
            )
            .with_history(2),
        );
        assert!(tap.looks(true) && !tap.looks(false), "nobody watches");
        let at = |micros: u64, key: Option<&'static str>| Record {
            at: UNIX_EPOCH + Duration::from_micros(micros),
            ..record(key, "staging", "api")
        };
        tap.publish(&at(10, Some("alice")));
        tap.publish(&at(20, None));
        tap.publish(&at(30, Some("bob")));
        tap.publish(&at(40, Some("alice")));
        // A drop of alice's key is kept too.
        tap.publish(&Record {
            dropped_key: Some("alice"),
            ..at(50, None)
        });
        let mut kept = Vec::new();
        tap.history
            .as_ref()
            .unwrap()
            .since(0, |r| kept.push(unix_micros(r.at)));
        assert_eq!(kept, [40, 50], "the last two with a key");
        let mut s = tap
            .watch(&pb::TapRequest {
                key: "alice".into(),
                since_micros: 45,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(s.next().await.unwrap().unwrap().unix_micros, 50);
        tap.publish(&at(60, Some("alice")));
        assert_eq!(
            s.next().await.unwrap().unwrap().unix_micros,
            60,
            "then live"
        );
        assert!(s.rx.try_recv().is_err());
        // Without a history, nothing is kept and nothing is looked at.
        let plain = Tap::new(
            "web-1".into(),
            "staging".into(),
            Arc::new(Metrics::default()),
        );
        assert!(!plain.looks(true));
    }

    /// docs/proxy.md promises 16 watchers per proxy.
    #[tokio::test]
    async fn watchers_are_capped() {
        let tap = tap();
        let held: Vec<_> = (0..16)
            .map(|_| tap.watch(&pb::TapRequest::default()).unwrap())
            .collect();
        assert!(tap.watch(&pb::TapRequest::default()).is_none());
        drop(held);
        assert!(tap.watch(&pb::TapRequest::default()).is_some());
    }

    #[tokio::test]
    async fn a_full_buffer_drops_and_says_how_many() {
        let tap = tap();
        let mut s = tap.watch(&pb::TapRequest::default()).unwrap();
        for _ in 0..WATCHER_BUFFER + 5 {
            tap.publish(&record(None, "staging", "api"));
        }
        for _ in 0..WATCHER_BUFFER {
            assert_eq!(s.next().await.unwrap().unwrap().dropped_before, 0);
        }
        tap.publish(&record(None, "staging", "api"));
        assert_eq!(s.next().await.unwrap().unwrap().dropped_before, 5);
        assert_eq!(tap.metrics.tap_dropped.load(Ordering::Relaxed), 5);
    }
}
