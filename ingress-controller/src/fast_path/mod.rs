//! The HTTP/1.1 fast path: the common keep-alive request (a GET or HEAD without a body, on
//! a route that only proxies) handled by our own codec on both sides instead of by hyper's
//! server and client.
//!
//! Why: through hyper, a plain keep-alive request cost about 10 µs of user time against
//! nginx's 7 µs, spread thinly over hyper's server and client dispatchers, header maps,
//! the client's request channel and the drain watcher; nothing in it was large enough to
//! cut on its own. Here a request head is parsed in place (httparse) and written straight
//! into the upstream buffer with the proxy's headers added and the hop-by-hop ones left
//! out; the response head is parsed and copied likewise, and the body passes through as it
//! comes, its end found from its framing (Content-Length or chunked), as nginx does it.
//!
//! A downstream connection starts here. The first request that does not qualify (a body,
//! an upgrade, HTTP/1.0, h2c, a head that does not parse, a route with annotations that act
//! per request) hands the connection, with the bytes read so far, to hyper for the rest of
//! its life ([`Outcome::Handover`]). So a connection is never served by both at once, and
//! whatever is malformed is answered by hyper as before.

use std::io;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::annotations::BackendProtocol;
use crate::keepalive::{self, Lists};
use crate::proxy::{Conn, Logged, MAX_TRIES, Pools, Proxy};
use crate::routing::Route;

mod chunked;
mod codec;
mod prefixed;

use chunked::BadChunk;
use codec::{
    Framing, Head, Response, date, header, simple, status_line, write_request, write_response_head,
};
pub use prefixed::Prefixed;

/// Largest request head read before the connection goes to hyper (which answers an
/// oversized one with 431).
const MAX_REQUEST_HEAD: usize = 16 * 1024;
/// Largest response head accepted from a backend (hyper's client buffers up to ~400 KiB;
/// a head larger than this is answered 502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Headers parsed at most per head (hyper's default limit).
const MAX_HEADERS: usize = 100;
/// Bytes read from a backend at a time while a body streams.
const READ_SIZE: usize = 16 * 1024;
/// Free space kept for the next read of a head (from a client or a backend).
const READ_RESERVE: usize = 4096;

/// How serving a connection ended.
pub enum Outcome<S> {
    /// The connection is closed or to be closed: by the client, by an error, after a
    /// `Connection: close`, or for the drain.
    Done,
    /// A request the fast path does not take: the connection and the bytes read from it
    /// that were not handled yet go to hyper.
    Handover(S, Bytes),
}

/// One worker's idle upstream sockets, per backend address (the fast path's counterpart
/// of [`keepalive::Keepalive`]).
pub struct Sockets {
    idle: Mutex<Lists<TcpStream>>,
}

impl Sockets {
    /// Keeps up to `max_idle` idle sockets per address, each for up to `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(Lists::new(max_idle, idle_timeout)),
        }
    }

    /// The most recently idle socket to `addr` that its backend has not closed.
    fn checkout(&self, addr: SocketAddr) -> Option<TcpStream> {
        loop {
            let s = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(addr)?;
            // An idle socket that turned readable has been closed by its backend (or holds
            // bytes nobody asked for): either way it cannot take a request. The readiness
            // is what the runtime last heard from epoll, so this costs no system call; a
            // close it has not heard of yet is caught by the retry in `send`.
            let mut cx = Context::from_waker(Waker::noop());
            if s.poll_read_ready(&mut cx).is_pending() {
                return Some(s);
            }
        }
    }

    fn give_back(&self, addr: SocketAddr, s: TcpStream) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .put(addr, s);
    }
}

/// Whether `route` only proxies for this connection: none of the annotations that redirect,
/// answer, limit, authenticate, rewrite or choose a canary applies, and the backend speaks
/// HTTP/1.1. Requests on other routes go through hyper ([`crate::proxy`]), where those
/// features live.
fn proxies_only(route: &Route, tls: bool) -> bool {
    let c = &route.target.config;
    c.backend_protocol == BackendProtocol::Http
        && !route.redirects_to_https(tls)
        && route.canary.is_none()
        && route.target.auth.is_none()
        && c.auth.is_none()
        && c.allow_source.is_empty()
        && c.permanent_redirect.is_none()
        && c.app_root.is_none()
        && c.cors.is_none()
        && !c.limits.is_set()
        && c.affinity.is_none()
        && c.rewrite_target.as_ref().is_none_or(|t| *t == route.path)
}

/// How one request ended for the connection.
enum Next {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
}

/// Buffers a connection reuses from request to request (besides the one its requests
/// are read into).
struct Buffers {
    /// The upstream request head.
    request: Vec<u8>,
    /// The client's response head (and the first body bytes).
    response: Vec<u8>,
    /// Bytes read from the backend.
    upstream: BytesMut,
}

/// Serves `io` until it closes or a request needs hyper (see the module docs).
pub(crate) async fn serve<S>(
    mut io: S,
    proxy: &Proxy,
    conn: &Conn,
    pools: &Pools,
    shutdown: &CancellationToken,
) -> Outcome<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut read = BytesMut::with_capacity(READ_RESERVE);
    let mut bufs = Buffers {
        request: Vec::with_capacity(1024),
        response: Vec::with_capacity(1024),
        // Sized by the first read: most responses fit in READ_RESERVE.
        upstream: BytesMut::new(),
    };
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&read) {
            Ok(httparse::Status::Complete(len)) => {
                let Some(head) = simple(&req) else {
                    return Outcome::Handover(io, read.freeze());
                };
                let started = Instant::now();
                let route = proxy.table().lookup(head.host, head.path).cloned();
                if route.as_ref().is_some_and(|r| !proxies_only(r, conn.tls)) {
                    return Outcome::Handover(io, read.freeze());
                }
                let fresh_id;
                let request_id = match head.request_id {
                    Some(id) => id,
                    None => {
                        fresh_id = crate::proxy::new_request_id();
                        &fresh_id[..]
                    }
                };
                let logged = Logged {
                    method: head.method,
                    host: head.host,
                    path: head.path,
                    request_id,
                };
                let next = match route {
                    None => {
                        let next = respond(
                            &mut io,
                            &mut bufs.response,
                            404,
                            "404 page not found\n",
                            &head,
                        )
                        .await;
                        proxy.record(pools, conn, &logged, 404, None, None, started);
                        next
                    }
                    Some(route) => {
                        let exchange = Exchange {
                            head: &head,
                            logged: &logged,
                            route: &route,
                            proxy,
                            conn,
                            pools,
                            started,
                        };
                        exchange.run(&mut io, &mut bufs).await
                    }
                };
                match next {
                    Next::KeepAlive if !shutdown.is_cancelled() => {}
                    _ => {
                        let _ = io.shutdown().await;
                        return Outcome::Done;
                    }
                }
                read.advance(len);
            }
            Ok(httparse::Status::Partial) => {
                if read.len() >= MAX_REQUEST_HEAD {
                    return Outcome::Handover(io, read.freeze());
                }
                read.reserve(READ_RESERVE);
                // Between requests the drain may close the connection; within a head it
                // waits for the rest, as hyper does.
                let got = if read.is_empty() {
                    tokio::select! {
                        biased;
                        r = io.read_buf(&mut read) => r,
                        () = shutdown.cancelled() => return Outcome::Done,
                    }
                } else {
                    io.read_buf(&mut read).await
                };
                match got {
                    Ok(0) | Err(_) => return Outcome::Done,
                    Ok(_) => {}
                }
            }
            Err(_) => return Outcome::Handover(io, read.freeze()),
        }
    }
}

/// Answers with a short text body of the proxy's own (as [`crate::proxy`]'s `full`).
async fn respond<S: AsyncWrite + Unpin>(
    io: &mut S,
    out: &mut Vec<u8>,
    status: u16,
    body: &'static str,
    head: &Head<'_>,
) -> Next {
    status_line(out, status, "");
    header(out, b"content-type", b"text/plain; charset=utf-8");
    header(
        out,
        b"content-length",
        itoa::Buffer::new().format(body.len()).as_bytes(),
    );
    date::with(|d| header(out, b"date", d));
    if head.close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head.is_head() {
        out.extend_from_slice(body.as_bytes());
    }
    match io.write_all(out).await {
        Ok(()) if !head.close => Next::KeepAlive,
        _ => Next::Close,
    }
}

/// Why an attempt on one endpoint failed.
enum Failure {
    /// No connection: the endpoint is ejected and another may be tried.
    Connect(keepalive::Error),
    /// The exchange failed on a connection: 502.
    Exchange(io::Error),
}

/// One request on its way to a route's backend.
struct Exchange<'a> {
    head: &'a Head<'a>,
    logged: &'a Logged<'a>,
    route: &'a Route,
    proxy: &'a Proxy,
    conn: &'a Conn,
    pools: &'a Pools,
    started: Instant,
}

impl Exchange<'_> {
    /// Picks endpoints as [`crate::proxy`] does (a refused connect is retried on another),
    /// then streams the response to the client.
    async fn run<S: AsyncWrite + Unpin>(&self, io: &mut S, bufs: &mut Buffers) -> Next {
        let (head, target) = (self.head, &self.route.target);
        let config = &target.config;
        let settings = self.proxy.settings();
        let connect_timeout = config.connect_timeout.unwrap_or(settings.connect_timeout);
        let wait = config.read_timeout.unwrap_or(settings.read_timeout)
            + config.send_timeout.unwrap_or_default();
        let policy = config.load_balance.unwrap_or(settings.load_balance);
        write_request(&mut bufs.request, head, self.conn, self.logged.request_id);
        let sockets = &self.pools.sockets;

        let mut tried = SmallVec::<[SocketAddr; MAX_TRIES]>::new();
        let (mut upstream, resp, ep) = loop {
            let Some(ep) = target.upstream.pick_with(&tried, policy) else {
                return if tried.is_empty() {
                    self.fail(io, bufs, 503, "503 service unavailable\n", None)
                        .await
                } else {
                    let last = tried.last().copied();
                    self.fail(io, bufs, 502, "502 bad gateway\n", last).await
                };
            };
            tried.push(ep);
            // In flight until the response head arrives, as in `crate::proxy`.
            let _in_flight = target.upstream.start(ep);
            let attempt = send(sockets, ep, connect_timeout, bufs, head);
            let (status, body) = match tokio::time::timeout(wait, attempt).await {
                Ok(Ok((s, resp))) => break (s, resp, ep),
                Err(_) => (504, "504 gateway timeout\n"),
                Ok(Err(Failure::Connect(e))) => {
                    target.upstream.eject(ep);
                    tracing::debug!(upstream = %ep, error = %e, "connect failed");
                    if tried.len() < MAX_TRIES {
                        continue;
                    }
                    (502, "502 bad gateway\n")
                }
                Ok(Err(Failure::Exchange(e))) => {
                    tracing::debug!(upstream = %ep, error = %e, "upstream request failed");
                    (502, "502 bad gateway\n")
                }
            };
            return self.fail(io, bufs, status, body, Some(ep)).await;
        };
        self.record(resp.status, Some(ep));
        let close = head.close || resp.framing == Framing::Eof;
        match stream_body(io, &mut upstream, bufs, resp.framing).await {
            Ok(()) => {
                if resp.reusable && bufs.upstream.is_empty() {
                    sockets.give_back(ep, upstream);
                }
                if close { Next::Close } else { Next::KeepAlive }
            }
            Err(e) => {
                tracing::debug!(upstream = %ep, error = %e, "response body failed");
                Next::Close
            }
        }
    }

    /// Answers the proxy's own error response and records it.
    async fn fail<S: AsyncWrite + Unpin>(
        &self,
        io: &mut S,
        bufs: &mut Buffers,
        status: u16,
        body: &'static str,
        upstream: Option<SocketAddr>,
    ) -> Next {
        let next = respond(io, &mut bufs.response, status, body, self.head).await;
        self.record(status, upstream);
        next
    }

    fn record(&self, status: u16, upstream: Option<SocketAddr>) {
        self.proxy.record(
            self.pools,
            self.conn,
            self.logged,
            status,
            upstream,
            Some(&self.route.target.ingress),
            self.started,
        );
    }
}

/// Sends the request in `bufs.request` to `ep` on an idle socket or a new one, and reads
/// the response head into `bufs.response` (as the client's head) and what came after it
/// into `bufs.upstream`. A request that an idle socket's backend closed under before
/// answering anything is sent once more on a new connection, as the hyper path does.
async fn send(
    sockets: &Sockets,
    ep: SocketAddr,
    connect_timeout: Duration,
    bufs: &mut Buffers,
    head: &Head<'_>,
) -> Result<(TcpStream, Response), Failure> {
    if let Some(mut s) = sockets.checkout(ep) {
        match round_trip(&mut s, bufs, head).await {
            Ok(resp) => return Ok((s, resp)),
            Err(RoundTrip::Unanswered) => {}
            Err(RoundTrip::Failed(e)) => return Err(Failure::Exchange(e)),
        }
    }
    let mut s = keepalive::connect_tcp(ep, connect_timeout)
        .await
        .map_err(Failure::Connect)?;
    match round_trip(&mut s, bufs, head).await {
        Ok(resp) => Ok((s, resp)),
        Err(RoundTrip::Unanswered) => Err(Failure::Exchange(io::ErrorKind::UnexpectedEof.into())),
        Err(RoundTrip::Failed(e)) => Err(Failure::Exchange(e)),
    }
}

/// How a round trip failed.
enum RoundTrip {
    /// The connection failed before any byte of a response: nothing was processed.
    Unanswered,
    /// It failed later, or the response cannot be passed on.
    Failed(io::Error),
}

fn invalid(what: &str) -> RoundTrip {
    RoundTrip::Failed(io::Error::new(io::ErrorKind::InvalidData, what.to_string()))
}

/// Writes the request and reads the response head (skipping interim 1xx responses).
async fn round_trip(
    s: &mut TcpStream,
    bufs: &mut Buffers,
    head: &Head<'_>,
) -> Result<Response, RoundTrip> {
    bufs.upstream.clear();
    if let Err(e) = s.write_all(&bufs.request).await {
        return Err(match e.kind() {
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset => RoundTrip::Unanswered,
            _ => RoundTrip::Failed(e),
        });
    }
    let mut answered = false;
    loop {
        if !bufs.upstream.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&bufs.upstream) {
                Ok(httparse::Status::Complete(len)) => {
                    let code = resp.code.unwrap_or_default();
                    if (100..200).contains(&code) && code != 101 {
                        bufs.upstream.advance(len);
                        continue;
                    }
                    let r =
                        write_response_head(&mut bufs.response, &resp, head.is_head(), head.close)
                            .ok_or_else(|| invalid("response the proxy cannot pass on"))?;
                    bufs.upstream.advance(len);
                    if code == 101 {
                        return Err(invalid("101 without an upgrade request"));
                    }
                    return Ok(r);
                }
                Ok(httparse::Status::Partial) if bufs.upstream.len() < MAX_RESPONSE_HEAD => {}
                Ok(httparse::Status::Partial) => return Err(invalid("response head too large")),
                Err(e) => return Err(invalid(&format!("response head: {e}"))),
            }
        }
        bufs.upstream.reserve(READ_RESERVE);
        match s.read_buf(&mut bufs.upstream).await {
            Ok(0) if !answered => return Err(RoundTrip::Unanswered),
            Ok(0) => return Err(RoundTrip::Failed(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => answered = true,
            Err(e) if !answered && e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(RoundTrip::Unanswered);
            }
            Err(e) => return Err(RoundTrip::Failed(e)),
        }
    }
}

/// Writes the response head in `bufs.response` and passes the body through, reading from
/// `upstream` until `framing` says it has ended. What is left in `bufs.upstream` after the
/// body was sent by the backend beyond it.
async fn stream_body<S: AsyncWrite + Unpin>(
    io: &mut S,
    upstream: &mut TcpStream,
    bufs: &mut Buffers,
    mut framing: Framing,
) -> io::Result<()> {
    // The head and the body bytes that came with it go out in one write.
    let mut first = true;
    loop {
        let (take, done) = match &mut framing {
            Framing::Empty => (0, true),
            Framing::Length(n) => {
                let take = usize::try_from(*n)
                    .unwrap_or(usize::MAX)
                    .min(bufs.upstream.len());
                *n -= u64::try_from(take).unwrap_or(u64::MAX);
                (take, *n == 0)
            }
            Framing::Chunked(c) => match c.feed(&bufs.upstream) {
                Ok(Some(end)) => (end, true),
                Ok(None) => (bufs.upstream.len(), false),
                Err(BadChunk) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad chunked body",
                    ));
                }
            },
            Framing::Eof => (bufs.upstream.len(), false),
        };
        if first {
            bufs.response.extend_from_slice(&bufs.upstream[..take]);
            io.write_all(&bufs.response).await?;
            first = false;
        } else if take > 0 {
            io.write_all(&bufs.upstream[..take]).await?;
        }
        bufs.upstream.advance(take);
        if done {
            return Ok(());
        }
        bufs.upstream.reserve(READ_SIZE);
        if upstream.read_buf(&mut bufs.upstream).await? == 0 {
            return if framing == Framing::Eof {
                Ok(())
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}
