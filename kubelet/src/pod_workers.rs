//! Pod workers: one task per pod on this node, each converging the pod's containers on its
//! spec (level-triggered: every pass reads the pod and the containers' actual state and
//! acts on the difference) and posting pod status when it changes.
//!
//! ```text
//!   pod informer (spec.nodeName=<node>) ─▶ manager ─▶ worker per pod UID
//!                                                       │ sandbox: netns + CNI ADD
//!                                                       │ volumes
//!                                                       │ init containers in order, then app containers
//!                                                       │   image pull ─▶ overlay rootfs ─▶ OCI spec ─▶ runc
//!                                                       │ status patch (only on change)
//!                                                       └ deletion: SIGTERM, grace, SIGKILL, teardown, API delete
//! ```
//!
//! All state a worker needs survives a kubelet restart on disk (`<root>/pods/<uid>/`), so a
//! new kubelet adopts running containers instead of restarting them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ferrokube_runtime::events::{EventType, Recorder, reference};
use ferrokube_runtime::informer::{Informer, Notification};
use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, LifecycleHandler, Pod, PodCondition, PodIP,
    PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use oci_client::secrets::RegistryAuth;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::images::reference::canonical_registry;
use crate::images::{Image, ImageStore};
use crate::network::{Attachment, Ipv4Cidr, Network};
use crate::options::Config;
use crate::probes;
use crate::runtime::{self, BindMount, Exit, Runtime, SpecInput, State};

/// What every pod worker shares.
pub struct Kubelet {
    /// The effective configuration.
    pub config: Config,
    /// The apiserver client.
    pub client: kube::Client,
    /// Events about pods.
    pub recorder: Recorder,
    /// The image store.
    pub images: ImageStore,
    /// The container runtime.
    pub runtime: Arc<dyn Runtime>,
    /// Pod networking.
    pub network: Network,
    /// The node's pod range (from Node.spec.podCIDR, or `--pod-cidr`).
    pub pod_cidr: watch::Receiver<Option<Ipv4Cidr>>,
}

impl Kubelet {
    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.root_dir.join("pods").join(sanitize(uid))
    }

    fn log_dir(&self, pod: &Pod) -> PathBuf {
        pod_log_dir(&self.config.pod_logs_dir, pod)
    }

    fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: impl Into<String>) {
        self.recorder
            .publish(reference(pod), type_, reason, reason, note);
    }
}

/// Keeps only what a UID may contain, so it can be part of a path or an id.
pub fn sanitize(uid: &str) -> String {
    uid.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect()
}

/// The pod's CRI log directory: `<logs root>/<namespace>_<name>_<uid>`, as upstream.
pub fn pod_log_dir(logs_root: &Path, pod: &Pod) -> PathBuf {
    let m = &pod.metadata;
    logs_root.join(format!(
        "{}_{}_{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default(),
        sanitize(m.uid.as_deref().unwrap_or_default())
    ))
}

/// The runc id of attempt `attempt` of container `name` in pod `uid`.
pub fn container_id(uid: &str, name: &str, attempt: u32) -> String {
    format!("{}-{}-{}", sanitize(uid), name, attempt)
}

/// Where the attempts of container `name` of pod `uid` keep their bundles.
pub fn container_dir(root_dir: &Path, uid: &str, name: &str) -> PathBuf {
    root_dir
        .join("pods")
        .join(sanitize(uid))
        .join("containers")
        .join(name)
}

/// The attempts (instances) container `name` of pod `uid` has had, oldest first.
pub fn container_attempts(root_dir: &Path, uid: &str, name: &str) -> Vec<u32> {
    let mut attempts: Vec<u32> = std::fs::read_dir(container_dir(root_dir, uid, name))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .collect();
    attempts.sort_unstable();
    attempts
}

/// Runs the pod manager until `shutdown`: one worker per pod the informer reports.
pub async fn run(k: Arc<Kubelet>, informer: Informer<Pod>, shutdown: CancellationToken) {
    let mut events = informer.subscribe();
    let store = informer.store();
    store.wait_synced().await;
    cleanup_orphans(&k, &store.list()).await;
    let mut workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    // upstream checks image disk usage every 5 minutes.
    let mut gc_tick = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = gc_tick.tick() => {
                let in_use: std::collections::HashSet<String> = store
                    .list()
                    .iter()
                    .filter_map(|p| p.spec.as_ref())
                    .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                    .filter_map(|c| c.image.clone())
                    .collect();
                let (high, low) = (k.config.image_gc_high_threshold, k.config.image_gc_low_threshold);
                let removed = k.images.gc(&in_use, high, low);
                if removed > 0 {
                    tracing::info!(removed, "image garbage collection removed unused layers");
                }
            }
            Some(uid) = done_rx.recv() => {
                if workers.get(&uid).is_some_and(|tx| tx.borrow().is_none()) {
                    workers.remove(&uid);
                }
            }
            n = events.recv() => {
                let Some(n) = n else { return };
                let (pod, gone) = match &n {
                    Notification::Added(p) | Notification::Updated { new: p, .. } => (p.clone(), false),
                    Notification::Deleted(p) => (p.clone(), true),
                };
                let Some(uid) = pod.metadata.uid.clone() else { continue };
                let value = if gone { None } else { Some(pod.clone()) };
                if let Some(tx) = workers.get(&uid) {
                    let _ = tx.send(value);
                    continue;
                }
                let mut value = value;
                if let Some(p) = &value
                    && !k.pod_dir(&uid).exists()
                    && let Some(rejected) = admit(&k, p, &store.list(), &workers).await
                {
                    value = Some(rejected);
                }
                let pod = value.clone().unwrap_or(pod);
                let (tx, rx) = watch::channel(value);
                workers.insert(uid.clone(), tx);
                let (k, shutdown, done) = (k.clone(), shutdown.clone(), done_tx.clone());
                tokio::spawn(async move {
                    worker(k, pod, rx, shutdown).await;
                    let _ = done.send(uid);
                });
            }
        }
    }
}

/// CPU (milli) and memory (bytes) a pod requests: its app containers' sum, or its largest
/// init container when that is more (upstream's effective request).
pub fn pod_requests(pod: &Pod) -> (i128, i128) {
    let req = |c: &Container, name: &str| {
        c.resources
            .as_ref()
            .and_then(|r| {
                r.requests
                    .as_ref()
                    .and_then(|m| m.get(name))
                    .or(r.limits.as_ref().and_then(|m| m.get(name)))
            })
            .and_then(|q| runtime::parse_quantity_milli(&q.0))
            .unwrap_or(0)
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let sum = |name: &str| spec.containers.iter().map(|c| req(c, name)).sum::<i128>();
    let init_max = |name: &str| {
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| req(c, name))
            .max()
            .unwrap_or(0)
    };
    (
        sum("cpu").max(init_max("cpu")),
        (sum("memory").max(init_max("memory"))) / 1000,
    )
}

/// Admission against allocatable and host ports, as upstream's predicate admit handler: a
/// pod that does not fit is failed with `OutOf<resource>` (or `NodePorts`) and never
/// started. Returns the rejected pod.
async fn admit(
    k: &Kubelet,
    pod: &Pod,
    all: &[Arc<Pod>],
    admitted: &HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
) -> Option<Arc<Pod>> {
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if pod.metadata.deletion_timestamp.is_some() || matches!(phase, "Succeeded" | "Failed") {
        return None;
    }
    let active: Vec<&Arc<Pod>> = all
        .iter()
        .filter(|p| {
            p.metadata
                .uid
                .as_ref()
                .is_some_and(|u| admitted.contains_key(u))
        })
        .filter(|p| {
            !matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            )
        })
        .collect();
    let facts = crate::node_status::HostFacts::read(&k.config.root_dir);
    let (_, allocatable) =
        crate::node_status::resources(&facts, k.config.max_pods, &k.config.eviction_hard);
    let cap = |name: &str, scale: i128| {
        allocatable
            .get(name)
            .and_then(|q| runtime::parse_quantity_milli(&q.0))
            .map_or(0, |v| v / scale)
    };
    let (cpu, mem) = pod_requests(pod);
    let (used_cpu, used_mem) = active
        .iter()
        .map(|p| pod_requests(p))
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    let checks = [
        (
            "pods",
            1,
            active.len() as i128,
            i128::from(k.config.max_pods),
        ),
        ("cpu", cpu, used_cpu, cap("cpu", 1)),
        ("memory", mem, used_mem, cap("memory", 1000)),
    ];
    let (reason, message) = match checks
        .into_iter()
        .find(|(_, r, u, c)| *r > 0 && r + u > *c)
    {
        Some((resource, requested, used, capacity)) => (
            format!("OutOf{resource}"),
            format!(
                "Pod was rejected: Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
            ),
        ),
        None if host_ports_conflict(pod, &active) => (
            "NodePorts".to_string(),
            "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
                .to_string(),
        ),
        None => return None,
    };
    k.event(pod, EventType::Warning, &reason, message.clone());
    let (ns, name) = pod_names(pod);
    let api: Api<Pod> = Api::namespaced(k.client.clone(), &ns);
    let patch = json!({"status": {"phase": "Failed", "reason": reason, "message": message}});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(p) => Some(Arc::new(p)),
        Err(e) => {
            tracing::warn!(pod = %name, error = %e, "rejecting a pod");
            None
        }
    }
}

/// Whether a `hostPort` of `pod` is already taken by one of `active` (the pod itself
/// aside), with upstream's rule: same protocol and port, and the same host IP or either one
/// being the wildcard. hostNetwork pods count through the hostPort the apiserver defaults
/// to their containerPort.
fn host_ports_conflict(pod: &Pod, active: &[&Arc<Pod>]) -> bool {
    let wildcard = |ip: &Option<String>| ip.as_deref().is_none_or(|ip| ip == "0.0.0.0");
    let wanted = crate::network::port_mappings(pod);
    active
        .iter()
        .filter(|p| p.metadata.uid != pod.metadata.uid)
        .flat_map(|p| crate::network::port_mappings(p))
        .any(|used| {
            wanted.iter().any(|w| {
                w.host_port == used.host_port
                    && w.protocol == used.protocol
                    && (wildcard(&w.host_ip)
                        || wildcard(&used.host_ip)
                        || w.host_ip == used.host_ip)
            })
        })
}

/// Pods whose directories exist but that the apiserver no longer has: stop and remove.
async fn cleanup_orphans(k: &Arc<Kubelet>, pods: &[Arc<Pod>]) {
    let Ok(rd) = std::fs::read_dir(k.config.root_dir.join("pods")) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let uid = e.file_name().to_string_lossy().into_owned();
        if pods
            .iter()
            .any(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
        {
            continue;
        }
        tracing::info!(%uid, "removing an orphaned pod");
        teardown_pod(k, &uid, None).await;
    }
}

/// In-memory state of one container name across its restarts.
#[derive(Debug, Default)]
struct ContainerTrack {
    /// Why it is waiting, when it is.
    waiting: Option<(String, String)>,
    /// Failed starts in a row that did not run long (drives CrashLoopBackOff).
    crashes: u32,
    /// When the last exit was seen.
    exited_seen: Option<Instant>,
    /// Readiness probe result.
    ready: bool,
    /// Probe results so far for the running instance.
    probe: probes::ProbeState,
    /// TERM sent at this time (deletion or liveness restart).
    term_sent: Option<Instant>,
    /// When a start last failed for a configuration reason (retried after a pause, not on
    /// every pass, so a missing ConfigMap does not cost two API reads a second).
    config_failed_at: Option<Instant>,
}

/// How long a start that failed for its configuration waits before it is tried again.
const CONFIG_RETRY: Duration = Duration::from_secs(2);

/// An image whose pulls are failing.
#[derive(Debug)]
struct PullBackoff {
    failures: u32,
    next: Instant,
    message: String,
}

struct Worker {
    k: Arc<Kubelet>,
    uid: String,
    dir: PathBuf,
    sandbox: Option<Attachment>,
    volumes: Option<(HashMap<String, PathBuf>, Instant)>,
    /// The last volume set-up failure and when it happened (retried after CONFIG_RETRY).
    volumes_failed: Option<(String, Instant)>,
    tracks: HashMap<String, ContainerTrack>,
    pulls: HashMap<String, PullBackoff>,
    last_status: Option<serde_json::Value>,
    start_time: Time,
    deleted_via_api: bool,
}

async fn worker(
    k: Arc<Kubelet>,
    first: Arc<Pod>,
    mut rx: watch::Receiver<Option<Arc<Pod>>>,
    shutdown: CancellationToken,
) {
    let uid = first.metadata.uid.clone().unwrap_or_default();
    let dir = k.pod_dir(&uid);
    let sandbox = std::fs::read_to_string(dir.join("sandbox.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let start_time = first
        .status
        .as_ref()
        .and_then(|s| s.start_time.clone())
        .unwrap_or_else(|| Time(Timestamp::now()));
    let mut w = Worker {
        k: k.clone(),
        uid: uid.clone(),
        dir,
        sandbox,
        volumes: None,
        volumes_failed: None,
        tracks: HashMap::new(),
        pulls: HashMap::new(),
        last_status: None,
        start_time,
        deleted_via_api: false,
    };
    let mut last_pod = first;
    loop {
        let current = rx.borrow_and_update().clone();
        match current {
            None => {
                teardown_pod(&k, &uid, Some(&last_pod)).await;
                return;
            }
            Some(pod) => {
                last_pod = pod.clone();
                w.sync(&pod).await;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Restart back-off: the first restart is immediate, then 10 s doubling up to 5 minutes.
pub fn crash_backoff(crashes: u32) -> Duration {
    if crashes == 0 {
        return Duration::ZERO;
    }
    let secs = 10u64.saturating_mul(1u64 << (crashes - 1).min(10));
    Duration::from_secs(secs.min(300))
}

/// Image pull back-off after `failures` failed pulls: 10 s doubling up to 5 minutes.
pub fn pull_backoff(failures: u32) -> Duration {
    crash_backoff(failures.max(1))
}

/// A container that ran at least this long before exiting resets its back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// Where a container stands right now.
#[derive(Clone, Debug)]
struct Current {
    attempt: u32,
    id: String,
    bundle: PathBuf,
    state: State,
    started_at: Option<String>,
    image_ref: Option<String>,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    started_at: String,
    image_ref: String,
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

impl Worker {
    fn container_dir(&self, name: &str) -> PathBuf {
        self.dir.join("containers").join(name)
    }

    /// The newest instance of container `name` (the highest attempt number) and its state.
    fn current(&self, name: &str) -> Option<Current> {
        let base = self.container_dir(name);
        let attempt = std::fs::read_dir(&base)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .max()?;
        Some(self.instance(name, attempt))
    }

    fn instance(&self, name: &str, attempt: u32) -> Current {
        let bundle = self.container_dir(name).join(attempt.to_string());
        let id = container_id(&self.uid, name, attempt);
        let record: Option<Record> = std::fs::read_to_string(bundle.join("record.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let state = if record.is_some() {
            self.k.runtime.state(&id, &bundle)
        } else {
            State::Missing
        };
        Current {
            attempt,
            id,
            bundle,
            state,
            started_at: record.as_ref().map(|r| r.started_at.clone()),
            image_ref: record.map(|r| r.image_ref),
        }
    }

    async fn sync(&mut self, pod: &Arc<Pod>) {
        let deleting = pod.metadata.deletion_timestamp.is_some();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if deleting {
            self.terminate(pod).await;
            return;
        }
        if phase == "Succeeded" || phase == "Failed" {
            // Terminal pods keep their status; only the network is given back.
            self.stop_all(pod, true).await;
            self.release_network(pod).await;
            return;
        }
        let ready_to_start = self.ensure_sandbox(pod).await;
        let mut volume_error = None;
        if ready_to_start {
            volume_error = self.ensure_volumes(pod).await.err();
        }
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = restart_policy(pod).to_string();
        let mut initialized = true;
        if ready_to_start && volume_error.is_none() {
            for c in spec.init_containers.iter().flatten() {
                if c.restart_policy.as_deref() == Some("Always") {
                    // A sidecar: once started it keeps running beside the app containers,
                    // restarted whenever it exits; later init containers wait only for its
                    // start (its startup probe, when it has one).
                    match self.current(&c.name) {
                        None => {
                            initialized = false;
                            self.start(pod, c, 0).await;
                            break;
                        }
                        Some(cur) => match cur.state.clone() {
                            State::Missing => {
                                initialized = false;
                                self.start(pod, c, cur.attempt).await;
                                break;
                            }
                            State::Running => {
                                self.probe(pod, c, &cur).await;
                                if !self.tracks.get(&c.name).is_some_and(|t| t.probe.started()) {
                                    initialized = false;
                                    break;
                                }
                            }
                            State::Exited(e) => self.maybe_restart(pod, c, &e).await,
                        },
                    }
                    continue;
                }
                match self.current(&c.name).map(|cur| cur.state) {
                    Some(State::Exited(e)) if e.exit_code == 0 => continue,
                    Some(State::Running) => {
                        initialized = false;
                        break;
                    }
                    Some(State::Exited(e)) => {
                        initialized = false;
                        // upstream: a failed init container is restarted unless the pod is Never.
                        if policy != "Never" {
                            self.maybe_restart(pod, c, &e).await;
                        }
                        break;
                    }
                    Some(State::Missing) | None => {
                        initialized = false;
                        self.start(pod, c, 0).await;
                        break;
                    }
                }
            }
            if initialized {
                for c in &spec.containers {
                    match self.current(&c.name) {
                        None => self.start(pod, c, 0).await,
                        Some(cur) => match cur.state {
                            State::Missing => self.start(pod, c, cur.attempt).await,
                            State::Running => self.probe(pod, c, &cur).await,
                            State::Exited(e) => {
                                if should_restart(&policy, e.exit_code) {
                                    self.maybe_restart(pod, c, &e).await;
                                }
                            }
                        },
                    }
                }
            }
        } else {
            initialized = spec.init_containers.as_ref().is_none_or(Vec::is_empty);
        }
        let status = self.status(pod, ready_to_start, initialized);
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            self.release_network(pod).await;
        }
        self.patch_status(pod, status).await;
    }

    async fn maybe_restart(&mut self, pod: &Pod, c: &Container, exit: &Exit) {
        let Some(cur) = self.current(&c.name) else {
            return;
        };
        let finished = chrono::DateTime::parse_from_rfc3339(&exit.finished_at).ok();
        let started = cur
            .started_at
            .as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
        let ran = match (started, finished) {
            (Some(s), Some(f)) => (f - s).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        let track = self.tracks.entry(c.name.clone()).or_default();
        let seen = *track.exited_seen.get_or_insert_with(Instant::now);
        if ran >= BACKOFF_RESET {
            track.crashes = 0;
        }
        let delay = crash_backoff(track.crashes.max(if track.crashes == 0 && cur.attempt > 0 {
            0
        } else {
            track.crashes
        }));
        if seen.elapsed() < delay {
            let msg = format!(
                "back-off {} restarting failed container={} pod={}_{}({})",
                humanize(delay),
                c.name,
                pod.metadata.name.as_deref().unwrap_or_default(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
                self.uid
            );
            if track
                .waiting
                .as_ref()
                .is_none_or(|(r, _)| r != "CrashLoopBackOff")
            {
                self.k.event(
                    pod,
                    EventType::Warning,
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {}",
                        c.name,
                        pod.metadata.name.as_deref().unwrap_or_default()
                    ),
                );
            }
            track.waiting = Some(("CrashLoopBackOff".into(), msg));
            return;
        }
        track.crashes += 1;
        track.exited_seen = None;
        self.start(pod, c, cur.attempt + 1).await;
    }

    /// Pulls the image if the policy says so; sets the waiting reason on failure.
    async fn ensure_image(&mut self, pod: &Pod, c: &Container) -> Option<Image> {
        let reference = c.image.clone().unwrap_or_default();
        // A name that cannot be parsed is never pulled nor retried with backoff, as
        // upstream: the container waits with InvalidImageName until the spec changes.
        let parsed = match crate::images::reference::parse(&reference) {
            Ok(parsed) => parsed,
            Err(e) => {
                let message = format!(
                    "Failed to apply default image tag \"{reference}\": couldn't parse image name \"{reference}\": {e}"
                );
                let track = self.tracks.entry(c.name.clone()).or_default();
                if track
                    .waiting
                    .as_ref()
                    .is_none_or(|(r, _)| r != "InvalidImageName")
                {
                    self.k
                        .event(pod, EventType::Warning, "InspectFailed", message.clone());
                }
                track.waiting = Some(("InvalidImageName".into(), message));
                return None;
            }
        };
        // Upstream's default policy: Always for `:latest` (or no tag) without a digest.
        let tag_latest = parsed.digest().is_none() && parsed.tag().is_none_or(|t| t == "latest");
        let policy = c.image_pull_policy.clone().unwrap_or_else(|| {
            if tag_latest {
                "Always".into()
            } else {
                "IfNotPresent".into()
            }
        });
        let present = self.k.images.lookup(&reference);
        let track = self.tracks.entry(c.name.clone()).or_default();
        match (policy.as_str(), present) {
            ("Never", Some(img)) | ("IfNotPresent", Some(img)) => return Some(img),
            ("Never", None) => {
                track.waiting = Some((
                    "ErrImageNeverPull".into(),
                    format!(
                        "Container image \"{reference}\" is not present with pull policy of Never"
                    ),
                ));
                return None;
            }
            _ => {}
        }
        if let Some(b) = self.pulls.get(&reference)
            && Instant::now() < b.next
        {
            track.waiting = Some((
                "ImagePullBackOff".into(),
                format!("Back-off pulling image \"{reference}\": {}", b.message),
            ));
            return None;
        }
        self.k.event(
            pod,
            EventType::Normal,
            "Pulling",
            format!("Pulling image \"{reference}\""),
        );
        let began = Instant::now();
        let auth = self.pull_auth(pod, parsed.registry()).await;
        match self.k.images.pull(&reference, &parsed, &auth).await {
            Ok(img) => {
                self.pulls.remove(&reference);
                self.k.event(
                    pod,
                    EventType::Normal,
                    "Pulled",
                    format!(
                        "Successfully pulled image \"{reference}\" in {:?}",
                        began.elapsed()
                    ),
                );
                Some(img)
            }
            Err(e) => {
                let failures = self.pulls.get(&reference).map_or(0, |b| b.failures) + 1;
                let message = e.to_string();
                self.k.event(
                    pod,
                    EventType::Warning,
                    "Failed",
                    format!("Failed to pull image \"{reference}\": {message}"),
                );
                self.pulls.insert(
                    reference.clone(),
                    PullBackoff {
                        failures,
                        next: Instant::now() + pull_backoff(failures),
                        message: message.clone(),
                    },
                );
                let track = self.tracks.entry(c.name.clone()).or_default();
                track.waiting = Some(("ErrImagePull".into(), message));
                None
            }
        }
    }

    /// Credentials (dockerconfigjson) for `registry` from the pod's imagePullSecrets, anonymous without a match.
    async fn pull_auth(&self, pod: &Pod, registry: &str) -> RegistryAuth {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        for s in pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default()
        {
            if let Ok(Some(data)) = crate::volumes::secret_data(&self.k.client, &ns, &s.name).await
                && let Some(cfg) = data.get(".dockerconfigjson")
                && let Some(auth) = docker_config_auth(cfg, registry)
            {
                return auth;
            }
        }
        RegistryAuth::Anonymous
    }

    async fn ensure_sandbox(&mut self, pod: &Pod) -> bool {
        let host_network = pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        if let Err(e) = self.write_etc_files(pod) {
            tracing::warn!(error = %e, "writing pod /etc files");
            return false;
        }
        if host_network || self.sandbox.is_some() {
            return true;
        }
        let cidr = *self.k.pod_cidr.borrow();
        let Some(cidr) = cidr else {
            return false;
        };
        let (ns, name) = pod_names(pod);
        let result = match self.k.network.ensure_config(&cidr) {
            Ok(()) => {
                let ports = crate::network::port_mappings(pod);
                self.k.network.setup(&self.uid, &ns, &name, &ports).await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(att) => {
                if let Ok(text) = serde_json::to_vec(&att) {
                    let _ = std::fs::create_dir_all(&self.dir);
                    let _ = std::fs::write(self.dir.join("sandbox.json"), text);
                }
                self.sandbox = Some(att);
                let _ = self.write_etc_files(pod);
                true
            }
            Err(e) => {
                self.k.event(
                    pod,
                    EventType::Warning,
                    "FailedCreatePodSandBox",
                    format!("Failed to create pod sandbox: {e}"),
                );
                let _ = self.k.network.teardown(&self.uid, &ns, &name, None).await;
                false
            }
        }
    }

    fn pod_ip(&self, pod: &Pod) -> Option<String> {
        if pod
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false)
        {
            return Some(self.k.config.node_ip.to_string());
        }
        self.sandbox.as_ref().map(|s| s.ip.clone())
    }

    fn write_etc_files(&self, pod: &Pod) -> std::io::Result<()> {
        let etc = self.dir.join("etc");
        std::fs::create_dir_all(&etc)?;
        let hostname = hostname(pod);
        let mut hosts = "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".to_string();
        if let Some(ip) = self.pod_ip(pod) {
            hosts.push_str(&format!("{ip}\t{hostname}\n"));
        }
        std::fs::write(etc.join("hosts"), hosts)?;
        std::fs::write(etc.join("hostname"), format!("{hostname}\n"))?;
        let resolv = resolv_conf(
            pod,
            &self.k.config,
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        );
        std::fs::write(etc.join("resolv.conf"), resolv)?;
        Ok(())
    }

    async fn ensure_volumes(&mut self, pod: &Pod) -> Result<(), String> {
        // ConfigMaps, Secrets and tokens are re-read every --sync-frequency, updating files in
        // place.
        let period = self.k.config.sync_frequency;
        if self
            .volumes
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < period)
        {
            return Ok(());
        }
        if let Some((e, at)) = &self.volumes_failed
            && at.elapsed() < CONFIG_RETRY
        {
            return Err(e.clone());
        }
        match crate::volumes::prepare(&self.k.client, pod, &self.dir).await {
            Ok(v) => {
                self.volumes_failed = None;
                self.volumes = Some((v, Instant::now()));
                Ok(())
            }
            Err(e) => {
                self.k.event(
                    pod,
                    EventType::Warning,
                    "FailedMount",
                    format!("MountVolume.SetUp failed: {e}"),
                );
                self.volumes_failed = Some((e.to_string(), Instant::now()));
                Err(e.to_string())
            }
        }
    }

    /// Starts attempt `attempt` of container `c`.
    async fn start(&mut self, pod: &Pod, c: &Container, attempt: u32) {
        if self
            .tracks
            .get(&c.name)
            .and_then(|t| t.config_failed_at)
            .is_some_and(|at| at.elapsed() < CONFIG_RETRY)
        {
            return;
        }
        let Some(image) = self.ensure_image(pod, c).await else {
            return;
        };
        let cur = self.instance(&c.name, attempt);
        let volumes = self
            .volumes
            .as_ref()
            .map(|(v, _)| v.clone())
            .unwrap_or_default();
        let env = match resolve_env(
            &self.k.client,
            pod,
            c,
            &image,
            self.pod_ip(pod).as_deref(),
            &self.k.config,
        )
        .await
        {
            Ok(env) => env,
            Err(e) => {
                self.k
                    .event(pod, EventType::Warning, "Failed", format!("Error: {e}"));
                let track = self.tracks.entry(c.name.clone()).or_default();
                track.waiting = Some(("CreateContainerConfigError".into(), e));
                track.config_failed_at = Some(Instant::now());
                return;
            }
        };
        let result = self
            .create_and_start(pod, c, &image, &cur, &volumes, env)
            .await;
        let track = self.tracks.entry(c.name.clone()).or_default();
        match result {
            Ok(()) => {
                track.waiting = None;
                track.config_failed_at = None;
                track.ready = false;
                track.probe = probes::ProbeState::default();
                track.term_sent = None;
                self.k.event(
                    pod,
                    EventType::Normal,
                    "Created",
                    format!("Created container: {}", c.name),
                );
                self.k.event(
                    pod,
                    EventType::Normal,
                    "Started",
                    format!("Started container {}", c.name),
                );
                if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
                    // The runtime's start returned once the process runs.
                    let cur = self.instance(&c.name, attempt);
                    if !self
                        .run_hook(pod, c, &cur.id, hook, Duration::from_secs(30))
                        .await
                    {
                        tracing::warn!(container = %c.name, "postStart hook failed");
                        self.k.event(
                            pod,
                            EventType::Warning,
                            "FailedPostStartHook",
                            format!("PostStartHook failed for container {}", c.name),
                        );
                        let (rt, id) = (self.k.runtime.clone(), cur.id.clone());
                        let _ = tokio::task::spawn_blocking(move || rt.signal(&id, "KILL")).await;
                    }
                }
            }
            Err(e) => {
                self.k
                    .event(pod, EventType::Warning, "Failed", format!("Error: {e}"));
                track.waiting = Some(("CreateContainerError".into(), e));
                track.config_failed_at = Some(Instant::now());
            }
        }
    }

    async fn create_and_start(
        &self,
        pod: &Pod,
        c: &Container,
        image: &Image,
        cur: &Current,
        volumes: &HashMap<String, PathBuf>,
        env: Vec<String>,
    ) -> Result<(), String> {
        std::fs::create_dir_all(&cur.bundle).map_err(|e| e.to_string())?;
        let rootfs = self
            .k
            .images
            .mount_rootfs(image, &cur.bundle)
            .map_err(|e| e.to_string())?;
        let mut mounts = vec![
            BindMount {
                destination: "/etc/hosts".into(),
                source: self.dir.join("etc/hosts"),
                readonly: false,
            },
            BindMount {
                destination: "/etc/hostname".into(),
                source: self.dir.join("etc/hostname"),
                readonly: false,
            },
            BindMount {
                destination: "/etc/resolv.conf".into(),
                source: self.dir.join("etc/resolv.conf"),
                readonly: false,
            },
        ];
        for m in c.volume_mounts.iter().flatten() {
            let Some(src) = volumes.get(&m.name) else {
                return Err(format!("volume {:?} is not available", m.name));
            };
            let mut source = src.clone();
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                let rel = crate::images::clean_path(Path::new(sub)).map_err(|e| e.to_string())?;
                if sub.contains("..") {
                    return Err(format!("subPath {sub:?} must not contain '..'"));
                }
                source = source.join(rel);
                if !source.exists() {
                    std::fs::create_dir_all(&source).map_err(|e| e.to_string())?;
                }
            }
            mounts.push(BindMount {
                destination: m.mount_path.clone(),
                source,
                readonly: m.read_only.unwrap_or(false),
            });
        }
        let (args, cwd) = command_line(c, &image.config, &env);
        if args.is_empty() {
            return Err("no command specified".into());
        }
        let sc = c.security_context.clone().unwrap_or_default();
        let psc = pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.clone())
            .unwrap_or_default();
        let (image_uid, image_gid) = image_user(image.config.user.as_deref(), &rootfs);
        let uid = sc
            .run_as_user
            .or(psc.run_as_user)
            .map_or(image_uid, |u| u as u32);
        let gid = sc
            .run_as_group
            .or(psc.run_as_group)
            .map_or(image_gid, |g| g as u32);
        let privileged = sc.privileged.unwrap_or(false);
        let caps = sc.capabilities.clone().unwrap_or_default();
        let resources = c.resources.clone().unwrap_or_default();
        let qty = |m: &Option<
            BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >,
                   k: &str| {
            m.as_ref()
                .and_then(|m| m.get(k))
                .and_then(|q| runtime::parse_quantity_milli(&q.0))
        };
        let cpu_request = qty(&resources.requests, "cpu").or(qty(&resources.limits, "cpu"));
        let input = SpecInput {
            args,
            env,
            cwd,
            uid,
            gid,
            hostname: hostname(pod),
            netns: self
                .sandbox
                .as_ref()
                .map(|s| Path::new(crate::network::NETNS_DIR).join(&s.netns)),
            cgroups_path: format!(
                "{}/kubepods/pod{}/{}",
                self.k.config.cgroup_root.trim_end_matches('/'),
                sanitize(&self.uid),
                cur.id
            ),
            memory_limit: qty(&resources.limits, "memory").map(|m| (m / 1000) as i64),
            cpu_shares: Some(runtime::cpu_shares(cpu_request)),
            cpu_quota: qty(&resources.limits, "cpu").map(runtime::cpu_quota),
            capabilities: runtime::capabilities(
                privileged,
                caps.add.as_deref().unwrap_or_default(),
                caps.drop.as_deref().unwrap_or_default(),
            ),
            privileged,
            readonly_rootfs: sc.read_only_root_filesystem.unwrap_or(false),
            no_new_privileges: sc.allow_privilege_escalation == Some(false),
            mounts,
        };
        let spec = runtime::generate_spec(&input);
        std::fs::write(cur.bundle.join("config.json"), spec.to_string())
            .map_err(|e| e.to_string())?;
        let log_dir = self.k.log_dir(pod).join(&c.name);
        std::fs::create_dir_all(&log_dir).map_err(|e| e.to_string())?;
        let log = log_dir.join(format!("{}.log", cur.attempt));
        let record = Record {
            id: cur.id.clone(),
            started_at: runtime::now_rfc3339(),
            image_ref: image.image_ref.clone(),
        };
        std::fs::write(
            cur.bundle.join("record.json"),
            serde_json::to_vec(&record).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let (rt, id, bundle) = (self.k.runtime.clone(), cur.id.clone(), cur.bundle.clone());
        tokio::task::spawn_blocking(move || rt.start(&id, &bundle, &log))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn probe(&mut self, pod: &Pod, c: &Container, cur: &Current) {
        let ip = self.pod_ip(pod);
        let track = self.tracks.entry(c.name.clone()).or_default();
        let target = probes::Target {
            ip: ip.as_deref(),
            container_id: &cur.id,
            runc: &self.k.config.runtime_binary,
            runc_root: &self.k.config.root_dir.join("runc"),
        };
        if track.probe.is_fresh() {
            let api_ready = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|cs| cs.iter().find(|s| s.name == c.name))
                .is_some_and(|s| {
                    s.ready && s.container_id.as_deref() == Some(&format!("runc://{}", cur.id))
                });
            if api_ready {
                track.probe.adopt_ready();
            }
        }
        let outcome = probes::run_due(c, &target, &mut track.probe).await;
        track.ready = outcome.ready;
        if outcome.restart && track.term_sent.is_none() {
            self.k.event(
                pod,
                EventType::Normal,
                "Killing",
                format!(
                    "Container {} failed liveness probe, will be restarted",
                    c.name
                ),
            );
            track.term_sent = Some(Instant::now());
            let (rt, id) = (self.k.runtime.clone(), cur.id.clone());
            let _ = tokio::task::spawn_blocking(move || rt.signal(&id, "KILL")).await;
        }
    }

    /// Deletion: stop containers gracefully, tear down, then finish the deletion in the API.
    async fn terminate(&mut self, pod: &Arc<Pod>) {
        if self.deleted_via_api {
            return;
        }
        let grace = termination_grace(pod);
        let running = self.stop_all(pod, grace == 0).await;
        let deadline_passed = self
            .tracks
            .values()
            .filter_map(|t| t.term_sent)
            .any(|t| t.elapsed() >= Duration::from_secs(grace));
        if running > 0 && deadline_passed {
            self.stop_all(pod, true).await;
        }
        if running > 0 {
            return;
        }
        teardown_pod(&self.k, &self.uid, Some(pod)).await;
        self.sandbox = None;
        let (ns, name) = pod_names(pod);
        let api: Api<Pod> = Api::namespaced(self.k.client.clone(), &ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &dp).await {
            Ok(_) => self.deleted_via_api = true,
            Err(e)
                if ferrokube_runtime::apierrors::is_not_found(&e)
                    || ferrokube_runtime::apierrors::is_conflict(&e) =>
            {
                self.deleted_via_api = true;
            }
            Err(e) => tracing::warn!(pod = %name, error = %e, "finishing pod deletion"),
        }
    }

    /// Signals every running container (TERM once, or KILL); returns how many still run.
    async fn stop_all(&mut self, pod: &Pod, kill: bool) -> usize {
        let spec = pod.spec.clone().unwrap_or_default();
        let grace = Duration::from_secs(termination_grace(pod));
        let containers: Vec<Container> = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .cloned()
            .collect();
        let mut running = 0;
        for c in containers {
            let Some(cur) = self.current(&c.name) else {
                continue;
            };
            if cur.state != State::Running {
                continue;
            }
            running += 1;
            let first_term = !kill
                && self
                    .tracks
                    .get(&c.name)
                    .is_none_or(|t| t.term_sent.is_none());
            if first_term {
                self.tracks.entry(c.name.clone()).or_default().term_sent = Some(Instant::now());
                self.k.event(
                    pod,
                    EventType::Normal,
                    "Killing",
                    format!("Stopping container {}", c.name),
                );
                // preStop runs before SIGTERM, within the grace period (upstream order).
                if let Some(hook) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
                    && !self.run_hook(pod, &c, &cur.id, hook, grace).await
                {
                    self.k.event(
                        pod,
                        EventType::Warning,
                        "FailedPreStopHook",
                        format!("PreStopHook failed for container {}", c.name),
                    );
                }
            } else if !kill {
                continue;
            }
            let signal = if kill { "KILL" } else { "TERM" };
            let (rt, id) = (self.k.runtime.clone(), cur.id.clone());
            let _ = tokio::task::spawn_blocking(move || rt.signal(&id, signal)).await;
        }
        running
    }

    /// Runs a postStart/preStop hook against container `id`, bounded by `timeout`.
    async fn run_hook(
        &self,
        pod: &Pod,
        c: &Container,
        id: &str,
        hook: &LifecycleHandler,
        timeout: Duration,
    ) -> bool {
        if let Some(s) = &hook.sleep {
            tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64).min(timeout)).await;
            return true;
        }
        let ip = self.pod_ip(pod);
        let runc_root = self.k.config.root_dir.join("runc");
        let target = probes::Target {
            ip: ip.as_deref(),
            container_id: id,
            runc: &self.k.config.runtime_binary,
            runc_root: &runc_root,
        };
        tokio::time::timeout(
            timeout,
            probes::run_handler(&probes::Handler::of_hook(hook), c, &target),
        )
        .await
        .unwrap_or(false)
    }

    async fn release_network(&mut self, pod: &Pod) {
        if let Some(att) = self.sandbox.take() {
            let (ns, name) = pod_names(pod);
            if let Err(e) = self
                .k
                .network
                .teardown(&self.uid, &ns, &name, Some(&att))
                .await
            {
                tracing::warn!(error = %e, "tearing down pod network");
            }
            let _ = std::fs::remove_file(self.dir.join("sandbox.json"));
        }
    }

    fn status(&mut self, pod: &Pod, sandbox_ready: bool, initialized: bool) -> PodStatus {
        let spec = pod.spec.clone().unwrap_or_default();
        let policy = restart_policy(pod).to_string();
        let statuses = |w: &mut Self, cs: &[Container], init: bool| -> Vec<ContainerStatus> {
            cs.iter()
                .map(|c| w.container_status(c, init, sandbox_ready))
                .collect()
        };
        let init_statuses = statuses(
            self,
            spec.init_containers.as_deref().unwrap_or_default(),
            true,
        );
        let app_statuses = statuses(self, &spec.containers, false);
        let sidecars: Vec<&str> = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .map(|c| c.name.as_str())
            .collect();
        let init_failed = policy == "Never"
            && init_statuses.iter().any(|s| {
                !sidecars.contains(&s.name.as_str())
                    && s.state
                        .as_ref()
                        .and_then(|st| st.terminated.as_ref())
                        .is_some_and(|t| t.exit_code != 0)
            });
        let (mut running, mut waiting_new, mut succeeded, mut failed, mut restarting) =
            (0, 0, 0, 0, 0);
        for s in &app_statuses {
            let st = s.state.clone().unwrap_or_default();
            if st.running.is_some() {
                running += 1;
            } else if let Some(t) = &st.terminated {
                // An exit the restart policy restarts keeps the pod Running (upstream never
                // fails a restartPolicy=Always pod for its containers' exits).
                if should_restart(&policy, t.exit_code) {
                    restarting += 1;
                } else if t.exit_code == 0 {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
            } else if s
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.as_ref())
                .is_some()
            {
                restarting += 1;
            } else {
                waiting_new += 1;
            }
        }
        let phase = if init_failed {
            "Failed"
        } else if !initialized || waiting_new > 0 {
            "Pending"
        } else if running > 0 || restarting > 0 {
            "Running"
        } else if failed > 0 {
            "Failed"
        } else if succeeded > 0 {
            "Succeeded"
        } else {
            "Pending"
        };
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let unready: Vec<String> = app_statuses
            .iter()
            .filter(|s| !s.ready)
            .map(|s| s.name.clone())
            .collect();
        let containers_ready = unready.is_empty();
        let existing = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let cond = |type_: &str, ok: bool, reason: Option<&str>, message: Option<String>| {
            let status = if ok { "True" } else { "False" }.to_string();
            let prev = existing.iter().find(|c| c.type_ == type_);
            let transition = prev
                .filter(|p| p.status == status)
                .and_then(|p| p.last_transition_time.clone())
                .unwrap_or_else(|| Time(Timestamp::now()));
            PodCondition {
                type_: type_.to_string(),
                status,
                reason: if ok { None } else { reason.map(str::to_string) },
                message: if ok { None } else { message },
                last_transition_time: Some(transition),
                last_probe_time: None,
                observed_generation: None,
            }
        };
        let not_ready_reason = if terminal {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let not_ready_msg =
            (!terminal).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
        let uninit: Vec<String> = init_statuses
            .iter()
            .filter(|s| {
                let st = s.state.clone().unwrap_or_default();
                let sidecar_up = st.running.is_some() && s.started == Some(true);
                !sidecar_up && st.terminated.as_ref().is_none_or(|t| t.exit_code != 0)
            })
            .map(|s| s.name.clone())
            .collect();
        let conditions = vec![
            cond(
                "PodReadyToStartContainers",
                sandbox_ready && !terminal,
                None,
                None,
            ),
            cond(
                "Initialized",
                initialized || terminal,
                Some(if terminal {
                    "PodCompleted"
                } else {
                    "ContainersNotInitialized"
                }),
                (!terminal)
                    .then(|| format!("containers with incomplete status: [{}]", uninit.join(" "))),
            ),
            cond(
                "ContainersReady",
                containers_ready && !terminal,
                Some(not_ready_reason),
                not_ready_msg.clone(),
            ),
            cond(
                "Ready",
                containers_ready && !terminal,
                Some(not_ready_reason),
                not_ready_msg,
            ),
        ];
        let ip = self.pod_ip(pod).filter(|_| !terminal);
        let host_ip = self.k.config.node_ip.to_string();
        PodStatus {
            phase: Some(phase.to_string()),
            conditions: Some(conditions),
            host_ip: Some(host_ip.clone()),
            host_ips: Some(vec![HostIP { ip: host_ip }]),
            pod_ip: ip.clone(),
            pod_ips: ip.map(|ip| vec![PodIP { ip }]),
            start_time: Some(self.start_time.clone()),
            init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
            container_statuses: Some(app_statuses),
            ..Default::default()
        }
    }

    fn container_status(
        &mut self,
        c: &Container,
        init: bool,
        sandbox_ready: bool,
    ) -> ContainerStatus {
        let cur = self.current(&c.name);
        let track = self.tracks.entry(c.name.clone()).or_default();
        let terminated = |e: &Exit, started: Option<&str>, id: &str| ContainerStateTerminated {
            exit_code: e.exit_code,
            reason: Some(e.reason.clone().unwrap_or_else(|| {
                if e.exit_code == 0 {
                    "Completed".into()
                } else {
                    "Error".into()
                }
            })),
            message: e.message.clone(),
            started_at: started.and_then(parse_time),
            finished_at: parse_time(&e.finished_at),
            container_id: Some(format!("runc://{id}")),
            signal: None,
        };
        let mut status = ContainerStatus {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            started: Some(false),
            ..Default::default()
        };
        let waiting = |reason: &str, message: Option<String>| ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.to_string()),
                message,
            }),
            ..Default::default()
        };
        // upstream shows ContainerCreating while the sandbox and image are prepared.
        let _ = sandbox_ready;
        let pending_reason = "ContainerCreating";
        match &cur {
            None => {
                status.state = Some(match &track.waiting {
                    Some((r, m)) => waiting(r, Some(m.clone())),
                    None => waiting(
                        if init {
                            "PodInitializing"
                        } else {
                            pending_reason
                        },
                        None,
                    ),
                });
            }
            Some(cur) => {
                status.restart_count = cur.attempt as i32;
                status.image_id = cur.image_ref.clone().unwrap_or_default();
                if cur.attempt > 0 {
                    let prev = self.instance(&c.name, cur.attempt - 1);
                    if let State::Exited(e) = &prev.state {
                        status.last_state = Some(ContainerState {
                            terminated: Some(terminated(e, prev.started_at.as_deref(), &prev.id)),
                            ..Default::default()
                        });
                    }
                }
                let track = self.tracks.entry(c.name.clone()).or_default();
                match &cur.state {
                    State::Running => {
                        status.container_id = Some(format!("runc://{}", cur.id));
                        status.started = Some(true);
                        // Sidecars (restartPolicy Always init containers) report readiness; others never.
                        let sidecar = init && c.restart_policy.as_deref() == Some("Always");
                        status.ready = (!init || sidecar) && track.ready;
                        status.state = Some(ContainerState {
                            running: Some(ContainerStateRunning {
                                started_at: cur.started_at.as_deref().and_then(parse_time),
                            }),
                            ..Default::default()
                        });
                    }
                    State::Exited(e) => {
                        status.container_id = Some(format!("runc://{}", cur.id));
                        match &track.waiting {
                            // Waiting to be restarted: the exit becomes lastState.
                            Some((r, m))
                                if r == "CrashLoopBackOff"
                                    || r == "ErrImagePull"
                                    || r == "ImagePullBackOff" =>
                            {
                                status.last_state = Some(ContainerState {
                                    terminated: Some(terminated(
                                        e,
                                        cur.started_at.as_deref(),
                                        &cur.id,
                                    )),
                                    ..Default::default()
                                });
                                status.state = Some(waiting(r, Some(m.clone())));
                            }
                            _ => {
                                status.state = Some(ContainerState {
                                    terminated: Some(terminated(
                                        e,
                                        cur.started_at.as_deref(),
                                        &cur.id,
                                    )),
                                    ..Default::default()
                                });
                            }
                        }
                    }
                    State::Missing => {
                        status.state = Some(match &track.waiting {
                            Some((r, m)) => waiting(r, Some(m.clone())),
                            None => waiting(pending_reason, None),
                        });
                    }
                }
            }
        }
        status
    }

    async fn patch_status(&mut self, pod: &Pod, status: PodStatus) {
        let mut value = json!({"status": status});
        // Fields we clear must be sent as null: a strategic merge patch keeps what it omits.
        for c in value["status"]["conditions"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            for f in ["reason", "message"] {
                if c.get(f).is_none() {
                    c[f] = serde_json::Value::Null;
                }
            }
        }
        for f in ["podIP", "podIPs"] {
            if value["status"].get(f).is_none() {
                value["status"][f] = serde_json::Value::Null;
            }
        }
        // Condition times aside, an unchanged status is not written again.
        let mut key = value.clone();
        for c in key["status"]["conditions"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            c.as_object_mut().map(|o| o.remove("lastTransitionTime"));
        }
        if self.last_status.as_ref() == Some(&key) {
            return;
        }
        let (ns, name) = pod_names(pod);
        let api: Api<Pod> = Api::namespaced(self.k.client.clone(), &ns);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&value))
            .await
        {
            Ok(_) => self.last_status = Some(key),
            Err(e) if ferrokube_runtime::apierrors::is_not_found(&e) => {}
            Err(e) => tracing::warn!(pod = %name, error = %e, "patching pod status"),
        }
    }
}

/// The pod's grace period: the deletion's, else the spec's, else 30 s.
fn termination_grace(pod: &Pod) -> u64 {
    pod.metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0) as u64
}

fn parse_time(s: &str) -> Option<Time> {
    s.parse::<Timestamp>().ok().map(Time)
}

fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{}m0s", s / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn pod_names(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn hostname(pod: &Pod) -> String {
    let name = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    // A hostname is at most 63 characters (upstream truncates the pod name the same way).
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_string()
}

/// The pod's resolv.conf for its dnsPolicy (upstream's rules): ClusterFirst uses
/// `--cluster-dns` with the cluster search path (the host's file when no cluster DNS is
/// configured, as upstream falls back); Default uses the host's; None only dnsConfig.
pub fn resolv_conf(pod: &Pod, config: &Config, host: &str) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network.unwrap_or(false);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster =
        (policy == "ClusterFirst" && !host_network) || policy == "ClusterFirstWithHostNet";
    let (mut servers, mut searches, mut options): (Vec<String>, Vec<String>, Vec<String>) =
        (Vec::new(), Vec::new(), Vec::new());
    let from_host =
        |servers: &mut Vec<String>, searches: &mut Vec<String>, options: &mut Vec<String>| {
            for line in host.lines() {
                let mut f = line.split_whitespace();
                match f.next() {
                    Some("nameserver") => servers.extend(f.map(str::to_string)),
                    Some("search") => searches.extend(f.map(str::to_string)),
                    Some("options") => options.extend(f.map(str::to_string)),
                    _ => {}
                }
            }
        };
    if policy != "None" {
        if cluster && !config.cluster_dns.is_empty() {
            servers = config.cluster_dns.iter().map(ToString::to_string).collect();
            let domain = config
                .cluster_domain
                .clone()
                .unwrap_or_else(|| "cluster.local".into());
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            searches = vec![
                format!("{ns}.svc.{domain}"),
                format!("svc.{domain}"),
                domain,
            ];
            options = vec!["ndots:5".into()];
        } else {
            from_host(&mut servers, &mut searches, &mut options);
        }
    }
    if let Some(d) = &spec.dns_config {
        servers.extend(d.nameservers.iter().flatten().cloned());
        searches.extend(d.searches.iter().flatten().cloned());
        for o in d.options.iter().flatten() {
            options.push(match &o.value {
                Some(v) => format!("{}:{v}", o.name.clone().unwrap_or_default()),
                None => o.name.clone().unwrap_or_default(),
            });
        }
    }
    let mut out = String::new();
    for s in servers.iter().take(3) {
        out.push_str(&format!("nameserver {s}\n"));
    }
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    out
}

/// Stops whatever still runs of pod `uid`, releases its network and removes its state.
pub async fn teardown_pod(k: &Arc<Kubelet>, uid: &str, pod: Option<&Pod>) {
    let dir = k.pod_dir(uid);
    let containers = dir.join("containers");
    let mut instances = Vec::new();
    if let Ok(names) = std::fs::read_dir(&containers) {
        for n in names.filter_map(Result::ok) {
            if let Ok(attempts) = std::fs::read_dir(n.path()) {
                for a in attempts.filter_map(Result::ok) {
                    let id = format!(
                        "{}-{}-{}",
                        sanitize(uid),
                        n.file_name().to_string_lossy(),
                        a.file_name().to_string_lossy()
                    );
                    instances.push((id, a.path()));
                }
            }
        }
    }
    let rt = k.runtime.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for (id, bundle) in instances {
            if rt.state(&id, &bundle) == State::Running {
                let _ = rt.signal(&id, "KILL");
            }
            let _ = rt.remove(&id);
            crate::images::unmount(&bundle.join("rootfs"));
        }
    })
    .await;
    let att: Option<Attachment> = std::fs::read_to_string(dir.join("sandbox.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let (ns, name) = pod.map(pod_names).unwrap_or_default();
    if let Err(e) = k.network.teardown(uid, &ns, &name, att.as_ref()).await {
        tracing::warn!(%uid, error = %e, "tearing down pod network");
    }
    remove_pod_cgroups(&k.config.cgroup_root, uid);
    if pod.is_none_or(|p| p.metadata.deletion_timestamp.is_none()) || pod.is_some() {
        crate::volumes::teardown(&dir);
    }
    // The pod object is gone (or going): its directory and logs go with it.
    if pod.is_none() || pod.is_some_and(|p| p.metadata.deletion_timestamp.is_some()) {
        let _ = std::fs::remove_dir_all(&dir);
        if let Some(p) = pod {
            let _ = std::fs::remove_dir_all(k.log_dir(p));
        }
    }
}

/// Removes `kubepods/pod<uid>` from every cgroup hierarchy (runc removes the containers').
pub fn remove_pod_cgroups(cgroup_root: &str, uid: &str) {
    let rel = format!(
        "{}/kubepods/pod{}",
        cgroup_root.trim_matches('/'),
        sanitize(uid)
    );
    let rel = rel.trim_start_matches('/').to_string();
    let mut dirs = vec![PathBuf::from("/sys/fs/cgroup").join(&rel)];
    if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in rd.filter_map(Result::ok) {
            dirs.push(e.path().join(&rel));
        }
    }
    for d in dirs {
        if d.is_dir() {
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// A value the downward API exposes (`metadata.name`, `status.podIP`, labels, ...).
pub fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    if let Some(key) = path
        .strip_prefix("metadata.labels['")
        .and_then(|s| s.strip_suffix("']"))
    {
        return m.labels.as_ref().and_then(|l| l.get(key).cloned());
    }
    if let Some(key) = path
        .strip_prefix("metadata.annotations['")
        .and_then(|s| s.strip_suffix("']"))
    {
        return m.annotations.as_ref().and_then(|l| l.get(key).cloned());
    }
    match path {
        "metadata.name" => m.name.clone(),
        "metadata.namespace" => m.namespace.clone(),
        "metadata.uid" => m.uid.clone(),
        "metadata.labels" => Some(kv_lines(m.labels.as_ref())),
        "metadata.annotations" => Some(kv_lines(m.annotations.as_ref())),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
        "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
        "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
        "status.hostIP" => status.and_then(|s| s.host_ip.clone()),
        _ => None,
    }
}

fn kv_lines(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// Expands `$(VAR)` references as upstream does: defined names are replaced, `$$` is a
/// literal `$`, anything else is left as written.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' && i + 1 < bytes.len() {
            if bytes[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if bytes[i + 1] == b'('
                && let Some(end) = s[i + 2..].find(')')
            {
                let name = &s[i + 2..i + 2 + end];
                if let Some(v) = lookup(name) {
                    out.push_str(&v);
                } else {
                    out.push_str(&s[i..i + 3 + end]);
                }
                i += 3 + end;
                continue;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('$');
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// The process's argv and working directory from the container and image config
/// (upstream's rules: `command` replaces ENTRYPOINT and drops CMD; `args` replaces CMD).
fn command_line(
    c: &Container,
    image: &crate::images::RunConfig,
    env: &[String],
) -> (Vec<String>, String) {
    let vars: HashMap<&str, &str> = env.iter().filter_map(|e| e.split_once('=')).collect();
    let lookup = |n: &str| vars.get(n).map(|v| v.to_string());
    let entry: Vec<String> = match &c.command {
        Some(cmd) if !cmd.is_empty() => cmd.iter().map(|s| expand(s, &lookup)).collect(),
        _ => image.entrypoint.clone().unwrap_or_default(),
    };
    let args: Vec<String> = match (&c.command, &c.args) {
        (_, Some(a)) if !a.is_empty() => a.iter().map(|s| expand(s, &lookup)).collect(),
        (Some(cmd), _) if !cmd.is_empty() => Vec::new(),
        _ => image.cmd.clone().unwrap_or_default(),
    };
    let cwd = c
        .working_dir
        .clone()
        .filter(|w| !w.is_empty())
        .or_else(|| image.working_dir.clone())
        .unwrap_or_else(|| "/".into());
    (entry.into_iter().chain(args).collect(), cwd)
}

/// uid and gid for the image's USER (numeric, or a name from the rootfs' /etc/passwd).
fn image_user(user: Option<&str>, rootfs: &Path) -> (u32, u32) {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return (0, 0);
    };
    let (u, g) = user
        .split_once(':')
        .map_or((user, None), |(u, g)| (u, Some(g)));
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let from_passwd = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && (f[0] == u || f[2] == u)).then(|| (f[2].parse().ok(), f[3].parse().ok()))
    });
    let uid = u
        .parse()
        .ok()
        .or(from_passwd.and_then(|p| p.0))
        .unwrap_or(0);
    let gid = g
        .and_then(|g| g.parse().ok())
        .or(from_passwd.and_then(|p| p.1))
        .unwrap_or(0);
    (uid, gid)
}

/// The container's environment: image ENV, then the pod's env/envFrom (with `$(VAR)`
/// expansion over what is defined before), as `K=V`.
async fn resolve_env(
    client: &kube::Client,
    pod: &Pod,
    c: &Container,
    image: &Image,
    pod_ip: Option<&str>,
    config: &Config,
) -> Result<Vec<String>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut vars: Vec<(String, String)> = image
        .config
        .env
        .iter()
        .flatten()
        .filter_map(|e| {
            e.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = vars.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            vars.push((k, v));
        }
    };
    set(&mut vars, "HOSTNAME".into(), hostname(pod));
    let mut pod_with_ip = pod.clone();
    if let Some(ip) = pod_ip {
        let st = pod_with_ip.status.get_or_insert_with(Default::default);
        st.pod_ip = Some(ip.to_string());
        st.host_ip = Some(config.node_ip.to_string());
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (source, name, optional) = if let Some(r) = &from.config_map_ref {
            (EnvSource::ConfigMap, &r.name, r.optional)
        } else if let Some(r) = &from.secret_ref {
            (EnvSource::Secret, &r.name, r.optional)
        } else {
            continue;
        };
        let data = match source.data(client, &ns, name).await? {
            Some(d) => d,
            None if optional == Some(true) => BTreeMap::new(),
            None => return Err(source.not_found(name)),
        };
        for (k, v) in data {
            set(
                &mut vars,
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    for e in c.env.iter().flatten() {
        let value = if let Some(v) = &e.value {
            let snapshot: HashMap<String, String> = vars.iter().cloned().collect();
            expand(v, &|n| snapshot.get(n).cloned())
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                field_value(&pod_with_ip, &f.field_path).unwrap_or_default()
            } else if let Some((source, r_name, key, optional)) = from
                .config_map_key_ref
                .as_ref()
                .map(|r| (EnvSource::ConfigMap, &r.name, &r.key, r.optional))
                .or_else(|| {
                    from.secret_key_ref
                        .as_ref()
                        .map(|r| (EnvSource::Secret, &r.name, &r.key, r.optional))
                })
            {
                let data = source.data(client, &ns, r_name).await?;
                match data.as_ref().and_then(|d| d.get(key)) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if optional == Some(true) => continue,
                    None if data.is_none() => return Err(source.not_found(r_name)),
                    None => {
                        return Err(format!(
                            "couldn't find key {key} in {} {ns}/{r_name}",
                            source.kind()
                        ));
                    }
                }
            } else if let Some(r) = &from.resource_field_ref {
                resource_field(c, &r.resource).unwrap_or_else(|| "0".into())
            } else {
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Where an environment variable's data comes from: a ConfigMap or a Secret in the pod's
/// namespace (`envFrom` or `valueFrom`).
#[derive(Clone, Copy)]
enum EnvSource {
    ConfigMap,
    Secret,
}

impl EnvSource {
    /// The object's data, `None` when it does not exist.
    async fn data(
        self,
        client: &kube::Client,
        ns: &str,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
        match self {
            Self::ConfigMap => crate::volumes::configmap_data(client, ns, name).await,
            Self::Secret => crate::volumes::secret_data(client, ns, name).await,
        }
        .map_err(|e| e.to_string())
    }

    fn kind(self) -> &'static str {
        match self {
            Self::ConfigMap => "ConfigMap",
            Self::Secret => "Secret",
        }
    }

    /// Upstream's message for a missing, non-optional source.
    fn not_found(self, name: &str) -> String {
        let noun = match self {
            Self::ConfigMap => "configmap",
            Self::Secret => "secret",
        };
        format!("{noun} \"{name}\" not found")
    }
}

fn resource_field(c: &Container, resource: &str) -> Option<String> {
    let (kind, name) = resource.split_once('.')?;
    let r = c.resources.as_ref()?;
    let map = if kind == "limits" {
        r.limits.as_ref()
    } else {
        r.requests.as_ref()
    }?;
    let milli = runtime::parse_quantity_milli(&map.get(name)?.0)?;
    Some(if name == "cpu" {
        ((milli + 999) / 1000).to_string()
    } else {
        (milli / 1000).to_string()
    })
}

/// Credentials for `registry` in a `.dockerconfigjson` (`auths.<registry>.auth` or
/// `username`/`password`).
pub fn docker_config_auth(config: &[u8], registry: &str) -> Option<RegistryAuth> {
    use base64::Engine as _;
    let v: serde_json::Value = serde_json::from_slice(config).ok()?;
    let auths = v["auths"].as_object()?;
    let entry = auths.iter().find_map(|(k, e)| {
        let host = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or(host);
        (canonical_registry(host) == canonical_registry(registry)).then_some(e)
    })?;
    if let (Some(u), Some(p)) = (entry["username"].as_str(), entry["password"].as_str()) {
        return Some(RegistryAuth::Basic(u.to_string(), p.to_string()));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry["auth"].as_str()?)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(RegistryAuth::Basic(u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_curve() {
        let secs: Vec<u64> = (0..8).map(|n| crash_backoff(n).as_secs()).collect();
        assert_eq!(secs, vec![0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(crash_backoff(100).as_secs(), 300);
        assert_eq!(pull_backoff(1).as_secs(), 10);
        assert_eq!(pull_backoff(2).as_secs(), 20);
        assert_eq!(humanize(Duration::from_secs(300)), "5m0s");
        assert_eq!(humanize(Duration::from_secs(20)), "20s");
    }

    #[test]
    fn effective_requests() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Gi"}}}],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "500m", "memory": "100Mi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "250m", "memory": "2Gi"}}},
                ],
            }
        }))
        .unwrap();
        assert_eq!(
            pod_requests(&pod),
            (2000, 100 * 1024 * 1024 + 2 * 1024 * 1024 * 1024)
        );
    }

    #[test]
    fn dns_policies() {
        let flags = <crate::options::Flags as clap::Parser>::parse_from([
            "kubelet",
            "--cluster-dns=198.19.0.10",
            "--hostname-override=n",
        ]);
        let config = Config::resolve(&flags).unwrap();
        let host = "nameserver 10.0.0.2\nsearch example.org\n";
        let pod = |policy: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"namespace": "web"},
                "spec": {"containers": [], "dnsPolicy": policy,
                         "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]}}
            }))
            .unwrap()
        };
        let cf = resolv_conf(&pod("ClusterFirst"), &config, host);
        assert!(cf.starts_with("nameserver 198.19.0.10\nsearch web.svc.cluster.local svc.cluster.local cluster.local\n"), "{cf}");
        assert!(cf.contains("ndots:5 ndots:2"));
        let d = resolv_conf(&pod("Default"), &config, host);
        assert!(
            d.starts_with("nameserver 10.0.0.2\nsearch example.org\n"),
            "{d}"
        );
        assert_eq!(
            resolv_conf(&pod("None"), &config, host),
            "options ndots:2\n"
        );
    }

    #[test]
    fn restart_policies() {
        assert!(should_restart("Always", 0));
        assert!(!should_restart("OnFailure", 0));
        assert!(should_restart("OnFailure", 1));
        assert!(!should_restart("Never", 1));
    }

    #[test]
    fn variable_expansion() {
        let lookup = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &lookup), "x-$(B)-$(A)-$");
        assert_eq!(expand("héllo $(A)", &lookup), "héllo x");
    }

    #[test]
    fn command_rules() {
        let image = crate::images::RunConfig {
            entrypoint: Some(vec!["/entry".into()]),
            cmd: Some(vec!["default".into()]),
            ..Default::default()
        };
        let mut c = Container {
            name: "c".into(),
            ..Default::default()
        };
        assert_eq!(command_line(&c, &image, &[]).0, vec!["/entry", "default"]);
        c.args = Some(vec!["$(X)".into()]);
        assert_eq!(
            command_line(&c, &image, &["X=1".into()]).0,
            vec!["/entry", "1"]
        );
        c.command = Some(vec!["/bin/sh".into()]);
        c.args = None;
        assert_eq!(command_line(&c, &image, &[]).0, vec!["/bin/sh"]);
    }

    #[test]
    fn docker_config() {
        let cfg = br#"{"auths":{"127.0.0.1:5000":{"auth":"dTpw"}}}"#;
        assert!(
            matches!(docker_config_auth(cfg, "127.0.0.1:5000"), Some(RegistryAuth::Basic(u, p)) if u == "u" && p == "p")
        );
        assert!(docker_config_auth(cfg, "other").is_none());
        let hub = br#"{"auths":{"https://index.docker.io/v1/":{"username":"h","password":"q"}}}"#;
        assert!(
            matches!(docker_config_auth(hub, "docker.io"), Some(RegistryAuth::Basic(u, p)) if u == "h" && p == "q")
        );
    }
}
