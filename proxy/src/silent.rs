//! A client that says nothing: whoever speaks first decides.
//!
//! Detection waits `--detect-timeout` for a client's first bytes. Silence
//! might mean a protocol where the server speaks first (SMTP, MySQL), so it
//! once made the connection opaque TCP. But HTTP clients also open
//! connections they do not use at once: a pool that dials while another of
//! its connections frees up keeps the new one idle (hyper and Go's net/http
//! both do), for up to their idle timeout (90 s for both). Made opaque, every
//! request later sent on it would bypass routing by key, and nobody would
//! know.
//!
//! So silence decides nothing. The proxy dials where the connection would go
//! as opaque ([`opaque::pick`]) and waits for either side's first bytes, for
//! at most `--header-read-timeout`:
//! - the server speaks first: opaque, and what it said is passed on;
//! - the client speaks first: detection goes on with its bytes. HTTP closes
//!   the connection made ahead (its server saw a connection open and close
//!   with not a byte on it, as when a client gives up); anything else goes
//!   on over it;
//! - neither: both are closed, as an idle HTTP/1.1 connection would be
//!   between two requests (counted as `timeouts_total{timeout="header_read"}`).
//!
//! Waiting holds no buffer: each side is peeked at for one byte, and bytes
//! are read once there are some.

use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{Conn, NotHttp, serve_detected};
use crate::detect;
use crate::limits::{Timeout, enabled, until};
use crate::opaque::{self, Ahead};
use crate::protocol::Protocol;
use crate::shared::Shared;
use crate::upstream::connect_tcp;

/// The most a server's first read takes in: what it said is passed on whole
/// before the copy begins.
const FIRST_READ: usize = 16 * 1024;

/// Who spoke first on a silent connection.
enum First {
    Client,
    Server,
    /// Neither within the limit.
    Neither,
    /// The proxy is shutting down.
    Draining,
}

/// Serves a transparent connection whose client said nothing within the
/// detect timeout.
pub(crate) async fn serve(down: TcpStream, conn: Conn, shared: Arc<Shared>) {
    let picked = opaque::pick(conn, &shared);
    let deadline =
        enabled(shared.config.limits.header_read_timeout).map(|limit| Instant::now() + limit);
    let drain = shared.drain.clone();
    let drained = drain.started();
    tokio::pin!(drained);

    // Dialing ahead, while the client may still speak (then the dial is
    // dropped half-way).
    let dial = async {
        let addr = picked.addr()?;
        match connect_tcp(addr, &shared.config.connect).await {
            Ok(up) => Some(up),
            Err(e) => {
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, error = %e, "dialing ahead for a silent client failed");
                None
            }
        }
    };
    let dialed = tokio::select! {
        biased;
        // Bytes, or the end: either way detection reads what there is.
        _ = has_bytes(&down) => None,
        up = dial => Some(up),
        () = until(deadline) => Some(None),
        () = drained.as_mut() => return,
    };
    let Some(mut up) = dialed else {
        // The client spoke (or failed) while the dial was under way.
        return client_first(down, None, conn, shared, picked).await;
    };
    let said = loop {
        match who_speaks(&down, up.as_ref(), deadline, drained.as_mut()).await {
            First::Client => return client_first(down, up, conn, shared, picked).await,
            First::Neither => {
                shared.metrics.timeout(Timeout::HeaderRead);
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, "neither side of a silent connection spoke: closed");
                return;
            }
            First::Draining => return,
            First::Server => {}
        }
        let Some(server) = up.as_mut() else { return };
        let mut said = BytesMut::with_capacity(FIRST_READ);
        match server.try_read_buf(&mut said) {
            // The server closed without a word: so does the client's side.
            Ok(0) => return,
            Ok(_) => break said.freeze(),
            // Peeked at, so never: but a wait again is the safe answer.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, error = %e, "a silent connection's server failed");
                opaque::reset(down);
                return;
            }
        }
    };
    tracing::trace!(peer = %conn.peer, dst = %conn.dst, "the server spoke first: opaque");
    let ahead = up.map(|up| Ahead { up, said });
    opaque::serve_picked(
        down,
        bytes::Bytes::new(),
        Protocol::Opaque,
        conn,
        shared,
        picked,
        ahead,
    )
    .await;
}

/// Waits for the first side to have bytes (or to close), within `deadline`.
async fn who_speaks<D>(
    down: &TcpStream,
    up: Option<&TcpStream>,
    deadline: Option<Instant>,
    drained: std::pin::Pin<&mut D>,
) -> First
where
    D: std::future::Future<Output = ()>,
{
    let server = async {
        match up {
            Some(up) => has_bytes(up).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = has_bytes(down) => First::Client,
        _ = server => First::Server,
        () = until(deadline) => First::Neither,
        () = drained => First::Draining,
    }
}

/// Resolves once `s` has a byte to read, or has ended (or failed); reads
/// nothing. Readiness alone can be a false positive.
async fn has_bytes(s: &TcpStream) -> io::Result<usize> {
    s.peek(&mut [0u8; 1]).await
}

/// The client spoke first: detection goes on with its bytes.
async fn client_first(
    mut down: TcpStream,
    up: Option<TcpStream>,
    conn: Conn,
    shared: Arc<Shared>,
    picked: opaque::Picked,
) {
    let found = match detect::detect(&mut down, Some(shared.config.detect.timeout)).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(peer = %conn.peer, dst = %conn.dst, error = %e, "connection failed during protocol detection");
            return;
        }
    };
    if found.prefix.is_empty() && !found.timed_out {
        // It closed without a word.
        return;
    }
    if found.timed_out {
        shared.metrics.timeout(Timeout::Detect);
    }
    tracing::trace!(peer = %conn.peer, dst = %conn.dst, protocol = found.protocol.as_str(), "a silent client spoke first");
    match found.protocol {
        Protocol::Http1 | Protocol::Http2 | Protocol::Grpc => {
            drop(up);
            serve_detected(
                down,
                found.protocol,
                found.prefix,
                NotHttp::PassThrough,
                conn,
                shared,
            )
            .await;
        }
        Protocol::Tls | Protocol::Opaque => {
            let ahead = up.map(|up| Ahead {
                up,
                said: bytes::Bytes::new(),
            });
            opaque::serve_picked(
                down,
                found.prefix,
                found.protocol,
                conn,
                shared,
                picked,
                ahead,
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use divert_core::direction::Direction;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::shared::Config;
    use crate::table::Table;

    /// The longest any step may take; every wait below ends sooner unless
    /// the proxy is wrong.
    const BOUND: Duration = Duration::from_secs(10);

    /// A silent client's connection, served by [`serve`] towards a
    /// listener (a destination the table does not know, so it passes
    /// through), once the proxy has dialed ahead.
    struct Silent {
        /// The client's end.
        client: TcpStream,
        /// The server's end of the connection dialed ahead.
        ahead: TcpStream,
        /// The destination's listener.
        upstream: TcpListener,
        shared: Arc<Shared>,
    }

    async fn silent(config: Config) -> Silent {
        let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(front.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (down, peer) = front.accept().await.expect("accept");
        let conn = Conn {
            dst: upstream.local_addr().expect("addr"),
            peer,
            direction: Direction::Outbound,
        };
        let shared = Shared::new(config, Table::default());
        tokio::spawn(serve(down, conn, shared.clone()));
        let (ahead, _) = bounded("the dial ahead", upstream.accept())
            .await
            .expect("accept");
        Silent {
            client,
            ahead,
            upstream,
            shared,
        }
    }

    async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(BOUND, f)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
    }

    #[tokio::test]
    async fn a_server_that_speaks_first_gets_an_opaque_connection() {
        let Silent {
            client,
            ahead: mut server,
            ..
        } = silent(Config::default()).await;
        server.write_all(b"220 ready\r\n").await.expect("greet");
        let mut client = BufReader::new(client);
        let mut line = String::new();
        bounded("the greeting", client.read_line(&mut line))
            .await
            .expect("read");
        assert_eq!(line, "220 ready\r\n");
        client.write_all(b"QUIT\r\n").await.expect("write");
        let mut got = [0u8; 6];
        bounded("the reply", server.read_exact(&mut got))
            .await
            .expect("read");
        assert_eq!(&got, b"QUIT\r\n");
    }

    #[tokio::test]
    async fn a_client_that_speaks_http_after_silence_is_served_as_http() {
        let Silent {
            mut client,
            mut ahead,
            upstream,
            ..
        } = silent(Config::default()).await;
        client
            .write_all(b"GET /late HTTP/1.1\r\nhost: example\r\n\r\n")
            .await
            .expect("write");
        // The connection made ahead is closed without a byte...
        let mut nothing = Vec::new();
        let n = bounded("the dial ahead closes", ahead.read_to_end(&mut nothing))
            .await
            .expect("read");
        assert_eq!(n, 0, "{nothing:?}");
        // ...and the request comes on the HTTP path's own connection.
        let (server, _) = bounded("the request's connection", upstream.accept())
            .await
            .expect("accept");
        let mut server = BufReader::new(server);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            bounded("the request head", server.read_line(&mut line))
                .await
                .expect("read");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("GET /late HTTP/1.1\r\n"), "{head}");
        server
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .expect("answer");
        let mut answer = vec![0u8; 64];
        let mut got = Vec::new();
        while !got.ends_with(b"ok") {
            let n = bounded("the answer", client.read(&mut answer))
                .await
                .expect("read");
            assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&answer[..n]);
        }
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{got:?}");
    }

    #[tokio::test]
    async fn a_client_that_speaks_another_protocol_goes_on_over_the_dial_ahead() {
        let Silent {
            mut client,
            mut ahead,
            ..
        } = silent(Config::default()).await;
        client.write_all(b"\x00\x01binary").await.expect("write");
        let mut got = [0u8; 8];
        bounded("the client's bytes", ahead.read_exact(&mut got))
            .await
            .expect("read");
        assert_eq!(&got, b"\x00\x01binary");
        ahead.write_all(b"back").await.expect("write");
        let mut back = [0u8; 4];
        bounded("the answer", client.read_exact(&mut back))
            .await
            .expect("read");
        assert_eq!(&back, b"back");
    }

    #[tokio::test]
    async fn when_neither_side_speaks_both_are_closed_at_the_header_read_timeout() {
        let mut config = Config::default();
        config.limits.header_read_timeout = Duration::from_millis(200);
        let Silent {
            mut client,
            mut ahead,
            shared,
            ..
        } = silent(config).await;
        let mut buf = Vec::new();
        let n = bounded("the client's side closes", client.read_to_end(&mut buf))
            .await
            .expect("read");
        assert_eq!(n, 0);
        let n = bounded("the server's side closes", ahead.read_to_end(&mut buf))
            .await
            .expect("read");
        assert_eq!(n, 0);
        let text = crate::metrics::scrape(&shared.metrics);
        let line = "divert_proxy_timeouts_total{timeout=\"header_read\"} 1";
        assert!(text.contains(line), "{line} in\n{text}");
    }
}
