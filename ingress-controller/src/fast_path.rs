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
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::annotations::BackendProtocol;
use crate::keepalive::{self, Lists};
use crate::proxy::{Conn, Logged, MAX_TRIES, Pools, Proxy};
use crate::routing::Route;

/// Largest request head read before the connection goes to hyper (which answers an
/// oversized one with 431); also the read size.
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

/// A request the fast path takes, read from its head.
struct Head<'a> {
    method: &'a str,
    /// The request target as sent (origin form).
    target: &'a str,
    /// The target's path (before `?`), which routes.
    path: &'a str,
    host: &'a str,
    /// The client's X-Request-ID when it is sane (see [`crate::proxy::sane_request_id`]).
    request_id: Option<&'a [u8]>,
    /// The client asked to close after this response.
    close: bool,
    headers: &'a [httparse::Header<'a>],
}

impl Head<'_> {
    fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// `req` as a [`Head`] when the fast path can take it: HTTP/1.1, GET or HEAD, no body, no
/// upgrade, an origin-form target of plain characters, one Host, and no `Connection`
/// options beyond `keep-alive` and `close` (other listed names would have to be removed).
fn simple<'b>(req: &'b httparse::Request<'_, 'b>) -> Option<Head<'b>> {
    if req.version != Some(1) {
        return None;
    }
    let method = req.method.filter(|m| *m == "GET" || *m == "HEAD")?;
    let target = req
        .path
        .filter(|t| t.starts_with('/') && t.bytes().all(plain_target_byte))?;
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let (mut host, mut request_id, mut close) = (None, None::<&[u8]>, false);
    for h in &*req.headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            if host.is_some() {
                return None;
            }
            host = Some(
                std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic()))?,
            );
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value != b"0" {
                return None;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return None;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case("x-request-id") && request_id.is_none() {
            // The first one counts, as `HeaderMap::get` has it in the hyper path.
            request_id = Some(h.value);
        }
    }
    Some(Head {
        method,
        target,
        path,
        host: host?,
        request_id: request_id.filter(|id| crate::proxy::sane_request_id(id)),
        close,
        headers: req.headers,
    })
}

/// Target bytes the fast path passes on as they are: visible ASCII except what `http::Uri`
/// would reject or treat specially (a `#` starts a fragment it drops).
fn plain_target_byte(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'#' | b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}'
        )
}

/// Whether `route` only proxies for this connection: none of the annotations that redirect,
/// answer, limit, authenticate, rewrite or choose a canary applies, and the backend speaks
/// HTTP/1.1. Requests on other routes go through hyper ([`crate::proxy`]), where those
/// features live.
fn proxies_only(route: &Route, tls: bool) -> bool {
    let c = &route.target.config;
    let redirects_to_https = !tls && ((route.tls && c.ssl_redirect) || c.force_ssl_redirect);
    c.backend_protocol == BackendProtocol::Http
        && !redirects_to_https
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

/// Request headers the proxy replaces or drops: hop-by-hop ones (RFC 9110 7.6.1; a
/// request with `Upgrade` or `Transfer-Encoding` does not get here) and the ones it sets.
fn replaced_request_header(name: &str) -> bool {
    const NAMES: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "x-forwarded-for",
        "x-real-ip",
        "x-forwarded-proto",
        "x-forwarded-host",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name)) || name.eq_ignore_ascii_case("x-request-id")
}

/// Writes the upstream request for `head`: its request line and headers, less the replaced
/// ones, plus the forwarding headers (the same set and values as [`crate::proxy`]'s).
fn write_request(out: &mut Vec<u8>, head: &Head<'_>, conn: &Conn, request_id: &[u8]) {
    out.clear();
    for part in [
        head.method.as_bytes(),
        b" ",
        head.target.as_bytes(),
        b" HTTP/1.1\r\n",
    ] {
        out.extend_from_slice(part);
    }
    for h in head.headers {
        if !replaced_request_header(h.name) {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    let client_ip = conn.client_ip.as_bytes();
    header(out, b"x-forwarded-for", client_ip);
    header(out, b"x-real-ip", client_ip);
    header(
        out,
        b"x-forwarded-proto",
        if conn.tls { b"https" } else { b"http" },
    );
    header(out, b"x-forwarded-host", head.host.as_bytes());
    header(out, b"x-request-id", request_id);
    out.extend_from_slice(b"\r\n");
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response body ends.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// No body (a HEAD request, 204, 304).
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// Chunked: the decoder finds the end.
    Chunked(Chunked),
    /// Until the backend closes: the client's connection closes after it too.
    Eof,
}

/// What the fast path needs of a response beyond its head, which is already written out.
struct Response {
    status: u16,
    framing: Framing,
    /// The backend may take another request on the connection after this body.
    reusable: bool,
}

/// Response headers that stay with the backend's connection. `Transfer-Encoding` is not
/// among them: the body passes through as it was framed.
fn hop_by_hop_response_header(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|n| n.eq_ignore_ascii_case(name))
}

/// Reads `resp`'s head into `down` as the client's response head; `close` adds
/// `Connection: close`. `None` for a response the proxy cannot pass on (a 101 nobody asked
/// for, an unusable length).
fn write_response_head(
    down: &mut Vec<u8>,
    resp: &httparse::Response<'_, '_>,
    head_request: bool,
    close: bool,
) -> Option<Response> {
    let status = resp.code?;
    let mut listed: SmallVec<[&[u8]; 4]> = SmallVec::new();
    let (mut length, mut chunked, mut encoded, mut keep_alive, mut closes, mut dated) =
        (None, false, false, false, false, false);
    for h in &*resp.headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()?;
            if length.is_some_and(|l| l != n) {
                return None;
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            encoded = true;
            // Chunked must be the last coding; anything else is read to the close.
            chunked = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    closes = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !token.is_empty() {
                    listed.push(token);
                }
            }
        } else if h.name.eq_ignore_ascii_case("date") {
            dated = true;
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else if chunked {
        Framing::Chunked(Chunked::default())
    } else if encoded {
        Framing::Eof
    } else {
        length.map_or(Framing::Eof, Framing::Length)
    };
    let reusable = !closes && (resp.version == Some(1) || keep_alive) && framing != Framing::Eof;
    let close = close || framing == Framing::Eof;

    down.clear();
    down.extend_from_slice(b"HTTP/1.1 ");
    down.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    down.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map_or(resp.reason.unwrap_or_default().as_bytes(), str::as_bytes);
    down.extend_from_slice(reason);
    down.extend_from_slice(b"\r\n");
    for h in &*resp.headers {
        let name = h.name;
        if hop_by_hop_response_header(name)
            || listed
                .iter()
                .any(|l| l.eq_ignore_ascii_case(name.as_bytes()))
            || (encoded && name.eq_ignore_ascii_case("content-length"))
        {
            continue;
        }
        header(down, name.as_bytes(), h.value);
    }
    if !dated {
        date::with(|d| header(down, b"date", d));
    }
    if close {
        down.extend_from_slice(b"connection: close\r\n");
    }
    down.extend_from_slice(b"\r\n");
    Some(Response {
        status,
        framing,
        reusable,
    })
}

/// The HTTP date of the current second, as hyper's server writes it, formatted once a
/// second per thread.
mod date {
    use super::SystemTime;
    use std::cell::RefCell;

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub(super) fn with(f: impl FnOnce(&[u8])) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        NOW.with_borrow_mut(|(at, text)| {
            if *at != secs {
                *at = secs;
                *text = httpdate::fmt_http_date(now);
            }
            f(text.as_bytes());
        });
    }
}

/// Finds where a chunked body ends in the bytes that pass through (RFC 9112 7.1): sizes,
/// extensions, data and trailers are only counted, never copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Chunked {
    /// Before a chunk size's first digit.
    #[default]
    Size,
    /// Within a chunk size: its value so far.
    SizeDigits(u64),
    /// After the size: whitespace or an extension, up to the line end.
    Extension(u64),
    SizeLf(u64),
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

/// A chunked body that does not parse.
#[derive(Debug, PartialEq, Eq)]
struct BadChunk;

impl Chunked {
    /// Consumes `bytes`; `Some(n)` when the body ends after the first `n` of them.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, BadChunk> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            *self = match *self {
                Self::Size | Self::SizeDigits(_) => {
                    let so_far = match *self {
                        Self::SizeDigits(n) => Some(n),
                        _ => None,
                    };
                    match (char::from(b).to_digit(16), so_far) {
                        (Some(d), n) => {
                            let n = n.unwrap_or(0);
                            if n > u64::MAX >> 4 {
                                return Err(BadChunk);
                            }
                            Self::SizeDigits(n << 4 | u64::from(d))
                        }
                        (None, Some(n)) if matches!(b, b';' | b' ' | b'\t') => Self::Extension(n),
                        (None, Some(n)) if b == b'\r' => Self::SizeLf(n),
                        _ => return Err(BadChunk),
                    }
                }
                Self::Extension(n) => match b {
                    b'\r' => Self::SizeLf(n),
                    b'\n' => return Err(BadChunk),
                    _ => Self::Extension(n),
                },
                Self::SizeLf(n) => match (b, n) {
                    (b'\n', 0) => Self::TrailerStart,
                    (b'\n', n) => Self::Data(n),
                    _ => return Err(BadChunk),
                },
                Self::Data(n) => {
                    let avail = u64::try_from(bytes.len() - i).unwrap_or(u64::MAX);
                    let take = n.min(avail);
                    // Skip the data in one step; `i` advances by `take` below, less the
                    // one every iteration adds.
                    i += usize::try_from(take).unwrap_or(usize::MAX) - 1;
                    if take == n {
                        Self::DataCr
                    } else {
                        Self::Data(n - take)
                    }
                }
                Self::DataCr if b == b'\r' => Self::DataLf,
                Self::DataLf if b == b'\n' => Self::Size,
                Self::DataCr | Self::DataLf => return Err(BadChunk),
                Self::TrailerStart => match b {
                    b'\r' => Self::EndLf,
                    _ => Self::TrailerLine,
                },
                Self::TrailerLine => match b {
                    b'\n' => Self::TrailerStart,
                    _ => Self::TrailerLine,
                },
                Self::EndLf if b == b'\n' => Self::Done,
                Self::EndLf => return Err(BadChunk),
                Self::Done => return Ok(Some(i)),
            };
            i += 1;
            if *self == Self::Done {
                return Ok(Some(i));
            }
        }
        Ok(None)
    }
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
                let read = if read.is_empty() {
                    tokio::select! {
                        biased;
                        r = io.read_buf(&mut read) => r,
                        () = shutdown.cancelled() => return Outcome::Done,
                    }
                } else {
                    io.read_buf(&mut read).await
                };
                match read {
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
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or_default();
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
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

/// A connection handed to hyper: the bytes the fast path read first, then the socket.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, read from after `prefix`.
    pub fn new(inner: S, prefix: Bytes) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
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

    fn parse<'h, 'b>(
        raw: &'b [u8],
        headers: &'h mut [httparse::Header<'b>],
    ) -> httparse::Request<'h, 'b> {
        let mut req = httparse::Request::new(headers);
        assert!(matches!(req.parse(raw), Ok(httparse::Status::Complete(_))));
        req
    }

    fn conn(tls: bool) -> Conn {
        Conn {
            remote: "10.1.2.3:5555".parse().expect("addr"),
            tls,
            client_ip: http::HeaderValue::from_static("10.1.2.3"),
        }
    }

    #[test]
    fn takes_bodyless_keep_alive_requests_only() {
        let takes = |raw: &[u8]| {
            let mut h = [httparse::EMPTY_HEADER; 16];
            let req = parse(raw, &mut h);
            simple(&req).map(|h| (h.path.to_string(), h.close))
        };
        assert_eq!(
            takes(b"GET /a/b?x=1 HTTP/1.1\r\nHost: e.com\r\n\r\n"),
            Some(("/a/b".into(), false))
        );
        assert_eq!(
            takes(b"HEAD / HTTP/1.1\r\nHost: e\r\nConnection: Keep-Alive, close\r\n\r\n"),
            Some(("/".into(), true))
        );
        assert!(takes(b"GET / HTTP/1.1\r\nHost: e\r\nContent-Length: 0\r\n\r\n").is_some());
        for refused in [
            &b"GET / HTTP/1.0\r\nHost: e\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: e\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: e\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: e\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: e\r\nConnection: x-secret\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: e\r\nExpect: 100-continue\r\n\r\n",
            b"GET http://e/ HTTP/1.1\r\nHost: e\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\nHost: e\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert_eq!(takes(refused), None, "{}", String::from_utf8_lossy(refused));
        }
    }

    #[test]
    fn the_upstream_request_carries_the_proxy_headers_instead_of_the_clients() {
        let raw = b"GET /p?q HTTP/1.1\r\nHost: e.com:8080\r\nConnection: keep-alive\r\n\
            X-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nKeep-Alive: timeout=5\r\n\
            TE: trailers\r\nX-Request-ID: abc\r\nAccept: */*\r\n\r\n";
        let mut h = [httparse::EMPTY_HEADER; 16];
        let req = parse(raw, &mut h);
        let head = simple(&req).expect("simple");
        assert_eq!(head.request_id, Some(&b"abc"[..]));
        let mut out = Vec::new();
        write_request(&mut out, &head, &conn(true), b"abc");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "GET /p?q HTTP/1.1\r\nHost: e.com:8080\r\nAccept: */*\r\n\
             x-forwarded-for: 10.1.2.3\r\nx-real-ip: 10.1.2.3\r\nx-forwarded-proto: https\r\n\
             x-forwarded-host: e.com:8080\r\nx-request-id: abc\r\n\r\n"
        );
    }

    fn response(raw: &[u8], head_request: bool, close: bool) -> Option<(String, Response)> {
        let mut h = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut h);
        assert!(matches!(resp.parse(raw), Ok(httparse::Status::Complete(_))));
        let mut down = Vec::new();
        let r = write_response_head(&mut down, &resp, head_request, close)?;
        Some((String::from_utf8(down).expect("utf-8"), r))
    }

    #[test]
    fn response_heads_lose_hop_by_hop_headers_and_keep_their_framing() {
        let (head, r) = response(
            b"HTTP/1.1 200 Whatever\r\nContent-Length: 5\r\nConnection: keep-alive, x-hop\r\n\
              X-Hop: 1\r\nKeep-Alive: timeout=4\r\nDate: Mon, 30 Nov 2026 10:00:00 GMT\r\n\
              X-Kept: 1\r\n\r\n",
            false,
            false,
        )
        .expect("passed on");
        assert_eq!(
            head,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nDate: Mon, 30 Nov 2026 10:00:00 GMT\r\n\
             X-Kept: 1\r\n\r\n"
        );
        assert_eq!(
            (r.status, r.framing, r.reusable),
            (200, Framing::Length(5), true)
        );

        let (head, r) = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            false,
        )
        .expect("passed on");
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        assert!(!head.contains("Content-Length"), "{head}");
        assert!(head.contains("\r\ndate: "), "a date is added: {head}");
        assert_eq!(r.framing, Framing::Chunked(Chunked::Size));

        // No length: read to the close, which the client's connection follows.
        let (head, r) = response(b"HTTP/1.0 200 OK\r\n\r\n", false, false).expect("passed on");
        assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
        assert_eq!((r.framing, r.reusable), (Framing::Eof, false));

        let (_, r) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, true)
            .expect("passed on");
        assert_eq!(r.framing, Framing::Empty);
        let (_, r) = response(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, false).expect("304");
        assert_eq!((r.framing, r.reusable), (Framing::Empty, true));
        let (_, r) = response(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
            false,
        )
        .expect("close");
        assert!(!r.reusable);

        assert!(
            response(
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                false,
                false
            )
            .is_none()
        );
        assert!(
            response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false
            )
            .is_none()
        );
    }

    #[test]
    fn chunked_bodies_end_where_their_last_chunk_and_trailers_do() {
        let body =
            b"5\r\nhello\r\n1A;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let end = body.len() - 4;
        // Whole, and fed in every split.
        assert_eq!(Chunked::default().feed(body), Ok(Some(end)));
        for split in 1..end {
            let mut c = Chunked::default();
            assert_eq!(c.feed(&body[..split]), Ok(None), "split at {split}");
            assert_eq!(
                c.feed(&body[split..]),
                Ok(Some(end - split)),
                "split at {split}"
            );
        }
        // One byte at a time.
        let mut c = Chunked::default();
        for (i, b) in body[..end].iter().enumerate() {
            let r = c.feed(std::slice::from_ref(b));
            assert_eq!(r, Ok((i == end - 1).then_some(1)), "byte {i}");
        }
        assert_eq!(Chunked::default().feed(b"0\r\n\r\n"), Ok(Some(5)));
        for bad in [
            &b"x\r\n"[..],
            b"5\r\nhelloXY",
            b"\r\n",
            b"5\n",
            b"fffffffffffffffff\r\n",
        ] {
            assert_eq!(Chunked::default().feed(bad), Err(BadChunk), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_handed_over_connection_reads_the_prefix_first() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut p = Prefixed::new(a, Bytes::from_static(b"GET "));
        b.write_all(b"/ HTTP/1.1").await.expect("write");
        drop(b);
        let mut all = String::new();
        p.read_to_string(&mut all).await.expect("read");
        assert_eq!(all, "GET / HTTP/1.1");
    }
}
