//! HTTP/1.1 and HTTP/2 (h2c, gRPC): serving a downstream connection and routing
//! each request or stream on its own.
//!
//! Everything after "the original destination is known" lives here, so bind
//! mode and transparent mode share it, and so do both directions: outbound
//! requests follow the routing rule, inbound ones its step 7 (deliver to this
//! pod's app, or to the key's copy of its service).

use std::borrow::Cow;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use divert_core::direction::Direction;
use futures_util::FutureExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::baggage::{self, Lookup};
use crate::body::{BodyError, RequestBody};
use crate::conn::Conn;
use crate::counted::CountedIo;
use crate::drops::{self, Noted};
use crate::limits::{
    GOAWAY_GRACE, LimitAfter, Limits, MIN_MAX_REQUEST_HEAD, Timeout, enabled, grpc_timeout,
};
use crate::metrics::{KeyRejection, Metrics, TargetStats};
use crate::protocol::Protocol;
use crate::reason::{Decision, Reason};
use crate::report::{self, RequestLine};
use crate::resets::Resets;
use crate::semantics::answer::{self, Failure};
use crate::semantics::cookie;
use crate::semantics::edits::{self, Edge, EdgeKey, Edges, Join};
use crate::semantics::{self, fields};
use crate::shared::{Passthrough, Shared};
use crate::spans::{self, Links, Trace};
use crate::table::{Endpoint, Route, Table, Target};
use crate::tap::Tap;
use crate::upstream::{UpstreamBody, UpstreamError};
use divert_core::idle::{Activity, Held};

/// The body of every response the proxy sends: the upstream's, streamed, or a
/// short one of our own.
pub type Body = Either<UpstreamBody, Full<Bytes>>;

static BAGGAGE: HeaderName = HeaderName::from_static("baggage");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// The hop mark ([`edits::MARK`]), as hyper's header maps take it.
static INBOUND_HOP: HeaderName = HeaderName::from_static(edits::MARK.0);
/// The outbound mark ([`edits::OUTBOUND_MARK`]).
static OUTBOUND_HOP: HeaderName = HeaderName::from_static(edits::OUTBOUND_MARK.0);
/// W3C Trace Context's field, reported to the tap ([`spans`]).
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Makes the server side of an HTTP connection: HTTP/1.1, or HTTP/2 when the
/// client opens with the prior-knowledge preface. The request head is
/// bounded in size (HTTP/1.1 answers 431 past it, RFC 6585 §5; HTTP/2 bounds
/// the header list the same) and, for HTTP/1.1, in time: the header read
/// timeout runs whenever the connection waits for a head, so it also closes
/// keep-alive connections idle that long.
pub fn server_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let max_head = limits.max_request_head.max(MIN_MAX_REQUEST_HEAD);
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(enabled(limits.header_read_timeout))
        .half_close(false)
        .max_buf_size(max_head);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024)
        // Larger windows so one stream can use the connection's bandwidth.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    b
}

/// Serves one downstream connection whose original destination is `dst`,
/// coming from `direction` (a pod's outbound traffic, or traffic into it),
/// until it ends or, once the drain starts, until it has wound down (HTTP/2:
/// GOAWAY, then the open streams finish; HTTP/1: the request in flight
/// finishes, then the connection closes). `protocol` is what detection
/// found: an HTTP/2 connection is also closed (GOAWAY) once idle for the
/// idle timeout.
pub async fn serve_connection<I>(io: I, protocol: Protocol, conn: Conn, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Counted as `http` whichever version hyper finds.
    let io = CountedIo::new(io, shared.metrics.connection(Protocol::Http1));
    serve_counted(io, protocol, conn, shared).await;
}

/// [`serve_connection`] for a connection already counted: one the HTTP/1.1
/// fast path hands over ([`crate::h1`]).
pub(crate) async fn serve_counted<I>(io: I, protocol: Protocol, conn: Conn, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Conn { dst, peer, .. } = conn;
    let drained = shared.drain.signaled();
    let builder = server_builder(&shared.config.limits);
    let http2 = matches!(protocol, Protocol::Http2 | Protocol::Grpc);
    let idle_limit = if http2 {
        enabled(shared.config.limits.idle_timeout)
    } else {
        None
    };
    let activity = idle_limit.map(|_| Arc::new(Activity::default()));
    let resets = http2.then(|| Arc::new(Resets::default()));
    let svc = {
        let shared = shared.clone();
        let activity = activity.clone();
        let resets = resets.clone();
        service_fn(move |req| {
            let busy = activity.as_ref().map(Activity::open);
            // Dropped unanswered if the client resets the stream first.
            let stream = resets.as_ref().map(Resets::stream);
            // hyper moves this future into its stream's task, a copy per
            // request: `handle`'s future is mapped, not awaited inside
            // another (which would hold a second copy of what it starts
            // from), and not boxed (an allocation per request, which cost
            // the musl build more than it saved: BENCHMARKS.md, "HTTP/2 per
            // request"). Rare work (a new connection, a resend) is boxed.
            handle(req, conn, shared.clone()).map(move |resp| {
                if let Some(s) = stream {
                    s.answered();
                }
                Ok::<_, Infallible>(resp.map(|b| Held::new(b, busy)))
            })
        })
    };
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let idle = async {
        match (&activity, idle_limit) {
            (Some(a), Some(limit)) => a.idle(limit).await,
            _ => std::future::pending().await,
        }
    };
    let flooding = async {
        match &resets {
            Some(r) => r.tripped().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(served, drained, idle, flooding);
    let abuse_limit = tokio::select! {
        r = served.as_mut() => {
            log_end(r, &shared, peer, dst);
            return;
        }
        () = &mut drained => None,
        () = &mut idle => {
            shared.metrics.timeout(Timeout::Idle);
            tracing::debug!(%peer, %dst, "HTTP/2 connection idle past the idle timeout; closing (GOAWAY)");
            idle_limit.or(Some(GOAWAY_GRACE))
        }
        () = &mut flooding => {
            shared.metrics.reset_flood();
            tracing::debug!(%peer, %dst, "HTTP/2 client gave up on far more streams than it waited for; closing (GOAWAY)");
            Some(GOAWAY_GRACE)
        }
    };
    served.as_mut().graceful_shutdown();
    // After a GOAWAY, h2 waits for the client to answer its PING before it
    // closes: a client that never answers is dropped once the limit passes
    // (the drain has a limit of its own).
    let result = match abuse_limit {
        None => served.await,
        Some(limit) => match tokio::time::timeout(limit, served).await {
            Ok(r) => r,
            Err(_) => {
                shared.metrics.timeout(Timeout::GoawayAck);
                tracing::debug!(%peer, %dst, "no answer to the GOAWAY's PING; connection dropped");
                Ok(())
            }
        },
    };
    log_end(result, &shared, peer, dst);
}

/// Counts and logs how a downstream connection ended.
fn log_end(
    result: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    shared: &Shared,
    peer: SocketAddr,
    dst: SocketAddr,
) {
    if let Err(e) = result {
        let hyper_error = e.downcast_ref::<hyper::Error>();
        if hyper_error.is_some_and(hyper::Error::is_timeout) {
            shared.metrics.timeout(Timeout::HeaderRead);
        } else if hyper_error.is_some_and(hyper::Error::is_parse_too_large) {
            shared.metrics.head_too_large();
        }
        tracing::debug!(%peer, %dst, error = %e, "downstream connection ended with an error");
    }
}

/// What the rule decided for one request, and what the request path needs to
/// report it once the response is known.
pub(crate) struct Decided<'t> {
    pub started: Instant,
    pub conn: Conn,
    pub protocol: Protocol,
    pub key: Option<&'t str>,
    pub route: Route<'t>,
    pub decision: Decision,
    pub stats: &'t TargetStats,
    pub baggage_rejected: Option<&'static str>,
    /// Method, URI and Host (HTTP/1 has no authority in the URI), kept only
    /// while the tap looks at it ([`crate::tap::Tap::looks`]).
    pub tapped: Option<(Method, http::Uri, Option<HeaderValue>)>,
    /// A request in flight to this pod's app, or a call that dropped the
    /// key ([`drops`]).
    pub noted: Noted<'t>,
    /// The key came from the key cookie: the response must not be cached
    /// by anyone (`Cache-Control: no-store`), or a shared cache would serve
    /// a developer's copy to everyone.
    pub no_store: bool,
    /// Its place in its call tree, while the tap looks at it ([`spans`]).
    pub links: Links,
    /// The service of this pod a request into it was delivered to, while
    /// the tap looks at it (reported as its service).
    pub serves: Option<&'t str>,
}

impl Decided<'_> {
    /// Counts the response, and reports the decision.
    pub(crate) fn finish(
        &self,
        metrics: &Metrics,
        tap: &Tap,
        status: StatusCode,
        endpoint: Option<SocketAddr>,
        error: Option<&dyn fmt::Display>,
    ) {
        let latency = self.started.elapsed();
        let code = status.as_u16();
        self.stats.response(self.protocol, self.decision, code);
        metrics.latency(self.protocol, self.decision, latency);
        let (service, target_namespace) = match &self.route.target {
            Target::Service {
                service, namespace, ..
            } => (&*service.name, *namespace),
            Target::Passthrough(_) => (self.serves.unwrap_or(""), ""),
        };
        report::report(
            tap,
            &report::Decided {
                direction: self.conn.direction,
                protocol: self.protocol,
                key: self.key,
                peer: self.conn.peer,
                dst: self.conn.dst,
                target: &self.route,
                target_namespace,
                service,
                reason: self.route.reason,
                dropped: self.noted.dropped(),
                links: self.links,
            },
            &report::Outcome {
                endpoint,
                status: code,
                latency,
                error,
            },
            || match &self.tapped {
                Some((method, uri, host)) => RequestLine {
                    method: method.as_str(),
                    authority: uri.authority().map_or_else(
                        || host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
                        |a| a.as_str(),
                    ),
                    path: uri.path(),
                    baggage_rejected: self.baggage_rejected,
                },
                None => RequestLine::default(),
            },
        );
    }
}

/// Routes and forwards one request or stream, top to bottom: refused or
/// not → keyed and routed → made ready for the next hop → sent, within its
/// limits → answered. Whatever fails on the way is answered by the proxy
/// ([`fail`]).
///
/// The future owns everything it uses, and its arguments are kept once
/// (an `async fn` keeps a second copy of each; HTTP/2 copies the future
/// as it moves it into its stream's task).
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would keep a second copy of the request"
)]
pub fn handle(
    mut req: Request<Incoming>,
    conn: Conn,
    shared: Arc<Shared>,
) -> impl Future<Output = Response<Body>> + Send + 'static {
    async move {
        let shared = &*shared;
        let started = Instant::now();
        if let Some((status, why)) = refused(&req) {
            tracing::debug!(peer = %conn.peer, dst = %conn.dst, method = %req.method(), why, "request refused before routing");
            return proxy_answer(status, &answer::text("request", &why), false);
        }
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| semantics::is_grpc(v.as_bytes()));
        let protocol = if grpc {
            Protocol::Grpc
        } else if req.version() == Version::HTTP_2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let http1 = req.version() == Version::HTTP_11;

        // 1. Keyed and routed. The key is reported after the request has gone
        // upstream, so it borrows from copies of the baggage values.
        let table = shared.tables.load();
        if let Some(answer) = key_cookie_answer(&req, conn, &table, shared) {
            return answer;
        }
        let baggage = BaggageValues::of(req.headers());
        let lookup = baggage.lookup(&shared.config.baggage_key);
        let decided = route(&mut req, &lookup, &table, protocol, conn, started, shared);
        let Some(endpoint) = endpoint_of(&decided.route, &shared.passthrough) else {
            return fail(&decided, &Failure::NoEndpoints, None, grpc, shared);
        };

        // 2. Ready for the next hop.
        let upgrade = ready_for_next_hop(&mut req, &decided, conn.direction);

        // 3. Sent, within its limits.
        let resp = match send(req, &endpoint, grpc, shared).await {
            Ok(resp) => resp,
            Err(Unsent::NoResponse(limit)) => {
                let failure = Failure::NoResponse(limit);
                return fail(&decided, &failure, Some(endpoint.addr), grpc, shared);
            }
            Err(Unsent::Upstream(e)) => {
                // The client's body failed, not the upstream: 400 or 408.
                let failure = match BodyError::behind(&e) {
                    Some(b) => Failure::Body(b),
                    None => Failure::Upstream(&e),
                };
                return fail(&decided, &failure, Some(endpoint.addr), grpc, shared);
            }
        };
        // A 101 the client did not ask for would switch the client's connection
        // to a protocol it never offered (RFC 9110 §15.2.2: only in answer to an
        // Upgrade request).
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS && upgrade.is_none() {
            return fail(
                &decided,
                &Failure::Switched,
                Some(endpoint.addr),
                grpc,
                shared,
            );
        }
        decided.finish(
            &shared.metrics,
            &shared.tap,
            resp.status(),
            Some(endpoint.addr),
            None,
        );
        let no_store = decided.no_store;
        drop(decided);
        drop(table);

        // 4. Answered.
        respond(resp, upgrade, http1, no_store, shared)
    }
}

/// Copies of a request's `baggage` values (reference-counted: no
/// allocation for the usual single field), which its key borrows from.
struct BaggageValues {
    first: Option<HeaderValue>,
    rest: Vec<HeaderValue>,
}

impl BaggageValues {
    fn of(headers: &HeaderMap) -> BaggageValues {
        let mut values = headers.get_all(&BAGGAGE).iter();
        let first = values.next().cloned();
        BaggageValues {
            first,
            rest: values.cloned().collect(),
        }
    }

    fn lookup(&self, baggage_key: &str) -> Lookup<'_> {
        baggage::lookup(
            self.first
                .iter()
                .chain(&self.rest)
                .map(HeaderValue::as_bytes),
            baggage_key,
        )
    }
}

/// Finds the request's key (an edge key, a preview host's or the key
/// cookie's, joining its baggage, for one coming into the pod without a
/// key) and routes it by the rule.
fn route<'a>(
    req: &mut Request<Incoming>,
    lookup: &'a Lookup<'_>,
    table: &'a Table,
    protocol: Protocol,
    conn: Conn,
    started: Instant,
    shared: &'a Shared,
) -> Decided<'a> {
    let (mut key, baggage_rejected) = key_of(lookup, &shared.metrics);
    let inbound = edits::takes_mark(conn.direction);
    let (hop_mark, mark) = if inbound {
        let h = req.headers_mut();
        (h.remove(&INBOUND_HOP), h.remove(&OUTBOUND_HOP))
    } else {
        (None, None)
    };
    let hop = hop_mark.is_some();
    let meshed = mark.is_some();
    let own_ns = shared.config.namespace.as_deref();
    let edge = edits::key_from_edge(
        conn.direction,
        key,
        Edges {
            cookie_allowed: inbound && !meshed && table.key_cookie_allowed(own_ns),
            host: || authority(req),
            cookie: || {
                cookie::find(
                    req.headers()
                        .get_all(header::COOKIE)
                        .iter()
                        .map(|v| v.as_bytes()),
                )
            },
        },
        table,
        own_ns,
    );
    let mut no_store = false;
    match edge {
        EdgeKey::None => {}
        EdgeKey::Key(k, how) => {
            add_baggage_member(req.headers_mut(), &shared.config.baggage_key, k);
            key = Some(k);
            if how == Edge::Cookie {
                shared.metrics.key_cookie(cookie::Outcome::Applied);
                no_store = true;
            }
        }
        EdgeKey::CookieIgnored(why) => {
            let outcome = why.map_or(
                cookie::Outcome::NotDivertNamespace,
                cookie::Outcome::Ignored,
            );
            shared.metrics.key_cookie(outcome);
            tracing::debug!(peer = %conn.peer, dst = %conn.dst, outcome = outcome.as_str(), "key cookie ignored");
        }
    }
    let (route, stats, noted, span) = decide(shared, table, protocol, conn, key, hop, || {
        let authority = authority(req).unwrap_or("");
        format!("{} {authority}{}", req.method(), req.uri().path())
    });
    let serves = served(table, &route, conn, span, own_ns);
    let links = if span == 0 {
        Links::default()
    } else {
        Links {
            span,
            parent: match hop_mark.as_ref().or(mark.as_ref()) {
                Some(m) => spans::caller_of(m.as_bytes()),
                None => noted.parent(),
            },
            trace: req
                .headers()
                .get(&TRACEPARENT)
                .and_then(|v| Trace::parse(v.as_bytes())),
        }
    };
    Decided {
        started,
        conn,
        protocol,
        key,
        decision: Decision::of(route.reason),
        stats,
        baggage_rejected,
        noted,
        no_store,
        links,
        serves,
        tapped: (span != 0).then(|| {
            (
                req.method().clone(),
                req.uri().clone(),
                req.headers().get(header::HOST).cloned(),
            )
        }),
        route,
    }
}

/// The service of this pod that a request delivered here (a passthrough
/// into the pod) reached, while the tap looks at it (`span` is not 0).
pub(crate) fn served<'t>(
    table: &'t Table,
    route: &Route<'_>,
    conn: Conn,
    span: u64,
    own_ns: Option<&str>,
) -> Option<&'t str> {
    let delivered =
        conn.direction == Direction::Inbound && matches!(route.target, Target::Passthrough(_));
    (span != 0 && delivered)
        .then(|| table.serves(conn.dst, own_ns))
        .flatten()
}

/// Makes the request what the next hop gets: without the fields of this
/// hop (keeping an upgrade's, whose downstream half is returned), and
/// with the hop mark if it goes on to another pod's copy (or the outbound
/// mark, from the pod to a service).
fn ready_for_next_hop(
    req: &mut Request<Incoming>,
    decided: &Decided<'_>,
    direction: Direction,
) -> Option<hyper::upgrade::OnUpgrade> {
    let http1 = req.version() == Version::HTTP_11;
    let upgrade = http1 && is_upgrade(req.headers());
    let downstream = upgrade.then(|| hyper::upgrade::on(&mut *req));
    strip_hop_by_hop(req.headers_mut(), upgrade, http1);
    let name = if edits::marks(direction, &decided.route.target) {
        &INBOUND_HOP
    } else if edits::marks_outbound(direction, &decided.route.target) {
        &OUTBOUND_HOP
    } else {
        return downstream;
    };
    // Either mark says `1`, or while the tap looks, this request's span.
    let value = match decided.links.span {
        0 => HeaderValue::from_static(edits::MARK.1),
        span => match HeaderValue::from_str(spans::mark_value(span, &mut [0; 16])) {
            Ok(mut v) => {
                // A value used once: HPACK must not index it (RFC 7541
                // §6.2.3), or each request would evict an entry of the
                // upstream connection's table that later ones reuse.
                v.set_sensitive(true);
                v
            }
            Err(_) => HeaderValue::from_static(edits::MARK.1),
        },
    };
    req.headers_mut().insert(name, value);
    downstream
}

/// Why a request got no response from its upstream.
enum Unsent {
    Upstream(UpstreamError),
    /// No response head within this limit.
    NoResponse(Duration),
}

/// Sends the request to `endpoint` and waits for the response head, for
/// at most the response timeout (a gRPC call's own `grpc-timeout`
/// instead), counted from the end of the request body: a long upload is
/// not a silent upstream. The body's own pieces have their stall bound.
///
/// Everything before the wait happens here, before the returned future is
/// first polled: HTTP/2 moves each request's future on its way to its
/// stream's task, so the future keeps only what the wait needs. HTTP/1.1
/// requests come here only from the general stack (the fast path,
/// [`crate::h1`], sends its own), and their exchange is boxed.
fn send<'a>(
    req: Request<Incoming>,
    endpoint: &'a Endpoint,
    grpc: bool,
    shared: &'a Shared,
) -> impl Future<Output = Result<Response<UpstreamBody>, Unsent>> + Send + 'a {
    let limits = &shared.config.limits;
    let response_limit = if grpc {
        req.headers()
            .get(&GRPC_TIMEOUT)
            .and_then(|v| grpc_timeout(v.as_bytes()))
            .or(enabled(limits.response_timeout))
    } else {
        enabled(limits.response_timeout)
    };
    let mut req =
        req.map(|b| RequestBody::client(b, enabled(limits.request_body_timeout), &shared.metrics));
    let body_sent = response_limit.map(|_| req.body_mut().on_end());
    let req = frame_body(req);
    let settings = &shared.config.connect;
    let pool = endpoint.pool();
    let sending = if req.version() == Version::HTTP_2 {
        futures_util::future::Either::Left(pool.send_http2(endpoint.addr, settings, req))
    } else {
        let exchange: Pin<Box<dyn Future<Output = _> + Send + 'a>> =
            Box::pin(pool.send_http1(endpoint.addr, settings, req));
        futures_util::future::Either::Right(exchange)
    };
    let limit = response_limit.zip(body_sent);
    LimitAfter::new(limit, sending).map(|sent| match sent {
        Ok(sent) => sent.map_err(Unsent::Upstream),
        Err(limit) => Err(Unsent::NoResponse(limit)),
    })
}

/// The upstream's response as the client gets it: without the fields of
/// this hop (and cached by nobody, `no_store`, when the key came from the
/// key cookie), or, for a `101` to an upgrade, with the tunnel between the
/// two upgraded connections started.
fn respond(
    mut resp: Response<UpstreamBody>,
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    http1: bool,
    no_store: bool,
    shared: &Shared,
) -> Response<Body> {
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(down) = upgrade {
            let up = hyper::upgrade::on(&mut resp);
            // The tunnel outlives the connection's task: the drain counts it.
            let tracked = shared.drain.track();
            tokio::spawn(async move {
                tunnel(down, up).await;
                drop(tracked);
            });
        }
    } else {
        strip_hop_by_hop(resp.headers_mut(), false, http1);
        if no_store {
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
        }
    }
    resp.map(Either::Left)
}

/// `Cache-Control` of what no cache may keep (RFC 9111 §5.2.2.5).
const NO_STORE: &str = "no-store";

/// The answer to `?divert=` from a caller without a sidecar, where the
/// pod's shared namespace allows the key cookie ([`cookie`]): a `303` to
/// the same target without the parameter, setting the cookie (or clearing
/// it, for `?divert=`). `None` when the request goes on as it came: no
/// such parameter, or one that is ignored (counted, and logged at debug):
/// bad, naming a namespace that is not a divert namespace of the pod's
/// shared namespace, or on a method other than GET or HEAD.
fn key_cookie_answer(
    req: &Request<Incoming>,
    conn: Conn,
    table: &Table,
    shared: &Shared,
) -> Option<Response<Body>> {
    if conn.direction != Direction::Inbound || req.headers().contains_key(&OUTBOUND_HOP) {
        return None;
    }
    let query = req.uri().query()?;
    let own_ns = shared.config.namespace.as_deref();
    if !table.key_cookie_allowed(own_ns) {
        return None;
    }
    let ignored = |outcome: cookie::Outcome| {
        shared.metrics.key_cookie(outcome);
        tracing::debug!(peer = %conn.peer, dst = %conn.dst, outcome = outcome.as_str(), "?divert= ignored");
        None
    };
    let namespace = match cookie::param(query) {
        cookie::Param::Absent => return None,
        cookie::Param::Bad(b) => return ignored(cookie::Outcome::Ignored(b)),
        cookie::Param::Set(ns) => Some(ns),
        cookie::Param::Clear => None,
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return ignored(cookie::Outcome::Method);
    }
    if let (Some(ns), Some(own)) = (namespace, own_ns)
        && table.cookie_key(ns, own).is_none()
    {
        return ignored(cookie::Outcome::NotDivertNamespace);
    }
    let secure = cookie::came_over_tls(
        req.headers()
            .get_all("x-forwarded-proto")
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let max_age = shared.config.key_cookie_max_age;
    let location = HeaderValue::try_from(cookie::without_param(req.uri().path(), query)).ok()?;
    let set_cookie = HeaderValue::try_from(cookie::set_cookie(namespace, max_age, secure)).ok()?;
    shared.metrics.key_cookie(if namespace.is_some() {
        cookie::Outcome::Set
    } else {
        cookie::Outcome::Cleared
    });
    tracing::debug!(peer = %conn.peer, dst = %conn.dst, namespace = namespace.unwrap_or(""), "key cookie set by ?divert=");
    let mut resp = Response::new(Either::Right(Full::new(Bytes::new())));
    *resp.status_mut() = StatusCode::SEE_OTHER;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::SET_COOKIE, set_cookie);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(NO_STORE));
    Some(resp)
}

/// Answers a routed request the proxy could not forward: counted, reported
/// with its decision, and answered as [`answer`] says.
fn fail(
    decided: &Decided<'_>,
    failure: &Failure<'_>,
    endpoint: Option<SocketAddr>,
    grpc: bool,
    shared: &Shared,
) -> Response<Body> {
    failure.count(&shared.metrics);
    let text = answer::text(&failure.target(&decided.route, endpoint), failure);
    let resp = proxy_answer(failure.status(), &text, grpc);
    // Counted as sent: a gRPC client gets 200 with its grpc-status.
    decided.finish(
        &shared.metrics,
        &shared.tap,
        resp.status(),
        endpoint,
        Some(failure),
    );
    resp
}

/// One of the proxy's own answers ([`answer::response`]).
fn proxy_answer(status: StatusCode, text: &str, grpc: bool) -> Response<Body> {
    answer::response(status, text, grpc).map(Either::Right)
}

/// Where a routed request goes: one of its service's endpoints, borrowed
/// from the table (`None` when it has none: [`Failure::NoEndpoints`]), or
/// where it was dialed.
pub(crate) fn endpoint_of<'t>(
    route: &Route<'t>,
    passthrough: &Passthrough,
) -> Option<Cow<'t, Arc<Endpoint>>> {
    match &route.target {
        Target::Service { port, .. } => port.endpoints.pick().map(Cow::Borrowed),
        Target::Passthrough(addr) => Some(Cow::Owned(passthrough.endpoint(*addr))),
    }
}

/// The key of a request's baggage lookup, and why its baggage was
/// rejected, if it was (counted).
pub(crate) fn key_of<'a>(
    lookup: &'a Lookup<'_>,
    metrics: &Metrics,
) -> (Option<&'a str>, Option<&'static str>) {
    match lookup {
        Lookup::Found(k) => (Some(&**k), None),
        Lookup::Absent => (None, None),
        Lookup::Rejected(why) => {
            metrics.key_rejected(KeyRejection::Baggage(*why));
            (None, Some(why.as_str()))
        }
    }
}

/// The routing rule for one request (its step 7 for one coming into the
/// pod; `hop`: it carries the inbound hop mark), counted, and noted by the
/// dropped-key detector ([`drops`]; `line`, the request line, is asked for
/// only when it needs an example). With its span id, while the tap looks
/// at it (0 otherwise).
pub(crate) fn decide<'t>(
    shared: &'t Shared,
    table: &'t Table,
    protocol: Protocol,
    conn: Conn,
    key: Option<&str>,
    hop: bool,
    line: impl FnOnce() -> String,
) -> (Route<'t>, &'t TargetStats, Noted<'t>, u64) {
    let Conn { dst, direction, .. } = conn;
    let route = match direction {
        Direction::Outbound => table.route(dst, key, shared.own_namespace()),
        Direction::Inbound if hop => Route {
            target: Target::Passthrough(dst),
            reason: Reason::Forwarded,
        },
        Direction::Inbound => table.route_inbound(dst, key, shared.config.namespace.as_deref()),
    };
    match route.reason {
        Reason::KeyNotOptedIn => shared.metrics.key_rejected(KeyRejection::NotOptedIn),
        Reason::KeyOfOtherSharedNamespace => shared
            .metrics
            .key_rejected(KeyRejection::OtherSharedNamespace),
        _ => {}
    }
    let stats: &TargetStats = match &route.target {
        Target::Service { service, .. } => service.stats(&shared.metrics),
        Target::Passthrough(_) => shared.metrics.passthrough(),
    };
    stats.request(protocol, route.reason);
    let tap = &shared.tap;
    let mut span = if tap.looks(key.is_some()) {
        tap.spans.next()
    } else {
        0
    };
    let noted = shared.drops.note(
        &drops::Request {
            direction,
            key,
            route: &route,
            dst,
            span,
        },
        table,
        shared.config.namespace.as_deref(),
        drops::Looks {
            pairs: tap.looks(true),
            examples: tap.is_watched(),
        },
        line,
    );
    // A call that dropped a key is kept with the key it dropped.
    if span == 0 && noted.dropped().is_some_and(|d| tap.looks(d.key.is_some())) {
        span = tap.spans.next();
    }
    (route, stats, noted, span)
}

/// The host a request asked for: its URI's authority (HTTP/2, absolute
/// form), else its `Host` header.
fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
}

/// Adds the member `key=value` to a request's baggage, as [`edits::join`]
/// says: the members it has are kept.
fn add_baggage_member(headers: &mut HeaderMap, key: &str, value: &str) {
    let join = edits::join(headers.get_all(&BAGGAGE).iter().map(HeaderValue::as_bytes));
    let mut bytes = Vec::new();
    match (join, headers.get(&BAGGAGE)) {
        (Join::Extend, Some(only)) => edits::extended(&mut bytes, only.as_bytes(), key, value),
        _ => edits::member(&mut bytes, key, value),
    }
    let Ok(v) = HeaderValue::from_bytes(&bytes) else {
        return;
    };
    match join {
        Join::Append => {
            headers.append(&BAGGAGE, v);
        }
        Join::Extend | Join::Replace => {
            headers.insert(&BAGGAGE, v);
        }
    }
}

/// Copies bytes both ways between an upgraded downstream and upstream (a
/// WebSocket, say) until both sides are done.
async fn tunnel(down: hyper::upgrade::OnUpgrade, up: hyper::upgrade::OnUpgrade) {
    let (down, up) = match tokio::try_join!(down, up) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
        tracing::debug!(error = %e, "upgraded connection ended with an error");
    }
}

fn has_token(h: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    h.get_all(name)
        .iter()
        .any(|v| fields::has_token(v.as_bytes(), token.as_bytes()))
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE) && has_token(h, &header::CONNECTION, "upgrade")
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1,
/// [`crate::semantics::fields`]), keeping those an upgrade needs. Everything else,
/// `baggage` included, goes through as is. `http1_next`: the next hop
/// speaks HTTP/1.1, so codings of `Transfer-Encoding` other than the
/// final `chunked` are said again (hyper frames the body with its own
/// `chunked` after them); HTTP/2 has no place for them.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool, http1_next: bool) {
    let connection: Vec<HeaderValue> = h.get_all(header::CONNECTION).iter().cloned().collect();
    if !connection.is_empty()
        || h.contains_key(&KEEP_ALIVE)
        || h.contains_key(&PROXY_CONNECTION)
        || h.contains_key(header::TE)
    {
        let named: Vec<HeaderName> = h
            .iter()
            .filter(|(name, value)| {
                !(upgrade && (*name == header::UPGRADE || *name == header::CONNECTION))
                    && fields::is_hop_by_hop(
                        name.as_str().as_bytes(),
                        value.as_bytes(),
                        connection.iter().map(HeaderValue::as_bytes),
                    )
            })
            .map(|(name, _)| name.clone())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    // The body was framed by this message's Transfer-Encoding, whatever its
    // Content-Length said, and that Content-Length must not be forwarded
    // (RFC 9112 §6.3): hyper writes its own framing. The other codings are
    // end to end: without them the next hop could not decode the body.
    if h.contains_key(header::TRANSFER_ENCODING) {
        let codings: Vec<u8> = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect::<Vec<_>>()
            .join(&b","[..]);
        h.remove(header::TRANSFER_ENCODING);
        h.remove(header::CONTENT_LENGTH);
        if http1_next
            && let Some(rest) = fields::forwarded_codings(&codings)
            && let Ok(v) = HeaderValue::from_bytes(rest)
        {
            h.insert(header::TRANSFER_ENCODING, v);
        }
    }
}

/// Frames an HTTP/1.1 request's body for the upstream hop. hyper sends a
/// GET, HEAD or CONNECT whose body length it does not know as bodiless
/// (length 0), which would silently drop a chunked GET's body; saying
/// `Transfer-Encoding: chunked` makes it send the body chunked, as it came.
fn frame_body(mut req: Request<RequestBody>) -> Request<RequestBody> {
    let body = req.body();
    if req.version() == Version::HTTP_11
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !req.headers().contains_key(header::CONTENT_LENGTH)
    {
        req.headers_mut().insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
    }
    req
}

/// Why a request is refused before it is routed, if it is: a method the
/// proxy does not carry, or a Host it cannot be routed by.
fn refused<B>(req: &Request<B>) -> Option<(StatusCode, &'static str)> {
    if req.method() == Method::CONNECT {
        return Some((
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT is not supported: the proxy routes requests, it does not open tunnels",
        ));
    }
    // RFC 9112 §3.2: a server answers 400 to an HTTP/1.1 request without a
    // Host, and to any request with more than one. A target in absolute form
    // names the server itself (§3.2.2), and is accepted without a Host, as
    // nginx and Envoy do: some clients (hyper's connection API) send no Host
    // with one.
    match req.headers().get_all(header::HOST).iter().count() {
        0 if req.version() == Version::HTTP_11 && req.uri().authority().is_none() => Some((
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request needs a Host header (RFC 9112 §3.2)",
        )),
        0 | 1 => None,
        _ => Some((
            StatusCode::BAD_REQUEST,
            "more than one Host header (RFC 9112 §3.2)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, version: Version, hosts: &[&str]) -> Request<()> {
        request_to("/", method, version, hosts)
    }

    fn request_to(uri: &str, method: Method, version: Version, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(uri).version(version);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    /// What a server made by [`server_builder`] answers to one raw request.
    async fn first_status_line(max_head: usize, request: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(256 * 1024);
        let serve = tokio::spawn(async move {
            let svc = service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let limits = Limits {
                max_request_head: max_head,
                ..Limits::default()
            };
            let _ = server_builder(&limits)
                .serve_connection(TokioIo::new(server), svc)
                .await;
        });
        client.write_all(&request).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 256];
        while !got.windows(2).any(|w| w == b"\r\n") {
            let n = client.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed without an answer");
            got.extend_from_slice(&chunk[..n]);
        }
        serve.abort();
        let text = String::from_utf8_lossy(&got).into_owned();
        text.lines().next().unwrap_or_default().to_owned()
    }

    fn request_with_header_of(len: usize) -> Vec<u8> {
        format!(
            "GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
            "b".repeat(len)
        )
        .into_bytes()
    }

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// hyper moves each HTTP/2 request's future into its stream's task
    /// (a copy), and the task's allocation is its size: when `handle`
    /// was an `async fn` awaiting `async fn`s it took 3.9 KiB, each
    /// level keeping its own copy of the request, and memcpy was a fifth
    /// of an h2c request's time (BENCHMARKS.md, "HTTP/2 per request").
    #[test]
    fn a_request_future_is_small_enough_to_move_cheaply() {
        let size = returned_size(handle);
        assert!(size <= 1600, "handle's future takes {size} bytes");
    }

    #[test]
    fn a_baggage_member_is_added_to_what_the_request_has() {
        let added = |existing: &[&str]| {
            let mut h = HeaderMap::new();
            for v in existing {
                h.append(&BAGGAGE, HeaderValue::from_str(v).unwrap());
            }
            add_baggage_member(&mut h, "okteto-divert", "alice");
            h.get_all(&BAGGAGE)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(added(&[]), ["okteto-divert=alice"]);
        assert_eq!(added(&[" "]), ["okteto-divert=alice"]);
        assert_eq!(
            added(&["team=movies;ttl=60 "]),
            ["team=movies;ttl=60,okteto-divert=alice"]
        );
        assert_eq!(
            added(&["a=1", "b=2"]),
            ["a=1", "b=2", "okteto-divert=alice"]
        );
        // What a downstream proxy then reads.
        let values = added(&["team=movies"]);
        assert!(matches!(
            baggage::lookup(values.iter().map(|v| v.as_bytes()), "okteto-divert"),
            Lookup::Found(k) if k == "alice"
        ));
    }

    #[test]
    fn the_authority_comes_from_the_uri_or_the_host_header() {
        let h1 = request(
            Method::GET,
            Version::HTTP_11,
            &["web-alice.example.com:8080"],
        );
        assert_eq!(authority(&h1), Some("web-alice.example.com:8080"));
        let h2 = Request::builder()
            .uri("http://web-alice.example.com/x")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        assert_eq!(authority(&h2), Some("web-alice.example.com"));
        assert_eq!(
            authority(&request(Method::GET, Version::HTTP_11, &[])),
            None
        );
    }

    #[tokio::test]
    async fn request_heads_past_the_limit_get_431_and_those_within_it_are_served() {
        let limit = crate::limits::DEFAULT_MAX_REQUEST_HEAD;
        assert_eq!(
            first_status_line(limit, request_with_header_of(limit + 1024)).await,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        assert_eq!(
            first_status_line(limit, request_with_header_of(limit - 4096)).await,
            "HTTP/1.1 200 OK"
        );
        // A smaller limit is honoured too, down to hyper's minimum.
        assert_eq!(
            first_status_line(16 * 1024, request_with_header_of(20 * 1024)).await,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
    }

    #[test]
    fn connect_and_host_less_or_double_host_requests_are_refused() {
        let r = |m, v, h: &[&str]| refused(&request(m, v, h)).map(|(s, _)| s);
        assert_eq!(r(Method::GET, Version::HTTP_11, &["a"]), None);
        assert_eq!(r(Method::GET, Version::HTTP_10, &[]), None);
        assert_eq!(r(Method::GET, Version::HTTP_2, &[]), None);
        assert_eq!(
            r(Method::GET, Version::HTTP_11, &[]),
            Some(StatusCode::BAD_REQUEST)
        );
        let absolute = request_to("http://web.staging/x", Method::GET, Version::HTTP_11, &[]);
        assert_eq!(refused(&absolute), None, "absolute form names the server");
        for v in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(
                r(Method::GET, v, &["a", "b"]),
                Some(StatusCode::BAD_REQUEST),
                "{v:?}"
            );
        }
        assert_eq!(
            r(Method::CONNECT, Version::HTTP_11, &["a:443"]),
            Some(StatusCode::NOT_IMPLEMENTED)
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_end_to_end_kept() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-hop"),
        );
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("baggage", HeaderValue::from_static("okteto-divert=alice"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["baggage"], "okteto-divert=alice");

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn connection_cannot_name_what_framing_and_routing_read() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Host, Baggage, x-hop, content-length, divert-inbound-hop"),
        );
        h.insert(header::HOST, HeaderValue::from_static("web.staging"));
        h.insert("baggage", HeaderValue::from_static("okteto-divert=alice"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(&INBOUND_HOP, HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 4, "{h:?}");
        assert_eq!(h[header::HOST], "web.staging");
        assert_eq!(h["baggage"], "okteto-divert=alice");
        assert_eq!(h[header::CONTENT_LENGTH], "3");
        assert_eq!(h[&INBOUND_HOP], "1");
    }

    #[test]
    fn codings_besides_chunked_are_said_again_to_an_http_1_1_hop_only() {
        let coded = || {
            let mut h = HeaderMap::new();
            h.insert(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("gzip, chunked"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
            h
        };
        let mut h = coded();
        strip_hop_by_hop(&mut h, false, true);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h[header::TRANSFER_ENCODING], "gzip");
        let mut h = coded();
        strip_hop_by_hop(&mut h, false, false);
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn upgrade_keeps_its_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true, true);
        assert_eq!(h[header::CONNECTION], "Upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }
}
