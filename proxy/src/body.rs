//! Request bodies as the proxy forwards them upstream: the client's,
//! streamed, with a bound on how long it may stall between two pieces; or
//! none (a request sent again after its first connection failed).
//!
//! A failure here is the client's, not the upstream's: [`BodyError`] lets
//! the request path tell the two apart when the upstream request fails
//! (400 or 408 to the client, instead of a 502 blamed on the upstream).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::limits::Timeout;
use crate::metrics::Metrics;

/// Why the client's body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Malformed (a bad chunk), or cut short by the client.
    #[error("the request body is malformed or was cut short: {0}")]
    Client(#[source] hyper::Error),
    /// No piece of it came for the whole limit.
    #[error("the request body stalled for {0:?} (--request-body-timeout)")]
    Stalled(Duration),
    /// A bad chunk (the HTTP/1.1 fast path's reading of it).
    #[error("the request body is malformed or was cut short: {0}")]
    Chunked(#[source] crate::h1::chunked::ChunkError),
    /// The client closed its connection within the body.
    #[error("the request body is malformed or was cut short: the client closed the connection")]
    Closed,
}

impl BodyError {
    /// The client's answer: 408 for a stall, 400 for the rest.
    pub fn status(&self) -> http::StatusCode {
        match self {
            BodyError::Stalled(_) => http::StatusCode::REQUEST_TIMEOUT,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }

    /// The `BodyError` behind an upstream request's failure, if the body
    /// was the cause (hyper reports a body's error as the request's).
    pub fn behind<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e BodyError> {
        let mut cause = Some(e);
        while let Some(e) = cause {
            if let Some(b) = e.downcast_ref::<BodyError>() {
                return Some(b);
            }
            cause = e.source();
        }
        None
    }
}

/// The body of a request sent upstream.
pub struct RequestBody {
    inner: Inner,
    /// Told (or dropped) once the body has been read to its end, when
    /// someone waits for that ([`RequestBody::on_end`]).
    end: Option<oneshot::Sender<()>>,
}

enum Inner {
    /// A body with no stall bound, or already at its end (most requests):
    /// no timer, no allocation.
    Plain(Incoming),
    Bounded(Box<Stallable>),
    Empty,
}

/// The client's body and its stall timer, made only once the body first
/// waits (a body that arrives whole never arms it).
struct Stallable {
    body: Incoming,
    limit: Duration,
    metrics: Arc<Metrics>,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl RequestBody {
    /// The client's body; `limit` bounds each stall (`None`: no bound).
    pub fn client(body: Incoming, limit: Option<Duration>, metrics: &Arc<Metrics>) -> Self {
        match limit {
            Some(limit) if !body.is_end_stream() => {
                RequestBody::of(Inner::Bounded(Box::new(Stallable {
                    body,
                    limit,
                    metrics: metrics.clone(),
                    timer: None,
                    armed: false,
                })))
            }
            _ => RequestBody::of(Inner::Plain(body)),
        }
    }

    /// No body.
    pub fn empty() -> Self {
        RequestBody::of(Inner::Empty)
    }

    fn of(inner: Inner) -> Self {
        RequestBody { inner, end: None }
    }

    /// Resolves once the body has been read to its end (or dropped): at
    /// once for a body already at its end. A response timeout counts from
    /// there, as Envoy's does, so a long upload is not a silent upstream.
    pub fn on_end(&mut self) -> impl Future<Output = ()> + Send + use<> {
        let rx = if self.is_end_stream() {
            None
        } else {
            let (tx, rx) = oneshot::channel();
            self.end = Some(tx);
            Some(rx)
        };
        async move {
            if let Some(rx) = rx {
                // A dropped sender means the body is gone: ended as well.
                let _ = rx.await;
            }
        }
    }

    fn ended(&mut self) {
        if let Some(tx) = self.end.take() {
            let _ = tx.send(());
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = this.poll_inner(cx);
        if this.end.is_some() {
            let at_end = match &polled {
                Poll::Ready(None | Some(Err(_))) => true,
                Poll::Ready(Some(Ok(_))) => this.is_end_stream(),
                Poll::Pending => false,
            };
            if at_end {
                this.ended();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Plain(body) => body.is_end_stream(),
            Inner::Bounded(s) => s.body.is_end_stream(),
            Inner::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Plain(body) => body.size_hint(),
            Inner::Bounded(s) => s.body.size_hint(),
            Inner::Empty => SizeHint::with_exact(0),
        }
    }
}

impl RequestBody {
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let s = match &mut self.inner {
            Inner::Plain(body) => {
                return Pin::new(body)
                    .poll_frame(cx)
                    .map(|f| f.map(|f| f.map_err(BodyError::Client)));
            }
            Inner::Bounded(s) => &mut **s,
            Inner::Empty => return Poll::Ready(None),
        };
        match Pin::new(&mut s.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                s.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(BodyError::Client)))
            }
            Poll::Pending => {
                if !s.armed {
                    let deadline = Instant::now() + s.limit;
                    match &mut s.timer {
                        Some(t) => t.as_mut().reset(deadline),
                        None => s.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    s.armed = true;
                }
                let fired = s
                    .timer
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready());
                if fired {
                    s.armed = false;
                    s.metrics.timeout(Timeout::RequestBody);
                    return Poll::Ready(Some(Err(BodyError::Stalled(s.limit))));
                }
                Poll::Pending
            }
        }
    }
}
