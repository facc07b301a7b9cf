//! Log set-up: klog's `-v` levels mapped onto tracing, text or JSON.

use tracing_subscriber::EnvFilter;

use crate::options::{LogFormat, Options};

/// Installs the global subscriber. `RUST_LOG` overrides `-v` when set.
pub fn init(options: &Options) {
    // klog: 0-1 warnings and important info, 2 the recommended default, 4+ debug, 6+ trace.
    let level = match options.verbosity {
        0 | 1 => "info",
        2..=3 => "info,ferrokube=debug",
        4..=5 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match options.logging_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
