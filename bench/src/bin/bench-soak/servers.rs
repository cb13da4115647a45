//! The soak's upstreams, each playing one copy of a service: an HTTP/1.1 +
//! h2c server (which also accepts upgrades and tunnels them as an echo), a
//! gRPC server, and a TCP echo server behind an opaque port. Each counts in
//! the upstream ledger the requests the clients marked as theirs, and each
//! shuts down gracefully, as a pod does once it is out of its endpoints:
//! it stops accepting, finishes what is in flight and closes idle
//! connections.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use divert_proto::demo::v1::catalog_server::{Catalog, CatalogServer};
use divert_proto::demo::v1::{Echo, ListMoviesRequest, ListMoviesResponse, Movie, Note, Served};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::{Stream, StreamExt};

use crate::ledger::{Counts, Key, ServiceCopy};

/// The request header that marks a request as the soak clients' own (the
/// hostile clients send none): the upstream counts it and echoes it back, so
/// the client can tell its answer from another's.
pub const ID: &str = "x-soak-id";
/// The header that names the copy that answered.
pub const SERVED_BY: &str = "x-served-by";
/// The first line an opaque soak client sends; hostile ones send another.
pub const OPAQUE_HELLO: &[u8] = b"soak\n";
/// How long `/slow` takes to answer: long enough for a hostile client to
/// reset in the middle of it.
const SLOW: Duration = Duration::from_millis(50);
/// How long a graceful shutdown waits for open connections before it drops
/// them.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(30);
/// How long an opaque connection may take to send its first line.
const HELLO_LIMIT: Duration = Duration::from_secs(10);

/// A running upstream; [`Server::shutdown`] stops it gracefully.
pub struct Server {
    pub addr: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Stops accepting, lets open connections finish (HTTP/1.1 ones close
    /// after the response in flight, HTTP/2 ones get GOAWAY) and returns
    /// once they have, or after [`SHUTDOWN_LIMIT`].
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Accepts on `listener` until stopped; each connection is served by
/// `serve(stream, stop)`, which must end soon after `stop` turns true.
fn accept<F, Fut>(listener: TcpListener, serve: F) -> Server
where
    F: Fn(TcpStream, watch::Receiver<bool>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let addr = listener.local_addr().expect("an upstream's own address");
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        let for_conns = stopped.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve(stream, for_conns.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
        }
        drop(listener);
        let all_done = async { while conns.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_LIMIT, all_done)
            .await
            .is_err()
        {
            eprintln!(
                "soak: an upstream's connections outlived its graceful shutdown; dropping them"
            );
            conns.abort_all();
        }
    });
    Server { addr, stop, task }
}

/// The web service's copy: HTTP/1.1 and h2c, upgrades tunnelled as an echo.
pub fn http(listener: TcpListener, copy: ServiceCopy, seen: Arc<Counts>) -> Server {
    accept(listener, move |stream, mut stop| {
        let seen = seen.clone();
        async move {
            let svc = service_fn(move |req| answer(req, copy, seen.clone()));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let stopping = tokio::select! {
                _ = conn.as_mut() => false,
                _ = stop.wait_for(|s| *s) => true,
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    })
}

async fn answer(
    mut req: Request<Incoming>,
    copy: ServiceCopy,
    seen: Arc<Counts>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let key = Key::of(req.headers().get("baggage"));
    let id = req.headers().get(ID).cloned();
    let served_by = HeaderValue::from_static(copy.name());
    if req.headers().contains_key(UPGRADE) {
        if id.is_some() {
            seen.add(copy, key);
        }
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                echo(TokioIo::new(upgraded)).await;
            }
        });
        let mut resp = Response::new(Full::default());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(SERVED_BY, served_by);
        if let Some(id) = id {
            h.insert(ID, id);
        }
        return Ok(resp);
    }
    if req.uri().path() == "/slow" {
        tokio::time::sleep(SLOW).await;
    }
    let len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => {
            // The client went away mid-body: no answer reaches anyone.
            let mut resp = Response::new(Full::default());
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return Ok(resp);
        }
    };
    if id.is_some() {
        seen.add(copy, key);
    }
    let mut resp = Response::new(Full::new(Bytes::from(format!("{} {len}\n", copy.name()))));
    let h = resp.headers_mut();
    h.insert(SERVED_BY, served_by);
    if let Some(id) = id {
        h.insert(ID, id);
    }
    Ok(resp)
}

/// Echoes until the peer closes its side, then closes ours.
async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut io: S) -> bool {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) => {
                let _ = io.shutdown().await;
                return true;
            }
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

/// The database copy behind an opaque port: it greets with its name, then
/// echoes. A connection that starts with [`OPAQUE_HELLO`] and ends cleanly
/// is counted, before the server closes its side (so the client, which
/// counts on seeing that close, never counts first).
pub fn opaque(listener: TcpListener, copy: ServiceCopy, seen: Arc<Counts>) -> Server {
    accept(listener, move |mut stream, _stop| {
        let seen = seen.clone();
        async move {
            if stream
                .write_all(format!("{}\n", copy.name()).as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut hello = [0u8; OPAQUE_HELLO.len()];
            let read = tokio::time::timeout(HELLO_LIMIT, stream.read_exact(&mut hello)).await;
            let ours = matches!(read, Ok(Ok(_))) && hello == OPAQUE_HELLO;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            if ours {
                seen.add(copy, Key::None);
            }
            let _ = stream.shutdown().await;
        }
    })
}

/// The catalog copy (gRPC): `ListMovies` answers `limit` movies, `Chat`
/// echoes each note; both say which copy served them.
pub fn grpc(listener: TcpListener, copy: ServiceCopy, seen: Arc<Counts>) -> Server {
    let addr = listener.local_addr().expect("an upstream's own address");
    let (stop, mut stopped) = watch::channel(false);
    let mut limit_from = stop.subscribe();
    let svc = CatalogServer::new(Counter { copy, seen });
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let serve = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, shutdown);
        tokio::pin!(serve);
        tokio::select! {
            _ = serve.as_mut() => return,
            _ = limit_from.wait_for(|s| *s) => {}
        }
        // tonic waits for open calls after the signal; bound that wait.
        let _ = tokio::time::timeout(SHUTDOWN_LIMIT, serve).await;
    });
    Server { addr, stop, task }
}

struct Counter {
    copy: ServiceCopy,
    seen: Arc<Counts>,
}

impl Counter {
    fn served<T>(&self, req: &tonic::Request<T>) -> Served {
        let baggage = req.metadata().get("baggage").map(|v| v.as_bytes());
        self.seen.add(self.copy, Key::of_bytes(baggage));
        Served {
            service: "catalog".into(),
            namespace: self.copy.namespace().into(),
            baggage: String::new(),
        }
    }
}

type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Catalog for Counter {
    async fn list_movies(
        &self,
        req: tonic::Request<ListMoviesRequest>,
    ) -> Result<tonic::Response<ListMoviesResponse>, tonic::Status> {
        let served = self.served(&req);
        let movies = (0..req.get_ref().limit)
            .map(|i| Movie {
                title: format!("movie {i}"),
                served_by: None,
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
        _req: tonic::Request<ListMoviesRequest>,
    ) -> Result<tonic::Response<Self::StreamMoviesStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("the soak does not call it"))
    }

    async fn collect_notes(
        &self,
        _req: tonic::Request<tonic::Streaming<Note>>,
    ) -> Result<tonic::Response<Echo>, tonic::Status> {
        Err(tonic::Status::unimplemented("the soak does not call it"))
    }

    type ChatStream = BoxStream<Echo>;

    async fn chat(
        &self,
        req: tonic::Request<tonic::Streaming<Note>>,
    ) -> Result<tonic::Response<Self::ChatStream>, tonic::Status> {
        let served = self.served(&req);
        let out = req.into_inner().map(move |n| {
            n.map(|n| Echo {
                text: n.text,
                served_by: Some(served.clone()),
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}
