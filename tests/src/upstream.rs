//! Where the real upstream binaries live and which versions they are.
//!
//! `hack/provision.sh` builds them into `<cache>/bin/<name>-<version>` and links
//! `<cache>/bin/current/<name>` to the pinned version. The pins come from
//! `hack/versions.env`, the one place they are written down.

use std::path::{Path, PathBuf};

/// `hack/versions.env`, compiled in so the harness and the provisioning script agree.
const VERSIONS_ENV: &str = include_str!("../../hack/versions.env");

/// Errors locating an upstream binary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binary has not been provisioned yet.
    #[error("{name} not found at {path}: run hack/provision.sh first (or set FERROKUBE_BIN_DIR)")]
    Missing {
        /// The binary's name.
        name: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// Neither `FERROKUBE_BIN_DIR` nor a home directory tells where the cache is.
    #[error("cannot find the ferrokube cache: set FERROKUBE_BIN_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
}

/// The pinned version of one upstream part, by its key in `hack/versions.env`
/// (`KUBERNETES_VERSION`, `ETCD_VERSION`, ...).
pub fn version(key: &str) -> Option<&'static str> {
    VERSIONS_ENV
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

/// The pinned Kubernetes version (kube-apiserver, kubectl, and the upstream peers).
pub fn kubernetes_version() -> &'static str {
    version("KUBERNETES_VERSION").unwrap_or("unknown")
}

/// The ferrokube cache directory (`$FERROKUBE_CACHE`, else `$XDG_CACHE_HOME/ferrokube`,
/// else `~/.cache/ferrokube`), the same rule `hack/provision.sh` uses.
pub fn cache_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("FERROKUBE_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("ferrokube"));
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/ferrokube"))
        .ok_or(Error::NoCacheDir)
}

/// The directory holding the current upstream binaries.
pub fn bin_dir() -> Result<PathBuf, Error> {
    match std::env::var_os("FERROKUBE_BIN_DIR") {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => Ok(cache_dir()?.join("bin/current")),
    }
}

/// The path of one upstream binary (`etcd`, `kube-apiserver`, `kubectl`, `kwok`, `helm`, ...),
/// checked to exist.
pub fn binary(name: &str) -> Result<PathBuf, Error> {
    let path = bin_dir()?.join(name);
    if is_executable(&path) {
        Ok(path)
    } else {
        Err(Error::Missing {
            name: name.to_string(),
            path,
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_pinned() {
        assert!(kubernetes_version().starts_with("v1.36."));
        assert!(version("ETCD_VERSION").is_some_and(|v| v.starts_with("v3.6.")));
        assert_eq!(version("NO_SUCH_THING"), None);
    }
}
