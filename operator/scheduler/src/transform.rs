//! What the scheduler's informers keep of the Pods and Nodes they cache: pods are decoded
//! into [`CachedPod`] and nodes into [`CachedNode`], types with only the fields the
//! scheduler reads; [`pod`] and [`node`] (the transforms given to the informer factory,
//! client-go's `informers.WithTransform`) drop the annotations and spare list room.
//!
//! A typed Pod is large: a container carries env, volume mounts, probes, lifecycle hooks and
//! a security context, and admission adds a projected service-account volume to every pod.
//! Every pod in the cluster passes through the scheduler's pod informer, and the cache and
//! queue share what it keeps, so the fields no plugin reads made up most of the scheduler's
//! memory. The transforms keep what the queue, the cache and the default plugins read,
//! listed field by field below; everything else is dropped before the object is cached or
//! handed on. The scheduler never writes a cached object back: bindings are POSTed by name,
//! the PodScheduled condition and nominatedNodeName go in a strategic-merge patch of only
//! those fields, and victims are patched and deleted by name, so nothing dropped here can be
//! lost on the server.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerImage, ContainerPort, Node, NodeSpec, NodeStatus, Pod,
    PodCondition, PodSchedulingGate, PodSpec, PodStatus, ResourceRequirements, Taint, Toleration,
    TopologySpreadConstraint, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

use crate::framework::types::Resource;

/// The pod as the scheduler's informer caches it, decoded straight from the apiserver's
/// JSON (serde skips every other field while it parses, without allocating):
///
/// - metadata: all but annotations (no plugin reads a pod's annotations, and
///   `kubectl apply`'s last-applied-configuration can be the largest part of a pod);
///   labels, namespace, uid, ownerReferences (PodTopologySpread's default selector),
///   deletionTimestamp and generation are kept;
/// - spec ([`CachedPodSpec`]): `nodeName`, `schedulerName`, `schedulingGates` (queue,
///   SchedulingGates), `priority`, `preemptionPolicy` (queue sort, preemption),
///   `nodeSelector`, `affinity` (NodeAffinity, InterPodAffinity), `tolerations`
///   (TaintToleration, NodeUnschedulable, PodTopologySpread), `topologySpreadConstraints`,
///   `overhead` and pod-level `resources` (NodeResourcesFit), and the containers and init
///   containers with only `name`, `image` (ImageLocality), `resources` (NodeResourcesFit,
///   BalancedAllocation), `ports` (NodePorts) and `restartPolicy` (sidecars); of the volumes
///   only those a plugin reads, with only those fields: `persistentVolumeClaim`,
///   `ephemeral` (VolumeBinding) and `image` (ImageLocality);
/// - status ([`CachedPodStatus`]): `phase`, `conditions` (the PodScheduled condition is
///   compared before it is patched; DisruptionTarget marks preemption victims),
///   `nominatedNodeName` and `startTime` (preemption).
///
/// Why not the k8s-openapi `Pod` with those fields emptied: the struct itself is 2.4 KB and
/// each `Container` 2.1 KB, whatever they hold. With 10000 pods those inline sizes were
/// about half of the scheduler's peak heap. The kept fields have the same names and types
/// as in `Pod`, so the plugins read them the same way.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CachedPod {
    /// The pod's metadata (annotations and managedFields dropped).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the plugins read of the spec.
    pub spec: Option<CachedPodSpec>,
    /// What the scheduler reads of the status.
    pub status: Option<CachedPodStatus>,
}

/// The fields of `PodSpec` the scheduler reads (see [`CachedPod`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.schedulerName`.
    pub scheduler_name: Option<String>,
    /// `spec.schedulingGates`.
    pub scheduling_gates: Option<Vec<PodSchedulingGate>>,
    /// `spec.priority`.
    pub priority: Option<i32>,
    /// `spec.preemptionPolicy`.
    pub preemption_policy: Option<String>,
    /// `spec.nodeSelector`.
    pub node_selector: Option<BTreeMap<String, String>>,
    /// `spec.affinity`, shared with the pods that have an equal one ([`Interner`]).
    #[serde(default, deserialize_with = "deserialize_affinity")]
    pub affinity: Option<Arc<Affinity>>,
    /// `spec.tolerations`.
    pub tolerations: Option<Vec<Toleration>>,
    /// `spec.topologySpreadConstraints`, shared with the pods that have equal ones
    /// ([`Interner`]).
    #[serde(default, deserialize_with = "deserialize_topology_spread_constraints")]
    pub topology_spread_constraints: Option<Arc<[TopologySpreadConstraint]>>,
    /// `spec.overhead`.
    pub overhead: Option<BTreeMap<String, Quantity>>,
    /// Pod-level `spec.resources`.
    pub resources: Option<ResourceRequirements>,
    /// `spec.containers`.
    #[serde(default)]
    pub containers: Vec<CachedContainer>,
    /// `spec.initContainers`.
    pub init_containers: Option<Vec<CachedContainer>>,
    /// The volumes a plugin reads ([`volumes`]).
    #[serde(default, deserialize_with = "deserialize_volumes")]
    pub volumes: Option<Vec<Volume>>,
}

/// The fields of a `Container` the scheduler reads (see [`CachedPod`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainer {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// Its image (ImageLocality).
    pub image: Option<String>,
    /// Its requests and limits.
    pub resources: Option<CachedResources>,
    /// Its ports (NodePorts).
    pub ports: Option<Vec<ContainerPort>>,
    /// `Always` for a sidecar.
    pub restart_policy: Option<String>,
}

/// A container's `resources`: its requests and limits as lists sorted by name, as the
/// apiserver's maps are. Decoded as a `BTreeMap`, every list held a B-tree leaf with room
/// for eleven entries (about 540 bytes) for its one to three; with 10000 pods that was
/// about 5 MB of the scheduler's peak heap. Only [`crate::framework::types::pod_requests`]
/// reads them, by name, once per pod update.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CachedResources {
    /// `requests`.
    #[serde(default, deserialize_with = "deserialize_resource_list")]
    pub requests: Option<ResourceList>,
    /// `limits` (requests default to them).
    #[serde(default, deserialize_with = "deserialize_resource_list")]
    pub limits: Option<ResourceList>,
}

/// Resource names and quantities, sorted by name.
pub type ResourceList = Vec<(String, Quantity)>;

fn resource_list(list: BTreeMap<String, Quantity>) -> ResourceList {
    // A BTreeMap iterates in name order and has no duplicates; `collect` from its exact
    // size iterator allocates exactly the room needed.
    list.into_iter().collect()
}

fn deserialize_resource_list<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<ResourceList>, D::Error> {
    Ok(Option::<BTreeMap<String, Quantity>>::deserialize(d)?.map(resource_list))
}

impl From<ResourceRequirements> for CachedResources {
    fn from(r: ResourceRequirements) -> Self {
        Self {
            requests: r.requests.map(resource_list),
            limits: r.limits.map(resource_list),
        }
    }
}

/// The fields of `PodStatus` the scheduler reads (see [`CachedPod`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    /// `status.phase`.
    pub phase: Option<String>,
    /// `status.conditions`.
    pub conditions: Option<Vec<PodCondition>>,
    /// `status.nominatedNodeName`.
    pub nominated_node_name: Option<String>,
    /// `status.startTime`.
    pub start_time: Option<Time>,
}

ferrokube_runtime::resource_as!(CachedPod, Pod);

/// What the pods informer keeps after decoding: annotations are decoded with the rest of
/// the metadata, then dropped here, with the conditions no reader looks at ([`conditions`]).
pub fn pod(mut pod: CachedPod) -> CachedPod {
    pod.metadata.annotations = None;
    let assigned = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty());
    if let Some(status) = pod.status.as_mut() {
        conditions(&mut status.conditions, assigned);
    }
    shrink(&mut pod);
    pod
}

/// Keeps the conditions the scheduler reads: `DisruptionTarget` (preemption skips victims
/// already being preempted) and, while the pod waits for a node, `PodScheduled` (compared
/// before the scheduler patches it; it never patches an assigned pod's). A bound pod
/// carries `PodScheduled=True` and, once its kubelet reports, four more conditions; with
/// 10000 bound pods the first alone was about 2 MB of the scheduler's peak heap.
fn conditions(conditions: &mut Option<Vec<PodCondition>>, assigned: bool) {
    if let Some(cs) = conditions.as_mut() {
        cs.retain(|c| c.type_ == "DisruptionTarget" || (!assigned && c.type_ == "PodScheduled"));
        if cs.is_empty() {
            *conditions = None;
        }
    }
}

/// Hands out one shared copy of equal values: the replicas of a workload carry the same
/// affinity and spread constraints, which are among the largest parts of a pod the
/// scheduler keeps (a preferred pod affinity term and a zone spread constraint were 2.5 KB
/// of a 5 KB cached pod: two label-selector maps and a dozen strings). The last few
/// distinct values are remembered, weakly, so a value no pod holds any more is freed.
pub struct Interner<T: ?Sized> {
    recent: Mutex<VecDeque<Weak<T>>>,
}

/// How many distinct values an [`Interner`] remembers: enough for the workloads whose
/// pods arrive interleaved, few enough that a miss costs little.
const INTERNED: usize = 16;

impl<T: ?Sized + PartialEq> Interner<T> {
    /// An empty interner.
    pub const fn new() -> Self {
        Self {
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// The remembered value equal to `value`, or `value`, now remembered.
    pub fn share(&self, value: Arc<T>) -> Arc<T> {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.retain(|w| w.strong_count() > 0);
        if let Some(found) = recent
            .iter()
            .filter_map(Weak::upgrade)
            .find(|v| **v == *value)
        {
            return found;
        }
        if recent.len() >= INTERNED {
            recent.pop_front();
        }
        recent.push_back(Arc::downgrade(&value));
        value
    }
}

impl<T: ?Sized + PartialEq> Default for Interner<T> {
    fn default() -> Self {
        Self::new()
    }
}

static AFFINITIES: Interner<Affinity> = Interner::new();
static SPREAD_CONSTRAINTS: Interner<[TopologySpreadConstraint]> = Interner::new();

fn deserialize_affinity<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Arc<Affinity>>, D::Error> {
    Ok(Option::<Affinity>::deserialize(d)?.map(|a| AFFINITIES.share(Arc::new(a))))
}

fn deserialize_topology_spread_constraints<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Arc<[TopologySpreadConstraint]>>, D::Error> {
    Ok(Option::<Vec<TopologySpreadConstraint>>::deserialize(d)?
        .map(|c| SPREAD_CONSTRAINTS.share(c.into())))
}

/// Gives every list of `pod` back the capacity it does not use. serde grows a decoded `Vec`
/// from empty, so one container or two tolerations sit in room for four. With 10000 pods
/// these lists (containers, tolerations, conditions) held 19.5 of the scheduler's 75 MB of
/// live heap, most of it unused room (peak RSS in that bench: 98 -> 93 MiB). The cached
/// pod lives as long as the pod, so one reallocation is cheap.
fn shrink(pod: &mut CachedPod) {
    fit(&mut pod.metadata.owner_references);
    fit(&mut pod.metadata.finalizers);
    if let Some(spec) = pod.spec.as_mut() {
        fit(&mut spec.scheduling_gates);
        fit(&mut spec.tolerations);
        fit(&mut spec.volumes);
        spec.containers.shrink_to_fit();
        fit(&mut spec.init_containers);
        let init = spec.init_containers.iter_mut().flatten();
        for c in spec.containers.iter_mut().chain(init) {
            fit(&mut c.ports);
        }
    }
    if let Some(status) = pod.status.as_mut() {
        fit(&mut status.conditions);
    }
}

/// Gives an optional list back the capacity it does not use.
fn fit<T>(v: &mut Option<Vec<T>>) {
    if let Some(v) = v {
        v.shrink_to_fit();
    }
}

/// A full API pod reduced to what the informer would have decoded of it: the same fields
/// [`CachedPod`]'s decoding keeps (a unit test holds the two to each other). For callers
/// that hold a `Pod` object (tests, tools).
impl From<Pod> for CachedPod {
    fn from(p: Pod) -> Self {
        // The same reduction as the informer's, conditions and spare room included.
        pod(Self {
            metadata: p.metadata,
            spec: p.spec.map(pod_spec),
            status: p.status.map(pod_status),
        })
    }
}

/// A pod handed to `PodInfo::new`: the informer's cached pod as is, or a full API pod
/// reduced by [`CachedPod::from`].
pub trait IntoCachedPod {
    /// The cached form, shared.
    fn into_cached(self) -> Arc<CachedPod>;
}

impl IntoCachedPod for Arc<CachedPod> {
    fn into_cached(self) -> Arc<CachedPod> {
        self
    }
}

impl IntoCachedPod for Arc<Pod> {
    fn into_cached(self) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(Arc::unwrap_or_clone(self)))
    }
}

fn pod_spec(s: PodSpec) -> CachedPodSpec {
    CachedPodSpec {
        node_name: s.node_name,
        scheduler_name: s.scheduler_name,
        scheduling_gates: s.scheduling_gates,
        priority: s.priority,
        preemption_policy: s.preemption_policy,
        node_selector: s.node_selector,
        affinity: s.affinity.map(|a| AFFINITIES.share(Arc::new(a))),
        tolerations: s.tolerations,
        topology_spread_constraints: s
            .topology_spread_constraints
            .map(|c| SPREAD_CONSTRAINTS.share(c.into())),
        overhead: s.overhead,
        resources: s.resources,
        containers: s.containers.into_iter().map(container).collect(),
        init_containers: s
            .init_containers
            .map(|cs| cs.into_iter().map(container).collect()),
        volumes: s.volumes.and_then(volumes),
    }
}

fn container(c: Container) -> CachedContainer {
    CachedContainer {
        name: c.name,
        image: c.image,
        resources: c.resources.map(CachedResources::from),
        ports: c.ports,
        restart_policy: c.restart_policy,
    }
}

fn deserialize_volumes<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Volume>>, D::Error> {
    Ok(Option::<Vec<Volume>>::deserialize(d)?.and_then(volumes))
}

/// The volumes VolumeBinding and ImageLocality look at; `None` when there are none, so a
/// pod with only a service-account volume keeps no list at all.
fn volumes(vs: Vec<Volume>) -> Option<Vec<Volume>> {
    let kept: Vec<Volume> = vs
        .into_iter()
        .filter(|v| {
            v.persistent_volume_claim.is_some() || v.ephemeral.is_some() || v.image.is_some()
        })
        .map(|v| Volume {
            name: v.name,
            persistent_volume_claim: v.persistent_volume_claim,
            ephemeral: v.ephemeral,
            image: v.image,
            ..Volume::default()
        })
        .collect();
    (!kept.is_empty()).then_some(kept)
}

fn pod_status(s: PodStatus) -> CachedPodStatus {
    CachedPodStatus {
        phase: s.phase,
        conditions: s.conditions,
        nominated_node_name: s.nominated_node_name,
        start_time: s.start_time,
    }
}

/// The node as the scheduler's informer caches it, decoded straight from the apiserver's
/// JSON: metadata but annotations (the name, labels for NodeAffinity, PodTopologySpread and
/// InterPodAffinity), of the spec `taints` (TaintToleration) and `unschedulable`
/// (NodeUnschedulable), of the status `allocatable`, already in the units NodeResourcesFit
/// counts ([`Resource`]), and `images` (ImageLocality). Conditions, addresses, nodeInfo,
/// capacity and the volume lists are never decoded: the kubelet rewrites conditions every
/// heartbeat, and no plugin reads them (upstream filters on the taints the node lifecycle
/// controller derives from them).
///
/// Why not the k8s-openapi `Node` with those fields emptied: its `NodeStatus` and
/// `NodeSpec` are most of a kilobyte inline whatever they hold, and the allocatable map a
/// B-tree leaf of about 540 bytes; with 5000 nodes that was about 7 MB of the scheduler's
/// peak heap, for what a `Resource` holds in 56 bytes.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CachedNode {
    /// The node's metadata (annotations and managedFields dropped).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// What the plugins read of the spec.
    pub spec: Option<CachedNodeSpec>,
    /// What the plugins read of the status.
    pub status: Option<CachedNodeStatus>,
}

/// The fields of `NodeSpec` the scheduler reads (see [`CachedNode`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedNodeSpec {
    /// `spec.taints`.
    pub taints: Option<Vec<Taint>>,
    /// `spec.unschedulable`.
    pub unschedulable: Option<bool>,
}

/// The fields of `NodeStatus` the scheduler reads (see [`CachedNode`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedNodeStatus {
    /// `status.allocatable`, counted as the scheduler counts it.
    #[serde(default, deserialize_with = "deserialize_allocatable")]
    pub allocatable: Resource,
    /// `status.images`.
    pub images: Option<Vec<ContainerImage>>,
}

fn deserialize_allocatable<'de, D: Deserializer<'de>>(d: D) -> Result<Resource, D::Error> {
    let list = Option::<BTreeMap<String, Quantity>>::deserialize(d)?;
    Ok(Resource::from_list(list.as_ref()))
}

ferrokube_runtime::resource_as!(CachedNode, Node);

/// What the nodes informer keeps after decoding: annotations are decoded with the rest of
/// the metadata, then dropped here, with the lists' spare room.
pub fn node(mut node: CachedNode) -> CachedNode {
    node.metadata.annotations = None;
    if let Some(spec) = node.spec.as_mut() {
        fit(&mut spec.taints);
    }
    if let Some(status) = node.status.as_mut() {
        fit(&mut status.images);
    }
    node
}

/// A full API node reduced to what the informer would have decoded of it (a unit test
/// holds the two to each other). For callers that hold a `Node` object (tests, tools).
impl From<Node> for CachedNode {
    fn from(n: Node) -> Self {
        // The same reduction as the informer's, annotations and spare room included.
        node(Self {
            metadata: n.metadata,
            spec: n.spec.map(|s: NodeSpec| CachedNodeSpec {
                taints: s.taints,
                unschedulable: s.unschedulable,
            }),
            status: n.status.map(|s: NodeStatus| CachedNodeStatus {
                allocatable: Resource::from_list(s.allocatable.as_ref()),
                images: s.images,
            }),
        })
    }
}

/// A node handed to `NodeInfo::set_node`: the informer's cached node as is, or a full API
/// node reduced by [`CachedNode::from`].
pub trait IntoCachedNode {
    /// The cached form, shared.
    fn into_cached(self) -> Arc<CachedNode>;
}

impl IntoCachedNode for Arc<CachedNode> {
    fn into_cached(self) -> Arc<CachedNode> {
        self
    }
}

impl IntoCachedNode for Arc<Node> {
    fn into_cached(self) -> Arc<CachedNode> {
        Arc::new(CachedNode::from(Arc::unwrap_or_clone(self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::types::{NodeInfo, PodInfo};
    use std::sync::Arc;

    /// A pod as the apiserver returns it after admission, with what every plugin reads and
    /// much that none does.
    fn admitted() -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(admitted_json())?)
    }

    /// What the informer decodes of [`admitted`].
    fn decoded() -> anyhow::Result<CachedPod> {
        Ok(pod(serde_json::from_value(admitted_json())?))
    }

    fn admitted_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "generation": 2,
                "labels": { "app": "web" },
                "annotations": { "kubectl.kubernetes.io/last-applied-configuration": "{}" },
                "ownerReferences": [{ "apiVersion": "apps/v1", "kind": "ReplicaSet",
                                      "name": "web", "uid": "rs1", "controller": true }],
                "deletionTimestamp": "2026-01-01T00:00:00Z"
            },
            "spec": {
                "nodeName": "n1", "schedulerName": "default-scheduler",
                "schedulingGates": [{ "name": "gate" }],
                "priority": 10, "priorityClassName": "high", "preemptionPolicy": "Never",
                "nodeSelector": { "disk": "ssd" },
                "affinity": { "podAntiAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": [
                    { "labelSelector": { "matchLabels": { "app": "web" } },
                      "topologyKey": "kubernetes.io/hostname" }] } },
                "tolerations": [{ "key": "k", "operator": "Exists", "effect": "NoSchedule" }],
                "topologySpreadConstraints": [{ "maxSkew": 1, "topologyKey": "zone",
                    "whenUnsatisfiable": "DoNotSchedule",
                    "labelSelector": { "matchLabels": { "app": "web" } } }],
                "overhead": { "cpu": "10m" },
                "serviceAccountName": "default", "dnsPolicy": "ClusterFirst",
                "securityContext": { "runAsUser": 1000 },
                "initContainers": [
                    { "name": "side", "image": "side:1", "restartPolicy": "Always",
                      "resources": { "requests": { "cpu": "50m" } },
                      "ports": [{ "containerPort": 9000, "hostPort": 9000 }] },
                    { "name": "init", "image": "init:1", "command": ["sh"],
                      "resources": { "requests": { "memory": "1Gi" } } }
                ],
                "containers": [{
                    "name": "c", "image": "web:1",
                    "env": [{ "name": "A", "value": "b" }],
                    "resources": { "requests": { "cpu": "100m", "memory": "500Mi" },
                                   "limits": { "cpu": "1" } },
                    "ports": [{ "name": "http", "containerPort": 8080, "hostPort": 80,
                                "protocol": "TCP" }],
                    "readinessProbe": { "httpGet": { "path": "/", "port": 8080 } },
                    "volumeMounts": [{ "name": "kube-api-access-x",
                                       "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }]
                }],
                "volumes": [
                    { "name": "kube-api-access-x", "projected": { "sources": [
                        { "serviceAccountToken": { "path": "token", "expirationSeconds": 3607 } }
                    ] } },
                    { "name": "data", "persistentVolumeClaim": { "claimName": "data" } },
                    { "name": "scratch", "ephemeral": { "volumeClaimTemplate": {
                        "spec": { "accessModes": ["ReadWriteOnce"],
                                  "resources": { "requests": { "storage": "1Gi" } } } } } },
                    { "name": "model", "image": { "reference": "models:1" } },
                    { "name": "tmp", "emptyDir": {} }
                ]
            },
            "status": {
                "phase": "Pending", "qosClass": "Burstable", "hostIP": "192.168.0.1",
                "nominatedNodeName": "n2",
                "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{ "type": "PodScheduled", "status": "False",
                                 "reason": "Unschedulable", "message": "no",
                                 "lastTransitionTime": "2026-01-01T00:00:00Z" },
                               { "type": "DisruptionTarget", "status": "True",
                                 "reason": "PreemptionByScheduler" },
                               { "type": "Ready", "status": "False" }],
                "containerStatuses": [{ "name": "c", "ready": false, "restartCount": 0,
                                        "image": "web:1", "imageID": "" }]
            }
        })
    }

    #[test]
    fn interner_shares_equal_values_and_forgets_dropped_ones() {
        let i: Interner<String> = Interner::new();
        let a = i.share(Arc::new("a".to_string()));
        let a2 = i.share(Arc::new("a".to_string()));
        assert!(Arc::ptr_eq(&a, &a2), "equal values are one copy");
        let b = i.share(Arc::new("b".to_string()));
        assert!(!Arc::ptr_eq(&a, &b));
        // Once no holder is left the value is freed, not kept by the interner.
        let weak = Arc::downgrade(&b);
        drop(b);
        assert!(weak.upgrade().is_none());
        // Past its capacity the oldest values are forgotten (still correct, not shared).
        let held: Vec<_> = (0..INTERNED)
            .map(|n| i.share(Arc::new(n.to_string())))
            .collect();
        let a3 = i.share(Arc::new("a".to_string()));
        assert_eq!(a3, a);
        assert!(!Arc::ptr_eq(&a3, &a));
        assert!(Arc::ptr_eq(&held[1], &i.share(Arc::new("1".to_string()))));
    }

    #[test]
    fn replicas_share_affinity_constraints_and_parsed_terms() -> anyhow::Result<()> {
        let (one, two) = (Arc::new(decoded()?), Arc::new(decoded()?));
        let spec = |p: &CachedPod| p.spec.clone().unwrap_or_default();
        let (s1, s2) = (spec(&one), spec(&two));
        let (Some(a1), Some(a2)) = (&s1.affinity, &s2.affinity) else {
            anyhow::bail!("the test pod has an affinity");
        };
        assert!(Arc::ptr_eq(a1, a2));
        let (Some(c1), Some(c2)) = (
            &s1.topology_spread_constraints,
            &s2.topology_spread_constraints,
        ) else {
            anyhow::bail!("the test pod has spread constraints");
        };
        assert!(Arc::ptr_eq(c1, c2));
        let (i1, i2) = (PodInfo::new(one), PodInfo::new(two));
        assert!(i1.affinity.has_any());
        assert!(Arc::ptr_eq(&i1.affinity, &i2.affinity));
        // A full Pod reduced by hand shares them too.
        let from_full = CachedPod::from(admitted()?);
        assert!(
            from_full
                .spec
                .and_then(|s| s.affinity)
                .is_some_and(|a| Arc::ptr_eq(&a, a1))
        );
        Ok(())
    }

    #[test]
    fn pod_keeps_what_plugins_read() -> anyhow::Result<()> {
        let full = admitted()?;
        let kept = decoded()?;
        // Decoding the JSON and reducing a full Pod keep the same.
        assert_eq!(kept, CachedPod::from(full.clone()));

        let mut meta = full.metadata.clone();
        meta.annotations = None;
        assert_eq!(kept.metadata, meta, "metadata but annotations is kept");

        let (s, was) = (
            kept.spec.clone().unwrap_or_default(),
            full.spec.clone().unwrap_or_default(),
        );
        assert_eq!(s.node_name, was.node_name);
        assert_eq!(s.scheduler_name, was.scheduler_name);
        assert_eq!(s.scheduling_gates, was.scheduling_gates);
        assert_eq!(s.priority, Some(10));
        assert_eq!(s.preemption_policy.as_deref(), Some("Never"));
        assert_eq!(s.node_selector, was.node_selector);
        assert_eq!(s.affinity.as_deref(), was.affinity.as_ref());
        assert_eq!(s.tolerations, was.tolerations);
        assert_eq!(
            s.topology_spread_constraints.as_deref(),
            was.topology_spread_constraints.as_deref()
        );
        assert_eq!(s.overhead, was.overhead);
        // The same five fields, taken from the full containers by field moves.
        let brief_full = |cs: &[Container]| cs.iter().cloned().map(container).collect::<Vec<_>>();
        assert_eq!(s.containers, brief_full(&was.containers));
        let (inits, was_inits) = (
            s.init_containers.unwrap_or_default(),
            was.init_containers.unwrap_or_default(),
        );
        assert_eq!(inits, brief_full(&was_inits));
        let names = |vs: Option<Vec<Volume>>| {
            vs.unwrap_or_default()
                .into_iter()
                .map(|v| v.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(s.volumes.clone()), ["data", "scratch", "model"]);
        let claim = s.volumes.iter().flatten().find(|v| v.name == "data");
        assert_eq!(
            claim
                .and_then(|v| v.persistent_volume_claim.as_ref())
                .map(|c| c.claim_name.as_str()),
            Some("data")
        );

        let (st, was_st) = (
            kept.status.clone().unwrap_or_default(),
            full.status.clone().unwrap_or_default(),
        );
        assert_eq!(st.phase, was_st.phase);
        // The fixture is assigned: of its conditions only DisruptionTarget is read.
        let types = |cs: Option<Vec<PodCondition>>| {
            cs.unwrap_or_default()
                .into_iter()
                .map(|c| c.type_)
                .collect::<Vec<_>>()
        };
        assert_eq!(types(st.conditions.clone()), ["DisruptionTarget"]);
        let disruption = |cs: Option<Vec<PodCondition>>| {
            cs.unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "DisruptionTarget")
        };
        assert_eq!(
            disruption(st.conditions.clone()),
            disruption(was_st.conditions.clone())
        );
        assert_eq!(st.nominated_node_name, was_st.nominated_node_name);
        assert_eq!(st.start_time, was_st.start_time);

        // What the framework derives from the pod does not change.
        let (a, b) = (PodInfo::new(Arc::new(full)), PodInfo::new(Arc::new(kept)));
        assert_eq!(a.uid, b.uid);
        assert_eq!(a.key, b.key);
        assert_eq!(a.requests, b.requests);
        assert_eq!(a.non_zero_requests, b.non_zero_requests);
        assert_eq!(a.host_ports, b.host_ports);
        assert_eq!(a.priority, b.priority);
        assert_eq!(
            a.affinity.required_anti_affinity.len(),
            b.affinity.required_anti_affinity.len()
        );
        Ok(())
    }

    /// What no plugin reads has no field in [`CachedPodSpec`] or [`CachedContainer`] at all;
    /// of what has one, annotations and the volumes no plugin reads are dropped.
    #[test]
    fn pod_drops_what_no_plugin_reads() -> anyhow::Result<()> {
        let kept = decoded()?;
        assert!(kept.metadata.annotations.is_none());
        let vs = kept.spec.unwrap_or_default().volumes.unwrap_or_default();
        assert!(
            vs.iter()
                .all(|v| v.projected.is_none() && v.empty_dir.is_none())
        );
        Ok(())
    }

    /// Decoded lists start with room for four; the cached pod keeps only what it holds.
    #[test]
    fn pod_lists_hold_no_spare_room() -> anyhow::Result<()> {
        let kept = decoded()?;
        let spec = kept.spec.unwrap_or_default();
        let status = kept.status.unwrap_or_default();
        let lists = [
            (
                "containers",
                spec.containers.len(),
                spec.containers.capacity(),
            ),
            (
                "tolerations",
                spec.tolerations.as_ref().map_or(0, Vec::len),
                spec.tolerations.as_ref().map_or(0, Vec::capacity),
            ),
            (
                "conditions",
                status.conditions.as_ref().map_or(0, Vec::len),
                status.conditions.as_ref().map_or(0, Vec::capacity),
            ),
        ];
        for (what, len, capacity) in lists {
            assert!(len > 0, "{what}: the fixture has some");
            assert_eq!(capacity, len, "{what}");
        }
        Ok(())
    }

    /// A pod waiting for a node keeps its PodScheduled condition (compared before it is
    /// patched); a bound one keeps none but DisruptionTarget, or no list at all.
    #[test]
    fn pod_scheduled_condition_is_kept_while_the_pod_waits() -> anyhow::Result<()> {
        let mut json = admitted_json();
        json["spec"]["nodeName"] = serde_json::Value::Null;
        let decoded = pod(serde_json::from_value(json.clone())?);
        let full: Pod = serde_json::from_value(json.clone())?;
        assert_eq!(decoded, CachedPod::from(full));
        let types: Vec<String> = decoded
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.type_)
            .collect();
        assert_eq!(types, ["PodScheduled", "DisruptionTarget"]);

        let mut bound = admitted_json();
        bound["status"]["conditions"] =
            serde_json::json!([{ "type": "PodScheduled", "status": "True" }]);
        let decoded = pod(serde_json::from_value(bound)?);
        assert!(decoded.status.and_then(|s| s.conditions).is_none());
        Ok(())
    }

    #[test]
    fn pod_with_only_a_service_account_volume_keeps_no_volumes() -> anyhow::Result<()> {
        let mut json = admitted_json();
        if let Some(vs) = json["spec"]["volumes"].as_array_mut() {
            vs.truncate(1);
        }
        let decoded: CachedPod = serde_json::from_value(json.clone())?;
        assert!(decoded.spec.and_then(|s| s.volumes).is_none());
        let full: Pod = serde_json::from_value(json)?;
        assert!(CachedPod::from(full).spec.and_then(|s| s.volumes).is_none());
        Ok(())
    }

    fn node_json() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": { "name": "n1", "uid": "n", "resourceVersion": "3",
                          "labels": { "topology.kubernetes.io/zone": "a" },
                          "annotations": { "node.alpha.kubernetes.io/ttl": "0" } },
            "spec": { "unschedulable": true, "podCIDR": "10.0.0.0/24",
                      "taints": [{ "key": "k", "effect": "NoSchedule" }] },
            "status": {
                "capacity": { "cpu": "8", "memory": "32Gi", "pods": "110" },
                "allocatable": { "cpu": "7", "memory": "30Gi", "pods": "110",
                                 "example.com/gpu": "2", "hugepages-2Mi": "1Gi" },
                "images": [{ "names": ["web:1", "reg/web@sha256:00"], "sizeBytes": 1000 }],
                "conditions": [{ "type": "Ready", "status": "True" }],
                "addresses": [{ "type": "InternalIP", "address": "192.168.0.1" }],
                "nodeInfo": { "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "",
                              "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "",
                              "machineID": "", "operatingSystem": "linux", "osImage": "",
                              "systemUUID": "" }
            }
        })
    }

    #[test]
    fn node_keeps_what_plugins_read() -> anyhow::Result<()> {
        let full: Node = serde_json::from_value(node_json())?;
        let kept = node(serde_json::from_value(node_json())?);
        // Decoding the JSON and reducing a full Node keep the same.
        assert_eq!(kept, CachedNode::from(full.clone()));

        let mut meta = full.metadata.clone();
        meta.annotations = None;
        assert_eq!(kept.metadata, meta, "metadata but annotations is kept");
        let (spec, was) = (
            kept.spec.clone().unwrap_or_default(),
            full.spec.clone().unwrap_or_default(),
        );
        assert_eq!(spec.taints, was.taints);
        assert_eq!(spec.unschedulable, Some(true));
        let (st, was) = (
            kept.status.clone().unwrap_or_default(),
            full.status.clone().unwrap_or_default(),
        );
        assert_eq!(st.images, was.images);
        assert_eq!(st.allocatable.milli_cpu, 7000);
        assert_eq!(st.allocatable.memory, 30 << 30);
        assert_eq!(st.allocatable.allowed_pod_number, 110);
        assert_eq!(st.allocatable.get("example.com/gpu"), 2);
        assert_eq!(st.allocatable.get("hugepages-2Mi"), 1 << 30);
        assert_eq!(
            st.allocatable,
            Resource::from_list(was.allocatable.as_ref())
        );

        // What the cache derives from the node does not change.
        let info = |n: Arc<CachedNode>| {
            let mut i = NodeInfo::new("n1");
            i.set_node(n);
            (i.allocatable.clone(), i.images.clone(), i.labels().cloned())
        };
        let from_full = info(Arc::new(Node::clone(&full)).into_cached());
        assert_eq!(info(Arc::new(kept)), from_full);
        assert_eq!(from_full.1.get("web:1"), Some(&1000));
        Ok(())
    }

    /// A node without status or spec decodes to none of them, and counts no resources.
    #[test]
    fn bare_node() -> anyhow::Result<()> {
        let json = serde_json::json!({ "metadata": { "name": "n" } });
        let kept: CachedNode = serde_json::from_value(json.clone())?;
        let full: Node = serde_json::from_value(json)?;
        assert_eq!(kept, CachedNode::from(full));
        assert!(kept.spec.is_none() && kept.status.is_none());
        Ok(())
    }

    /// Container resources keep every name and quantity, in name order, with no spare room.
    #[test]
    fn container_resources_are_sorted_lists() -> anyhow::Result<()> {
        let kept = decoded()?;
        let spec = kept.spec.unwrap_or_default();
        let r = spec.containers[0].resources.clone().unwrap_or_default();
        let requests = r.requests.unwrap_or_default();
        assert_eq!(
            requests,
            [
                ("cpu".to_string(), Quantity("100m".into())),
                ("memory".to_string(), Quantity("500Mi".into()))
            ]
        );
        assert_eq!(requests.capacity(), requests.len());
        assert_eq!(
            r.limits.unwrap_or_default(),
            [("cpu".to_string(), Quantity("1".into()))]
        );
        Ok(())
    }
}
