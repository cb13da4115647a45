//! Protocol detection on the transparent listener: what does the client speak?
//!
//! The proxy reads the first bytes the client sends, bounded in size and time,
//! decides, and replays those bytes to the chosen handler ([`Prefixed`]). A
//! client that says nothing within the timeout is not decided here: the
//! proxy dials ahead and whoever speaks first decides ([`crate::silent`]),
//! so a protocol where the server speaks first stalls for about that long
//! (and not at all on the configured opaque ports, which skip detection).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::protocol::Protocol;

/// How detection behaves; part of the proxy's [`crate::Config`].
#[derive(Debug, Clone)]
pub struct DetectSettings {
    /// How long to wait for the client's first bytes before dialing ahead
    /// and letting whichever side speaks first decide ([`crate::silent`]).
    pub timeout: Duration,
    /// Destination ports whose protocols are opaque (often server-first):
    /// detection is skipped, so nothing waits.
    pub opaque_ports: Vec<u16>,
}

/// Server-first or binary protocols that are never HTTP: SMTP (25, 587),
/// MySQL, the Kubernetes-era favourites of the same kind (4444 Galera, 9300
/// Elasticsearch transport), PostgreSQL, Redis and memcached.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];
/// [`DEFAULT_OPAQUE_PORTS`] as a flag's default value.
pub const DEFAULT_OPAQUE_PORTS_FLAG: &str = "25,587,3306,4444,5432,6379,9300,11211";

impl Default for DetectSettings {
    fn default() -> Self {
        DetectSettings {
            timeout: Duration::from_millis(500),
            opaque_ports: DEFAULT_OPAQUE_PORTS.to_vec(),
        }
    }
}

impl DetectSettings {
    pub fn is_opaque_port(&self, port: u16) -> bool {
        self.opaque_ports.contains(&port)
    }
}

/// The most bytes read before deciding; a request line longer than this is
/// treated as opaque (and so still reaches where the client meant to go).
pub const MAX_DETECT_BYTES: usize = 16 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest HTTP method we accept in a request line (the registered ones are
/// all far shorter).
const MAX_METHOD_LEN: usize = 24;

/// The verdict on the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Known(Protocol),
    NeedMore,
}

/// Classifies a connection's first bytes. Pure, so it is tested on its own.
pub fn classify(buf: &[u8]) -> Verdict {
    use Verdict::{Known, NeedMore};
    if buf.is_empty() {
        return NeedMore;
    }
    // The h2 preface is itself a valid-looking request line (method PRI), so
    // it is checked first.
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Known(Protocol::Http2)
        } else {
            NeedMore
        };
    }
    if buf[0] == 0x16 {
        // TLS record: handshake, version 3.x (SSL 3.0 to TLS 1.3's legacy 3.1).
        return match buf.get(1..3) {
            None if buf.len() < 3 && buf.get(1).is_none_or(|&b| b == 3) => NeedMore,
            Some([3, minor]) if *minor <= 4 => Known(Protocol::Tls),
            _ => Known(Protocol::Opaque),
        };
    }
    http1_request_line(buf)
}

/// `METHOD SP target SP HTTP/1.x CRLF`.
fn http1_request_line(buf: &[u8]) -> Verdict {
    use Verdict::{Known, NeedMore};
    let method_len = buf.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len == buf.len() {
        return if method_len <= MAX_METHOD_LEN {
            NeedMore
        } else {
            Known(Protocol::Opaque)
        };
    }
    if method_len == 0 || method_len > MAX_METHOD_LEN || buf[method_len] != b' ' {
        return Known(Protocol::Opaque);
    }
    let Some(eol) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_DETECT_BYTES {
            Known(Protocol::Opaque)
        } else {
            NeedMore
        };
    };
    let line = buf[..eol].strip_suffix(b"\r").unwrap_or(&buf[..eol]);
    let rest = &line[method_len + 1..];
    match rest.iter().rposition(|&b| b == b' ') {
        Some(sp) if sp > 0 && is_http1_version(&rest[sp + 1..]) => Known(Protocol::Http1),
        _ => Known(Protocol::Opaque),
    }
}

fn is_http1_version(v: &[u8]) -> bool {
    matches!(v, [b'H', b'T', b'T', b'P', b'/', b'1', b'.', d] if d.is_ascii_digit())
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// What [`detect`] found.
#[derive(Debug)]
pub struct Detected {
    pub protocol: Protocol,
    /// Every byte read, to be replayed ([`Prefixed`]).
    pub prefix: Bytes,
    /// The limit ran out before the bytes told (the protocol is then
    /// [`Protocol::Opaque`]).
    pub timed_out: bool,
}

/// Reads from `io` until the protocol is known, `limit` passes (opaque), the
/// client closes its side (opaque) or [`MAX_DETECT_BYTES`] are buffered.
/// `None` waits without limit.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    limit: Option<Duration>,
) -> io::Result<Detected> {
    let deadline = limit.map(|l| tokio::time::Instant::now() + l);
    let mut buf = BytesMut::with_capacity(1024);
    let done = |buf: BytesMut, protocol, timed_out| Detected {
        protocol,
        prefix: buf.freeze(),
        timed_out,
    };
    loop {
        if buf.len() >= MAX_DETECT_BYTES {
            return Ok(done(buf, Protocol::Opaque, false));
        }
        if buf.capacity() == buf.len() {
            buf.reserve((buf.len()).min(MAX_DETECT_BYTES - buf.len()));
        }
        let read = match deadline {
            Some(d) => tokio::time::timeout_at(d, io.read_buf(&mut buf)).await,
            None => Ok(io.read_buf(&mut buf).await),
        };
        match read {
            Err(_elapsed) => return Ok(done(buf, Protocol::Opaque, true)),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => return Ok(done(buf, Protocol::Opaque, false)),
            Ok(Ok(_)) => {}
        }
        if let Verdict::Known(p) = classify(&buf) {
            return Ok(done(buf, p, false));
        }
    }
}

/// An I/O stream that first yields bytes already read from it.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // An empty view still holds the whole detection buffer, for
                // as long as the connection lives: let it go.
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Protocol::*;
    use Verdict::*;

    #[test]
    fn http2_preface_is_h2_and_its_prefixes_wait() {
        assert_eq!(classify(H2_PREFACE), Known(Http2));
        let mut with_frames = H2_PREFACE.to_vec();
        with_frames.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
        assert_eq!(classify(&with_frames), Known(Http2));
        for n in 1..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..n]), NeedMore, "{n} bytes");
        }
        // Same start, then not the preface: an HTTP/1 request with method PRI.
        assert_eq!(classify(b"PRI /x HTTP/1.1\r\n"), Known(Http1));
    }

    #[test]
    fn http1_request_lines() {
        for line in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"POST /v1/rent?x=1 HTTP/1.0\r\n",
            b"OPTIONS * HTTP/1.1\n",
            b"CONNECT api:443 HTTP/1.1\r\n",
            b"M-SEARCH * HTTP/1.1\r\n",
        ] {
            assert_eq!(
                classify(line),
                Known(Http1),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        for partial in [
            &b"G"[..],
            b"GET",
            b"GET ",
            b"GET /movies",
            b"GET / HTTP/1.1\r",
        ] {
            assert_eq!(classify(partial), NeedMore, "{partial:?}");
        }
    }

    #[test]
    fn other_protocols_are_opaque() {
        for bytes in [
            &b"PING\r\n"[..],                    // Redis inline command
            b"SET key value\r\n",                // no HTTP version
            b"GET / HTTP/2.0\r\n",               // not HTTP/1
            b"*1\r\n$4\r\nPING\r\n",             // RESP
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL SSLRequest
            b" GET / HTTP/1.1\r\n",              // leading space
            b"GET  HTTP/1.1\r\n",                // no target
            b"\x16\x02\x01",                     // SSL 2-ish, not TLS
        ] {
            assert_eq!(classify(bytes), Known(Opaque), "{bytes:?}");
        }
        let long_method = [b'A'; MAX_METHOD_LEN + 1];
        assert_eq!(classify(&long_method), Known(Opaque));
    }

    #[test]
    fn the_flag_default_lists_the_default_ports() {
        let parsed: Vec<u16> = DEFAULT_OPAQUE_PORTS_FLAG
            .split(',')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(parsed, DEFAULT_OPAQUE_PORTS);
    }

    #[test]
    fn tls_client_hello() {
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), Known(Tls));
        assert_eq!(classify(&[0x16, 0x03, 0x03]), Known(Tls));
        assert_eq!(classify(&[0x16]), NeedMore);
        assert_eq!(classify(&[0x16, 0x03]), NeedMore);
    }

    #[test]
    fn a_request_line_past_the_limit_is_opaque() {
        let mut line = b"GET /".to_vec();
        line.resize(MAX_DETECT_BYTES, b'a');
        assert_eq!(classify(&line), Known(Opaque));
        line.truncate(MAX_DETECT_BYTES - 1);
        assert_eq!(classify(&line), NeedMore);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_opaque_after_the_timeout() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let started = tokio::time::Instant::now();
        let d = detect(&mut server, Some(Duration::from_millis(300)))
            .await
            .unwrap();
        assert_eq!(d.protocol, Opaque);
        assert!(d.timed_out, "the limit ran out");
        assert!(d.prefix.is_empty());
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // The client's late bytes are still there for the opaque handler.
        tokio::io::AsyncWriteExt::write_all(&mut client, b"hi")
            .await
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_in_pieces_are_gathered_and_replayed() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in [&b"GE"[..], b"T /x HT", b"TP/1.1\r\nHost: a\r\n\r\n"] {
                client.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            client
        });
        let d = detect(&mut server, Some(Duration::from_secs(1)))
            .await
            .unwrap();
        assert_eq!((d.protocol, d.timed_out), (Http1, false));
        let _client = writer.await.unwrap();
        let mut replayed = Prefixed::new(d.prefix, server);
        let mut line = vec![0; 16];
        replayed.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"GET /x HTTP/1.1\r");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_inside_the_http2_preface_times_out() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let d = detect(&mut server, Some(Duration::from_secs(2)))
            .await
            .unwrap();
        assert!(d.timed_out);
        assert_eq!(&d.prefix[..], &H2_PREFACE[..10]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_closes_at_once_is_opaque() {
        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let d = detect(&mut server, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert_eq!(
            (d.protocol, d.prefix.len(), d.timed_out),
            (Opaque, 0, false)
        );
    }
}
