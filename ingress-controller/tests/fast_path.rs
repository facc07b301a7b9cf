//! The HTTP/1.1 fast path through the real stack: keep-alive requests on one client
//! connection (pipelined, HEAD, chunked and close-delimited bodies, a backend closing its
//! idle connections), and the hand-over to hyper of what the fast path does not take, on
//! the same connection.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "fast.example.com";

/// A backend speaking raw HTTP/1.1, answering by path:
/// - `/raw/chunked`: a chunked body with a trailer, connection kept;
/// - `/raw/eof`: a body without length, then it closes;
/// - anything else: `ok`, then it closes the connection (an idle close the proxy only
///   finds out about when it next uses the connection).
///
/// Counts the connections it accepted.
async fn raw_backend() -> anyhow::Result<(SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind((local_ip()?, 0)).await?;
    let addr = listener.local_addr()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut have = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&have[..end]).into_owned();
                        have.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                        let (resp, close): (&[u8], bool) = match path.as_str() {
                            "/raw/chunked" => (
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                                  5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
                                false,
                            ),
                            "/raw/eof" => (b"HTTP/1.1 200 OK\r\n\r\nuntil close", true),
                            _ => (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", true),
                        };
                        if s.write_all(resp).await.is_err() || close {
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
    Ok((addr, accepted))
}

/// A response read off a raw connection: status, head (lower-cased) and the body as sent
/// (chunk framing left in).
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

/// Reads one response from `s` (`buf` keeps what came after it); `head_request` responses
/// have no body.
async fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> anyhow::Result<Raw> {
    let deadline = tokio::time::Instant::now() + T;
    let more = async |s: &mut TcpStream, buf: &mut Vec<u8>| -> anyhow::Result<usize> {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await??;
        buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    };
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        anyhow::ensure!(more(s, buf).await? > 0, "closed before a response head");
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    buf.drain(..end + 4);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status in {head}"))?;
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    };
    let body_end = if head_request {
        Some(0)
    } else if let Some(n) = field("content-length") {
        Some(n.parse::<usize>()?)
    } else if field("transfer-encoding").as_deref() == Some("chunked") {
        None
    } else {
        // Close-delimited.
        while more(s, buf).await? > 0 {}
        Some(buf.len())
    };
    let n = match body_end {
        Some(n) => {
            while buf.len() < n {
                anyhow::ensure!(more(s, buf).await? > 0, "closed within a body");
            }
            n
        }
        // The last chunk (`0`), then trailers if any, then an empty line. (The test's
        // chunk data never holds a line that is just `0`.)
        None => loop {
            let last = if buf.starts_with(b"0\r\n") {
                Some(0)
            } else {
                buf.windows(5)
                    .position(|w| w == b"\r\n0\r\n")
                    .map(|p| p + 2)
            };
            if let Some(zero) = last
                && let Some(e) = buf[zero + 1..].windows(4).position(|w| w == b"\r\n\r\n")
            {
                break zero + 1 + e + 4;
            }
            anyhow::ensure!(more(s, buf).await? > 0, "closed within a chunked body");
        },
    };
    let body = buf.drain(..n).collect();
    Ok(Raw { status, head, body })
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_and_the_hand_over_to_hyper() -> anyhow::Result<()> {
    let (cp, ic) = serving(&["a"]).await?;
    let (raw, accepted) = raw_backend().await?;
    service(&cp, "raw", &[raw]).await?;
    cp.kubectl()?
        .apply(&ingress(
            "fast",
            HOST,
            json!([path("/", "Prefix", "a"), path("/raw", "Prefix", "raw")]),
            &[],
        ))
        .await?;
    get_until(ic.http, HOST, "/raw/ready", "route to raw", |r| {
        r.body == "ok"
    })
    .await?;
    let after_wait = accepted.load(Ordering::SeqCst);

    let mut s = TcpStream::connect(("127.0.0.1", ic.http)).await?;
    let mut buf = Vec::new();
    // Two pipelined requests in one write, answered in order.
    let two = format!(
        "{}{}",
        get("/one", HOST, "X-Request-ID: fast-1\r\n"),
        get("/two?q=2", HOST, "Connection: keep-alive\r\n")
    );
    s.write_all(two.as_bytes()).await?;
    let one = read_response(&mut s, &mut buf, false).await?;
    let two = read_response(&mut s, &mut buf, false).await?;
    let (one_body, two_body) = (
        String::from_utf8_lossy(&one.body),
        String::from_utf8_lossy(&two.body),
    );
    assert_eq!(one.status, 200, "{one:?}");
    assert!(one_body.starts_with("a /one "), "{one_body}");
    assert!(one_body.contains("rid=fast-1 "), "{one_body}");
    assert!(one_body.contains(&format!("fhost={HOST} ")), "{one_body}");
    assert!(one_body.contains("proto=http "), "{one_body}");
    assert!(one.head.contains("\r\ndate: "), "{}", one.head);
    assert!(two_body.starts_with("a /two?q=2 "), "{two_body}");
    assert!(
        !two_body.contains("rid=- "),
        "a request id is made: {two_body}"
    );

    // HEAD: the length of the body that was not sent, and the connection goes on.
    s.write_all(format!("HEAD /one HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
        .await?;
    let head = read_response(&mut s, &mut buf, true).await?;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.head.contains("content-length: "), "{}", head.head);

    // A chunked body passes through with its framing, trailer included; the upstream
    // connection it came on is kept and takes the next request.
    let before = accepted.load(Ordering::SeqCst);
    for _ in 0..3 {
        s.write_all(get("/raw/chunked", HOST, "").as_bytes())
            .await?;
        let chunked = read_response(&mut s, &mut buf, false).await?;
        assert!(
            chunked.head.contains("transfer-encoding: chunked"),
            "{}",
            chunked.head
        );
        assert_eq!(
            String::from_utf8_lossy(&chunked.body),
            "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        );
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst) - before,
        1,
        "one upstream connection"
    );

    // An unrouted host: the proxy's own 404, and the connection stays.
    s.write_all(get("/", "nobody.example.com", "").as_bytes())
        .await?;
    let missing = read_response(&mut s, &mut buf, false).await?;
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.body, b"404 page not found\n");

    // A request with a body: the connection goes to hyper, bytes already read included,
    // and keeps working there.
    let post = format!(
        "POST /posted HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc{}",
        get("/after", HOST, "")
    );
    s.write_all(post.as_bytes()).await?;
    let posted = read_response(&mut s, &mut buf, false).await?;
    let posted_body = String::from_utf8_lossy(&posted.body);
    assert!(
        posted_body.starts_with("a /posted ") && posted_body.ends_with("len=3"),
        "{posted_body}"
    );
    let after = read_response(&mut s, &mut buf, false).await?;
    assert!(
        String::from_utf8_lossy(&after.body).starts_with("a /after "),
        "{after:?}"
    );

    // Garbage after the hand-over is hyper's to refuse.
    let mut bad = TcpStream::connect(("127.0.0.1", ic.http)).await?;
    bad.write_all(b"NOT HTTP AT ALL\r\n\r\n").await?;
    let refused = read_response(&mut bad, &mut Vec::new(), false).await?;
    assert_eq!(refused.status, 400, "{refused:?}");

    // The backend closes each connection after answering: every request still gets its
    // answer, on a new upstream connection each.
    let mut c = TcpStream::connect(("127.0.0.1", ic.http)).await?;
    let mut cbuf = Vec::new();
    for i in 0..3 {
        c.write_all(get(&format!("/raw/closing-{i}"), HOST, "").as_bytes())
            .await?;
        let r = read_response(&mut c, &mut cbuf, false).await?;
        assert_eq!(
            (r.status, r.body.as_slice()),
            (200, &b"ok"[..]),
            "request {i}: {r:?}"
        );
    }
    assert!(accepted.load(Ordering::SeqCst) >= after_wait + 3);

    // A body without length is read to the backend's close; the client's connection
    // closes after it.
    c.write_all(get("/raw/eof", HOST, "").as_bytes()).await?;
    let eof = read_response(&mut c, &mut cbuf, false).await?;
    assert_eq!(eof.body, b"until close");
    assert!(eof.head.contains("connection: close"), "{}", eof.head);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(T, c.read_to_end(&mut rest)).await??;
    assert_eq!(n, 0, "the proxy closed the connection");

    // `Connection: close` from the client is honoured.
    let mut d = TcpStream::connect(("127.0.0.1", ic.http)).await?;
    d.write_all(get("/one", HOST, "Connection: close\r\n").as_bytes())
        .await?;
    let closing = read_response(&mut d, &mut Vec::new(), false).await?;
    assert!(
        closing.head.contains("connection: close"),
        "{}",
        closing.head
    );
    let n = tokio::time::timeout(Duration::from_secs(10), d.read_to_end(&mut rest)).await??;
    assert_eq!(n, 0);
    drop(cp);
    Ok(())
}
