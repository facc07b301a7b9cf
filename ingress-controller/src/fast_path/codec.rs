//! The fast path's HTTP/1.1 heads: which requests it takes, the upstream request it writes
//! for one, and the client's response head it writes from a backend's.

use std::time::SystemTime;

use smallvec::SmallVec;

use super::chunked::Chunked;
use crate::proxy::{
    Conn, HOP_BY_HOP, SET_BY_PROXY, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    X_REAL_IP, X_REQUEST_ID,
};

/// A request the fast path takes, read from its head.
pub(super) struct Head<'a> {
    pub(super) method: &'a str,
    /// The request target as sent (origin form).
    pub(super) target: &'a str,
    /// The target's path (before `?`), which routes.
    pub(super) path: &'a str,
    pub(super) host: &'a str,
    /// The client's X-Request-ID when it is sane (see [`crate::proxy::sane_request_id`]).
    pub(super) request_id: Option<&'a [u8]>,
    /// The client asked to close after this response.
    pub(super) close: bool,
    headers: &'a [httparse::Header<'a>],
}

impl Head<'_> {
    pub(super) fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// `req` as a [`Head`] when the fast path can take it: HTTP/1.1, GET or HEAD, no body, no
/// upgrade, an origin-form target of plain characters, one Host, and no `Connection`
/// options beyond `keep-alive` and `close` (other listed names would have to be removed).
pub(super) fn simple<'b>(req: &'b httparse::Request<'_, 'b>) -> Option<Head<'b>> {
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

/// Whether `name` is one of `names` (the fast path sees names as the client spelled them).
fn is_one_of(name: &str, names: &[http::HeaderName]) -> bool {
    names.iter().any(|n| n.as_str().eq_ignore_ascii_case(name))
}

/// Request headers the proxy replaces or drops: the hop-by-hop ones (a request with
/// `Upgrade` or `Transfer-Encoding` does not get here) and the ones it sets itself.
fn replaced_request_header(name: &str) -> bool {
    is_one_of(name, &HOP_BY_HOP) || is_one_of(name, &SET_BY_PROXY)
}

/// Writes the upstream request for `head`: its request line and headers, less the replaced
/// ones, plus the forwarding headers (the same set and values as [`crate::proxy`]'s).
pub(super) fn write_request(out: &mut Vec<u8>, head: &Head<'_>, conn: &Conn, request_id: &[u8]) {
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
    let proto: &[u8] = if conn.tls { b"https" } else { b"http" };
    for (name, value) in [
        (X_FORWARDED_FOR, client_ip),
        (X_REAL_IP, client_ip),
        (X_FORWARDED_PROTO, proto),
        (X_FORWARDED_HOST, head.host.as_bytes()),
        (X_REQUEST_ID, request_id),
    ] {
        header(out, name.as_str().as_bytes(), value);
    }
    out.extend_from_slice(b"\r\n");
}

/// Starts `out` afresh with an HTTP/1.1 status line: the status's canonical reason (as
/// hyper writes it), or `fallback` for a status without one.
pub(super) fn status_line(out: &mut Vec<u8>, status: u16, fallback: &str) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or(fallback);
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub(super) fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response body ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Framing {
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
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) framing: Framing,
    /// The backend may take another request on the connection after this body.
    pub(super) reusable: bool,
}

/// Response headers that stay with the backend's connection: the hop-by-hop ones except
/// `Transfer-Encoding`, kept because the body passes through as it was framed.
fn hop_by_hop_response_header(name: &str) -> bool {
    !name.eq_ignore_ascii_case(http::header::TRANSFER_ENCODING.as_str())
        && is_one_of(name, &HOP_BY_HOP)
}

/// Reads `resp`'s head into `down` as the client's response head; `close` adds
/// `Connection: close`. `None` for a response the proxy cannot pass on (no status, an
/// unusable Content-Length or two that differ).
pub(super) fn write_response_head(
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

    status_line(down, status, resp.reason.unwrap_or_default());
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
pub(super) mod date {
    use super::SystemTime;
    use std::cell::RefCell;

    thread_local! {
        static NOW: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    pub(in crate::fast_path) fn with(f: impl FnOnce(&[u8])) {
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
}
