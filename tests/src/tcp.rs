//! Plain TCP peers for the opaque paths: servers that speak first, and
//! servers that answer only after the client's half-close, so a proxy that
//! did not pass the half-close on would hang them.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Sends a banner at once, then reads until the client closes.
pub async fn banner_server(listener: TcpListener, banner: &'static str) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = s.write_all(banner.as_bytes()).await;
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
    }
}

/// Reads until the client's EOF, then answers `echo: <what it read>`.
pub async fn echo_after_eof_server(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut got = Vec::new();
            if s.read_to_end(&mut got).await.is_ok() {
                let mut reply = b"echo: ".to_vec();
                reply.extend_from_slice(&got);
                let _ = s.write_all(&reply).await;
            }
        });
    }
}

/// Over `stream` (connected already): sends `msg`, closes the write side,
/// and reads everything back, waiting at most 20 s for each read.
pub fn exchange(mut stream: std::net::TcpStream, msg: &[u8]) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream.write_all(msg).expect("raw write");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut got = Vec::new();
    stream.read_to_end(&mut got).expect("raw read");
    got
}
