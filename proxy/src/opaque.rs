//! Opaque TCP and TLS: no request to read a key from, so the routing rule runs
//! once per connection with the proxy's own-namespace default only (ARCHITECTURE.md,
//! step 6), and the bytes are spliced both ways untouched. Inbound, that is
//! always this pod's app: with no key, step 7 delivers locally.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use divert_core::direction::Direction;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::conn::Conn;
use crate::counted::CountedIo;
use crate::protocol::Protocol;
use crate::reason::Reason;
use crate::report::{self, RequestLine};
use crate::semantics::answer::Failure;
use crate::shared::Shared;
use crate::table::Target;
use crate::upstream::{UpstreamError, connect_tcp};

/// Where an opaque connection goes: the routing rule without a key, once
/// for the whole connection.
pub(crate) struct Picked {
    /// The endpoint picked (`None`: the service has none).
    addr: Option<SocketAddr>,
    target: String,
    reason: Reason,
    /// The target's namespace and service, copied out for a tap watcher.
    target_ns: String,
    service: String,
}

impl Picked {
    /// The endpoint picked, if there is one.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }
}

/// Routes an opaque connection ([`Picked`]).
pub(crate) fn pick(Conn { dst, direction, .. }: Conn, shared: &Shared) -> Picked {
    // Names are copied out of the table only for a tap watcher.
    let tapped = shared.tap.is_watched();
    let table = shared.tables.load();
    let route = match direction {
        Direction::Outbound => table.route(dst, None, shared.own_namespace()),
        Direction::Inbound => table.route_inbound(dst, None, shared.config.namespace.as_deref()),
    };
    let (addr, names) = match &route.target {
        Target::Service {
            port,
            namespace,
            service,
        } => (
            port.endpoints.pick().map(|e| e.addr),
            tapped.then(|| (namespace.to_string(), service.name.to_string())),
        ),
        Target::Passthrough(addr) => (Some(*addr), None),
    };
    let (target_ns, service) = names.unwrap_or_default();
    Picked {
        addr,
        target: route.to_string(),
        reason: route.reason,
        target_ns,
        service,
    }
}

/// Where [`serve_picked`] gets its upstream connection.
pub(crate) enum Up {
    /// It dials the endpoint picked.
    Dial,
    /// Made before the client's protocol was known (`silent.rs`), with what
    /// the server has said on it so far.
    Ahead { up: TcpStream, said: Bytes },
    /// Dialing it ahead failed.
    Failed(UpstreamError),
}

/// Routes one opaque connection and copies bytes both ways until both sides
/// have closed. `prefix` holds what detection already read from the client.
pub async fn serve(
    down: TcpStream,
    prefix: Bytes,
    protocol: Protocol,
    conn: Conn,
    shared: Arc<Shared>,
) {
    let picked = pick(conn, &shared);
    serve_picked(down, prefix, protocol, conn, shared, picked, Up::Dial).await;
}

/// [`serve`], routed already, with its upstream connection from `up`.
pub(crate) async fn serve_picked(
    mut down: TcpStream,
    prefix: Bytes,
    protocol: Protocol,
    Conn {
        dst,
        peer,
        direction,
    }: Conn,
    shared: Arc<Shared>,
    picked: Picked,
    up: Up,
) {
    let started = Instant::now();
    let conn = shared.metrics.connection(protocol);
    let report = |endpoint: Option<SocketAddr>, error: Option<&dyn std::fmt::Display>| {
        report::report(
            &shared.tap,
            &report::Decided {
                direction,
                protocol,
                key: None,
                peer,
                dst,
                target: &picked.target,
                target_namespace: &picked.target_ns,
                service: &picked.service,
                reason: picked.reason,
                dropped: None,
                links: Default::default(),
            },
            &report::Outcome {
                endpoint,
                status: 0,
                latency: started.elapsed(),
                error,
            },
            RequestLine::default,
        );
    };
    let Some(addr) = picked.addr else {
        let failure = Failure::NoEndpoints;
        failure.count(&shared.metrics);
        report(None, Some(&failure));
        reset(down);
        return;
    };
    let made = match up {
        Up::Ahead { up, said } => Ok((up, said)),
        Up::Dial => connect_tcp(addr, &shared.config.connect)
            .await
            .map(|up| (up, Bytes::new())),
        Up::Failed(e) => Err(e),
    };
    let (mut up, said) = match made {
        Ok(made) => made,
        Err(e) => {
            // The client sees a reset, as if it had dialed the target itself.
            let failure = Failure::Upstream(&e);
            failure.count(&shared.metrics);
            report(Some(addr), Some(&failure));
            reset(down);
            return;
        }
    };
    report(Some(addr), None);
    if !prefix.is_empty() {
        if let Err(e) = up.write_all(&prefix).await {
            tracing::debug!(%peer, %dst, error = %e, "opaque upstream write failed");
            reset(down);
            return;
        }
        conn.add_bytes(prefix.len() as u64, 0);
    }
    // Neither is kept for the connection's life.
    drop(prefix);
    if !said.is_empty() {
        if let Err(e) = down.write_all(&said).await {
            tracing::debug!(%peer, %dst, error = %e, "opaque client write failed");
            return;
        }
        conn.add_bytes(0, said.len() as u64);
    }
    drop(said);
    // Half-close is honoured: EOF from one side is passed on as a shutdown of
    // the other's write side, and the copy goes on the other way.
    let mut down = CountedIo::new(&mut down, conn);
    match tokio::io::copy_bidirectional(&mut down, &mut up).await {
        Ok((from_client, from_server)) => {
            tracing::trace!(%peer, %dst, from_client, from_server, "opaque connection closed");
        }
        Err(e) => tracing::debug!(%peer, %dst, error = %e, "opaque connection ended with an error"),
    }
}

/// Closes with RST rather than FIN, so the client sees a failed connection
/// instead of an empty successful one.
pub(crate) fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}
