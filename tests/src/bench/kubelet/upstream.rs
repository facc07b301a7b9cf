//! The upstream peer: kube's own kubelet (built by `hack/provision.sh`) on Debian's
//! containerd 1.6 (CRI), both with their own root, state, socket, CNI network and ports.
//!
//! containerd's and the kubelet's configuration files are generated here from this
//! program's own values (temp paths, loopback ports, the bench's image names); nothing in
//! them comes from outside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::host_footprint::HostFootprint;
use crate::cluster::which;
use crate::process::{Lifetime, Process};
use crate::{ControlPlane, controlplane, upstream, wait};

/// The upstream node's pod range (ours uses 198.18.200.0/24).
const POD_CIDR: &str = "198.18.201.0/24";
/// containerd's CNI bridge for the bench (fixed: one upstream node per run).
const BRIDGE: &str = "kbenchup0";
/// The CNI network's name (libcni names its cache files after it).
const NETWORK: &str = "kbench";

/// What is missing for the upstream peer, if anything.
pub fn unavailable() -> Option<String> {
    if let Err(e) = upstream::binary("kubelet") {
        return Some(e.to_string());
    }
    for bin in ["containerd", "containerd-shim-runc-v2", "ctr"] {
        if which(bin).is_none() {
            return Some(format!(
                "{bin} is not installed (hack/provision.sh installs Debian's containerd)"
            ));
        }
    }
    None
}

/// Upstream's kubelet and its containerd.
pub struct UpstreamNode {
    kubelet: Option<Process>,
    containerd: Option<Process>,
    socket: PathBuf,
    /// The host as it was before containerd started.
    host: HostFootprint,
    dir: tempfile::TempDir,
}

impl UpstreamNode {
    /// Starts containerd, then the kubelet, and waits for the kubelet's /healthz.
    /// `pause_image` is the sandbox image (pushed to the bench's registry by the caller).
    pub async fn start(
        cp: &ControlPlane,
        name: &str,
        registry: &str,
        pause_image: &str,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferrokube-kbench-upstream-")
            .tempdir()?;
        let d = dir.path();
        let host = HostFootprint::record(d, NETWORK);
        let socket = d.join("containerd.sock");
        let net_d = d.join("net.d");
        std::fs::create_dir_all(&net_d)?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                          "dataDir": d.join("ipam"),
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"},
            ],
        });
        std::fs::write(net_d.join("10-kbench.conflist"), conflist.to_string())?;
        // restrict_oom_score_adj: the CRI plugin gives every sandbox oom_score_adj -998, and
        // lowering oom_score_adj needs CAP_SYS_RESOURCE, which root lacks on these machines
        // (a VM whose init drops it); runc's init then dies writing /proc/self/oom_score_adj
        // and runc only reports "can't get final child's PID from pipe: EOF". Restricted,
        // containerd never asks for less than its own score (0, as our kubelet's pods get).
        // netns_mounts_under_state_dir and the runc root keep the pods' network namespaces
        // and runc's state in this directory instead of /var/run/netns and /run/containerd.
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{net_d}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
      Root = "{runc_root}"
"#,
            root = d.join("containerd-root").display(),
            state = d.join("containerd-state").display(),
            socket = socket.display(),
            net_d = net_d.display(),
            runc_root = d.join("runc").display(),
        );
        let config_path = d.join("containerd.toml");
        std::fs::write(&config_path, config)?;
        let containerd_bin = which("containerd").context("containerd is not installed")?;
        let mut node = Self {
            kubelet: None,
            containerd: Some(Process::spawn(
                "containerd",
                &containerd_bin,
                &["--config".to_string(), config_path.display().to_string()],
                &cp.log_dir().join("containerd.log"),
                Lifetime::Owned,
            )?),
            socket,
            host,
            dir,
        };
        let sock = node.socket.clone();
        let up = wait::until(
            "containerd socket",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || {
                let exists = sock.exists();
                async move {
                    if exists {
                        Ok(())
                    } else {
                        Err("no socket yet".to_string())
                    }
                }
            },
        )
        .await;
        if let Err(e) = up {
            let tail = node.containerd.as_ref().map(|p| p.log_tail(30));
            node.teardown();
            bail!("{e}\n--- containerd log ---\n{}", tail.unwrap_or_default());
        }

        let healthz_port = controlplane::free_port()?;
        let api_port = controlplane::free_port()?;
        let d = node.dir.path();
        let kubelet_config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            // This machine has cgroups v1 (hybrid); 1.36 refuses them unless told.
            "failCgroupV1": false,
            // containerd 1.6 lacks the RuntimeConfig RPC; 1.36 still falls back to this.
            "cgroupDriver": "cgroupfs",
            "failSwapOn": false,
            "containerRuntimeEndpoint": format!("unix://{}", node.socket.display()),
            "address": "127.0.0.1",
            "port": api_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "podCIDR": POD_CIDR,
            // Pods straight under the root cgroup, as ours puts them (no QoS tiers), and
            // no node-allocatable cgroup: the two kubelets share the machine's hierarchy.
            "cgroupsPerQOS": false,
            "enforceNodeAllocatable": [],
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": cp.pki.ca.pair.cert_path},
            },
            "authorization": {"mode": "Webhook"},
            // The same thresholds as ours: memory as upstream's default, disk off.
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "0%",
                "nodefs.inodesFree": "0%",
                "imagefs.available": "0%",
            },
            "imageGCHighThresholdPercent": 100,
            "resolvConf": "/etc/resolv.conf",
            // Container logs in this directory, not /var/log/pods.
            "podLogsDir": d.join("pod-logs"),
            // The KUBE-FIREWALL and canary chains are for kube-proxy, which does not run
            // here; left on, they would stay in the host's iptables after the run.
            "makeIPTablesUtilChains": false,
        });
        let kubelet_config_path = d.join("kubelet.yaml");
        std::fs::write(
            &kubelet_config_path,
            serde_yaml::to_string(&kubelet_config)?,
        )?;
        let args = [
            format!("--config={}", kubelet_config_path.display()),
            format!("--hostname-override={name}"),
            format!("--root-dir={}", d.join("kubelet-root").display()),
            format!("--cert-dir={}", d.join("kubelet-pki").display()),
            "--v=1".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bin = upstream::binary("kubelet")?;
        node.kubelet = Some(cp.spawn_component(&format!("kubelet-{name}"), &bin, &args)?);
        let addr = format!("127.0.0.1:{healthz_port}");
        let healthy = crate::cluster::wait_healthz(
            "upstream kubelet /healthz",
            &addr,
            Duration::from_secs(60),
        )
        .await;
        if let Err(e) = healthy {
            let tail = node.kubelet.as_ref().map(|p| p.log_tail(40));
            node.teardown();
            bail!(
                "{e}\n--- upstream kubelet log ---\n{}",
                tail.unwrap_or_default()
            );
        }
        Ok(node)
    }

    /// The kubelet's PID.
    pub fn pid(&self) -> Result<u32> {
        self.kubelet
            .as_ref()
            .map(Process::pid)
            .context("the upstream kubelet is not running")
    }

    /// containerd's PID.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(Process::pid)
    }

    /// The kubelet, containerd and containerd's shims (one per pod sandbox).
    pub fn node_pids(&self) -> Vec<u32> {
        let mut pids = shims_of(&self.socket);
        pids.extend(self.kubelet.as_ref().map(Process::pid));
        pids.extend(self.containerd_pid());
        pids
    }

    /// Stops the kubelet, removes every container containerd still has (tasks first, which
    /// ends their shims), stops containerd and any shim of it still running, removes the
    /// bridge, the mounts under the bench's directory and the pods' cgroups, and puts back
    /// what the two changed on the host ([`HostFootprint`]); idempotent.
    pub fn teardown(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.stop(Duration::from_secs(10));
        }
        if let Some(mut c) = self.containerd.take() {
            let ctr = |args: &[&str]| {
                std::process::Command::new("ctr")
                    .arg("--address")
                    .arg(&self.socket)
                    .args(["--namespace", "k8s.io"])
                    .args(args)
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            for id in ctr(&["tasks", "ls", "-q"]).split_whitespace() {
                ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
            }
            std::thread::sleep(Duration::from_millis(500));
            for id in ctr(&["tasks", "ls", "-q"]).split_whitespace() {
                ctr(&["tasks", "delete", "--force", id]);
            }
            for id in ctr(&["containers", "ls", "-q"]).split_whitespace() {
                ctr(&["containers", "delete", id]);
            }
            c.stop(Duration::from_secs(10));
        }
        // A shim whose task could not be deleted outlives containerd (it is reparented);
        // its command line names this containerd's socket.
        for pid in shims_of(&self.socket) {
            crate::process::terminate(pid, Duration::from_secs(2));
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", BRIDGE])
            .output();
        unmount_under(self.dir.path());
        // With no QoS tiers the pods' cgroups are containerd's default parent, k8s.io/<id>
        // in each hierarchy; remove_dir only removes empty ones.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let parent = h.path().join("k8s.io");
                if let Ok(children) = std::fs::read_dir(&parent) {
                    for c in children.flatten().filter(|c| c.path().is_dir()) {
                        let _ = std::fs::remove_dir(c.path());
                    }
                }
                let _ = std::fs::remove_dir(parent);
            }
        }
        self.host.restore();
    }
}

/// The PIDs of containerd-shim-runc-v2 processes serving the containerd at `socket`.
fn shims_of(socket: &Path) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let socket = socket.as_os_str().as_encoded_bytes();
    procs
        .flatten()
        .filter_map(|p| {
            let pid: u32 = p.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(p.path().join("cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0);
            let is_shim = args
                .next()
                .is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
            (is_shim && args.any(|a| a == socket)).then_some(pid)
        })
        .collect()
}

impl Drop for UpstreamNode {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Unmounts everything mounted below `dir` (deepest first), so the temp dir can go.
fn unmount_under(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = std::process::Command::new("umount")
            .args(["--lazy", p])
            .output();
    }
}

/// containerd's version (`containerd --version`'s third word), for the report.
pub fn containerd_version() -> String {
    std::process::Command::new("containerd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}
