//! The upstream peer: kube's own kubelet (built by `hack/provision.sh`) on Debian's
//! containerd 1.6 (CRI), both with their own root, state, socket, CNI network and ports.
//!
//! containerd's and the kubelet's configuration files are generated here from this
//! program's own values (temp paths, loopback ports, the bench's image names); nothing in
//! them comes from outside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::cluster::which;
use crate::process::{Lifetime, Process};
use crate::{ControlPlane, controlplane, upstream, wait};

/// The upstream node's pod range (ours uses 198.18.200.0/24).
const POD_CIDR: &str = "198.18.201.0/24";
/// containerd's CNI bridge for the bench (fixed: one upstream node per run).
const BRIDGE: &str = "kbenchup0";

/// Why `hack/provision.sh` does not build upstream's kubelet yet: tried on the build
/// machines (Debian 12, cgroups v1 hybrid) with kubelet v1.36.3 built from the wrapper module
/// and Debian's containerd 1.6.20, the node registers and pulls images, but every pod
/// sandbox fails in runc.
const NOT_PROVISIONED: &str = "upstream kubelet v1.36.3 is not provisioned: it builds from \
    the wrapper module and Debian's containerd 1.6.20 installs, but on this machine every pod \
    sandbox fails: \"RunPodSandbox ... failed to create shim task: OCI runtime create failed: \
    runc create failed: unable to start container process: can't get final child's PID from \
    pipe: EOF\"";

/// What is missing for the upstream peer, if anything.
pub fn unavailable() -> Option<String> {
    if upstream::binary("kubelet").is_err() {
        return Some(NOT_PROVISIONED.into());
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
        let socket = d.join("containerd.sock");
        let net_d = d.join("net.d");
        std::fs::create_dir_all(&net_d)?;
        let conflist = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "kbench",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": true, "ipMasq": false,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                          "dataDir": d.join("ipam"),
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "loopback"},
            ],
        });
        std::fs::write(net_d.join("10-kbench.conflist"), conflist.to_string())?;
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
"#,
            root = d.join("containerd-root").display(),
            state = d.join("containerd-state").display(),
            socket = socket.display(),
            net_d = net_d.display(),
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
        let healthy = wait::until(
            "upstream kubelet /healthz",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let addr = addr.clone();
                async move {
                    match crate::cluster::http_status(&addr, "/healthz").await? {
                        200 => Ok(()),
                        s => Err(format!("status {s}")),
                    }
                }
            },
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

    /// Stops the kubelet, removes every container containerd still has (tasks first, which
    /// ends their shims), stops containerd, and removes the bridge and the mounts under the
    /// bench's directory; idempotent.
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
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", BRIDGE])
            .output();
        unmount_under(self.dir.path());
        // containerd's cgroup parent (no QoS tiers); rmdir only removes it when empty.
        if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
            for h in hierarchies.flatten() {
                let _ = std::fs::remove_dir(h.path().join("k8s.io"));
            }
        }
    }
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
