//! `bench-hold`: opens many keep-alive HTTP/1.1 (or, with `--h2c`, HTTP/2
//! prior-knowledge) connections to a proxy, sends one request on each, and
//! holds them all open; for measuring what many connections cost a proxy's
//! memory, and whether it is given back once they close
//! (`bench/connections.sh`).
//!
//! It prints `held N` once every connection has had its answer, then waits
//! for a line (or the end) on stdin, closes them all, and prints `closed`.

#![forbid(unsafe_code)]

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Holds N keep-alive HTTP/1.1 connections open, one request answered on each.
#[derive(Parser, Debug)]
#[command(name = "bench-hold")]
struct Args {
    /// The address to connect to.
    #[arg(long)]
    addr: SocketAddr,

    /// Connections to open and hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,

    /// Connections being opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,

    /// Extra request header, "Name: value" (may be given several times).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,

    /// Speak HTTP/2 with prior knowledge (h2c) instead of HTTP/1.1.
    #[arg(long)]
    h2c: bool,
}

/// A connection held open, with what keeps it so.
enum Held {
    Http1(#[allow(dead_code)] TcpStream),
    /// The request handle and the task driving the connection.
    H2c(
        #[allow(dead_code)] hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::H2c(_, conn) = self {
            conn.abort();
        }
    }
}

/// Opens an h2c connection, sends one request with `headers` and reads its
/// answer to the end.
async fn one_h2c_request(
    addr: SocketAddr,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<Held, Box<dyn Error + Send + Sync>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::new(Empty::<Bytes>::new());
    *req.uri_mut() = format!("http://{addr}/").parse()?;
    for (k, v) in headers {
        req.headers_mut().append(k.clone(), v.clone());
    }
    let resp = send.send_request(req).await?;
    if resp.status() != 200 {
        return Err(format!("not a 200: {}", resp.status()).into());
    }
    resp.into_body().collect().await?;
    Ok(Held::H2c(send, driver))
}

/// Sends one request and reads its answer to the end of the head and a
/// Content-Length body.
async fn one_request(addr: SocketAddr, request: &[u8]) -> Result<TcpStream, Box<dyn Error>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut got = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]);
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("not a 200: {head}").into());
            }
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Ok(s);
            }
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err("closed before the answer".into());
        }
        got.extend_from_slice(&chunk[..n]);
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut request = format!("GET / HTTP/1.1\r\nHost: {}\r\n", args.addr);
        for h in &args.headers {
            request.push_str(h);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        let request: Arc<[u8]> = request.into_bytes().into();
        let mut fields = Vec::new();
        for h in &args.headers {
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| format!("--header must be \"Name: value\", got {h:?}"))?;
            fields.push((
                HeaderName::from_bytes(k.trim().as_bytes())?,
                HeaderValue::from_str(v.trim())?,
            ));
        }
        let fields: Arc<[(HeaderName, HeaderValue)]> = fields.into();
        let permits = Arc::new(Semaphore::new(args.concurrency));
        let mut tasks = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            let permits = permits.clone();
            let request = request.clone();
            let fields = fields.clone();
            let addr = args.addr;
            let h2c = args.h2c;
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
                let one = async {
                    if h2c {
                        one_h2c_request(addr, &fields)
                            .await
                            .map_err(|e| e.to_string())
                    } else {
                        one_request(addr, &request)
                            .await
                            .map(Held::Http1)
                            .map_err(|e| e.to_string())
                    }
                };
                tokio::time::timeout(Duration::from_secs(30), one)
                    .await
                    .map_err(|_| "no answer within 30 s".to_string())?
            }));
        }
        let mut held = Vec::with_capacity(args.connections);
        for t in tasks {
            match t.await? {
                Ok(s) => held.push(s),
                Err(e) => return Err(format!("a connection failed: {e}").into()),
            }
        }
        println!("held {}", held.len());
        // A line or the end of stdin: read on a blocking thread (tokio's
        // stdin needs a feature nothing else wants).
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        })
        .await;
        drop(held);
        println!("closed");
        Ok::<_, Box<dyn Error>>(())
    })
}
