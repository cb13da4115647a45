//! The Discovery gRPC service: each proxy's `Watch` stream, and the list of
//! connected proxies for `divert check`. The same server carries the Tap
//! relay ([`crate::tap`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use divert_proto::discovery::v1 as pb;
use divert_proto::discovery::v1::discovery_server::{Discovery, DiscoveryServer};
use futures_util::Stream;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

use crate::store::Store;
use crate::tap::TapRelay;

pub struct DiscoveryService {
    store: Arc<Store>,
}

impl DiscoveryService {
    pub fn new(store: Arc<Store>) -> DiscoveryServer<DiscoveryService> {
        DiscoveryServer::new(DiscoveryService { store })
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::TableUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type WatchStream = UpdateStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let remote = request.remote_addr();
        let info = request.into_inner().proxy.unwrap_or_default();
        tracing::info!(pod = %info.pod, namespace = %info.namespace, version = %info.version, remote = ?remote, "proxy watching");
        let (subscription, snapshot) = self.store.subscribe(info, remote);
        // The stream is polled only when the proxy's HTTP/2 window has room, so
        // a slow proxy leaves its changes coalescing in the store instead.
        let stream = futures_util::stream::unfold(
            (subscription, Some(snapshot)),
            |(subscription, first)| async move {
                let update = match first {
                    Some(snapshot) => snapshot,
                    None => subscription.next().await,
                };
                Some((Ok(update), (subscription, None)))
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_proxies(
        &self,
        _request: Request<pb::ListProxiesRequest>,
    ) -> Result<Response<pb::ListProxiesResponse>, Status> {
        let mut proxies: Vec<pb::ConnectedProxy> = self
            .store
            .subscribers()
            .iter()
            .map(|s| pb::ConnectedProxy {
                proxy: Some(s.info.clone()),
                remote_addr: s.remote_addr.map(|a| a.to_string()).unwrap_or_default(),
                revision: s.sent_revision(),
                connected_seconds: s.connected_at.elapsed().as_secs(),
            })
            .collect();
        proxies.sort_by(|a, b| a.remote_addr.cmp(&b.remote_addr));
        Ok(Response::new(pb::ListProxiesResponse { proxies }))
    }
}

/// Serves the Discovery API and the Tap relay on `listener` until `shutdown`
/// resolves.
pub async fn serve(
    listener: TcpListener,
    store: Arc<Store>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        // Find proxies that vanished without closing their streams.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .tcp_nodelay(true)
        .add_service(DiscoveryService::new(store.clone()))
        .add_service(TapRelay::new(store))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
