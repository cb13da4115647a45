//! The soak's well-behaved clients, one kind per protocol the proxy carries:
//! HTTP/1.1 keep-alive (and one request per connection), h2c with
//! concurrent streams, gRPC (unary and bidirectional streaming), an
//! upgraded tunnel (a WebSocket handshake, then bytes both ways), and
//! opaque TCP. Each checks every answer: the status, that it answers this
//! request (the echoed id), that the body is whole, and that the right copy
//! sent it; each answer goes in the client ledger.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use divert_proto::demo::v1::catalog_client::CatalogClient;
use divert_proto::demo::v1::{ListMoviesRequest, Note};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, HeaderValue, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Interval, MissedTickBehavior, timeout};
use tokio_stream::StreamExt;

use crate::churn::Epoch;
use crate::ledger::{Counts, Key, ServiceCopy};
use crate::servers::{ID, OPAQUE_HELLO, SERVED_BY};
use crate::world::{CATALOG, DB, WEB};

/// The longest any one exchange may take before it counts as lost.
pub const EXCHANGE_LIMIT: Duration = Duration::from_secs(30);
/// Failures described one by one in the report; the rest are counted.
const DESCRIBED: usize = 20;

/// The kinds of traffic, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Http1,
    H2c,
    Grpc,
    Upgrade,
    Opaque,
}

impl Traffic {
    pub const ALL: [Traffic; 5] = [
        Traffic::Http1,
        Traffic::H2c,
        Traffic::Grpc,
        Traffic::Upgrade,
        Traffic::Opaque,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Traffic::Http1 => "HTTP/1.1",
            Traffic::H2c => "h2c",
            Traffic::Grpc => "gRPC",
            Traffic::Upgrade => "upgraded tunnels",
            Traffic::Opaque => "opaque TCP",
        }
    }
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Answers, by the copy that sent them and the key of the request.
    pub answered: Counts,
    by_traffic: [AtomicU64; 5],
    failed: AtomicU64,
    misrouted: AtomicU64,
    /// Answers to alice's web requests while her copy came or went.
    during_change: AtomicU64,
    described: Mutex<Vec<String>>,
}

impl Tally {
    pub fn answers(&self, t: Traffic) -> u64 {
        self.by_traffic[t as usize].load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    pub fn misrouted(&self) -> u64 {
        self.misrouted.load(Ordering::Relaxed)
    }

    pub fn during_change(&self) -> u64 {
        self.during_change.load(Ordering::Relaxed)
    }

    pub fn described(&self) -> Vec<String> {
        self.described.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn describe(&self, what: String) {
        if let Ok(mut d) = self.described.lock()
            && d.len() < DESCRIBED
        {
            d.push(what);
        }
    }

    fn fail(&self, t: Traffic, what: impl std::fmt::Display) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.describe(format!("{}: {what}", t.name()));
    }

    /// Records an answer from `served` to a request with `key` for the
    /// service `wanted` (its staging copy), which started in epoch `start`
    /// and ended in `end`, and checks that the right copy sent it.
    fn answer(
        &self,
        t: Traffic,
        wanted: ServiceCopy,
        key: Key,
        served: ServiceCopy,
        start: u64,
        end: u64,
    ) {
        self.answered.add(served, key);
        self.by_traffic[t as usize].fetch_add(1, Ordering::Relaxed);
        let right = match (wanted, key) {
            (ServiceCopy::WebStaging, Key::Alice) => match Epoch::alice_web(start, end) {
                Some(true) => served == ServiceCopy::WebAlice,
                Some(false) => served == ServiceCopy::WebStaging,
                None => {
                    self.during_change.fetch_add(1, Ordering::Relaxed);
                    matches!(served, ServiceCopy::WebAlice | ServiceCopy::WebStaging)
                }
            },
            (ServiceCopy::CatalogStaging, Key::Alice) => served == ServiceCopy::CatalogAlice,
            _ => served == wanted,
        };
        if !right {
            self.misrouted.fetch_add(1, Ordering::Relaxed);
            self.describe(format!(
                "{}: a request with {} for {} was answered by {} (epochs {start}..{end})",
                t.name(),
                key.name(),
                wanted.name(),
                served.name()
            ));
        }
    }
}

/// What every client shares.
pub struct Ctx {
    pub tally: Tally,
    pub epoch: Arc<Epoch>,
    stop: AtomicBool,
    pub period: Duration,
    next_id: AtomicU64,
}

impl Ctx {
    /// Clients that each make one exchange per `period`.
    pub fn new(epoch: Arc<Epoch>, period: Duration) -> Ctx {
        Ctx {
            tally: Tally::default(),
            epoch,
            stop: AtomicBool::new(false),
            period,
            next_id: AtomicU64::new(1),
        }
    }

    /// Asks every client to finish its exchange in flight and end.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn id(&self) -> HeaderValue {
        HeaderValue::from(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn ticker(&self, periods: u32) -> Interval {
        let mut t = tokio::time::interval(self.period * periods);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    }
}

/// A small deterministic generator (xorshift64*), so that a run's mix can
/// be repeated from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn key(&mut self) -> Key {
        Key::ALL[self.below(3) as usize]
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

async fn connect(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let s = timeout(EXCHANGE_LIMIT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One web request: built, sent by `send`, and its answer checked.
async fn web_request<F, Fut>(ctx: &Ctx, rng: &mut Rng, t: Traffic, send: F)
where
    F: FnOnce(Request<Full<Bytes>>) -> Fut,
    Fut: Future<Output = Result<Response<Incoming>, hyper::Error>>,
{
    let key = rng.key();
    let id = ctx.id();
    let body_len = if rng.below(3) == 0 {
        rng.below(16 * 1024) as usize
    } else {
        0
    };
    let uri = if t == Traffic::H2c {
        "http://web/soak"
    } else {
        "/soak"
    };
    let mut req = Request::builder()
        .method(if body_len > 0 { "POST" } else { "GET" })
        .uri(uri);
    if t != Traffic::H2c {
        req = req.header(HOST, "web");
    }
    req = req.header(ID, id.clone());
    if let Some(b) = key.baggage() {
        req = req.header("baggage", b);
    }
    let Ok(req) = req.body(Full::new(Bytes::from(rng.bytes(body_len)))) else {
        return ctx.tally.fail(t, "the request could not be built");
    };
    let start = ctx.epoch.now();
    let resp = match timeout(EXCHANGE_LIMIT, send(req)).await {
        Err(_) => return ctx.tally.fail(t, "no answer within the limit"),
        Ok(Err(e)) => return ctx.tally.fail(t, format!("the request failed: {e}")),
        Ok(Ok(resp)) => resp,
    };
    let Some(served) = check_head(ctx, t, &resp, StatusCode::OK, &id) else {
        return;
    };
    let body = match timeout(EXCHANGE_LIMIT, resp.into_body().collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => return ctx.tally.fail(t, format!("the answer's body failed: {e}")),
        Err(_) => return ctx.tally.fail(t, "the answer's body stalled"),
    };
    if body != format!("{} {body_len}\n", served.name()).as_bytes() {
        return ctx
            .tally
            .fail(t, format!("{body_len} bytes sent, answer {body:?}"));
    }
    let end = ctx.epoch.now();
    ctx.tally
        .answer(t, ServiceCopy::WebStaging, key, served, start, end);
}

/// Checks an answer's status and id; the copy that sent it.
fn check_head(
    ctx: &Ctx,
    t: Traffic,
    resp: &Response<Incoming>,
    status: StatusCode,
    id: &HeaderValue,
) -> Option<ServiceCopy> {
    if resp.status() != status {
        ctx.tally
            .fail(t, format!("status {}, not {status}", resp.status()));
        return None;
    }
    if resp.headers().get(ID) != Some(id) {
        ctx.tally.fail(
            t,
            format!(
                "the answer to request {id:?} is for {:?}",
                resp.headers().get(ID)
            ),
        );
        return None;
    }
    let served = resp
        .headers()
        .get(SERVED_BY)
        .and_then(|v| ServiceCopy::from_name(v.as_bytes()));
    if served.is_none() {
        ctx.tally.fail(
            t,
            format!("no known copy in {:?}", resp.headers().get(SERVED_BY)),
        );
    }
    served
}

/// HTTP/1.1 keep-alive: a connection carries `per_connection` requests (a
/// random count up to it), then the next one starts.
pub async fn http1(ctx: Arc<Ctx>, seed: u64, per_connection: u64) {
    let t = Traffic::Http1;
    let mut rng = Rng::new(seed);
    let mut tick = ctx.ticker(1);
    while !ctx.stopped() {
        tick.tick().await;
        let stream = match connect(WEB).await {
            Ok(s) => s,
            Err(e) => {
                ctx.tally.fail(t, format!("connect: {e}"));
                continue;
            }
        };
        let (mut send, conn) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(h) => h,
                Err(e) => {
                    ctx.tally.fail(t, format!("handshake: {e}"));
                    continue;
                }
            };
        let conn = tokio::spawn(conn);
        let requests = 1 + rng.below(per_connection);
        for i in 0..requests {
            if ctx.stopped() {
                break;
            }
            if i > 0 {
                tick.tick().await;
            }
            if send.ready().await.is_err() {
                ctx.tally
                    .fail(t, "the proxy closed a keep-alive connection");
                break;
            }
            web_request(&ctx, &mut rng, t, |req| send.send_request(req)).await;
        }
        drop(send);
        let _ = conn.await;
    }
}

/// h2c: `streams` request loops share one connection, which carries about
/// `per_connection` requests before the next one starts.
pub async fn h2c(ctx: Arc<Ctx>, seed: u64, streams: u64, per_connection: u64) {
    let t = Traffic::H2c;
    let mut rng = Rng::new(seed);
    while !ctx.stopped() {
        let stream = match connect(WEB).await {
            Ok(s) => s,
            Err(e) => {
                ctx.tally.fail(t, format!("connect: {e}"));
                tokio::time::sleep(ctx.period).await;
                continue;
            }
        };
        let (send, conn) =
            match hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
            {
                Ok(h) => h,
                Err(e) => {
                    ctx.tally.fail(t, format!("handshake: {e}"));
                    continue;
                }
            };
        let conn = tokio::spawn(conn);
        let mut loops = tokio::task::JoinSet::new();
        let each = 1 + rng.below(per_connection) / streams.max(1);
        for _ in 0..streams {
            let (ctx, mut send, mut rng) = (ctx.clone(), send.clone(), Rng::new(rng.next()));
            loops.spawn(async move {
                let mut tick = ctx.ticker(1);
                for _ in 0..each {
                    tick.tick().await;
                    if ctx.stopped() {
                        break;
                    }
                    if send.ready().await.is_err() {
                        ctx.tally.fail(t, "the proxy closed an HTTP/2 connection");
                        break;
                    }
                    web_request(&ctx, &mut rng, t, |req| send.send_request(req)).await;
                }
            });
        }
        while loops.join_next().await.is_some() {}
        drop(send);
        let _ = conn.await;
    }
}

/// gRPC over one channel (which reconnects by itself): unary calls, and
/// one in five a bidirectional stream of a few notes.
pub async fn grpc(ctx: Arc<Ctx>, seed: u64) {
    let t = Traffic::Grpc;
    let mut rng = Rng::new(seed);
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{CATALOG}")) {
        Ok(e) => e.connect_timeout(EXCHANGE_LIMIT),
        Err(e) => return ctx.tally.fail(t, format!("endpoint: {e}")),
    };
    let mut client = CatalogClient::new(endpoint.connect_lazy());
    let mut tick = ctx.ticker(1);
    while !ctx.stopped() {
        tick.tick().await;
        let key = rng.key();
        let start = ctx.epoch.now();
        let served = if rng.below(5) == 0 {
            let notes: Vec<String> = (0..1 + rng.below(4))
                .map(|_| rng.next().to_string())
                .collect();
            let outgoing = tokio_stream::iter(notes.clone().into_iter().map(|text| Note { text }));
            let call = async {
                let mut req = tonic::Request::new(outgoing);
                add_baggage(&mut req, key);
                let mut answers = client.chat(req).await?.into_inner();
                let mut got = Vec::new();
                let mut served = None;
                while let Some(echo) = answers.next().await {
                    let echo = echo?;
                    served = echo.served_by.map(|s| s.namespace);
                    got.push(echo.text);
                }
                Ok::<_, tonic::Status>((got, served))
            };
            match timeout(EXCHANGE_LIMIT, call).await {
                Err(_) => {
                    ctx.tally.fail(t, "a chat stalled");
                    continue;
                }
                Ok(Err(status)) => {
                    ctx.tally.fail(t, format!("chat: {status}"));
                    continue;
                }
                Ok(Ok((got, _))) if got != notes => {
                    ctx.tally
                        .fail(t, format!("chat sent {notes:?}, got back {got:?}"));
                    continue;
                }
                Ok(Ok((_, served))) => served,
            }
        } else {
            let limit = rng.below(20) as u32;
            let mut req = tonic::Request::new(ListMoviesRequest { limit });
            add_baggage(&mut req, key);
            match timeout(EXCHANGE_LIMIT, client.list_movies(req)).await {
                Err(_) => {
                    ctx.tally.fail(t, "a call stalled");
                    continue;
                }
                Ok(Err(status)) => {
                    ctx.tally.fail(t, format!("call: {status}"));
                    continue;
                }
                Ok(Ok(resp)) => {
                    let resp = resp.into_inner();
                    if resp.movies.len() != limit as usize {
                        ctx.tally.fail(
                            t,
                            format!("{limit} movies asked, {} got", resp.movies.len()),
                        );
                        continue;
                    }
                    resp.served_by.map(|s| s.namespace)
                }
            }
        };
        let served = match served.as_deref() {
            Some("staging") => ServiceCopy::CatalogStaging,
            Some("alice") => ServiceCopy::CatalogAlice,
            other => {
                ctx.tally.fail(t, format!("served by {other:?}"));
                continue;
            }
        };
        let end = ctx.epoch.now();
        ctx.tally
            .answer(t, ServiceCopy::CatalogStaging, key, served, start, end);
    }
}

fn add_baggage<T>(req: &mut tonic::Request<T>, key: Key) {
    if let Some(b) = key.baggage() {
        req.metadata_mut()
            .insert("baggage", tonic::metadata::MetadataValue::from_static(b));
    }
}

/// Upgraded tunnels: a WebSocket handshake through the proxy, then a few
/// messages echoed back byte for byte, then a clean close.
pub async fn upgrade(ctx: Arc<Ctx>, seed: u64) {
    let t = Traffic::Upgrade;
    let mut rng = Rng::new(seed);
    let mut tick = ctx.ticker(5);
    while !ctx.stopped() {
        tick.tick().await;
        let key = rng.key();
        let id = ctx.id();
        let exchange = async {
            let stream = connect(WEB).await.map_err(|e| format!("connect: {e}"))?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn.with_upgrades());
            let mut req = Request::builder()
                .uri("/chat")
                .header(HOST, "web")
                .header(CONNECTION, "upgrade")
                .header(UPGRADE, "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "c29hayBzb2FrIHNvYWsgIQ==")
                .header(ID, id.clone());
            if let Some(b) = key.baggage() {
                req = req.header("baggage", b);
            }
            let req = req
                .body(Full::<Bytes>::default())
                .map_err(|e| e.to_string())?;
            let start = ctx.epoch.now();
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| format!("upgrade: {e}"))?;
            let end = ctx.epoch.now();
            Ok::<_, String>((resp, start, end))
        };
        let (resp, start, end) = match timeout(EXCHANGE_LIMIT, exchange).await {
            Err(_) => {
                ctx.tally
                    .fail(t, "no answer to the upgrade within the limit");
                continue;
            }
            Ok(Err(e)) => {
                ctx.tally.fail(t, e);
                continue;
            }
            Ok(Ok(r)) => r,
        };
        let Some(served) = check_head(&ctx, t, &resp, StatusCode::SWITCHING_PROTOCOLS, &id) else {
            continue;
        };
        ctx.tally
            .answer(t, ServiceCopy::WebStaging, key, served, start, end);
        let tunnel = async {
            let upgraded = hyper::upgrade::on(resp)
                .await
                .map_err(|e| format!("upgrade: {e}"))?;
            let io = TokioIo::new(upgraded);
            let messages: Vec<Vec<u8>> = (0..1 + rng.below(8))
                .map(|_| {
                    let len = 1 + rng.below(4096) as usize;
                    rng.bytes(len)
                })
                .collect();
            echo_exchange(io, &messages).await
        };
        match timeout(EXCHANGE_LIMIT, tunnel).await {
            Err(_) => ctx.tally.fail(t, "a tunnel stalled"),
            Ok(Err(e)) => ctx.tally.fail(t, e),
            Ok(Ok(())) => {}
        }
    }
}

/// Sends each message and reads it back whole (writing and reading at
/// once, so a message larger than the socket buffers cannot deadlock),
/// then closes its side and expects the peer to close too.
async fn echo_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    messages: &[Vec<u8>],
) -> Result<(), String> {
    let (mut r, mut w) = tokio::io::split(io);
    for m in messages {
        let mut back = vec![0u8; m.len()];
        let (wrote, read) = tokio::join!(w.write_all(m), r.read_exact(&mut back));
        wrote.map_err(|e| format!("write: {e}"))?;
        read.map_err(|e| format!("read the echo: {e}"))?;
        if &back != m {
            return Err(format!("{} bytes sent, other bytes echoed", m.len()));
        }
    }
    w.shutdown().await.map_err(|e| format!("close: {e}"))?;
    let mut rest = [0u8; 1];
    match r.read(&mut rest).await {
        Ok(0) => Ok(()),
        Ok(_) => Err("bytes after the last echo".into()),
        Err(e) => Err(format!("waiting for the close: {e}")),
    }
}

/// Opaque TCP to the database: its greeting, a few messages up to 64 KiB
/// echoed back, a clean close.
pub async fn opaque(ctx: Arc<Ctx>, seed: u64) {
    let t = Traffic::Opaque;
    let mut rng = Rng::new(seed);
    let mut tick = ctx.ticker(2);
    while !ctx.stopped() {
        tick.tick().await;
        let messages: Vec<Vec<u8>> = (0..1 + rng.below(4))
            .map(|_| {
                let len = 1 + rng.below(64 * 1024) as usize;
                rng.bytes(len)
            })
            .collect();
        let exchange = async {
            let mut s = connect(DB).await.map_err(|e| format!("connect: {e}"))?;
            let greeting = format!("{}\n", ServiceCopy::DbStaging.name());
            let mut got = vec![0u8; greeting.len()];
            s.read_exact(&mut got)
                .await
                .map_err(|e| format!("greeting: {e}"))?;
            if got != greeting.as_bytes() {
                return Err(format!("greeted with {:?}", String::from_utf8_lossy(&got)));
            }
            s.write_all(OPAQUE_HELLO)
                .await
                .map_err(|e| format!("hello: {e}"))?;
            echo_exchange(s, &messages).await
        };
        match timeout(EXCHANGE_LIMIT, exchange).await {
            Err(_) => ctx.tally.fail(t, "a connection stalled"),
            Ok(Err(e)) => ctx.tally.fail(t, e),
            Ok(Ok(())) => {
                let e = ctx.epoch.now();
                ctx.tally.answer(
                    t,
                    ServiceCopy::DbStaging,
                    Key::None,
                    ServiceCopy::DbStaging,
                    e,
                    e,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alice_s_web_requests_are_checked_against_the_table_of_their_epoch() {
        let ctx = Ctx::new(Arc::new(Epoch::default()), Duration::from_millis(1));
        let web = ServiceCopy::WebStaging;
        ctx.tally
            .answer(Traffic::Http1, web, Key::Alice, ServiceCopy::WebAlice, 0, 0);
        ctx.tally.answer(
            Traffic::Http1,
            web,
            Key::Alice,
            ServiceCopy::WebStaging,
            2,
            2,
        );
        ctx.tally.answer(
            Traffic::Http1,
            web,
            Key::Alice,
            ServiceCopy::WebStaging,
            0,
            2,
        );
        assert_eq!((ctx.tally.misrouted(), ctx.tally.during_change()), (0, 1));
        ctx.tally.answer(
            Traffic::Http1,
            web,
            Key::Alice,
            ServiceCopy::WebStaging,
            0,
            0,
        );
        ctx.tally
            .answer(Traffic::H2c, web, Key::Bob, ServiceCopy::WebAlice, 0, 0);
        ctx.tally.answer(
            Traffic::Grpc,
            ServiceCopy::CatalogStaging,
            Key::Alice,
            ServiceCopy::CatalogStaging,
            0,
            0,
        );
        assert_eq!(ctx.tally.misrouted(), 3);
        assert_eq!(ctx.tally.described().len(), 3);
        assert_eq!(ctx.tally.answered.total(), 6);
    }
}
