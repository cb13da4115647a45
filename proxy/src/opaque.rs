//! Opaque TCP and TLS: no request to read a key from, so the routing rule runs
//! once per connection with the proxy's own-namespace default only (DESIGN.md
//! step 6), and the bytes are spliced both ways untouched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::Shared;
use crate::detect::Protocol;
use crate::http::OrDash;
use crate::metrics::{ConnProtocol, CountedIo, Decision, UpstreamFailure};
use crate::table::Target;
use crate::tap;
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
    let started = Instant::now();
    let conn = shared.metrics.connection(match protocol {
        Protocol::Tls => ConnProtocol::Tls,
        _ => ConnProtocol::Opaque,
    });
    // Names are copied out of the table only for a tap watcher.
    let tapped = shared.tap.is_watched();
    let (addr, target, reason, target_ns, service) = {
        let table = shared.tables.load();
        let route = table.route(dst, None, shared.own_namespace());
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
        let (ns, service) = names.unwrap_or_default();
        (addr, route.describe(), route.reason, ns, service)
    };
    let report = |endpoint: Option<SocketAddr>, error: Option<&dyn std::fmt::Display>| {
        match error {
            Some(e) => {
                tracing::info!(target: "divert::decision", protocol = %protocol.as_str(), %peer, %dst, %target, endpoint = %OrDash(endpoint), decision = %Decision::of(reason).as_str(), %reason, error = %e, "opaque connection failed; resetting the client")
            }
            None => {
                tracing::debug!(target: "divert::decision", protocol = %protocol.as_str(), %peer, %dst, %target, endpoint = %OrDash(endpoint), decision = %Decision::of(reason).as_str(), %reason, "routed")
            }
        }
        if shared.tap.is_watched() {
            let error = error.map(ToString::to_string);
            let latency = started.elapsed();
            shared.tap.publish(&tap::Record {
                at: SystemTime::now()
                    .checked_sub(latency)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                protocol: protocol.as_str(),
                method: "",
                authority: "",
                path: "",
                key: None,
                original_dst: dst,
                target: &target,
                target_namespace: &target_ns,
                service: &service,
                endpoint,
                reason,
                status: 0,
                latency,
                error: error.as_deref(),
                baggage_rejected: None,
            });
        }
    };
    let Some(addr) = addr else {
        shared
            .metrics
            .upstream_failure(UpstreamFailure::NoEndpoints);
        report(None, Some(&"the service has no endpoints"));
        reset(down);
        return;
    };
    let mut up = match connect_tcp(addr, &shared.config.connect).await {
        Ok(up) => up,
        Err(e) => {
            // The client sees a reset, as if it had dialed the target itself.
            shared.metrics.upstream_failure(UpstreamFailure::of(&e));
            report(Some(addr), Some(&e));
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
