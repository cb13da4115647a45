//! Taking the next connection off a listener, the one way every Divert
//! server does it. `accept` fails for reasons that last (the process is out
//! of file descriptors, the kernel of buffers): retrying at once would spin a
//! core at 100 % and starve the connections already open, so each failure in
//! a row waits longer, from 10 ms up to 1 s, and is logged.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// The first wait after a failed accept.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listener: what [`next`] needs of one.
pub trait Accept {
    type Conn;
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Conn, SocketAddr)>>;
    fn local_addr(&self) -> Option<SocketAddr>;
}

impl Accept for TcpListener {
    type Conn = TcpStream;

    fn accept(&self) -> impl Future<Output = io::Result<(TcpStream, SocketAddr)>> {
        TcpListener::accept(self)
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        TcpListener::local_addr(self).ok()
    }
}

/// The next connection and its peer. Failures are logged and retried after
/// a wait that doubles with each one in a row. Cancel-safe: dropping the
/// future loses no connection.
pub async fn next<L: Accept>(listener: &L) -> (L::Conn, SocketAddr) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(
                    addr = ?listener.local_addr(),
                    error = %e,
                    retry_in = ?backoff,
                    "accept failed"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Fails `failures` times, then accepts; counts the tries.
    struct Flaky {
        failures: u32,
        tries: Cell<u32>,
    }

    impl Accept for Flaky {
        type Conn = ();

        fn accept(&self) -> impl Future<Output = io::Result<((), SocketAddr)>> {
            let n = self.tries.get();
            self.tries.set(n + 1);
            let result = if n < self.failures {
                Err(io::Error::from_raw_os_error(24)) // EMFILE
            } else {
                Ok(((), SocketAddr::from(([127, 0, 0, 1], 1))))
            };
            std::future::ready(result)
        }

        fn local_addr(&self) -> Option<SocketAddr> {
            None
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_accepts_back_off_doubling_up_to_a_second_instead_of_spinning() {
        let listener = Flaky {
            failures: 9,
            tries: Cell::new(0),
        };
        let started = tokio::time::Instant::now();
        next(&listener).await;
        // 10 + 20 + 40 + 80 + 160 + 320 + 640 ms, then 1 s twice.
        assert_eq!(started.elapsed(), Duration::from_millis(3270));
        assert_eq!(listener.tries.get(), 10, "one try per wait, no spinning");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_is_there_is_taken_at_once() {
        let listener = Flaky {
            failures: 0,
            tries: Cell::new(0),
        };
        let started = tokio::time::Instant::now();
        next(&listener).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(listener.tries.get(), 1);
    }
}
