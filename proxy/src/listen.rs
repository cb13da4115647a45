//! Bind mode: the proxy listens itself on every address:port the table says
//! clients dial, so a connection's original destination is simply the address
//! it was accepted on. Listeners follow the table: new addresses are bound and
//! removed ones closed (their open connections finish undisturbed).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use divert_core::direction::Direction;
use divert_core::task::AbortOnDrop;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::conn::{Conn, NotHttp, serve_detected};
use crate::drain::{Drain, Tracked};
use crate::limits::{ConnectionSlots, Slot, Timeout};
use crate::shared::Shared;

/// Bind failures logged one by one per table change; the rest are counted
/// in one line.
const LOGGED_BIND_FAILURES: usize = 5;

/// What bind mode has done for a table version.
#[derive(Debug, Clone, Default)]
pub struct Listening {
    pub version: u64,
    pub bound: Vec<SocketAddr>,
    /// Addresses that could not be bound, with the reason; retried at the next
    /// table change.
    pub failed: Vec<(SocketAddr, String)>,
}

/// Keeps the listeners equal to the table's dialed addresses, forever.
pub async fn run(shared: Arc<Shared>, report: watch::Sender<Listening>) {
    let mut versions = shared.tables.subscribe();
    let mut active: HashMap<SocketAddr, AbortOnDrop> = HashMap::new();
    loop {
        versions.mark_unchanged();
        if shared.drain.is_draining() {
            // The accept loops have stopped; bind nothing new.
            return;
        }
        let table = shared.tables.load();
        let want: HashSet<SocketAddr> = table.dialed_addrs().collect();
        active.retain(|addr, _| {
            let keep = want.contains(addr);
            if !keep {
                tracing::info!(%addr, "no longer in the table; closing listener");
            }
            keep
        });
        let mut failed = Vec::new();
        for addr in want {
            if active.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(listener) => {
                    tracing::debug!(%addr, "listening");
                    let shared = shared.clone();
                    let drain = shared.drain.clone();
                    let slots = shared.slots.clone();
                    let task = tokio::spawn(accept_loop(
                        listener,
                        drain,
                        slots,
                        move |stream, peer, held| {
                            serve_dialed(stream, addr, peer, shared.clone(), held)
                        },
                    ));
                    active.insert(addr, AbortOnDrop::from(task));
                }
                Err(e) => {
                    // A table of many addresses that are not this machine's
                    // would log one line each: the first few say it.
                    if failed.len() < LOGGED_BIND_FAILURES {
                        tracing::error!(%addr, error = %e, "cannot listen on a dialed address; check that no other process holds it and that the address is local");
                    }
                    failed.push((addr, e.to_string()));
                }
            }
        }
        if failed.len() > LOGGED_BIND_FAILURES {
            tracing::error!(
                failed = failed.len(),
                logged = LOGGED_BIND_FAILURES,
                "dialed addresses that could not be listened on (bind mode needs each to be an address of this machine)"
            );
        }
        let mut bound: Vec<_> = active.keys().copied().collect();
        bound.sort();
        report.send_replace(Listening {
            version: table.version(),
            bound,
            failed,
        });
        drop(table);
        tokio::select! {
            changed = versions.changed() => if changed.is_err() { return },
            () = shared.drain.signaled() => {}
        }
    }
}

/// Binds a listening socket the way a server should: address reuse so a
/// restart does not wait out TIME_WAIT, and a deep accept backlog.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Serves one connection accepted on `addr`, a dialed address. The client
/// must say which HTTP it speaks (a request line or the HTTP/2 preface)
/// within the header read timeout; one that says nothing, or stalls inside
/// the preface, is closed then.
async fn serve_dialed(
    mut stream: TcpStream,
    addr: SocketAddr,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _held: Held,
) {
    let limit = crate::limits::enabled(shared.config.limits.header_read_timeout);
    let detected = match crate::detect::detect(&mut stream, limit).await {
        Ok(d) => d,
        Err(e) => {
            tracing::debug!(%peer, %addr, error = %e, "connection failed before its first request");
            return;
        }
    };
    if detected.timed_out {
        shared.metrics.timeout(Timeout::HeaderRead);
        tracing::debug!(%peer, %addr, "no request within the header read timeout; closing");
        return;
    }
    let conn = Conn {
        dst: addr,
        peer,
        direction: Direction::Outbound,
    };
    serve_detected(
        stream,
        detected.protocol,
        detected.prefix,
        NotHttp::Refuse,
        conn,
        shared,
    )
    .await;
}

/// What counts an accepted connection while it lives: the drain's count
/// and its slot under the connection cap. The connection's future owns it,
/// so both go when the connection does.
pub struct Held {
    _tracked: Tracked,
    _slot: Slot,
}

/// Accepts connections on `listener` until the drain starts, handing each
/// (with no-delay set) to `serve` on a task of its own, counted by the drain
/// while it runs. Past the connection cap (`slots`), a new connection is
/// closed at once, and counted. Shared by bind and transparent mode.
///
/// The task is `serve`'s future itself, not one that awaits it: a future
/// moved into another and awaited there is stored twice (as the captured
/// value and as the awaited one), and the task is most of what each idle
/// connection costs (BENCHMARKS.md, "Memory per idle connection").
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    drain: Arc<Drain>,
    slots: Arc<ConnectionSlots>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, Held) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().ok();
    // The loop counts as open until it returns, so that a drain on another
    // worker cannot find nothing open between an accept and its `track`.
    let _accepting = drain.track();
    let drained = drain.signaled();
    tokio::pin!(drained);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut drained => {
                // Dropping the listener closes the socket: new connections
                // are refused from here on.
                tracing::debug!(addr = ?addr, "draining; no longer accepting");
                return;
            }
            a = divert_core::accept::next(&listener) => a,
        };
        let (stream, peer) = accepted;
        let Some(slot) = slots.try_take() else {
            tracing::debug!(%peer, max = slots.max(), "connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let held = Held {
            _tracked: drain.track(),
            _slot: slot,
        };
        tokio::spawn(serve(stream, peer, held));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Table;

    /// The most a connection's task future may take. With tokio's task
    /// header and trailer (the task is aligned to 128 bytes) the task then
    /// stays within 1.25 KiB, and an idle HTTP/1.1 connection within
    /// 2 KiB with its socket's registration (BENCHMARKS.md, "Memory per
    /// idle connection"). A path left unboxed, or a large local kept
    /// across an await, shows here first.
    const TASK_FUTURE_BUDGET: usize = 1088;

    #[tokio::test]
    async fn a_connection_task_fits_its_memory_budget_in_both_modes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared::new(
            Default::default(),
            Table::build(&Default::default(), 1, None).unwrap(),
        );
        let stream = || {
            let s = std::net::TcpStream::connect(addr).unwrap();
            s.set_nonblocking(true).unwrap();
            TcpStream::from_std(s).unwrap()
        };
        let held = || Held {
            _tracked: shared.drain.track(),
            _slot: shared.slots.try_take().unwrap(),
        };
        let transparent =
            crate::transparent::serve(stream(), addr, Direction::Outbound, shared.clone(), held());
        let dialed = serve_dialed(stream(), addr, addr, shared.clone(), held());
        for (mode, size) in [
            ("transparent", std::mem::size_of_val(&transparent)),
            ("bind", std::mem::size_of_val(&dialed)),
        ] {
            assert!(
                size <= TASK_FUTURE_BUDGET,
                "a {mode}-mode connection's future takes {size} bytes, over {TASK_FUTURE_BUDGET}"
            );
        }
    }
}
