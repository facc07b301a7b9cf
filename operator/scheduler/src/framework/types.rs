//! What the framework reasons about: a pod's resource requests and host ports
//! ([`PodInfo`]), a node with everything placed on it ([`NodeInfo`]), and resource amounts
//! ([`Resource`]). Mirrors upstream's `framework/types.go`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::plugins::helper::{Selector, label_selector_as_selector};
use crate::transform::{
    CachedContainer, CachedNode, CachedPod, CachedResources, Interner, IntoCachedNode,
    IntoCachedPod,
};

/// upstream `schedutil.DefaultMilliCPURequest`: what a container without a CPU request counts
/// as when scoring, so that best-effort pods do not all pile onto one node.
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// upstream `schedutil.DefaultMemoryRequest` (200 MiB), for the same reason.
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;

/// Parses a Kubernetes quantity and returns `value * 1000`, rounded up, as apimachinery's
/// `Quantity.MilliValue()`. `None` for malformed input.
pub fn parse_milli(q: &str) -> Option<i128> {
    let s = q.trim();
    if s.is_empty() {
        return None;
    }
    let (sign, s) = match s.as_bytes()[0] {
        b'-' => (-1i128, &s[1..]),
        b'+' => (1, &s[1..]),
        _ => (1, s),
    };
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    if num.is_empty() || num == "." {
        return None;
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    if frac_part.contains('.') {
        return None;
    }
    let digits = format!("{int_part}{frac_part}");
    let mut mantissa: i128 = digits.parse().ok()?;
    // value = mantissa * 10^dec_exp * 2^bin_exp
    let mut dec_exp: i32 = -(i32::try_from(frac_part.len()).ok()?);
    let mut bin_exp: u32 = 0;
    match suffix {
        "" => {}
        "n" => dec_exp -= 9,
        "u" => dec_exp -= 6,
        "m" => dec_exp -= 3,
        "k" => dec_exp += 3,
        "M" => dec_exp += 6,
        "G" => dec_exp += 9,
        "T" => dec_exp += 12,
        "P" => dec_exp += 15,
        "E" => dec_exp += 18,
        "Ki" => bin_exp = 10,
        "Mi" => bin_exp = 20,
        "Gi" => bin_exp = 30,
        "Ti" => bin_exp = 40,
        "Pi" => bin_exp = 50,
        "Ei" => bin_exp = 60,
        other => {
            let exp = other.strip_prefix(['e', 'E'])?;
            dec_exp += exp.parse::<i32>().ok()?;
        }
    }
    mantissa = mantissa.checked_mul(1i128.checked_shl(bin_exp)?)?;
    let exp = dec_exp + 3;
    let milli = if exp >= 0 {
        mantissa.checked_mul(10i128.checked_pow(u32::try_from(exp).ok()?)?)?
    } else {
        let div = 10i128.checked_pow(u32::try_from(-exp).ok()?)?;
        // Round away from zero, as resource.Quantity does when it loses precision.
        (mantissa + div - 1) / div
    };
    Some(sign * milli)
}

/// The amount `q` stands for in the unit the scheduler counts `name` in: millicores for
/// `cpu`, whole units (rounded up) for everything else. Malformed quantities count as 0,
/// as they cannot get past the apiserver's validation anyway.
pub fn quantity_value(name: &str, q: &Quantity) -> i64 {
    let milli = parse_milli(&q.0).unwrap_or(0);
    let v = if name == "cpu" {
        milli
    } else if milli >= 0 {
        (milli + 999) / 1000
    } else {
        milli / 1000
    };
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Amounts of compute resources (upstream `framework.Resource`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resource {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// How many pods a node allows (`pods` in allocatable).
    pub allowed_pod_number: i64,
    /// Extended and hugepage resources by name.
    pub scalar: BTreeMap<String, i64>,
}

impl Resource {
    /// The resources listed in `list` (a node's allocatable, a pod's overhead).
    pub fn from_list(list: Option<&BTreeMap<String, Quantity>>) -> Self {
        Self::from_pairs(list.into_iter().flatten())
    }

    /// The resources named in `pairs` (a cached container's sorted list).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a Quantity)>) -> Self {
        let mut r = Self::default();
        for (name, q) in pairs {
            r.set(name, quantity_value(name, q));
        }
        r
    }

    /// Sets one resource by its API name.
    pub fn set(&mut self, name: &str, v: i64) {
        match name {
            "cpu" => self.milli_cpu = v,
            "memory" => self.memory = v,
            "ephemeral-storage" => self.ephemeral_storage = v,
            "pods" => self.allowed_pod_number = v,
            other if is_scalar_resource_name(other) => {
                self.scalar.insert(other.to_string(), v);
            }
            // Other names (e.g. `storage`) are not scheduled on.
            _ => {}
        }
    }

    /// One resource by its API name.
    pub fn get(&self, name: &str) -> i64 {
        match name {
            "cpu" => self.milli_cpu,
            "memory" => self.memory,
            "ephemeral-storage" => self.ephemeral_storage,
            "pods" => self.allowed_pod_number,
            other => self.scalar.get(other).copied().unwrap_or(0),
        }
    }

    /// Adds `other` (pod counts excluded).
    pub fn add(&mut self, other: &Self) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() += v;
        }
    }

    /// Subtracts `other` (pod counts excluded).
    pub fn sub(&mut self, other: &Self) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_default() -= v;
        }
    }

    /// Raises every resource to at least `other`'s amount (init containers run one by one,
    /// so a pod needs the largest of them, not their sum).
    pub fn set_max(&mut self, other: &Self) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_default();
            *e = (*e).max(*v);
        }
    }

    /// Whether nothing is requested at all (a best-effort pod).
    pub fn is_zero(&self) -> bool {
        self.milli_cpu == 0
            && self.memory == 0
            && self.ephemeral_storage == 0
            && self.scalar.values().all(|v| *v == 0)
    }
}

/// upstream `IsScalarResourceName`: extended resources (`example.com/gpu`), hugepages and
/// attachable volume limits.
pub fn is_scalar_resource_name(name: &str) -> bool {
    is_extended_resource_name(name)
        || name.starts_with("hugepages-")
        || name.starts_with("attachable-volumes-")
}

/// upstream `IsExtendedResourceName`: a qualified name outside `kubernetes.io/`, not
/// `requests.`-prefixed.
pub fn is_extended_resource_name(name: &str) -> bool {
    if is_native_resource(name) || name.starts_with("requests.") {
        return false;
    }
    name.contains('/')
}

fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// A host port a pod uses (upstream `HostPortInfo` entries).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// The host IP; `0.0.0.0` when unset.
    pub ip: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The port.
    pub port: i32,
}

impl HostPort {
    /// Whether two host ports cannot be bound at once: same protocol and port, and the same
    /// IP or one of them on every address.
    pub fn conflicts(&self, other: &Self) -> bool {
        self.port == other.port
            && self.protocol == other.protocol
            && (self.ip == other.ip || self.ip == "0.0.0.0" || other.ip == "0.0.0.0")
    }
}

/// A pod with what the scheduler computes from it once (upstream `PodInfo`).
#[derive(Debug)]
pub struct PodInfo {
    /// The pod.
    pub pod: Arc<CachedPod>,
    /// `namespace/name`.
    pub key: String,
    /// The pod's UID (its key in the cache and queue).
    pub uid: String,
    /// What the pod requests, as the fit filter counts it.
    pub requests: Resource,
    /// CPU and memory requests with upstream's defaults for containers that set none, as
    /// the scoring plugins count them.
    pub non_zero_requests: Resource,
    /// Host ports the pod binds.
    pub host_ports: Vec<HostPort>,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// The pod's inter-pod (anti-)affinity terms, parsed once and shared with the pods
    /// whose terms are equal.
    pub affinity: Arc<AffinityInfo>,
}

/// A parsed pod (anti-)affinity term (upstream `fwk.AffinityTerm`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AffinityTerm {
    /// Namespaces named by the term; the pod's own when it names none and has no
    /// namespaceSelector.
    pub namespaces: BTreeSet<String>,
    /// Which pods the term is about.
    pub selector: Selector,
    /// The node label that defines the topology domain.
    pub topology_key: String,
    /// Namespaces selected by their labels (Nothing when unset).
    pub namespace_selector: Selector,
}

impl AffinityTerm {
    /// upstream `newAffinityTerm`.
    pub fn new(pod: &CachedPod, term: &PodAffinityTerm) -> Result<Self, String> {
        let selector = label_selector_as_selector(term.label_selector.as_ref())?;
        let namespace_selector = label_selector_as_selector(term.namespace_selector.as_ref())?;
        let names = term.namespaces.as_deref().unwrap_or_default();
        let namespaces = if names.is_empty() && term.namespace_selector.is_none() {
            [pod.metadata.namespace.clone().unwrap_or_default()].into()
        } else {
            names.iter().cloned().collect()
        };
        Ok(Self {
            namespaces,
            selector,
            topology_key: term.topology_key.clone(),
            namespace_selector,
        })
    }

    /// upstream `AffinityTerm.Matches`: `pod` is in one of the term's namespaces (by name,
    /// or its namespace's labels `ns_labels` match the namespaceSelector) and its labels
    /// match the selector.
    pub fn matches(&self, pod: &CachedPod, ns_labels: Option<&BTreeMap<String, String>>) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        (self.namespaces.contains(ns) || self.namespace_selector.matches(ns_labels))
            && self.selector.matches(pod.metadata.labels.as_ref())
    }
}

/// A preferred term with its weight.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightedAffinityTerm {
    /// The term.
    pub term: AffinityTerm,
    /// Its weight (1-100).
    pub weight: i32,
}

/// A pod's inter-pod affinity and anti-affinity, parsed (upstream keeps these on
/// `PodInfo` too).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AffinityInfo {
    /// podAffinity required terms.
    pub required_affinity: Vec<AffinityTerm>,
    /// podAntiAffinity required terms.
    pub required_anti_affinity: Vec<AffinityTerm>,
    /// podAffinity preferred terms.
    pub preferred_affinity: Vec<WeightedAffinityTerm>,
    /// podAntiAffinity preferred terms.
    pub preferred_anti_affinity: Vec<WeightedAffinityTerm>,
    /// Why a term could not be parsed (upstream `NewPodInfo`'s error); the pod is then
    /// unschedulable rather than scheduled with the bad term ignored.
    pub parse_error: Option<String>,
}

impl AffinityInfo {
    /// Parses the affinity of `pod`; the first bad term is remembered in `parse_error`.
    pub fn of(pod: &CachedPod) -> Self {
        let mut out = Self::default();
        let Some(a) = pod.spec.as_ref().and_then(|s| s.affinity.as_ref()) else {
            return out;
        };
        let mut errs: Vec<String> = Vec::new();
        let mut required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms
                .into_iter()
                .flatten()
                .filter_map(|t| AffinityTerm::new(pod, t).map_err(|e| errs.push(e)).ok())
                .collect()
        };
        if let Some(pa) = a.pod_affinity.as_ref() {
            out.required_affinity = required(
                pa.required_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
        }
        if let Some(pa) = a.pod_anti_affinity.as_ref() {
            out.required_anti_affinity = required(
                pa.required_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
        }
        let mut preferred =
            |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<WeightedAffinityTerm> {
                terms
                    .into_iter()
                    .flatten()
                    .filter_map(|t| {
                        AffinityTerm::new(pod, &t.pod_affinity_term)
                            .map(|term| WeightedAffinityTerm {
                                term,
                                weight: t.weight,
                            })
                            .map_err(|e| errs.push(e))
                            .ok()
                    })
                    .collect()
            };
        if let Some(pa) = a.pod_affinity.as_ref() {
            out.preferred_affinity = preferred(
                pa.preferred_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
        }
        if let Some(pa) = a.pod_anti_affinity.as_ref() {
            out.preferred_anti_affinity = preferred(
                pa.preferred_during_scheduling_ignored_during_execution
                    .as_ref(),
            );
        }
        out.parse_error = errs.into_iter().next();
        out
    }

    /// Whether the pod has any inter-pod affinity or anti-affinity term.
    pub fn has_any(&self) -> bool {
        !self.required_affinity.is_empty()
            || !self.required_anti_affinity.is_empty()
            || !self.preferred_affinity.is_empty()
            || !self.preferred_anti_affinity.is_empty()
    }
}

/// The parsed affinities of the pods in the cache and queue, shared.
static AFFINITY_INFOS: Interner<AffinityInfo> = Interner::new();

/// The pod's `namespace/name`.
fn pod_key(pod: &CachedPod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// The pod's key in the cache and queue: its uid, or `namespace/name` without one.
pub fn pod_uid(pod: &CachedPod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| pod_key(pod))
}

impl PodInfo {
    /// Computes the derived fields of `pod`.
    pub fn new(pod: impl IntoCachedPod) -> Self {
        let pod = pod.into_cached();
        let key = pod_key(&pod);
        let uid = pod_uid(&pod);
        let (requests, non_zero_requests) = pod_requests(&pod);
        let host_ports = host_ports(&pod);
        let priority = pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0);
        let affinity = AFFINITY_INFOS.share(Arc::new(AffinityInfo::of(&pod)));
        Self {
            pod,
            key,
            uid,
            requests,
            non_zero_requests,
            host_ports,
            priority,
            affinity,
        }
    }

    /// The pod's labels.
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.pod.metadata.labels.as_ref()
    }

    /// The pod's namespace.
    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    /// The pod's name.
    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }
}

fn container_requests(c: &CachedContainer) -> &[(String, Quantity)] {
    c.resources
        .as_ref()
        .and_then(|r: &CachedResources| {
            // Requests default to limits when only limits are given (apiserver defaulting
            // does this too; be safe with objects that bypassed it).
            r.requests.as_deref().or(r.limits.as_deref())
        })
        .unwrap_or_default()
}

fn from_requests(list: &[(String, Quantity)]) -> Resource {
    Resource::from_pairs(list.iter().map(|(n, q)| (n, q)))
}

fn non_zero(list: &[(String, Quantity)]) -> Resource {
    let mut r = from_requests(list);
    let has = |n: &str| list.iter().any(|(k, _)| k == n);
    if !has("cpu") {
        r.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
    }
    if !has("memory") {
        r.memory = DEFAULT_MEMORY_REQUEST;
    }
    r
}

/// upstream `resourcehelper.PodRequests`: regular containers and sidecars (restartable init
/// containers) run together, each other init container runs alone beside the sidecars
/// started before it; the pod needs the largest of these, plus its overhead. Pod-level
/// requests, when set, replace the per-container sum for the resources they name.
/// Returns (requests, requests with upstream's non-zero defaults).
pub fn pod_requests(pod: &CachedPod) -> (Resource, Resource) {
    let Some(spec) = pod.spec.as_ref() else {
        return (Resource::default(), Resource::default());
    };
    let mut reqs = Resource::default();
    let mut nz = Resource::default();
    for c in &spec.containers {
        reqs.add(&from_requests(container_requests(c)));
        nz.add(&non_zero(container_requests(c)));
    }
    let mut sidecars = Resource::default();
    let mut sidecars_nz = Resource::default();
    let mut init_max = Resource::default();
    let mut init_max_nz = Resource::default();
    for c in spec.init_containers.iter().flatten() {
        let r = from_requests(container_requests(c));
        let n = non_zero(container_requests(c));
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            sidecars_nz.add(&n);
            // A sidecar also has to fit while it starts, with the earlier sidecars.
            init_max.set_max(&sidecars);
            init_max_nz.set_max(&sidecars_nz);
        } else {
            let mut with = r;
            with.add(&sidecars);
            init_max.set_max(&with);
            let mut with_nz = n;
            with_nz.add(&sidecars_nz);
            init_max_nz.set_max(&with_nz);
        }
    }
    reqs.add(&sidecars);
    nz.add(&sidecars_nz);
    reqs.set_max(&init_max);
    nz.set_max(&init_max_nz);
    if let Some(pod_level) = spec.resources.as_ref().and_then(|r| r.requests.as_ref()) {
        for (name, q) in pod_level {
            if name == "cpu" || name == "memory" {
                let v = quantity_value(name, q);
                reqs.set(name, v);
                nz.set(name, v);
            }
        }
    }
    if let Some(overhead) = spec.overhead.as_ref() {
        let o = Resource::from_list(Some(overhead));
        reqs.add(&o);
        nz.add(&o);
    }
    (reqs, nz)
}

/// The host ports of a pod's containers and sidecars.
pub fn host_ports(pod: &CachedPod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let port = p.host_port.filter(|p| *p > 0)?;
            Some(HostPort {
                ip: p
                    .host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
            })
        })
        .collect()
}

/// A node and the pods placed on it (upstream `NodeInfo`).
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    /// The node; `None` while only pods bound to it are known.
    pub node: Option<Arc<CachedNode>>,
    /// The node's name.
    pub name: String,
    /// Pods on the node, assumed ones included.
    pub pods: Vec<Arc<PodInfo>>,
    /// The sum of the pods' requests.
    pub requested: Resource,
    /// The sum of the pods' requests with non-zero defaults (for scoring).
    pub non_zero_requested: Resource,
    /// The node's allocatable resources.
    pub allocatable: Resource,
    /// Host ports in use.
    pub used_ports: Vec<HostPort>,
    /// Images on the node: normalized name -> size in bytes.
    pub images: HashMap<String, i64>,
    /// Bumped on every change, so a snapshot can tell what moved.
    pub generation: u64,
    /// How many of the pods have inter-pod affinity or anti-affinity terms (upstream keeps
    /// `PodsWithAffinity`; a count is enough to skip nodes without any).
    pub pods_with_affinity: usize,
    /// How many of the pods have required anti-affinity terms.
    pub pods_with_required_anti_affinity: usize,
    /// The node's `spec.unschedulable`, copied by [`NodeInfo::set_node`]. Filters and
    /// scores read it and [`NodeInfo::has_taints`] for every node a cycle visits; copied
    /// here they need not reach into the node object, a separate allocation that a cycle
    /// at a low pod rate finds out of cache for each of hundreds of nodes.
    pub unschedulable: bool,
    /// Whether the node has any `spec.taints` (see [`NodeInfo::unschedulable`]).
    pub has_taints: bool,
}

impl NodeInfo {
    /// An empty entry for `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Self::default()
        }
    }

    /// Sets or replaces the node object.
    pub fn set_node(&mut self, node: impl IntoCachedNode) {
        let node = node.into_cached();
        let spec = node.spec.as_ref();
        self.unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        self.has_taints = spec
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| !t.is_empty());
        let status = node.status.as_ref();
        self.allocatable = status.map(|s| s.allocatable.clone()).unwrap_or_default();
        self.images.clear();
        for image in status.and_then(|s| s.images.as_ref()).into_iter().flatten() {
            for name in image.names.iter().flatten() {
                self.images
                    .insert(normalized_image_name(name), image.size_bytes.unwrap_or(0));
            }
        }
        self.node = Some(node);
    }

    /// Adds a pod's requests and ports.
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.requested.add(&pod.requests);
        self.non_zero_requested.add(&pod.non_zero_requests);
        self.used_ports.extend(pod.host_ports.iter().cloned());
        if pod.affinity.has_any() {
            self.pods_with_affinity += 1;
        }
        if !pod.affinity.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity += 1;
        }
        self.pods.push(pod);
    }

    /// Removes the pod with `uid`; whether it was there.
    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let Some(i) = self.pods.iter().position(|p| p.uid == uid) else {
            return false;
        };
        let pod = self.pods.swap_remove(i);
        self.requested.sub(&pod.requests);
        self.non_zero_requested.sub(&pod.non_zero_requests);
        if pod.affinity.has_any() {
            self.pods_with_affinity -= 1;
        }
        if !pod.affinity.required_anti_affinity.is_empty() {
            self.pods_with_required_anti_affinity -= 1;
        }
        for hp in &pod.host_ports {
            if let Some(j) = self.used_ports.iter().position(|u| u == hp) {
                self.used_ports.swap_remove(j);
            }
        }
        true
    }

    /// The node's labels.
    pub fn labels(&self) -> Option<&BTreeMap<String, String>> {
        self.node.as_ref().and_then(|n| n.metadata.labels.as_ref())
    }
}

/// upstream `normalizedImageName`: an image without a tag means `:latest`.
pub fn normalized_image_name(name: &str) -> String {
    let colon = name.rfind(':').map_or(-1, |i| i as isize);
    let slash = name.rfind('/').map_or(-1, |i| i as isize);
    if colon <= slash {
        format!("{name}:latest")
    } else {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, Pod, PodSpec, ResourceRequirements,
    };

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_milli("100m"), Some(100));
        assert_eq!(parse_milli("1"), Some(1000));
        assert_eq!(parse_milli("1.5"), Some(1500));
        assert_eq!(parse_milli("1Ki"), Some(1_024_000));
        assert_eq!(parse_milli("2Gi"), Some(2 * (1 << 30) * 1000));
        assert_eq!(parse_milli("1e3"), Some(1_000_000));
        assert_eq!(parse_milli("1n"), Some(1), "rounded up");
        assert_eq!(parse_milli("x"), None);
        assert_eq!(quantity_value("cpu", &q("250m")), 250);
        assert_eq!(quantity_value("memory", &q("1.5Ki")), 1536);
        assert_eq!(quantity_value("memory", &q("100m")), 1, "rounded up");
    }

    fn container(cpu: Option<&str>, mem: Option<&str>) -> Container {
        let mut reqs = BTreeMap::new();
        if let Some(c) = cpu {
            reqs.insert("cpu".to_string(), q(c));
        }
        if let Some(m) = mem {
            reqs.insert("memory".to_string(), q(m));
        }
        Container {
            name: "c".into(),
            resources: Some(ResourceRequirements {
                requests: Some(reqs),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn requests_with_init_containers_sidecars_and_defaults() {
        let mut sidecar = container(Some("100m"), None);
        sidecar.restart_policy = Some("Always".into());
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![container(Some("200m"), Some("1Gi")), container(None, None)],
                init_containers: Some(vec![container(Some("2"), None), sidecar]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (r, nz) = pod_requests(&CachedPod::from(pod));
        // containers 200m + sidecar 100m = 300m < the 2-core init container.
        assert_eq!(r.milli_cpu, 2000);
        assert_eq!(r.memory, 1 << 30);
        // non-zero: 200m + 100m (default) + 100m sidecar = 400m; init: 2000m.
        assert_eq!(nz.milli_cpu, 2000);
        // 1Gi + 200Mi default + sidecar's 200Mi default.
        assert_eq!(nz.memory, (1 << 30) + 2 * DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn host_ports_and_conflicts() {
        let pod = Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![
                        ContainerPort {
                            container_port: 80,
                            host_port: Some(8080),
                            ..Default::default()
                        },
                        ContainerPort {
                            container_port: 81,
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let ports = host_ports(&CachedPod::from(pod));
        assert_eq!(ports.len(), 1);
        let specific = HostPort {
            ip: "10.0.0.1".into(),
            protocol: "TCP".into(),
            port: 8080,
        };
        assert!(ports[0].conflicts(&specific));
        let udp = HostPort {
            protocol: "UDP".into(),
            ..specific.clone()
        };
        assert!(!ports[0].conflicts(&udp));
    }

    #[test]
    fn image_names() {
        assert_eq!(normalized_image_name("nginx"), "nginx:latest");
        assert_eq!(
            normalized_image_name("reg:5000/nginx"),
            "reg:5000/nginx:latest"
        );
        assert_eq!(normalized_image_name("nginx:1.2"), "nginx:1.2");
    }
}
