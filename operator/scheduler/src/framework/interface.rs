//! The plugin interface (upstream `framework/interface.go`): status codes, per-cycle state,
//! and one trait with a method per extension point.

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use smallvec::SmallVec;

use crate::cache::Snapshot;
use crate::framework::types::{NodeInfo, PodInfo};
use crate::transform::CachedPod;

/// The highest score a Score plugin may give (upstream `MaxNodeScore`).
pub const MAX_NODE_SCORE: i64 = 100;

/// A status code (upstream `fwk.Code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// All good.
    Success,
    /// An internal error; the pod is retried with backoff.
    Error,
    /// The pod does not fit, but preemption might help.
    Unschedulable,
    /// The pod does not fit and preemption cannot help.
    UnschedulableAndUnresolvable,
    /// The plugin has nothing to do for this pod (PreFilter/PreScore).
    Skip,
    /// The pod waits for something outside the scheduler.
    Pending,
}

/// A reason a status gives: most are fixed texts, which need no allocation.
pub type Reason = Cow<'static, str>;

/// The outcome of a plugin call (upstream `fwk.Status`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The code.
    pub code: Code,
    /// Human-readable reasons; counted one by one in the "0/N nodes" message. A filter
    /// pass can reject thousands of nodes per cycle, nearly always with one fixed reason:
    /// held inline, such a status allocates nothing.
    pub reasons: SmallVec<[Reason; 1]>,
    /// The plugin that returned this status.
    pub plugin: &'static str,
}

impl Status {
    /// Success.
    pub fn success() -> Self {
        Self {
            code: Code::Success,
            reasons: SmallVec::new(),
            plugin: "",
        }
    }

    /// A status with `code` and one reason.
    pub fn new(code: Code, reason: impl Into<Reason>) -> Self {
        Self {
            code,
            reasons: smallvec::smallvec![reason.into()],
            plugin: "",
        }
    }

    /// A status with `code` and several reasons.
    pub fn with_reasons<R: Into<Reason>>(code: Code, reasons: impl IntoIterator<Item = R>) -> Self {
        Self {
            code,
            reasons: reasons.into_iter().map(Into::into).collect(),
            plugin: "",
        }
    }

    /// An internal error.
    pub fn error(msg: impl Into<Reason>) -> Self {
        Self::new(Code::Error, msg)
    }

    /// Skip.
    pub fn skip() -> Self {
        Self {
            code: Code::Skip,
            reasons: SmallVec::new(),
            plugin: "",
        }
    }

    /// Whether the code is Success.
    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }

    /// Whether the pod was rejected (Unschedulable, UnschedulableAndUnresolvable or Pending).
    pub fn is_rejected(&self) -> bool {
        matches!(
            self.code,
            Code::Unschedulable | Code::UnschedulableAndUnresolvable | Code::Pending
        )
    }

    /// The reasons joined with ", " (upstream `Status.Message`).
    pub fn message(&self) -> String {
        self.reasons.join(", ")
    }

    /// Records which plugin returned this status.
    #[must_use]
    pub fn with_plugin(mut self, plugin: &'static str) -> Self {
        self.plugin = plugin;
        self
    }
}

/// Data plugins keep for one scheduling cycle, each under its own key (upstream
/// `CycleState`). PreFilter/PreScore write; Filter/Score read from many threads.
/// Cloning is shallow (values are shared); a plugin that changes its value in a clone
/// (the PreFilter extensions during preemption's dry run) writes a new value.
#[derive(Clone, Default)]
pub struct CycleState {
    /// A handful of entries (one per plugin at most), read for every node a cycle
    /// visits: a linear scan over `&'static str` keys beats hashing the key each time.
    data: Vec<(&'static str, Arc<dyn Any + Send + Sync>)>,
    /// Score plugins whose PreScore returned Skip for this pod.
    pub skip_score: PluginSet,
    /// Filter plugins whose PreFilter returned Skip for this pod.
    pub skip_filter: PluginSet,
}

impl CycleState {
    /// Stores `value` under `key`.
    pub fn write<T: Any + Send + Sync>(&mut self, key: &'static str, value: T) {
        let value: Arc<dyn Any + Send + Sync> = Arc::new(value);
        match self.data.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.data.push((key, value)),
        }
    }

    /// The value under `key`, if it has type `T`.
    pub fn read<T: Any + Send + Sync>(&self, key: &'static str) -> Option<&T> {
        self.data
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.downcast_ref::<T>())
    }
}

/// A set of plugin names (those skipped in one cycle). It holds a few names and is asked
/// once per plugin for every node a cycle filters, so a scan beats hashing each name.
#[derive(Clone, Debug, Default)]
pub struct PluginSet(Vec<&'static str>);

impl PluginSet {
    /// Adds `name`; false when it was there already.
    pub fn insert(&mut self, name: &'static str) -> bool {
        if self.contains(name) {
            return false;
        }
        self.0.push(name);
        true
    }

    /// Whether `name` is in the set.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(&name)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a PostFilter plugin decided (upstream `PostFilterResult` with the victims
/// preemption must evict before the pod can go to the nominated node).
#[derive(Clone, Debug, Default)]
pub struct PostFilterResult {
    /// The node the pod is nominated to once the victims are gone.
    pub nominated_node: String,
    /// The pods to evict from the nominated node.
    pub victims: Vec<Arc<PodInfo>>,
}

/// A node and its score, as Score plugins produce them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeScore {
    /// The node's name.
    pub name: String,
    /// The score.
    pub score: i64,
}

/// The extension points a plugin implements (upstream's interfaces, which a Go plugin
/// implements by having the methods).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExtensionPoint {
    /// Gate pods before they enter the active queue.
    PreEnqueue,
    /// Order the active queue.
    QueueSort,
    /// Compute per-pod state; may reject the pod outright.
    PreFilter,
    /// Accept or reject one node.
    Filter,
    /// Runs when no node fits (preemption).
    PostFilter,
    /// Compute per-pod scoring state.
    PreScore,
    /// Score one node.
    Score,
    /// Bind the pod.
    Bind,
}

/// A scheduler plugin. Every method has a neutral default; [`Plugin::extension_points`]
/// says which ones the plugin really implements.
pub trait Plugin: Send + Sync {
    /// The upstream plugin name (`NodeResourcesFit`).
    fn name(&self) -> &'static str;

    /// The extension points this plugin implements.
    fn extension_points(&self) -> &'static [ExtensionPoint];

    /// PreEnqueue: whether `pod` may enter the active queue.
    fn pre_enqueue(&self, _pod: &CachedPod) -> Status {
        Status::success()
    }

    /// QueueSort: whether `a` goes before `b`.
    fn less(
        &self,
        _a: &PodInfo,
        _a_ts: std::time::Instant,
        _b: &PodInfo,
        _b_ts: std::time::Instant,
    ) -> bool {
        false
    }

    /// PreFilter: per-pod preparation; Skip leaves this plugin's Filter out for the pod.
    fn pre_filter(&self, _state: &mut CycleState, _pod: &PodInfo, _snapshot: &Snapshot) -> Status {
        Status::success()
    }

    /// PreFilter extension AddPod: `added` now runs on `node`; update this plugin's
    /// PreFilter state in `state` (preemption's dry run).
    fn add_pod(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _added: &Arc<PodInfo>,
        _node: &NodeInfo,
    ) -> Status {
        Status::success()
    }

    /// PreFilter extension RemovePod: `removed` no longer runs on `node`.
    fn remove_pod(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _removed: &Arc<PodInfo>,
        _node: &NodeInfo,
    ) -> Status {
        Status::success()
    }

    /// Filter: whether `pod` can go on `node`.
    fn filter(&self, _state: &CycleState, _pod: &PodInfo, _node: &NodeInfo) -> Status {
        Status::success()
    }

    /// PostFilter: runs when no node fits; may nominate a node (preemption). `fwk` lets
    /// the plugin re-run the profile's filters; `diagnosis` says why each node failed.
    fn post_filter(
        &self,
        _fwk: &crate::framework::runtime::Framework,
        _state: &CycleState,
        _pod: &PodInfo,
        _diagnosis: &crate::framework::Diagnosis,
        _snapshot: &Snapshot,
    ) -> (Option<PostFilterResult>, Status) {
        (None, Status::new(Code::Unschedulable, ""))
    }

    /// PreScore: per-pod scoring preparation over the feasible nodes; Skip leaves this
    /// plugin's Score out for the pod.
    fn pre_score(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _nodes: &[Arc<NodeInfo>],
        _snapshot: &Snapshot,
    ) -> Status {
        Status::success()
    }

    /// Score: how good `node` is for `pod`, in [0, MAX_NODE_SCORE] after normalization.
    fn score(
        &self,
        _state: &CycleState,
        _pod: &PodInfo,
        _node: &NodeInfo,
        _snapshot: &Snapshot,
    ) -> Result<i64, Status> {
        Ok(0)
    }

    /// NormalizeScore: rescales the raw scores of all nodes (ScoreExtensions). The
    /// scores' node names are filled in only for plugins whose
    /// [`Plugin::normalize_reads_node_names`] says so; for the others they are empty.
    fn normalize_score(
        &self,
        _state: &CycleState,
        _pod: &PodInfo,
        _scores: &mut [NodeScore],
    ) -> Status {
        Status::success()
    }

    /// Whether [`Plugin::normalize_score`] looks at the node names. Most rescale by the
    /// scores alone, and copying hundreds of names per cycle for them was a measurable
    /// part of a cycle's cost.
    fn normalize_reads_node_names(&self) -> bool {
        false
    }

    /// The cluster events after which a pod this plugin rejected may fit
    /// (upstream `EventsToRegister`, coarse-grained).
    fn events_to_register(&self) -> &'static [ClusterEvent] {
        &[]
    }
}

/// A change in the cluster that may make unschedulable pods schedulable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClusterEvent {
    /// A node was added.
    NodeAdd,
    /// A node's spec, labels, taints, allocatable or images changed.
    NodeUpdate,
    /// An assigned pod was deleted (its resources and ports are free).
    AssignedPodDelete,
    /// An assigned pod was added or changed (affinity/spreading may now hold).
    AssignedPodAddOrUpdate,
    /// The pod itself changed.
    UnscheduledPodUpdate,
    /// A PersistentVolumeClaim, PersistentVolume or StorageClass was added or changed.
    StorageChange,
}

/// upstream `DefaultNormalizeScore`: scales scores so the best node gets `max_priority`,
/// reversed (best = lowest raw score) when `reverse`.
pub fn default_normalize_score(max_priority: i64, reverse: bool, scores: &mut [NodeScore]) {
    let max = scores.iter().map(|s| s.score).max().unwrap_or(0);
    if max == 0 {
        if reverse {
            for s in scores.iter_mut() {
                s.score = max_priority;
            }
        }
        return;
    }
    for s in scores.iter_mut() {
        let mut score = max_priority * s.score / max;
        if reverse {
            score = max_priority - score;
        }
        s.score = score;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scores(v: &[i64]) -> Vec<NodeScore> {
        v.iter()
            .enumerate()
            .map(|(i, s)| NodeScore {
                name: format!("n{i}"),
                score: *s,
            })
            .collect()
    }

    #[test]
    fn normalize() {
        let mut s = scores(&[1, 2, 4]);
        default_normalize_score(100, false, &mut s);
        assert_eq!(s.iter().map(|s| s.score).collect::<Vec<_>>(), [25, 50, 100]);
        let mut s = scores(&[1, 2, 4]);
        default_normalize_score(100, true, &mut s);
        assert_eq!(s.iter().map(|s| s.score).collect::<Vec<_>>(), [75, 50, 0]);
        let mut s = scores(&[0, 0]);
        default_normalize_score(100, true, &mut s);
        assert_eq!(s.iter().map(|s| s.score).collect::<Vec<_>>(), [100, 100]);
    }

    #[test]
    fn status_message_and_rejection() {
        let s = Status::with_reasons(
            Code::Unschedulable,
            ["Insufficient cpu", "Insufficient memory"],
        );
        assert!(s.is_rejected());
        assert_eq!(s.message(), "Insufficient cpu, Insufficient memory");
        assert!(!Status::success().is_rejected());
    }
}
