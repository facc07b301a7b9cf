//! The gRPC probe: one `grpc.health.v1.Health/Check` call over plaintext HTTP/2, as
//! upstream's prober does (no TLS, `kube-probe` user agent). The probe passes only when the
//! call succeeds and the answer is `SERVING`.
//!
//! The two messages involved each carry a single field, so they are encoded by hand rather
//! than through a protobuf toolchain:
//! `HealthCheckRequest { string service = 1; }` and
//! `HealthCheckResponse { ServingStatus status = 1; }` with `SERVING = 1`.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// The method every gRPC health server answers.
const PATH: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// Why a check did not pass (logged at debug level; the probe result is just pass/fail).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// TCP connect or the HTTP/2 exchange failed.
    #[error("connecting or calling: {0}")]
    Transport(String),
    /// The call ended with a non-OK gRPC status.
    #[error("grpc-status {code}: {message}")]
    Status { code: String, message: String },
    /// The answer could not be decoded.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The server is up but does not report SERVING.
    #[error("service is not serving (status {0})")]
    NotServing(u64),
}

/// Calls `Health/Check` for `service` on `host:port`.
pub async fn check(host: &str, port: u16, service: &str) -> Result<(), CheckError> {
    let transport = |e: &dyn std::fmt::Display| CheckError::Transport(e.to_string());
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| transport(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| transport(&e))?;
    // The connection task ends when `sender` is dropped at the end of this call.
    tokio::spawn(conn);
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = http::Request::post(format!("http://{authority}{PATH}"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "kube-probe/1.36")
        .body(Full::new(Bytes::from(frame(&encode_request(service)))))
        .map_err(|e| transport(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| transport(&e))?;
    if resp.status() != http::StatusCode::OK {
        return Err(CheckError::Status {
            code: format!("http {}", resp.status()),
            message: String::new(),
        });
    }
    let headers = resp.headers().clone();
    let collected = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| transport(&e))?;
    // A "trailers-only" answer puts grpc-status in the headers.
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let header = |name: &str| {
        trailers
            .get(name)
            .or_else(|| headers.get(name))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    match header("grpc-status").as_deref() {
        Some("0") => {}
        Some(code) => {
            return Err(CheckError::Status {
                code: code.to_string(),
                message: header("grpc-message").unwrap_or_default(),
            });
        }
        None => return Err(CheckError::Malformed("no grpc-status")),
    }
    let status = decode_response(unframe(&collected.to_bytes())?)?;
    if status == SERVING {
        Ok(())
    } else {
        Err(CheckError::NotServing(status))
    }
}

/// `HealthCheckRequest` with `service` (an empty string is the default and is omitted).
fn encode_request(service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        out.push(0x0a); // field 1, wire type 2 (length-delimited)
        put_varint(&mut out, service.len() as u64);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// The status field of a `HealthCheckResponse` (0, UNKNOWN, when absent); other fields are
/// skipped as protobuf requires.
fn decode_response(mut msg: &[u8]) -> Result<u64, CheckError> {
    let mut status = 0;
    while !msg.is_empty() {
        let key = take_varint(&mut msg)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = take_varint(&mut msg)?,
            (_, 0) => {
                take_varint(&mut msg)?;
            }
            (_, 1) => msg = msg.get(8..).ok_or(CheckError::Malformed("short fixed64"))?,
            (_, 2) => {
                let len = usize::try_from(take_varint(&mut msg)?)
                    .map_err(|_| CheckError::Malformed("length"))?;
                msg = msg.get(len..).ok_or(CheckError::Malformed("short field"))?;
            }
            (_, 5) => msg = msg.get(4..).ok_or(CheckError::Malformed("short fixed32"))?,
            _ => return Err(CheckError::Malformed("wire type")),
        }
    }
    Ok(status)
}

/// One gRPC length-prefixed message (uncompressed).
fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The first message of a gRPC body.
fn unframe(body: &[u8]) -> Result<&[u8], CheckError> {
    let (head, rest) = body
        .split_at_checked(5)
        .ok_or(CheckError::Malformed("short frame"))?;
    if head[0] != 0 {
        // We never offer compression (no grpc-accept-encoding), so none may come back.
        return Err(CheckError::Malformed("compressed message"));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    rest.get(..len)
        .ok_or(CheckError::Malformed("short message"))
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(buf: &mut &[u8]) -> Result<u64, CheckError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf
            .split_first()
            .ok_or(CheckError::Malformed("short varint"))?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(CheckError::Malformed("varint too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding() {
        assert!(encode_request("").is_empty());
        assert_eq!(encode_request("db"), vec![0x0a, 2, b'd', b'b']);
        let long = "x".repeat(200);
        let enc = encode_request(&long);
        assert_eq!(&enc[..3], &[0x0a, 0xc8, 0x01]);
        assert_eq!(enc.len(), 203);
    }

    #[test]
    fn response_decoding() {
        assert_eq!(decode_response(&[0x08, 0x01]).unwrap(), SERVING);
        assert_eq!(decode_response(&[0x08, 0x02]).unwrap(), 2);
        assert_eq!(decode_response(&[]).unwrap(), 0);
        // An unknown length-delimited field before the status is skipped.
        assert_eq!(
            decode_response(&[0x12, 0x02, b'h', b'i', 0x08, 0x01]).unwrap(),
            SERVING
        );
        assert!(decode_response(&[0x08]).is_err());
        assert!(decode_response(&[0x12, 0x05, b'h']).is_err());
        assert!(decode_response(&[0x0f]).is_err());
    }

    #[test]
    fn framing_round_trip() {
        let f = frame(&[0x08, 0x01]);
        assert_eq!(f, vec![0, 0, 0, 0, 2, 0x08, 0x01]);
        assert_eq!(unframe(&f).unwrap(), &[0x08, 0x01]);
        assert!(unframe(&[0, 0, 0, 0, 3, 1]).is_err());
        assert!(unframe(&[1, 0, 0, 0, 0]).is_err());
        assert!(unframe(&[0, 0]).is_err());
    }

    #[tokio::test]
    async fn nothing_listening_fails() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        assert!(matches!(
            check("127.0.0.1", port, "").await,
            Err(CheckError::Transport(_))
        ));
    }
}
