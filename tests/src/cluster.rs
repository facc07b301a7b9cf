//! The local cluster: a control plane plus an OCI registry (and, as they land, the ferrokube
//! components) that keeps running after the command that started it.
//!
//! Its state lives in one directory: `kubeconfig`, `pki/`, `etcd/`, `registry/`, `logs/` and
//! `state.json`, which records every process's PID so `down` can stop them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::controlplane::{self, ControlPlane, Options};
use crate::process::{self, Lifetime, Process};
use crate::wait;

/// Errors of the local cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control plane failed.
    #[error(transparent)]
    ControlPlane(#[from] controlplane::Error),
    /// A process failed to start.
    #[error(transparent)]
    Process(#[from] process::Error),
    /// The state file or directory could not be read or written.
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The state file is not ours or is damaged.
    #[error("state file {path} is unreadable: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A ferrokube component did not become ready.
    #[error("{0} did not become ready: {1}\n--- {0} log (tail) ---\n{2}")]
    Component(String, String, String),
    /// The registry did not answer.
    #[error("the OCI registry did not become ready: {0}\n--- registry log (tail) ---\n{1}")]
    Registry(String, String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// What `up` starts.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The state directory.
    pub dir: PathBuf,
    /// The apiserver's port on 127.0.0.1.
    pub apiserver_port: u16,
    /// The registry's port on 127.0.0.1.
    pub registry_port: u16,
}

/// One recorded process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Component {
    /// Its name (`etcd`, `kube-apiserver`, `registry`, ...).
    pub name: String,
    /// Its PID.
    pub pid: u32,
    /// Its log file.
    pub log: PathBuf,
    /// Where its /healthz, /readyz and /metrics answer (ferrokube components).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
}

/// `state.json`: what is running and how to reach it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    /// The apiserver URL.
    pub server: String,
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The registry address (`127.0.0.1:<port>`).
    pub registry: String,
    /// Every process, in start order.
    pub components: Vec<Component>,
}

impl State {
    /// Reads the state of the cluster in `dir`, if one was started there.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join("state.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    what: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::State {
                path,
                reason: e.to_string(),
            })
    }

    fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join("state.json");
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text).map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })
    }

    /// Whether every recorded process is still running.
    pub fn all_running(&self) -> bool {
        self.components.iter().all(|c| process::is_alive(c.pid))
    }
}

/// Where the local cluster keeps its state by default:
/// `$XDG_STATE_HOME/ferrokube/cluster`, else `~/.local/state/ferrokube/cluster`.
pub fn default_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("ferrokube/cluster")
}

/// Brings the cluster up (a fresh one; a running one is left as it is) and returns its state.
pub async fn up(opts: &UpOptions) -> Result<State> {
    if let Some(state) = State::load(&opts.dir)? {
        if state.all_running() {
            return Ok(state);
        }
        // A half-dead cluster from before: clear it away and start fresh.
        down(&opts.dir)?;
    }
    let io = |what: String| move |source| Error::Io { what, source };
    if opts.dir.exists() {
        std::fs::remove_dir_all(&opts.dir)
            .map_err(io(format!("clearing {}", opts.dir.display())))?;
    }
    std::fs::create_dir_all(opts.dir.join("logs"))
        .map_err(io(format!("creating {}", opts.dir.display())))?;

    let cp = ControlPlane::start_with(Options {
        dir: Some(opts.dir.clone()),
        lifetime: Lifetime::Detached,
        apiserver_port: Some(opts.apiserver_port),
        // A cluster people use keeps its data safe on disk.
        etcd_unsafe_no_fsync: false,
        ..Options::default()
    })
    .await?;
    let log_dir = cp.log_dir();
    let mut components: Vec<Component> = cp
        .pids()
        .into_iter()
        .map(|(name, pid)| Component {
            log: log_dir.join(format!("{name}.log")),
            name,
            pid,
            health: None,
        })
        .collect();
    let server = cp.server_url();
    let kubeconfig = cp.kubeconfig_path().to_path_buf();
    // From here on the processes are recorded in the state file, not owned by `cp`.
    cp.detach();

    let registry = format!("127.0.0.1:{}", opts.registry_port);
    let state = State {
        server,
        kubeconfig,
        registry: registry.clone(),
        components: components.clone(),
    };
    // Saved before the registry starts, so a failure below can still be cleaned up by `down`.
    state.save(&opts.dir)?;
    let started = async {
        components.push(start_registry(&opts.dir, &registry).await?);
        for (name, bin) in components_beside_this_program() {
            components.push(start_component(&opts.dir, &state.kubeconfig, &name, &bin).await?);
        }
        Ok::<_, Error>(())
    };
    let result = started.await;
    // Record whatever started, so `down` stops it even after a failure.
    let state = State {
        components,
        ..state
    };
    state.save(&opts.dir)?;
    if let Err(e) = result {
        let _ = down(&opts.dir);
        return Err(e);
    }
    Ok(state)
}

/// ferrokube's component binaries, in start order.
pub const COMPONENTS: &[&str] = &["ferrokube-controller-manager", "ferrokube-scheduler"];

/// The component binaries installed next to the running program (cargo puts every binary of
/// the workspace in one directory), or in `$FERROKUBE_COMPONENT_DIR`.
pub fn components_beside_this_program() -> Vec<(String, PathBuf)> {
    let dir = std::env::var_os("FERROKUBE_COMPONENT_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
        });
    let Some(dir) = dir else {
        return Vec::new();
    };
    COMPONENTS
        .iter()
        .map(|name| {
            (
                name.trim_start_matches("ferrokube-").to_string(),
                dir.join(name),
            )
        })
        .filter(|(_, bin)| bin.is_file())
        .collect()
}

/// Starts one ferrokube component against the cluster and waits for its /readyz.
async fn start_component(
    dir: &Path,
    kubeconfig: &Path,
    name: &str,
    bin: &Path,
) -> Result<Component> {
    let port = controlplane::free_port()?;
    let health = format!("127.0.0.1:{port}");
    let log = dir.join("logs").join(format!("{name}.log"));
    let args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--bind-address=127.0.0.1".to_string(),
        format!("--secure-port={port}"),
    ];
    let mut p = Process::spawn(name, bin, &args, &log, Lifetime::Detached)?;
    let ready = wait::until(
        &format!("{name} /readyz"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let exited = p.has_exited();
            let health = health.clone();
            async move {
                if exited {
                    return Err(format!("{name} exited"));
                }
                match http_status(&health, "/readyz").await? {
                    200 => Ok(()),
                    s => Err(format!("/readyz answered {s}")),
                }
            }
        },
    )
    .await;
    let component = Component {
        name: name.to_string(),
        pid: p.pid(),
        log: log.clone(),
        health: Some(health),
    };
    match ready {
        Ok(()) => {
            p.detach();
            Ok(component)
        }
        Err(e) => Err(Error::Component(
            name.to_string(),
            e.to_string(),
            process::tail(&log, 30),
        )),
    }
}

/// Stops every process of the cluster in `dir` (newest first) and removes its data;
/// logs are kept. Returns what was stopped.
pub fn down(dir: &Path) -> Result<Vec<Component>> {
    let Some(state) = State::load(dir)? else {
        return Ok(Vec::new());
    };
    for c in state.components.iter().rev() {
        process::terminate(c.pid, Duration::from_secs(10));
    }
    for sub in ["etcd", "registry", "state.json"] {
        let p = dir.join(sub);
        let res = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match res {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io {
                    what: format!("removing {}", p.display()),
                    source,
                });
            }
        }
    }
    Ok(state.components)
}

/// Starts the Distribution registry (Debian's `docker-registry`) on `addr`.
async fn start_registry(dir: &Path, addr: &str) -> Result<Component> {
    let log = dir.join("logs/registry.log");
    let process =
        crate::registry::launch(&dir.join("registry"), addr, &log, Lifetime::Detached, None)
            .await
            .map_err(|e| Error::Registry(e.to_string(), process::tail(&log, 20)))?;
    Ok(Component {
        name: "registry".into(),
        pid: process.detach(),
        log,
        health: None,
    })
}

/// The status code of `GET path` on `addr` (plain HTTP).
pub async fn http_status(addr: &str, path: &str) -> Result<u16, String> {
    http_get(addr, path).await.map(|(status, _)| status)
}

/// `GET path` on `addr` over plain HTTP/1.1: the status code and the body.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
    // Bodies of our own servers are never chunked (fixed-size responses).
    Ok((status, body.to_string()))
}

/// The first executable `name` on `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}
