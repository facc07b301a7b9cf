//! The scheduler cache (upstream `backend/cache`): every node with the pods placed on it,
//! including pods the scheduler has *assumed* onto a node before the apiserver confirmed
//! the binding, and a cheap consistent [`Snapshot`] per scheduling cycle.
//!
//! ```text
//!   informer: node add/update/delete ──┐
//!   informer: assigned pod add/update/delete ──▶ Cache ──snapshot()──▶ scheduling cycle
//!   scheduling cycle: assume(pod, node) ─┘   ▲
//!   binding cycle: finish_binding / forget ──┘
//! ```
//!
//! Node entries are `Arc<NodeInfo>`: a snapshot shares them, and a change afterwards copies
//! only the one entry it touches (copy on write). The snapshot's node list is updated in
//! place with the entries changed since the last one (upstream `UpdateSnapshot` walks its
//! generation-ordered list the same way), so a cycle after one `assume` costs one entry,
//! not one lookup per node.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferrokube_runtime::informer::Store;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, ReplicationController, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use crate::framework::types::{NodeInfo, PodInfo};
use crate::transform::{CachedPod, IntoCachedNode};

/// Errors from cache bookkeeping (upstream logs these as "cache corruption").
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The pod is already in the cache.
    #[error("pod {0} is already in the cache, so can't be assumed")]
    AlreadyAssumed(String),
    /// The pod was never assumed.
    #[error("pod {0} wasn't assumed so cannot be forgotten")]
    NotAssumed(String),
}

/// The informer caches plugins read besides nodes and pods (upstream's listers from the
/// shared informer factory). Unset ones read as empty, which is what unit tests use.
#[derive(Clone, Default)]
pub struct Listers {
    /// Namespaces (InterPodAffinity's namespaceSelector).
    pub namespaces: Option<Store<Namespace>>,
    /// Services (PodTopologySpread's default selector).
    pub services: Option<Store<Service>>,
    /// ReplicationControllers (default selector).
    pub replication_controllers: Option<Store<ReplicationController>>,
    /// ReplicaSets (default selector).
    pub replica_sets: Option<Store<ReplicaSet>>,
    /// StatefulSets (default selector).
    pub stateful_sets: Option<Store<StatefulSet>>,
    /// PodDisruptionBudgets (DefaultPreemption).
    pub pdbs: Option<Store<PodDisruptionBudget>>,
    /// PersistentVolumeClaims (VolumeBinding).
    pub pvcs: Option<Store<k8s_openapi::api::core::v1::PersistentVolumeClaim>>,
    /// PersistentVolumes (VolumeBinding).
    pub pvs: Option<Store<k8s_openapi::api::core::v1::PersistentVolume>>,
    /// StorageClasses (VolumeBinding's binding mode).
    pub storage_classes: Option<Store<k8s_openapi::api::storage::v1::StorageClass>>,
    /// Namespace labels given directly (tests without informers).
    pub static_namespace_labels: HashMap<String, BTreeMap<String, String>>,
}

impl std::fmt::Debug for Listers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listers").finish_non_exhaustive()
    }
}

impl Listers {
    /// The labels of namespace `ns` (upstream `GetNamespaceLabelsSnapshot`); `None` when
    /// the namespace is unknown.
    pub fn namespace_labels(&self, ns: &str) -> Option<BTreeMap<String, String>> {
        if let Some(l) = self.static_namespace_labels.get(ns) {
            return Some(l.clone());
        }
        self.namespaces
            .as_ref()
            .and_then(|s| s.get("", ns))
            .map(|n| n.metadata.labels.clone().unwrap_or_default())
    }

    /// All PodDisruptionBudgets.
    pub fn pdbs(&self) -> Vec<Arc<PodDisruptionBudget>> {
        self.pdbs.as_ref().map(Store::list).unwrap_or_default()
    }
}

/// The nodes of one scheduling cycle. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Nodes known to exist, in a stable order.
    pub nodes: Arc<Vec<Arc<NodeInfo>>>,
    /// For each normalized image name, on how many nodes it is (ImageLocality's spread).
    pub image_nodes: Arc<HashMap<String, usize>>,
    /// The other objects plugins read (live informer caches, as upstream's listers).
    pub listers: Arc<Listers>,
    /// Pods nominated to each node by preemption, not yet bound (upstream's nominator):
    /// filters count those of at least the pod's priority as already there.
    pub nominated: Arc<HashMap<String, Vec<Arc<PodInfo>>>>,
    /// How many of `nodes` hold pods with inter-pod (anti-)affinity terms (upstream keeps
    /// the list of them, `HavePodsWithAffinityNodeInfoList`). InterPodAffinity walks every
    /// node for them only when there are any: that walk touched thousands of entries
    /// per cycle to find none in clusters without affinity.
    pub nodes_with_affinity: usize,
    /// How many of `nodes` hold pods with required anti-affinity terms (upstream
    /// `HavePodsWithRequiredAntiAffinityNodeInfoList`).
    pub nodes_with_required_anti_affinity: usize,
}

/// `(has pods with affinity, has pods with required anti-affinity)` as counts of one node.
fn affinity_flags(n: &NodeInfo) -> (usize, usize) {
    (
        usize::from(n.pods_with_affinity > 0),
        usize::from(n.pods_with_required_anti_affinity > 0),
    )
}

/// [`affinity_flags`] summed over `nodes`: the snapshot's counts, taken afresh.
fn affinity_counts<'a>(nodes: impl IntoIterator<Item = &'a NodeInfo>) -> (usize, usize) {
    nodes
        .into_iter()
        .map(affinity_flags)
        .fold((0, 0), |(a, r), (na, nr)| (a + na, r + nr))
}

impl Snapshot {
    /// A snapshot of `nodes` (tests and benchmarks).
    pub fn from_nodes(nodes: Vec<NodeInfo>) -> Self {
        let mut image_nodes = HashMap::new();
        for n in &nodes {
            for image in n.images.keys() {
                *image_nodes.entry(image.clone()).or_default() += 1;
            }
        }
        let (with_affinity, with_anti_affinity) = affinity_counts(&nodes);
        Self {
            nodes: Arc::new(nodes.into_iter().map(Arc::new).collect()),
            image_nodes: Arc::new(image_nodes),
            listers: Arc::default(),
            nominated: Arc::default(),
            nodes_with_affinity: with_affinity,
            nodes_with_required_anti_affinity: with_anti_affinity,
        }
    }

    /// The node named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<NodeInfo>> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

struct PodState {
    pod: Arc<PodInfo>,
    node: String,
    assumed: bool,
    /// When an assumed pod whose binding finished is dropped if no confirmation arrived.
    deadline: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    /// Entries, nodes with a `Node` object and ghosts (pods known, node not yet).
    entries: HashMap<String, Arc<NodeInfo>>,
    /// Names of entries with a node, in arrival order (the snapshot's order).
    order: Vec<String>,
    pods: HashMap<String, PodState>,
    generation: u64,
    /// The last snapshot and the generation it was taken at.
    snapshot: Option<(u64, Snapshot)>,
    /// Each ordered node's position in the snapshot's node list.
    positions: HashMap<String, usize>,
    /// Entries changed since the last snapshot.
    dirty: Vec<String>,
    /// Nodes were added or removed since the last snapshot: rebuild the list.
    order_dirty: bool,
    /// Nominations changed since the last snapshot.
    nominated_dirty: bool,
    image_nodes: Arc<HashMap<String, usize>>,
    images_dirty: bool,
    listers: Arc<Listers>,
    /// Nominated pods by uid: (node, pod).
    nominated: HashMap<String, (String, Arc<PodInfo>)>,
}

impl Inner {
    fn entry(&mut self, name: &str) -> &mut NodeInfo {
        self.generation += 1;
        let generation = self.generation;
        // Past one change per node a rebuild is cheaper, and the list stays bounded while
        // no cycle takes snapshots.
        if self.dirty.len() < self.order.len() {
            self.dirty.push(name.to_string());
        } else {
            self.dirty.clear();
            self.order_dirty = true;
        }
        let e = self
            .entries
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(NodeInfo::new(name)));
        let info = Arc::make_mut(e);
        info.generation = generation;
        info
    }

    fn add_pod_to_node(&mut self, pod: Arc<PodInfo>, node: &str) {
        self.entry(node).add_pod(pod);
    }

    fn remove_pod_from_node(&mut self, uid: &str, node: &str) {
        if !self.entries.contains_key(node) {
            return;
        }
        let info = self.entry(node);
        info.remove_pod(uid);
        // A ghost entry (node deleted) goes away with its last pod.
        if info.node.is_none() && info.pods.is_empty() {
            self.entries.remove(node);
        }
    }
}

/// The scheduler cache. Thread-safe; share it behind an `Arc`.
pub struct Cache {
    inner: Mutex<Inner>,
    /// How long an assumed pod whose binding finished waits for the informer's
    /// confirmation; `None` keeps it until confirmed (upstream's default since 1.x, where
    /// `durationToExpireAssumedPod` became 0).
    assumed_ttl: Option<Duration>,
}

impl Cache {
    /// An empty cache; `assumed_ttl` as on [`Cache`].
    pub fn new(assumed_ttl: Option<Duration>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            assumed_ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every mutation completes before it can panic-free return; a poisoned lock still
        // guards consistent maps.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the informer caches snapshots hand to plugins.
    pub fn set_listers(&self, listers: Listers) {
        let mut inner = self.lock();
        inner.listers = Arc::new(listers);
        inner.generation += 1;
    }

    /// Records (`Some`) or clears (`None`) the node a pod is nominated to.
    pub fn set_nominated(&self, uid: &str, nomination: Option<(String, Arc<PodInfo>)>) {
        let mut inner = self.lock();
        let changed = match nomination {
            Some((node, pod)) => {
                let same = inner
                    .nominated
                    .get(uid)
                    .is_some_and(|(n, p)| *n == node && Arc::ptr_eq(p, &pod));
                inner.nominated.insert(uid.to_string(), (node, pod));
                !same
            }
            None => inner.nominated.remove(uid).is_some(),
        };
        if changed {
            inner.generation += 1;
            inner.nominated_dirty = true;
        }
    }

    /// Adds or updates a node.
    pub fn add_or_update_node(&self, node: impl IntoCachedNode) {
        let node = node.into_cached();
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut inner = self.lock();
        let is_new = inner.entries.get(&name).is_none_or(|e| e.node.is_none());
        inner.entry(&name).set_node(node);
        if is_new {
            inner.order.push(name);
            inner.order_dirty = true;
        }
        inner.images_dirty = true;
    }

    /// Removes a node. Pods still bound to it keep a ghost entry until they go.
    pub fn remove_node(&self, name: &str) {
        let mut inner = self.lock();
        inner.order.retain(|n| n != name);
        inner.order_dirty = true;
        if let Some(e) = inner.entries.get(name) {
            if e.pods.is_empty() {
                inner.entries.remove(name);
            } else {
                inner.entry(name).node = None;
            }
        }
        inner.generation += 1;
        inner.images_dirty = true;
    }

    /// Adds or updates an assigned pod seen by the informer; confirms an assumed one.
    pub fn add_or_update_pod(&self, pod: Arc<CachedPod>) {
        let Some(node) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty())
        else {
            return;
        };
        let info = Arc::new(PodInfo::new(pod));
        let mut inner = self.lock();
        if let Some(old) = inner.pods.remove(&info.uid) {
            inner.remove_pod_from_node(&old.pod.uid, &old.node);
        }
        inner.add_pod_to_node(info.clone(), &node);
        inner.pods.insert(
            info.uid.clone(),
            PodState {
                pod: info,
                node,
                assumed: false,
                deadline: None,
            },
        );
    }

    /// Removes a deleted pod.
    pub fn remove_pod(&self, uid: &str) {
        let mut inner = self.lock();
        if let Some(old) = inner.pods.remove(uid) {
            inner.remove_pod_from_node(uid, &old.node);
        }
    }

    /// Places `pod` on `node` before the binding is confirmed (upstream `AssumePod`).
    pub fn assume(&self, pod: Arc<PodInfo>, node: &str) -> Result<(), Error> {
        let mut inner = self.lock();
        if inner.pods.contains_key(&pod.uid) {
            return Err(Error::AlreadyAssumed(pod.key.clone()));
        }
        inner.add_pod_to_node(pod.clone(), node);
        inner.pods.insert(
            pod.uid.clone(),
            PodState {
                pod,
                node: node.to_string(),
                assumed: true,
                deadline: None,
            },
        );
        Ok(())
    }

    /// The binding of an assumed pod was written; start its expiry clock, if any.
    pub fn finish_binding(&self, uid: &str) {
        let deadline = self.assumed_ttl.map(|ttl| Instant::now() + ttl);
        let mut inner = self.lock();
        if let Some(p) = inner.pods.get_mut(uid)
            && p.assumed
        {
            p.deadline = deadline;
        }
    }

    /// Undoes `assume` after a failed binding (upstream `ForgetPod`).
    pub fn forget(&self, uid: &str) -> Result<(), Error> {
        let mut inner = self.lock();
        match inner.pods.get(uid) {
            Some(p) if p.assumed => {
                let node = p.node.clone();
                inner.pods.remove(uid);
                inner.remove_pod_from_node(uid, &node);
                Ok(())
            }
            _ => Err(Error::NotAssumed(uid.to_string())),
        }
    }

    /// Whether the pod is assumed and not yet confirmed.
    pub fn is_assumed(&self, uid: &str) -> bool {
        self.lock().pods.get(uid).is_some_and(|p| p.assumed)
    }

    /// Whether the cache knows the pod at all (assumed or confirmed).
    pub fn contains_pod(&self, uid: &str) -> bool {
        self.lock().pods.contains_key(uid)
    }

    /// Drops assumed pods whose confirmation is overdue; returns their keys.
    pub fn cleanup_expired_assumed(&self, now: Instant) -> Vec<String> {
        let mut inner = self.lock();
        let expired: Vec<(String, String, String)> = inner
            .pods
            .iter()
            .filter(|(_, p)| p.assumed && p.deadline.is_some_and(|d| d <= now))
            .map(|(uid, p)| (uid.clone(), p.node.clone(), p.pod.key.clone()))
            .collect();
        for (uid, node, _) in &expired {
            inner.pods.remove(uid);
            inner.remove_pod_from_node(uid, node);
        }
        expired.into_iter().map(|(_, _, key)| key).collect()
    }

    /// How many nodes (with a Node object) the cache holds.
    pub fn node_count(&self) -> usize {
        self.lock().order.len()
    }

    /// A consistent view for one scheduling cycle; reused while nothing changed.
    pub fn snapshot(&self) -> Snapshot {
        let mut inner = self.lock();
        if let Some((generation, snap)) = &inner.snapshot
            && *generation == inner.generation
        {
            return snap.clone();
        }
        if inner.images_dirty {
            let mut counts: HashMap<String, usize> = HashMap::new();
            for name in &inner.order {
                if let Some(e) = inner.entries.get(name) {
                    for image in e.images.keys() {
                        *counts.entry(image.clone()).or_default() += 1;
                    }
                }
            }
            inner.image_nodes = Arc::new(counts);
            inner.images_dirty = false;
        }
        let inner = &mut *inner;
        let (previous_nodes, previous_nominated, mut with_affinity, mut with_anti_affinity) =
            match inner.snapshot.take() {
                Some((_, prev)) => (
                    Some(prev.nodes),
                    Some(prev.nominated),
                    prev.nodes_with_affinity,
                    prev.nodes_with_required_anti_affinity,
                ),
                None => (None, None, 0, 0),
            };
        let nodes = match previous_nodes {
            Some(mut nodes) if !inner.order_dirty => {
                // Unshared once the last cycle dropped its copy: updated in place, and the
                // affinity counts by what each replaced entry changed.
                let list = Arc::make_mut(&mut nodes);
                for name in inner.dirty.drain(..) {
                    if let (Some(&i), Some(e)) =
                        (inner.positions.get(&name), inner.entries.get(&name))
                    {
                        let (old_a, old_r) = affinity_flags(&list[i]);
                        let (new_a, new_r) = affinity_flags(e);
                        with_affinity = (with_affinity + new_a).saturating_sub(old_a);
                        with_anti_affinity = (with_anti_affinity + new_r).saturating_sub(old_r);
                        list[i] = e.clone();
                    }
                }
                nodes
            }
            _ => {
                inner.dirty.clear();
                inner.order_dirty = false;
                let mut list = Vec::with_capacity(inner.order.len());
                inner.positions.clear();
                for name in &inner.order {
                    if let Some(e) = inner.entries.get(name) {
                        inner.positions.insert(name.clone(), list.len());
                        list.push(e.clone());
                    }
                }
                (with_affinity, with_anti_affinity) = affinity_counts(list.iter().map(|e| &**e));
                Arc::new(list)
            }
        };
        let nominated = match previous_nominated {
            Some(nominated) if !inner.nominated_dirty => nominated,
            _ => {
                inner.nominated_dirty = false;
                let mut nominated: HashMap<String, Vec<Arc<PodInfo>>> = HashMap::new();
                for (node, pod) in inner.nominated.values() {
                    nominated.entry(node.clone()).or_default().push(pod.clone());
                }
                Arc::new(nominated)
            }
        };
        let snap = Snapshot {
            nodes,
            image_nodes: inner.image_nodes.clone(),
            listers: inner.listers.clone(),
            nominated,
            nodes_with_affinity: with_affinity,
            nodes_with_required_anti_affinity: with_anti_affinity,
        };
        inner.snapshot = Some((inner.generation, snap.clone()));
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, Node, NodeStatus, Pod, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([("cpu".to_string(), Quantity("4".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn pod(uid: &str, node: Option<&str>) -> Arc<CachedPod> {
        Arc::new(CachedPod::from(pod_object(uid, node)))
    }

    /// The Pod behind [`pod`]: `uid` on `node`, asking for one CPU.
    fn pod_object(uid: &str, node: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(uid.into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(BTreeMap::from([("cpu".to_string(), Quantity("1".into()))])),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn assume_confirm_forget_and_snapshots() {
        let cache = Cache::new(None);
        cache.add_or_update_node(node("a"));
        let before = cache.snapshot();
        assert_eq!(before.nodes.len(), 1);

        cache
            .assume(Arc::new(PodInfo::new(pod("p1", None))), "a")
            .expect("assume");
        assert!(cache.is_assumed("p1"));
        let after = cache.snapshot();
        assert_eq!(after.nodes[0].requested.milli_cpu, 1000);
        // The earlier snapshot is untouched (copy on write).
        assert_eq!(before.nodes[0].requested.milli_cpu, 0);
        // Unchanged cache: the same snapshot comes back.
        assert!(Arc::ptr_eq(&after.nodes, &cache.snapshot().nodes));

        // The informer confirms the binding: no double counting.
        cache.add_or_update_pod(pod("p1", Some("a")));
        assert!(!cache.is_assumed("p1"));
        assert_eq!(cache.snapshot().nodes[0].requested.milli_cpu, 1000);
        assert_eq!(cache.forget("p1"), Err(Error::NotAssumed("p1".into())));

        cache
            .assume(Arc::new(PodInfo::new(pod("p2", None))), "a")
            .expect("assume");
        cache.forget("p2").expect("forget");
        assert_eq!(cache.snapshot().nodes[0].requested.milli_cpu, 1000);
        cache.remove_pod("p1");
        assert_eq!(cache.snapshot().nodes[0].requested.milli_cpu, 0);
    }

    #[test]
    fn assumed_pods_expire_after_binding_when_a_ttl_is_set() {
        let cache = Cache::new(Some(Duration::from_secs(30)));
        cache.add_or_update_node(node("a"));
        cache
            .assume(Arc::new(PodInfo::new(pod("p1", None))), "a")
            .expect("assume");
        let now = Instant::now();
        // Not expired before the binding finished.
        assert!(
            cache
                .cleanup_expired_assumed(now + Duration::from_secs(60))
                .is_empty()
        );
        cache.finish_binding("p1");
        assert!(cache.cleanup_expired_assumed(now).is_empty());
        assert_eq!(
            cache.cleanup_expired_assumed(now + Duration::from_secs(60)),
            vec!["ns/p1".to_string()]
        );
        assert_eq!(cache.snapshot().nodes[0].requested.milli_cpu, 0);
    }

    #[test]
    fn snapshots_follow_changes_in_place_and_keep_earlier_ones_intact() {
        let cache = Cache::new(None);
        for n in ["a", "b", "c"] {
            cache.add_or_update_node(node(n));
        }
        let names = |s: &Snapshot| s.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        let cpu = |s: &Snapshot| {
            s.nodes
                .iter()
                .map(|n| n.requested.milli_cpu)
                .collect::<Vec<_>>()
        };
        let held = cache.snapshot();
        cache
            .assume(Arc::new(PodInfo::new(pod("p1", None))), "b")
            .expect("assume");
        let second = cache.snapshot();
        assert_eq!(cpu(&second), vec![0, 1000, 0]);
        assert_eq!(cpu(&held), vec![0, 0, 0], "a held snapshot is not updated");
        drop((held, second));
        // Nobody holds the list now: the next snapshot reuses it.
        cache
            .assume(Arc::new(PodInfo::new(pod("p2", None))), "c")
            .expect("assume");
        cache.add_or_update_pod(pod("p3", Some("a")));
        assert_eq!(cpu(&cache.snapshot()), vec![1000, 1000, 1000]);
        // Nodes coming and going rebuild the order.
        cache.remove_node("a");
        cache.add_or_update_node(node("d"));
        let snap = cache.snapshot();
        assert_eq!(names(&snap), vec!["b", "c", "d"]);
        assert_eq!(cpu(&snap), vec![1000, 1000, 0]);
        cache.forget("p2").expect("forget");
        assert_eq!(cpu(&cache.snapshot()), vec![1000, 0, 0]);
        // Nominations show up without any node changing.
        let nominee = Arc::new(PodInfo::new(pod("p4", None)));
        cache.set_nominated(&nominee.uid, Some(("d".into(), nominee.clone())));
        assert_eq!(cache.snapshot().nominated.get("d").map(Vec::len), Some(1));
        cache.set_nominated(&nominee.uid, None);
        assert!(cache.snapshot().nominated.is_empty());
    }

    /// [`pod`] with one required anti-affinity term.
    fn anti_affine(uid: &str, node: Option<&str>) -> Arc<CachedPod> {
        use k8s_openapi::api::core::v1::{Affinity, PodAffinityTerm, PodAntiAffinity};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
        let mut p = pod_object(uid, node);
        p.spec.get_or_insert_default().affinity = Some(Affinity {
            pod_anti_affinity: Some(PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                    label_selector: Some(LabelSelector::default()),
                    topology_key: "kubernetes.io/hostname".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        });
        Arc::new(CachedPod::from(p))
    }

    #[test]
    fn snapshots_count_nodes_with_affinity_pods_as_they_change() {
        let cache = Cache::new(None);
        for n in ["a", "b", "c"] {
            cache.add_or_update_node(node(n));
        }
        let counts = |s: &Snapshot| (s.nodes_with_affinity, s.nodes_with_required_anti_affinity);
        // What a count over the list itself says, to hold the incremental one to.
        let recount = |s: &Snapshot| {
            let snap = Snapshot::from_nodes(s.nodes.iter().map(|n| (**n).clone()).collect());
            counts(&snap)
        };
        assert_eq!(counts(&cache.snapshot()), (0, 0));
        cache
            .assume(Arc::new(PodInfo::new(anti_affine("p1", None))), "a")
            .expect("assume");
        let snap = cache.snapshot();
        assert_eq!(counts(&snap), (1, 1));
        assert_eq!(counts(&snap), recount(&snap));
        drop(snap);
        // A second such pod on the same node, and a plain pod elsewhere: still one node.
        cache
            .assume(Arc::new(PodInfo::new(anti_affine("p2", None))), "a")
            .expect("assume");
        cache.add_or_update_pod(pod("p3", Some("b")));
        assert_eq!(counts(&cache.snapshot()), (1, 1));
        cache.add_or_update_pod(anti_affine("p4", Some("c")));
        let snap = cache.snapshot();
        assert_eq!(counts(&snap), (2, 2));
        assert_eq!(counts(&snap), recount(&snap));
        drop(snap);
        // The confirmation of an assumed pod does not count it twice; removals uncount.
        cache.add_or_update_pod(anti_affine("p1", Some("a")));
        cache.forget("p2").expect("forget");
        assert_eq!(counts(&cache.snapshot()), (2, 2));
        cache.remove_pod("p1");
        assert_eq!(counts(&cache.snapshot()), (1, 1));
        // A rebuild (a node removed) counts afresh.
        cache.remove_node("c");
        let snap = cache.snapshot();
        assert_eq!(counts(&snap), (0, 0));
        assert_eq!(counts(&snap), recount(&snap));
    }

    #[test]
    fn pods_before_their_node_and_node_deletion() {
        let cache = Cache::new(None);
        cache.add_or_update_pod(pod("p1", Some("late")));
        assert_eq!(
            cache.snapshot().nodes.len(),
            0,
            "ghost entries are not schedulable"
        );
        cache.add_or_update_node(node("late"));
        let snap = cache.snapshot();
        assert_eq!(snap.nodes.len(), 1);
        assert_eq!(snap.nodes[0].pods.len(), 1);
        cache.remove_node("late");
        assert_eq!(cache.snapshot().nodes.len(), 0);
        cache.remove_pod("p1");
        assert_eq!(cache.node_count(), 0);
    }
}
