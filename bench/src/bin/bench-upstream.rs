//! `bench-upstream`: a minimal, fast HTTP upstream for the benchmark harness.
//!
//! Every request gets `200 OK` with a small fixed body. Each connection speaks
//! HTTP/1.1 (keep-alive) or h2c with prior knowledge; the protocol is detected
//! from the first bytes of the connection. A gRPC call (`content-type:
//! application/grpc`) gets a unary gRPC answer: the body as one
//! length-prefixed message, then the trailers `grpc-status: 0`.

#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// A fast HTTP/1.1 + h2c upstream answering every request with 200.
#[derive(Parser, Debug)]
#[command(name = "bench-upstream")]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:18081 (may be given several times).
    #[arg(long, required = true)]
    listen: Vec<SocketAddr>,

    /// Runtime worker threads; 1 means a single-threaded (current_thread) runtime.
    #[arg(long, default_value_t = 1)]
    workers: usize,

    /// Response body (a newline is appended).
    #[arg(long, default_value = "ok")]
    body: String,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let mut builder = if args.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.workers);
        b
    };
    let runtime = builder.enable_all().build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> Result<(), Box<dyn Error>> {
    let body = Bytes::from(format!("{}\n", args.body));
    let mut tasks = Vec::with_capacity(args.listen.len());
    for addr in &args.listen {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        eprintln!("bench-upstream: listening on {addr}");
        tasks.push(tokio::spawn(accept_loop(listener, body.clone())));
    }
    for task in tasks {
        task.await?;
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, body: Bytes) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                eprintln!("bench-upstream: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small responses: never let Nagle delay them.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let body = body.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(answer(&req, body)) }
            });
            // Client resets and half-finished connections are normal under load.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The answer's body: the plain body, or a gRPC message and its trailers.
type Answer = http_body_util::Either<
    Full<Bytes>,
    StreamBody<tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

/// 200 with `body`, or, to a gRPC call, `body` as a gRPC message (a
/// protobuf string, field 1) followed by `grpc-status: 0`.
fn answer(req: &Request<Incoming>, body: Bytes) -> Response<Answer> {
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return Response::new(http_body_util::Either::Left(Full::new(body)));
    }
    // Field 1, wire type 2 (a length-delimited string), at most 127 bytes
    // of the body, so that its length is one byte.
    let len = u8::try_from(body.len().min(127)).unwrap_or(0);
    let taken = &body[..usize::from(len)];
    let mut message = Vec::with_capacity(7 + taken.len());
    message.push(0); // not compressed
    message.extend_from_slice(&(u32::from(len) + 2).to_be_bytes());
    message.extend_from_slice(&[0x0a, len]);
    message.extend_from_slice(taken);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames = vec![
        Ok(Frame::data(Bytes::from(message))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut resp = Response::new(http_body_util::Either::Right(StreamBody::new(
        tokio_stream::iter(frames),
    )));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    resp
}
