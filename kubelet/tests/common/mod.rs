//! Shared set-up for the kubelet's end-to-end tests: a kubelet per test node, and a
//! teardown that leaves no containers, mounts, network namespaces, bridges or cgroups.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrokube_tests::process::Process;
use ferrokube_tests::{ControlPlane, wait};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

/// The binary under test, built by cargo for this test run.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferrokube-kubelet"))
}

/// Whether this machine can run pods (root, runc, CNI plugins); tests say why they skip.
pub fn can_run_pods() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    for p in [
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        "/bin/busybox",
    ] {
        if !Path::new(p).exists() {
            return Err(format!("{p} is missing (hack/provision.sh installs it)"));
        }
    }
    Ok(())
}

/// A kubelet under test and everything it made on the host.
pub struct Kubelet {
    /// The process (stopped on drop).
    pub process: Option<Process>,
    /// The node name.
    pub name: String,
    /// `--root-dir`.
    pub root: PathBuf,
    /// `--pod-logs-dir`.
    pub logs: PathBuf,
    /// The pod range.
    pub cidr: String,
    /// Port of /healthz.
    pub healthz_port: u16,
    /// Port of the authenticated kubelet API (distinct per kubelet on one machine).
    pub api_port: u16,
    /// The control plane's CA, which client certificates of the kubelet API must chain to.
    pub client_ca: PathBuf,
    /// The flags beyond the harness's own, kept for [`Kubelet::restart`].
    extra: Vec<String>,
    _dir: tempfile::TempDir,
}

/// The test kubelets' eviction thresholds: memory as upstream, disk off (as kind configures
/// its nodes), so a build machine's full disk does not taint the test nodes.
pub const EVICTION_HARD: &str = "--eviction-hard=memory.available<100Mi,nodefs.available<0%";

/// Starts a kubelet for node `name` with pod range `cidr` and waits for /healthz.
pub async fn start(cp: &ControlPlane, name: &str, cidr: &str) -> anyhow::Result<Kubelet> {
    start_with(cp, name, cidr, &[EVICTION_HARD]).await
}

/// [`start`] with `extra` flags instead of the default eviction thresholds.
pub async fn start_with(
    cp: &ControlPlane,
    name: &str,
    cidr: &str,
    extra: &[&str],
) -> anyhow::Result<Kubelet> {
    let dir = tempfile::Builder::new()
        .prefix("ferrokube-kubelet-")
        .tempdir()?;
    let root = dir.path().join("root");
    let logs = dir.path().join("pods-logs");
    let healthz_port = ferrokube_tests::controlplane::free_port()?;
    let api_port = ferrokube_tests::controlplane::free_port()?;
    let mut k = Kubelet {
        process: None,
        name: name.to_string(),
        root,
        logs,
        cidr: cidr.to_string(),
        healthz_port,
        api_port,
        client_ca: cp.pki.ca.pair.cert_path.clone(),
        extra: extra.iter().map(ToString::to_string).collect(),
        _dir: dir,
    };
    let args = k.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    k.process = Some(cp.spawn_component(&format!("kubelet-{name}"), binary(), &args)?);
    let addr = format!("127.0.0.1:{healthz_port}");
    wait::until(
        "kubelet /healthz",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let addr = addr.clone();
            async move {
                match ferrokube_tests::cluster::http_status(&addr, "/healthz").await? {
                    200 => Ok(()),
                    s => Err(format!("status {s}")),
                }
            }
        },
    )
    .await?;
    Ok(k)
}

impl Kubelet {
    /// The kubelet's flags (the same on a restart).
    fn args(&self) -> Vec<String> {
        vec![
            format!("--hostname-override={}", self.name),
            format!("--root-dir={}", self.root.display()),
            format!("--pod-logs-dir={}", self.logs.display()),
            format!("--pod-cidr={}", self.cidr),
            format!("--healthz-port={}", self.healthz_port),
            format!("--port={}", self.api_port),
            format!("--client-ca-file={}", self.client_ca.display()),
            "--v=3".to_string(),
            "--sync-frequency=2s".to_string(),
        ]
        .into_iter()
        .chain(self.extra.iter().cloned())
        .collect()
    }

    /// Starts the kubelet process again on the same root dir (after [`stop`](Self::stop)).
    pub async fn restart(&mut self, cp: &ControlPlane) -> anyhow::Result<()> {
        self.stop();
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.process = Some(cp.spawn_component(
            &format!("kubelet-{}-restarted", self.name),
            binary(),
            &args,
        )?);
        let addr = format!("127.0.0.1:{}", self.healthz_port);
        wait::until(
            "restarted kubelet /healthz",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let addr = addr.clone();
                async move {
                    match ferrokube_tests::cluster::http_status(&addr, "/healthz").await? {
                        200 => Ok(()),
                        s => Err(format!("status {s}")),
                    }
                }
            },
        )
        .await?;
        Ok(())
    }

    /// Stops the kubelet process (containers keep running, as upstream).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Removes every trace of this kubelet from the host (`ferrokube-kubelet reset`).
    pub fn teardown(&mut self) {
        self.stop();
        let failures = ferrokube_kubelet::reset::reset(&ferrokube_kubelet::reset::ResetFlags {
            root_dir: self.root.clone(),
            hostname_override: self.name.clone(),
            cgroup_root: "/".to_string(),
        });
        if !failures.is_empty() {
            eprintln!("teardown of kubelet {}: {failures:?}", self.name);
        }
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Makes namespace `ns` usable for pods: the `default` ServiceAccount and the
/// `kube-root-ca.crt` ConfigMap that the controller-manager would create.
pub async fn prepare_namespace(cp: &ControlPlane, ns: &str) -> anyhow::Result<()> {
    let kubectl = cp.kubectl()?;
    if ns != "default" {
        kubectl.ok(["create", "namespace", ns]).await?;
    }
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": ns},
             "data": {"ca.crt": cp.pki.ca.pair.cert_pem}},
        ],
    });
    kubectl.apply(&manifest.to_string()).await?;
    Ok(())
}

/// Waits until pod `ns/name` satisfies `check` (which says what it saw otherwise).
pub async fn pod_until<T>(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Pod) -> Result<T, String>,
) -> anyhow::Result<T> {
    let api: Api<Pod> = Api::namespaced(cp.client().await?, ns);
    let check = &check;
    let out = wait::until(what, timeout, Duration::from_millis(200), || {
        let api = api.clone();
        async move {
            let pod = api
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("pod not found")?;
            check(&pod).map_err(|e| {
                format!(
                    "{e}; status: {}",
                    serde_json::to_string(&pod.status).unwrap_or_default()
                )
            })
        }
    })
    .await?;
    Ok(out)
}

/// The waiting reason of the pod's first container, if waiting.
pub fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

/// `GET path` on `addr`, retried while the server is not listening yet (a container counts
/// as running before its process has bound its port, as upstream).
pub async fn http_get_until(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let out = wait::until(
        &format!("GET {addr}{path}"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async move { ferrokube_tests::cluster::http_get(addr, path).await },
    )
    .await?;
    Ok(out)
}
