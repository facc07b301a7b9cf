//! Write coalescing for the apiserver connection: the frames that one turn of the event
//! loop produces leave in one TLS record and one `writev`.
//!
//! hyper's HTTP/2 client sends a request with a body in two steps: the connection task
//! writes the HEADERS frame, then a task of its own pipes the body, and the connection
//! writes the DATA frame on its next poll. Each step ended in a flush, so every create,
//! update or delete cost two TLS records and two `writev`s (67 and 694 bytes for a
//! controller-manager's pod create). [`Coalesced`] keeps what is written and, on the first
//! flush of a round, wakes its task and lets the other ready tasks run first; the flush
//! on the next poll sends everything that was queued by then at once. The delay is one
//! pass of the run queue, not a timer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::TryFutureExt as _;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};

/// Bytes held before a write goes through without waiting for a flush: a TLS record's
/// worth, so one full record never waits.
const HOLD_LIMIT: usize = 16 * 1024;

/// A connection whose writes are held until a flush, and whose flushes wait one round of
/// the run queue (see the module docs).
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// Written but not yet passed to `inner`, from `sent` on.
    held: Vec<u8>,
    sent: usize,
    /// A flush found bytes held and yielded once; the next flush writes them.
    yielded: bool,
}

impl<T> Coalesced<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            held: Vec::new(),
            sent: 0,
            yielded: false,
        }
    }
}

impl<T: Write + Unpin> Coalesced<T> {
    /// Passes the held bytes to `inner`; ready once all are.
    fn poll_send_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.held[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: Read + Unpin> Read for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() >= HOLD_LIMIT {
            std::task::ready!(this.poll_send_held(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            this.held.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if !this.yielded {
            this.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(this.poll_send_held(cx))?;
        this.yielded = false;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_send_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Coalesced<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

/// A connector whose connections are [`Coalesced`].
#[derive(Clone, Debug)]
pub struct Connector<C>(pub C);

impl<C> tower::Service<http::Uri> for Connector<C>
where
    C: tower::Service<http::Uri>,
{
    type Response = Coalesced<C::Response>;
    type Error = C::Error;
    type Future = futures::future::MapOk<C::Future, fn(C::Response) -> Coalesced<C::Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        self.0.call(uri).map_ok(Coalesced::new as fn(_) -> _)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;
    use tokio::io::AsyncReadExt as _;

    /// Two writes with a flush after each, as hyper's HEADERS then DATA, reach the peer
    /// as one read when both flushes come before the task's next turn; nothing is lost
    /// and nothing waits for more than one yield.
    #[tokio::test]
    async fn flushes_of_one_round_leave_together() {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let mut conn = Coalesced::new(TokioIo::new(client));
        let mut conn = Pin::new(&mut conn);

        // First write and flush: held, and the flush yields once.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(
            conn.as_mut().poll_write(&mut cx, b"headers|"),
            Poll::Ready(Ok(8))
        ));
        assert!(conn.as_mut().poll_flush(&mut cx).is_pending());
        // The body arrives before the next turn; that flush sends both.
        assert!(matches!(
            conn.as_mut().poll_write(&mut cx, b"data"),
            Poll::Ready(Ok(4))
        ));
        assert!(matches!(
            conn.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));

        let mut got = vec![0u8; 64];
        let n = server.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"headers|data");

        // A flush with nothing held goes straight through.
        assert!(matches!(
            conn.as_mut().poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
    }

    /// Past the hold limit a write first passes what is held on, so a large body is not
    /// buffered whole.
    #[tokio::test]
    async fn large_writes_go_through() {
        let (client, mut server) = tokio::io::duplex(4 * HOLD_LIMIT);
        let mut conn = Coalesced::new(TokioIo::new(client));
        let mut conn = Pin::new(&mut conn);
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let chunk = vec![7u8; HOLD_LIMIT];
        assert!(matches!(
            conn.as_mut().poll_write(&mut cx, &chunk),
            Poll::Ready(Ok(n)) if n == HOLD_LIMIT
        ));
        assert!(matches!(
            conn.as_mut().poll_write(&mut cx, b"x"),
            Poll::Ready(Ok(1))
        ));
        let mut got = vec![0u8; 2 * HOLD_LIMIT];
        let n = server.read(&mut got).await.expect("read");
        assert_eq!(
            n, HOLD_LIMIT,
            "the held chunk went on before the next write"
        );
        assert!(conn.as_mut().poll_shutdown(&mut cx).is_ready());
        let n = server.read(&mut got).await.expect("read");
        assert_eq!(&got[..n], b"x");
    }
}
