//! The Movies app's services, as small as they can be while still behaving like
//! real ones: each answers with its name and namespace, and forwards the
//! `baggage` header it received to every service it calls.
//!
//! - `frontend` (HTTP) calls `api`.
//! - `api` (HTTP) calls `catalog` over gRPC and `rent` over HTTP.
//! - `catalog` (gRPC) lists movies.
//! - `rent` (HTTP) answers alone.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use divert_proto::demo::v1::catalog_client::CatalogClient;
use divert_proto::demo::v1::catalog_server::{Catalog, CatalogServer};
use divert_proto::demo::v1::{Echo, ListMoviesRequest, ListMoviesResponse, Movie, Note, Served};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// Where an app finds the services it calls: the addresses their names resolve to.
#[derive(Debug, Clone)]
pub struct Downstreams {
    pub api: SocketAddr,
    pub catalog: SocketAddr,
    pub rent: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Frontend,
    Api,
    Rent,
}

struct HttpApp {
    name: &'static str,
    namespace: String,
    kind: Kind,
    down: Downstreams,
    http: Client<HttpConnector, Empty<Bytes>>,
    catalog: CatalogClient<Channel>,
}

/// Serves an HTTP app on `listener` until the task is dropped.
pub async fn serve_http(listener: TcpListener, kind: Kind, namespace: String, down: Downstreams) {
    let name = match kind {
        Kind::Frontend => "frontend",
        Kind::Api => "api",
        Kind::Rent => "rent",
    };
    let catalog_uri = format!("http://{}", down.catalog);
    let channel = match Channel::from_shared(catalog_uri) {
        Ok(c) => c.connect_lazy(),
        Err(e) => {
            tracing::error!(error = %e, "bad catalog address");
            return;
        }
    };
    let app = Arc::new(HttpApp {
        name,
        namespace,
        kind,
        down,
        http: Client::builder(TokioExecutor::new()).build_http(),
        catalog: CatalogClient::new(channel),
    });
    loop {
        let (stream, _) = divert_core::accept::next(&listener).await;
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

impl HttpApp {
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let baggage = req.headers().get("baggage").cloned();
        let me = format!("{}@{}", self.name, self.namespace);
        let body = match self.kind {
            Kind::Rent => Ok(me.clone()),
            Kind::Frontend => get(&self.http, self.down.api, baggage.as_ref())
                .await
                .map(|api| format!("{me} → {api}")),
            Kind::Api => {
                let catalog = self.list_movies(baggage.as_ref()).await;
                let rent = get(&self.http, self.down.rent, baggage.as_ref()).await;
                catalog.and_then(|c| rent.map(|r| format!("{me} → {c}, {r}")))
            }
        };
        match body {
            Ok(b) => Response::new(Full::new(Bytes::from(b))),
            Err(e) => {
                let mut r = Response::new(Full::new(Bytes::from(format!("{me}: {e}"))));
                *r.status_mut() = StatusCode::BAD_GATEWAY;
                r
            }
        }
    }

    async fn list_movies(&self, baggage: Option<&HeaderValue>) -> Result<String, CallError> {
        let mut req = tonic::Request::new(ListMoviesRequest { limit: 3 });
        if let Some(b) = baggage
            .and_then(|b| b.to_str().ok())
            .and_then(|b| b.parse().ok())
        {
            req.metadata_mut().insert("baggage", b);
        }
        let resp = self
            .catalog
            .clone()
            .list_movies(req)
            .await
            .map_err(|s| CallError::Catalog(s.message().to_owned()))?;
        let served = resp.into_inner().served_by.unwrap_or_default();
        Ok(format!("{}@{}", served.service, served.namespace))
    }
}

/// Why a call from one demo app to the next failed; the caller answers 502
/// with it, so the walkthrough shows where a path broke.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("{addr}: {source}")]
    Request {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{addr} answered {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: StatusCode,
        body: String,
    },
}

/// GET / on a service, passing the baggage on; the body when the answer is a
/// success, else what went wrong.
pub async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
    baggage: Option<&HeaderValue>,
) -> Result<String, CallError> {
    let failed =
        |source: Box<dyn std::error::Error + Send + Sync>| CallError::Request { addr, source };
    let mut req = Request::get(format!("http://{addr}/"));
    if let Some(b) = baggage {
        req = req.header("baggage", b);
    }
    let req = req.body(Empty::new()).map_err(|e| failed(e.into()))?;
    let resp = client.request(req).await.map_err(|e| failed(e.into()))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| failed(e.into()))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if status.is_success() {
        Ok(text)
    } else {
        Err(CallError::Status {
            addr,
            status,
            body: text,
        })
    }
}

/// The catalog service over gRPC.
pub struct CatalogApp {
    pub namespace: String,
}

impl CatalogApp {
    fn served<T>(&self, req: &tonic::Request<T>) -> Served {
        Served {
            service: "catalog".into(),
            namespace: self.namespace.clone(),
            baggage: req
                .metadata()
                .get("baggage")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
        }
    }
}

const TITLES: [&str; 5] = ["The Matrix", "Spirited Away", "Alien", "Amélie", "Heat"];

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Catalog for CatalogApp {
    async fn list_movies(
        &self,
        req: tonic::Request<ListMoviesRequest>,
    ) -> Result<tonic::Response<ListMoviesResponse>, Status> {
        let served = self.served(&req);
        let limit = req.get_ref().limit as usize;
        let movies = TITLES
            .iter()
            .take(limit)
            .map(|t| Movie {
                title: (*t).into(),
                served_by: Some(served.clone()),
            })
            .collect();
        Ok(tonic::Response::new(ListMoviesResponse {
            movies,
            served_by: Some(served),
        }))
    }

    type StreamMoviesStream = BoxStream<Movie>;

    async fn stream_movies(
        &self,
        req: tonic::Request<ListMoviesRequest>,
    ) -> Result<tonic::Response<Self::StreamMoviesStream>, Status> {
        let served = self.served(&req);
        let limit = req.get_ref().limit as usize;
        let movies: Vec<_> = TITLES
            .iter()
            .take(limit)
            .map(|t| {
                Ok(Movie {
                    title: (*t).into(),
                    served_by: Some(served.clone()),
                })
            })
            .collect();
        Ok(tonic::Response::new(Box::pin(tokio_stream::iter(movies))))
    }

    async fn collect_notes(
        &self,
        req: tonic::Request<Streaming<Note>>,
    ) -> Result<tonic::Response<Echo>, Status> {
        let served = self.served(&req);
        let mut notes = req.into_inner();
        let mut n = 0;
        while let Some(note) = notes.next().await {
            note?;
            n += 1;
        }
        Ok(tonic::Response::new(Echo {
            text: format!("{n} notes"),
            served_by: Some(served),
        }))
    }

    type ChatStream = BoxStream<Echo>;

    async fn chat(
        &self,
        req: tonic::Request<Streaming<Note>>,
    ) -> Result<tonic::Response<Self::ChatStream>, Status> {
        let served = self.served(&req);
        let out = req.into_inner().map(move |note| {
            note.map(|n| Echo {
                text: n.text,
                served_by: Some(served.clone()),
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

/// Serves the catalog on `listener` until the task is dropped.
pub async fn serve_catalog(listener: TcpListener, namespace: String) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(CatalogServer::new(CatalogApp { namespace }))
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(error = %e, "catalog server stopped");
    }
}
