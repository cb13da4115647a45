//! Opaque TCP and TLS: no request to read a key from, so the routing rule runs
//! once per connection with the proxy's own-namespace default only (DESIGN.md
//! step 6), and the bytes are spliced both ways untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::Shared;
use crate::detect::Protocol;
use crate::table::Target;
use crate::upstream::connect_tcp;

/// Routes one opaque connection and copies bytes both ways until both sides
/// have closed. `prefix` holds what detection already read from the client.
pub async fn serve(
    mut down: TcpStream,
    prefix: Bytes,
    dst: SocketAddr,
    peer: SocketAddr,
    protocol: Protocol,
    shared: Arc<Shared>,
) {
    let (addr, target, reason) = {
        let table = shared.tables.load();
        let route = table.route(dst, None, shared.own_namespace());
        let addr = match &route.target {
            Target::Service { port, .. } => port.endpoints.pick().map(|e| e.addr),
            Target::Passthrough(addr) => Some(*addr),
        };
        (addr, route.describe(), route.reason)
    };
    let Some(addr) = addr else {
        tracing::info!(%peer, %dst, %target, "no endpoints for an opaque connection; resetting it");
        reset(down);
        return;
    };
    tracing::debug!(%peer, %dst, %target, endpoint = %addr, %reason, protocol = protocol.as_str(), "route");
    let mut up = match connect_tcp(addr, &shared.config.connect).await {
        Ok(up) => up,
        Err(e) => {
            // The client sees a reset, as if it had dialed the target itself.
            tracing::info!(%peer, %dst, %target, endpoint = %addr, error = %e, "opaque upstream connect failed; resetting the client");
            reset(down);
            return;
        }
    };
    if !prefix.is_empty()
        && let Err(e) = up.write_all(&prefix).await
    {
        tracing::debug!(%peer, %dst, error = %e, "opaque upstream write failed");
        reset(down);
        return;
    }
    // Half-close is honoured: EOF from one side is passed on as a shutdown of
    // the other's write side, and the copy goes on the other way.
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
