//! The Discovery gRPC service: each proxy's `Watch` stream, and the list of
//! connected proxies for `divert check`. The same server carries the Tap
//! relay ([`crate::tap`]). Every call is authenticated and authorized
//! ([`crate::auth`]); in a cluster the server speaks only TLS ([`Tls`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use divert_proto::discovery::v1 as pb;
use divert_proto::discovery::v1::discovery_server::{Discovery, DiscoveryServer};
use futures_util::Stream;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tonic::{Request, Response, Status};

use crate::auth::{self, Access, AuthError, Read};
use crate::store::{Store, Subscription};
use crate::tap::TapRelay;

/// How often a stream's token is checked again: a proxy whose pod was
/// deleted, or whose token expired, loses its stream within this.
pub const RECHECK: Duration = Duration::from_secs(300);
/// How soon to check again when the API server could not be asked (a
/// stream is not cut because the API server is briefly away).
const RECHECK_RETRY: Duration = Duration::from_secs(30);
/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; past it new connections wait in the
/// listen queue.
const MAX_HANDSHAKES: usize = 256;

pub struct DiscoveryService {
    store: Arc<Store>,
    access: Access,
    recheck: Duration,
}

impl DiscoveryService {
    pub fn new(store: Arc<Store>, access: Access) -> DiscoveryServer<DiscoveryService> {
        Self::with_recheck(store, access, RECHECK)
    }

    /// [`DiscoveryService::new`], checking each stream's token every
    /// `recheck` (tests).
    pub fn with_recheck(
        store: Arc<Store>,
        access: Access,
        recheck: Duration,
    ) -> DiscoveryServer<DiscoveryService> {
        DiscoveryServer::new(DiscoveryService {
            store,
            access,
            recheck,
        })
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::TableUpdate, Status>> + Send>>;

/// One proxy's stream: its snapshot first, then its updates, and the
/// recheck of its token between them.
struct Streaming {
    subscription: Subscription,
    snapshot: Option<pb::TableUpdate>,
    access: Access,
    token: Option<String>,
    recheck: Duration,
    next_check: Instant,
    ended: bool,
}

impl Streaming {
    async fn next(mut self) -> Option<(Result<pb::TableUpdate, Status>, Streaming)> {
        if self.ended {
            return None;
        }
        if let Some(s) = self.snapshot.take() {
            return Some((Ok(s), self));
        }
        loop {
            tokio::select! {
                update = self.subscription.next() => return Some((Ok(update), self)),
                () = tokio::time::sleep_until(self.next_check) => {
                    match self.access.recheck_proxy(self.token.as_deref()).await {
                        Ok(()) => self.next_check = Instant::now() + self.recheck,
                        Err(e @ AuthError::Api(_)) => {
                            tracing::warn!(error = %e, "cannot check a proxy's token again; keeping its stream");
                            self.next_check = Instant::now() + RECHECK_RETRY;
                        }
                        Err(e) => {
                            let info = &self.subscription.subscriber().info;
                            tracing::info!(pod = %info.pod, namespace = %info.namespace, error = %e, "a proxy's token is no longer valid; ending its stream");
                            self.ended = true;
                            let status = Status::unauthenticated(format!(
                                "{e}; reconnect with the pod's renewed token"
                            ));
                            return Some((Err(status), self));
                        }
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = UpdateStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let remote = request.remote_addr();
        let token = auth::bearer(&request);
        let proven = self.access.proxy(&request).await.map_err(|e| {
            tracing::info!(remote = ?remote, error = %e, "a table watch was refused");
            e.status()
        })?;
        let mut info = request.into_inner().proxy.unwrap_or_default();
        if let Some(id) = proven {
            if (info.namespace.as_str(), info.pod.as_str())
                != (id.namespace.as_str(), id.pod.as_str())
            {
                tracing::warn!(claimed_pod = %info.pod, claimed_namespace = %info.namespace, pod = %id.pod, namespace = %id.namespace, "a proxy claimed another pod than its token's; it is its token's");
            }
            info.namespace = id.namespace;
            info.pod = id.pod;
        }
        tracing::info!(pod = %info.pod, namespace = %info.namespace, version = %info.version, remote = ?remote, "proxy watching");
        let (subscription, snapshot) = self.store.subscribe(info, remote);
        // The stream is polled only when the proxy's HTTP/2 window has room, so
        // a slow proxy leaves its changes coalescing in the store instead.
        let streaming = Streaming {
            subscription,
            snapshot: Some(snapshot),
            access: self.access.clone(),
            token,
            recheck: self.recheck,
            next_check: Instant::now() + self.recheck,
            ended: false,
        };
        let stream = futures_util::stream::unfold(streaming, Streaming::next);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_proxies(
        &self,
        request: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        let viewer = self.access.user(&request).await.map_err(|e| e.status())?;
        let mut proxies = Vec::new();
        let mut decided: std::collections::HashMap<String, bool> = Default::default();
        for s in self.store.subscribers() {
            let ns = &s.info.namespace;
            let allowed = match decided.get(ns) {
                Some(a) => *a,
                None => {
                    let a = self
                        .access
                        .may(&viewer, Read::Pods, ns)
                        .await
                        .map_err(|e| e.status())?;
                    decided.insert(ns.clone(), a);
                    a
                }
            };
            if allowed {
                proxies.push(pb::ConnectedProxy {
                    proxy: Some(s.info.clone()),
                    remote_addr: s.remote_addr.map(|a| a.to_string()).unwrap_or_default(),
                    revision: s.sent_revision(),
                    connected_seconds: s.connected_at.elapsed().as_secs(),
                });
            }
        }
        proxies.sort_by(|a, b| a.remote_addr.cmp(&b.remote_addr));
        Ok(Response::new(pb::ListProxiesResponse { proxies }))
    }
}

/// The server's TLS: its certificate (the webhook's, reloaded with it) and,
/// when the cluster's client CA is known, client certificates verified
/// against it (optional: proxies and token users send none).
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
}

impl Tls {
    /// From a configuration such as
    /// [`crate::webhook::ReloadingCert::grpc_server_config`] makes.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Tls {
        Tls {
            acceptor: TlsAcceptor::from(config),
        }
    }
}

/// Serves the Discovery API and the Tap relay on `listener` until `shutdown`
/// resolves: over TLS when `tls` is given (in a cluster, always), else
/// plain HTTP/2 (tests, one host). `access` guards every call.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    access: Access,
    tls: Option<Tls>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let router = tonic::transport::Server::builder()
        // Find proxies that vanished without closing their streams.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .tcp_nodelay(true)
        .add_service(DiscoveryService::new(store.clone(), access.clone()))
        .add_service(TapRelay::new(store, access));
    match tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown,
                )
                .await
        }
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(handshakes(listener, tls.acceptor), shutdown)
                .await
        }
    }
}

/// The TLS connections of `listener`, each handshake bounded in time and
/// the handshakes bounded in number; a failed one is logged and dropped.
fn handshakes(
    listener: TcpListener,
    acceptor: TlsAcceptor,
) -> impl Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer): (_, SocketAddr) = divert_core::accept::next(&listener).await;
            if tx.is_closed() {
                return;
            }
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let _ = stream.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => {
                        tracing::debug!(%peer, "no TLS handshake within {HANDSHAKE_TIMEOUT:?}")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
