//! Streams an HTTP/2 client opens and then resets before their answer: the
//! rapid-reset defence past what h2 bounds itself.
//!
//! h2 limits streams reset before the server accepts them (CVE-2023-44487).
//! A stream reset a few milliseconds after it was accepted has already gone
//! upstream, and h2 counts nothing: a client that opens and cancels streams
//! in a loop makes the upstream do all the work while it waits for none.
//! So the proxy counts, per connection, the streams whose answer the client
//! gave up on and the ones it waited for, and closes (GOAWAY) a connection
//! that has given up on [`ALLOWANCE`] more than it waited for. A client that
//! cancels now and then (deadlines, hedged calls) never gets there; one that
//! cancels nearly everything gets there within [`ALLOWANCE`] streams.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

/// How many more streams a connection may give up on than it waited for.
pub const ALLOWANCE: u64 = 100;

/// The streams of one connection, by how they ended.
#[derive(Debug, Default)]
pub struct Resets {
    given_up: AtomicU64,
    answered: AtomicU64,
    tripped: AtomicBool,
    notify: Notify,
}

impl Resets {
    /// A stream whose answer is being made: it counts as given up on unless
    /// [`Stream::answered`] is called before it drops.
    pub fn stream(self: &Arc<Self>) -> Stream {
        Stream {
            resets: Some(self.clone()),
        }
    }

    /// Resolves once the connection has given up on too many streams.
    pub async fn tripped(&self) {
        loop {
            let notified = self.notify.notified();
            if self.tripped.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn give_up(&self) {
        let given_up = self.given_up.fetch_add(1, Ordering::Relaxed) + 1;
        let answered = self.answered.load(Ordering::Relaxed);
        if given_up > answered.saturating_add(ALLOWANCE)
            && !self.tripped.swap(true, Ordering::AcqRel)
        {
            self.notify.notify_waiters();
        }
    }
}

/// One stream of a connection counted by [`Resets`].
#[derive(Debug)]
pub struct Stream {
    resets: Option<Arc<Resets>>,
}

impl Stream {
    /// The stream's answer was made: the client waited for it.
    pub fn answered(mut self) {
        if let Some(r) = self.resets.take() {
            r.answered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(r) = self.resets.take() {
            r.give_up();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_gives_up_on_nearly_every_stream_is_tripped() {
        let resets = Arc::new(Resets::default());
        let watcher = tokio::spawn({
            let resets = resets.clone();
            async move { resets.tripped().await }
        });
        // Every other stream cancelled: never past the allowance.
        for _ in 0..1000 {
            resets.stream().answered();
            drop(resets.stream());
        }
        tokio::task::yield_now().await;
        assert!(!watcher.is_finished());
        // Then only cancellations: tripped at the allowance's end.
        for _ in 0..ALLOWANCE {
            drop(resets.stream());
        }
        tokio::task::yield_now().await;
        assert!(!watcher.is_finished());
        drop(resets.stream());
        watcher.await.expect("tripped");
        // And it stays tripped for a late watcher.
        resets.tripped().await;
    }
}
