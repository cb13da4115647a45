//! Byte counts of client connections, kept off the hot path.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::ConnectionGuard;

/// A client connection that counts the bytes through it, for
/// [`ConnectionGuard`]. Counts pile up locally and are added to the shared
/// counters when a read finds nothing more to read (the connection went idle:
/// about once per request), every `FLUSH_BYTES`, and when the connection
/// ends; so a read or write costs no atomic operation, and a scrape never
/// lags an idle keep-alive connection.
#[derive(Debug)]
pub struct CountedIo<T> {
    inner: T,
    guard: ConnectionGuard,
    read: u64,
    written: u64,
}

const FLUSH_BYTES: u64 = 1 << 20;

impl<T> CountedIo<T> {
    pub fn new(inner: T, guard: ConnectionGuard) -> Self {
        CountedIo {
            inner,
            guard,
            read: 0,
            written: 0,
        }
    }

    fn flush_counts(&mut self) {
        self.guard.add_bytes(self.read, self.written);
        self.read = 0;
        self.written = 0;
    }
}

impl<T> Drop for CountedIo<T> {
    fn drop(&mut self) {
        self.flush_counts();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read += (buf.filled().len() - before) as u64;
        let idle = r.is_pending() && (self.read > 0 || self.written > 0);
        if idle || self.read >= FLUSH_BYTES {
            self.flush_counts();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
            if self.written >= FLUSH_BYTES {
                self.flush_counts();
            }
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
            if self.written >= FLUSH_BYTES {
                self.flush_counts();
            }
        }
        r
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
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;
    use crate::protocol::Protocol;

    #[tokio::test]
    async fn byte_counts_are_flushed_when_the_connection_goes_idle() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let m = Arc::new(Metrics::default());
        let probe = m.connection(Protocol::Http1);
        let (client, server) = tokio::io::duplex(1024);
        let mut counted = CountedIo::new(server, m.connection(Protocol::Http2));
        let mut client = client;
        client.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(counted.read(&mut buf).await.unwrap(), 5);
        counted.write_all(b"hi").await.unwrap();
        let read = |g: &ConnectionGuard| g.class_bytes().0;
        // Nothing flushed yet: the read found data, nothing went idle.
        assert_eq!(read(&probe), 0);
        // The next read finds nothing (the client is quiet): idle, flushed,
        // while the connection stays open.
        let polled = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            Poll::Ready(Pin::new(&mut counted).poll_read(cx, &mut rb).is_pending())
        })
        .await;
        assert!(
            polled,
            "the quiet client's connection should have nothing to read"
        );
        assert_eq!(read(&probe), 5);
        assert_eq!(probe.class_bytes().1, 2);
        drop(counted);
        assert_eq!(read(&probe), 5);
    }
}
