//! A Distribution registry (Debian's `docker-registry`) for one test: on a free loopback
//! port, its storage in a temp dir, stopped when the handle drops.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cluster::{http_status, which};
use crate::controlplane::free_port;
use crate::process::{Lifetime, Process};
use crate::wait;

/// A running registry.
pub struct Registry {
    process: Process,
    /// `127.0.0.1:<port>`, the registry part of image references.
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry and waits until `/v2/` answers.
    pub async fn start() -> Result<Self> {
        Self::start_inner(None).await
    }

    /// Starts a registry that requires HTTP basic auth as `user`/`password` (htpasswd with
    /// a bcrypt hash, as Distribution wants).
    pub async fn start_with_basic_auth(user: &str, password: &str) -> Result<Self> {
        Self::start_inner(Some((user, password))).await
    }

    async fn start_inner(auth: Option<(&str, &str)>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let process = launch(
            dir.path(),
            &addr,
            &dir.path().join("registry.log"),
            Lifetime::Owned,
            auth,
        )
        .await?;
        Ok(Self {
            process,
            addr,
            _dir: dir,
        })
    }

    /// The registry's log so far (for failure reports).
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }
}

/// Starts a registry serving `addr` with its config and data under `root`, logging to `log`,
/// and waits until `/v2/` answers. Shared by the tests' registries and the local cluster's.
pub async fn launch(
    root: &Path,
    addr: &str,
    log: &Path,
    lifetime: Lifetime,
    auth: Option<(&str, &str)>,
) -> Result<Process> {
    let bin = which("docker-registry")
        .context("docker-registry is not installed (hack/provision.sh installs it)")?;
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    // Generated as a value, never by pasting text into YAML.
    let mut config = serde_json::json!({
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {
            "filesystem": {"rootdirectory": root.join("data")},
            "delete": {"enabled": true},
        },
        "http": {"addr": addr},
    });
    if let Some((user, password)) = auth {
        let hash = bcrypt::hash(password, 5)?;
        let htpasswd = root.join("htpasswd");
        std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
        config["auth"] = serde_json::json!({"htpasswd": {"realm": "ferrokube", "path": htpasswd}});
    }
    let config_path = root.join("config.yml");
    std::fs::write(&config_path, serde_yaml::to_string(&config)?)?;
    let mut process = Process::spawn(
        "registry",
        &bin,
        &["serve".to_string(), config_path.display().to_string()],
        log,
        lifetime,
    )?;
    let ready = wait::until(
        "registry /v2/",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || {
            let exited = process.has_exited();
            async move {
                if exited {
                    return Err("the registry exited".to_string());
                }
                match http_status(addr, "/v2/").await? {
                    // 401: up, and asking for the credentials it was given.
                    200 | 401 => Ok(()),
                    s => Err(format!("HTTP {s}")),
                }
            }
        },
    )
    .await;
    if let Err(e) = ready {
        let tail = process.log_tail(20);
        process.stop(Duration::from_secs(2));
        bail!("{e}\n--- registry log ---\n{tail}");
    }
    Ok(process)
}
