//! Upstream connections: one pool per endpoint address.
//!
//! HTTP/1.1 connections are kept alive and reused one request at a time; an
//! HTTP/2 connection is shared by every request to the endpoint (multiplexed).
//! The pool lives in the routing table's [`crate::table::Endpoint`], so finding
//! it costs no map lookup or lock per request; idle HTTP/1 connections sit in a
//! lock-free queue.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use futures_util::TryFutureExt as _;
use futures_util::future::{Either, ready};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::BodyError;
pub use crate::body::RequestBody;

mod h2;

/// Settings for connecting to upstreams.
#[derive(Debug, Clone)]
pub struct ConnectSettings {
    pub connect_timeout: Duration,
    /// Idle HTTP/1 connections kept per endpoint; more are closed.
    pub max_idle_per_endpoint: usize,
    /// How often an HTTP/2 upstream connection is pinged (30 s), and how
    /// long the answer may take before the connection is closed (10 s), as
    /// hyper's client was set.
    pub h2_ping_interval: Duration,
    pub h2_ping_timeout: Duration,
}

impl Default for ConnectSettings {
    fn default() -> Self {
        ConnectSettings {
            connect_timeout: Duration::from_secs(1),
            max_idle_per_endpoint: 64,
            h2_ping_interval: Duration::from_secs(30),
            h2_ping_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a request could not be sent upstream (the response is then ours).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[source] hyper::Error),
    #[error("request failed: {0}")]
    Request(#[source] hyper::Error),
    /// The HTTP/1.1 fast path's exchange failed on the wire.
    #[error("request failed: {0}")]
    Exchange(#[source] io::Error),
    #[error(transparent)]
    Response(crate::h1::head::BadResponse),
    #[error("HTTP/2 handshake failed: {0}")]
    H2Handshake(#[source] ::h2::Error),
    #[error("request failed: {0}")]
    H2(#[source] ::h2::Error),
    /// The client's body failed while it was being sent (HTTP/2; hyper
    /// reports it as the request's error on HTTP/1).
    #[error("{0}")]
    Body(#[source] BodyError),
}

#[derive(Default)]
pub struct Pool {
    /// Idle connections of hyper's client (the general stack).
    h1_idle: SegQueue<http1::SendRequest<RequestBody>>,
    /// Idle connections of the HTTP/1.1 fast path ([`crate::h1`]): no
    /// task of their own while idle or in use.
    raw_idle: SegQueue<Raw>,
    /// Idle HTTP/1.1 connections in both queues: one count, so that
    /// `--max-idle-per-endpoint` bounds them together.
    idle_count: AtomicUsize,
    h2: ArcSwapOption<h2::Connection>,
    /// Held only while an HTTP/2 connection is being made, so that concurrent
    /// first requests share one connection instead of racing to open many.
    h2_connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle_http1", &self.idle_count.load(Ordering::Relaxed))
            .field("h2", &self.h2.load().is_some())
            .finish()
    }
}

async fn connect(
    addr: SocketAddr,
    s: &ConnectSettings,
) -> Result<TokioIo<TcpStream>, UpstreamError> {
    connect_tcp(addr, s).await.map(TokioIo::new)
}

/// Opens a TCP connection to `addr` within the connect timeout.
pub async fn connect_tcp(
    addr: SocketAddr,
    s: &ConnectSettings,
) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(s.connect_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(UpstreamError::Connect(e)),
        Err(_) => return Err(UpstreamError::ConnectTimeout(s.connect_timeout)),
    };
    // Requests are small writes that must leave at once.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

impl Pool {
    /// Sends an HTTP/1.x request on an idle connection or a new one.
    pub async fn send_http1(
        self: &Arc<Self>,
        addr: SocketAddr,
        settings: &ConnectSettings,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let max_idle = settings.max_idle_per_endpoint;
        while let Some(mut sender) = self.pop_idle() {
            if !sender.is_ready() {
                continue;
            }
            // The server may close an idle connection just as a request goes
            // out on it. A request that was not sent comes back; one that was
            // sent can be sent again only if it has no body and is safe to repeat.
            let replay = replay_of(&req);
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.with_recycle(resp, sender, max_idle)),
                Err(mut e) => match (e.take_message(), replay) {
                    (Some(r), _) => req = r,
                    // Any failure on a reused connection means no response
                    // came (EOF, or a reset when the close and the request
                    // crossed); a safe, bodiless request is sent again.
                    (None, Some(r)) => {
                        tracing::debug!(upstream = %addr, error = %e.error(), "idle connection failed under a request; sending it again");
                        req = r;
                    }
                    (None, _) => return Err(UpstreamError::Request(e.into_error())),
                },
            }
        }
        let io = connect(addr, settings).await?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/1 connection ended");
            }
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(UpstreamError::Request)?;
        Ok(self.with_recycle(resp, sender, max_idle))
    }

    /// Wraps a response so its connection returns to the pool when the body
    /// has been read to the end.
    fn with_recycle(
        self: &Arc<Self>,
        resp: Response<Incoming>,
        sender: http1::SendRequest<RequestBody>,
        max_idle: usize,
    ) -> Response<UpstreamBody> {
        resp.map(|b| UpstreamBody {
            inner: Inner::Http1(b),
            recycle: Some(Recycle {
                pool: self.clone(),
                sender,
                max_idle,
            }),
        })
    }

    /// Sends an HTTP/2 request on the endpoint's shared connection.
    ///
    /// When the connection is up (every request but the first), the stream
    /// is opened and the head sent here, before the returned future is
    /// first polled, and that future holds only the stream ([`h2`]).
    /// HTTP/2 moves each request's future several times on its way to its
    /// stream's task, so every byte kept in it is copied per request.
    /// Making the connection, and resending a request a closing connection
    /// did not take, are boxed (rare).
    pub fn send_http2<'a>(
        &'a self,
        addr: SocketAddr,
        settings: &'a ConnectSettings,
        req: Request<RequestBody>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'a {
        type Rare<'a> = Pin<
            Box<dyn Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + Send + 'a>,
        >;
        let Some(conn) = self.h2_connection() else {
            let first: Rare<'a> = Box::pin(self.resend_h2(addr, settings, req));
            return Either::Right(first);
        };
        match conn.send(req) {
            Ok(exchange) => Either::Left(exchange.map_ok(of_h2)),
            // The connection went away (GOAWAY, reset) before the request
            // left: it is safe to send it once more on a fresh connection.
            Err(h2::Refused {
                request: Some(req), ..
            }) => {
                self.h2.compare_and_swap(&Some(conn), None);
                let resend: Rare<'a> = Box::pin(self.resend_h2(addr, settings, req));
                Either::Right(resend)
            }
            Err(h2::Refused { error, .. }) => {
                let failed: Rare<'a> = Box::pin(ready(Err(UpstreamError::H2(error))));
                Either::Right(failed)
            }
        }
    }

    /// Sends a request on the endpoint's HTTP/2 connection, made first if
    /// there is none: the first request, or one that a closing connection
    /// did not take.
    async fn resend_h2(
        &self,
        addr: SocketAddr,
        settings: &ConnectSettings,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let conn = match self.h2_connection() {
            Some(conn) => conn,
            None => self.new_h2_connection(addr, settings).await?,
        };
        match conn.send(req) {
            Ok(exchange) => exchange.await.map(of_h2),
            Err(refused) => Err(UpstreamError::H2(refused.error)),
        }
    }

    /// Makes the endpoint's HTTP/2 connection, unless a concurrent request
    /// made it first.
    async fn new_h2_connection(
        &self,
        addr: SocketAddr,
        settings: &ConnectSettings,
    ) -> Result<Arc<h2::Connection>, UpstreamError> {
        let _connecting = self.h2_connecting.lock().await;
        if let Some(c) = self.h2_connection() {
            return Ok(c);
        }
        let io = connect_tcp(addr, settings).await?;
        let conn = Arc::new(h2::Connection::handshake(io, addr, settings).await?);
        self.h2.store(Some(conn.clone()));
        Ok(conn)
    }

    /// The endpoint's HTTP/2 connection, unless it has ended.
    fn h2_connection(&self) -> Option<Arc<h2::Connection>> {
        self.h2.load_full().filter(|c| !c.is_closed())
    }

    fn pop_idle(&self) -> Option<http1::SendRequest<RequestBody>> {
        let s = self.h1_idle.pop()?;
        self.idle_count.fetch_sub(1, Ordering::Relaxed);
        Some(s)
    }

    /// Returns an HTTP/1 connection to the pool once it can take a request.
    fn recycle(self: &Arc<Self>, sender: http1::SendRequest<RequestBody>, max_idle: usize) {
        if sender.is_ready() {
            self.push_idle(sender, max_idle);
            return;
        }
        // Not yet idle (the connection task has not caught up, or it was
        // upgraded or failed and never will be): wait for it off the hot path.
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut sender = sender;
            if sender.ready().await.is_ok()
                && let Some(pool) = pool.upgrade()
            {
                pool.push_idle(sender, max_idle);
            }
        });
    }

    fn push_idle(&self, sender: http1::SendRequest<RequestBody>, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        if self.take_idle_place(max_idle) {
            self.h1_idle.push(sender);
        }
    }

    /// Takes a place among the endpoint's idle connections, if one of the
    /// `max_idle` is free; past the bound a connection is dropped (closed).
    fn take_idle_place(&self, max_idle: usize) -> bool {
        if self.idle_count.fetch_add(1, Ordering::Relaxed) >= max_idle {
            self.idle_count.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// An idle fast-path connection that the upstream has not closed, if
    /// there is one. The check costs no syscall unless the reactor saw the
    /// socket become readable since its last read: an idle HTTP/1.1
    /// connection has nothing to say but its close.
    pub fn pop_raw(&self) -> Option<Raw> {
        while let Some(mut raw) = self.raw_idle.pop() {
            self.idle_count.fetch_sub(1, Ordering::Relaxed);
            match raw.stream.try_read_buf(&mut raw.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(raw),
                // Closed (0), failed, or bytes nobody asked for.
                _ => {}
            }
        }
        None
    }

    /// Returns a fast-path connection to the pool, past the bound closing it.
    pub fn push_raw(&self, raw: Raw, max_idle: usize) {
        if !raw.buf.is_empty() {
            return;
        }
        if self.take_idle_place(max_idle) {
            self.raw_idle.push(raw);
        }
    }
}

/// An upstream connection of the HTTP/1.1 fast path, with its read buffer
/// (empty between exchanges).
#[derive(Debug)]
pub struct Raw {
    pub stream: TcpStream,
    pub buf: bytes::BytesMut,
}

/// A copy of a request that may be sent again: no body, and a method RFC 9110
/// calls idempotent. `None` for any other.
fn replay_of(req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    if !crate::semantics::is_idempotent(req.method().as_str().as_bytes())
        || !req.body().is_end_stream()
    {
        return None;
    }
    let mut copy = Request::new(RequestBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// A response body from upstream. An HTTP/1 one carries its connection, which
/// goes back to the pool as soon as the body has been read to the end, with
/// no task of its own in the common case.
pub struct UpstreamBody {
    inner: Inner,
    recycle: Option<Recycle>,
}

enum Inner {
    /// From hyper's HTTP/1 client.
    Http1(Incoming),
    Http2(h2::H2Body),
}

/// An HTTP/2 response, with its body as the proxy sends it on: its
/// connection is shared, never recycled.
fn of_h2(resp: Response<h2::H2Body>) -> Response<UpstreamBody> {
    resp.map(|b| UpstreamBody {
        inner: Inner::Http2(b),
        recycle: None,
    })
}

/// Why an upstream's response body broke off.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error(transparent)]
    Http1(hyper::Error),
    #[error(transparent)]
    Http2(::h2::Error),
}

impl Inner {
    fn is_end_stream(&self) -> bool {
        match self {
            Inner::Http1(b) => b.is_end_stream(),
            Inner::Http2(b) => b.is_end_stream(),
        }
    }
}

struct Recycle {
    pool: Arc<Pool>,
    sender: http1::SendRequest<RequestBody>,
    max_idle: usize,
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let Some(r) = self.recycle.take() {
            r.pool.recycle(r.sender, r.max_idle);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Http1(b) => Pin::new(b).poll_frame(cx).map_err(UpstreamBodyError::Http1),
            Inner::Http2(b) => Pin::new(b).poll_frame(cx).map_err(UpstreamBodyError::Http2),
        };
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.finish(),
            // A broken body leaves the connection unusable.
            Poll::Ready(Some(Err(_))) => this.recycle = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Http1(b) => b.size_hint(),
            Inner::Http2(b) => b.size_hint(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // An empty body is never polled; a body dropped halfway is not
        // reusable (hyper closes that connection).
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to a listener of its own, and what accepted it.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    /// A hyper client connection, ready for a request, and its peer.
    async fn idle_sender() -> (http1::SendRequest<RequestBody>, TcpStream) {
        let (io, peer) = connected().await;
        let (sender, conn) = http1::handshake::<_, RequestBody>(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn);
        (sender, peer)
    }

    #[tokio::test]
    async fn both_kinds_of_idle_connection_share_one_bound() {
        let pool = Pool::default();
        let (raw, _raw_peer) = connected().await;
        pool.push_raw(
            Raw {
                stream: raw,
                buf: bytes::BytesMut::new(),
            },
            1,
        );
        let (sender, _peer) = idle_sender().await;
        // The one place is the fast path's connection's: hyper's is closed.
        pool.push_idle(sender, 1);
        assert_eq!(pool.raw_idle.len(), 1);
        assert!(pool.h1_idle.is_empty());
        assert_eq!(pool.idle_count.load(Ordering::Relaxed), 1);

        // Taken back, the place is free for either kind.
        assert!(pool.pop_raw().is_some());
        assert_eq!(pool.idle_count.load(Ordering::Relaxed), 0);
        let (sender, _peer) = idle_sender().await;
        pool.push_idle(sender, 1);
        assert_eq!(pool.h1_idle.len(), 1);
    }

    /// An HTTP/2 upstream answering each request with the number of the
    /// connection it came on, and a switch that sends each open connection
    /// GOAWAY.
    async fn h2_upstream() -> (SocketAddr, Arc<tokio::sync::Notify>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let goaway = Arc::new(tokio::sync::Notify::new());
        let switch = goaway.clone();
        tokio::spawn(async move {
            for n in 1u32.. {
                let (io, _) = listener.accept().await.unwrap();
                let svc = hyper::service::service_fn(move |_req| async move {
                    let body = http_body_util::Full::new(Bytes::from(n.to_string()));
                    Ok::<_, std::convert::Infallible>(Response::new(body))
                });
                let goaway = goaway.clone();
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(TokioIo::new(io), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => return,
                        () = goaway.notified() => conn.as_mut().graceful_shutdown(),
                    }
                    let _ = conn.await;
                });
            }
        });
        (addr, switch)
    }

    /// What the upstream answers to a request the pool sends over HTTP/2.
    async fn h2_answer(pool: &Pool, addr: SocketAddr) -> String {
        h2_get(pool, addr, &ConnectSettings::default()).await.1
    }

    /// The status and body of a GET the pool sends over HTTP/2 with
    /// `settings`.
    async fn h2_get(pool: &Pool, addr: SocketAddr, settings: &ConnectSettings) -> (u16, String) {
        use http_body_util::BodyExt as _;
        let req = Request::builder()
            .version(http::Version::HTTP_2)
            .uri(format!("http://{addr}/"))
            .body(RequestBody::empty())
            .unwrap();
        let resp = pool.send_http2(addr, settings, req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn http2_requests_share_a_connection_and_a_closed_one_is_replaced() {
        let (addr, goaway) = h2_upstream().await;
        let pool = Pool::default();
        assert_eq!(h2_answer(&pool, addr).await, "1");
        assert_eq!(h2_answer(&pool, addr).await, "1");
        goaway.notify_waiters();
        // Bounded: the client's connection task reads the GOAWAY and ends.
        tokio::time::timeout(Duration::from_secs(10), async {
            while pool.h2_connection().is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the upstream's GOAWAY closes the pool's connection");
        assert_eq!(h2_answer(&pool, addr).await, "2");
        assert_eq!(h2_answer(&pool, addr).await, "2");
    }

    /// Pings every 50 ms, each to be answered within 500 ms.
    fn quick_pings() -> ConnectSettings {
        ConnectSettings {
            h2_ping_interval: Duration::from_millis(50),
            h2_ping_timeout: Duration::from_millis(500),
            ..ConnectSettings::default()
        }
    }

    /// An HTTP/2 upstream at the frame level that answers the first
    /// request (`:status 200`) and then reads everything and answers
    /// nothing, PINGs included; it ends when the proxy closes.
    async fn pongless_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            // Its SETTINGS (empty), and the ack of the client's.
            s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0])
                .await
                .unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut answered = false;
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
                // The client's preface, then frames: answer the first
                // HEADERS (stream 1) with HEADERS `:status 200` (HPACK 8)
                // and END_STREAM.
                let mut at = 24;
                while !answered && got.len() >= at + 9 {
                    let len = usize::from(got[at]) << 16
                        | usize::from(got[at + 1]) << 8
                        | usize::from(got[at + 2]);
                    if got[at + 3] == 1 {
                        s.write_all(&[0, 0, 1, 1, 5, 0, 0, 0, 1, 0x88])
                            .await
                            .unwrap();
                        answered = true;
                    }
                    at += 9 + len;
                }
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn an_upstream_that_stops_answering_pings_is_let_go() {
        let (addr, upstream) = pongless_upstream().await;
        let pool = Pool::default();
        assert_eq!(h2_get(&pool, addr, &quick_pings()).await.0, 200);
        // Bounded: a ping at 50 ms, no pong by 550 ms.
        tokio::time::timeout(Duration::from_secs(10), upstream)
            .await
            .expect("the proxy closes the connection whose pings go unanswered")
            .unwrap();
        assert!(pool.h2_connection().is_none());
    }

    #[tokio::test]
    async fn an_upstream_that_answers_pings_keeps_its_connection() {
        let (addr, _goaway) = h2_upstream().await;
        let pool = Pool::default();
        assert_eq!(h2_get(&pool, addr, &quick_pings()).await, (200, "1".into()));
        // Thirty pings, each answered: a connection whose pongs went
        // unnoticed would be closed 550 ms in.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(pool.h2_connection().is_some(), "answered pings keep it");
        assert_eq!(h2_answer(&pool, addr).await, "1");
    }

    /// Making a connection is boxed, off every request's future, and the
    /// request leaves before the future is polled: an HTTP/2 request's
    /// future is moved several times on its way to its stream's task, and
    /// carrying a connect and a handshake, or the request, made it
    /// kilobytes (BENCHMARKS.md, "HTTP/2 per request").
    #[test]
    fn a_request_future_does_not_carry_the_connection_it_may_make() {
        let pool = Arc::new(Pool::default());
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let settings = ConnectSettings::default();
        let send = std::mem::size_of_val(&pool.send_http2(
            addr,
            &settings,
            Request::new(RequestBody::empty()),
        ));
        assert!(send <= 512, "send_http2's future takes {send} bytes");
    }
}
