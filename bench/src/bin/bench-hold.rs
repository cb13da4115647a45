//! `bench-hold`: opens many keep-alive HTTP/1.1 connections to a proxy, sends
//! one request on each, and holds them all open; for measuring what many
//! connections cost a proxy's memory, and whether it is given back once they
//! close (`bench/connections.sh`).
//!
//! It prints `held N` once every connection has had its answer, then waits
//! for a line (or the end) on stdin, closes them all, and prints `closed`.

#![forbid(unsafe_code)]

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
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
        let permits = Arc::new(Semaphore::new(args.concurrency));
        let mut tasks = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            let permits = permits.clone();
            let request = request.clone();
            let addr = args.addr;
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
                tokio::time::timeout(Duration::from_secs(30), one_request(addr, &request))
                    .await
                    .map_err(|_| "no answer within 30 s")?
                    .map_err(|e| e.to_string())
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
