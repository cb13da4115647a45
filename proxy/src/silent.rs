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
//! as opaque (`opaque::pick`; bounded by the connect timeout) and waits for
//! either side's first bytes, for at most `--header-read-timeout`:
//! - the server speaks first: opaque, and what it said is passed on;
//! - the client speaks first, or half-closes: detection goes on with its
//!   bytes. HTTP closes the connection made ahead (its server saw a
//!   connection open and close with not a byte on it, as when a client
//!   gives up) and takes the HTTP path; anything else goes on over it;
//! - the server closes without a word (an HTTP server dropping a connection
//!   that sends no request): the wait goes on for the client alone, which
//!   may still send a request to be routed;
//! - neither: both are closed, as an idle HTTP/1.1 connection would be
//!   between two requests (counted as `timeouts_total{timeout="header_read"}`).
//!
//! When the dial fails, or the service has no endpoint, the client gets
//! what an opaque connection would have got at once: a reset, counted and
//! reported. Waiting holds no buffer: each side is peeked at for one byte,
//! and bytes are read once there are some. Everything the wait needs is
//! let go before the connection is handed on.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::conn::{Conn, NotHttp, serve_detected};
use crate::detect;
use crate::limits::{Timeout, enabled, until};
use crate::opaque::{self, Picked, Up};
use crate::protocol::Protocol;
use crate::shared::Shared;
use crate::upstream::connect_tcp;

/// The most a server's first read takes in (a greeting): what it said is
/// passed on before the copy, which takes the rest.
const FIRST_READ: usize = 4 * 1024;

/// The log line that says a silent client spoke first (at debug level).
pub const CLIENT_SPOKE_FIRST: &str = "a silent client spoke first";

/// What the wait on a silent connection decided.
enum Decided {
    /// The client spoke (or half-closed); the connection made ahead, if it
    /// is still open.
    Client(Option<TcpStream>),
    /// The server spoke first, and said this.
    Server(TcpStream, Bytes),
    /// The dial ahead failed.
    Failed(crate::upstream::UpstreamError),
    /// Nothing more to do: neither spoke in time, the server failed, or the
    /// proxy is shutting down.
    Done,
}

/// Serves a transparent connection whose client said nothing within the
/// detect timeout.
pub(crate) async fn serve(down: TcpStream, conn: Conn, shared: Arc<Shared>) {
    let picked = opaque::pick(conn, &shared);
    let up = match picked.addr() {
        // No endpoint: nothing to wait for; counted and reset, as opaque.
        None => Up::Dial,
        Some(addr) => match wait(&down, addr, conn, &shared).await {
            Decided::Client(up) => return client_first(down, up, conn, shared, picked).await,
            Decided::Server(up, said) => {
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, "the server of a silent connection spoke first: opaque");
                Up::Ahead { up, said }
            }
            Decided::Failed(e) => Up::Failed(e),
            Decided::Done => return,
        },
    };
    let (prefix, protocol) = (Bytes::new(), Protocol::Opaque);
    opaque::serve_picked(down, prefix, protocol, conn, shared, picked, up).await;
}

/// Dials `addr` ahead, then waits for the first side to speak.
async fn wait(down: &TcpStream, addr: SocketAddr, conn: Conn, shared: &Shared) -> Decided {
    let deadline =
        enabled(shared.config.limits.header_read_timeout).map(|limit| Instant::now() + limit);
    let drained = shared.drain.started();
    tokio::pin!(drained);
    let mut up = tokio::select! {
        biased;
        made = connect_tcp(addr, &shared.config.connect) => match made {
            Ok(up) => Some(up),
            Err(e) => return Decided::Failed(e),
        },
        () = until(deadline) => None,
        () = drained.as_mut() => return Decided::Done,
    };
    loop {
        let server = async {
            match &up {
                Some(up) => has_bytes(up).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = has_bytes(down) => return Decided::Client(up),
            _ = server => {}
            () = until(deadline) => {
                shared.metrics.timeout(Timeout::HeaderRead);
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, "neither side of a silent connection spoke: closed");
                return Decided::Done;
            }
            () = drained.as_mut() => return Decided::Done,
        }
        // The server's side is ready; it is put back only to wait again.
        let Some(server) = up.take() else {
            return Decided::Done;
        };
        let mut said = BytesMut::with_capacity(FIRST_READ);
        match server.try_read_buf(&mut said) {
            Ok(0) => {
                // The server gave up on a connection that said nothing; the
                // client may still send a request.
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, "the server of a silent connection closed it: waiting for the client alone");
            }
            Ok(_) => return Decided::Server(server, said.freeze()),
            // Peeked at, so not expected; waiting again is the safe answer.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => up = Some(server),
            Err(e) => {
                tracing::debug!(peer = %conn.peer, dst = %conn.dst, error = %e, "the server of a silent connection failed: waiting for the client alone");
            }
        }
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
    picked: Picked,
) {
    let found = match detect::detect(&mut down, Some(shared.config.detect.timeout)).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(peer = %conn.peer, dst = %conn.dst, error = %e, "connection failed during protocol detection");
            return;
        }
    };
    if found.timed_out {
        shared.metrics.timeout(Timeout::Detect);
    }
    tracing::debug!(peer = %conn.peer, dst = %conn.dst, protocol = found.protocol.as_str(), "{CLIENT_SPOKE_FIRST}");
    match found.protocol {
        Protocol::Http1 | Protocol::Http2 | Protocol::Grpc => {
            drop((up, picked));
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
        // A half-close with no byte is opaque too: it is passed on.
        Protocol::Tls | Protocol::Opaque => {
            let up = match up {
                Some(up) => Up::Ahead {
                    up,
                    said: Bytes::new(),
                },
                None => Up::Dial,
            };
            opaque::serve_picked(down, found.prefix, found.protocol, conn, shared, picked, up)
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

    async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
        tokio::time::timeout(BOUND, f)
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {BOUND:?}"))
    }

    /// A client's connection to `dst` (a destination the table does not
    /// know, so it passes through), handed to [`serve`] as silent: the
    /// client's end.
    async fn start(dst: SocketAddr, shared: Arc<Shared>) -> TcpStream {
        let front = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(front.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (down, peer) = front.accept().await.expect("accept");
        let conn = Conn {
            dst,
            peer,
            direction: Direction::Outbound,
        };
        tokio::spawn(serve(down, conn, shared));
        client
    }

    /// A silent connection once the proxy has dialed ahead.
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
        let shared = Shared::new(config, Table::default());
        let client = start(upstream.local_addr().expect("addr"), shared.clone()).await;
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

    /// Sends `GET path` from `client`; the request must come on a new
    /// connection to `upstream` (the HTTP path's own), whose answer must
    /// reach the client.
    async fn served_as_http(client: &mut TcpStream, upstream: &TcpListener, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: example\r\n\r\n");
        client.write_all(request.as_bytes()).await.expect("write");
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
        assert!(
            head.starts_with(&format!("GET {path} HTTP/1.1\r\n")),
            "{head}"
        );
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
        served_as_http(&mut client, &upstream, "/late").await;
        // The connection made ahead was closed without a byte.
        let mut nothing = Vec::new();
        let n = bounded("the dial ahead closes", ahead.read_to_end(&mut nothing))
            .await
            .expect("read");
        assert_eq!(n, 0, "{nothing:?}");
    }

    #[tokio::test]
    async fn a_server_that_closes_without_a_word_leaves_the_client_to_speak() {
        let Silent {
            mut client,
            ahead,
            upstream,
            ..
        } = silent(Config::default()).await;
        drop(ahead);
        served_as_http(&mut client, &upstream, "/after-the-server-left").await;
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
    async fn a_client_that_half_closes_after_silence_is_passed_on() {
        let Silent {
            mut client,
            mut ahead,
            ..
        } = silent(Config::default()).await;
        client.shutdown().await.expect("half-close");
        let mut nothing = Vec::new();
        bounded("the half-close", ahead.read_to_end(&mut nothing))
            .await
            .expect("read");
        assert!(nothing.is_empty(), "{nothing:?}");
        ahead.write_all(b"bye").await.expect("write");
        drop(ahead);
        let mut back = Vec::new();
        bounded("the answer", client.read_to_end(&mut back))
            .await
            .expect("read");
        assert_eq!(back, b"bye");
    }

    #[tokio::test]
    async fn a_failed_dial_ahead_resets_the_client_and_is_counted() {
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let shared = Shared::new(Config::default(), Table::default());
        let mut client = start(closed, shared.clone()).await;
        let mut buf = [0u8; 8];
        let read = bounded("the reset", client.read(&mut buf)).await;
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(io::ErrorKind::ConnectionReset)
        );
        let text = crate::metrics::scrape(&shared.metrics);
        let line = "divert_proxy_upstream_connect_errors_total{reason=\"refused\"} 1";
        assert!(text.contains(line), "{line} in\n{text}");
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
