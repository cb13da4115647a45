//! How long the proxy waits for a peer, and how much one peer can make it
//! hold. A sidecar sits in front of every call of its app, so one stalled
//! or hostile peer must cost a bounded wait and a bounded share of memory,
//! never the proxy. Each bound is a flag of `divert-proxy proxy`; each time
//! one fires it is counted (`divert_proxy_timeouts_total`,
//! `divert_proxy_connections_refused_total`,
//! `divert_proxy_request_heads_too_large_total`).
//!
//! The defaults follow Envoy and nginx where they agree, and the safer of
//! the two where they do not; each says whose it is.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Sleep;

/// Every bound; part of the proxy's [`crate::Config`]. A zero duration
/// turns that wait's limit off.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From the moment the proxy waits for a request head (a new connection
    /// in bind mode, or an HTTP/1.1 connection between requests) until the
    /// head is complete. Past it the connection is closed. nginx's
    /// `client_header_timeout` is 60 s; hyper's default 30 s.
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection with no open stream for this long gets GOAWAY and
    /// is closed. nginx closed idle HTTP/2 connections after 3 minutes
    /// (`http2_idle_timeout`), Envoy after an hour (`idle_timeout`).
    pub idle_timeout: Duration,
    /// The longest gap between two pieces of a request body. Past it the
    /// request fails: 408 if the upstream has not answered yet. Envoy's
    /// `stream_idle_timeout` is 5 minutes, nginx's `client_body_timeout` 60 s;
    /// the longer one, so that quiet gRPC client streams live.
    pub request_body_timeout: Duration,
    /// How long the upstream may take to send a response head once the
    /// whole request body has been sent (as Envoy counts): past it 504, or for gRPC `grpc-status: 4`. A gRPC
    /// call's own `grpc-timeout` replaces it. nginx's `proxy_read_timeout`
    /// is 60 s (Envoy's route timeout 15 s, which cuts slow but healthy calls).
    pub response_timeout: Duration,
    /// The most client connections open at once; past it new ones are
    /// closed at once, and those open keep being served.
    pub max_connections: usize,
    /// The largest request head (request line and headers), in bytes: 431
    /// past it.
    pub max_request_head: usize,
}

/// The default largest request head: Envoy's default is 60 KiB, nginx's
/// 32 KiB (`large_client_header_buffers 4 8k`).
pub const DEFAULT_MAX_REQUEST_HEAD: usize = 64 * 1024;
/// The smallest head limit hyper takes (it reads heads in 8 KiB steps).
pub const MIN_MAX_REQUEST_HEAD: usize = 8 * 1024;
/// The default cap on client connections: nginx's 1024 per worker is too
/// few for an app's whole outbound traffic; every connection costs a few KiB
/// when idle, so 10 000 stay within tens of MiB.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            request_body_timeout: Duration::from_secs(300),
            response_timeout: Duration::from_secs(60),
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
        }
    }
}

/// File descriptors kept aside from client connections and their upstream
/// ones: the admin server's connections (its own cap), the listeners, the
/// controller's stream, the registry's watch, and spare idle upstream
/// connections.
pub const RESERVED_FDS: u64 = divert_core::admin::MAX_CONNECTIONS as u64 + 64;

/// The process's open-file limit, and the client connections it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit now (raised to the hard one if it could be).
    pub soft: u64,
    pub hard: u64,
    /// The cap on client connections: the one asked for, or less if the
    /// limit cannot hold it with an upstream connection each.
    pub max_connections: usize,
}

/// Raises the soft `nofile` limit to the hard one (the soft one is often
/// 1 024, far below what `--max-connections` asks for) and caps client
/// connections at what it can hold, [`RESERVED_FDS`] kept aside and an
/// upstream connection for each: past the cap a connection is closed at
/// once, rather than every socket, the admin server's included, failing
/// with "too many open files".
pub fn fit_to_nofile(asked: usize) -> FdBudget {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (mut soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => soft = hard,
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit"),
        }
    }
    FdBudget {
        soft,
        hard,
        max_connections: connections_within(soft, asked),
    }
}

/// The client connections `nofile` descriptors hold: two each (client and
/// upstream) after [`RESERVED_FDS`], at least one, at most `asked`.
fn connections_within(nofile: u64, asked: usize) -> usize {
    let fit = nofile.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(fit)
        .unwrap_or(usize::MAX)
        .clamp(1, asked.max(1))
}

/// `Some(d)` unless `d` is zero (the limit is off).
pub fn enabled(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Resolves at `deadline`, or never (the limit is off).
pub async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Which wait ran out; one vocabulary for the metric and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A transparent connection said nothing, or too little to tell its
    /// protocol, within `--detect-timeout` (nothing: whoever speaks first
    /// decides, `silent.rs`; too little: it went on as opaque).
    Detect,
    /// No complete request head within `--header-read-timeout`, or neither
    /// side of a silent connection spoke within it.
    HeaderRead,
    /// An HTTP/2 connection without streams for `--idle-timeout`.
    Idle,
    /// A request body stalled for `--request-body-timeout`.
    RequestBody,
    /// No response head within `--response-timeout` (or `grpc-timeout`).
    ResponseHead,
    /// The admin server got no complete request in time.
    AdminHeaderRead,
    /// An HTTP/2 client did not answer the PING of a GOAWAY in time (it was
    /// dropped).
    GoawayAck,
}

impl Timeout {
    pub const ALL: [Timeout; 7] = [
        Timeout::Detect,
        Timeout::HeaderRead,
        Timeout::Idle,
        Timeout::RequestBody,
        Timeout::ResponseHead,
        Timeout::AdminHeaderRead,
        Timeout::GoawayAck,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Timeout::Detect => "detect",
            Timeout::HeaderRead => "header_read",
            Timeout::Idle => "idle",
            Timeout::RequestBody => "request_body",
            Timeout::ResponseHead => "response_head",
            Timeout::AdminHeaderRead => "admin_header_read",
            Timeout::GoawayAck => "goaway_ack",
        }
    }
}

/// How long an HTTP/2 client closed for abuse gets to answer the GOAWAY's
/// PING (an idle one gets the idle timeout).
pub const GOAWAY_GRACE: Duration = Duration::from_secs(10);

/// The count of open client connections, against the cap.
#[derive(Debug)]
pub struct ConnectionSlots {
    open: AtomicUsize,
    max: usize,
    refused: AtomicU64,
}

impl ConnectionSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionSlots {
            open: AtomicUsize::new(0),
            max,
            refused: AtomicU64::new(0),
        })
    }

    /// A slot for one more connection, or `None` (counted) when all are
    /// taken.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.open.load(Ordering::Relaxed);
        loop {
            if open >= self.max {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self.open.compare_exchange_weak(
                open,
                open + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => open = now,
            }
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Connections closed at once because the cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// One open connection's place under the cap, given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<ConnectionSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A `grpc-timeout` header's value as a duration: at most 8 digits and a
/// unit (gRPC over HTTP/2, "Requests": H, M, S, m, u, n). `None` when
/// malformed, which gRPC servers treat as no deadline.
pub fn grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_last().map(|(u, d)| (d, *u))?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

pin_project_lite::pin_project! {
    /// `work`'s output, or `Err(limit)` if it is still running `limit`
    /// after `start` resolved (with no limit, `work`'s output). The response
    /// timeout counted from the end of the request body is one.
    ///
    /// A type rather than an `async fn`: each HTTP/2 request's future is
    /// moved on its way to its stream's task, and an `async fn` keeps a
    /// second copy of what it is given to wait on.
    pub struct LimitAfter<S, W> {
        #[pin]
        work: W,
        #[pin]
        start: Option<S>,
        #[pin]
        timer: Option<Sleep>,
        limit: Duration,
    }
}

impl<S, W> LimitAfter<S, W> {
    pub fn new(limit: Option<(Duration, S)>, work: W) -> Self {
        let (limit, start) = match limit {
            Some((limit, start)) => (limit, Some(start)),
            None => (Duration::ZERO, None),
        };
        LimitAfter {
            work,
            start,
            timer: None,
            limit,
        }
    }
}

impl<S, W> Future for LimitAfter<S, W>
where
    S: Future<Output = ()>,
    W: Future,
{
    type Output = Result<W::Output, Duration>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.work.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        if let Some(start) = this.start.as_mut().as_pin_mut() {
            if start.poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.start.set(None);
            this.timer.set(Some(tokio::time::sleep(*this.limit)));
        }
        match this.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx).map(|()| Err(*this.limit)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        let asked = DEFAULT_MAX_CONNECTIONS as usize;
        assert_eq!(connections_within(1 << 20, asked), asked);
        assert_eq!(
            connections_within(1024, asked),
            ((1024 - RESERVED_FDS) / 2) as usize
        );
        assert_eq!(connections_within(10, asked), 1, "at least one");
        assert_eq!(connections_within(1 << 20, 0), 1);
    }

    #[test]
    fn grpc_timeouts_are_read_in_every_unit_and_malformed_ones_ignored() {
        assert_eq!(grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(grpc_timeout(b"10S"), Some(Duration::from_secs(10)));
        assert_eq!(grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            grpc_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
        for bad in [
            &b""[..],
            b"S",
            b"123456789S",
            b"10s",
            b"1.5S",
            b"-1S",
            b"10",
        ] {
            assert_eq!(
                grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn slots_stop_at_the_cap_and_come_back_when_dropped() {
        let slots = ConnectionSlots::new(2);
        let a = slots.try_take().expect("first");
        let b = slots.try_take().expect("second");
        assert!(slots.try_take().is_none(), "the cap holds");
        assert_eq!(slots.refused(), 1);
        drop(a);
        let c = slots.try_take().expect("a freed slot is taken again");
        assert_eq!(slots.open(), 2);
        drop((b, c));
        assert_eq!(slots.open(), 0);
    }

    /// A work that finishes at `at` (paused clock).
    async fn done_at(at: Duration) -> &'static str {
        tokio::time::sleep(at).await;
        "done"
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_counts_from_the_start_not_from_the_first_poll() {
        let start = tokio::time::sleep(Duration::from_secs(100));
        let limit = Some((Duration::from_secs(10), start));
        // Done 105 s in: within 10 s of the start (100 s).
        let r = LimitAfter::new(limit, done_at(Duration::from_secs(105))).await;
        assert_eq!(r, Ok("done"));
    }

    #[tokio::test(start_paused = true)]
    async fn work_still_running_past_the_limit_is_given_up() {
        let begun = tokio::time::Instant::now();
        let start = tokio::time::sleep(Duration::from_secs(100));
        let limit = Some((Duration::from_secs(10), start));
        let r = LimitAfter::new(limit, done_at(Duration::from_secs(111))).await;
        assert_eq!(r, Err(Duration::from_secs(10)));
        assert_eq!(begun.elapsed(), Duration::from_secs(110));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_the_work_runs_to_its_end() {
        let limit: Option<(Duration, std::future::Ready<()>)> = None;
        let r = LimitAfter::new(limit, done_at(Duration::from_secs(3600))).await;
        assert_eq!(r, Ok("done"));
    }
}
