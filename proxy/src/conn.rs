//! A client connection once accepted and detected: what it is known by
//! ([`Conn`]), and the one place that hands it to the path for what it
//! speaks ([`serve_detected`]), for bind and transparent mode alike.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use divert_core::direction::Direction;
use futures_util::future::Either;
use tokio::net::TcpStream;

use crate::detect::Prefixed;
use crate::protocol::Protocol;
use crate::shared::Shared;

/// What every request of a connection is routed by, besides itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    /// Where the client was going: the original destination of a
    /// redirected connection, or the address a bind-mode listener took it
    /// on.
    pub dst: SocketAddr,
    /// The client.
    pub peer: SocketAddr,
    /// A pod's outbound traffic, or traffic into it.
    pub direction: Direction,
}

/// What a connection that is not HTTP gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotHttp {
    /// Passed through as opaque TCP (transparent mode: any protocol may be
    /// redirected to the proxy).
    PassThrough,
    /// Answered by the HTTP stack, which refuses it (400) and closes (bind
    /// mode: clients dial the proxy's addresses to speak HTTP).
    Refuse,
}

/// Serves a connection whose first bytes (`prefix`) said it speaks
/// `protocol`: HTTP/1.1 on the fast path ([`crate::h1`]), HTTP/2 and gRPC
/// on the general stack ([`crate::http`]), anything else as `not_http`
/// says ([`crate::opaque`]).
///
/// Returns the path's future itself rather than one that awaits it: each
/// layer of `async fn` keeps its arguments for as long as it runs, and this
/// future is part of every connection's task. The HTTP/2 and opaque paths
/// are boxed, so the task is as small as the HTTP/1.1 path's idle state
/// ([`crate::h1::serve`]), not as large as the largest path.
pub fn serve_detected(
    stream: TcpStream,
    protocol: Protocol,
    prefix: Bytes,
    not_http: NotHttp,
    conn: Conn,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send {
    let boxed: Pin<Box<dyn Future<Output = ()> + Send>> = match (protocol, not_http) {
        (Protocol::Http1, _) => {
            return Either::Left(crate::h1::serve(stream, prefix, conn, shared));
        }
        (Protocol::Http2 | Protocol::Grpc, _)
        | (Protocol::Tls | Protocol::Opaque, NotHttp::Refuse) => {
            let io = Prefixed::new(prefix, stream);
            Box::pin(crate::http::serve_connection(io, protocol, conn, shared))
        }
        (Protocol::Tls | Protocol::Opaque, NotHttp::PassThrough) => {
            Box::pin(crate::opaque::serve(stream, prefix, protocol, conn, shared))
        }
    };
    Either::Right(boxed)
}
