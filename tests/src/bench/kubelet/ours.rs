//! Our kubelet as the node under test: started with its own root dir, node name, pod
//! range and ports, and reset afterwards (`ferrokube-kubelet reset`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use super::POD_CIDR;
use crate::process::Process;
use crate::{ControlPlane, controlplane, procstat};

/// The argument our kubelet re-executes itself with as a container's shim
/// (`ferrokube_kubelet::runtime::SHIM_ARG`; the harness does not link the kubelet crate).
const SHIM_ARG: &str = "--ferrokube-container-shim";

/// Our kubelet on this machine, with its own root dir, node name, pod range and ports.
pub struct KubeletNode {
    name: String,
    bin: PathBuf,
    process: Option<Process>,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl KubeletNode {
    /// Starts our kubelet against `cp` and waits for its /healthz.
    pub async fn start(cp: &ControlPlane, bin: &Path, name: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferrokube-kbench-")
            .tempdir()?;
        let root = dir.path().join("root");
        let healthz_port = controlplane::free_port()?;
        let api_port = controlplane::free_port()?;
        let args = [
            format!("--hostname-override={name}"),
            format!("--root-dir={}", root.display()),
            format!("--pod-logs-dir={}", dir.path().join("pod-logs").display()),
            format!("--pod-cidr={POD_CIDR}"),
            format!("--healthz-port={healthz_port}"),
            format!("--port={api_port}"),
            format!("--client-ca-file={}", cp.pki.ca.pair.cert_path.display()),
            // Memory as upstream; the disk threshold off (as kind does), so a build
            // machine's full disk does not taint the node mid-run.
            "--eviction-hard=memory.available<100Mi,nodefs.available<0%".to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut node = Self {
            name: name.to_string(),
            bin: bin.to_path_buf(),
            process: Some(cp.spawn_component(&format!("kubelet-{name}"), bin, &args)?),
            root,
            _dir: dir,
        };
        let addr = format!("127.0.0.1:{healthz_port}");
        let healthy =
            crate::cluster::wait_healthz("kubelet /healthz", &addr, Duration::from_secs(30)).await;
        if let Err(e) = healthy {
            let tail = node.process.as_ref().map(|p| p.log_tail(30));
            node.teardown();
            bail!("{e}\n--- kubelet log ---\n{}", tail.unwrap_or_default());
        }
        Ok(node)
    }

    /// The kubelet's PID.
    pub fn pid(&self) -> Result<u32> {
        self.process
            .as_ref()
            .map(Process::pid)
            .context("the kubelet is not running")
    }

    /// The kubelet and its containers' shims (the kubelet is also the runtime).
    pub fn node_pids(&self) -> Vec<u32> {
        let Some(kubelet) = self.process.as_ref().map(Process::pid) else {
            return Vec::new();
        };
        let shim_arg = SHIM_ARG.as_bytes();
        let mut pids: Vec<u32> = procstat::children(kubelet)
            .into_iter()
            .filter(|c| {
                std::fs::read(format!("/proc/{c}/cmdline"))
                    .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|a| a == shim_arg))
            })
            .collect();
        pids.push(kubelet);
        pids
    }

    /// Stops the kubelet and removes every container, mount, netns, bridge and cgroup it
    /// made (`ferrokube-kubelet reset`); idempotent.
    pub fn teardown(&mut self) {
        let Some(mut p) = self.process.take() else {
            return;
        };
        p.stop(Duration::from_secs(10));
        crate::node::reset(&self.bin, &self.root, &self.name);
    }
}

impl Drop for KubeletNode {
    fn drop(&mut self) {
        self.teardown();
    }
}
