//! InterPodAffinity: required pod affinity and anti-affinity filter nodes, in both
//! directions (the incoming pod's terms, and the anti-affinity of pods already placed);
//! preferred terms of both sides, and existing pods' required affinity weighted by
//! `hardPodAffinityWeight`, score topology domains.
//!
//! ```text
//!   PreFilter: count, per (topologyKey, value), the existing pods matching each side's terms
//!   Filter:    affinity domain has a match (or the pod is the first of its group),
//!              anti-affinity domain has none, no existing pod's anti-affinity hits the pod
//!   PreScore:  sum weights per (topologyKey, value); Score: the node's domains; min-max scaled
//! ```
//!
//! Namespace selectors are evaluated against the labels of the matched pod's namespace,
//! which is what upstream's "merge the selected namespaces into the term" amounts to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Deserialize;

use crate::cache::{Listers, Snapshot};
use crate::framework::interface::{
    ClusterEvent, Code, CycleState, ExtensionPoint, MAX_NODE_SCORE, NodeScore, Plugin, Status,
};
use crate::framework::node_sums::{NodeSums, Sum};
use crate::framework::types::{AffinityTerm, NodeInfo, PodInfo, WeightedAffinityTerm};
use crate::plugins::helper::{FastMap, Selector, add_count};
use crate::transform::CachedPod;

/// The plugin's name.
pub const NAME: &str = "InterPodAffinity";
/// upstream `ErrReasonExistingAntiAffinityRulesNotMatch`.
pub const ERR_REASON_EXISTING_ANTI_AFFINITY_RULES_NOT_MATCH: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
/// upstream `ErrReasonAffinityRulesNotMatch`.
pub const ERR_REASON_AFFINITY_RULES_NOT_MATCH: &str = "node(s) didn't match pod affinity rules";
/// upstream `ErrReasonAntiAffinityRulesNotMatch`.
pub const ERR_REASON_ANTI_AFFINITY_RULES_NOT_MATCH: &str =
    "node(s) didn't match pod anti-affinity rules";

const PRE_FILTER_STATE_KEY: &str = "PreFilterInterPodAffinity";
const PRE_SCORE_STATE_KEY: &str = "PreScoreInterPodAffinity";

/// `InterPodAffinityArgs`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterPodAffinityArgs {
    /// Score weight of an existing pod's required affinity term matching the incoming pod.
    #[serde(default = "default_hard_weight")]
    pub hard_pod_affinity_weight: i32,
    /// Score only with the incoming pod's preferred terms.
    #[serde(default)]
    pub ignore_preferred_terms_of_existing_pods: bool,
    /// Set by the apiserver-style encoding; ignored.
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<String>,
    /// Set by the apiserver-style encoding; ignored.
    #[serde(default)]
    pub kind: Option<String>,
}

fn default_hard_weight() -> i32 {
    1
}

impl Default for InterPodAffinityArgs {
    fn default() -> Self {
        Self {
            hard_pod_affinity_weight: 1,
            ignore_preferred_terms_of_existing_pods: false,
            api_version: None,
            kind: None,
        }
    }
}

/// The plugin.
pub struct InterPodAffinity {
    args: InterPodAffinityArgs,
    /// PreScore's sums, kept across cycles (see [`NodeSums`]).
    scores: NodeSums<ScoreKey, ScoreMap>,
}

impl InterPodAffinity {
    /// Builds the plugin from its args (upstream `ValidateInterPodAffinityArgs`).
    pub fn new(args: &serde_json::Value) -> Result<Self, String> {
        let args: InterPodAffinityArgs = super::decode_args(args)?;
        if !(0..=100).contains(&args.hard_pod_affinity_weight) {
            return Err(format!(
                "hardPodAffinityWeight: Invalid value: {}: not in valid range [0, 100]",
                args.hard_pod_affinity_weight
            ));
        }
        Ok(Self {
            args,
            scores: NodeSums::default(),
        })
    }
}

/// (topologyKey, value) -> how many matching pods (upstream `topologyToMatchedTermCount`).
type TopologyCounts = HashMap<(String, String), i64>;

#[derive(Clone, Default)]
struct PreFilterState {
    existing_anti_affinity_counts: TopologyCounts,
    affinity_counts: TopologyCounts,
    anti_affinity_counts: TopologyCounts,
    /// The incoming pod's namespace labels.
    namespace_labels: Option<BTreeMap<String, String>>,
    /// The snapshot's listers, for namespace selectors in the PreFilter extensions.
    listers: Arc<Listers>,
}

/// Whether `term` matches `pod`, looking the namespace's labels up only when the
/// namespaceSelector could decide it.
fn term_matches(term: &AffinityTerm, pod: &CachedPod, listers: &Listers) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    if term.namespaces.contains(ns) {
        return term.selector.matches(pod.metadata.labels.as_ref());
    }
    if term.namespace_selector == Selector::Nothing {
        return false;
    }
    let labels = listers.namespace_labels(ns);
    term.matches(pod, labels.as_ref())
}

/// upstream `podMatchesAllAffinityTerms`: false for no terms.
fn pod_matches_all(terms: &[AffinityTerm], pod: &CachedPod, listers: &Listers) -> bool {
    !terms.is_empty() && terms.iter().all(|t| term_matches(t, pod, listers))
}

fn node_label<'a>(node: &'a NodeInfo, key: &str) -> Option<&'a String> {
    node.labels().and_then(|l| l.get(key))
}

fn update(counts: &mut TopologyCounts, node: &NodeInfo, key: &str, delta: i64) {
    if let Some(v) = node_label(node, key) {
        let pair = (key.to_string(), v.clone());
        let e = counts.entry(pair.clone()).or_default();
        *e += delta;
        if *e == 0 {
            counts.remove(&pair);
        }
    }
}

impl PreFilterState {
    /// upstream `updateWithPod`: `other` joins (+1) or leaves (-1) `node`.
    fn update_with_pod(
        &mut self,
        incoming: &PodInfo,
        other: &PodInfo,
        node: &NodeInfo,
        delta: i64,
    ) {
        let listers = &*self.listers.clone();
        for t in &other.affinity.required_anti_affinity {
            if t.matches(&incoming.pod, self.namespace_labels.as_ref()) {
                update(
                    &mut self.existing_anti_affinity_counts,
                    node,
                    &t.topology_key,
                    delta,
                );
            }
        }
        let required = &incoming.affinity.required_affinity;
        if pod_matches_all(required, &other.pod, listers) {
            for t in required {
                update(&mut self.affinity_counts, node, &t.topology_key, delta);
            }
        }
        for t in &incoming.affinity.required_anti_affinity {
            if term_matches(t, &other.pod, listers) {
                update(&mut self.anti_affinity_counts, node, &t.topology_key, delta);
            }
        }
    }
}

fn satisfy_existing_pods_anti_affinity(s: &PreFilterState, node: &NodeInfo) -> bool {
    if s.existing_anti_affinity_counts.is_empty() {
        return true;
    }
    !node.labels().into_iter().flatten().any(|(k, v)| {
        s.existing_anti_affinity_counts
            .get(&(k.clone(), v.clone()))
            .is_some_and(|c| *c > 0)
    })
}

fn satisfy_pod_anti_affinity(s: &PreFilterState, pod: &PodInfo, node: &NodeInfo) -> bool {
    if s.anti_affinity_counts.is_empty() {
        return true;
    }
    !pod.affinity.required_anti_affinity.iter().any(|t| {
        node_label(node, &t.topology_key).is_some_and(|v| {
            s.anti_affinity_counts
                .get(&(t.topology_key.clone(), v.clone()))
                .is_some_and(|c| *c > 0)
        })
    })
}

fn satisfy_pod_affinity(
    s: &PreFilterState,
    pod: &PodInfo,
    node: &NodeInfo,
    listers: &Listers,
) -> bool {
    let mut pods_exist = true;
    for t in &pod.affinity.required_affinity {
        let Some(v) = node_label(node, &t.topology_key) else {
            return false;
        };
        if s.affinity_counts
            .get(&(t.topology_key.clone(), v.clone()))
            .is_none_or(|c| *c <= 0)
        {
            pods_exist = false;
        }
    }
    if !pods_exist {
        // The first pod of a group that selects itself may go anywhere its topology
        // labels exist, or it could never be scheduled.
        return s.affinity_counts.is_empty()
            && pod_matches_all(&pod.affinity.required_affinity, &pod.pod, listers);
    }
    true
}

/// topologyKey -> value -> summed weight (upstream `scoreMap`).
#[derive(Clone, Debug, Default)]
struct ScoreMap(FastMap<String, FastMap<String, i64>>);

/// One node's part of PreScore's sum: (topologyKey, the node's value for it, summed
/// weight), one entry per key.
type NodePart = Vec<(String, String, i64)>;

impl Sum for ScoreMap {
    type Part = NodePart;

    fn apply(&mut self, part: &NodePart, sign: i64) {
        for (key, value, weight) in part {
            // Looked up before the key is cloned: nearly always there already.
            let values = match self.0.get_mut(key.as_str()) {
                Some(values) => values,
                None => self.0.entry(key.clone()).or_default(),
            };
            add_count(values, value, sign * weight);
        }
    }
}

impl ScoreMap {
    /// Whether no domain has a weight: the plugin has nothing to add for this pod. (Parts
    /// taken back out leave their domains at 0 rather than remove them.)
    fn is_zero(&self) -> bool {
        self.0.values().flat_map(FastMap::values).all(|w| *w == 0)
    }
}

/// upstream `processTerm`: a matching term adds its weight to the node's domain.
fn process_term(
    part: &mut NodePart,
    term: &AffinityTerm,
    weight: i64,
    matched: bool,
    node: &NodeInfo,
) {
    if !matched {
        return;
    }
    let Some(v) = node_label(node, &term.topology_key) else {
        return;
    };
    match part.iter_mut().find(|(k, _, _)| *k == term.topology_key) {
        Some(e) => e.2 += weight,
        None => part.push((term.topology_key.clone(), v.clone(), weight)),
    }
}

/// What PreScore's sum depends on besides the node entries: the incoming pod's namespace,
/// labels, namespace labels and preferred terms (the plugin's args are fixed). Used only
/// when the pod's terms name their namespaces: a namespaceSelector reads the labels of
/// the existing pods' namespaces, which no node entry carries.
#[derive(PartialEq)]
struct ScoreKey {
    namespace: String,
    labels: Option<BTreeMap<String, String>>,
    namespace_labels: Option<BTreeMap<String, String>>,
    preferred_affinity: Vec<WeightedAffinityTerm>,
    preferred_anti_affinity: Vec<WeightedAffinityTerm>,
}

impl InterPodAffinity {
    /// upstream `processExistingPod`: the terms between `incoming` and `existing` (on
    /// `node`) that match, added to the node's part.
    fn process_existing_pod(
        &self,
        part: &mut NodePart,
        incoming: &PodInfo,
        incoming_ns_labels: Option<&BTreeMap<String, String>>,
        existing: &PodInfo,
        node: &NodeInfo,
        listers: &Listers,
    ) {
        if node.labels().is_none_or(BTreeMap::is_empty) {
            return;
        }
        let mut weighted = |terms: &[WeightedAffinityTerm], pod: &CachedPod, sign: i64| {
            for t in terms {
                let matched = term_matches(&t.term, pod, listers);
                process_term(part, &t.term, i64::from(t.weight) * sign, matched, node);
            }
        };
        weighted(&incoming.affinity.preferred_affinity, &existing.pod, 1);
        weighted(
            &incoming.affinity.preferred_anti_affinity,
            &existing.pod,
            -1,
        );
        if self.args.hard_pod_affinity_weight > 0 {
            for t in &existing.affinity.required_affinity {
                let matched = t.matches(&incoming.pod, incoming_ns_labels);
                process_term(
                    part,
                    t,
                    i64::from(self.args.hard_pod_affinity_weight),
                    matched,
                    node,
                );
            }
        }
        for (terms, sign) in [
            (&existing.affinity.preferred_affinity, 1),
            (&existing.affinity.preferred_anti_affinity, -1),
        ] {
            for t in terms {
                let matched = t.term.matches(&incoming.pod, incoming_ns_labels);
                process_term(part, &t.term, i64::from(t.weight) * sign, matched, node);
            }
        }
    }
}

impl Plugin for InterPodAffinity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[
            ExtensionPoint::PreFilter,
            ExtensionPoint::Filter,
            ExtensionPoint::PreScore,
            ExtensionPoint::Score,
        ]
    }

    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status {
        if let Some(e) = &pod.affinity.parse_error {
            return Status::new(
                Code::UnschedulableAndUnresolvable,
                format!("parsing pod: {e}"),
            );
        }
        let listers = &snapshot.listers;
        let mut s = PreFilterState {
            namespace_labels: listers.namespace_labels(pod.namespace()),
            listers: snapshot.listers.clone(),
            ..PreFilterState::default()
        };
        // No node to look at when no pod anywhere has required anti-affinity terms.
        let anti_affinity_nodes = if snapshot.nodes_with_required_anti_affinity > 0 {
            &snapshot.nodes[..]
        } else {
            &[]
        };
        for node in anti_affinity_nodes
            .iter()
            .filter(|n| n.pods_with_required_anti_affinity > 0)
        {
            for existing in &node.pods {
                for t in &existing.affinity.required_anti_affinity {
                    if t.matches(&pod.pod, s.namespace_labels.as_ref()) {
                        update(
                            &mut s.existing_anti_affinity_counts,
                            node,
                            &t.topology_key,
                            1,
                        );
                    }
                }
            }
        }
        let a = &pod.affinity;
        if !a.required_affinity.is_empty() || !a.required_anti_affinity.is_empty() {
            for node in snapshot.nodes.iter() {
                for existing in &node.pods {
                    if pod_matches_all(&a.required_affinity, &existing.pod, listers) {
                        for t in &a.required_affinity {
                            update(&mut s.affinity_counts, node, &t.topology_key, 1);
                        }
                    }
                    for t in &a.required_anti_affinity {
                        if term_matches(t, &existing.pod, listers) {
                            update(&mut s.anti_affinity_counts, node, &t.topology_key, 1);
                        }
                    }
                }
            }
        }
        if s.existing_anti_affinity_counts.is_empty()
            && a.required_affinity.is_empty()
            && a.required_anti_affinity.is_empty()
        {
            return Status::skip();
        }
        state.write(PRE_FILTER_STATE_KEY, s);
        Status::success()
    }

    fn add_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        added: &Arc<PodInfo>,
        node: &NodeInfo,
    ) -> Status {
        let Some(mut s) = state.read::<PreFilterState>(PRE_FILTER_STATE_KEY).cloned() else {
            return Status::success();
        };
        s.update_with_pod(pod, added, node, 1);
        state.write(PRE_FILTER_STATE_KEY, s);
        Status::success()
    }

    fn remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        removed: &Arc<PodInfo>,
        node: &NodeInfo,
    ) -> Status {
        let Some(mut s) = state.read::<PreFilterState>(PRE_FILTER_STATE_KEY).cloned() else {
            return Status::success();
        };
        s.update_with_pod(pod, removed, node, -1);
        state.write(PRE_FILTER_STATE_KEY, s);
        Status::success()
    }

    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<PreFilterState>(PRE_FILTER_STATE_KEY) else {
            return Status::error(format!(
                "error reading {PRE_FILTER_STATE_KEY:?} from cycleState: not found"
            ));
        };
        if node.node.is_none() {
            return Status::error("node not found");
        }
        if !satisfy_pod_affinity(s, pod, node, &s.listers) {
            return Status::new(
                Code::UnschedulableAndUnresolvable,
                ERR_REASON_AFFINITY_RULES_NOT_MATCH,
            );
        }
        if !satisfy_pod_anti_affinity(s, pod, node) {
            return Status::new(
                Code::Unschedulable,
                ERR_REASON_ANTI_AFFINITY_RULES_NOT_MATCH,
            );
        }
        if !satisfy_existing_pods_anti_affinity(s, node) {
            return Status::new(
                Code::Unschedulable,
                ERR_REASON_EXISTING_ANTI_AFFINITY_RULES_NOT_MATCH,
            );
        }
        Status::success()
    }

    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[Arc<NodeInfo>],
        snapshot: &Snapshot,
    ) -> Status {
        let a = &pod.affinity;
        let has_constraints =
            !a.preferred_affinity.is_empty() || !a.preferred_anti_affinity.is_empty();
        if self.args.ignore_preferred_terms_of_existing_pods && !has_constraints {
            return Status::skip();
        }
        if let Some(e) = &a.parse_error {
            return Status::error(format!("failed to parse pod: {e}"));
        }
        // Without terms of its own the pod is scored only by existing pods' terms: none
        // when no node holds a pod with any (upstream walks its list of such nodes).
        if !has_constraints && snapshot.nodes_with_affinity == 0 {
            return Status::skip();
        }
        let listers = &snapshot.listers;
        let ns_labels = listers.namespace_labels(pod.namespace());
        let node_part = |node: &NodeInfo| {
            let mut part = NodePart::new();
            if !has_constraints && node.pods_with_affinity == 0 {
                return part;
            }
            for existing in &node.pods {
                if !has_constraints && !existing.affinity.has_any() {
                    continue;
                }
                self.process_existing_pod(
                    &mut part,
                    pod,
                    ns_labels.as_ref(),
                    existing,
                    node,
                    listers,
                );
            }
            part
        };
        let by_name = a
            .preferred_affinity
            .iter()
            .chain(&a.preferred_anti_affinity)
            .all(|t| t.term.namespace_selector == Selector::Nothing);
        let total = if by_name {
            let key = ScoreKey {
                namespace: pod.namespace().to_string(),
                labels: pod.labels().cloned(),
                namespace_labels: ns_labels.clone(),
                preferred_affinity: a.preferred_affinity.clone(),
                preferred_anti_affinity: a.preferred_anti_affinity.clone(),
            };
            self.scores.total(key, &snapshot.nodes, node_part)
        } else {
            let mut total = ScoreMap::default();
            for node in snapshot.nodes.iter() {
                total.apply(&node_part(node), 1);
            }
            total
        };
        if total.is_zero() {
            return Status::skip();
        }
        state.write(PRE_SCORE_STATE_KEY, total);
        Status::success()
    }

    fn score(
        &self,
        state: &CycleState,
        _pod: &PodInfo,
        node: &NodeInfo,
        _snapshot: &Snapshot,
    ) -> Result<i64, Status> {
        let Some(m) = state.read::<ScoreMap>(PRE_SCORE_STATE_KEY) else {
            return Err(Status::error(format!(
                "failed to read {PRE_SCORE_STATE_KEY:?} from cycleState"
            )));
        };
        Ok(m.0
            .iter()
            .filter_map(|(key, values)| node_label(node, key).and_then(|v| values.get(v)))
            .sum())
    }

    fn normalize_score(
        &self,
        state: &CycleState,
        _pod: &PodInfo,
        scores: &mut [NodeScore],
    ) -> Status {
        // PreScore writes a sum only when some domain has a weight (it skips otherwise).
        if state.read::<ScoreMap>(PRE_SCORE_STATE_KEY).is_none() {
            return Status::success();
        }
        let min = scores.iter().map(|s| s.score).min().unwrap_or(0);
        let max = scores.iter().map(|s| s.score).max().unwrap_or(0);
        let diff = max - min;
        for s in scores.iter_mut() {
            // upstream computes in float64 and truncates.
            s.score = if diff > 0 {
                (MAX_NODE_SCORE as f64 * ((s.score - min) as f64 / diff as f64)) as i64
            } else {
                0
            };
        }
        Status::success()
    }

    fn events_to_register(&self) -> &'static [ClusterEvent] {
        &[
            ClusterEvent::AssignedPodAddOrUpdate,
            ClusterEvent::AssignedPodDelete,
            ClusterEvent::NodeAdd,
            ClusterEvent::NodeUpdate,
            ClusterEvent::UnscheduledPodUpdate,
        ]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{
        Affinity, Node, PodAffinity, PodAffinityTerm, PodAntiAffinity, PodSpec,
        WeightedPodAffinityTerm,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };

    pub(crate) fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
        l.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    pub(crate) fn node(name: &str, l: &[(&str, &str)], pods: Vec<Arc<PodInfo>>) -> NodeInfo {
        let mut info = NodeInfo::new(name);
        let mut all = labels(l);
        all.insert("kubernetes.io/hostname".into(), name.into());
        info.set_node(Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(all),
                ..Default::default()
            },
            ..Default::default()
        }));
        for p in pods {
            info.add_pod(p);
        }
        info
    }

    pub(crate) fn term(app: &str, key: &str) -> PodAffinityTerm {
        PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(labels(&[("app", app)])),
                ..Default::default()
            }),
            topology_key: key.into(),
            ..Default::default()
        }
    }

    /// A Node object for a [`crate::cache::Cache`], with its hostname and `labels`.
    pub(crate) fn node_object(name: &str, l: &[(&str, &str)]) -> Arc<Node> {
        let mut all = labels(l);
        all.insert("kubernetes.io/hostname".into(), name.into());
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(all),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    pub(crate) fn pod_with(name: &str, app: &str, affinity: Option<Affinity>) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(name.into()),
                labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                affinity,
                ..Default::default()
            }),
            ..Default::default()
        })))
    }

    fn required(aff: Vec<PodAffinityTerm>, anti: Vec<PodAffinityTerm>) -> Option<Affinity> {
        Some(Affinity {
            pod_affinity: (!aff.is_empty()).then(|| PodAffinity {
                required_during_scheduling_ignored_during_execution: Some(aff),
                ..Default::default()
            }),
            pod_anti_affinity: (!anti.is_empty()).then(|| PodAntiAffinity {
                required_during_scheduling_ignored_during_execution: Some(anti),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn filter_all(snap: &Snapshot, pod: &PodInfo) -> Vec<(String, Status)> {
        let pl = InterPodAffinity::new(&serde_json::Value::Null).expect("plugin");
        let mut state = CycleState::default();
        let s = pl.pre_filter(&mut state, pod, snap);
        if s.code == Code::Skip {
            return snap
                .nodes
                .iter()
                .map(|n| (n.name.clone(), Status::success()))
                .collect();
        }
        assert!(s.is_success(), "{s:?}");
        snap.nodes
            .iter()
            .map(|n| (n.name.clone(), pl.filter(&state, pod, n)))
            .collect()
    }

    #[test]
    fn required_affinity_and_anti_affinity_per_zone() {
        let db = pod_with("db", "db", None);
        let snap = Snapshot::from_nodes(vec![
            node("a1", &[("zone", "a")], vec![db]),
            node("a2", &[("zone", "a")], vec![]),
            node("b1", &[("zone", "b")], vec![]),
            node("nozone", &[], vec![]),
        ]);
        // Affinity to app=db per zone: both zone-a nodes.
        let web = pod_with("web", "web", required(vec![term("db", "zone")], vec![]));
        let r = filter_all(&snap, &web);
        let ok: Vec<&str> = r
            .iter()
            .filter(|(_, s)| s.is_success())
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(ok, ["a1", "a2"]);
        assert_eq!(r[2].1.message(), ERR_REASON_AFFINITY_RULES_NOT_MATCH);
        assert_eq!(r[2].1.code, Code::UnschedulableAndUnresolvable);
        // Anti-affinity to app=db per zone: zone b only (a node without the key passes).
        let lonely = pod_with("l", "web", required(vec![], vec![term("db", "zone")]));
        let r = filter_all(&snap, &lonely);
        assert_eq!(r[0].1.message(), ERR_REASON_ANTI_AFFINITY_RULES_NOT_MATCH);
        assert_eq!(r[0].1.code, Code::Unschedulable);
        assert!(r[2].1.is_success() && r[3].1.is_success());
    }

    #[test]
    fn first_pod_of_a_self_affine_group_goes_anywhere_with_the_key() {
        let snap = Snapshot::from_nodes(vec![
            node("a1", &[("zone", "a")], vec![]),
            node("nozone", &[], vec![]),
        ]);
        let p = pod_with("p", "web", required(vec![term("web", "zone")], vec![]));
        let r = filter_all(&snap, &p);
        assert!(r[0].1.is_success());
        assert_eq!(r[1].1.message(), ERR_REASON_AFFINITY_RULES_NOT_MATCH);
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let guard = pod_with(
            "guard",
            "guard",
            required(vec![], vec![term("web", "zone")]),
        );
        let snap = Snapshot::from_nodes(vec![
            node("a1", &[("zone", "a")], vec![guard]),
            node("a2", &[("zone", "a")], vec![]),
            node("b1", &[("zone", "b")], vec![]),
        ]);
        let web = pod_with("web", "web", None);
        let r = filter_all(&snap, &web);
        assert_eq!(
            r[1].1.message(),
            ERR_REASON_EXISTING_ANTI_AFFINITY_RULES_NOT_MATCH
        );
        assert!(r[2].1.is_success());
        // Another app is not affected.
        let other = pod_with("o", "other", None);
        assert!(
            filter_all(&snap, &other)
                .iter()
                .all(|(_, s)| s.is_success())
        );
    }

    #[test]
    fn namespaces_and_namespace_selectors() {
        let mut t = term("db", "zone");
        t.namespace_selector = Some(LabelSelector {
            match_labels: Some(labels(&[("team", "data")])),
            ..Default::default()
        });
        let mut other_ns = (*pod_with("db", "db", None).pod).clone();
        other_ns.metadata.namespace = Some("data".into());
        let db = Arc::new(PodInfo::new(Arc::new(other_ns)));
        let mut snap = Snapshot::from_nodes(vec![
            node("a1", &[("zone", "a")], vec![db]),
            node("b1", &[("zone", "b")], vec![]),
        ]);
        let web = pod_with("web", "web", required(vec![t], vec![]));
        // Namespace "data" unknown: the selector does not match it; no db pod counts,
        // and web does not match its own term: nowhere.
        assert!(filter_all(&snap, &web).iter().all(|(_, s)| !s.is_success()));
        snap.listers = Arc::new(Listers {
            static_namespace_labels: [("data".to_string(), labels(&[("team", "data")]))].into(),
            ..Listers::default()
        });
        let r = filter_all(&snap, &web);
        assert!(r[0].1.is_success() && !r[1].1.is_success());
        // Explicit namespaces.
        let mut t = term("db", "zone");
        t.namespaces = Some(vec!["data".into()]);
        let web = pod_with("web", "web", required(vec![t], vec![]));
        assert!(filter_all(&snap, &web)[0].1.is_success());
    }

    #[test]
    fn invalid_term_is_unschedulable_with_a_message() {
        let bad = PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "Near".into(),
                    values: None,
                }]),
                ..Default::default()
            }),
            topology_key: "zone".into(),
            ..Default::default()
        };
        let p = pod_with("p", "web", required(vec![bad], vec![]));
        let pl = InterPodAffinity::new(&serde_json::Value::Null).expect("plugin");
        let s = pl.pre_filter(&mut CycleState::default(), &p, &Snapshot::default());
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        assert_eq!(
            s.message(),
            "parsing pod: \"Near\" is not a valid label selector operator"
        );
    }

    #[test]
    fn add_and_remove_pod_update_the_counts() {
        let db = pod_with("db", "db", None);
        let n = node("a1", &[("zone", "a")], vec![db.clone()]);
        let snap = Snapshot::from_nodes(vec![n.clone()]);
        let lonely = pod_with("l", "web", required(vec![], vec![term("db", "zone")]));
        let pl = InterPodAffinity::new(&serde_json::Value::Null).expect("plugin");
        let mut state = CycleState::default();
        assert!(pl.pre_filter(&mut state, &lonely, &snap).is_success());
        assert!(!pl.filter(&state, &lonely, &n).is_success());
        let mut without = n.clone();
        without.remove_pod("db");
        pl.remove_pod(&mut state, &lonely, &db, &without);
        assert!(pl.filter(&state, &lonely, &without).is_success());
        pl.add_pod(&mut state, &lonely, &db, &n);
        assert!(!pl.filter(&state, &lonely, &n).is_success());
    }

    #[test]
    fn preferred_terms_score_domains() {
        let db = pod_with("db", "db", None);
        let snap = Snapshot::from_nodes(vec![
            node("a1", &[("zone", "a")], vec![db]),
            node("a2", &[("zone", "a")], vec![]),
            node("b1", &[("zone", "b")], vec![]),
        ]);
        let web = pod_with(
            "web",
            "web",
            Some(Affinity {
                pod_affinity: Some(PodAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 10,
                            pod_affinity_term: term("db", "zone"),
                        },
                    ]),
                    ..Default::default()
                }),
                pod_anti_affinity: Some(PodAntiAffinity {
                    preferred_during_scheduling_ignored_during_execution: Some(vec![
                        WeightedPodAffinityTerm {
                            weight: 4,
                            pod_affinity_term: term("db", "kubernetes.io/hostname"),
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        );
        let pl = InterPodAffinity::new(&serde_json::Value::Null).expect("plugin");
        let mut state = CycleState::default();
        assert!(
            pl.pre_score(&mut state, &web, &snap.nodes, &snap)
                .is_success()
        );
        let mut scores: Vec<NodeScore> = snap
            .nodes
            .iter()
            .map(|n| NodeScore {
                name: n.name.clone(),
                score: pl.score(&state, &web, n, &snap).expect("score"),
            })
            .collect();
        assert_eq!(
            scores.iter().map(|s| s.score).collect::<Vec<_>>(),
            [6, 10, 0]
        );
        pl.normalize_score(&state, &web, &mut scores);
        assert_eq!(
            scores.iter().map(|s| s.score).collect::<Vec<_>>(),
            [60, 100, 0]
        );
        // Nothing to score with: Skip.
        let plain = pod_with("plain", "x", None);
        assert_eq!(
            pl.pre_score(&mut CycleState::default(), &plain, &snap.nodes, &snap)
                .code,
            Code::Skip
        );
        assert!(InterPodAffinity::new(&serde_json::json!({"hardPodAffinityWeight": 101})).is_err());
    }

    /// PreScore's sums are carried across cycles: after every change to the cluster they
    /// equal those of a plugin that never saw an earlier cycle.
    #[test]
    fn sums_carried_across_cycles_match_a_fresh_walk() {
        let cache = crate::cache::Cache::new(None);
        for (name, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")] {
            cache.add_or_update_node(node_object(name, &[("zone", zone)]));
        }
        let preferred = |app: &str, key: &str, weight: i32| WeightedPodAffinityTerm {
            weight,
            pod_affinity_term: term(app, key),
        };
        let web =
            pod_with(
                "web",
                "web",
                Some(Affinity {
                    pod_affinity: Some(PodAffinity {
                        preferred_during_scheduling_ignored_during_execution: Some(vec![
                            preferred("db", "zone", 10),
                        ]),
                        ..Default::default()
                    }),
                    pod_anti_affinity: Some(PodAntiAffinity {
                        preferred_during_scheduling_ignored_during_execution: Some(vec![
                            preferred("db", "kubernetes.io/hostname", 4),
                        ]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            );
        let kept = InterPodAffinity::new(&serde_json::Value::Null).expect("plugin");
        let sums = |pl: &InterPodAffinity, snap: &Snapshot| {
            let mut state = CycleState::default();
            pl.pre_score(&mut state, &web, &snap.nodes, snap);
            let mut out: Vec<(String, String, i64)> = state
                .read::<ScoreMap>(PRE_SCORE_STATE_KEY)
                .into_iter()
                .flat_map(|m| {
                    m.0.iter().flat_map(|(k, vs)| {
                        vs.iter()
                            .filter(|(_, w)| **w != 0)
                            .map(|(v, w)| (k.clone(), v.clone(), *w))
                    })
                })
                .collect();
            out.sort();
            out
        };
        let check = |step: &str| {
            let snap = cache.snapshot();
            let fresh = InterPodAffinity::new(&serde_json::Value::Null).expect("plugin");
            let got = sums(&kept, &snap);
            assert_eq!(got, sums(&fresh, &snap), "{step}");
            got
        };
        assert!(check("no pods").is_empty());
        for (i, n) in ["a1", "b1", "a2", "b1"].into_iter().enumerate() {
            cache
                .assume(pod_with(&format!("db{i}"), "db", None), n)
                .expect("assume");
            cache
                .assume(pod_with(&format!("other{i}"), "other", None), n)
                .expect("assume");
            check(&format!("db{i} on {n}"));
        }
        // A node moves to another zone, one leaves, a pod goes.
        cache.add_or_update_node(node_object("b1", &[("zone", "c")]));
        check("b1 relabelled");
        cache.remove_node("a2");
        check("a2 removed");
        cache.remove_pod("db0");
        let got = check("db0 removed");
        let own = |k: &str, v: &str, w: i64| (k.to_string(), v.to_string(), w);
        assert_eq!(
            got,
            vec![
                own("kubernetes.io/hostname", "b1", -8),
                own("zone", "c", 20),
            ]
        );
    }
}
