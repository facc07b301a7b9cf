//! Upstream keep-alive connections, as nginx's `ngx_http_upstream_keepalive_module`: a
//! worker keeps its idle HTTP/1.1 connections to each backend address and sends the next
//! request to that address on one of them.
//!
//! hyper-util's pooled client does the same job with more machinery per request: a pool key
//! built from the request's absolute URI, a checkout racing a new connect, and a task
//! spawned per request to put the connection back once the response body is done. Here a
//! connection goes back when the response body that came on it is dropped after its end
//! (the body carries the connection's handle), which is one push onto a per-worker list.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::FastMap;
use crate::proxy::Body;

/// Why a request did not get a response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the backend (refused, unreachable, timed out): nothing was sent, so
    /// another endpoint may be tried.
    #[error("connect to {addr}: {source}")]
    Connect {
        /// The backend.
        addr: SocketAddr,
        /// What connecting said.
        source: std::io::Error,
    },
    /// The connection was made but the exchange failed.
    #[error("upstream request: {0}")]
    Request(#[source] hyper::Error),
}

/// The future that reads and writes a connection's socket (hyper's dispatcher, with
/// upgrade support). Nothing polls it on its own: whoever uses the connection does (see
/// [`Upstream`]).
type Driver = Pin<Box<dyn Future<Output = hyper::Result<()>> + Send>>;

/// An upstream connection: the handle requests are sent on, and its driver.
///
/// hyper's usual pattern spawns the driver as a task of its own; then every request costs
/// that task a wake-up and a scheduling round on top of the request's own task. Here the
/// request's task polls the driver itself, while it waits for the response head and while
/// the response body is read (nginx likewise handles both sockets of a request in one event
/// handler). A connection lying idle is polled by nobody; one that its backend closed
/// meanwhile is found out when it is next checked out.
struct Upstream {
    /// The backend (for the log, and the idle list it goes back to).
    addr: SocketAddr,
    sender: SendRequest<Body>,
    driver: Driver,
    /// The driver has finished (connection closed or failed); it must not be polled again.
    done: bool,
}

impl Upstream {
    /// Polls the driver unless it has finished; true once it has.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done
            && let Poll::Ready(r) = self.driver.as_mut().poll(cx)
        {
            if let Err(e) = r {
                tracing::debug!(upstream = %self.addr, error = %e, "upstream connection ended");
            }
            self.done = true;
        }
        self.done
    }

    /// Runs `fut` (an exchange on this connection) to completion while driving the
    /// connection. A driver that finishes first fails the exchange: hyper answers its
    /// pending response with an error then.
    async fn exchange<T>(&mut self, fut: impl Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            // Driver first: what it reads completes `fut` in this same poll.
            self.drive(cx);
            fut.as_mut().poll(cx)
        })
        .await
    }

    /// Waits until the connection can take a request; false if it closed instead.
    async fn ready(&mut self) -> bool {
        std::future::poll_fn(|cx| {
            if self.drive(cx) {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Hands the connection to a task of its own, for the rest of its life: after a 101
    /// its driver gives the socket to `hyper::upgrade::on`, which waits for that.
    fn detach(mut self) {
        if !self.done {
            tokio::spawn(std::future::poll_fn(move |cx| {
                if self.drive(cx) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }));
        }
    }
}

/// An idle connection and when it became idle.
struct Idle<C> {
    conn: C,
    since: Instant,
}

/// Idle connections per backend address, most recently idle last, and when expired ones
/// were last closed. Both upstream pools keep theirs this way: hyper's connections here,
/// the fast path's sockets in [`crate::fast_path`].
pub(crate) struct Lists<C> {
    by_addr: FastMap<SocketAddr, Vec<Idle<C>>>,
    pruned: Option<Instant>,
    /// Idle connections kept per address (nginx's `keepalive`); more are closed.
    max_idle: usize,
    /// How long a connection may stay idle (nginx's `keepalive_timeout`).
    idle_timeout: Duration,
}

impl<C> Lists<C> {
    /// Keeps up to `max_idle` idle connections per address, each for up to `idle_timeout`.
    pub(crate) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            by_addr: FastMap::default(),
            pruned: None,
            max_idle,
            idle_timeout,
        }
    }

    /// The most recently idle connection to `addr` that has not expired (whether its
    /// backend closed it meanwhile is for the caller to find out).
    pub(crate) fn take(&mut self, addr: SocketAddr) -> Option<C> {
        let list = self.by_addr.get_mut(&addr)?;
        let now = Instant::now();
        // The oldest are at the front.
        let expired = list
            .iter()
            .take_while(|i| now.duration_since(i.since) >= self.idle_timeout)
            .count();
        list.drain(..expired);
        list.pop().map(|i| i.conn)
    }

    /// Keeps `conn` as idle, closing the oldest idle one to `addr` beyond the cap.
    pub(crate) fn put(&mut self, addr: SocketAddr, conn: C) {
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let list = self.by_addr.entry(addr).or_default();
        if list.len() >= self.max_idle {
            list.remove(0);
        }
        list.push(Idle { conn, since: now });
        // Expired connections to other addresses are closed here, at most once per idle
        // timeout, rather than by a timer: a worker's pending timers change how tokio
        // parks it, and a timer that fires every few seconds measured slower under load.
        // A worker without traffic keeps its idle connections until their backends close
        // them.
        if self
            .pruned
            .is_none_or(|t| now.duration_since(t) >= self.idle_timeout)
        {
            self.prune(now);
        }
    }

    /// Drops the connections idle for the idle timeout, and the addresses left without
    /// any; `now` is when this was last done.
    fn prune(&mut self, now: Instant) {
        let timeout = self.idle_timeout;
        self.pruned = Some(now);
        self.by_addr.retain(|_, list| {
            list.retain(|i| now.duration_since(i.since) < timeout);
            !list.is_empty()
        });
    }

    /// Idle connections kept, all addresses together.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_addr.values().map(Vec::len).sum()
    }
}

/// One worker's idle upstream connections, per backend address.
pub struct Keepalive {
    idle: Mutex<Lists<Upstream>>,
}

impl Keepalive {
    /// Keeps up to `max_idle` idle connections per address, each for up to `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Lists::new(max_idle, idle_timeout)),
        }
    }

    /// Sends `req` (origin-form URI, Host header set) to `addr` on an idle connection, or a
    /// new one made within `connect_timeout`. A request that an idle connection closed
    /// under before taking it is sent once more on a new connection, as hyper-util's client
    /// retries it.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        connect_timeout: Duration,
        req: Request<Body>,
    ) -> Result<Response<Body>, Error> {
        let mut req = req;
        if let Some(mut conn) = self.checkout(addr).await {
            let sent = conn.sender.try_send_request(req);
            match conn.exchange(sent).await {
                Ok(resp) => return Ok(self.track(conn, resp)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(Error::Request(e.into_error())),
                },
            }
        }
        let mut conn = connect(addr, connect_timeout).await?;
        let sent = conn.sender.send_request(req);
        match conn.exchange(sent).await {
            Ok(resp) => Ok(self.track(conn, resp)),
            Err(e) => Err(Error::Request(e)),
        }
    }

    /// The most recently idle open connection to `addr`, once it is ready for a request.
    async fn checkout(&self, addr: SocketAddr) -> Option<Upstream> {
        loop {
            let mut conn = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(addr)?;
            // Driving it once reads what came while it was idle: a close by the backend
            // ends the driver here, before a request is risked on it.
            if conn.ready().await {
                return Some(conn);
            }
        }
    }

    /// Wraps the response body so that the connection comes back here when the body is
    /// dropped after its end. A 101 response hands the connection to the upgrade instead.
    fn track(self: &Arc<Self>, conn: Upstream, resp: Response<Incoming>) -> Response<Body> {
        let home = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            conn.detach();
            None
        } else {
            Some(Home {
                pool: self.clone(),
                conn,
            })
        };
        resp.map(|inner| {
            http_body_util::BodyExt::boxed_unsync(Tracked {
                inner,
                home,
                ended: false,
            })
        })
    }

    fn give_back(&self, conn: Upstream) {
        if conn.done || conn.sender.is_closed() {
            return;
        }
        let addr = conn.addr;
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(addr, conn);
    }

    /// Closes connections idle longer than the idle timeout, and forgets addresses left
    /// without any.
    #[cfg(test)]
    fn prune(&self) {
        let mut all = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        all.prune(Instant::now());
    }

    /// Idle connections kept, all addresses together.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A new TCP connection to `addr`, made within `timeout`, with Nagle's algorithm off.
pub(crate) async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Error> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(Error::Connect { addr, source }),
        Err(_) => {
            return Err(Error::Connect {
                addr,
                source: std::io::ErrorKind::TimedOut.into(),
            });
        }
    };
    // Requests are small and each is written whole: waiting to coalesce only adds latency.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A new connection to `addr`; its driver is polled by the requests that use it.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Upstream, Error> {
    let stream = connect_tcp(addr, timeout).await?;
    let (sender, driver) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(Error::Request)?;
    Ok(Upstream {
        addr,
        sender,
        // Upgrades: after a 101 the driver hands the socket to `hyper::upgrade::on`.
        driver: Box::pin(driver.with_upgrades()),
        done: false,
    })
}

/// Where a response's connection goes back to.
struct Home {
    pool: Arc<Keepalive>,
    conn: Upstream,
}

/// A response body that drives its connection while it is read and returns the
/// connection to the pool when dropped after its end; a body dropped before its end leaves
/// the connection unusable, and it is closed.
struct Tracked {
    inner: Incoming,
    home: Option<Home>,
    /// The inner body said it had no more frames (a chunked body says so only this way).
    ended: bool,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // The body's bytes come from the driver: it has to run for them to arrive.
        if let Some(home) = self.home.as_mut() {
            home.conn.drive(cx);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(home) = self.home.take()
            && (self.ended || self.inner.is_end_stream())
        {
            home.pool.give_back(home.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend answering every request on a connection with `body`, counting connections.
    async fn backend(body: &'static str) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut have = Vec::new();
                    loop {
                        while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                            have.drain(..end + 4);
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if s.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => have.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    fn get() -> Request<Body> {
        let mut r = Request::new(crate::proxy::empty());
        *r.uri_mut() = http::Uri::from_static("/");
        r.headers_mut()
            .insert(http::header::HOST, http::HeaderValue::from_static("b"));
        r
    }

    /// Sends a GET through the pool and reads the whole body.
    async fn fetch(pool: &Arc<Keepalive>, addr: SocketAddr) -> Bytes {
        let resp = pool
            .send(addr, Duration::from_secs(1), get())
            .await
            .expect("response");
        resp.into_body().collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn reuses_a_connection_once_its_body_is_read() {
        let (addr, conns) = backend("hello").await;
        let pool = Arc::new(Keepalive::new(4, Duration::from_secs(60)));
        for _ in 0..3 {
            assert_eq!(fetch(&pool, addr).await, "hello");
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_body_dropped_unread_does_not_come_back() {
        let (addr, conns) = backend("hello").await;
        let pool = Arc::new(Keepalive::new(4, Duration::from_secs(60)));
        let resp = pool
            .send(addr, Duration::from_secs(1), get())
            .await
            .expect("response");
        drop(resp);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(fetch(&pool, addr).await, "hello");
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_expire_and_are_capped() {
        let (addr, _) = backend("x").await;
        let pool = Arc::new(Keepalive::new(1, Duration::from_millis(50)));
        // Two bodies read while both are open: only one connection is kept.
        let a = pool
            .send(addr, Duration::from_secs(1), get())
            .await
            .expect("a");
        let b = pool
            .send(addr, Duration::from_secs(1), get())
            .await
            .expect("b");
        a.into_body().collect().await.expect("body a");
        b.into_body().collect().await.expect("body b");
        assert_eq!(pool.idle_count(), 1);
        tokio::time::sleep(Duration::from_millis(80)).await;
        pool.prune();
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn refused_connections_are_connect_errors() {
        // A port just bound and released: nothing listens there.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let pool = Arc::new(Keepalive::new(4, Duration::from_secs(60)));
        let err = pool
            .send(addr, Duration::from_secs(1), get())
            .await
            .expect_err("refused");
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }
}
