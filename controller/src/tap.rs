//! The Tap relay: `divert.tap.v1.Tap/Watch` on the controller, merging the
//! tap streams of many proxies into one.
//!
//! A proxy serves its own tap on its admin port. It reports that port in its
//! Discovery `Watch` (0 when the admin server is only on loopback), and the
//! controller reaches it at the IP its Discovery stream comes from. For each
//! watch the relay dials every matching proxy, forwards the filters, and
//! sends the events on as they come, through one bounded buffer per watch:
//! a slow client loses events (counted in the next one's `dropped_before`),
//! never holds a proxy back, and never grows the controller's memory.
//!
//! Proxies that connect after the watch started are picked up at the next
//! re-list; a proxy is never dialed twice while its stream is alive. All the
//! upstream streams of a watch live in one task that ends with the client's
//! stream.
//!
//! Who may watch ([`crate::auth`]): a person whose Kubernetes credentials
//! say they may read the logs of the watched namespace's pods; with no
//! namespace, only the proxies of the namespaces they may. The relay opens a
//! proxy's tap with the key that proxy's Discovery stream was given: a
//! proxy's tap answers nobody else but its own pod's loopback.

use std::collections::HashMap;
use std::error::Error as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use divert_core::error::chain;
use divert_core::task::AbortOnDrop;
use divert_proto::tap::v1::tap_client::TapClient;
use divert_proto::tap::v1::tap_server::{Tap, TapServer};
use divert_proto::tap::v1::{KeyDropsRequest, KeyDropsResponse, TapEvent, TapRequest};
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Access, Read, Viewer};
use crate::store::{Store, Subscriber};

/// How the relay dials proxies and buffers their events.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// How long to wait for a proxy to accept the connection and answer Watch.
    pub connect_timeout: Duration,
    /// How often the connected proxies are listed again for new ones.
    pub relist_interval: Duration,
    /// Events buffered per watch; more are dropped (and counted).
    pub buffer: usize,
}

impl Default for RelaySettings {
    fn default() -> Self {
        RelaySettings {
            connect_timeout: Duration::from_secs(2),
            relist_interval: Duration::from_secs(2),
            buffer: 1024,
        }
    }
}

/// The Tap service of the controller.
pub struct TapRelay {
    store: Arc<Store>,
    access: Access,
    settings: RelaySettings,
}

impl TapRelay {
    pub fn new(store: Arc<Store>, access: Access) -> TapServer<TapRelay> {
        Self::with_settings(store, access, RelaySettings::default())
    }

    pub fn with_settings(
        store: Arc<Store>,
        access: Access,
        settings: RelaySettings,
    ) -> TapServer<TapRelay> {
        TapServer::new(TapRelay {
            store,
            access,
            settings,
        })
    }
}

/// A proxy whose tap the relay can dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its admin server: the Discovery stream's peer IP and the reported port.
    pub addr: SocketAddr,
    pub pod: String,
    pub namespace: String,
    /// The key its tap answers the controller with.
    pub key: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pod.is_empty() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{} ({})", self.namespace, self.pod, self.addr)
        }
    }
}

/// The proxies a watch can reach, and how many more matched but cannot be
/// reached (no admin port or no known address).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    pub targets: Vec<Target>,
    pub without_admin: usize,
}

/// Picks the subscribers in `proxy_namespace` (every one when empty) that
/// reported an admin port and whose address is known, one per admin address:
/// a proxy that reconnected may be listed twice for a moment.
pub fn pick(subscribers: &[Arc<Subscriber>], proxy_namespace: &str) -> Selection {
    let mut selection = Selection::default();
    for s in subscribers {
        if !proxy_namespace.is_empty() && s.info.namespace != proxy_namespace {
            continue;
        }
        let port = u16::try_from(s.info.admin_port).ok().filter(|p| *p != 0);
        let (Some(port), Some(remote)) = (port, s.remote_addr) else {
            selection.without_admin += 1;
            continue;
        };
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        let addr = SocketAddr::new(remote.ip().to_canonical(), port);
        if selection.targets.iter().all(|t| t.addr != addr) {
            selection.targets.push(Target {
                addr,
                pod: s.info.pod.clone(),
                namespace: s.info.namespace.clone(),
                key: s.tap_key.clone(),
            });
        }
    }
    selection.targets.sort_by_key(|t| t.addr);
    selection
}

/// The namespaces one watch's client may tap, asked once each.
struct Allowed {
    access: Access,
    viewer: Viewer,
    decided: HashMap<String, bool>,
}

impl Allowed {
    fn new(access: Access, viewer: Viewer) -> Self {
        Allowed {
            access,
            viewer,
            decided: HashMap::new(),
        }
    }

    async fn may(&mut self, namespace: &str) -> Result<bool, Status> {
        if let Some(d) = self.decided.get(namespace) {
            return Ok(*d);
        }
        let d = self
            .access
            .may(&self.viewer, Read::Traffic, namespace)
            .await
            .map_err(|e| e.status())?;
        self.decided.insert(namespace.to_owned(), d);
        Ok(d)
    }

    /// The targets in namespaces the client may tap.
    async fn filter(&mut self, targets: Vec<Target>) -> Result<Vec<Target>, Status> {
        let mut kept = Vec::with_capacity(targets.len());
        for t in targets {
            if self.may(&t.namespace).await? {
                kept.push(t);
            }
        }
        Ok(kept)
    }
}

/// Why a proxy's tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect: {}", chain(.0))]
    Connect(#[source] tonic::transport::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{rpc} failed: {} ({:?})", .status.message(), .status.code())]
    Refused {
        rpc: &'static str,
        #[source]
        status: Status,
    },
}

type EventStream = Pin<Box<dyn Stream<Item = Result<TapEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Tap for TapRelay {
    type WatchStream = EventStream;

    async fn watch(&self, request: Request<TapRequest>) -> Result<Response<EventStream>, Status> {
        let peer = request.remote_addr();
        let viewer = self.access.user(&request).await.map_err(|e| {
            tracing::info!(peer = ?peer, error = %e, "a tap watch was refused");
            e.status()
        })?;
        let request = request.into_inner();
        let ratio = request.sample_ratio;
        if !(0.0..=1.0).contains(&ratio) {
            return Err(Status::invalid_argument(format!(
                "sample_ratio {ratio} is not in (0, 1] (or 0 for all)"
            )));
        }
        let proxy_namespace = request.proxy_namespace.clone();
        let mut allowed = Allowed::new(self.access.clone(), viewer);
        if !proxy_namespace.is_empty() && !allowed.may(&proxy_namespace).await? {
            return Err(Status::permission_denied(
                Read::Traffic.denied(&proxy_namespace),
            ));
        }
        let mut selection = pick(&self.store.subscribers(), &proxy_namespace);
        let candidates = selection.targets.len();
        selection.targets = allowed.filter(selection.targets).await?;
        if candidates > 0 && selection.targets.is_empty() {
            return Err(Status::permission_denied(
                "you may tap none of the namespaces with connected proxies: it needs the right \
                 to read a namespace's pods' logs (get pods/log, in the view role)",
            ));
        }
        if selection.targets.is_empty() {
            return Err(Status::not_found(no_proxy_message(
                &proxy_namespace,
                selection.without_admin,
            )));
        }
        // The relay owns the namespace selection and the limit.
        let upstream = TapRequest {
            proxy_namespace: String::new(),
            max_events: 0,
            ..request.clone()
        };
        let timeout = self.settings.connect_timeout;
        let opened = futures_util::future::join_all(selection.targets.iter().map(|target| {
            let upstream = upstream.clone();
            async move { open(target, upstream, timeout).await }
        }))
        .await;
        let mut streams = Vec::new();
        let mut failures = Vec::new();
        for (target, result) in selection.targets.iter().zip(opened) {
            match result {
                Ok(stream) => streams.push((target.clone(), stream)),
                Err(e) => {
                    tracing::debug!(proxy = %target, error = %e, "cannot open the proxy's tap");
                    failures.push(format!("{target}: {e}"));
                }
            }
        }
        if streams.is_empty() {
            return Err(Status::unavailable(unreachable_message(
                &proxy_namespace,
                &failures,
            )));
        }
        tracing::info!(peer = ?peer, proxy_namespace = %proxy_namespace, proxies = streams.len(), unreachable = failures.len(), "tap watch started");

        let (tx, rx) = mpsc::channel(self.settings.buffer.max(1));
        let watch = Watch {
            store: self.store.clone(),
            proxy_namespace,
            allowed,
            upstream,
            settings: self.settings.clone(),
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let supervisor = tokio::spawn(watch.run(streams));
        Ok(Response::new(Box::pin(RelayStream {
            rx,
            remaining: (request.max_events > 0).then_some(request.max_events),
            _supervisor: AbortOnDrop::from(supervisor),
        })))
    }

    /// The key drops of every proxy of the namespaces the caller may tap
    /// (or of `proxy_namespace`, if they may tap it).
    async fn key_drops(
        &self,
        request: Request<KeyDropsRequest>,
    ) -> Result<Response<KeyDropsResponse>, Status> {
        let viewer = self.access.user(&request).await.map_err(|e| e.status())?;
        let proxy_namespace = request.into_inner().proxy_namespace;
        let mut allowed = Allowed::new(self.access.clone(), viewer);
        if !proxy_namespace.is_empty() && !allowed.may(&proxy_namespace).await? {
            return Err(Status::permission_denied(
                Read::Traffic.denied(&proxy_namespace),
            ));
        }
        let selection = pick(&self.store.subscribers(), &proxy_namespace);
        let targets = allowed.filter(selection.targets).await?;
        Ok(Response::new(
            key_drops(targets, self.settings.connect_timeout).await,
        ))
    }
}

fn no_proxy_message(proxy_namespace: &str, without_admin: usize) -> String {
    let whose = if proxy_namespace.is_empty() {
        "no connected proxy serves tap".to_owned()
    } else {
        format!("no connected proxy in namespace {proxy_namespace:?} serves tap")
    };
    let proxies = if without_admin == 1 {
        "proxy"
    } else {
        "proxies"
    };
    if without_admin > 0 {
        format!(
            "{whose}: {without_admin} connected {proxies} report no admin port (their \
             --admin-addr is on loopback, or they run an older divert); run them with \
             --admin-addr 0.0.0.0:4191 so the controller can reach their tap"
        )
    } else {
        format!(
            "{whose}: check that the pods are injected and running (divert check), and \
             that their proxies' --admin-addr is reachable from the controller \
             (0.0.0.0:4191, not 127.0.0.1)"
        )
    }
}

fn unreachable_message(proxy_namespace: &str, failures: &[String]) -> String {
    const SHOWN: usize = 3;
    let whose = if proxy_namespace.is_empty() {
        String::new()
    } else {
        format!(" in namespace {proxy_namespace:?}")
    };
    let mut listed = failures[..failures.len().min(SHOWN)].join("; ");
    if failures.len() > SHOWN {
        listed.push_str(&format!("; and {} more", failures.len() - SHOWN));
    }
    format!(
        "cannot reach the tap of any of the {} proxies{whose}: {listed}; check that \
         network policies let the controller reach their admin port",
        failures.len()
    )
}

/// Dials a proxy's admin server and starts its Watch.
async fn open(
    target: &Target,
    request: TapRequest,
    timeout: Duration,
) -> Result<Streaming<TapEvent>, UpstreamError> {
    let attempt = async {
        let channel = connect(target, timeout).await?;
        let response = TapClient::new(channel)
            .watch(authorized(target, request))
            .await
            .map_err(|status| UpstreamError::Refused {
                rpc: "Watch",
                status,
            })?;
        Ok(response.into_inner())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| UpstreamError::Timeout(timeout))?
}

/// A channel to a proxy's admin server.
async fn connect(target: &Target, timeout: Duration) -> Result<Channel, UpstreamError> {
    let endpoint = Endpoint::from_shared(format!("http://{}", target.addr))
        .map_err(UpstreamError::Connect)?
        .connect_timeout(timeout)
        // Notice a proxy that vanished without closing the stream.
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    endpoint.connect().await.map_err(UpstreamError::Connect)
}

/// `message` with the key the target's tap answers the controller with.
fn authorized<T>(target: &Target, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(v) = format!("Bearer {}", target.key).parse() {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

/// Proxies asked for their key drops at once, at most.
const KEY_DROPS_AT_ONCE: usize = 32;

/// Asks every target for the keys its pod's app dropped, at most
/// [`KEY_DROPS_AT_ONCE`] at a time, each within `timeout`: their drops,
/// sorted, and the targets that did not answer.
pub async fn key_drops(targets: Vec<Target>, timeout: Duration) -> KeyDropsResponse {
    use futures_util::StreamExt as _;
    let answers: Vec<_> = futures_util::stream::iter(targets)
        .map(|target: Target| async move {
            let attempt = async {
                let channel = connect(&target, timeout).await?;
                TapClient::new(channel)
                    .key_drops(authorized(&target, KeyDropsRequest::default()))
                    .await
                    .map_err(|status| UpstreamError::Refused {
                        rpc: "KeyDrops",
                        status,
                    })
            };
            let answer = tokio::time::timeout(timeout, attempt)
                .await
                .map_err(|_| UpstreamError::Timeout(timeout))
                .and_then(|r| r);
            (target, answer)
        })
        .buffer_unordered(KEY_DROPS_AT_ONCE)
        .collect()
        .await;
    let mut merged = KeyDropsResponse::default();
    for (target, answer) in answers {
        match answer {
            Ok(r) => merged.drops.extend(r.into_inner().drops),
            Err(e) => {
                tracing::debug!(proxy = %target, error = %e, "cannot ask the proxy for its key drops");
                merged.unreachable.push(format!("{target}: {e}"));
            }
        }
    }
    merged.drops.sort_by(|a, b| {
        (&a.proxy_namespace, &a.service, &a.destination, &a.proxy_pod).cmp(&(
            &b.proxy_namespace,
            &b.service,
            &b.destination,
            &b.proxy_pod,
        ))
    });
    merged.unreachable.sort();
    merged
}

/// One client's watch: its upstream streams and the buffer they feed.
struct Watch {
    store: Arc<Store>,
    proxy_namespace: String,
    /// The namespaces its client may tap.
    allowed: Allowed,
    upstream: TapRequest,
    settings: RelaySettings,
    tx: mpsc::Sender<TapEvent>,
    /// Events lost to a full buffer, not yet reported.
    dropped: Arc<AtomicU64>,
}

impl Watch {
    /// Pumps `first` and every proxy that turns up later, until the client's
    /// stream is gone (then this task is aborted, or sees the channel closed).
    /// Dropping the JoinSet aborts every pump with it.
    async fn run(mut self, first: Vec<(Target, Streaming<TapEvent>)>) {
        let mut pumps = JoinSet::new();
        let mut live: HashMap<SocketAddr, AbortHandle> = HashMap::new();
        for (target, stream) in first {
            let addr = target.addr;
            let pump = pump(target, stream, self.tx.clone(), self.dropped.clone());
            live.insert(addr, pumps.spawn(pump));
        }
        let period = self.settings.relist_interval;
        let mut relist = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        relist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.tx.closed() => return,
                // Reap finished pumps; `live` learns of them at the next re-list.
                Some(_) = pumps.join_next() => {}
                _ = relist.tick() => {
                    live.retain(|_, pump| !pump.is_finished());
                    let subscribers = self.store.subscribers();
                    let targets = pick(&subscribers, &self.proxy_namespace).targets;
                    let Ok(targets) = self.allowed.filter(targets).await else {
                        continue;
                    };
                    for target in targets {
                        if live.contains_key(&target.addr) {
                            continue;
                        }
                        let addr = target.addr;
                        let dial = dial_and_pump(
                            target,
                            self.upstream.clone(),
                            self.settings.connect_timeout,
                            self.tx.clone(),
                            self.dropped.clone(),
                        );
                        live.insert(addr, pumps.spawn(dial));
                    }
                }
            }
        }
    }
}

async fn dial_and_pump(
    target: Target,
    request: TapRequest,
    timeout: Duration,
    tx: mpsc::Sender<TapEvent>,
    dropped: Arc<AtomicU64>,
) {
    match open(&target, request, timeout).await {
        Ok(stream) => {
            tracing::debug!(proxy = %target, "tap stream opened");
            pump(target, stream, tx, dropped).await;
        }
        Err(e) => tracing::debug!(proxy = %target, error = %e, "cannot open the proxy's tap"),
    }
}

/// Moves one proxy's events into the watch's buffer until either side ends.
async fn pump(
    target: Target,
    mut stream: Streaming<TapEvent>,
    tx: mpsc::Sender<TapEvent>,
    dropped: Arc<AtomicU64>,
) {
    loop {
        match stream.message().await {
            Ok(Some(mut event)) => {
                if event.proxy_pod.is_empty() {
                    event.proxy_pod.clone_from(&target.pod);
                }
                if event.proxy_namespace.is_empty() {
                    event.proxy_namespace.clone_from(&target.namespace);
                }
                if offer(&tx, &dropped, event).is_err() {
                    return;
                }
            }
            Ok(None) => {
                tracing::debug!(proxy = %target, "the proxy ended its tap stream");
                return;
            }
            Err(status) => {
                let error = status.source().map(chain).unwrap_or_default();
                tracing::debug!(proxy = %target, code = ?status.code(), message = %status.message(), error = %error, "the proxy's tap stream failed");
                return;
            }
        }
    }
}

/// The client's stream is gone.
#[derive(Debug)]
struct Closed;

/// Hands an event to the watch's buffer without waiting. When the buffer is
/// full the event is dropped and counted; the count (with the proxy's own)
/// rides on the next event that gets through.
fn offer(
    tx: &mpsc::Sender<TapEvent>,
    dropped: &AtomicU64,
    mut event: TapEvent,
) -> Result<(), Closed> {
    let lost = dropped.swap(0, Ordering::Relaxed);
    event.dropped_before = event.dropped_before.saturating_add(lost);
    match tx.try_send(event) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(event)) => {
            dropped.fetch_add(event.dropped_before.saturating_add(1), Ordering::Relaxed);
            Ok(())
        }
        Err(mpsc::error::TrySendError::Closed(_)) => Err(Closed),
    }
}

/// The stream answered to the client: the buffer, the limit, and the task
/// feeding it, which ends when this is dropped.
struct RelayStream {
    rx: mpsc::Receiver<TapEvent>,
    /// Events left to send; `None`: no limit.
    remaining: Option<u64>,
    _supervisor: AbortOnDrop,
}

impl Stream for RelayStream {
    type Item = Result<TapEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.remaining == Some(0) {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                if let Some(n) = &mut self.remaining {
                    *n -= 1;
                }
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use divert_proto::discovery::v1::ProxyInfo;
    use futures_util::StreamExt;
    use tokio::net::TcpListener;
    use tokio_stream::wrappers::TcpListenerStream;

    use crate::store::Subscription;
    use divert_proto::tap::v1::KeyDrop;

    const WAIT: Duration = Duration::from_secs(5);

    fn event(path: &str) -> TapEvent {
        TapEvent {
            unix_micros: 1_700_000_000_000_000,
            protocol: "http1".into(),
            method: "GET".into(),
            path: path.into(),
            decision: "shared".into(),
            reason: "no_key".into(),
            status: 200,
            ..TapEvent::default()
        }
    }

    /// A proxy's tap: records each request, sends `events`, then keeps the
    /// stream open (or ends it, with `end`). `live` counts open streams.
    #[derive(Clone, Default)]
    struct FakeProxy {
        events: Vec<TapEvent>,
        drops: Vec<KeyDrop>,
        end: bool,
        requests: Arc<Mutex<Vec<TapRequest>>>,
        live: Arc<AtomicUsize>,
    }

    struct LiveGuard(Arc<AtomicUsize>);

    impl Drop for LiveGuard {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tonic::async_trait]
    impl Tap for FakeProxy {
        type WatchStream = EventStream;

        async fn watch(
            &self,
            request: Request<TapRequest>,
        ) -> Result<Response<EventStream>, Status> {
            self.requests.lock().unwrap().push(request.into_inner());
            self.live.fetch_add(1, Ordering::SeqCst);
            let guard = LiveGuard(self.live.clone());
            let events = futures_util::stream::iter(self.events.clone().into_iter().map(Ok));
            let tail = if self.end {
                futures_util::stream::empty().boxed()
            } else {
                futures_util::stream::pending().boxed()
            };
            let stream = events.chain(tail).map(move |e| {
                let _ = &guard;
                e
            });
            Ok(Response::new(Box::pin(stream)))
        }

        async fn key_drops(
            &self,
            request: Request<KeyDropsRequest>,
        ) -> Result<Response<KeyDropsResponse>, Status> {
            let key = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            Ok(Response::new(KeyDropsResponse {
                drops: self
                    .drops
                    .iter()
                    .map(|d| KeyDrop {
                        proxy_pod: key.clone(),
                        ..d.clone()
                    })
                    .collect(),
                unreachable: Vec::new(),
            }))
        }
    }

    impl FakeProxy {
        fn new(events: Vec<TapEvent>) -> Self {
            FakeProxy {
                events,
                ..FakeProxy::default()
            }
        }

        /// Serves it on an ephemeral loopback port; returns the port.
        async fn start(&self) -> u16 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = tonic::transport::Server::builder()
                .add_service(TapServer::new(self.clone()))
                .serve_with_incoming(TcpListenerStream::new(listener));
            tokio::spawn(server);
            port
        }

        fn requests(&self) -> Vec<TapRequest> {
            self.requests.lock().unwrap().clone()
        }
    }

    /// Registers a proxy as the Discovery service would.
    fn connect(store: &Arc<Store>, pod: &str, namespace: &str, admin_port: u16) -> Subscription {
        let info = ProxyInfo {
            pod: pod.into(),
            namespace: namespace.into(),
            version: "test".into(),
            admin_port: admin_port.into(),
        };
        let remote: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        store.subscribe(info, Some(remote)).0
    }

    async fn client(addr: SocketAddr) -> TapClient<tonic::transport::Channel> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TapClient::new(channel)
    }

    /// The controller's gRPC server (Discovery and the relay) on loopback.
    async fn controller(store: Arc<Store>) -> TapClient<tonic::transport::Channel> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::server::serve(
            listener,
            store,
            crate::auth::Access::Open,
            None,
            std::future::pending(),
        ));
        client(addr).await
    }

    /// The relay alone, with its settings, behind a tonic server.
    async fn relay(
        store: Arc<Store>,
        settings: RelaySettings,
    ) -> TapClient<tonic::transport::Channel> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TapRelay::with_settings(
                store,
                crate::auth::Access::Open,
                settings,
            ))
            .serve_with_incoming(TcpListenerStream::new(listener));
        tokio::spawn(server);
        client(addr).await
    }

    async fn take(stream: &mut Streaming<TapEvent>, n: usize) -> Vec<TapEvent> {
        let mut events = Vec::new();
        while events.len() < n {
            let event = tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("an event in time")
                .expect("the stream is healthy")
                .expect("the stream is open");
            events.push(event);
        }
        events
    }

    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn origins(events: &[TapEvent]) -> BTreeSet<(String, String, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e.proxy_namespace.clone(),
                    e.proxy_pod.clone(),
                    e.path.clone(),
                )
            })
            .collect()
    }

    fn set(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
        items
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn tap_merges_the_events_of_every_proxy() {
        let store = Store::new();
        let a = FakeProxy::new(vec![event("/a1"), event("/a2")]);
        // This proxy names itself in its events; the relay keeps that.
        let mut own = event("/b1");
        own.proxy_pod = "named-by-proxy".into();
        let b = FakeProxy::new(vec![own, event("/b2")]);
        let _sa = connect(&store, "frontend-1", "staging", a.start().await);
        let _sb = connect(&store, "rent-1", "bob", b.start().await);

        let mut client = controller(store).await;
        let mut stream = client
            .watch(TapRequest::default())
            .await
            .unwrap()
            .into_inner();
        let events = take(&mut stream, 4).await;
        assert_eq!(
            origins(&events),
            set(&[
                ("staging", "frontend-1", "/a1"),
                ("staging", "frontend-1", "/a2"),
                ("bob", "named-by-proxy", "/b1"),
                ("bob", "rent-1", "/b2"),
            ])
        );
    }

    #[tokio::test]
    async fn tap_proxy_namespace_selects_only_its_proxies() {
        let store = Store::new();
        let staging = FakeProxy::new(vec![event("/staging")]);
        let alice = FakeProxy::new(vec![event("/alice1"), event("/alice2")]);
        let _s = connect(&store, "frontend-1", "staging", staging.start().await);
        let _a = connect(&store, "frontend-2", "alice", alice.start().await);

        let mut client = controller(store).await;
        let request = TapRequest {
            proxy_namespace: "alice".into(),
            ..TapRequest::default()
        };
        let mut stream = client.watch(request).await.unwrap().into_inner();
        let events = take(&mut stream, 2).await;
        assert_eq!(
            origins(&events),
            set(&[
                ("alice", "frontend-2", "/alice1"),
                ("alice", "frontend-2", "/alice2")
            ])
        );
        assert!(staging.requests().is_empty());
        assert!(
            tokio::time::timeout(Duration::from_millis(200), stream.message())
                .await
                .is_err(),
            "nothing else arrives"
        );
    }

    #[tokio::test]
    async fn tap_max_events_ends_the_stream() {
        let store = Store::new();
        let events: Vec<TapEvent> = (0..5).map(|i| event(&format!("/{i}"))).collect();
        let a = FakeProxy::new(events.clone());
        let b = FakeProxy::new(events);
        let _sa = connect(&store, "a", "staging", a.start().await);
        let _sb = connect(&store, "b", "staging", b.start().await);

        let mut client = controller(store).await;
        let request = TapRequest {
            max_events: 3,
            ..TapRequest::default()
        };
        let mut stream = client.watch(request).await.unwrap().into_inner();
        assert_eq!(take(&mut stream, 3).await.len(), 3);
        let end = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("the stream ends in time");
        assert!(matches!(end, Ok(None)), "{end:?}");
        // The limit is the relay's: the proxies were asked for everything.
        assert_eq!(a.requests()[0].max_events, 0);
        // And their streams are let go.
        eventually("upstream streams dropped", || {
            a.live.load(Ordering::SeqCst) + b.live.load(Ordering::SeqCst) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn tap_not_found_when_no_proxy_matches() {
        let store = Store::new();
        let a = FakeProxy::new(vec![event("/a")]);
        let _sa = connect(&store, "a", "staging", a.start().await);
        // Connected, but its admin server is on loopback only.
        let _sl = connect(&store, "local", "alice", 0);

        let mut client = controller(store).await;
        let request = TapRequest {
            proxy_namespace: "nobody".into(),
            ..TapRequest::default()
        };
        let status = client.watch(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(
            status.message().contains("\"nobody\""),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains("injected"),
            "{}",
            status.message()
        );

        let request = TapRequest {
            proxy_namespace: "alice".into(),
            ..TapRequest::default()
        };
        let status = client.watch(request).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(
            status.message().contains("--admin-addr 0.0.0.0:4191"),
            "{}",
            status.message()
        );
        assert!(a.requests().is_empty());
    }

    #[tokio::test]
    async fn tap_forwards_the_filters_to_the_proxies() {
        let store = Store::new();
        let a = FakeProxy::new(vec![event("/a")]);
        let _sa = connect(&store, "a", "staging", a.start().await);

        let mut client = controller(store).await;
        let request = TapRequest {
            namespace: "alice".into(),
            service: "movies".into(),
            key: "alice".into(),
            sample_ratio: 0.5,
            max_events: 1,
            proxy_namespace: "staging".into(),
            since_micros: 1_700_000_000_000_000,
        };
        let mut stream = client.watch(request).await.unwrap().into_inner();
        take(&mut stream, 1).await;
        let got = a.requests();
        assert_eq!(
            got,
            [TapRequest {
                namespace: "alice".into(),
                service: "movies".into(),
                key: "alice".into(),
                sample_ratio: 0.5,
                max_events: 0,
                proxy_namespace: String::new(),
                // The time the proxies' kept events start from goes on.
                since_micros: 1_700_000_000_000_000,
            }]
        );
    }

    #[tokio::test]
    async fn tap_rejects_a_sample_ratio_out_of_range() {
        let store = Store::new();
        let a = FakeProxy::new(vec![event("/a")]);
        let _sa = connect(&store, "a", "staging", a.start().await);
        let mut client = controller(store).await;
        for ratio in [-0.1, 1.5, f64::NAN] {
            let request = TapRequest {
                sample_ratio: ratio,
                ..TapRequest::default()
            };
            let status = client.watch(request).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{ratio}");
        }
    }

    #[tokio::test]
    async fn tap_unavailable_when_no_matching_proxy_answers() {
        let store = Store::new();
        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let _s = connect(&store, "gone", "staging", port);

        let mut client = controller(store).await;
        let status = client.watch(TapRequest::default()).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains(&format!("127.0.0.1:{port}")),
            "{}",
            status.message()
        );
    }

    #[tokio::test]
    async fn key_drops_are_gathered_from_every_proxy_with_its_key_and_the_silent_named() {
        let store = Store::new();
        let drop_of = |service: &str, destination: &str, count| KeyDrop {
            service: service.into(),
            destination: destination.into(),
            count,
            ..KeyDrop::default()
        };
        let api = FakeProxy {
            drops: vec![drop_of("api", "catalog.staging", 3)],
            ..FakeProxy::default()
        };
        let web = FakeProxy {
            drops: vec![
                drop_of("web", "rent.staging", 1),
                drop_of("web", "api.staging", 2),
            ],
            ..FakeProxy::default()
        };
        let _a = connect(&store, "api-1", "staging", api.start().await);
        let _w = connect(&store, "web-1", "staging", web.start().await);
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap().port();
        drop(closed);
        let _g = connect(&store, "gone-1", "staging", gone);
        let mut client = controller(store.clone()).await;

        let got = client
            .key_drops(KeyDropsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let pairs: Vec<(&str, &str, u64)> = got
            .drops
            .iter()
            .map(|d| (d.service.as_str(), d.destination.as_str(), d.count))
            .collect();
        assert_eq!(
            pairs,
            [
                ("api", "catalog.staging", 3),
                ("web", "api.staging", 2),
                ("web", "rent.staging", 1)
            ]
        );
        // Each proxy was asked with the key its Discovery stream was given.
        let keys: BTreeSet<String> = store
            .subscribers()
            .iter()
            .filter(|s| s.info.pod != "gone-1")
            .map(|s| format!("Bearer {}", s.tap_key))
            .collect();
        let presented: BTreeSet<String> = got.drops.iter().map(|d| d.proxy_pod.clone()).collect();
        assert_eq!(presented, keys);
        assert_eq!(got.unreachable.len(), 1, "{:?}", got.unreachable);
        assert!(
            got.unreachable[0].contains("staging/gone-1"),
            "{:?}",
            got.unreachable
        );
    }

    #[tokio::test]
    async fn tap_picks_up_proxies_that_connect_later_and_dials_each_once() {
        let store = Store::new();
        let a = FakeProxy::new(vec![event("/a")]);
        let b = FakeProxy::new(vec![event("/b")]);
        let port_a = a.start().await;
        let _sa = connect(&store, "a", "staging", port_a);
        let settings = RelaySettings {
            relist_interval: Duration::from_millis(20),
            ..RelaySettings::default()
        };
        let mut client = relay(store.clone(), settings).await;
        let mut stream = client
            .watch(TapRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(take(&mut stream, 1).await[0].path, "/a");

        let _sb = connect(&store, "b", "staging", b.start().await);
        // The same proxy reconnecting its Discovery stream is still one proxy.
        let _sa_again = connect(&store, "a", "staging", port_a);
        assert_eq!(take(&mut stream, 1).await[0].path, "/b");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(a.requests().len(), 1);
        assert_eq!(b.requests().len(), 1);
    }

    #[tokio::test]
    async fn tap_redials_a_proxy_whose_stream_ended() {
        let store = Store::new();
        let a = FakeProxy {
            end: true,
            ..FakeProxy::new(vec![event("/a")])
        };
        let _sa = connect(&store, "a", "staging", a.start().await);
        let settings = RelaySettings {
            relist_interval: Duration::from_millis(20),
            ..RelaySettings::default()
        };
        let mut client = relay(store, settings).await;
        let mut stream = client
            .watch(TapRequest::default())
            .await
            .unwrap()
            .into_inner();
        let events = take(&mut stream, 2).await;
        assert!(events.iter().all(|e| e.path == "/a"));
        assert!(a.requests().len() >= 2);
    }

    #[tokio::test]
    async fn tap_lets_the_proxies_go_when_the_client_leaves() {
        let store = Store::new();
        let a = FakeProxy::new(vec![event("/a")]);
        let b = FakeProxy::new(vec![event("/b")]);
        let _sa = connect(&store, "a", "staging", a.start().await);
        let _sb = connect(&store, "b", "alice", b.start().await);

        let mut client = controller(store).await;
        let mut stream = client
            .watch(TapRequest::default())
            .await
            .unwrap()
            .into_inner();
        take(&mut stream, 2).await;
        assert_eq!(
            a.live.load(Ordering::SeqCst) + b.live.load(Ordering::SeqCst),
            2
        );
        drop(stream);
        eventually("upstream streams dropped", || {
            a.live.load(Ordering::SeqCst) + b.live.load(Ordering::SeqCst) == 0
        })
        .await;
    }

    #[tokio::test]
    async fn tap_counts_events_dropped_on_a_full_buffer() {
        let (tx, mut rx) = mpsc::channel(2);
        let dropped = AtomicU64::new(0);
        for i in 0..5 {
            offer(&tx, &dropped, event(&format!("/{i}"))).unwrap();
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        assert_eq!(rx.recv().await.unwrap().dropped_before, 0);
        assert_eq!(rx.recv().await.unwrap().dropped_before, 0);
        // The proxy's own count adds up with the relay's.
        let mut next = event("/5");
        next.dropped_before = 2;
        offer(&tx, &dropped, next).unwrap();
        let got = rx.recv().await.unwrap();
        assert_eq!((got.path.as_str(), got.dropped_before), ("/5", 5));
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
        drop(rx);
        assert!(offer(&tx, &dropped, event("/6")).is_err());
    }

    #[test]
    fn tap_pick_wants_an_admin_port_and_an_address() {
        let store = Store::new();
        let info = |pod: &str, ns: &str, port: u32| ProxyInfo {
            pod: pod.into(),
            namespace: ns.into(),
            admin_port: port,
            ..ProxyInfo::default()
        };
        let v4 = "10.0.0.1:5000".parse().ok();
        let mapped = "[::ffff:10.0.0.2]:5000".parse().ok();
        let v6 = "[fd00::3]:5000".parse().ok();
        let _subs = [
            store.subscribe(info("a", "staging", 4191), v4).0,
            store.subscribe(info("b", "staging", 4191), mapped).0,
            store.subscribe(info("c", "alice", 4191), v6).0,
            store.subscribe(info("d", "staging", 0), v4).0,
            store.subscribe(info("e", "staging", 4191), None).0,
            store.subscribe(info("f", "staging", 70000), v4).0,
            // The same proxy, reconnected.
            store.subscribe(info("a", "staging", 4191), v4).0,
        ];
        let all = pick(&store.subscribers(), "");
        let addrs: Vec<String> = all.targets.iter().map(|t| t.addr.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1:4191", "10.0.0.2:4191", "[fd00::3]:4191"]);
        assert_eq!(all.without_admin, 3);
        let staging = pick(&store.subscribers(), "staging");
        assert_eq!(staging.targets.len(), 2);
        assert!(pick(&store.subscribers(), "bob").targets.is_empty());
    }
}
