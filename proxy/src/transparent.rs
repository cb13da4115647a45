//! Transparent mode: iptables (`divert-proxy init`) redirects the pod's outbound TCP
//! to one listener and the TCP coming into the pod to another, and the proxy
//! recovers where each connection was going from `SO_ORIGINAL_DST`. After that, everything is shared with bind mode
//! ([`crate::conn::serve_detected`]).

use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;

use divert_core::direction::Direction;
use nix::sys::socket::{SockaddrIn, SockaddrIn6, getsockopt, sockopt};
use tokio::net::TcpStream;

use crate::conn::{Conn, NotHttp, serve_detected};
use crate::detect;
use crate::limits::Timeout;
use crate::listen::Held;
use crate::protocol::Protocol;
use crate::shared::Shared;

/// Where an accepted connection was going before iptables redirected it.
///
/// A connection that was not redirected has no NAT record (`ENOENT`), or one
/// whose original destination is the socket's own address.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    if local.is_ipv4() {
        let sin = getsockopt(stream, sockopt::OriginalDst)?;
        Ok(SocketAddr::V4(SocketAddrV4::from(SockaddrIn::from(sin))))
    } else {
        let sin6 = getsockopt(stream, sockopt::Ip6tOriginalDst)?;
        Ok(SocketAddr::V6(SocketAddrV6::from(SockaddrIn6::from(sin6))))
    }
}

/// Serves one redirected connection, which came in on `direction`'s listener.
pub async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    direction: Direction,
    shared: Arc<Shared>,
    _held: Held,
) {
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let dst = match original_dst(&stream) {
        Ok(dst) => dst,
        Err(e) => {
            tracing::warn!(%peer, %local, error = %e, "no original destination: the connection was not redirected by iptables (dialing the proxy's port directly?); resetting it");
            crate::opaque::reset(stream);
            return;
        }
    };
    if dst == local {
        // Forwarding it would dial this listener again, and again.
        tracing::warn!(%peer, %dst, "refusing a connection to the proxy's own listener (redirect loop); the proxy's port must not be dialed directly, and its own traffic must be exempt from redirection (divert-proxy init --proxy-uid)");
        crate::opaque::reset(stream);
        return;
    }
    let settings = &shared.config.detect;
    let (protocol, prefix) = if settings.is_opaque_port(dst.port()) {
        (Protocol::Opaque, bytes::Bytes::new())
    } else {
        match detect::detect(&mut stream, Some(settings.timeout)).await {
            Ok(found) => {
                if found.timed_out {
                    shared.metrics.timeout(Timeout::Detect);
                }
                if found.timed_out && found.prefix.is_empty() {
                    // Not a word: silence alone does not tell.
                    let conn = Conn {
                        dst,
                        peer,
                        direction,
                    };
                    // Boxed: a rare path, kept out of every connection's
                    // task (listen.rs's memory budget).
                    return Box::pin(crate::silent::serve(stream, conn, shared)).await;
                }
                (found.protocol, found.prefix)
            }
            Err(e) => {
                tracing::debug!(%peer, %dst, error = %e, "connection failed during protocol detection");
                return;
            }
        }
    };
    tracing::trace!(%peer, %dst, protocol = protocol.as_str(), "detected");
    let conn = Conn {
        dst,
        peer,
        direction,
    };
    serve_detected(stream, protocol, prefix, NotHttp::PassThrough, conn, shared).await;
}
