//! The access log: one line per request on stderr, beside the component's own log.
//!
//! Written here rather than through `tracing`'s formatter, which cost about 12% of a proxy
//! worker's CPU under keep-alive load: it visits each field through `Debug`, formats the
//! timestamp from scratch and makes one write(2) per line. Here a worker appends each line
//! to a buffer of its own (timestamps to the second are formatted once per second) and
//! writes the buffer when its runtime has run every task that was ready and is about to
//! wait for events, as nginx's `access_log ... buffer=` batches, but without its flush
//! delay: a line reaches the file before the worker next sleeps.
//!
//! The log still obeys the tracing filter (target `access`, level INFO), so `RUST_LOG` and
//! `--v` turn it off as before, and it follows `--logging-format`: the text lines look
//! like the component's own, the JSON ones carry the same keys as tracing's JSON lines.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferrokube_runtime::logging::Format;

/// A buffer this large is written at once instead of at the end of the turn.
const FLUSH_AT: usize = 64 * 1024;

/// One request, as the access log records it.
pub struct Entry<'a> {
    /// The client's address.
    pub remote: SocketAddr,
    /// The request method.
    pub method: &'a str,
    /// The host the request was routed on.
    pub host: &'a str,
    /// The request path.
    pub path: &'a str,
    /// The response status.
    pub status: u16,
    /// The endpoint that answered, if one was tried.
    pub upstream: Option<SocketAddr>,
    /// Namespace of the Ingress that routed it; empty when none did.
    pub ingress_namespace: &'a str,
    /// Name of the Ingress that routed it; empty when none did.
    pub ingress_name: &'a str,
    /// From the request's headers to its response's.
    pub duration: Duration,
    /// The X-Request-ID sent upstream.
    pub request_id: &'a [u8],
}

/// Whether access lines are wanted at all (the tracing filter's verdict).
pub fn enabled() -> bool {
    tracing::enabled!(target: "access", tracing::Level::INFO)
}

/// Appends `entry` to this thread's buffer. A thread that [`batch_until_park`] was called
/// on writes the buffer when its runtime is about to wait for events (or when it is
/// large); any other thread writes each line at once.
pub fn record(format: Format, entry: &Entry<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    BUFFER.with_borrow_mut(|b| {
        b.push(format, now, entry);
        if !b.batched || b.lines.len() >= FLUSH_AT {
            b.flush();
        }
    });
}

/// Makes this thread batch its lines until [`flush`]; its runtime must call [`flush`]
/// before it parks (`on_thread_park`), which is when the requests that were ready
/// together have all been handled.
pub fn batch_until_park() {
    BUFFER.with_borrow_mut(|b| b.batched = true);
}

/// Writes this thread's buffered lines.
pub fn flush() {
    BUFFER.with_borrow_mut(Buffer::flush);
}

thread_local! {
    static BUFFER: RefCell<Buffer> = RefCell::new(Buffer::default());
}

#[derive(Default)]
struct Buffer {
    lines: Vec<u8>,
    /// Lines wait for [`flush`] (see [`batch_until_park`]).
    batched: bool,
    /// The second `second_prefix` was formatted for.
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS` of `second`.
    second_prefix: String,
}

impl Drop for Buffer {
    /// A worker thread ending (shutdown) writes what it still holds.
    fn drop(&mut self) {
        self.flush();
    }
}

impl Buffer {
    fn flush(&mut self) {
        if self.lines.is_empty() {
            return;
        }
        // One write(2) per flush; stderr is a file or a pipe, so a failure has nowhere
        // to be reported and the lines are dropped, as tracing's writer drops them.
        let _ = std::io::stderr().write_all(&self.lines);
        self.lines.clear();
    }

    /// Brings `second_prefix` to `now`'s second; with the microseconds it makes the
    /// timestamp.
    fn timestamp(&mut self, now: Duration) -> (&str, u32) {
        let secs = now.as_secs();
        if secs != self.second || self.second_prefix.is_empty() {
            self.second = secs;
            self.second_prefix.clear();
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                .unwrap_or_default();
            let _ = write!(self.second_prefix, "{}", t.format("%Y-%m-%dT%H:%M:%S"));
        }
        (&self.second_prefix, now.subsec_micros())
    }

    fn push(&mut self, format: Format, now: Duration, e: &Entry<'_>) {
        self.timestamp(now);
        let l = &mut Line {
            out: &mut self.lines,
            format,
        };
        l.open(&self.second_prefix, now.subsec_micros());
        l.field("remote", Field::Addr(Some(e.remote)));
        l.field("method", Field::Client(e.method));
        l.field("host", Field::Client(e.host));
        l.field("path", Field::Client(e.path));
        l.field("status", Field::Status(e.status));
        l.field("upstream", Field::Addr(e.upstream));
        l.field("ingress", Field::Key(e.ingress_namespace, e.ingress_name));
        l.field("duration_ms", Field::Millis(e.duration));
        l.field("request_id", Field::Quoted(e.request_id));
        l.close();
    }
}

/// A value of an access-log line. Numbers and addresses are written digit by digit
/// rather than through `core::fmt`, whose machinery cost more than the rest of the line.
enum Field<'a> {
    /// Ours (an address; none is written as empty): as is.
    Addr(Option<SocketAddr>),
    /// The response status: a number.
    Status(u16),
    /// A duration in milliseconds with three decimals: a number.
    Millis(Duration),
    /// From the client (host, path, method): escaped.
    Client(&'a str),
    /// `namespace/name`, each part escaped.
    Key(&'a str, &'a str),
    /// From the client, and quoted in text lines too (tracing quoted the request id).
    Quoted(&'a [u8]),
}

/// A line being appended to the buffer: field by field, no per-line allocation. Writes
/// into a Vec cannot fail.
struct Line<'a> {
    out: &'a mut Vec<u8>,
    format: Format,
}

impl Line<'_> {
    fn raw(&mut self, s: &str) {
        self.out.extend_from_slice(s.as_bytes());
    }

    fn number(&mut self, n: impl itoa::Integer) {
        self.raw(itoa::Buffer::new().format(n));
    }

    /// `n` in exactly `width` digits, zero-padded (the caller keeps `n` below
    /// `10^width`).
    fn padded(&mut self, mut n: u64, width: usize) {
        let start = self.out.len();
        self.out.resize(start + width, b'0');
        for d in self.out[start..].iter_mut().rev() {
            *d = b'0' + u8::try_from(n % 10).unwrap_or(0);
            n /= 10;
        }
    }

    fn addr(&mut self, a: SocketAddr) {
        match a {
            SocketAddr::V4(v4) => {
                for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        self.raw(".");
                    }
                    self.number(octet);
                }
                self.raw(":");
                self.number(v4.port());
            }
            // `[::1]:80`, with std's rules for shortening the address.
            SocketAddr::V6(_) => {
                let _ = write!(self.out, "{a}");
            }
        }
    }

    fn open(&mut self, second: &str, micros: u32) {
        let json = self.format == Format::Json;
        if json {
            self.raw("{\"timestamp\":\"");
        }
        self.raw(second);
        self.raw(".");
        self.padded(u64::from(micros), 6);
        if json {
            self.raw("Z\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\"");
        } else {
            self.raw("Z  INFO access: request");
        }
    }

    fn close(&mut self) {
        match self.format {
            Format::Text => self.raw("\n"),
            Format::Json => self.raw("},\"target\":\"access\"}\n"),
        }
    }

    fn field(&mut self, name: &str, value: Field<'_>) {
        let json = self.format == Format::Json;
        if json {
            self.raw(",\"");
            self.raw(name);
            self.raw("\":");
        } else {
            self.raw(" ");
            self.raw(name);
            self.raw("=");
        }
        let quote = match value {
            Field::Status(_) | Field::Millis(_) => false,
            Field::Quoted(_) => true,
            _ => json,
        };
        if quote {
            self.raw("\"");
        }
        match value {
            Field::Addr(Some(a)) => self.addr(a),
            Field::Addr(None) => {}
            Field::Status(n) => self.number(n),
            Field::Millis(d) => {
                let us = d.as_micros();
                self.number(us / 1000);
                self.raw(".");
                self.padded(u64::try_from(us % 1000).unwrap_or(0), 3);
            }
            Field::Client(v) => self.escaped(v.as_bytes()),
            Field::Key(namespace, name) => {
                self.escaped(namespace.as_bytes());
                self.raw("/");
                self.escaped(name.as_bytes());
            }
            Field::Quoted(v) => self.escaped(v),
        }
        if quote {
            self.raw("\"");
        }
    }

    /// A client-supplied value, so that it cannot forge fields or lines. Text: visible
    /// ASCII other than `"` and `\\` as is, anything else as `\\xNN` (nginx's access-log
    /// escaping). JSON: string escapes, with bytes that are not UTF-8 replaced.
    fn escaped(&mut self, v: &[u8]) {
        match self.format {
            Format::Text => {
                let plain = |b: &u8| b.is_ascii_graphic() && *b != b'"' && *b != b'\\';
                let mut rest = v;
                // Runs of plain bytes (the whole value, nearly always) are copied at once.
                while !rest.is_empty() {
                    let run = rest.iter().position(|b| !plain(b)).unwrap_or(rest.len());
                    self.out.extend_from_slice(&rest[..run]);
                    let Some((&b, tail)) = rest[run..].split_first() else {
                        break;
                    };
                    let _ = write!(self.out, "\\x{b:02X}");
                    rest = tail;
                }
            }
            Format::Json => {
                for c in String::from_utf8_lossy(v).chars() {
                    match c {
                        '"' => self.raw("\\\""),
                        '\\' => self.raw("\\\\"),
                        c if u32::from(c) < 0x20 => {
                            let _ = write!(self.out, "\\u{:04x}", u32::from(c));
                        }
                        c => {
                            let mut utf8 = [0; 4];
                            self.raw(c.encode_utf8(&mut utf8));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(host: &'a str, upstream: Option<SocketAddr>) -> Entry<'a> {
        Entry {
            remote: "127.0.0.1:5000".parse().expect("addr"),
            method: "GET",
            host,
            path: "/a?b=c",
            status: 200,
            upstream,
            ingress_namespace: "ns",
            ingress_name: "web",
            duration: Duration::from_micros(1_234),
            request_id: b"abc",
        }
    }

    fn line(format: Format, e: &Entry<'_>) -> String {
        let mut b = Buffer::default();
        // 2026-11-29T10:23:48.000042Z
        b.push(format, Duration::new(1_795_947_828, 42_000), e);
        String::from_utf8(std::mem::take(&mut b.lines)).expect("utf-8")
    }

    #[test]
    fn text_lines() {
        let up = Some("10.0.0.1:8080".parse().expect("addr"));
        assert_eq!(
            line(Format::Text, &entry("a.example", up)),
            "2026-11-29T10:23:48.000042Z  INFO access: request remote=127.0.0.1:5000 \
             method=GET host=a.example path=/a?b=c status=200 upstream=10.0.0.1:8080 \
             ingress=ns/web duration_ms=1.234 request_id=\"abc\"\n"
        );
        // A forged field or line in the Host header stays inside its field.
        let forged = line(Format::Text, &entry("x status=500\n\"", None));
        assert!(
            forged.contains(" host=x\\x20status=500\\x0A\\x22 path="),
            "{forged}"
        );
        assert!(forged.contains(" upstream= ingress="), "{forged}");
        assert_eq!(forged.matches('\n').count(), 1);
        // IPv6 peers, and durations with leading zeros in their decimals.
        let mut e = entry("a.example", Some("[fd00::1]:8080".parse().expect("addr")));
        e.remote = "[::1]:5000".parse().expect("addr");
        e.duration = Duration::from_micros(20_007);
        let v6 = line(Format::Text, &e);
        assert!(v6.contains(" remote=[::1]:5000 "), "{v6}");
        assert!(v6.contains(" upstream=[fd00::1]:8080 "), "{v6}");
        assert!(v6.contains(" duration_ms=20.007 "), "{v6}");
    }

    #[test]
    fn json_lines() {
        let l = line(Format::Json, &entry("a\"b\\c\u{1}", None));
        let v: serde_json::Value = serde_json::from_str(&l).expect("one JSON object");
        assert_eq!(v["timestamp"], "2026-11-29T10:23:48.000042Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        let f = &v["fields"];
        assert_eq!(f["message"], "request");
        assert_eq!(f["host"], "a\"b\\c\u{1}");
        assert_eq!(f["status"], 200);
        assert_eq!(f["upstream"], "");
        assert_eq!(f["ingress"], "ns/web");
        assert_eq!(f["duration_ms"], 1.234);
        assert_eq!(f["request_id"], "abc");
    }

    #[test]
    fn lines_wait_for_the_park_only_on_batching_threads() {
        let pending = || BUFFER.with_borrow(|b| b.lines.len());
        std::thread::spawn(move || {
            record(Format::Text, &entry("a.example", None));
            assert_eq!(pending(), 0, "written at once");
            batch_until_park();
            record(Format::Text, &entry("a.example", None));
            assert!(pending() > 0, "kept for the park");
            flush();
            assert_eq!(pending(), 0);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn seconds_are_formatted_once_and_follow_the_clock() {
        let mut b = Buffer::default();
        assert_eq!(
            b.timestamp(Duration::new(1_795_947_828, 5_000)),
            ("2026-11-29T10:23:48", 5)
        );
        let first = b.second_prefix.as_ptr();
        assert_eq!(b.timestamp(Duration::new(1_795_947_828, 9_000)).1, 9);
        assert_eq!(b.second_prefix.as_ptr(), first);
        assert_eq!(
            b.timestamp(Duration::new(1_795_947_829, 0)).0,
            "2026-11-29T10:23:49"
        );
    }
}
