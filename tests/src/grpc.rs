//! A real gRPC upstream (tonic) playing `catalog@namespace`: every reply says
//! which copy served it, and every call is recorded.

use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use divert_proto::demo::v1::catalog_server::{Catalog, CatalogServer};
use divert_proto::demo::v1::{Echo, ListMoviesRequest, ListMoviesResponse, Movie, Note, Served};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// One call as the server saw it: the method and its baggage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    pub baggage: String,
}

#[derive(Clone)]
struct Recorder {
    service: String,
    namespace: String,
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Recorder {
    fn served<T>(&self, method: &'static str, req: &Request<T>) -> Served {
        let baggage = req
            .metadata()
            .get("baggage")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.calls.lock().expect("calls lock").push(Call {
            method,
            baggage: baggage.clone(),
        });
        Served {
            service: self.service.clone(),
            namespace: self.namespace.clone(),
            baggage,
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Catalog for Recorder {
    async fn list_movies(
        &self,
        req: Request<ListMoviesRequest>,
    ) -> Result<Response<ListMoviesResponse>, Status> {
        let served = self.served("ListMovies", &req);
        if req.get_ref().limit == 999 {
            // Lets tests check that a server's own status and trailers pass through.
            return Err(Status::resource_exhausted(format!(
                "too many from {}",
                self.namespace
            )));
        }
        let movies = (0..req.get_ref().limit)
            .map(|i| Movie {
                title: format!("movie {i}"),
                served_by: Some(served.clone()),
            })
            .collect();
        Ok(Response::new(ListMoviesResponse {
            movies,
            served_by: Some(served),
        }))
    }

    type StreamMoviesStream = BoxStream<Movie>;

    async fn stream_movies(
        &self,
        req: Request<ListMoviesRequest>,
    ) -> Result<Response<Self::StreamMoviesStream>, Status> {
        let served = self.served("StreamMovies", &req);
        let items: Vec<_> = (0..req.get_ref().limit)
            .map(|i| {
                Ok(Movie {
                    title: format!("movie {i}"),
                    served_by: Some(served.clone()),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn collect_notes(&self, req: Request<Streaming<Note>>) -> Result<Response<Echo>, Status> {
        let served = self.served("CollectNotes", &req);
        let mut notes = req.into_inner();
        let mut texts = Vec::new();
        while let Some(n) = notes.next().await {
            texts.push(n?.text);
        }
        Ok(Response::new(Echo {
            text: texts.join(","),
            served_by: Some(served),
        }))
    }

    type ChatStream = BoxStream<Echo>;

    async fn chat(
        &self,
        req: Request<Streaming<Note>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        let served = self.served("Chat", &req);
        let out = req.into_inner().map(move |n| {
            n.map(|n| Echo {
                text: n.text,
                served_by: Some(served.clone()),
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}

/// The Catalog service playing `service@namespace`, recording into `calls`.
pub fn catalog(
    service: &str,
    namespace: &str,
    calls: Arc<Mutex<Vec<Call>>>,
) -> CatalogServer<impl Catalog> {
    CatalogServer::new(Recorder {
        service: service.to_string(),
        namespace: namespace.to_string(),
        calls,
    })
}

/// A running catalog upstream.
pub struct GrpcUpstream {
    pub addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    task: JoinHandle<()>,
}

impl GrpcUpstream {
    pub async fn start(namespace: &str) -> GrpcUpstream {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind grpc upstream");
        Self::serve(listener, namespace)
    }

    /// Serves on a listener bound elsewhere (in a network namespace, say).
    pub fn serve(listener: TcpListener, namespace: &str) -> GrpcUpstream {
        let addr = listener.local_addr().expect("grpc upstream addr");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let svc = catalog("catalog", namespace, calls.clone());
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await;
        });
        GrpcUpstream { addr, calls, task }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls lock").clone()
    }
}

impl Drop for GrpcUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
