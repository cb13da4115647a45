//! The HTTP/1.1 fast path: one task per client connection reads each
//! request head, routes it, writes it to a pooled upstream connection with
//! the start of its body, streams the rest of the body with its framing
//! kept, and streams the response back the same way.
//!
//! Why it exists: most service-to-service traffic is HTTP/1.1 keep-alive,
//! and through hyper each request cost two header maps, a client dispatch
//! task and its channel, and re-framing of both bodies (BENCHMARKS.md,
//! "Where the HTTP/1.1 time goes"). Here a request costs two reads and two
//! writes, and no allocation once the connection's buffers are warm.
//!
//! It only takes what it can be sure of ([`head`]): an origin-form
//! HTTP/1.1 request with one Host, framed by one Content-Length or by
//! chunked alone, without Upgrade or Expect. Any other request hands the
//! connection, at that request, to the general stack
//! ([`crate::http::serve_counted`]), which answers it as it always has:
//! 400, 431, 501, 100-continue, WebSocket, HTTP/1.0. Bodies go through
//! as they came: a Content-Length body byte for byte, a chunked one
//! checked chunk by chunk ([`chunked`]), so the message ends where the
//! proxy and the next hop both think it does (RFC 9112 §6, §7.1).
//!
//! The request path reads top to bottom in [`serve`]: head → route →
//! upstream connection → body → response head → response body.

pub mod chunked;
pub mod head;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::baggage;
use crate::body::BodyError;
use crate::conn::Conn;
use crate::counted::CountedIo;
use crate::detect::Prefixed;
use crate::http::{Decided, decide, endpoint_of, key_of};
use crate::limits::{MIN_MAX_REQUEST_HEAD, Timeout, enabled, until};
use crate::protocol::Protocol;
use crate::reason::Decision;
use crate::semantics::answer::{self, Failure};
use crate::semantics::cookie::{self, Cookie};
use crate::semantics::edits::{EdgeKey, Edges};
use crate::semantics::{self, edits};
use crate::shared::Shared;
use crate::spans::{self, Links, Trace};
use crate::table::Endpoint;
use crate::upstream::{Raw, UpstreamError, connect_tcp};
use chunked::Chunked;
use head::{Edits, Framing, Handoff, MAX_HEADERS};

/// A client connection's read buffer: room for a usual request head, and
/// what it grows by. Kept small because every open connection holds it
/// while idle (hyper held 32 KiB: BENCHMARKS.md, "Memory held by many
/// connections").
const HEAD_CHUNK: usize = 4 * 1024;
/// An upstream connection's read buffer, and what it grows by.
const READ_CHUNK: usize = 8 * 1024;
/// The most body bytes copied beside a head into one write; a longer
/// start of a body is written on its own, from where it was read.
const COALESCE: usize = 4 * 1024;
/// Past this, a buffer grown for one large head is let go once empty.
const KEEP_CAPACITY: usize = 32 * 1024;
/// The largest response head taken from an upstream (hyper's client allows
/// about as much); past it the client gets 502.
const MAX_RESPONSE_HEAD: usize = 256 * 1024;
/// Interim (1xx) responses passed on before the final one; past it, 502.
const MAX_INTERIM: usize = 16;

/// Serves one HTTP/1.1 client connection whose first bytes, `prefix`, were
/// read by protocol detection, request after request: a whole head →
/// routed → the exchange. See the module docs.
///
/// A connection is busy while requests keep coming, and idle once none has
/// for [`IDLE_FREE`]. Only what an idle connection needs lives in this
/// future, which is most of what its task costs: the socket, the deadline
/// and the drain's signal. What serving requests takes (buffers, the
/// exchange's state, the general stack for a handoff) lives in a box made
/// when the connection gets busy and let go when it idles, so an app's pool
/// of idle keep-alive connections costs under 2 KiB each, the task and the
/// socket's registration (BENCHMARKS.md, "Memory per idle connection").
pub fn serve<I>(
    io: I,
    prefix: Bytes,
    conn: Conn,
    shared: Arc<Shared>,
) -> impl Future<Output = ()> + Send
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Made here, not in the future: an `async fn` would keep both `io` and
    // `down`, `prefix` and `buf`, for as long as the connection lives.
    let down = CountedIo::new(io, shared.metrics.connection(Protocol::Http1));
    let mut buf = BytesMut::with_capacity(HEAD_CHUNK.max(prefix.len()));
    buf.extend_from_slice(&prefix);
    drop(prefix);
    serve_requests(down, buf, conn, shared)
}

/// [`serve`]'s loop: busy, idle, busy again, until the connection ends.
async fn serve_requests<I>(
    mut down: CountedIo<I>,
    mut buf: BytesMut,
    conn: Conn,
    shared: Arc<Shared>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drained = shared.drain.started();
    tokio::pin!(drained);
    let mut wait = Wait::default();
    loop {
        let busy = busy(&mut down, &mut buf, &mut wait, conn, &shared, &mut drained);
        match Box::pin(busy).await {
            Waited::Idle => {}
            Waited::Head | Waited::Closed => return,
            Waited::TimedOut => return header_timeout(&shared, conn),
            // hyper answers it (431 for a head past the limit).
            Waited::Handoff => return Box::pin(handoff(down, buf, conn, shared.clone())).await,
        }
        // Idle: the next request's first byte is read without a buffer.
        match first_byte(&mut down, &mut buf, &wait, &mut drained).await {
            Waited::Head => {}
            Waited::TimedOut => return header_timeout(&shared, conn),
            _ => return,
        }
    }
}

/// Serves requests on a connection until it idles for [`IDLE_FREE`]
/// ([`Waited::Idle`], its buffers let go), ends, or needs the general stack
/// ([`Waited::Handoff`]: `buf` then holds the request, from its start).
async fn busy<I, D>(
    down: &mut CountedIo<I>,
    buf: &mut BytesMut,
    wait: &mut Wait,
    conn: Conn,
    shared: &Shared,
    drained: &mut std::pin::Pin<&mut D>,
) -> Waited
where
    I: AsyncRead + AsyncWrite + Unpin,
    D: std::future::Future<Output = ()>,
{
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut key = String::new();
    // The waits for heads share one timer ([`at`]); it starts unarmed.
    let timer = tokio::time::sleep_until(Instant::now() + UNARMED);
    tokio::pin!(timer);
    let max_head = shared
        .config
        .limits
        .max_request_head
        .max(MIN_MAX_REQUEST_HEAD);
    loop {
        // 1. A whole request head. No table is held while it comes: each
        // request is routed by the table current once its head is whole,
        // however long the connection idled before it.
        match wait_for_head(down, buf, wait, shared, drained, &mut timer).await {
            Waited::Head => {}
            other => return other,
        }
        // 2. Routed.
        let table = shared.tables.load();
        let (request, decided) = match prepare(buf, &table, shared, conn, &mut key, &mut out) {
            Step::Ready(request, decided) => (request, decided),
            Step::Handoff(why) => {
                tracing::trace!(peer = %conn.peer, dst = %conn.dst, why = why.as_str(), "HTTP/1.1 request handed to the general stack");
                return Waited::Handoff;
            }
            Step::Partial if buf.len() >= max_head => return Waited::Handoff,
            Step::Partial => {
                // An empty line that did not end a head (one before the
                // request line): wait for more.
                wait.tried = buf.len();
                continue;
            }
        };
        *wait = Wait::default();
        buf.advance(request.len);
        // 3. The exchange; then the connection goes on, or ends here.
        let keep = exchange(down, buf, &mut out, &request, &decided, shared).await;
        drop(decided);
        drop(table);
        if !keep || request.close || shared.drain.is_draining() {
            let _ = down.shutdown().await;
            return Waited::Closed;
        }
        shrink(buf, &mut out);
    }
}

/// Lets buffers grown for one large message go, once they are empty.
fn shrink(buf: &mut BytesMut, out: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() > KEEP_CAPACITY {
        *buf = BytesMut::with_capacity(HEAD_CHUNK);
    }
    if out.capacity() > KEEP_CAPACITY {
        *out = Vec::with_capacity(1024);
    }
}

/// Where a connection is in waiting for its next request head.
#[derive(Default)]
struct Wait {
    /// When the head must be whole (set at the first wait for it).
    deadline: Option<Option<Instant>>,
    /// How much of the buffer was there when it last seemed to hold a
    /// whole head and did not: only more bytes can change that.
    tried: usize,
}

/// Why waiting for a request head ended, and how [`busy`] did.
enum Waited {
    /// The buffer may hold a whole head.
    Head,
    /// No whole head within the largest one allowed, or a request the
    /// fast path does not take: the general stack serves the connection.
    Handoff,
    TimedOut,
    /// The client closed, failed, or the drain began.
    Closed,
    /// Idle for [`IDLE_FREE`]: the buffer was let go.
    Idle,
}

/// Reads from the client until `buf` may hold a whole request head (an
/// empty line has come), within the header read timeout.
async fn wait_for_head<I, D>(
    down: &mut CountedIo<I>,
    buf: &mut BytesMut,
    wait: &mut Wait,
    shared: &Shared,
    drained: &mut std::pin::Pin<&mut D>,
    timer: &mut Pin<&mut Sleep>,
) -> Waited
where
    I: AsyncRead + AsyncWrite + Unpin,
    D: std::future::Future<Output = ()>,
{
    let limits = &shared.config.limits;
    let max_head = limits.max_request_head.max(MIN_MAX_REQUEST_HEAD);
    loop {
        // A head's end past the limit is not looked for: hyper answers 431.
        if buf.len() > wait.tried && head::may_be_whole(&buf[..buf.len().min(max_head)]) {
            return Waited::Head;
        }
        if buf.len() >= max_head {
            return Waited::Handoff;
        }
        let d = *wait
            .deadline
            .get_or_insert_with(|| enabled(limits.header_read_timeout).map(|t| Instant::now() + t));
        // Between two requests the same timer also marks when the
        // connection has been idle long enough to let its buffers go.
        let idle = if buf.is_empty() {
            idle_from(d, limits.header_read_timeout)
        } else {
            None
        };
        let wake = match (d, idle) {
            (Some(d), Some(i)) => Some(d.min(i)),
            (d, i) => d.or(i),
        };
        reserve(buf, HEAD_CHUNK);
        tokio::select! {
            biased;
            r = down.read_buf(buf) => match r {
                Ok(0) | Err(_) => return Waited::Closed,
                Ok(_) => {}
            },
            () = at(timer, wake) => {
                if d.is_some_and(|d| Instant::now() >= d) {
                    return Waited::TimedOut;
                }
                *buf = BytesMut::new();
                return Waited::Idle;
            }
            () = drained.as_mut() => return Waited::Closed,
        }
    }
}

/// Waits for an idle connection's next request: its first byte, read
/// without a buffer, within what is left of the header read timeout.
async fn first_byte<I, D>(
    down: &mut CountedIo<I>,
    buf: &mut BytesMut,
    wait: &Wait,
    drained: &mut std::pin::Pin<&mut D>,
) -> Waited
where
    I: AsyncRead + AsyncWrite + Unpin,
    D: std::future::Future<Output = ()>,
{
    let mut first = [0u8; 1];
    tokio::select! {
        biased;
        r = down.read(&mut first) => match r {
            Ok(1) => {
                *buf = BytesMut::with_capacity(HEAD_CHUNK);
                buf.extend_from_slice(&first);
                Waited::Head
            }
            _ => Waited::Closed,
        },
        () = until(wait.deadline.flatten()) => Waited::TimedOut,
        () = drained.as_mut() => Waited::Closed,
    }
}

/// What the request head says about the exchange.
struct Request {
    /// The head's length in the client's buffer.
    len: usize,
    /// The client asked to close after this exchange.
    close: bool,
    framing: Framing,
    /// Idempotent, and bodiless: may be sent again on a fresh connection.
    replayable: bool,
    /// A HEAD: the response has no body, whatever its head says.
    head: bool,
}

// Built once per request and moved once: boxing the large variant would
// allocate per request instead.
#[allow(clippy::large_enum_variant)]
enum Step<'t> {
    Partial,
    Handoff(head::Handoff),
    Ready(Request, Decided<'t>),
}

/// Parses the head at the start of `buf` and, if the fast path takes it,
/// routes it (the key goes to `key`, which the decision borrows) and
/// writes it for the upstream in `out`.
fn prepare<'t>(
    buf: &[u8],
    table: &'t crate::table::Table,
    shared: &'t Shared,
    conn: Conn,
    key: &'t mut String,
    out: &mut Vec<u8>,
) -> Step<'t> {
    let started = std::time::Instant::now();
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let (parsed, fields) = head::parse_request(buf, &mut fields);
    let h = match parsed {
        head::Request::Partial => return Step::Partial,
        head::Request::Handoff(why) => return Step::Handoff(why),
        head::Request::Ready(h) => h,
    };
    let lookup = baggage::lookup(
        fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("baggage"))
            .map(|f| f.value),
        &shared.config.baggage_key,
    );
    let (mut found, baggage_rejected) = key_of(&lookup, &shared.metrics);
    let mut edits = Edits::default();
    let inbound = edits::takes_mark(conn.direction);
    let field = |name: &str| {
        fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| f.value)
    };
    let (hop_mark, mark) = if inbound {
        (field(edits::MARK.0), field(edits::OUTBOUND_MARK.0))
    } else {
        (None, None)
    };
    let hop = hop_mark.is_some();
    let meshed = mark.is_some();
    if inbound {
        edits.drop = &[edits::MARK.0, edits::OUTBOUND_MARK.0];
    }
    let own_ns = shared.config.namespace.as_deref();
    let cookie_allowed = inbound && !meshed && table.key_cookie_allowed(own_ns);
    if cookie_allowed && key_cookie_in(&h, fields) {
        return Step::Handoff(Handoff::KeyCookie);
    }
    let edge = edits::key_from_edge(
        conn.direction,
        found,
        Edges {
            // Requests with the cookie went to the general stack above.
            cookie_allowed: false,
            host: || Some(h.host),
            cookie: || Cookie::Absent,
        },
        table,
        own_ns,
    );
    if let EdgeKey::Key(k, _) = edge {
        edits.baggage_member = Some((&shared.config.baggage_key, k));
        found = Some(k);
    }
    let (route, stats, noted, span) =
        decide(shared, table, Protocol::Http1, conn, found, hop, || {
            let path = h.target.split('?').next().unwrap_or("");
            format!("{} {}{path}", h.method, h.host)
        });
    let serves = crate::http::served(table, &route, conn, span, own_ns);
    let links = if span == 0 {
        Links::default()
    } else {
        Links {
            span,
            parent: match hop_mark.or(mark) {
                Some(m) => spans::caller_of(m),
                None => noted.parent(),
            },
            trace: field("traceparent").and_then(Trace::parse),
        }
    };
    // Either mark says `1`, or while the tap looks, this request's span.
    let mut span_hex = [0u8; 16];
    let mark_name = if edits::marks(conn.direction, &route.target) {
        Some(edits::MARK.0)
    } else if edits::marks_outbound(conn.direction, &route.target) {
        Some(edits::OUTBOUND_MARK.0)
    } else {
        None
    };
    edits.add = mark_name.map(|name| (name, spans::mark_value(span, &mut span_hex)));
    key.clear();
    let has_key = found.is_some();
    if let Some(k) = found {
        key.push_str(k);
    }
    let key: &'t String = key;
    out.clear();
    head::write_request(out, &h, fields, &edits);
    let tapped = if span != 0 {
        match (
            Method::from_bytes(h.method.as_bytes()),
            h.target.parse::<Uri>(),
        ) {
            (Ok(m), Ok(u)) => Some((m, u, HeaderValue::from_str(h.host).ok())),
            _ => None,
        }
    } else {
        None
    };
    let request = Request {
        len: h.len,
        framing: h.framing,
        close: h.close,
        replayable: h.framing == Framing::Empty && semantics::is_idempotent(h.method.as_bytes()),
        head: h.method == "HEAD",
    };
    let decided = Decided {
        started,
        conn,
        protocol: Protocol::Http1,
        key: has_key.then_some(key.as_str()),
        decision: Decision::of(route.reason),
        stats,
        baggage_rejected,
        tapped,
        noted,
        no_store: false,
        links,
        serves,
        route,
    };
    Step::Ready(request, decided)
}

/// Whether a request carries the key cookie or `?divert=` (good or bad):
/// the general stack takes those ([`Handoff::KeyCookie`]).
fn key_cookie_in(h: &head::RequestHead<'_>, fields: &[httparse::Header<'_>]) -> bool {
    let query = h.target.split_once('?').map_or("", |(_, q)| q);
    cookie::param(query) != cookie::Param::Absent
        || cookie::find(
            fields
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case("cookie"))
                .map(|f| f.value),
        ) != Cookie::Absent
}

/// How long a keep-alive connection waits for its next request before
/// letting its buffers go (and [`busy`]'s box with them), as nginx and
/// HAProxy do.
const IDLE_FREE: Duration = Duration::from_secs(1);

/// When a connection that began waiting for a head with the header
/// deadline `d` (from a limit of `limit`) has been idle [`IDLE_FREE`]:
/// derived from `d`, so the common case reads no clock. `None` when the
/// header read timeout comes first anyway.
fn idle_from(d: Option<Instant>, limit: Duration) -> Option<Instant> {
    match d {
        Some(d) => limit
            .checked_sub(IDLE_FREE)
            .filter(|rest| !rest.is_zero())
            .and_then(|rest| d.checked_sub(rest)),
        None => Some(Instant::now() + IDLE_FREE),
    }
}

/// Counts and logs a head that did not come in time; the connection ends.
fn header_timeout(shared: &Shared, conn: Conn) {
    shared.metrics.timeout(Timeout::HeaderRead);
    tracing::debug!(peer = %conn.peer, dst = %conn.dst, "no whole request head within the header read timeout; closing");
}

/// Gives the connection, from the request at the start of `buf`, to the
/// general HTTP stack.
async fn handoff<I>(down: CountedIo<I>, buf: BytesMut, conn: Conn, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = Prefixed::new(buf.freeze(), down);
    crate::http::serve_counted(io, Protocol::Http1, conn, shared).await;
}

/// Where a body is between two of its pieces.
enum Left {
    Done,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl Left {
    fn of(framing: Framing) -> Left {
        match framing {
            Framing::Empty => Left::Done,
            Framing::Length(n) => Left::Length(n),
            Framing::Chunked => Left::Chunked(Chunked::new()),
            Framing::UntilClose => Left::UntilClose,
        }
    }

    fn is_done(&self) -> bool {
        match self {
            Left::Done => true,
            Left::Chunked(c) => c.is_done(),
            _ => false,
        }
    }

    /// How many bytes of `buf` belong to the body, noted as gone.
    fn take(&mut self, buf: &[u8]) -> Result<usize, chunked::ChunkError> {
        match self {
            Left::Done => Ok(0),
            Left::Length(n) => {
                let take = usize::try_from(*n).map_or(buf.len(), |n| n.min(buf.len()));
                *n -= take as u64;
                if *n == 0 {
                    *self = Left::Done;
                }
                Ok(take)
            }
            Left::Chunked(c) => c.scan(buf),
            Left::UntilClose => Ok(buf.len()),
        }
    }
}

/// How an exchange went wrong before the response head reached the client.
enum Failed {
    /// The client's body: 400 or 408.
    Body(BodyError),
    Upstream(UpstreamError),
    /// No response head within the limit: 504.
    NoResponse(Duration),
    /// A 101 nobody asked for: 502.
    Switched,
}

/// One exchange: the request (head already in `out`, body start in `buf`)
/// to an endpoint of its route, and the response back. Whether the client
/// connection can carry another request.
async fn exchange<I>(
    down: &mut CountedIo<I>,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    req: &Request,
    decided: &Decided<'_>,
    shared: &Shared,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Some(endpoint) = endpoint_of(&decided.route, &shared.passthrough) else {
        // The body was never read: the connection goes on only without one.
        let keep = req.framing == Framing::Empty;
        return fail(
            down,
            out,
            decided,
            &Failure::NoEndpoints,
            None,
            !keep,
            shared,
        )
        .await
            && keep;
    };
    // The start of the body goes out with the head, in one write.
    let mut body = Left::of(req.framing);
    match body.take(&buf[..buf.len().min(COALESCE)]) {
        Ok(n) => {
            out.extend_from_slice(&buf[..n]);
            buf.advance(n);
        }
        Err(e) => {
            let failure = Failure::Body(&BodyError::Chunked(e));
            fail(down, out, decided, &failure, None, true, shared).await;
            return false;
        }
    }
    let (mut up, request_complete, fin) =
        match send(down, buf, out, &mut body, req, &endpoint, shared).await {
            Ok(sent) => sent,
            Err(failed) => {
                let failure = match &failed {
                    Failed::Body(e) => Failure::Body(e),
                    Failed::Upstream(e) => Failure::Upstream(e),
                    Failed::NoResponse(limit) => Failure::NoResponse(*limit),
                    Failed::Switched => Failure::Switched,
                };
                // After a failed body the connection ends, as the body's
                // end is not known; after an upstream's failure it goes on
                // if the whole body was read.
                let keep = !matches!(failed, Failed::Body(_)) && body.is_done();
                let addr = Some(endpoint.addr);
                return fail(down, out, decided, &failure, addr, !keep, shared).await && keep;
            }
        };

    // The response head, written for the client in `out` by `send`.
    decided.finish(
        &shared.metrics,
        &shared.tap,
        StatusCode::from_u16(fin.status).unwrap_or(StatusCode::BAD_GATEWAY),
        Some(endpoint.addr),
        None,
    );

    // The response body: its start with the head, the rest as it comes.
    let mut body = Left::of(fin.framing);
    let Ok(n) = body.take(&up.buf[..up.buf.len().min(COALESCE)]) else {
        return false;
    };
    out.extend_from_slice(&up.buf[..n]);
    up.buf.advance(n);
    if down.write_all(out).await.is_err() {
        return false;
    }
    while !body.is_done() {
        if up.buf.is_empty() {
            reserve(&mut up.buf, READ_CHUNK);
            match up.stream.read_buf(&mut up.buf).await {
                Ok(0) if matches!(body, Left::UntilClose) => break,
                Ok(0) | Err(_) => {
                    tracing::debug!(upstream = %endpoint.addr, "the upstream's response body was cut short; closing the client connection");
                    return false;
                }
                Ok(_) => {}
            }
        }
        let Ok(n) = body.take(&up.buf) else {
            tracing::debug!(upstream = %endpoint.addr, "the upstream's chunked response body is malformed; closing the client connection");
            return false;
        };
        if down.write_all(&up.buf[..n]).await.is_err() {
            return false;
        }
        up.buf.advance(n);
    }
    if request_complete && !fin.upstream_close {
        endpoint
            .pool()
            .push_raw(up, shared.config.connect.max_idle_per_endpoint);
    }
    !fin.close
}

/// Sends the request: `out` on a pooled or new connection, then the rest of
/// the body; returns once the response head has come, written for the
/// client in `out`, and the connection's buffer holds what follows it.
/// A bodiless idempotent request that a reused connection fails under is
/// sent again on another (the upstream may close an idle connection just
/// as a request goes out on it). Also says whether the whole request went:
/// an upstream may answer before the body is through (a 413, say).
async fn send<I>(
    down: &mut CountedIo<I>,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    body: &mut Left,
    req: &Request,
    endpoint: &Endpoint,
    shared: &Shared,
) -> Result<(Raw, bool, Final), Failed>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let settings = &shared.config.connect;
    let pool = endpoint.pool();
    loop {
        let (mut up, reused) = match pool.pop_raw() {
            Some(raw) => (raw, true),
            None => {
                let stream = connect_tcp(endpoint.addr, settings)
                    .await
                    .map_err(Failed::Upstream)?;
                let raw = Raw {
                    stream,
                    buf: BytesMut::with_capacity(READ_CHUNK),
                };
                (raw, false)
            }
        };
        let retry = reused && req.replayable;
        if let Err(e) = up.stream.write_all(out).await {
            if retry {
                tracing::debug!(upstream = %endpoint.addr, error = %e, "idle connection failed under a request; sending it again");
                continue;
            }
            return Err(Failed::Upstream(UpstreamError::Exchange(e)));
        }
        if !body.is_done()
            && let BodyEnd::Answered(fin) =
                forward_body(down, buf, &mut up, body, req.head, out, shared).await?
        {
            return Ok((up, false, fin));
        }
        let limit = enabled(shared.config.limits.response_timeout);
        let close = req.close || shared.drain.is_draining();
        match response_head(down, &mut up, req.head, limit, close, out).await {
            Err(Failed::Upstream(UpstreamError::Response(head::BadResponse::Closed)))
                if retry && up.buf.is_empty() =>
            {
                tracing::debug!(upstream = %endpoint.addr, "idle connection closed under a request; sending it again");
            }
            // An upstream that closed the connection before the request
            // reached it answers the request with a reset.
            Err(Failed::Upstream(UpstreamError::Exchange(e)))
                if retry && up.buf.is_empty() && is_reset(&e) =>
            {
                tracing::debug!(upstream = %endpoint.addr, error = %e, "idle connection reset under a request; sending it again");
            }
            Err(e) => return Err(e),
            Ok(fin) => return Ok((up, true, fin)),
        }
    }
}

/// Whether a connection failed because the peer reset it.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

enum BodyEnd {
    Sent,
    /// The upstream answered before the body was through.
    Answered(Final),
}

/// A final response head, written for the client.
struct Final {
    status: u16,
    framing: Framing,
    /// The upstream closes (or may) after it: not reused.
    upstream_close: bool,
    /// The client's connection closes after it.
    close: bool,
}

/// Streams the rest of the request body from the client to the upstream,
/// each piece within the request body timeout.
async fn forward_body<I>(
    down: &mut CountedIo<I>,
    buf: &mut BytesMut,
    up: &mut Raw,
    body: &mut Left,
    head_request: bool,
    out: &mut Vec<u8>,
    shared: &Shared,
) -> Result<BodyEnd, Failed>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let stall = enabled(shared.config.limits.request_body_timeout);
    let mut interim = 0;
    while !body.is_done() {
        if buf.is_empty() {
            reserve(buf, HEAD_CHUNK);
            let deadline = stall.map(|s| Instant::now() + s);
            let woke = tokio::select! {
                biased;
                r = down.read_buf(buf) => match r {
                    Ok(0) | Err(_) => Woke::ClientClosed,
                    Ok(_) => Woke::Client,
                },
                r = up.stream.readable() => match r {
                    Ok(()) => Woke::Upstream,
                    Err(e) => Woke::UpstreamFailed(e),
                },
                () = until(deadline) => Woke::Stalled,
            };
            match woke {
                Woke::Client => {}
                Woke::ClientClosed => return Err(Failed::Body(BodyError::Closed)),
                Woke::Stalled => {
                    shared.metrics.timeout(Timeout::RequestBody);
                    let limit = stall.unwrap_or_default();
                    return Err(Failed::Body(BodyError::Stalled(limit)));
                }
                Woke::UpstreamFailed(e) => {
                    return Err(Failed::Upstream(UpstreamError::Exchange(e)));
                }
                Woke::Upstream => match up.stream.try_read_buf(&mut up.buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Ok(0) => {
                        return Err(Failed::Upstream(UpstreamError::Response(
                            head::BadResponse::Closed,
                        )));
                    }
                    // An interim answer (an unasked-for 100, say) is not
                    // the end of the upload: it is passed on. A final one
                    // is, and the client connection closes after it (the
                    // rest of the body is never read).
                    Ok(_) => {
                        while let Some(h) =
                            next_head(&mut up.buf, head_request, &mut interim, true, out)?
                        {
                            match h {
                                Head::Final(fin) => return Ok(BodyEnd::Answered(fin)),
                                Head::Interim => interim_to(down, out).await?,
                            }
                        }
                        continue;
                    }
                    Err(e) => return Err(Failed::Upstream(UpstreamError::Exchange(e))),
                },
            }
        }
        let n = body
            .take(buf)
            .map_err(|e| Failed::Body(BodyError::Chunked(e)))?;
        let write = up.stream.write_all(&buf[..n]);
        let written = match stall {
            Some(s) => tokio::time::timeout(s, write).await.unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the upstream stopped reading the request body",
                ))
            }),
            None => write.await,
        };
        written.map_err(|e| Failed::Upstream(UpstreamError::Exchange(e)))?;
        buf.advance(n);
    }
    Ok(BodyEnd::Sent)
}

enum Woke {
    Client,
    ClientClosed,
    Stalled,
    Upstream,
    UpstreamFailed(io::Error),
}

/// Reads the final response head (within `limit` if given) and writes it
/// for the client in `out` (`close`: the client's connection ends after
/// it). Interim heads before it are passed on to the client as they come.
async fn response_head<I>(
    down: &mut CountedIo<I>,
    up: &mut Raw,
    head_request: bool,
    limit: Option<Duration>,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Final, Failed>
where
    I: AsyncWrite + Unpin,
{
    let deadline = limit.map(|l| Instant::now() + l);
    let mut interim = 0;
    loop {
        match next_head(&mut up.buf, head_request, &mut interim, close, out)? {
            Some(Head::Final(fin)) => return Ok(fin),
            Some(Head::Interim) => {
                interim_to(down, out).await?;
                continue;
            }
            None => {}
        }
        reserve(&mut up.buf, READ_CHUNK);
        let read = up.stream.read_buf(&mut up.buf);
        let n = match deadline {
            Some(d) => match tokio::time::timeout_at(d, read).await {
                Ok(r) => r,
                Err(_) => return Err(Failed::NoResponse(limit.unwrap_or_default())),
            },
            None => read.await,
        };
        match n {
            Ok(0) => {
                return Err(Failed::Upstream(UpstreamError::Response(
                    head::BadResponse::Closed,
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(Failed::Upstream(UpstreamError::Exchange(e))),
        }
    }
}

/// A response head taken off the upstream's buffer, written for the client
/// in `out`.
enum Head {
    /// An interim (1xx) head, to pass on now: RFC 9110 §15.2 has a proxy
    /// forward every 1xx it did not ask for itself (`103 Early Hints` lets
    /// a browser start loading while the page is made).
    Interim,
    Final(Final),
}

/// Takes the next response head off the start of `buf`, if it is whole,
/// and writes it for the client in `out`: an interim one (counted in
/// `interim`, bounded) as it came, a final one with `connection: close`
/// when the client's connection ends after it (`close`, or a body that
/// runs to the close). A 101 is refused: no request here asked to upgrade.
fn next_head(
    buf: &mut BytesMut,
    head_request: bool,
    interim: &mut usize,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<Option<Head>, Failed> {
    let (len, head) = {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        match head::parse_response(buf, &mut fields, head_request) {
            Ok(Some((h, _))) if h.status == 101 => return Err(Failed::Switched),
            Ok(Some((h, fields))) if (100..200).contains(&h.status) => {
                *interim += 1;
                if *interim > MAX_INTERIM {
                    return Err(Failed::Upstream(UpstreamError::Response(
                        head::BadResponse::Malformed,
                    )));
                }
                out.clear();
                head::write_response(out, &h, fields, false);
                (h.len, Head::Interim)
            }
            Ok(Some((h, fields))) => {
                let close = close || h.framing == Framing::UntilClose;
                out.clear();
                head::write_response(out, &h, fields, close);
                let fin = Final {
                    status: h.status,
                    framing: h.framing,
                    upstream_close: h.close,
                    close,
                };
                (h.len, Head::Final(fin))
            }
            Ok(None) if buf.len() >= MAX_RESPONSE_HEAD => {
                return Err(Failed::Upstream(UpstreamError::Response(
                    head::BadResponse::TooLarge(MAX_RESPONSE_HEAD),
                )));
            }
            Ok(None) => return Ok(None),
            Err(e) => return Err(Failed::Upstream(UpstreamError::Response(e))),
        }
    };
    buf.advance(len);
    Ok(Some(head))
}

/// Passes an interim head (in `out`) on to the client. A client that is
/// gone fails the exchange as a closed body would.
async fn interim_to<I>(down: &mut CountedIo<I>, out: &[u8]) -> Result<(), Failed>
where
    I: AsyncWrite + Unpin,
{
    down.write_all(out)
        .await
        .map_err(|_| Failed::Body(BodyError::Closed))
}

/// Answers a routed request the proxy could not forward, as
/// [`answer`] says, counted and reported with its decision; `close`: the
/// client's connection ends after it. Whether the answer was written.
async fn fail<I>(
    down: &mut CountedIo<I>,
    out: &mut Vec<u8>,
    decided: &Decided<'_>,
    failure: &Failure<'_>,
    endpoint: Option<SocketAddr>,
    close: bool,
    shared: &Shared,
) -> bool
where
    I: AsyncWrite + Unpin,
{
    failure.count(&shared.metrics);
    let status = failure.status();
    let text = answer::text(&failure.target(&decided.route, endpoint), failure);
    decided.finish(
        &shared.metrics,
        &shared.tap,
        status,
        endpoint,
        Some(failure),
    );
    answer::write(out, status, &text, close);
    down.write_all(out).await.is_ok()
}

/// Room for one more read of about `chunk` bytes. Once the buffer's bytes
/// have been consumed, `reserve` reuses its allocation.
fn reserve(buf: &mut BytesMut, chunk: usize) {
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk);
    }
}

/// Where a busy connection's timer starts: later than any wait it serves
/// (if not, it fires early once, and is moved).
const UNARMED: Duration = Duration::from_secs(24 * 3600);

/// Resolves at `deadline`, or never, on a busy connection's one timer.
///
/// Each wait for a head ends at its own time (the idle mark a second
/// after the wait began, or the header deadline), so a timer per wait would
/// be registered per request, and one due earlier than the runtime's next
/// wake-up costs a syscall to re-arm the runtime (tokio writes its
/// eventfd): 0.7 per request at full load. The timer is moved only when a
/// wait must end sooner than it is set; when it is set too soon, it fires,
/// finds the wait's time not come, and is moved later then, about once a
/// second on a busy connection.
async fn at(timer: &mut Pin<&mut Sleep>, deadline: Option<Instant>) {
    let Some(d) = deadline else {
        return std::future::pending().await;
    };
    if timer.deadline() > d {
        timer.as_mut().reset(d);
    }
    loop {
        timer.as_mut().await;
        if timer.deadline() >= d {
            return;
        }
        timer.as_mut().reset(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The timer set for an earlier wait fires early for a later one
    /// without ending it, and is moved to the later wait's time.
    #[tokio::test(start_paused = true)]
    async fn a_wait_on_the_shared_timer_ends_at_its_own_time() {
        let began = Instant::now();
        let timer = tokio::time::sleep_until(began + UNARMED);
        tokio::pin!(timer);
        at(&mut timer, Some(began + Duration::from_secs(1))).await;
        assert_eq!(Instant::now(), began + Duration::from_secs(1));
        // Set for 1 s, the timer fires at once for a wait until 3 s, which
        // goes on until 3 s.
        at(&mut timer, Some(began + Duration::from_secs(3))).await;
        assert_eq!(Instant::now(), began + Duration::from_secs(3));
        // A wait that must end sooner than the timer is set moves it
        // earlier.
        timer.as_mut().reset(began + Duration::from_secs(10));
        at(&mut timer, Some(began + Duration::from_secs(4))).await;
        assert_eq!(Instant::now(), began + Duration::from_secs(4));
    }

    /// A later wait does not touch the timer until it fires: no timer
    /// registration per request.
    #[tokio::test(start_paused = true)]
    async fn a_later_wait_leaves_the_timer_where_it_is() {
        let began = Instant::now();
        let timer = tokio::time::sleep_until(began + Duration::from_secs(1));
        tokio::pin!(timer);
        let later = at(&mut timer, Some(began + Duration::from_secs(5)));
        let gave_up = tokio::time::timeout(Duration::from_millis(500), later).await;
        assert!(gave_up.is_err(), "the wait is not over at 0.5 s");
        assert_eq!(timer.deadline(), began + Duration::from_secs(1));
    }

    #[test]
    fn the_idle_mark_comes_a_second_after_the_wait_began() {
        let began = Instant::now();
        let limit = Duration::from_secs(60);
        assert_eq!(
            idle_from(Some(began + limit), limit),
            Some(began + IDLE_FREE)
        );
        // A header read timeout of a second or less closes the connection first.
        for short in [IDLE_FREE, Duration::from_millis(500)] {
            assert_eq!(idle_from(Some(began + short), short), None, "{short:?}");
        }
        // Without a header read timeout, a second from now.
        let mark = idle_from(None, Duration::ZERO).expect("a mark");
        assert!(mark >= began + IDLE_FREE && mark <= Instant::now() + IDLE_FREE);
    }
}
