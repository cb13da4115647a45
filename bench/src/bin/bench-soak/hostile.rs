//! Clients no proxy should have to serve, running beside the good ones for
//! the whole soak:
//! - slowloris: a request head trickled in a header line at a time, which
//!   the proxy must cut off at its header read timeout;
//! - idle: connections that say nothing (passed through as opaque after the
//!   detection timeout) and an HTTP/2 connection with no stream, which the
//!   proxy must close after its idle timeout;
//! - resets: connections reset in the middle of a request body, while a
//!   response is on its way, on HTTP/2 with a stream open, and on the
//!   opaque port.
//!
//! Each cut-off is checked against the limit it comes from; everything
//! else must leave no trace in the proxy (the samples show it).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::world::{DB, WEB};

/// Between two header lines of a slowloris request.
const TRICKLE: Duration = Duration::from_secs(5);
/// How much later than its limit a cut-off may come: the proxy's timers and
/// a busy machine.
const SLACK: Duration = Duration::from_secs(5);
/// How long an idle (silent) connection is held before the client leaves.
const HOLD_SILENT: Duration = Duration::from_secs(20);
/// Between two resets.
const RESET_EVERY: Duration = Duration::from_millis(100);
/// Violations described one by one.
const DESCRIBED: usize = 20;

/// The limits the proxy runs with, that the hostile clients run into.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    /// An idle HTTP/2 connection is closed within twice this.
    pub idle: Duration,
}

/// What the hostile clients did and saw.
#[derive(Debug, Default)]
pub struct Report {
    pub slowloris_cut: AtomicU64,
    pub slowloris_slowest_ms: AtomicU64,
    pub idle_h2_closed: AtomicU64,
    pub idle_h2_soonest_ms: AtomicU64,
    pub idle_h2_slowest_ms: AtomicU64,
    pub silent_held: AtomicU64,
    pub resets: AtomicU64,
    violations: AtomicU64,
    described: Mutex<Vec<String>>,
}

impl Report {
    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::Relaxed)
    }

    pub fn described(&self) -> Vec<String> {
        self.described.lock().map(|d| d.clone()).unwrap_or_default()
    }

    fn violation(&self, what: String) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut d) = self.described.lock()
            && d.len() < DESCRIBED
        {
            d.push(what);
        }
    }
}

/// Whether `stop` has turned true.
fn stopped(stop: &watch::Receiver<bool>) -> bool {
    *stop.borrow()
}

/// Trickles a request head one header line per [`TRICKLE`] until the proxy
/// closes the connection, which must come within the header read timeout.
pub async fn slowloris(limits: Limits, report: &Report, mut stop: watch::Receiver<bool>) {
    while !stopped(&stop) {
        let Ok(mut s) = TcpStream::connect(WEB).await else {
            report.violation("slowloris: cannot connect".into());
            tokio::time::sleep(TRICKLE).await;
            continue;
        };
        let started = Instant::now();
        let mut next = b"GET /slow HTTP/1.1\r\nHost: web\r\n".to_vec();
        let mut buf = [0u8; 1024];
        let cut = loop {
            if s.write_all(&next).await.is_err() {
                break true;
            }
            next = b"X-Trickle: 1\r\n".to_vec();
            let read = tokio::select! {
                r = tokio::time::timeout(TRICKLE, s.read(&mut buf)) => r,
                _ = stop.wait_for(|s| *s) => break false,
            };
            match read {
                Ok(Ok(0) | Err(_)) => break true,
                // An answer (a 408, say) before the close.
                Ok(Ok(_)) => continue,
                Err(_) if started.elapsed() > limits.header_read + SLACK => {
                    report.violation(format!(
                        "slowloris: still open after {:?}, past the header read timeout of {:?}",
                        started.elapsed(),
                        limits.header_read
                    ));
                    break false;
                }
                Err(_) => {}
            }
        };
        if cut {
            let ms = started.elapsed().as_millis() as u64;
            report.slowloris_cut.fetch_add(1, Ordering::Relaxed);
            report.slowloris_slowest_ms.fetch_max(ms, Ordering::Relaxed);
            if started.elapsed() + SLACK < limits.header_read {
                report.violation(format!(
                    "slowloris: cut after {:?}, before the header read timeout of {:?}",
                    started.elapsed(),
                    limits.header_read
                ));
            }
        }
    }
}

/// Connects and says nothing for [`HOLD_SILENT`], then leaves.
pub async fn silent(report: &Report, mut stop: watch::Receiver<bool>) {
    while !stopped(&stop) {
        let Ok(s) = TcpStream::connect(WEB).await else {
            report.violation("silent: cannot connect".into());
            tokio::time::sleep(HOLD_SILENT).await;
            continue;
        };
        tokio::select! {
            _ = tokio::time::sleep(HOLD_SILENT) => {
                report.silent_held.fetch_add(1, Ordering::Relaxed);
            }
            _ = stop.wait_for(|s| *s) => {}
        }
        drop(s);
    }
}

/// An HTTP/2 connection that opens no stream: it answers the proxy's
/// SETTINGS and PINGs and waits for GOAWAY and the close, which must come
/// after the idle timeout and within twice it.
pub async fn idle_h2(limits: Limits, report: &Report, mut stop: watch::Receiver<bool>) {
    while !stopped(&stop) {
        let started = Instant::now();
        let deadline = limits.idle * 2 + SLACK;
        let closed = tokio::select! {
            c = tokio::time::timeout(deadline, h2_until_closed()) => c,
            _ = stop.wait_for(|s| *s) => break,
        };
        let took = started.elapsed();
        match closed {
            Err(_) => report.violation(format!(
                "idle HTTP/2: still open after {took:?}, past twice the idle timeout of {:?}",
                limits.idle
            )),
            Ok(Err(e)) => {
                report.violation(format!("idle HTTP/2: {e}"));
                tokio::time::sleep(TRICKLE).await;
            }
            Ok(Ok(())) => {
                let ms = took.as_millis() as u64;
                report.idle_h2_closed.fetch_add(1, Ordering::Relaxed);
                report.idle_h2_slowest_ms.fetch_max(ms, Ordering::Relaxed);
                let soonest = report.idle_h2_soonest_ms.load(Ordering::Relaxed);
                if soonest == 0 || ms < soonest {
                    report.idle_h2_soonest_ms.store(ms, Ordering::Relaxed);
                }
                if took + SLACK < limits.idle {
                    report.violation(format!(
                        "idle HTTP/2: closed after {took:?}, before the idle timeout of {:?}",
                        limits.idle
                    ));
                }
            }
        }
    }
}

/// The HTTP/2 frame types this client answers (RFC 9113 §6).
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// Speaks just enough HTTP/2 to be a live, idle client; returns once the
/// proxy has sent GOAWAY and closed.
async fn h2_until_closed() -> Result<(), String> {
    let mut s = TcpStream::connect(WEB)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&frame_header(0, SETTINGS, 0));
    s.write_all(&hello)
        .await
        .map_err(|e| format!("preface: {e}"))?;
    let mut goaway = false;
    loop {
        let mut head = [0u8; 9];
        match s.read_exact(&mut head).await {
            Ok(_) => {}
            Err(_) if goaway => return Ok(()),
            Err(e) => return Err(format!("closed without GOAWAY: {e}")),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        if len > 1 << 14 {
            return Err(format!("a frame of {len} bytes from the proxy"));
        }
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload)
            .await
            .map_err(|e| format!("frame: {e}"))?;
        let (kind, flags) = (head[3], head[4]);
        let reply = match kind {
            SETTINGS if flags & ACK == 0 => Some(frame_header(0, SETTINGS, ACK).to_vec()),
            PING if flags & ACK == 0 => {
                let mut f = frame_header(8, PING, ACK).to_vec();
                f.extend_from_slice(&payload);
                Some(f)
            }
            GOAWAY => {
                goaway = true;
                None
            }
            _ => None,
        };
        if let Some(r) = reply
            && s.write_all(&r).await.is_err()
            && !goaway
        {
            return Err("the proxy closed without GOAWAY".into());
        }
    }
}

fn frame_header(len: u32, kind: u8, flags: u8) -> [u8; 9] {
    let l = len.to_be_bytes();
    [l[1], l[2], l[3], kind, flags, 0, 0, 0, 0]
}

/// Resets connections in four places in turn.
pub async fn resets(report: &Report, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(RESET_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let done = match n % 4 {
            0 => reset_after(WEB, b"POST /upload HTTP/1.1\r\nHost: web\r\nContent-Length: 100000\r\n\r\nsome of the body").await,
            1 => reset_after(WEB, b"GET /slow HTTP/1.1\r\nHost: web\r\n\r\n").await,
            2 => reset_after(DB, b"junk\nand more").await,
            _ => reset_h2_stream().await,
        };
        match done {
            Ok(()) => {
                report.resets.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => report.violation(format!("reset: {e}")),
        }
    }
}

/// Connects, sends `bytes`, and resets (SO_LINGER 0, then close).
async fn reset_after(addr: std::net::SocketAddr, bytes: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(bytes)
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.set_zero_linger().map_err(|e| format!("SO_LINGER: {e}"))?;
    Ok(())
}

/// Opens an HTTP/2 stream for a slow answer and resets the connection
/// while the answer is on its way.
async fn reset_h2_stream() -> Result<(), String> {
    let s = TcpStream::connect(WEB)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.set_zero_linger().map_err(|e| format!("SO_LINGER: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri("http://web/slow")
        .body(Full::<Bytes>::default())
        .map_err(|e| e.to_string())?;
    // Sent once the request is on its way; the answer never comes back.
    let sent = send.send_request(req);
    let _ = tokio::time::timeout(Duration::from_millis(5), sent).await;
    conn.abort();
    Ok(())
}
