//! When an HTTP/2 connection (the proxy's clients', the admin server's) has
//! been idle (no open stream) long enough to close. hyper closes idle HTTP/1 connections itself (its header
//! read timeout runs between requests), but keeps an HTTP/2 connection with
//! no streams open for ever.
//!
//! A stream counts as open from its request until its response body ends.
//! The request path pays two atomic additions at each end and no clock
//! read: the watcher wakes once per limit and closes the connection when
//! nothing opened or ended since its last wake and nothing is open, so an
//! idle connection closes between one and two limits after its last stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};

/// The streams of one connection.
#[derive(Debug, Default)]
pub struct Activity {
    open: AtomicUsize,
    /// Bumped when a stream opens and when one ends.
    events: AtomicU64,
}

impl Activity {
    /// Counts a stream as open until the guard drops.
    pub fn open(self: &Arc<Self>) -> Busy {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    /// Resolves once the connection has had no open stream, and no stream
    /// opening or ending, for a whole `limit`.
    pub async fn idle(&self, limit: Duration) {
        let mut seen = self.events.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(limit).await;
            let now = self.events.load(Ordering::Relaxed);
            if now == seen && self.open.load(Ordering::Relaxed) == 0 {
                return;
            }
            seen = now;
        }
    }
}

/// One open stream.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its stream counted as open until it ends
/// (or is dropped). Without a guard (HTTP/1) it only passes through.
pub struct Held<B> {
    inner: B,
    busy: Option<Busy>,
}

impl<B> Held<B> {
    pub fn new(inner: B, busy: Option<Busy>) -> Self {
        Held { inner, busy }
    }
}

impl<B: Body + Unpin> Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.busy = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_after_a_whole_limit_without_streams() {
        let activity = Arc::new(Activity::default());
        let limit = Duration::from_secs(10);
        let busy = activity.open();
        let started = tokio::time::Instant::now();
        let watcher = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle(limit).await }
        });
        // Open streams keep it from being idle however long they last.
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert!(!watcher.is_finished());
        drop(busy);
        watcher.await.unwrap();
        let waited = started.elapsed();
        // Ended at 35 s: idle from the wake at 40 s (an event was seen) to
        // the one at 50 s.
        assert_eq!(waited, Duration::from_secs(50), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_opens_a_stream_is_idle_after_one_limit() {
        let activity = Arc::new(Activity::default());
        let started = tokio::time::Instant::now();
        activity.idle(Duration::from_secs(10)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
