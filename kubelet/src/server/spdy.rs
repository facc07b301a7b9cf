//! `/exec` over SPDY/3.1 (`v4.channel.k8s.io`): what an apiserver sends a kubelet that does
//! not declare `ExtendWebSocketsToKubelet`, or whose apiserver has that gate off (it then
//! translates kubectl's WebSocket into SPDY). Only the server side spdystream clients need:
//! SYN_STREAM is answered with SYN_REPLY, DATA carries the streams, FIN half-closes, PING is
//! echoed; flow control is not enforced (spdystream sends no WINDOW_UPDATE either). Header
//! blocks are zlib with the SPDY/3 dictionary, one compression context per direction.
//!
//! The client opens one stream per channel, named by its `streamtype` header: `error`,
//! `stdin`, `stdout`, `stderr`, `resize`. The command starts once every stream the request
//! asked for is open; it ends with a Status on `error`, every stream finished, and GOAWAY.

use std::collections::HashMap;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::exec::{ExecRequest, Target, exit_status, failure};

/// The subprotocols served over SPDY, preferred first (v5 only changes WebSocket framing).
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00, 2.6.10.1).
const DICTIONARY: &[u8] = include_bytes!("spdy3_dictionary.bin");

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;

/// How long the client gets to open the streams it asked for.
const STREAMS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Why a SPDY session could not go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the connection failed.
    #[error("spdy connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame or header block was malformed.
    #[error("spdy protocol: {0}")]
    Protocol(String),
}

/// One frame as the session cares about it.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A new stream with its headers.
    SynStream {
        /// Stream id.
        id: u32,
        /// Its headers, names lowercase.
        headers: HashMap<String, String>,
    },
    /// Data on a stream; `fin` half-closes it.
    Data {
        /// Stream id.
        id: u32,
        /// The bytes.
        data: Vec<u8>,
        /// Last frame of the stream from the client.
        fin: bool,
    },
    /// A PING to echo.
    Ping(Vec<u8>),
    /// The client reset a stream or is going away.
    Reset,
    /// Anything else (SETTINGS, WINDOW_UPDATE, HEADERS...): ignored.
    Other,
}

/// Parses a decompressed header block: a count, then length-prefixed names and values.
pub fn parse_header_block(block: &[u8]) -> Result<HashMap<String, String>, Error> {
    let bad = || Error::Protocol("truncated header block".into());
    let mut pos = 0usize;
    let u32_at = |pos: &mut usize| -> Result<usize, Error> {
        let b = block.get(*pos..*pos + 4).ok_or_else(bad)?;
        *pos += 4;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(&mut pos)?;
    let mut headers = HashMap::new();
    for _ in 0..count {
        let n = u32_at(&mut pos)?;
        let name = block.get(pos..pos + n).ok_or_else(bad)?;
        pos += n;
        let v = u32_at(&mut pos)?;
        let value = block.get(pos..pos + v).ok_or_else(bad)?;
        pos += v;
        headers.insert(
            String::from_utf8_lossy(name).to_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        );
    }
    Ok(headers)
}

/// Serialises a header block (before compression).
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
    for (n, v) in headers {
        out.extend_from_slice(&(n.len() as u32).to_be_bytes());
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The client's header compression context (one zlib stream for the whole session).
pub struct HeaderReader {
    z: Decompress,
}

impl Default for HeaderReader {
    fn default() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }
}

impl HeaderReader {
    /// Decompresses one frame's header block.
    pub fn read(&mut self, mut input: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(4096);
            }
            let (before_in, before_out) = (self.z.total_in(), self.z.total_out());
            let result = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.z.total_in() - before_in).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            match result {
                Ok(_) if input.is_empty() && out.capacity() > out.len() => return Ok(out),
                Ok(_) if used == 0 && self.z.total_out() == before_out => {
                    return Err(Error::Protocol("header block does not decompress".into()));
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| Error::Protocol(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(Error::Protocol(format!("header block: {e}"))),
            }
        }
    }
}

/// Our header compression context.
pub struct HeaderWriter {
    z: Compress,
}

impl Default for HeaderWriter {
    fn default() -> Self {
        Self {
            z: Compress::new(Compression::default(), true),
        }
    }
}

impl HeaderWriter {
    /// Compresses one header block, flushed so the client can read it whole.
    pub fn write(&mut self, block: &[u8]) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut input = block;
        loop {
            out.reserve(256);
            let before_in = self.z.total_in();
            self.z
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Protocol(format!("compressing headers: {e}")))?;
            let used = usize::try_from(self.z.total_in() - before_in).unwrap_or(input.len());
            input = &input[used.min(input.len())..];
            // A sync flush is complete when it leaves room in the output.
            if input.is_empty() && out.capacity() > out.len() {
                return Ok(out);
            }
        }
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![0x80, 0x03];
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// A DATA frame.
pub fn data(id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

/// Reads the next frame.
pub async fn read_frame(
    r: &mut (impl AsyncRead + Unpin),
    headers: &mut HeaderReader,
) -> Result<Frame, Error> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let flags = head[4];
    if head[0] & 0x80 == 0 {
        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        return Ok(Frame::Data {
            id,
            data: payload,
            fin: flags & FLAG_FIN != 0,
        });
    }
    let kind = u16::from_be_bytes([head[2], head[3]]);
    Ok(match kind {
        SYN_STREAM => {
            let p = payload
                .get(..10)
                .ok_or_else(|| Error::Protocol("short SYN_STREAM".into()))?;
            let id = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff;
            let block = headers.read(&payload[10..])?;
            Frame::SynStream {
                id,
                headers: parse_header_block(&block)?,
            }
        }
        PING => Frame::Ping(payload),
        RST_STREAM | GOAWAY => Frame::Reset,
        _ => Frame::Other,
    })
}

/// Runs `req` over the SPDY connection `io` until the command ends or the client goes.
pub async fn serve<S>(io: S, target: Target, req: ExecRequest)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if let Err(e) = session(io, &target, &req).await {
        tracing::info!(container = %target.container_id, error = %e, "spdy exec session ended");
    }
}

async fn session<S>(io: S, target: &Target, req: &ExecRequest) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if wr.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    });
    let (in_tx, mut in_rx) = mpsc::channel::<Frame>(64);
    let reader = tokio::spawn(async move {
        let mut headers = HeaderReader::default();
        while let Ok(f) = read_frame(&mut rd, &mut headers).await {
            if in_tx.send(f).await.is_err() {
                return;
            }
        }
    });
    let mut compress = HeaderWriter::default();

    // Every stream the request needs, before anything runs.
    let mut wanted = vec!["error"];
    if req.stdin {
        wanted.push("stdin");
    }
    if req.stdout {
        wanted.push("stdout");
    }
    if req.stderr && !req.tty {
        wanted.push("stderr");
    }
    if req.tty {
        wanted.push("resize");
    }
    let mut streams: HashMap<String, u32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + STREAMS_TIMEOUT;
    while !wanted.iter().all(|w| streams.contains_key(*w)) {
        let frame = tokio::time::timeout_at(deadline, in_rx.recv())
            .await
            .map_err(|_| Error::Protocol("timed out waiting for the client's streams".into()))?
            .ok_or_else(|| Error::Protocol("client went away".into()))?;
        match frame {
            Frame::SynStream { id, headers } => {
                let mut payload = id.to_be_bytes().to_vec();
                payload.extend(compress.write(&header_block(&[]))?);
                let _ = out_tx.send(control(SYN_REPLY, 0, &payload)).await;
                if let Some(t) = headers.get("streamtype") {
                    streams.insert(t.clone(), id);
                }
            }
            Frame::Ping(p) => {
                let _ = out_tx.send(control(PING, 0, &p)).await;
            }
            Frame::Reset => return Err(Error::Protocol("client reset".into())),
            _ => {}
        }
    }
    let id_of = |t: &str| streams.get(t).copied();
    let error_id = id_of("error").unwrap_or(0);

    let status = match super::exec::spawn(target, req).await {
        Err(e) => failure(format!("starting runc exec: {e}")),
        Ok(mut spawned) => {
            let mut pumps = Vec::new();
            for (mut r, channel) in std::mem::take(&mut spawned.outputs) {
                let id = if channel == super::exec::STDERR {
                    id_of("stderr")
                } else {
                    id_of("stdout")
                };
                let Some(id) = id else { continue };
                let out = out_tx.clone();
                pumps.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if out.send(data(id, 0, &buf[..n])).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = out.send(data(id, FLAG_FIN, &[])).await;
                }));
            }
            let (stdin_id, resize_id) = (id_of("stdin"), id_of("resize"));
            let mut stdin = spawned.stdin.take();
            let terminal = spawned.terminal.take();
            let runc_pid = spawned.child.id();
            let finished = loop {
                tokio::select! {
                    status = spawned.child.wait() => break Some(status),
                    frame = in_rx.recv() => match frame {
                        None | Some(Frame::Reset) => break None,
                        Some(Frame::Data { id, data: d, fin }) => {
                            if Some(id) == stdin_id {
                                if let Some(w) = stdin.as_mut()
                                    && (w.write_all(&d).await.is_err() || w.flush().await.is_err())
                                {
                                    stdin = None;
                                }
                                if fin {
                                    stdin = None;
                                }
                            } else if Some(id) == resize_id && let Some(t) = &terminal {
                                super::exec::resize(t, runc_pid, &d);
                            }
                        }
                        Some(Frame::Ping(p)) => {
                            let _ = out_tx.send(control(PING, 0, &p)).await;
                        }
                        Some(_) => {}
                    },
                }
            };
            match finished {
                None => {
                    // The client went away: nobody is left to read the output.
                    let _ = spawned.child.kill().await;
                    reader.abort();
                    return Ok(());
                }
                Some(Err(e)) => failure(format!("waiting for runc exec: {e}")),
                Some(Ok(s)) => {
                    for p in pumps {
                        let _ = p.await;
                    }
                    use std::os::unix::process::ExitStatusExt as _;
                    let code = s
                        .code()
                        .or_else(|| s.signal().map(|n| 128 + n))
                        .unwrap_or(255);
                    exit_status(&req.command, code)
                }
            }
        }
    };
    let _ = out_tx
        .send(data(error_id, 0, status.to_string().as_bytes()))
        .await;
    let _ = out_tx.send(data(error_id, FLAG_FIN, &[])).await;
    for t in ["stdin", "resize"] {
        if let Some(id) = id_of(t) {
            let _ = out_tx.send(data(id, FLAG_FIN, &[])).await;
        }
    }
    let last = streams.values().copied().max().unwrap_or(0);
    let mut goaway = last.to_be_bytes().to_vec();
    goaway.extend_from_slice(&0u32.to_be_bytes());
    // The client closes once it has read the Status; wait for that rather than reset it.
    let grace = tokio::time::sleep(super::exec::CLOSE_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            () = &mut grace => break,
            f = in_rx.recv() => if f.is_none() { break },
        }
    }
    let _ = out_tx.send(control(GOAWAY, 0, &goaway)).await;
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_blocks_round_trip_through_the_session_compressors() {
        let mut w = HeaderWriter::default();
        let mut r = HeaderReader::default();
        for t in ["error", "stdout", "stdin"] {
            let block = header_block(&[("streamtype", t), ("port", "")]);
            let wire = w.write(&block).unwrap();
            let back = parse_header_block(&r.read(&wire).unwrap()).unwrap();
            assert_eq!(back.get("streamtype").map(String::as_str), Some(t));
        }
    }

    #[test]
    fn reads_a_dictionary_compressed_block_as_go_writes_it() {
        // Go's spdystream compresses with the dictionary set (FDICT in the zlib header).
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(DICTIONARY).unwrap();
        let block = header_block(&[("streamtype", "error")]);
        let mut wire = Vec::with_capacity(256);
        z.compress_vec(&block, &mut wire, FlushCompress::Sync)
            .unwrap();
        let mut r = HeaderReader::default();
        let back = parse_header_block(&r.read(&wire).unwrap()).unwrap();
        assert_eq!(back["streamtype"], "error");
    }

    #[tokio::test]
    async fn frames_parse() {
        let mut w = HeaderWriter::default();
        let mut syn = 5u32.to_be_bytes().to_vec();
        syn.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        syn.extend(w.write(&header_block(&[("streamtype", "stdin")])).unwrap());
        let mut wire = control(SYN_STREAM, 0, &syn);
        wire.extend(data(5, FLAG_FIN, b"hi"));
        wire.extend(control(PING, 0, &[0, 0, 0, 1]));
        let mut r = &wire[..];
        let mut h = HeaderReader::default();
        assert!(matches!(
            read_frame(&mut r, &mut h).await.unwrap(),
            Frame::SynStream { id: 5, headers } if headers["streamtype"] == "stdin"
        ));
        assert_eq!(
            read_frame(&mut r, &mut h).await.unwrap(),
            Frame::Data {
                id: 5,
                data: b"hi".to_vec(),
                fin: true
            }
        );
        assert_eq!(
            read_frame(&mut r, &mut h).await.unwrap(),
            Frame::Ping(vec![0, 0, 0, 1])
        );
    }
}
