//! `/exec`: a command in a running container over upstream's WebSocket remotecommand
//! protocol (`v5.channel.k8s.io`, and `v4.channel.k8s.io` without stream close), with a
//! pseudo-terminal for `tty`.
//!
//! In 1.36 the apiserver proxies kubectl's WebSocket straight to a kubelet that declares
//! `ExtendWebSocketsToKubelet` in `Node.status.declaredFeatures` (both that gate and
//! NodeDeclaredFeatures are on by default); otherwise it translates to SPDY/3.1, served by
//! [`super::spdy`] with the same command handling. Every binary message starts with its channel: 0 stdin, 1 stdout,
//! 2 stderr, 3 error (one `metav1.Status` when the command ends), 4 resize; v5 adds 255,
//! `[255, channel]`, to half-close a channel (stdin EOF).

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::Stdio;

use futures::{SinkExt, StreamExt};
use hyper::body::Bytes;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::query::{QueryError, parse_bool, query_pairs};

/// The WebSocket subprotocols served, preferred first.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
pub(super) const STDOUT: u8 = 1;
pub(super) const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What to run and which streams to connect.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// argv.
    pub command: Vec<String>,
    /// Forward stdin.
    pub stdin: bool,
    /// Forward stdout.
    pub stdout: bool,
    /// Forward stderr.
    pub stderr: bool,
    /// A terminal was asked for.
    pub tty: bool,
}

impl ExecRequest {
    /// The request in a `/exec` query (`command` repeated, one per argument).
    pub fn from_query(query: &str) -> Result<Self, QueryError> {
        let mut r = Self::default();
        for (k, v) in query_pairs(query)? {
            match k.as_str() {
                "command" => r.command.push(v),
                "input" | "stdin" => r.stdin = parse_bool(&v),
                "output" | "stdout" => r.stdout = parse_bool(&v),
                "error" | "stderr" => r.stderr = parse_bool(&v),
                "tty" => r.tty = parse_bool(&v),
                _ => {}
            }
        }
        Ok(r)
    }
}

/// The first protocol in the client's `Sec-WebSocket-Protocol` list that we serve.
pub fn negotiate<'a>(offered: impl Iterator<Item = &'a str>) -> Option<&'static str> {
    let offered: Vec<&str> = offered.flat_map(|h| h.split(',')).map(str::trim).collect();
    offered
        .iter()
        .find_map(|o| PROTOCOLS.iter().find(|p| *p == o).copied())
}

/// The error-channel Status for a finished command, as upstream's remotecommand server
/// writes it: Success, or Failure with reason NonZeroExitCode and an ExitCode cause.
pub fn exit_status(command: &[String], code: i32) -> serde_json::Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

/// A Failure Status for an exec that could not run at all.
pub(super) fn failure(message: String) -> serde_json::Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

/// Where to find the container and how to reach runc.
#[derive(Clone, Debug)]
pub struct Target {
    /// The runc binary.
    pub runc: PathBuf,
    /// runc's state root.
    pub runc_root: PathBuf,
    /// The container id.
    pub container_id: String,
}

/// A started `runc exec` and its ends of the command's stdio.
pub(super) struct Spawned {
    pub(super) child: tokio::process::Child,
    pub(super) stdin: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    pub(super) outputs: Vec<(Box<dyn AsyncRead + Unpin + Send>, u8)>,
    /// The pty master, for resizes (tty only).
    pub(super) terminal: Option<std::fs::File>,
}

/// A new pseudo-terminal: (master, slave).
fn open_pty() -> std::io::Result<(std::fs::File, std::fs::File)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let master = rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((std::fs::File::from(master), std::fs::File::from(slave)))
}

/// `runc exec -t` in the foreground: runc allocates the pty inside the container (the
/// command gets a controlling terminal) and copies between it and its own stdio. runc
/// only accepts a console socket when it detaches, which would lose the exit code, so its
/// stdio is a pty of ours: runc then puts that in raw mode and copies its size inward on
/// SIGWINCH.
fn spawn_tty(
    mut cmd: tokio::process::Command,
    target: &Target,
    req: &ExecRequest,
) -> std::io::Result<Spawned> {
    let (master, slave) = open_pty()?;
    cmd.arg("exec")
        .arg("--tty")
        .arg(&target.container_id)
        .args(&req.command)
        .stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave);
    let child = cmd.spawn()?;
    // Our copies of the slave must go, or the master never sees the command's end.
    drop(cmd);
    let reader = tokio::fs::File::from_std(master.try_clone()?);
    let writer = tokio::fs::File::from_std(master.try_clone()?);
    Ok(Spawned {
        child,
        stdin: req
            .stdin
            .then(|| Box::new(writer) as Box<dyn AsyncWrite + Unpin + Send>),
        outputs: vec![(Box::new(reader), STDOUT)],
        terminal: Some(master),
    })
}

/// Applies a resize message (`{"Width":80,"Height":24}`) to the terminal and tells runc
/// (which has no controlling terminal to get SIGWINCH from) to pass it on.
pub(super) fn resize(terminal: &std::fs::File, runc_pid: Option<u32>, json: &[u8]) {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Size {
        width: u16,
        height: u16,
    }
    if let Ok(size) = serde_json::from_slice::<Size>(json) {
        let ws = rustix::termios::Winsize {
            ws_row: size.height,
            ws_col: size.width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let _ = rustix::termios::tcsetwinsize(terminal, ws);
        if let Some(pid) = runc_pid
            .and_then(|p| i32::try_from(p).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::WINCH);
        }
    }
}

/// Starts `runc exec`. Without a tty, runc copies between its stdio and the command's, so
/// pipes serve.
pub(super) async fn spawn(target: &Target, req: &ExecRequest) -> std::io::Result<Spawned> {
    let mut cmd = tokio::process::Command::new(&target.runc);
    cmd.arg("--root").arg(&target.runc_root).kill_on_drop(true);
    if req.tty {
        return spawn_tty(cmd, target, req);
    }
    cmd.arg("exec").arg(&target.container_id).args(&req.command);
    let pipe_if = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    cmd.stdin(pipe_if(req.stdin))
        .stdout(pipe_if(req.stdout))
        .stderr(pipe_if(req.stderr));
    let mut child = cmd.spawn()?;
    let mut outputs: Vec<(Box<dyn AsyncRead + Unpin + Send>, u8)> = Vec::new();
    if let Some(o) = child.stdout.take() {
        outputs.push((Box::new(o), STDOUT));
    }
    if let Some(e) = child.stderr.take() {
        outputs.push((Box::new(e), STDERR));
    }
    let stdin = child
        .stdin
        .take()
        .map(|w| Box::new(w) as Box<dyn AsyncWrite + Unpin + Send>);
    Ok(Spawned {
        child,
        stdin,
        outputs,
        terminal: None,
    })
}

/// Sends what goes to `sink` in order, then a normal close once every sender is gone.
pub(super) fn spawn_writer<S>(
    mut sink: futures::stream::SplitSink<WebSocketStream<S>, Message>,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(64);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // client-go reads anything but a normal (1000) close as a failed stream.
        let normal = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(normal))).await;
        let _ = sink.close().await;
    });
    (out_tx, writer)
}

/// A Status on the error channel, which ends the session for the client.
pub(super) fn status_message(status: &serde_json::Value) -> Message {
    let mut body = vec![ERROR];
    body.extend_from_slice(status.to_string().as_bytes());
    Message::Binary(Bytes::from(body))
}

/// A chunk of output on `channel`.
pub(super) fn data_message(channel: u8, data: &[u8]) -> Message {
    let mut body = Vec::with_capacity(data.len() + 1);
    body.push(channel);
    body.extend_from_slice(data);
    Message::Binary(Bytes::from(body))
}

/// How long the client gets to answer our close.
pub(super) const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Client → command: stdin data, stdin close and resizes, until the client closes or goes.
pub(super) async fn read_client<S>(
    mut source: futures::stream::SplitStream<WebSocketStream<S>>,
    mut stdin: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    terminal: Option<std::fs::File>,
    runc_pid: Option<u32>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = match source.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "exec client stream ended");
                return;
            }
            None => return,
        };
        let data = match msg {
            Message::Binary(d) => d,
            Message::Close(_) => return,
            _ => continue,
        };
        match data.first() {
            Some(&STDIN) => {
                // Flushed each time: a pty master is a tokio File, which buffers writes.
                if let Some(w) = stdin.as_mut()
                    && (w.write_all(&data[1..]).await.is_err() || w.flush().await.is_err())
                {
                    stdin = None;
                }
            }
            Some(&CLOSE) if data.get(1) == Some(&STDIN) => stdin = None,
            Some(&RESIZE) => {
                if let Some(t) = &terminal {
                    resize(t, runc_pid, &data[1..]);
                }
            }
            _ => {}
        }
    }
}

/// Copies `reader` to the client as messages on `channel` until EOF.
async fn pump(mut reader: impl AsyncRead + Unpin, channel: u8, out: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match reader.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                buf[0] = channel;
                let msg = Message::Binary(Bytes::copy_from_slice(&buf[..=n]));
                if out.send(msg).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Runs `req` in the container and bridges its streams to the WebSocket `ws`, until the
/// command ends (Status on the error channel, then close) or the client goes away (the
/// command is killed).
pub async fn serve<S>(ws: WebSocketStream<S>, target: Target, req: ExecRequest)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, source) = ws.split();
    let (out_tx, writer) = spawn_writer(sink);
    let mut spawned = spawn(&target, &req).await;
    let (stdin, terminal, runc_pid) = match &mut spawned {
        Ok(s) => (s.stdin.take(), s.terminal.take(), s.child.id()),
        Err(_) => (None, None, None),
    };
    let mut reader = tokio::spawn(read_client(source, stdin, terminal, runc_pid));
    let outcome = match spawned {
        Err(e) => Err(format!("starting runc exec: {e}")),
        Ok(Spawned {
            mut child, outputs, ..
        }) => {
            let pumps: Vec<_> = outputs
                .into_iter()
                .map(|(r, channel)| tokio::spawn(pump(r, channel, out_tx.clone())))
                .collect();
            tokio::select! {
                status = child.wait() => match status {
                    Ok(s) => {
                        // All output goes out before the Status that ends the session.
                        for p in pumps {
                            let _ = p.await;
                        }
                        // runc reports a signalled command as 128 + signal, as shells do.
                        Ok(s.code().or_else(|| s.signal().map(|n| 128 + n)).unwrap_or(255))
                    }
                    Err(e) => Err(format!("waiting for runc exec: {e}")),
                },
                _ = &mut reader => {
                    // The client went away: nobody is left to read the output.
                    tracing::info!(container = %target.container_id, "exec client went away; killing the command");
                    let _ = child.kill().await;
                    return;
                }
            }
        }
    };
    let status = match outcome {
        Ok(code) => exit_status(&req.command, code),
        Err(message) => {
            tracing::warn!(container = %target.container_id, error = %message, "exec failed");
            failure(message)
        }
    };
    let _ = out_tx.send(status_message(&status)).await;
    drop(out_tx);
    let _ = writer.await;
    // The closing handshake: wait for the client's close, so input it sent meanwhile (a
    // resize, stdin) is read and closing the socket does not reset the connection before
    // it has read our Status.
    if tokio::time::timeout(CLOSE_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exec_query() {
        let r = ExecRequest::from_query(
            "command=sh&command=-c&command=echo+hi%3B+exit+3&stdin=true&stdout=1&stderr=true",
        )
        .unwrap();
        assert_eq!(r.command, ["sh", "-c", "echo hi; exit 3"]);
        assert!(r.stdin && r.stdout && r.stderr && !r.tty);
    }

    #[test]
    fn negotiates_the_newest_offered_protocol() {
        assert_eq!(
            negotiate(["v5.channel.k8s.io, v4.channel.k8s.io"].into_iter()),
            Some("v5.channel.k8s.io")
        );
        assert_eq!(
            negotiate(["channel.k8s.io", "v4.channel.k8s.io"].into_iter()),
            Some("v4.channel.k8s.io")
        );
        assert_eq!(negotiate(["base64.channel.k8s.io"].into_iter()), None);
    }

    #[test]
    fn exit_codes_become_upstream_statuses() {
        let cmd = ["sh".to_string(), "-c".into(), "exit 3".into()];
        assert_eq!(exit_status(&cmd, 0)["status"], "Success");
        let s = exit_status(&cmd, 3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
    }
}
