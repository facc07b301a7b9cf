//! `/attach`: the output of a running container's main process from now on, over the same
//! WebSocket protocol as exec. The shim owns the process's stdio and writes it to the CRI
//! log, so attaching follows that file from its end and sends each record on its stream's
//! channel. Attaching stdin or a tty would need the shim to hold them open; it does not.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncSeekExt, BufReader};
use tokio_tungstenite::WebSocketStream;

use super::exec::{
    CLOSE_GRACE, ExecRequest, STDERR, STDOUT, data_message, exit_status, read_client, spawn_writer,
    status_message,
};
use super::logs::parse_record;

/// How often the log is checked for new output and the container for having stopped.
const POLL: Duration = Duration::from_millis(100);

/// Streams the container's output logged to `log` after now until the container stops
/// (`running` turns false; then Success) or the client goes away.
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    log: PathBuf,
    running: impl Fn() -> bool + Send,
    req: ExecRequest,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, source) = ws.split();
    let (out_tx, writer) = spawn_writer(sink);
    let mut reader = tokio::spawn(read_client(source, None, None, None));
    let status = match tokio::fs::File::open(&log).await {
        Err(e) => super::exec::failure(format!("opening {}: {e}", log.display())),
        Ok(mut file) => {
            // Attach shows what happens from now on, as a terminal would.
            if let Err(e) = file.seek(std::io::SeekFrom::End(0)).await {
                tracing::warn!(log = %log.display(), error = %e, "attach: seeking the log");
            }
            let mut lines = BufReader::new(file);
            let mut line = Vec::new();
            let mut stopping = false;
            loop {
                match lines.read_until(b'\n', &mut line).await {
                    Ok(_) if line.ends_with(b"\n") => {
                        let l = std::mem::take(&mut line);
                        let Some(r) = parse_record(l.strip_suffix(b"\n").unwrap_or(&l)) else {
                            continue;
                        };
                        let (wanted, channel) = if r.stream == "stderr" {
                            (req.stderr, STDERR)
                        } else {
                            (req.stdout, STDOUT)
                        };
                        if !wanted {
                            continue;
                        }
                        let mut data = r.content.to_vec();
                        if !r.partial {
                            data.push(b'\n');
                        }
                        if out_tx.send(data_message(channel, &data)).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(log = %log.display(), error = %e, "attach: reading the log");
                        break exit_status(&[], 0);
                    }
                }
                // At the end of what was written so far (a partial line stays in `line`).
                // One more pass after the container stopped picks up its last lines.
                if stopping {
                    break exit_status(&[], 0);
                }
                if !running() {
                    stopping = true;
                    continue;
                }
                tokio::select! {
                    _ = &mut reader => return,
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        }
    };
    let _ = out_tx.send(status_message(&status)).await;
    drop(out_tx);
    let _ = writer.await;
    if tokio::time::timeout(CLOSE_GRACE, &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
}
