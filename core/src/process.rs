//! A process's runtime, its shutdown signals and its exit status, the same
//! for every Divert process.

/// Exit status for bad flags or configuration (EX_USAGE); any other failure
/// is 1.
pub const EXIT_USAGE: u8 = 64;

/// The tokio runtime for `workers` threads. One worker (what a sidecar that
/// shares its pod's core wants) is a current-thread runtime: no cross-thread
/// wake-ups and no work stealing.
pub fn runtime(workers: u16) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(workers))
            .enable_all()
            .build()
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    Signals::new().next().await;
}

/// SIGINT and SIGTERM, listened to from creation on, so a signal that comes
/// while the previous one is being handled is not missed (the second one of
/// a drain ends it at once).
pub struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    pub fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// The next signal.
    pub async fn next(&mut self) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.term) => {}
            () = recv(&mut self.int) => {}
        }
    }
}

impl Default for Signals {
    fn default() -> Self {
        Signals::new()
    }
}
