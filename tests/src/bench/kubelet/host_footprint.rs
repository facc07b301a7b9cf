//! What upstream's kubelet and containerd change on the host outside the directories the
//! bench gives them, recorded before they start and put back after they stop, so a bench
//! run leaves the machine (and the test runs sharing it) as it found them.
//!
//! * the kubelet's container manager sets six kernel tunables (`setupKernelTunables`:
//!   `vm.overcommit_memory=1`, `kernel.panic=10`, `kernel.panic_on_oops=1`, ...) and has no
//!   setting to leave them alone (`protectKernelDefaults` makes it refuse to start instead);
//! * the device manager's socket is a constant, `/var/lib/kubelet/device-plugins/kubelet.sock`,
//!   whatever `--root-dir` says;
//! * the kubelet links every container log into the constant `/var/log/containers`;
//! * containerd 1.6 keeps libcni's result cache in the constant `/var/lib/cni/results` and its
//!   shims' sockets in `/run/containerd/s`.
//!
//! Directories are removed only when this run created them and they are empty again.

use std::path::{Path, PathBuf};

/// The tunables `setupKernelTunables` writes (k8s.io/component-helpers/node/util/sysctl).
const SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Directories outside the bench's own that the peer creates, parents before children.
const DIRS: [&str; 10] = [
    "/var/lib/kubelet",
    "/var/lib/kubelet/device-plugins",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/var/lib/cni/results",
    "/run/containerd",
    "/run/containerd/s",
    "/run/containerd/runc",
    "/run/containerd/fifo",
];

/// The host's state before the peer started.
#[derive(Debug)]
pub struct HostFootprint {
    /// Each tunable and its value before (as read from /proc/sys).
    sysctls: Vec<(&'static str, String)>,
    /// The directories of [`DIRS`] that did not exist.
    created: Vec<PathBuf>,
    /// The bench's own directory: log links into it are the peer's.
    own: PathBuf,
    /// The CNI network name: result cache files `<network>-<container>-<ifname>` are the peer's.
    network: String,
}

impl HostFootprint {
    /// Records the host's state; call before starting containerd.
    pub fn record(own: &Path, network: &str) -> Self {
        Self {
            sysctls: SYSCTLS
                .iter()
                .filter_map(|k| {
                    let v = std::fs::read_to_string(Path::new("/proc/sys").join(k)).ok()?;
                    Some((*k, v.trim().to_string()))
                })
                .collect(),
            created: DIRS
                .iter()
                .map(PathBuf::from)
                .filter(|d| !d.exists())
                .collect(),
            own: own.to_path_buf(),
            network: network.to_string(),
        }
    }

    /// Puts the host back; call after the kubelet and containerd stopped. Idempotent; what
    /// cannot be undone is reported on stderr and the rest still done.
    pub fn restore(&self) {
        for (key, before) in &self.sysctls {
            let path = Path::new("/proc/sys").join(key);
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now.trim() != before
                && let Err(e) = std::fs::write(&path, before)
            {
                eprintln!("restoring {} to {before}: {e}", path.display());
            }
        }
        // Links to container logs in the bench's directory (the kubelet's GC removes them
        // only for containers it removed itself).
        remove_entries("/var/log/containers", |p| {
            std::fs::read_link(p).is_ok_and(|t| t.starts_with(&self.own))
        });
        let prefix = format!("{}-", self.network);
        remove_entries("/var/lib/cni/results", |p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        });
        let device_plugins = Path::new("/var/lib/kubelet/device-plugins");
        if self.created.iter().any(|d| d == device_plugins) {
            let _ = std::fs::remove_file(device_plugins.join("kubelet.sock"));
        }
        // Children first; remove_dir leaves a directory something else has filled since.
        for d in self.created.iter().rev() {
            if d.exists()
                && let Err(e) = std::fs::remove_dir(d)
            {
                eprintln!("removing {}: {e}", d.display());
            }
        }
    }
}

/// Removes the entries of `dir` for which `pick` is true.
fn remove_entries(dir: &str, pick: impl Fn(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if pick(&p)
            && let Err(err) = std::fs::remove_file(&p)
        {
            eprintln!("removing {}: {err}", p.display());
        }
    }
}
