//! HTTP/2 to an upstream, on the h2 crate directly.
//!
//! hyper's HTTP/2 client hands each request to the connection's task
//! through a channel, and spawns a task per request to carry the response
//! back through another: per request, three allocations and a task that
//! the musl build pays for dearly (BENCHMARKS.md, "HTTP/2 per request").
//! Here the request's own future opens the stream, sends what the client
//! has of the body, and waits for the response head; only a body still
//! coming when the response arrives gets a task of its own.
//!
//! What hyper's client did that this one keeps: the same settings (no
//! server push, 16 KiB header lists, 1 MiB windows per stream and 4 MiB per
//! connection), a body sent only as the peer's window allows, reset streams
//! on both sides, and keep-alive pings that close a connection whose peer
//! stopped answering.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{self, ResponseFuture, SendRequest};
use h2::{Ping, RecvStream, SendStream};
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;

use super::{ConnectSettings, RequestBody, UpstreamError};

/// One HTTP/2 connection to an endpoint, shared by every request to it.
pub struct Connection {
    send: SendRequest<Bytes>,
    /// Set by the connection's task when the connection has ended.
    closed: Arc<AtomicBool>,
}

impl Connection {
    /// Makes the connection over `io` and starts its task.
    pub async fn handshake(
        io: TcpStream,
        addr: SocketAddr,
        settings: &ConnectSettings,
    ) -> Result<Connection, UpstreamError> {
        let (send, conn) = client::Builder::new()
            .enable_push(false)
            .max_header_list_size(16 << 10)
            .max_send_buffer_size(1 << 20)
            .initial_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(UpstreamError::H2Handshake)?;
        let closed = Arc::new(AtomicBool::new(false));
        let pings = Pings {
            interval: settings.h2_ping_interval,
            timeout: settings.h2_ping_timeout,
        };
        tokio::spawn(drive(conn, pings, closed.clone(), addr));
        Ok(Connection { send, closed })
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Opens a stream for `req` and sends its head. The request comes back
    /// when the connection cannot take a new stream (it has ended, or the
    /// peer sent GOAWAY): it is then safe to send it on another.
    #[expect(
        clippy::result_large_err,
        reason = "the request comes back as it went in; matched at once by the caller"
    )]
    pub fn send(&self, req: Request<RequestBody>) -> Result<Exchange, Refused> {
        let mut send = self.send.clone();
        // A fresh handle has no stream of its own pending, so this only
        // reports the connection's state, and needs no wake-up.
        if let Poll::Ready(Err(e)) = send.poll_ready(&mut Context::from_waker(Waker::noop())) {
            return Err(Refused {
                request: Some(req),
                error: e,
            });
        }
        let (head, body) = req.into_parts();
        let end = body.is_end_stream();
        match send.send_request(Request::from_parts(head, ()), end) {
            Ok((response, stream)) => Ok(Exchange {
                response,
                pipe: (!end).then_some(Pipe {
                    body,
                    stream,
                    held: None,
                }),
            }),
            Err(error) => Err(Refused {
                request: None,
                error,
            }),
        }
    }
}

/// A request the connection did not take, given back if it never left.
pub struct Refused {
    pub request: Option<Request<RequestBody>>,
    pub error: h2::Error,
}

/// How often the peer is pinged, and how long its answer may take.
struct Pings {
    interval: Duration,
    timeout: Duration,
}

/// Runs the connection until it ends, pinging the peer at each interval;
/// a pong missing for the timeout ends it.
async fn drive(
    mut conn: client::Connection<TcpStream, Bytes>,
    every: Pings,
    closed: Arc<AtomicBool>,
    addr: SocketAddr,
) {
    let mut pings = conn.ping_pong();
    let mut waiting_pong = false;
    let ended = loop {
        let wait = if waiting_pong {
            every.timeout
        } else {
            every.interval
        };
        let pong = std::future::poll_fn(|cx| match (&mut pings, waiting_pong) {
            (Some(p), true) => p.poll_pong(cx),
            _ => Poll::Pending,
        });
        tokio::select! {
            r = &mut conn => break r.map_err(|e| e.to_string()),
            r = pong => match r {
                Ok(_) => waiting_pong = false,
                Err(e) => break Err(e.to_string()),
            },
            () = tokio::time::sleep(wait) => {
                if waiting_pong {
                    break Err(format!("no answer to a ping within {:?}", every.timeout));
                }
                if let Some(p) = &mut pings {
                    waiting_pong = p.send_ping(Ping::opaque()).is_ok();
                }
            }
        }
    };
    closed.store(true, Ordering::Release);
    if let Err(e) = ended {
        tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended");
    }
}

/// One request on its way: the client's body still being sent, and the
/// response head awaited.
pub struct Exchange {
    response: ResponseFuture,
    pipe: Option<Pipe>,
}

impl Future for Exchange {
    type Output = Result<Response<H2Body>, UpstreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(pipe) = &mut this.pipe
            && let Poll::Ready(sent) = pipe.poll_send(cx)
        {
            this.pipe = None;
            match sent {
                // The client's fault: answered as such (400 or 408).
                Err(e @ UpstreamError::Body(_)) => return Poll::Ready(Err(e)),
                // The stream ended on the upstream's side: the response
                // may still come (a server may answer, then reset the
                // upload with NO_ERROR, RFC 9113 §8.1), or the response
                // future reports the reset.
                Err(e) => tracing::debug!(error = %e, "request body cut short by the upstream"),
                Ok(()) => {}
            }
        }
        let resp = ready!(Pin::new(&mut this.response).poll(cx)).map_err(UpstreamError::H2)?;
        // The response came first (a server may answer before reading the
        // whole request): the rest of the body goes on by itself.
        if let Some(mut pipe) = this.pipe.take() {
            tokio::spawn(async move {
                if let Err(e) = std::future::poll_fn(|cx| pipe.poll_send(cx)).await {
                    tracing::debug!(error = %e, "request body after the response head failed");
                }
            });
        }
        Poll::Ready(Ok(resp.map(|recv| H2Body {
            recv,
            data_done: false,
        })))
    }
}

/// The client's body, sent on the stream as the peer's window allows.
struct Pipe {
    body: RequestBody,
    stream: SendStream<Bytes>,
    /// A piece taken from the body, waiting for window, and whether it is
    /// the last.
    held: Option<(Bytes, bool)>,
}

impl Pipe {
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        loop {
            // Registered while waiting for the body or for window, so a
            // reset from the peer wakes this up.
            if let Poll::Ready(reason) = self.stream.poll_reset(cx) {
                let e = reason.map_or_else(|e| e, h2::Error::from);
                return Poll::Ready(Err(UpstreamError::H2(e)));
            }
            if let Some((_, last)) = &self.held {
                let last = *last;
                while self.stream.capacity() == 0 {
                    match ready!(self.stream.poll_capacity(cx)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Poll::Ready(Err(UpstreamError::H2(e))),
                        // No longer sending: reset, or ended.
                        None => return Poll::Ready(Ok(())),
                    }
                }
                let Some((data, _)) = self.held.take() else {
                    continue;
                };
                self.stream
                    .send_data(data, last)
                    .map_err(UpstreamError::H2)?;
                if last {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The next piece is taken before any window is asked for: a
            // claim held while the client is silent could starve the
            // connection's other streams.
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let last = self.body.is_end_stream();
                        if data.is_empty() {
                            self.stream
                                .send_data(data, last)
                                .map_err(UpstreamError::H2)?;
                            if last {
                                return Poll::Ready(Ok(()));
                            }
                        } else {
                            // h2 raises the claim to what is buffered.
                            self.stream.reserve_capacity(1);
                            self.held = Some((data, last));
                        }
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.stream.reserve_capacity(0);
                            self.stream
                                .send_trailers(trailers)
                                .map_err(UpstreamError::H2)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    self.stream.send_reset(h2::Reason::CANCEL);
                    return Poll::Ready(Err(UpstreamError::Body(e)));
                }
                None => {
                    self.stream
                        .send_data(Bytes::new(), true)
                        .map_err(UpstreamError::H2)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A response body from an HTTP/2 upstream. What it reads is given back
/// to the peer's window at once: the client's side has its own.
pub struct H2Body {
    recv: RecvStream,
    data_done: bool,
}

impl H2Body {
    pub fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        let trailers: Option<HeaderMap> = ready!(this.recv.poll_trailers(cx))?;
        Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
