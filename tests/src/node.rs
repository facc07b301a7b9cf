//! A ferrokube kubelet under test: started against a [`ControlPlane`] for one test node,
//! restarted, stopped, and torn down so that it leaves no containers, mounts, network
//! namespaces, bridges or cgroups behind.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let cp = ferrokube_tests::ControlPlane::start().await?;
//! ferrokube_tests::node::can_run_pods().map_err(anyhow::Error::msg)?;
//! ferrokube_tests::node::prepare_namespace(&cp, "default").await?;
//! let mut kubelet = ferrokube_tests::node::start(&cp, "node-a", "198.18.40.0/24").await?;
//! // ... create pods ...
//! kubelet.teardown();
//! # Ok(()) }
//! ```
//!
//! This library does not link the kubelet: it runs the `ferrokube-kubelet` binary, found
//! beside the test binary ([`sibling_binary`]) unless a test passes its own path (the
//! kubelet crate's tests pass `env!("CARGO_BIN_EXE_ferrokube-kubelet")`), and tears down
//! with that binary's `reset` subcommand.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;

use crate::ControlPlane;
use crate::images::ImageBuilder;
use crate::process::Process;
use crate::registry::Registry;

/// The kubelet binary's file name.
pub const KUBELET: &str = "ferrokube-kubelet";

/// The test kubelets' eviction thresholds: memory as upstream, disk off (as kind configures
/// its nodes), so a build machine's full disk does not taint the test nodes.
pub const EVICTION_HARD: &str = "--eviction-hard=memory.available<100Mi,nodefs.available<0%";

/// The workspace binary `name` beside the running test binary: cargo puts test binaries in
/// `target/<profile>/deps` and the workspace's binaries in `target/<profile>`. Fails with
/// the command that builds it, so a missing component is never a silent skip.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test binary")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} has no grandparent directory", exe.display()))?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} is missing: build it first (cargo build --bins -p {name}, or cargo test --workspace)",
        path.display()
    );
    Ok(path)
}

/// Whether this machine can run pods (root, runc, CNI plugins, busybox); the error says
/// what is missing. Tests fail on it rather than skip.
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
    /// The kubelet binary (also used for `reset` on teardown).
    pub binary: PathBuf,
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
    /// Whether [`Kubelet::teardown`] already ran (drop then does nothing).
    torn_down: bool,
    _dir: tempfile::TempDir,
}

/// Starts the sibling kubelet binary for node `name` with pod range `cidr` and the default
/// eviction thresholds, and waits for its /healthz.
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
    start_binary(cp, &sibling_binary(KUBELET)?, name, cidr, extra).await
}

/// [`start_with`] running the kubelet at `binary`.
pub async fn start_binary(
    cp: &ControlPlane,
    binary: &Path,
    name: &str,
    cidr: &str,
    extra: &[&str],
) -> anyhow::Result<Kubelet> {
    let dir = tempfile::Builder::new()
        .prefix("ferrokube-kubelet-")
        .tempdir()?;
    let root = dir.path().join("root");
    let logs = dir.path().join("pods-logs");
    let healthz_port = crate::controlplane::free_port()?;
    let api_port = crate::controlplane::free_port()?;
    let mut k = Kubelet {
        process: None,
        binary: binary.to_path_buf(),
        name: name.to_string(),
        root,
        logs,
        cidr: cidr.to_string(),
        healthz_port,
        api_port,
        client_ca: cp.pki.ca.pair.cert_path.clone(),
        extra: extra.iter().map(ToString::to_string).collect(),
        torn_down: false,
        _dir: dir,
    };
    k.spawn(cp, &format!("kubelet-{name}"), "kubelet /healthz")
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

    /// Runs the process as control-plane component `component` and waits for /healthz.
    async fn spawn(
        &mut self,
        cp: &ControlPlane,
        component: &str,
        what: &str,
    ) -> anyhow::Result<()> {
        let args = self.args();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.process = Some(cp.spawn_component(component, &self.binary, &args)?);
        self.torn_down = false;
        let addr = format!("127.0.0.1:{}", self.healthz_port);
        crate::cluster::wait_healthz(what, &addr, Duration::from_secs(30)).await?;
        Ok(())
    }

    /// Starts the kubelet process again on the same root dir (after [`stop`](Self::stop)).
    pub async fn restart(&mut self, cp: &ControlPlane) -> anyhow::Result<()> {
        self.stop();
        let component = format!("kubelet-{}-restarted", self.name);
        self.spawn(cp, &component, "restarted kubelet /healthz")
            .await
    }

    /// Stops the kubelet process (containers keep running, as upstream).
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Stops the kubelet and removes every trace of it from the host with
    /// `ferrokube-kubelet reset`; failures are printed, since a test cleaning up has
    /// nothing better to do with them. Idempotent (drop calls it again).
    pub fn teardown(&mut self) {
        self.stop();
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        reset(&self.binary, &self.root, &self.name);
    }
}

/// Runs `<binary> reset` for the node `name` rooted at `root`, printing what failed: a
/// test or benchmark cleaning up has nothing better to do with it.
pub fn reset(binary: &Path, root: &Path, name: &str) {
    let out = std::process::Command::new(binary)
        .arg("reset")
        .arg(format!("--root-dir={}", root.display()))
        .arg(format!("--hostname-override={name}"))
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "ferrokube-kubelet reset for node {name} exited {}: {}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => eprintln!("running {} reset for node {name}: {e}", binary.display()),
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A test's clean-up: deletes every pod in `ns` and waits (up to 120 s) until the kubelets
/// have stopped them, so their teardown finds nothing running. Failures are ignored: the
/// teardown that follows removes whatever is left.
pub async fn delete_all_pods(kubectl: &crate::Kubectl, ns: &str) {
    let _ = kubectl
        .ok([
            "delete",
            "pods",
            "--all",
            "-n",
            ns,
            "--wait=true",
            "--timeout=120s",
        ])
        .await;
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

/// Our controller-manager (running `controllers`) and scheduler against `cp`, found beside
/// the test binary: what a full-stack test with real nodes needs above the kubelet. Both
/// stop when the returned processes drop.
pub fn start_control_components(
    cp: &ControlPlane,
    controllers: &str,
) -> anyhow::Result<(Process, Process)> {
    let kcm = sibling_binary("ferrokube-controller-manager")?;
    let scheduler = sibling_binary("ferrokube-scheduler")?;
    let kcm_port = crate::controlplane::free_port()?;
    let sched_port = crate::controlplane::free_port()?;
    let kcm = cp.spawn_component(
        "controller-manager",
        &kcm,
        &[
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            &format!("--secure-port={kcm_port}"),
            &format!("--controllers={controllers}"),
        ],
    )?;
    let scheduler = cp.spawn_component(
        "scheduler",
        &scheduler,
        &[
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            &format!("--secure-port={sched_port}"),
        ],
    )?;
    Ok((kcm, scheduler))
}

/// One node's worth of cluster for an end-to-end test, started the way every kubelet and
/// Ingress test starts it: a registry holding the test's images, the control plane, the
/// test namespace made usable for pods, one kubelet and, when asked, our controller-manager
/// and scheduler.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use ferrokube_tests::{images::ImageBuilder, node::Stack};
/// let stack = Stack::builder("demo", "node-a", "198.18.40.0/24")
///     .image("bb", "1", ImageBuilder::busybox()?)
///     .start()
///     .await?;
/// let result: anyhow::Result<()> = Ok(()); // ... the scenario, on stack.cp ...
/// stack.finish(result).await
/// # }
/// ```
pub struct Stack {
    /// Our controller-manager and scheduler, when asked for (stopped on drop). The fields
    /// drop in this order: components first, the registry last.
    _control: Option<(Process, Process)>,
    /// The node.
    pub kubelet: Kubelet,
    /// The control plane.
    pub cp: ControlPlane,
    /// The registry with the images pushed at start; image references begin with its `addr`.
    pub registry: Registry,
    /// Where the test's pods go.
    pub ns: String,
}

/// What a [`Stack`] starts with.
pub struct StackBuilder {
    ns: String,
    node: String,
    cidr: String,
    images: Vec<(String, String, ImageBuilder)>,
    kubelet_binary: Option<PathBuf>,
    options: Option<crate::controlplane::Options>,
    controllers: Option<String>,
}

impl Stack {
    /// A stack with namespace `ns` and one node `node` whose pods get addresses from `cidr`
    /// (distinct per test: tests run side by side on one host).
    pub fn builder(ns: &str, node: &str, cidr: &str) -> StackBuilder {
        StackBuilder {
            ns: ns.to_string(),
            node: node.to_string(),
            cidr: cidr.to_string(),
            images: Vec::new(),
            kubelet_binary: None,
            options: None,
            controllers: None,
        }
    }

    /// Ends the test: on failure prints the error and the control plane's recent logs, then
    /// deletes the namespace's pods and tears the node down. Returns `result`.
    pub async fn finish(mut self, result: anyhow::Result<()>) -> anyhow::Result<()> {
        if let Err(e) = &result {
            eprintln!("{e:#}\n{}", self.cp.logs(80));
        }
        match self.cp.kubectl() {
            Ok(kubectl) => delete_all_pods(&kubectl, &self.ns).await,
            Err(e) => eprintln!("no kubectl for the clean-up: {e:#}"),
        }
        self.kubelet.teardown();
        result
    }
}

impl StackBuilder {
    /// Pushes `image` as `<registry>/<repository>:<tag>` before anything else starts.
    pub fn image(mut self, repository: &str, tag: &str, image: ImageBuilder) -> Self {
        self.images
            .push((repository.to_string(), tag.to_string(), image));
        self
    }

    /// Runs the kubelet at `binary` instead of the one beside the test binary.
    pub fn kubelet_binary(mut self, binary: &Path) -> Self {
        self.kubelet_binary = Some(binary.to_path_buf());
        self
    }

    /// Starts the control plane with `options`.
    pub fn control_plane(mut self, options: crate::controlplane::Options) -> Self {
        self.options = Some(options);
        self
    }

    /// Also runs our controller-manager with `controllers`, and our scheduler.
    pub fn controllers(mut self, controllers: &str) -> Self {
        self.controllers = Some(controllers.to_string());
        self
    }

    /// Starts everything, failing (never skipping) when this host cannot run pods or a
    /// component binary is missing.
    pub async fn start(self) -> anyhow::Result<Stack> {
        can_run_pods().map_err(anyhow::Error::msg)?;
        let binary = match self.kubelet_binary {
            Some(b) => b,
            None => sibling_binary(KUBELET)?,
        };
        let registry = Registry::start().await?;
        for (repository, tag, image) in &self.images {
            image.push(&registry.addr, repository, tag).await?;
        }
        let cp = match self.options {
            Some(o) => ControlPlane::start_with(o).await?,
            None => ControlPlane::start().await?,
        };
        prepare_namespace(&cp, &self.ns).await?;
        let kubelet = start_binary(&cp, &binary, &self.node, &self.cidr, &[EVICTION_HARD]).await?;
        let control = self
            .controllers
            .map(|c| start_control_components(&cp, &c))
            .transpose()?;
        Ok(Stack {
            _control: control,
            kubelet,
            cp,
            registry,
            ns: self.ns,
        })
    }
}
