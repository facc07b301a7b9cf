//! The container runtime: a [`Runtime`] trait, its runc implementation, and generation of
//! the OCI runtime spec (`config.json`) for a container.
//!
//! Each container runs under a small shim (this binary re-executed with [`SHIM_ARG`]) that
//! runs `runc create` and `runc start`, then reaps the container: it turns the container's
//! stdout/stderr into CRI log lines, marks the bundle `started` once the process runs, and
//! writes the exit status to `exit.json` in the bundle. The shim lives in its own
//! process group, so a kubelet restart leaves containers running and a new kubelet reads
//! their state from the bundle directory (adoption, as upstream does through the CRI).

use crate::io_error::io;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The first argument that makes the binary act as a container shim.
pub const SHIM_ARG: &str = "--ferrokube-container-shim";

/// Errors from the runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be run.
    #[error("running {program}: {source}")]
    Exec {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// runc refused.
    #[error("runc {action}: {message}")]
    Runc {
        /// What was asked.
        action: &'static str,
        /// What runc said.
        message: String,
    },
    /// A bundle file could not be written.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
}

/// How a container ended, as the shim records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Exit {
    /// The exit code (128 + signal when killed).
    pub exit_code: i32,
    /// RFC 3339.
    pub finished_at: String,
    /// `StartError` when runc could not start it.
    #[serde(default)]
    pub reason: Option<String>,
    /// runc's error, for StartError.
    #[serde(default)]
    pub message: Option<String>,
}

/// A container's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Its shim is alive and no exit was recorded.
    Running,
    /// It ended.
    Exited(Exit),
    /// Never started (no shim ever ran for it).
    Missing,
}

/// What runs containers. Calls are blocking; the kubelet calls them off the async threads.
pub trait Runtime: Send + Sync {
    /// `name://version`, reported as the node's containerRuntimeVersion.
    fn version(&self) -> String;
    /// Whether containers can be run (the reason if not).
    fn ready(&self) -> Result<(), String>;
    /// Starts container `id` from the bundle in `bundle`, logging to `log`. Returns once
    /// the container's process runs or its start failed (then [`Runtime::state`] says why),
    /// as CRI StartContainer does: a container reported Running can be exec'd into.
    fn start(&self, id: &str, bundle: &Path, log: &Path) -> Result<(), Error>;
    /// The state of container `id` whose bundle is `bundle`.
    fn state(&self, id: &str, bundle: &Path) -> State;
    /// Sends `signal` (`TERM`, `KILL`) to the container's init process.
    fn signal(&self, id: &str, signal: &str) -> Result<(), Error>;
    /// Forgets the container (runc delete --force); safe when it is already gone.
    fn remove(&self, id: &str) -> Result<(), Error>;
}

/// The bundle file the shim creates once `runc start` succeeded.
const STARTED: &str = "started";

/// How long [`Runtime::start`] waits for the shim to report; past it the container is
/// followed through [`Runtime::state`] as usual.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// runc, with its state under `root`.
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    shim: PathBuf,
    version: String,
}

impl Runc {
    /// A runc runtime; `shim` is the binary re-executed as the shim (normally ourselves).
    pub fn new(binary: &Path, root: &Path, shim: &Path) -> Self {
        let version = Command::new(binary)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("runc version "))
                    .map(|v| v.split('+').next().unwrap_or(v).trim().to_string())
            })
            .unwrap_or_default();
        Self {
            binary: binary.to_path_buf(),
            root: root.to_path_buf(),
            shim: shim.to_path_buf(),
            version,
        }
    }

    fn runc(&self, action: &'static str, args: &[&str]) -> Result<(), Error> {
        let out = Command::new(&self.binary)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Exec {
                program: self.binary.display().to_string(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(Error::Runc {
                action,
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

impl Runtime for Runc {
    fn version(&self) -> String {
        format!("runc://{}", self.version)
    }

    fn ready(&self) -> Result<(), String> {
        if self.version.is_empty() {
            Err(format!("{} --version failed", self.binary.display()))
        } else {
            Ok(())
        }
    }

    fn start(&self, id: &str, bundle: &Path, log: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(&self.root)
            .map_err(io(format!("creating {}", self.root.display())))?;
        let shim_log =
            std::fs::File::create(bundle.join("shim.log")).map_err(io("creating shim.log"))?;
        let shim_err = shim_log.try_clone().map_err(io("creating shim.log"))?;
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&self.shim)
            .arg(SHIM_ARG)
            .arg(&self.binary)
            .arg(&self.root)
            .arg(id)
            .arg(bundle)
            .arg(log)
            // Its own process group: signals to the kubelet's group do not reach containers.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(shim_log)
            .stderr(shim_err)
            .spawn()
            .map_err(|source| Error::Exec {
                program: self.shim.display().to_string(),
                source,
            })?;
        std::fs::write(bundle.join("shim.pid"), child.id().to_string())
            .map_err(io("writing shim.pid"))?;
        // Until the shim marks the start (or records a failure, or dies), the container's
        // process may not exist yet: an exec or a postStart hook would find nothing.
        let began = std::time::Instant::now();
        while !bundle.join(STARTED).exists()
            && !bundle.join("exit.json").exists()
            && matches!(child.try_wait(), Ok(None))
            && began.elapsed() < START_TIMEOUT
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The shim outlives the kubelet if need be; while the kubelet lives, a thread reaps
        // it so no zombie is left behind.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        Ok(())
    }

    fn state(&self, _id: &str, bundle: &Path) -> State {
        if let Ok(text) = std::fs::read_to_string(bundle.join("exit.json"))
            && let Ok(exit) = serde_json::from_str::<Exit>(&text)
        {
            return State::Exited(exit);
        }
        let Ok(pid) = std::fs::read_to_string(bundle.join("shim.pid")) else {
            return State::Missing;
        };
        // A shim that was just forked may not have exec'd yet: it then still shows the
        // kubelet's own command line.
        let own = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        let alive = pid.trim().parse::<u32>().is_ok_and(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.windows(SHIM_ARG.len()).any(|w| w == SHIM_ARG.as_bytes())
                    || (!c.is_empty() && c == own)
                    // Mid-exec the kernel shows an empty command line for a moment; so
                    // does a zombie, which is the only empty one that is gone.
                    || (c.is_empty() && !is_zombie(pid))
            })
        });
        if alive {
            State::Running
        } else {
            // The shim died without recording an exit (killed, or the machine rebooted).
            State::Exited(Exit {
                exit_code: 255,
                finished_at: now_rfc3339(),
                reason: Some("Unknown".into()),
                message: Some("the container's shim is gone".into()),
            })
        }
    }

    fn signal(&self, id: &str, signal: &str) -> Result<(), Error> {
        self.runc("kill", &["kill", id, signal])
    }

    fn remove(&self, id: &str) -> Result<(), Error> {
        match self.runc("delete", &["delete", "--force", id]) {
            Err(Error::Runc { message, .. })
                if message.contains("does not exist") || message.contains("not exist") =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// Whether process `pid` has exited but not been reaped (state `Z` in /proc/<pid>/stat).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| zombie_stat(&stat))
}

/// Whether a /proc/<pid>/stat line is a zombie's: the state follows the parenthesised
/// command name, which may itself hold spaces and parentheses.
fn zombie_stat(stat: &str) -> bool {
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        == Some('Z')
}

/// The current time as RFC 3339 with nanoseconds (CRI log timestamps).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// The shim's entry point: `SHIM_ARG runc root id bundle log`. Returns the exit code.
///
/// The shim makes itself a child subreaper, then runs `runc create` (the container's stdio
/// are the shim's pipes) and `runc start`. When runc exits, the container's init process is
/// re-parented to the shim, which waits for it to get its exit status. So per container only
/// this small process stays resident, not a runc.
pub fn shim_main(args: &[std::ffi::OsString]) -> i32 {
    let [runc, root, id, bundle, log] = args else {
        eprintln!("usage: {SHIM_ARG} <runc> <root> <id> <bundle> <log>");
        return 2;
    };
    let bundle = PathBuf::from(bundle);
    let log_file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        Ok(f) => Arc::new(Mutex::new(f)),
        Err(e) => {
            eprintln!("opening the container log: {e}");
            return 1;
        }
    };
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        write_exit(
            &bundle,
            128,
            Some("StartError"),
            Some(format!("becoming a subreaper: {e}")),
        );
        return 1;
    }
    let runc_log = bundle.join("runc.log");
    let pid_file = bundle.join("init.pid");
    let runc_cmd = |args: &[&std::ffi::OsStr]| {
        let mut c = Command::new(runc);
        c.arg("--root")
            .arg(root)
            .arg("--log")
            .arg(&runc_log)
            .args(["--log-format", "json"])
            .args(args);
        c
    };
    let runc_error = |fallback: String| {
        std::fs::read_to_string(&runc_log)
            .ok()
            .and_then(|t| {
                t.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|v| v["level"] == "error")
                    .filter_map(|v| v["msg"].as_str().map(str::to_string))
                    .next_back()
            })
            .unwrap_or(fallback)
    };
    let created = runc_cmd(&[
        "create".as_ref(),
        "--bundle".as_ref(),
        bundle.as_os_str(),
        "--pid-file".as_ref(),
        pid_file.as_os_str(),
        id.as_os_str(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn();
    let mut child = match created {
        Ok(c) => c,
        Err(e) => {
            write_exit(
                &bundle,
                128,
                Some("StartError"),
                Some(format!("running runc: {e}")),
            );
            return 1;
        }
    };
    // The pipes stay open in the container after runc exits: copy them until EOF.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut copiers = 0;
    for (stream, name) in [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            "stdout",
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            "stderr",
        ),
    ] {
        if let Some(s) = stream {
            let (log, done) = (log_file.clone(), done_tx.clone());
            copiers += 1;
            std::thread::spawn(move || {
                copy_cri(s, name, &log);
                let _ = done.send(());
            });
        }
    }
    let create_ok = child.wait().is_ok_and(|s| s.success());
    let init_pid = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .and_then(rustix::process::Pid::from_raw);
    let (true, Some(init_pid)) = (create_ok, init_pid) else {
        write_exit(
            &bundle,
            128,
            Some("StartError"),
            Some(runc_error("runc create failed".into())),
        );
        let _ = runc_cmd(&["delete".as_ref(), "--force".as_ref(), id.as_os_str()]).output();
        return 1;
    };
    let started = runc_cmd(&["start".as_ref(), id.as_os_str()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !started {
        let message = runc_error("runc start failed".into());
        let _ = runc_cmd(&["delete".as_ref(), "--force".as_ref(), id.as_os_str()]).output();
        write_exit(&bundle, 128, Some("StartError"), Some(message));
        return 1;
    }
    // Tells the kubelet, waiting in `Runtime::start`, that the process runs. A failure to
    // write only makes it wait for its timeout.
    let _ = std::fs::write(bundle.join(STARTED), b"");
    // Reap until the container's init is the one that exited.
    let code = loop {
        match rustix::process::wait(rustix::process::WaitOptions::empty()) {
            Ok(Some((pid, status))) if pid == init_pid => {
                break status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(255);
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => break 255,
        }
    };
    // Output written just before the exit is still in the pipes; processes the container
    // left behind may hold them open, so the wait is bounded.
    for _ in 0..copiers {
        if done_rx
            .recv_timeout(std::time::Duration::from_secs(2))
            .is_err()
        {
            break;
        }
    }
    // The OOM killer's count must be read before runc deletes the cgroup.
    let oom = oom_killed(&bundle);
    let _ = runc_cmd(&["delete".as_ref(), "--force".as_ref(), id.as_os_str()]).output();
    write_exit(&bundle, code, oom.then_some("OOMKilled"), None);
    0
}

/// Whether the OOM killer killed a process in the container's memory cgroup (cgroup v1
/// `memory.oom_control`, or v2 `memory.events`).
fn oom_killed(bundle: &Path) -> bool {
    let Some(path) = std::fs::read_to_string(bundle.join("config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["linux"]["cgroupsPath"].as_str().map(str::to_string))
    else {
        return false;
    };
    let rel = path.trim_start_matches('/');
    let count = |file: PathBuf| {
        std::fs::read_to_string(file).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    };
    count(
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.oom_control"),
    )
    .or_else(|| count(Path::new("/sys/fs/cgroup").join(rel).join("memory.events")))
    .is_some_and(|n| n > 0)
}

fn write_exit(bundle: &Path, code: i32, reason: Option<&str>, message: Option<String>) {
    let exit = Exit {
        exit_code: code,
        finished_at: now_rfc3339(),
        reason: reason.map(str::to_string),
        message,
    };
    let tmp = bundle.join("exit.json.tmp");
    if let Ok(text) = serde_json::to_vec(&exit)
        && std::fs::write(&tmp, text).is_ok()
    {
        let _ = std::fs::rename(&tmp, bundle.join("exit.json"));
    }
}

/// Longest line piece written as one CRI log record (upstream: 16 KiB).
const MAX_LOG_LINE: usize = 16 * 1024;

/// Copies `input` to `log` as CRI log lines: `<time> <stream> <F|P> <text>`.
pub fn copy_cri(input: impl Read, stream: &str, log: &Mutex<std::fs::File>) {
    let mut reader = BufReader::new(input);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = match (&mut reader)
            .take(MAX_LOG_LINE as u64)
            .read_until(b'\n', &mut buf)
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let full = buf[n - 1] == b'\n';
        let text = if full { &buf[..n - 1] } else { &buf[..n] };
        let mut line = format!(
            "{} {stream} {} ",
            now_rfc3339(),
            if full { "F" } else { "P" }
        )
        .into_bytes();
        line.extend_from_slice(text);
        line.push(b'\n');
        if let Ok(mut f) = log.lock() {
            let _ = f.write_all(&line);
        }
    }
}

/// Upstream's (containerd's) default capability set.
pub const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Every capability (for privileged containers).
pub const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
];

/// The capability set after a pod's `add` and `drop` (names with or without `CAP_`).
pub fn capabilities(privileged: bool, add: &[String], drop: &[String]) -> Vec<String> {
    if privileged {
        return ALL_CAPABILITIES.iter().map(ToString::to_string).collect();
    }
    let norm = |c: &str| {
        let c = c.to_ascii_uppercase();
        if c.starts_with("CAP_") {
            c
        } else {
            format!("CAP_{c}")
        }
    };
    let drop_all = drop.iter().any(|d| d.eq_ignore_ascii_case("ALL"));
    let mut caps: Vec<String> = if drop_all {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES
            .iter()
            .map(ToString::to_string)
            .filter(|c| !drop.iter().any(|d| norm(d) == *c))
            .collect()
    };
    if add.iter().any(|a| a.eq_ignore_ascii_case("ALL")) {
        return ALL_CAPABILITIES.iter().map(ToString::to_string).collect();
    }
    for a in add {
        let a = norm(a);
        if ALL_CAPABILITIES.contains(&a.as_str()) && !caps.contains(&a) {
            caps.push(a);
        }
    }
    caps
}

/// A bind mount into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    /// Inside the container.
    pub destination: String,
    /// On the host.
    pub source: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
}

/// Everything the OCI spec of one container is made from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpecInput {
    /// argv.
    pub args: Vec<String>,
    /// `K=V`.
    pub env: Vec<String>,
    /// The working directory.
    pub cwd: String,
    /// uid.
    pub uid: u32,
    /// gid.
    pub gid: u32,
    /// The hostname (the pod's).
    pub hostname: String,
    /// The pod's netns; the host's network when `None`.
    pub netns: Option<PathBuf>,
    /// The cgroup (`/kubepods/pod<uid>/<id>`).
    pub cgroups_path: String,
    /// memory limit in bytes.
    pub memory_limit: Option<i64>,
    /// cpu.shares.
    pub cpu_shares: Option<u64>,
    /// CFS quota in µs per 100 ms period.
    pub cpu_quota: Option<i64>,
    /// Capabilities granted.
    pub capabilities: Vec<String>,
    /// Privileged: all devices, no masked paths.
    pub privileged: bool,
    /// readOnlyRootFilesystem.
    pub readonly_rootfs: bool,
    /// !allowPrivilegeEscalation.
    pub no_new_privileges: bool,
    /// Volumes, /etc/hosts, /etc/resolv.conf, ...
    pub mounts: Vec<BindMount>,
}

/// The OCI runtime spec for `input` (root file system at `rootfs` in the bundle).
pub fn generate_spec(input: &SpecInput) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if input.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for m in &input.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if m.readonly { "ro" } else { "rw" });
        mounts.push(json!({"destination": m.destination, "type": "bind", "source": m.source, "options": options}));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(ns) = &input.netns {
        namespaces.push(json!({"type": "network", "path": ns}));
    }
    let mut resources = json!({"devices": [{"allow": input.privileged, "access": "rwm"}]});
    if let Some(limit) = input.memory_limit {
        resources["memory"] = json!({"limit": limit});
    }
    let mut cpu = serde_json::Map::new();
    if let Some(shares) = input.cpu_shares {
        cpu.insert("shares".into(), json!(shares));
    }
    if let Some(quota) = input.cpu_quota {
        cpu.insert("quota".into(), json!(quota));
        cpu.insert("period".into(), json!(100_000));
    }
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": input.cgroups_path,
        "resources": resources,
    });
    if !input.privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/proc/scsi",
            "/sys/firmware",
            "/sys/devices/virtual/powercap"
        ]);
        linux["readonlyPaths"] = json!([
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger"
        ]);
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": input.uid, "gid": input.gid},
            "args": input.args,
            "env": input.env,
            "cwd": if input.cwd.is_empty() { "/" } else { input.cwd.as_str() },
            "capabilities": {
                "bounding": input.capabilities,
                "effective": input.capabilities,
                "permitted": input.capabilities,
            },
            "noNewPrivileges": input.no_new_privileges,
        },
        "root": {"path": "rootfs", "readonly": input.readonly_rootfs},
        "hostname": input.hostname,
        "mounts": mounts,
        "linux": linux,
    })
}

/// Parses a Kubernetes quantity into a number of `unit`s of a thousandth (milli) precision:
/// returns the value × 1000, rounded up. `"100m"` → 100, `"2"` → 2000, `"1Ki"` → 1 024 000.
pub fn parse_quantity_milli(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let value: f64 = num.parse().ok()?;
    let mult: f64 = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with('e') || s.starts_with('E') => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some((value * mult * 1000.0).ceil() as i128)
}

/// cpu.shares for a CPU request (upstream: milliCPU × 1024 / 1000, at least 2).
pub fn cpu_shares(request_milli: Option<i128>) -> u64 {
    match request_milli {
        Some(m) if m > 0 => ((m * 1024 / 1000) as u64).max(2),
        _ => 2,
    }
}

/// CFS quota for a CPU limit (upstream: milliCPU × 100 000 / 1000, at least 1000).
pub fn cpu_quota(limit_milli: i128) -> i64 {
    ((limit_milli * 100_000 / 1000) as i64).max(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zombie_state_is_read_after_the_command_name() {
        assert!(zombie_stat("42 (a) b) Z 1 2 3"));
        assert!(!zombie_stat("42 (sh) S 1 2 3"));
        assert!(!zombie_stat("garbage"));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity_milli("100m"), Some(100));
        assert_eq!(parse_quantity_milli("2"), Some(2000));
        assert_eq!(parse_quantity_milli("0.5"), Some(500));
        assert_eq!(
            parse_quantity_milli("128Mi").map(|v| v / 1000),
            Some(128 * 1024 * 1024)
        );
        assert_eq!(
            parse_quantity_milli("1G").map(|v| v / 1000),
            Some(1_000_000_000)
        );
        assert_eq!(parse_quantity_milli("1e3").map(|v| v / 1000), Some(1000));
        assert_eq!(parse_quantity_milli("12x"), None);
        assert_eq!(cpu_shares(Some(100)), 102);
        assert_eq!(cpu_shares(None), 2);
        assert_eq!(cpu_quota(500), 50_000);
    }

    #[test]
    fn capability_sets() {
        let d = capabilities(false, &[], &[]);
        assert_eq!(d.len(), DEFAULT_CAPABILITIES.len());
        let c = capabilities(false, &["NET_ADMIN".into()], &["KILL".into()]);
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_KILL".to_string()));
        assert_eq!(
            capabilities(false, &["CHOWN".into()], &["ALL".into()]),
            vec!["CAP_CHOWN"]
        );
        assert_eq!(capabilities(true, &[], &[]).len(), ALL_CAPABILITIES.len());
    }

    #[test]
    fn spec_generation() {
        let spec = generate_spec(&SpecInput {
            args: vec!["httpd".into(), "-f".into()],
            env: vec!["A=1".into()],
            cwd: String::new(),
            hostname: "web".into(),
            netns: Some(PathBuf::from("/var/run/netns/fk-1")),
            cgroups_path: "/kubepods/pod1/c".into(),
            memory_limit: Some(64 << 20),
            cpu_shares: Some(102),
            cpu_quota: Some(50_000),
            capabilities: capabilities(false, &[], &[]),
            mounts: vec![BindMount {
                destination: "/data".into(),
                source: "/host/data".into(),
                readonly: true,
            }],
            ..Default::default()
        });
        assert_eq!(spec["process"]["args"][0], "httpd");
        assert_eq!(spec["process"]["cwd"], "/");
        assert_eq!(spec["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(spec["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(spec["linux"]["resources"]["devices"][0]["allow"], false);
        let ns = spec["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/var/run/netns/fk-1")
        );
        let m = spec["mounts"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(m["destination"], "/data");
        assert!(m["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(spec["linux"]["maskedPaths"].is_array());
    }

    #[test]
    fn cri_log_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let f = Mutex::new(std::fs::File::create(&path).unwrap());
        let long = "x".repeat(MAX_LOG_LINE + 5);
        copy_cri(format!("hello\n{long}\nlast").as_bytes(), "stdout", &f);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].ends_with(" stdout F hello"));
        assert!(lines[1].contains(" stdout P "));
        assert!(lines[2].ends_with(" stdout F xxxxx"));
        assert!(lines[3].ends_with(" stdout P last"));
    }
}
