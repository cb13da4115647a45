//! Graceful drain: on shutdown, stop accepting, ask every connection to wind
//! down (HTTP/2 GOAWAY, HTTP/1 close after the response in flight), and wait
//! for open connections to finish, up to a grace period.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

/// The drain signal, and the count of connections it waits for.
#[derive(Debug)]
pub struct Drain {
    signal: watch::Sender<bool>,
    /// Wakes [`Drain::started`]'s waiters when the drain starts.
    started: Notify,
    open: AtomicUsize,
    idle: Notify,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            signal: watch::channel(false).0,
            started: Notify::new(),
            open: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every connection finished.
    Idle,
    /// The grace period ran out with this many connections still open.
    TimedOut { open: usize },
}

impl Drain {
    /// Starts draining (idempotent).
    pub fn start(&self) {
        self.signal.send_replace(true);
        self.started.notify_waiters();
    }

    pub fn is_draining(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves once draining has started.
    pub fn signaled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.signal.subscribe();
        async move {
            // An error means the sender is gone, which only happens at exit.
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    /// Resolves once draining has started, like [`Drain::signaled`], but
    /// borrowing the drain: its state is a waiter in a list (about half of
    /// a watch receiver's), which every idle HTTP/1.1 connection holds.
    pub async fn started(&self) {
        let notified = self.started.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a drain that starts in
        // between still wakes it.
        notified.as_mut().enable();
        if self.is_draining() {
            return;
        }
        notified.await;
    }

    /// Counts a connection (or tunnel) as open until the guard drops.
    pub fn track(self: &Arc<Self>) -> Tracked {
        self.open.fetch_add(1, Ordering::Relaxed);
        Tracked(self.clone())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Starts draining and waits until no connection is open, or `grace` has
    /// passed.
    pub async fn run(&self, grace: Duration) -> Outcome {
        self.start();
        let idle = async {
            loop {
                let notified = self.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.open() == 0 {
                    return;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(grace, idle).await {
            Ok(()) => Outcome::Idle,
            Err(_) => Outcome::TimedOut { open: self.open() },
        }
    }
}

/// An open connection, counted by the drain.
#[derive(Debug)]
pub struct Tracked(Arc<Drain>);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_open_connections() {
        let drain = Arc::new(Drain::default());
        let a = drain.track();
        let b = drain.track();
        let signaled = tokio::spawn(drain.signaled());
        let run = tokio::spawn({
            let drain = drain.clone();
            async move { drain.run(Duration::from_secs(30)).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(signaled.is_finished());
        assert!(drain.is_draining());
        drop(a);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!run.is_finished());
        drop(b);
        assert_eq!(run.await.unwrap(), Outcome::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_the_grace_period() {
        let drain = Arc::new(Drain::default());
        let _held = drain.track();
        let started = tokio::time::Instant::now();
        let out = drain.run(Duration::from_secs(5)).await;
        assert_eq!(out, Outcome::TimedOut { open: 1 });
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_proxy_drains_at_once() {
        let drain = Drain::default();
        let started = tokio::time::Instant::now();
        assert_eq!(drain.run(Duration::from_secs(5)).await, Outcome::Idle);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
