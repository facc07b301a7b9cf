//! The I/O error every kubelet module reports the same way: what was attempted, and why it
//! failed. Each module's error enum wraps it as its `Io` variant.

/// A file-system or process operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct IoError {
    /// What was attempted ("writing /var/lib/…/sandbox.json").
    pub what: String,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

/// A `map_err` adapter: `fs::write(&p, b).map_err(io(format!("writing {}", p.display())))?`.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IoError {
    let what = what.into();
    move |source| IoError { what, source }
}
