//! `ferrokube-kubelet reset`: removes everything a stopped kubelet left on the host, as
//! `kubeadm reset` does for upstream's. A kubelet that stops leaves its containers running on
//! purpose (a restart adopts them); when a node is taken away for good, this clears its
//! containers, mounts, network namespaces, bridge and pod cgroups.
//!
//! Everything is best effort and idempotent: what is already gone is skipped, and each
//! step that fails is reported without stopping the others.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;

/// The first argument that selects this mode.
pub const RESET_ARG: &str = "reset";

/// `ferrokube-kubelet reset` flags: the same names as the kubelet's own.
#[derive(Debug, Parser)]
#[command(
    name = "ferrokube-kubelet reset",
    about = "Stop and remove every container, mount, network namespace and cgroup a stopped kubelet left behind."
)]
pub struct ResetFlags {
    /// The kubelet's `--root-dir`.
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub root_dir: PathBuf,
    /// The kubelet's node name (`--hostname-override`), which names its CNI bridge.
    #[arg(long)]
    pub hostname_override: String,
    /// The kubelet's `--cgroup-root`.
    #[arg(long, default_value = "/")]
    pub cgroup_root: String,
    /// The kubelet's `--cni-bin-dir`: each pod's CNI DEL runs the plugins that set it up,
    /// so its address and hostPort rules go too.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
}

/// Clears what the kubelet with `flags` left behind; returns the steps that failed.
pub fn reset(flags: &ResetFlags) -> Vec<String> {
    let mut failures = Vec::new();
    let runc_root = flags.root_dir.join("runc");
    if runc_root.is_dir() {
        match Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["list", "-q"])
            .output()
        {
            Ok(out) => {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let deleted = Command::new("runc")
                        .arg("--root")
                        .arg(&runc_root)
                        .args(["delete", "--force", id])
                        .output();
                    if !deleted.is_ok_and(|o| o.status.success()) {
                        failures.push(format!("runc delete --force {id}"));
                    }
                }
            }
            Err(e) => failures.push(format!("runc list: {e}")),
        }
    }

    // Overlay rootfs and tmpfs emptyDirs under the root dir, deepest first; detached so a
    // busy mount does not stop the rest.
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mounts_under(&mountinfo, &flags.root_dir) {
        if let Err(e) = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH) {
            failures.push(format!("unmount {}: {e}", point.display()));
        }
    }

    let network = crate::network::Network::new(
        &flags.hostname_override,
        &flags.cni_bin_dir,
        &flags.root_dir.join("cni/net.d"),
        &flags.root_dir,
    );
    let cni = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Err(e) = &cni {
        failures.push(format!("starting a runtime for CNI DEL: {e}"));
    }
    for uid in pod_uids(&flags.root_dir) {
        let sandbox = flags.root_dir.join("pods").join(&uid).join("sandbox.json");
        let attachment: Option<crate::network::Attachment> = std::fs::read_to_string(&sandbox)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let (Some(att), Ok(rt)) = (&attachment, &cni)
            && let Err(e) = rt.block_on(network.teardown(&uid, "", "", Some(att)))
        {
            failures.push(format!("CNI DEL for pod {uid}: {e}"));
        }
        let ns = crate::network::netns_name(&uid);
        if Path::new("/run/netns").join(&ns).exists() {
            let deleted = Command::new("ip").args(["netns", "delete", &ns]).output();
            if !deleted.is_ok_and(|o| o.status.success()) {
                failures.push(format!("ip netns delete {ns}"));
            }
        }
        crate::pod_workers::remove_pod_cgroups(&flags.cgroup_root, &uid);
    }

    let bridge = crate::network::bridge_name(&flags.hostname_override);
    if Path::new("/sys/class/net").join(&bridge).exists() {
        let deleted = Command::new("ip")
            .args(["link", "delete", &bridge])
            .output();
        if !deleted.is_ok_and(|o| o.status.success()) {
            failures.push(format!("ip link delete {bridge}"));
        }
    }
    failures
}

/// The UIDs of the pods with a directory under `<root>/pods`.
fn pod_uids(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join("pods"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Mount points (field 5 of /proc/self/mountinfo) at or below `root`, deepest first.
fn mounts_under(mountinfo: &str, root: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(root))
        .collect();
    // Longest first (children before parents), equal paths side by side for dedup.
    points.sort_by(|a, b| {
        b.as_os_str()
            .len()
            .cmp(&a.as_os_str().len())
            .then_with(|| a.cmp(b))
    });
    points.dedup();
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_root_deepest_first() {
        let info = "\
22 1 0:21 / / rw shared:1 - ext4 /dev/vda rw
30 22 0:30 / /var/lib/k/pods/a/volumes/x rw - tmpfs tmpfs rw
31 22 0:31 / /var/lib/k/overlay/c1/rootfs rw - overlay overlay rw
32 22 0:32 / /var/lib/kubelet-other rw - tmpfs tmpfs rw
33 31 0:33 / /var/lib/k/overlay/c1/rootfs/proc rw - proc proc rw
";
        let got = mounts_under(info, Path::new("/var/lib/k"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/var/lib/k/overlay/c1/rootfs/proc"),
                PathBuf::from("/var/lib/k/overlay/c1/rootfs"),
                PathBuf::from("/var/lib/k/pods/a/volumes/x"),
            ]
        );
    }
}
