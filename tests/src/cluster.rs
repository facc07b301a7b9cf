//! The local cluster: a control plane plus an OCI registry, ferrokube's controller-manager and
//! scheduler, and (when this machine can run pods: root, runc, CNI plugins) ferrokube's
//! kubelet as its one node. It keeps running after the command that started it.
//!
//! Its state lives in one directory: `kubeconfig`, `pki/`, `etcd/`, `registry/`, `kubelet/`,
//! `pod-logs/`, `logs/` and `state.json`, which records every process's PID (and how to clean
//! up after it) so `down` can stop them.

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
    /// Cleaning up after a stopped component failed.
    #[error("cleaning up after the cluster's processes failed:\n{0}")]
    Cleanup(String),
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
    /// The kubelet's node name (also names its CNI bridge, so two clusters on one machine
    /// need different ones).
    pub node_name: String,
    /// The node's pod range.
    pub pod_cidr: String,
}

/// The node name `up` gives its kubelet unless told otherwise.
pub const DEFAULT_NODE_NAME: &str = "ferrokube-node";
/// The pod range `up` gives its kubelet unless told otherwise.
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/24";

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
    /// A command `down` runs once the process is stopped (the kubelet's `reset`, which
    /// removes the containers, mounts and network namespaces it leaves running on purpose).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cleanup: Vec<String>,
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
    /// What `up` left out and why (no kubelet without root, runc and CNI plugins).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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
            cleanup: Vec::new(),
        })
        .collect();
    let server = cp.server_url();
    let kubeconfig = cp.kubeconfig_path().to_path_buf();
    // The kubelet API accepts client certificates of this CA (the apiserver's, for
    // `kubectl logs` and `exec`).
    let client_ca = cp.pki.ca.pair.cert_path.clone();
    // From here on the processes are recorded in the state file, not owned by `cp`.
    cp.detach();

    let registry = format!("127.0.0.1:{}", opts.registry_port);
    let state = State {
        server,
        kubeconfig,
        registry: registry.clone(),
        components: components.clone(),
        notes: Vec::new(),
    };
    // Saved before the registry starts, so a failure below can still be cleaned up by `down`.
    state.save(&opts.dir)?;
    let mut notes = Vec::new();
    let started = async {
        components.push(start_registry(&opts.dir, &registry).await?);
        for (name, bin) in components_beside_this_program() {
            components.push(start_component(&opts.dir, &state.kubeconfig, &name, &bin).await?);
        }
        match kubelet_beside_this_program().and_then(|bin| can_run_pods().map(|()| bin)) {
            Ok(bin) => {
                let kubelet =
                    start_kubelet(&opts.dir, &state.kubeconfig, &client_ca, opts, &bin).await;
                // Recorded even when it did not become ready, so `down` cleans up after it.
                let (component, ready) = match kubelet {
                    Ok(c) => (c, Ok(())),
                    Err((c, e)) => (c, Err(e)),
                };
                components.push(component);
                ready?;
            }
            Err(why) => notes.push(format!("no node (kubelet not started): {why}")),
        }
        Ok::<_, Error>(())
    };
    let result = started.await;
    // Record whatever started, so `down` stops it even after a failure.
    let state = State {
        components,
        notes,
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
    let Some(dir) = component_dir() else {
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

/// The kubelet binary beside this program (or in `$FERROKUBE_COMPONENT_DIR`).
fn kubelet_beside_this_program() -> std::result::Result<PathBuf, String> {
    let bin = component_dir()
        .map(|d| d.join("ferrokube-kubelet"))
        .ok_or_else(|| "cannot tell where ferrokube-kubelet is installed".to_string())?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!("{} is missing", bin.display()))
    }
}

/// Whether this machine can run pods: root, runc and the CNI plugins the kubelet's default
/// network uses (hack/provision.sh installs them).
pub fn can_run_pods() -> std::result::Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("running pods needs root (runc, network namespaces, mounts)".into());
    }
    for p in [
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/usr/lib/cni/loopback",
    ] {
        if !Path::new(p).exists() {
            return Err(format!("{p} is missing (hack/provision.sh installs it)"));
        }
    }
    Ok(())
}

/// Starts the kubelet as the cluster's node and waits until the Node is Ready. On failure
/// the component is still returned, so that `down` stops it and cleans up.
async fn start_kubelet(
    dir: &Path,
    kubeconfig: &Path,
    client_ca: &Path,
    opts: &UpOptions,
    bin: &Path,
) -> std::result::Result<Component, (Component, Error)> {
    let name = "kubelet";
    let log = dir.join("logs").join(format!("{name}.log"));
    let root = dir.join("kubelet");
    let mut component = Component {
        name: name.to_string(),
        pid: 0,
        log: log.clone(),
        health: None,
        cleanup: vec![
            bin.display().to_string(),
            "reset".to_string(),
            format!("--root-dir={}", root.display()),
            format!("--hostname-override={}", opts.node_name),
        ],
    };
    let failed = |c: &Component, why: String| {
        (
            c.clone(),
            Error::Component(name.to_string(), why, process::tail(&log, 30)),
        )
    };
    let port = controlplane::free_port().map_err(|e| failed(&component, e.to_string()))?;
    let api_port = controlplane::free_port().map_err(|e| failed(&component, e.to_string()))?;
    let health = format!("127.0.0.1:{port}");
    component.health = Some(health.clone());
    let args = vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--hostname-override={}", opts.node_name),
        format!("--root-dir={}", root.display()),
        format!("--pod-logs-dir={}", dir.join("pod-logs").display()),
        format!("--pod-cidr={}", opts.pod_cidr),
        format!("--healthz-port={port}"),
        format!("--port={api_port}"),
        format!("--client-ca-file={}", client_ca.display()),
        // As kind configures its nodes: a developer machine's nearly full disk must not
        // taint the only node (memory keeps upstream's threshold).
        "--eviction-hard=memory.available<100Mi,nodefs.available<0%".to_string(),
    ];
    let mut p = Process::spawn(name, bin, &args, &log, Lifetime::Detached)
        .map_err(|e| failed(&component, e.to_string()))?;
    component.pid = p.pid();
    let kubectl = crate::Kubectl::new(
        crate::upstream::binary("kubectl").map_err(|e| failed(&component, e.to_string()))?,
        kubeconfig,
    );
    let node = format!("node/{}", opts.node_name);
    let ready = wait::until(
        &format!("Node {} Ready", opts.node_name),
        Duration::from_secs(90),
        Duration::from_millis(250),
        || {
            let exited = p.has_exited();
            let (kubectl, node) = (&kubectl, node.clone());
            async move {
                if exited {
                    return Err("kubelet exited".to_string());
                }
                let out = kubectl
                    .run(
                        &[
                            "get",
                            &node,
                            "-o",
                            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                        ],
                        None,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if out.success() && out.stdout.trim() == "True" {
                    Ok(())
                } else {
                    Err(format!(
                        "Ready={:?} {}",
                        out.stdout.trim(),
                        out.stderr.trim()
                    ))
                }
            }
        },
    )
    .await;
    p.detach();
    match ready {
        Ok(()) => Ok(component),
        Err(e) => Err(failed(&component, e.to_string())),
    }
}

/// `$FERROKUBE_COMPONENT_DIR`, else the directory of the running program.
fn component_dir() -> Option<PathBuf> {
    std::env::var_os("FERROKUBE_COMPONENT_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
        })
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
        cleanup: Vec::new(),
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
    let mut failures = Vec::new();
    for c in state.components.iter().rev() {
        if c.pid != 0 {
            process::terminate(c.pid, Duration::from_secs(10));
        }
        if let Some((program, args)) = c.cleanup.split_first() {
            match std::process::Command::new(program).args(args).output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => failures.push(format!(
                    "{}: {}",
                    c.cleanup.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => failures.push(format!("{}: {e}", c.cleanup.join(" "))),
            }
        }
    }
    if !failures.is_empty() {
        // The state file stays, so `down` can be run again once the cause is fixed.
        return Err(Error::Cleanup(failures.join("\n")));
    }
    for sub in ["etcd", "registry", "kubelet", "pod-logs", "state.json"] {
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
        cleanup: Vec::new(),
    })
}

/// The status code of `GET path` on `addr` (plain HTTP).
pub async fn http_status(addr: &str, path: &str) -> Result<u16, String> {
    http_get(addr, path).await.map(|(status, _)| status)
}

/// Waits up to `timeout` until `GET /healthz` on `addr` answers 200 (`what` names the
/// component in the timeout message).
pub async fn wait_healthz(what: &str, addr: &str, timeout: Duration) -> Result<(), wait::Timeout> {
    wait::until(what, timeout, Duration::from_millis(100), || async move {
        match http_status(addr, "/healthz").await? {
            200 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await
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
