//! The Node: registration, the heartbeat Lease in `kube-node-lease`, and node status.
//!
//! As upstream: the Lease is renewed every quarter of its duration (10 s of 40 s); status is
//! computed every `nodeStatusUpdateFrequency` (10 s) but only posted when something other
//! than heartbeat times changed, or when `nodeStatusReportFrequency` (5 min) has passed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};

use crate::eviction::EvictionHard;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::options::Config;

/// The Kubernetes version this kubelet reports (it follows the apiserver it targets).
pub const KUBELET_VERSION: &str = "v1.36.0";

/// Errors talking to the apiserver about the Node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An API call failed.
    #[error("{what}: {source}")]
    Api {
        /// What was attempted.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Api { what, source }
}

/// What the host has, read from /proc and the root dir's file system.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// Usable CPUs.
    pub cpus: u64,
    /// MemTotal in bytes.
    pub memory_bytes: u64,
    /// MemAvailable in bytes.
    pub memory_available_bytes: u64,
    /// Size of the file system holding the root dir.
    pub disk_bytes: u64,
    /// Free bytes there.
    pub disk_available_bytes: u64,
}

impl HostFacts {
    /// Reads the facts now.
    pub fn read(root_dir: &Path) -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u64)
            .unwrap_or(1);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let (memory_bytes, memory_available_bytes) = parse_meminfo(&meminfo);
        let (disk_bytes, disk_available_bytes) = match rustix::fs::statvfs(root_dir) {
            Ok(s) => (s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize),
            Err(_) => (0, 0),
        };
        Self {
            cpus,
            memory_bytes,
            memory_available_bytes,
            disk_bytes,
            disk_available_bytes,
        }
    }
}

/// `(MemTotal, MemAvailable)` in bytes from /proc/meminfo.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Capacity and allocatable for `facts`; the hard eviction thresholds are kept out of
/// allocatable, as upstream does.
pub fn resources(
    facts: &HostFacts,
    max_pods: u32,
    eviction: &EvictionHard,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let q = |s: String| Quantity(s);
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), q(facts.cpus.to_string()));
    capacity.insert(
        "memory".to_string(),
        q(format!("{}Ki", facts.memory_bytes / 1024)),
    );
    capacity.insert(
        "ephemeral-storage".to_string(),
        q(format!("{}Ki", facts.disk_bytes / 1024)),
    );
    capacity.insert("pods".to_string(), q(max_pods.to_string()));
    capacity.insert("hugepages-1Gi".to_string(), q("0".into()));
    capacity.insert("hugepages-2Mi".to_string(), q("0".into()));
    let mut allocatable = capacity.clone();
    allocatable.insert(
        "memory".to_string(),
        q(format!(
            "{}Ki",
            facts
                .memory_bytes
                .saturating_sub(eviction.memory_available.bytes_of(facts.memory_bytes))
                / 1024
        )),
    );
    allocatable.insert(
        "ephemeral-storage".to_string(),
        q(format!(
            "{}",
            facts
                .disk_bytes
                .saturating_sub(eviction.nodefs_available.bytes_of(facts.disk_bytes))
        )),
    );
    (capacity, allocatable)
}

/// What else decides Ready: the runtime and the pod network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Why the runtime is not ready, if it is not.
    pub runtime_error: Option<String>,
    /// Why the network is not ready, if it is not.
    pub network_error: Option<String>,
}

fn condition(type_: &str, status: bool, reason: &str, message: &str) -> NodeCondition {
    NodeCondition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: None,
        last_transition_time: None,
    }
}

/// The node conditions for `facts` and `ready`, without times (the caller stamps them).
pub fn conditions(
    facts: &HostFacts,
    ready: &Readiness,
    eviction: &EvictionHard,
) -> Vec<NodeCondition> {
    let memory_pressure = facts.memory_bytes > 0
        && facts.memory_available_bytes < eviction.memory_available.bytes_of(facts.memory_bytes);
    let disk_pressure = facts.disk_bytes > 0
        && facts.disk_available_bytes < eviction.nodefs_available.bytes_of(facts.disk_bytes);
    let mut not_ready = Vec::new();
    if let Some(e) = &ready.runtime_error {
        not_ready.push(format!("container runtime not ready: {e}"));
    }
    if let Some(e) = &ready.network_error {
        not_ready.push(format!("container runtime network not ready: {e}"));
    }
    vec![
        if memory_pressure {
            condition(
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
            )
        } else {
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            )
        },
        if disk_pressure {
            condition(
                "DiskPressure",
                true,
                "KubeletHasDiskPressure",
                "kubelet has disk pressure",
            )
        } else {
            condition(
                "DiskPressure",
                false,
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            )
        },
        condition(
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        if not_ready.is_empty() {
            condition(
                "Ready",
                true,
                "KubeletReady",
                "kubelet is posting ready status",
            )
        } else {
            condition("Ready", false, "KubeletNotReady", &not_ready.join(", "))
        },
    ]
}

/// The standard labels upstream puts on its Node, plus `--node-labels`.
pub fn labels(config: &Config) -> BTreeMap<String, String> {
    let arch = go_arch();
    let mut l = BTreeMap::new();
    l.insert(
        "kubernetes.io/hostname".to_string(),
        config.node_name.clone(),
    );
    l.insert("kubernetes.io/os".to_string(), "linux".to_string());
    l.insert("kubernetes.io/arch".to_string(), arch.to_string());
    l.insert("beta.kubernetes.io/os".to_string(), "linux".to_string());
    l.insert("beta.kubernetes.io/arch".to_string(), arch.to_string());
    for (k, v) in &config.node_labels {
        l.insert(k.clone(), v.clone());
    }
    l
}

/// The architecture under Go's name, as Kubernetes spells it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// nodeInfo from the host and the runtime's `name://version`.
pub fn system_info(runtime_version: &str) -> NodeSystemInfo {
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| "Linux".to_string());
    let uname = rustix::system::uname();
    NodeSystemInfo {
        architecture: go_arch().to_string(),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        container_runtime_version: runtime_version.to_string(),
        kernel_version: uname.release().to_string_lossy().into_owned(),
        kube_proxy_version: String::new(),
        kubelet_version: KUBELET_VERSION.to_string(),
        machine_id: read_trimmed("/etc/machine-id"),
        operating_system: "linux".to_string(),
        os_image,
        system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
        swap: None,
    }
}

/// What this kubelet declares in `status.declaredFeatures`; sorted, as validation requires.
pub const DECLARED_FEATURES: &[&str] = &["ExtendWebSocketsToKubelet"];

/// The Node status apart from conditions' times.
pub fn status(
    config: &Config,
    facts: &HostFacts,
    ready: &Readiness,
    runtime_version: &str,
) -> NodeStatus {
    let (capacity, allocatable) = resources(facts, config.max_pods, &config.eviction_hard);
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".to_string(),
                address: config.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".to_string(),
                address: config.hostname.clone(),
            },
        ]),
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions(facts, ready, &config.eviction_hard)),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint {
                port: i32::from(config.api.port),
            }),
        }),
        // The kubelet API speaks WebSocket (v5.channel.k8s.io) for exec and attach, so the
        // apiserver may proxy kubectl's WebSocket straight through instead of translating it
        // to SPDY (upstream gates this on the node declaring the feature).
        declared_features: Some(DECLARED_FEATURES.iter().map(ToString::to_string).collect()),
        node_info: Some(system_info(runtime_version)),
        ..Default::default()
    }
}

/// Creates the Node if it does not exist, with labels, taints and `--pod-cidr`; returns it.
pub async fn register(client: &kube::Client, config: &Config) -> Result<Node, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = Node {
        metadata: ObjectMeta {
            name: Some(config.node_name.clone()),
            labels: Some(labels(config)),
            annotations: Some(BTreeMap::from([(
                "volumes.kubernetes.io/controller-managed-attach-detach".to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: config.pod_cidr.clone(),
            pod_cidrs: config.pod_cidr.clone().map(|c| vec![c]),
            taints: (!config.taints.is_empty()).then(|| config.taints.clone()),
            ..Default::default()
        }),
        status: None,
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => {
            tracing::info!(node = %config.node_name, "registered node");
            Ok(n)
        }
        Err(e) if ferrokube_runtime::apierrors::is_already_exists(&e) => {
            // As upstream: an existing Node keeps its spec; our labels are re-asserted.
            let patch = json!({"metadata": {"labels": labels(config)}});
            let n = nodes
                .patch(
                    &config.node_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .map_err(api_err("updating the existing node's labels"))?;
            tracing::info!(node = %config.node_name, "node already registered");
            Ok(n)
        }
        Err(e) => Err(api_err("registering the node")(e)),
    }
}

/// Renews `kube-node-lease/<node>` every quarter of its duration until `shutdown`.
pub async fn run_lease(
    client: kube::Client,
    node_name: String,
    node_uid: String,
    duration_seconds: i32,
    shutdown: CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let interval = Duration::from_secs_f64(f64::from(duration_seconds) * 0.25);
    loop {
        if let Err(e) = renew_lease(&leases, &node_name, &node_uid, duration_seconds).await {
            tracing::warn!(error = %e, "renewing the node lease");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn renew_lease(
    leases: &Api<Lease>,
    node_name: &str,
    node_uid: &str,
    duration_seconds: i32,
) -> Result<(), Error> {
    let now = MicroTime(Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(node_name.to_string()),
        lease_duration_seconds: Some(duration_seconds),
        renew_time: Some(now),
        ..Default::default()
    };
    let patch = json!({"spec": spec});
    match leases
        .patch(node_name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if ferrokube_runtime::apierrors::is_not_found(&e) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(node_name.to_string()),
                    namespace: Some("kube-node-lease".to_string()),
                    // Owned by the Node, as upstream, so deleting the Node removes it.
                    owner_references: Some(vec![OwnerReference {
                        api_version: "v1".to_string(),
                        kind: "Node".to_string(),
                        name: node_name.to_string(),
                        uid: node_uid.to_string(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                spec: Some(spec),
            };
            leases
                .create(&PostParams::default(), &lease)
                .await
                .map(|_| ())
                .map_err(api_err("creating the node lease"))
        }
        Err(e) => Err(api_err("renewing the node lease")(e)),
    }
}

/// Computes node status every update period and posts it when it changed or is due.
pub struct StatusReporter {
    client: kube::Client,
    config: Config,
    runtime_version: String,
    /// What was last posted (conditions without times) and when.
    last: Option<(NodeStatus, Instant)>,
    /// When each condition type last changed status.
    transitions: BTreeMap<String, (String, Time)>,
}

impl StatusReporter {
    /// A reporter for the node `config` names.
    pub fn new(client: kube::Client, config: Config, runtime_version: String) -> Self {
        Self {
            client,
            config,
            runtime_version,
            last: None,
            transitions: BTreeMap::new(),
        }
    }

    /// Posts the status if it changed or the report period passed. Returns whether it posted.
    pub async fn sync(&mut self, ready: &Readiness) -> Result<bool, Error> {
        let facts = HostFacts::read(&self.config.root_dir);
        let status = status(&self.config, &facts, ready, &self.runtime_version);
        let due = match &self.last {
            None => true,
            Some((prev, at)) => {
                !same_status(prev, &status)
                    || at.elapsed() >= self.config.node_status_report_frequency
            }
        };
        if !due {
            return Ok(false);
        }
        let now = Time(Timestamp::now());
        let mut stamped = status.clone();
        for c in stamped.conditions.iter_mut().flatten() {
            let entry = self
                .transitions
                .entry(c.type_.clone())
                .or_insert_with(|| (c.status.clone(), now.clone()));
            if entry.0 != c.status {
                *entry = (c.status.clone(), now.clone());
            }
            c.last_heartbeat_time = Some(now.clone());
            c.last_transition_time = Some(entry.1.clone());
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let patch = json!({"status": stamped});
        nodes
            .patch_status(
                &self.config.node_name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .map_err(api_err("patching node status"))?;
        self.last = Some((status, Instant::now()));
        Ok(true)
    }
}

/// Whether two statuses differ only in what changes on its own (free memory and disk are
/// not part of the status; conditions are compared by type, status and reason).
fn same_status(a: &NodeStatus, b: &NodeStatus) -> bool {
    let key = |s: &NodeStatus| {
        s.conditions
            .iter()
            .flatten()
            .map(|c| {
                (
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    key(a) == key(b)
        && a.capacity == b.capacity
        && a.allocatable == b.allocatable
        && a.addresses == b.addresses
        && a.node_info == b.node_info
        && a.daemon_endpoints == b.daemon_endpoints
        && a.declared_features == b.declared_features
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            cpus: 2,
            memory_bytes: 4 * 1024 * 1024 * 1024,
            memory_available_bytes: 2 * 1024 * 1024 * 1024,
            disk_bytes: 100 * 1024 * 1024 * 1024,
            disk_available_bytes: 50 * 1024 * 1024 * 1024,
        }
    }

    #[test]
    fn meminfo_and_resources() {
        let (t, a) = parse_meminfo(
            "MemTotal:        4028440 kB\nMemFree: 1 kB\nMemAvailable:    3000000 kB\n",
        );
        assert_eq!((t, a), (4028440 * 1024, 3000000 * 1024));
        let (cap, alloc) = resources(&facts(), 110, &EvictionHard::default());
        assert_eq!(cap["cpu"].0, "2");
        assert_eq!(cap["pods"].0, "110");
        assert_eq!(cap["memory"].0, "4194304Ki");
        assert_eq!(alloc["memory"].0, format!("{}Ki", 4194304 - 102400));
    }

    #[test]
    fn ready_and_pressure_conditions() {
        let c = conditions(&facts(), &Readiness::default(), &EvictionHard::default());
        let ready = c.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("True", Some("KubeletReady"))
        );
        let mut low = facts();
        low.memory_available_bytes = 1;
        low.disk_available_bytes = 1;
        let c = conditions(
            &low,
            &Readiness {
                runtime_error: None,
                network_error: Some("no pod CIDR".into()),
            },
            &EvictionHard::default(),
        );
        let get = |t: &str| c.iter().find(|c| c.type_ == t).unwrap().status.clone();
        assert_eq!(get("MemoryPressure"), "True");
        assert_eq!(get("DiskPressure"), "True");
        assert_eq!(get("Ready"), "False");
    }
}
