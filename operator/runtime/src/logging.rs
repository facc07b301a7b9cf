//! Log set-up shared by every ferrokube binary: klog's `-v` levels mapped onto tracing,
//! text or JSON (`--logging-format`).

use std::io::IsTerminal as _;
use std::os::fd::AsFd;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Log output format (`--logging-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!(
                "unsupported logging format {other:?} (want \"text\" or \"json\")"
            )),
        }
    }
}

/// The tracing filter for a klog verbosity: 0-1 warnings and important info, 2-3 our own
/// debug lines (klog's V(2) level of detail), 4-5 also our trace lines (what upstream logs
/// at V(4), such as a line per pod a controller creates), 6-7 also every request (klog's
/// v=6 logs request URLs), 8+ trace everywhere (bodies).
/// Dependencies (HTTP, TLS, client) stay at info below 6: their per-request lines would
/// drown the component's own, which is what a log tail in a failure report needs to show.
pub fn filter_for(verbosity: u8) -> &'static str {
    match verbosity {
        0 | 1 => "info",
        2 | 3 => "info,ferrokube=debug",
        4 | 5 => "info,ferrokube=trace",
        6 | 7 => "debug",
        _ => "trace",
    }
}

/// Installs the global subscriber on stderr. `RUST_LOG` overrides `verbosity` when set.
/// A second call (tests) leaves the first subscriber in place.
pub fn init(verbosity: u8, format: Format) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter_for(verbosity)));
    // Each event is formatted into a buffer and written with one write(2). std's `Stderr`
    // takes a process-wide lock around that write, which threads logging often (the Ingress
    // proxy's workers log every request) contend on and sleep in. A duplicate of fd 2 has
    // no such lock; the kernel keeps each write whole, as it does for nginx's workers
    // sharing one access log.
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => install(filter, format, std::fs::File::from(fd)),
        // Out of descriptors this early: the locked handle still works.
        Err(_) => install(filter, format, std::io::stderr),
    }
}

fn install<W>(filter: EnvFilter, format: Format, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // Colour only for a person at a terminal: log files (a component's stderr redirected,
    // as every test and the local cluster do) get plain text, as klog writes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_levels() {
        assert_eq!("json".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().is_err());
        assert_eq!(filter_for(0), "info");
        assert_eq!(filter_for(2), "info,ferrokube=debug");
        assert_eq!(filter_for(4), "info,ferrokube=trace");
        assert_eq!(filter_for(6), "debug");
        assert_eq!(filter_for(9), "trace");
    }
}
