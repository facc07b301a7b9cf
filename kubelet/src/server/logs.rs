//! `/containerLogs`: reading the CRI log files the shim writes (`<RFC 3339 time> <stream>
//! <F|P> <text>` per line) with upstream's PodLogOptions: tailLines, sinceSeconds/sinceTime,
//! timestamps, limitBytes, and follow until the container stops or the client goes away.
//! The rendering mirrors upstream's `pkg/kubelet/kuberuntime/logs`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hyper::body::Bytes;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

pub use super::query::QueryError;
use super::query::{parse_bool, query_pairs};

/// Upstream's v1 PodLogOptions, as the kubelet applies them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Stream new lines until the container stops.
    pub follow: bool,
    /// Only the last this many lines.
    pub tail_lines: Option<u64>,
    /// Prefix each line with its RFC 3339 (nanosecond) time.
    pub timestamps: bool,
    /// The previous (terminated) instance of the container.
    pub previous: bool,
    /// Only lines logged at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Stop after this many bytes.
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    /// Options from a `/containerLogs` query, validated as upstream's
    /// `ValidatePodLogOptions` (non-negative tailLines, positive sinceSeconds and
    /// limitBytes, not both sinceSeconds and sinceTime). `now` anchors sinceSeconds.
    pub fn from_query(query: &str, now: DateTime<Utc>) -> Result<Self, QueryError> {
        let mut o = Self::default();
        let (mut since_seconds, mut since_time) = (None, None);
        let mut tail: Option<i64> = None;
        let mut limit: Option<i64> = None;
        for (k, v) in query_pairs(query)? {
            match k.as_str() {
                "follow" => o.follow = parse_bool(&v),
                "timestamps" => o.timestamps = parse_bool(&v),
                "previous" => o.previous = parse_bool(&v),
                // `tail` is upstream's backwards-compatible spelling; `all` means no limit.
                "tailLines" | "tail" if v == "all" => tail = None,
                "tailLines" | "tail" => tail = Some(v.parse().map_err(|_| QueryError::Decode)?),
                "limitBytes" => limit = Some(v.parse().map_err(|_| QueryError::Decode)?),
                "sinceSeconds" => {
                    since_seconds = Some(v.parse::<i64>().map_err(|_| QueryError::Decode)?);
                }
                "sinceTime" => {
                    since_time = Some(
                        DateTime::parse_from_rfc3339(&v)
                            .map_err(|_| QueryError::Decode)?
                            .with_timezone(&Utc),
                    );
                }
                // PodLogsQuerySplitStreams is alpha and off in 1.36: validation refuses
                // any `stream`.
                "stream" => return Err(QueryError::Invalid),
                _ => {}
            }
        }
        if since_seconds.is_some() && since_time.is_some() {
            return Err(QueryError::Invalid);
        }
        if let Some(s) = since_seconds {
            if s < 1 {
                return Err(QueryError::Invalid);
            }
            o.since = Some(now - chrono::Duration::seconds(s));
        }
        if since_time.is_some() {
            o.since = since_time;
        }
        if let Some(t) = tail {
            o.tail_lines = Some(u64::try_from(t).map_err(|_| QueryError::Invalid)?);
        }
        if let Some(l) = limit {
            if l < 1 {
                return Err(QueryError::Invalid);
            }
            o.limit_bytes = u64::try_from(l).ok();
        }
        Ok(o)
    }
}

/// One CRI log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// When it was logged.
    pub time: DateTime<Utc>,
    /// `stdout` or `stderr`.
    pub stream: &'a str,
    /// A piece of a longer line (`P`); the line ends with an `F` record.
    pub partial: bool,
    /// The text, without the newline.
    pub content: &'a [u8],
}

/// Parses one CRI log line (without its trailing newline); `None` for a malformed one.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    let time = DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc);
    if stream != "stdout" && stream != "stderr" {
        return None;
    }
    // Tags may carry more after a colon (`P:...`); the first is full or partial.
    let partial = tag.split(|b| *b == b':').next()? == b"P";
    Some(Record {
        time,
        stream,
        partial,
        content,
    })
}

/// Go's `time.RFC3339Nano` in UTC: nanoseconds with trailing zeros trimmed.
pub fn format_rfc3339_nano(t: &DateTime<Utc>) -> String {
    let base = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = format!("{:09}", t.timestamp_subsec_nanos());
    let nanos = nanos.trim_end_matches('0');
    if nanos.is_empty() {
        format!("{base}Z")
    } else {
        format!("{base}.{nanos}Z")
    }
}

/// Turns records into the bytes a client sees, applying since, timestamps and limitBytes.
#[derive(Debug)]
pub struct Renderer {
    since: Option<DateTime<Utc>>,
    timestamps: bool,
    remaining: Option<u64>,
    // Whether the last record was partial: its continuation gets no second timestamp.
    mid_line: bool,
}

impl Renderer {
    /// A renderer for `opts`.
    pub fn new(opts: &LogOptions) -> Self {
        Self {
            since: opts.since,
            timestamps: opts.timestamps,
            remaining: opts.limit_bytes,
            mid_line: false,
        }
    }

    /// Whether limitBytes has been reached.
    pub fn done(&self) -> bool {
        self.remaining == Some(0)
    }

    /// The output for one raw log line (empty when filtered out or malformed).
    pub fn render(&mut self, line: &[u8]) -> Vec<u8> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let Some(r) = parse_record(line) else {
            return Vec::new();
        };
        if self.since.is_some_and(|s| r.time < s) {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(r.content.len() + 40);
        if self.timestamps && !self.mid_line {
            out.extend_from_slice(format_rfc3339_nano(&r.time).as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(r.content);
        if !r.partial {
            out.push(b'\n');
        }
        self.mid_line = r.partial;
        if let Some(rem) = &mut self.remaining {
            let keep = usize::try_from(*rem).unwrap_or(usize::MAX).min(out.len());
            out.truncate(keep);
            *rem -= keep as u64;
        }
        out
    }
}

/// How often a followed log is checked for new lines and the container for having stopped.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Streams the log at `path` to `tx` as `opts` says. `running` tells whether the container
/// may still write (follow ends once it is false and the file is drained). Returns when done
/// or when the receiver is dropped (the client went away).
pub async fn stream(
    path: PathBuf,
    opts: LogOptions,
    running: impl Fn() -> bool + Send,
    tx: mpsc::Sender<Bytes>,
) -> std::io::Result<()> {
    let file = tokio::fs::File::open(&path).await?;
    let mut reader = BufReader::new(file);
    let mut renderer = Renderer::new(&opts);
    let mut line = Vec::new();
    // Tail needs the end of the file first: keep the last N complete lines of what exists.
    if let Some(n) = opts.tail_lines {
        let mut last: VecDeque<Vec<u8>> = VecDeque::new();
        loop {
            let read = reader.read_until(b'\n', &mut line).await?;
            if read == 0 || !line.ends_with(b"\n") {
                break;
            }
            if n > 0 {
                if last.len() as u64 == n {
                    last.pop_front();
                }
                last.push_back(std::mem::take(&mut line));
            } else {
                line.clear();
            }
        }
        for l in last {
            if !send(&tx, renderer.render(&l)).await || renderer.done() {
                return Ok(());
            }
        }
    }
    loop {
        // A line without its newline yet stays in `line` and is completed by the next read.
        let read = reader.read_until(b'\n', &mut line).await?;
        if line.ends_with(b"\n") {
            let out = renderer.render(&line);
            line.clear();
            if !send(&tx, out).await || renderer.done() {
                return Ok(());
            }
            continue;
        }
        if read > 0 {
            continue;
        }
        if !opts.follow {
            return Ok(());
        }
        // Checked before waiting, so lines written just before the exit are still read.
        let stopped = !running();
        if stopped {
            let read = reader.read_until(b'\n', &mut line).await?;
            if read == 0 {
                return Ok(());
            }
            continue;
        }
        tokio::select! {
            () = tx.closed() => return Ok(()),
            () = tokio::time::sleep(FOLLOW_POLL) => {}
        }
    }
}

/// Sends non-empty output; false when the client has gone.
async fn send(tx: &mpsc::Sender<Bytes>, out: Vec<u8>) -> bool {
    out.is_empty() || tx.send(Bytes::from(out)).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_cri_records() {
        let r = parse_record(b"2026-01-02T03:04:05.123456789Z stderr F oops: a b").unwrap();
        assert_eq!(r.stream, "stderr");
        assert!(!r.partial);
        assert_eq!(r.content, b"oops: a b");
        assert_eq!(r.time, t("2026-01-02T03:04:05.123456789Z"));
        assert!(
            parse_record(b"2026-01-02T03:04:05Z stdout P part")
                .unwrap()
                .partial
        );
        assert_eq!(
            parse_record(b"2026-01-02T03:04:05Z stdout F")
                .unwrap()
                .content,
            b""
        );
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(b"2026-01-02T03:04:05Z other F x").is_none());
    }

    #[test]
    fn timestamps_render_as_go_rfc3339nano() {
        assert_eq!(
            format_rfc3339_nano(&t("2026-01-02T03:04:05.120000000Z")),
            "2026-01-02T03:04:05.12Z"
        );
        assert_eq!(
            format_rfc3339_nano(&t("2026-01-02T03:04:05Z")),
            "2026-01-02T03:04:05Z"
        );
    }

    #[test]
    fn renders_partials_since_and_limit() {
        let mut r = Renderer::new(&LogOptions {
            timestamps: true,
            ..Default::default()
        });
        assert_eq!(
            r.render(b"2026-01-02T03:04:05.5Z stdout P ab\n"),
            b"2026-01-02T03:04:05.5Z ab"
        );
        assert_eq!(r.render(b"2026-01-02T03:04:06Z stdout F cd\n"), b"cd\n");
        assert_eq!(
            r.render(b"2026-01-02T03:04:07Z stderr F e\n"),
            b"2026-01-02T03:04:07Z e\n"
        );

        let mut r = Renderer::new(&LogOptions {
            since: Some(t("2026-01-02T03:04:06Z")),
            limit_bytes: Some(3),
            ..Default::default()
        });
        assert!(r.render(b"2026-01-02T03:04:05Z stdout F old\n").is_empty());
        assert_eq!(r.render(b"2026-01-02T03:04:06Z stdout F new\n"), b"new");
        assert!(r.done());
    }

    #[test]
    fn query_follows_upstream_validation() {
        let now = t("2026-01-02T03:04:05Z");
        let o = LogOptions::from_query(
            "follow=true&tailLines=2&timestamps=1&limitBytes=10&sinceSeconds=5",
            now,
        )
        .unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(2));
        assert_eq!(o.limit_bytes, Some(10));
        assert_eq!(o.since, Some(t("2026-01-02T03:04:00Z")));
        let o = LogOptions::from_query("sinceTime=2026-01-02T03%3A00%3A00Z&tail=all", now).unwrap();
        assert_eq!(o.since, Some(t("2026-01-02T03:00:00Z")));
        assert_eq!(o.tail_lines, None);
        assert_eq!(
            LogOptions::from_query("sinceSeconds=1&sinceTime=2026-01-02T03:00:00Z", now),
            Err(QueryError::Invalid)
        );
        assert_eq!(
            LogOptions::from_query("tailLines=-1", now),
            Err(QueryError::Invalid)
        );
        assert_eq!(
            LogOptions::from_query("limitBytes=0", now),
            Err(QueryError::Invalid)
        );
        assert_eq!(
            LogOptions::from_query("stream=Stdout", now),
            Err(QueryError::Invalid)
        );
        assert_eq!(
            LogOptions::from_query("tailLines=x", now),
            Err(QueryError::Decode)
        );
    }

    #[tokio::test]
    async fn tails_a_file_and_follows_until_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        std::fs::write(
            &path,
            "2026-01-02T03:04:01Z stdout F one\n\
             2026-01-02T03:04:02Z stderr F two\n\
             2026-01-02T03:04:03Z stdout F three\n\
             2026-01-02T03:04:04Z stdout F fou",
        )
        .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let task = tokio::spawn(stream(
            path.clone(),
            LogOptions {
                follow: true,
                tail_lines: Some(2),
                ..Default::default()
            },
            move || !s2.load(std::sync::atomic::Ordering::SeqCst),
            tx,
        ));
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"two\n"));
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"three\n"));
        // The unfinished last line is completed by the writer, then the container stops.
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"r\n").unwrap();
        assert_eq!(rx.recv().await.unwrap(), Bytes::from_static(b"four\n"));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(rx.recv().await.is_none());
    }
}
