//! PodTopologySpread: `topologySpreadConstraints` with `whenUnsatisfiable: DoNotSchedule`
//! filter nodes whose domain would exceed `maxSkew`; `ScheduleAnyway` constraints score
//! emptier domains higher. Pods without constraints get the profile's default
//! constraints (upstream's system defaults: hostname maxSkew 3, zone maxSkew 5, both
//! ScheduleAnyway) with a selector built from the Services, ReplicationControllers,
//! ReplicaSets and StatefulSets that select the pod.
//!
//! ```text
//!   PreFilter: per constraint, matching pods per domain over eligible nodes
//!              (nodeAffinityPolicy/nodeTaintsPolicy), and the two emptiest domains
//!   Filter:    count(domain) + self - min(domains; 0 below minDomains) <= maxSkew
//!   PreScore:  counts per domain over the filtered nodes' domains; Score: weighted
//!              counts (log-normalized per topology size); NormalizeScore: fewer = better
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{NodeAffinity, Toleration, TopologySpreadConstraint};
use serde::Deserialize;

use crate::cache::{Listers, Snapshot};
use crate::framework::interface::{
    ClusterEvent, Code, CycleState, ExtensionPoint, MAX_NODE_SCORE, NodeScore, Plugin, Status,
};
use crate::framework::node_sums::{NodeSums, Sum};
use crate::framework::types::{NodeInfo, PodInfo};
use crate::plugins::helper::{
    FastMap, Selector, add_count, find_untolerated_taint, label_selector_as_selector,
};
use crate::plugins::node_affinity::pod_matches_node;
use crate::transform::CachedNode;

/// The plugin's name.
pub const NAME: &str = "PodTopologySpread";
/// upstream `ErrReasonConstraintsNotMatch`.
pub const ERR_REASON_CONSTRAINTS_NOT_MATCH: &str =
    "node(s) didn't match pod topology spread constraints";
/// upstream `ErrReasonNodeLabelNotMatch`.
pub const ERR_REASON_NODE_LABEL_NOT_MATCH: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
/// `kubernetes.io/hostname`: its domains are the nodes themselves.
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
/// `topology.kubernetes.io/zone`.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

const PRE_FILTER_STATE_KEY: &str = "PreFilterPodTopologySpread";
const PRE_SCORE_STATE_KEY: &str = "PreScorePodTopologySpread";

/// upstream `systemDefaultConstraints`.
pub fn system_default_constraints() -> Vec<TopologySpreadConstraint> {
    vec![
        TopologySpreadConstraint {
            topology_key: LABEL_HOSTNAME.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            max_skew: 3,
            ..Default::default()
        },
        TopologySpreadConstraint {
            topology_key: LABEL_ZONE.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            max_skew: 5,
            ..Default::default()
        },
    ]
}

/// `PodTopologySpreadArgs`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodTopologySpreadArgs {
    /// Constraints for pods that define none (with `defaultingType: List`).
    #[serde(default)]
    pub default_constraints: Vec<TopologySpreadConstraint>,
    /// `System` (upstream's built-in defaults; the default) or `List`.
    #[serde(default)]
    pub defaulting_type: String,
    /// Set by the apiserver-style encoding; ignored.
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<String>,
    /// Set by the apiserver-style encoding; ignored.
    #[serde(default)]
    pub kind: Option<String>,
}

/// The plugin.
pub struct PodTopologySpread {
    default_constraints: Vec<TopologySpreadConstraint>,
    system_defaulted: bool,
    /// PreFilter's per-domain counts, kept across cycles (see [`NodeSums`]).
    counts: NodeSums<CountKey, DomainCounts>,
}

impl PodTopologySpread {
    /// Builds the plugin (upstream `ValidatePodTopologySpreadArgs`, then `New`).
    pub fn new(args: &serde_json::Value) -> Result<Self, String> {
        let args: PodTopologySpreadArgs = super::decode_args(args)?;
        let defaulting = if args.defaulting_type.is_empty() {
            "System"
        } else {
            args.defaulting_type.as_str()
        };
        let mut errs = Vec::new();
        match defaulting {
            "System" if !args.default_constraints.is_empty() => errs.push(
                "defaultingType: Invalid value: \"System\": when .defaultConstraints are not empty"
                    .to_string(),
            ),
            "System" | "List" => {}
            other => errs.push(format!(
                "defaultingType: Unsupported value: {other:?}: supported values: \"System\", \"List\""
            )),
        }
        for (i, c) in args.default_constraints.iter().enumerate() {
            let p = format!("defaultConstraints[{i}]");
            if c.max_skew <= 0 {
                errs.push(format!(
                    "{p}.maxSkew: Invalid value: {}: not in valid range (0, inf)",
                    c.max_skew
                ));
            }
            if c.topology_key.is_empty() {
                errs.push(format!("{p}.topologyKey: Required value: can not be empty"));
            }
            match c.when_unsatisfiable.as_str() {
                "DoNotSchedule" | "ScheduleAnyway" => {}
                "" => errs.push(format!(
                    "{p}.whenUnsatisfiable: Required value: can not be empty"
                )),
                other => errs.push(format!(
                    "{p}.whenUnsatisfiable: Unsupported value: {other:?}: supported values: \"DoNotSchedule\", \"ScheduleAnyway\""
                )),
            }
            if c.label_selector.is_some() {
                errs.push(format!("{p}.labelSelector: Forbidden: constraint must not define a selector, as they deduced for each pod"));
            }
            if args.default_constraints[..i].iter().any(|o| {
                o.topology_key == c.topology_key && o.when_unsatisfiable == c.when_unsatisfiable
            }) {
                errs.push(format!(
                    "defaultConstraints[{i}]: Duplicate value: \"{{{}, {}}}\"",
                    c.topology_key, c.when_unsatisfiable
                ));
            }
        }
        if !errs.is_empty() {
            return Err(errs.join(", "));
        }
        let system_defaulted = defaulting == "System";
        Ok(Self {
            default_constraints: if system_defaulted {
                system_default_constraints()
            } else {
                args.default_constraints
            },
            system_defaulted,
            counts: NodeSums::default(),
        })
    }
}

/// A constraint with its selector parsed (upstream `topologySpreadConstraint`).
#[derive(Clone, Debug, PartialEq)]
struct Constraint {
    max_skew: i32,
    topology_key: String,
    selector: Selector,
    min_domains: i32,
    honor_node_affinity: bool,
    honor_node_taints: bool,
}

impl Constraint {
    /// The node's domain: its value of the topology key ("" without the key).
    fn domain<'a>(&self, node: &'a CachedNode) -> &'a str {
        node.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(&self.topology_key))
            .map_or("", String::as_str)
    }

    /// upstream `matchNodeInclusionPolicies`.
    fn includes_node(&self, pod: &PodInfo, node: &CachedNode) -> bool {
        if self.honor_node_affinity && !pod_matches_node(pod, node) {
            return false;
        }
        if self.honor_node_taints {
            let taints = node
                .spec
                .as_ref()
                .and_then(|s| s.taints.as_deref())
                .unwrap_or_default();
            let tolerations = pod
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.tolerations.as_deref())
                .unwrap_or_default();
            if find_untolerated_taint(taints, tolerations, |t| {
                t.effect == "NoSchedule" || t.effect == "NoExecute"
            })
            .is_some()
            {
                return false;
            }
        }
        true
    }
}

/// upstream `filterTopologySpreadConstraints`: the constraints with `action`, selectors
/// parsed, `matchLabelKeys` merged in from the pod's labels.
fn filter_constraints(
    constraints: &[TopologySpreadConstraint],
    pod_labels: Option<&BTreeMap<String, String>>,
    action: &str,
) -> Result<Vec<Constraint>, String> {
    let mut out = Vec::new();
    for c in constraints
        .iter()
        .filter(|c| c.when_unsatisfiable == action)
    {
        let mut selector = label_selector_as_selector(c.label_selector.as_ref())?;
        let keys = c.match_label_keys.as_deref().unwrap_or_default();
        let match_labels: BTreeMap<String, String> = keys
            .iter()
            .filter_map(|k| {
                pod_labels
                    .and_then(|l| l.get(k))
                    .map(|v| (k.clone(), v.clone()))
            })
            .collect();
        if !match_labels.is_empty() {
            // upstream `mergeLabelSetWithSelector`: Nothing stays Nothing.
            if let Some(reqs) = selector.requirements() {
                let mut merged = Selector::from_set(&match_labels);
                merged.add(reqs.iter().cloned());
                selector = merged;
            }
        }
        out.push(Constraint {
            max_skew: c.max_skew,
            topology_key: c.topology_key.clone(),
            selector,
            min_domains: c.min_domains.unwrap_or(1),
            honor_node_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
            honor_node_taints: c.node_taints_policy.as_deref() == Some("Honor"),
        });
    }
    Ok(out)
}

/// upstream `helper.DefaultSelector`: the union of the selectors of the Services,
/// ReplicationControllers, ReplicaSets and StatefulSets in the pod's namespace that
/// select it.
pub fn default_selector(pod: &PodInfo, listers: &Listers) -> Selector {
    let ns = pod.namespace();
    let labels = pod.labels();
    let mut set = BTreeMap::new();
    for svc in listers.services.iter().flat_map(|s| s.list_in(ns)) {
        let Some(sel) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            continue;
        };
        if Selector::from_set(sel).matches(labels) {
            set.extend(sel.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
    let mut selector = if set.is_empty() {
        Selector::everything()
    } else {
        Selector::from_set(&set)
    };
    if labels.is_none_or(BTreeMap::is_empty) {
        return selector;
    }
    for rc in listers
        .replication_controllers
        .iter()
        .flat_map(|s| s.list_in(ns))
    {
        let Some(sel) = rc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            continue;
        };
        let s = Selector::from_set(sel);
        if !s.is_empty() && s.matches(labels) {
            selector.add(s.requirements().unwrap_or_default().iter().cloned());
        }
    }
    let mut add_label_selector =
        |ls: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>| {
            if let Ok(s) = label_selector_as_selector(ls)
                && !s.is_empty()
                && s.matches(labels)
            {
                selector.add(s.requirements().unwrap_or_default().iter().cloned());
            }
        };
    for rs in listers.replica_sets.iter().flat_map(|s| s.list_in(ns)) {
        add_label_selector(rs.spec.as_ref().map(|s| &s.selector));
    }
    for ss in listers.stateful_sets.iter().flat_map(|s| s.list_in(ns)) {
        add_label_selector(ss.spec.as_ref().map(|s| &s.selector));
    }
    selector
}

impl PodTopologySpread {
    /// upstream `getConstraints`/`buildDefaultConstraints` for `action`.
    fn constraints(
        &self,
        pod: &PodInfo,
        listers: &Listers,
        action: &str,
    ) -> Result<Vec<Constraint>, String> {
        let own = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_deref())
            .unwrap_or_default();
        if !own.is_empty() {
            return filter_constraints(own, pod.labels(), action);
        }
        let mut constraints = filter_constraints(&self.default_constraints, pod.labels(), action)?;
        if constraints.is_empty() {
            return Ok(constraints);
        }
        let selector = default_selector(pod, listers);
        if selector.is_empty() {
            return Ok(Vec::new());
        }
        for c in &mut constraints {
            c.selector = selector.clone();
        }
        Ok(constraints)
    }
}

/// upstream `countPodsMatchSelector`: pods in `ns`, not being deleted, selected.
fn count_pods_match_selector(pods: &[Arc<PodInfo>], selector: &Selector, ns: &str) -> i64 {
    if selector.is_empty() {
        return 0;
    }
    let n = pods
        .iter()
        .filter(|p| {
            p.pod.metadata.deletion_timestamp.is_none()
                && p.namespace() == ns
                && selector.matches(p.labels())
        })
        .count();
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn node_has_all_keys(node: &CachedNode, constraints: &[Constraint]) -> bool {
    let labels = node.metadata.labels.as_ref();
    constraints
        .iter()
        .all(|c| labels.is_some_and(|l| l.contains_key(&c.topology_key)))
}

/// The two emptiest domains of a constraint (upstream `criticalPaths`).
#[derive(Clone, Debug)]
struct CriticalPaths([(String, i64); 2]);

impl CriticalPaths {
    fn new() -> Self {
        Self([
            (String::new(), i64::from(i32::MAX)),
            (String::new(), i64::from(i32::MAX)),
        ])
    }

    fn update(&mut self, value: &str, num: i64) {
        let p = &mut self.0;
        let i = if value == p[0].0 {
            Some(0)
        } else if value == p[1].0 {
            Some(1)
        } else {
            None
        };
        if let Some(i) = i {
            p[i].1 = num;
            if p[0].1 > p[1].1 {
                p.swap(0, 1);
            }
        } else if num < p[0].1 {
            p[1] = p[0].clone();
            p[0] = (value.to_string(), num);
        } else if num < p[1].1 {
            p[1] = (value.to_string(), num);
        }
    }
}

#[derive(Clone, Debug, Default)]
struct PreFilterState {
    constraints: Vec<Constraint>,
    critical_paths: Vec<CriticalPaths>,
    /// Per constraint: domain value -> matching pods.
    tp_value_to_match_num: Vec<FastMap<String, i64>>,
}

/// What PreFilter's counts depend on besides the node entries: the pod's namespace and
/// constraints, and what [`Constraint::includes_node`] reads of the pod when a constraint
/// honors node affinity or taints.
#[derive(PartialEq)]
struct CountKey {
    namespace: String,
    constraints: Vec<Constraint>,
    node_selector: Option<BTreeMap<String, String>>,
    node_affinity: Option<NodeAffinity>,
    tolerations: Option<Vec<Toleration>>,
}

impl CountKey {
    fn new(pod: &PodInfo, constraints: &[Constraint]) -> Self {
        let spec = pod.pod.spec.as_ref();
        let affinity = constraints.iter().any(|c| c.honor_node_affinity);
        let taints = constraints.iter().any(|c| c.honor_node_taints);
        Self {
            namespace: pod.namespace().to_string(),
            constraints: constraints.to_vec(),
            node_selector: spec
                .filter(|_| affinity)
                .and_then(|s| s.node_selector.clone()),
            node_affinity: spec
                .filter(|_| affinity)
                .and_then(|s| s.affinity.as_ref())
                .and_then(|a| a.node_affinity.clone()),
            tolerations: spec.filter(|_| taints).and_then(|s| s.tolerations.clone()),
        }
    }
}

/// Per constraint: domain value -> (eligible nodes in it, matching pods on them). The node
/// count says when a domain has left the sum: upstream counts a domain whose nodes hold no
/// matching pod as 0, and a domain without eligible nodes not at all.
#[derive(Clone, Debug, Default)]
struct DomainCounts(Vec<FastMap<String, (i64, i64)>>);

impl Sum for DomainCounts {
    /// Per constraint: the node's domain and its matching pods, if the node is eligible.
    type Part = Vec<Option<(String, i64)>>;

    fn apply(&mut self, part: &Self::Part, sign: i64) {
        if self.0.len() < part.len() {
            self.0.resize_with(part.len(), FastMap::default);
        }
        for (counts, p) in self.0.iter_mut().zip(part) {
            let Some((domain, pods)) = p else {
                continue;
            };
            let e = match counts.get_mut(domain.as_str()) {
                Some(e) => e,
                None => counts.entry(domain.clone()).or_default(),
            };
            e.0 += sign;
            e.1 += sign * pods;
            if e.0 == 0 {
                counts.remove(domain.as_str());
            }
        }
    }
}

impl PreFilterState {
    fn min_match_num(&self, i: usize, min_domains: i32) -> i64 {
        let domains = self.tp_value_to_match_num[i].len();
        if domains < usize::try_from(min_domains).unwrap_or(0) {
            // Too few domains: the global minimum counts as 0.
            return 0;
        }
        self.critical_paths[i].0[0].1
    }

    /// upstream `updateWithPod`.
    fn update_with_pod(
        &mut self,
        other: &PodInfo,
        preemptor: &PodInfo,
        node: &NodeInfo,
        delta: i64,
    ) {
        let Some(n) = node.node.as_ref() else {
            return;
        };
        if other.namespace() != preemptor.namespace() || !node_has_all_keys(n, &self.constraints) {
            return;
        }
        for i in 0..self.constraints.len() {
            let c = &self.constraints[i];
            if !c.selector.matches(other.labels()) || !c.includes_node(preemptor, n) {
                continue;
            }
            let v = c.domain(n);
            let num = add_count(&mut self.tp_value_to_match_num[i], v, delta);
            self.critical_paths[i].update(v, num);
        }
    }
}

#[derive(Debug, Default)]
struct PreScoreState {
    constraints: Vec<Constraint>,
    ignored_nodes: HashSet<String>,
    /// Per constraint: domain value -> matching pods (hostname constraints count per node
    /// at Score time instead).
    topology_value_to_pod_counts: Vec<FastMap<String, i64>>,
    topology_normalizing_weight: Vec<f64>,
}

impl Plugin for PodTopologySpread {
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
        let constraints = match self.constraints(pod, &snapshot.listers, "DoNotSchedule") {
            Ok(c) => c,
            Err(e) => return Status::error(format!("get constraints from pod: {e}")),
        };
        if constraints.is_empty() {
            return Status::skip();
        }
        // upstream `calPreFilterState`: per constraint, the matching pods of each domain
        // over the nodes that have every constraint's key and that the constraint includes.
        let key = CountKey::new(pod, &constraints);
        let counts = self.counts.total(key, &snapshot.nodes, |info| {
            let Some(node) = info.node.as_ref() else {
                return Vec::new();
            };
            if !node_has_all_keys(node, &constraints) {
                return Vec::new();
            }
            constraints
                .iter()
                .map(|c| {
                    c.includes_node(pod, node).then(|| {
                        let n = count_pods_match_selector(&info.pods, &c.selector, pod.namespace());
                        (c.domain(node).to_string(), n)
                    })
                })
                .collect()
        });
        let mut tp_value_to_match_num: Vec<FastMap<String, i64>> = counts
            .0
            .into_iter()
            .map(|m| m.into_iter().map(|(v, (_, pods))| (v, pods)).collect())
            .collect();
        tp_value_to_match_num.resize_with(constraints.len(), FastMap::default);
        let mut s = PreFilterState {
            tp_value_to_match_num,
            critical_paths: vec![CriticalPaths::new(); constraints.len()],
            constraints,
        };
        for i in 0..s.constraints.len() {
            let mut paths = CriticalPaths::new();
            for (v, n) in &s.tp_value_to_match_num[i] {
                paths.update(v, *n);
            }
            s.critical_paths[i] = paths;
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
        if let Some(mut s) = state.read::<PreFilterState>(PRE_FILTER_STATE_KEY).cloned() {
            s.update_with_pod(added, pod, node, 1);
            state.write(PRE_FILTER_STATE_KEY, s);
        }
        Status::success()
    }

    fn remove_pod(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        removed: &Arc<PodInfo>,
        node: &NodeInfo,
    ) -> Status {
        if let Some(mut s) = state.read::<PreFilterState>(PRE_FILTER_STATE_KEY).cloned() {
            s.update_with_pod(removed, pod, node, -1);
            state.write(PRE_FILTER_STATE_KEY, s);
        }
        Status::success()
    }

    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(s) = state.read::<PreFilterState>(PRE_FILTER_STATE_KEY) else {
            return Status::error(format!(
                "reading {PRE_FILTER_STATE_KEY:?} from cycleState: not found"
            ));
        };
        let labels = node.labels();
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(v) = labels.and_then(|l| l.get(&c.topology_key)) else {
                return Status::new(
                    Code::UnschedulableAndUnresolvable,
                    ERR_REASON_NODE_LABEL_NOT_MATCH,
                );
            };
            let min = s.min_match_num(i, c.min_domains);
            let self_match = i64::from(c.selector.matches(pod.labels()));
            let match_num = s.tp_value_to_match_num[i].get(v).copied().unwrap_or(0);
            if match_num + self_match - min > i64::from(c.max_skew) {
                return Status::new(Code::Unschedulable, ERR_REASON_CONSTRAINTS_NOT_MATCH);
            }
        }
        Status::success()
    }

    fn pre_score(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        nodes: &[Arc<NodeInfo>],
        snapshot: &Snapshot,
    ) -> Status {
        if snapshot.nodes.is_empty() {
            return Status::skip();
        }
        let has_own = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .is_some_and(|c| !c.is_empty());
        let require_all_topologies = has_own || !self.system_defaulted;
        let constraints = match self.constraints(pod, &snapshot.listers, "ScheduleAnyway") {
            Ok(c) => c,
            Err(e) => {
                return Status::error(format!(
                    "calculating preScoreState: obtaining pod's soft topology spread constraints: {e}"
                ));
            }
        };
        if constraints.is_empty() {
            return Status::skip();
        }
        let mut s = PreScoreState {
            topology_value_to_pod_counts: vec![FastMap::default(); constraints.len()],
            ..PreScoreState::default()
        };
        let mut topo_size = vec![0usize; constraints.len()];
        for info in nodes {
            let Some(node) = info.node.as_ref() else {
                continue;
            };
            if require_all_topologies && !node_has_all_keys(node, &constraints) {
                s.ignored_nodes.insert(info.name.clone());
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if c.topology_key == LABEL_HOSTNAME {
                    continue;
                }
                let counts = &mut s.topology_value_to_pod_counts[i];
                let v = c.domain(node);
                if !counts.contains_key(v) {
                    counts.insert(v.to_string(), 0);
                    topo_size[i] += 1;
                }
            }
        }
        s.topology_normalizing_weight = constraints
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let size = if c.topology_key == LABEL_HOSTNAME {
                    nodes.len() - s.ignored_nodes.len()
                } else {
                    topo_size[i]
                };
                // upstream `topologyNormalizingWeight`: log(size + 2).
                ((size + 2) as f64).ln()
            })
            .collect();
        for info in snapshot.nodes.iter() {
            let Some(node) = info.node.as_ref() else {
                continue;
            };
            if require_all_topologies && !node_has_all_keys(node, &constraints) {
                continue;
            }
            for (i, c) in constraints.iter().enumerate() {
                if !c.includes_node(pod, node) {
                    continue;
                }
                let count = count_pods_match_selector(&info.pods, &c.selector, pod.namespace());
                if let Some(e) = s.topology_value_to_pod_counts[i].get_mut(c.domain(node)) {
                    *e += count;
                }
            }
        }
        s.constraints = constraints;
        state.write(PRE_SCORE_STATE_KEY, s);
        Status::success()
    }

    fn score(
        &self,
        state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _snapshot: &Snapshot,
    ) -> Result<i64, Status> {
        let Some(s) = state.read::<PreScoreState>(PRE_SCORE_STATE_KEY) else {
            return Err(Status::error(format!(
                "error reading {PRE_SCORE_STATE_KEY:?} from cycleState"
            )));
        };
        if s.ignored_nodes.contains(&node.name) {
            return Ok(0);
        }
        let labels = node.labels();
        let mut score = 0.0f64;
        for (i, c) in s.constraints.iter().enumerate() {
            let Some(v) = labels.and_then(|l| l.get(&c.topology_key)) else {
                continue;
            };
            let cnt = if c.topology_key == LABEL_HOSTNAME {
                count_pods_match_selector(&node.pods, &c.selector, pod.namespace())
            } else {
                s.topology_value_to_pod_counts[i]
                    .get(v)
                    .copied()
                    .unwrap_or(0)
            };
            // upstream `scoreForCount`.
            score += cnt as f64 * s.topology_normalizing_weight[i] + f64::from(c.max_skew - 1);
        }
        Ok(score.round() as i64)
    }

    fn normalize_reads_node_names(&self) -> bool {
        // Nodes without the constraints' topology keys are told apart by name.
        true
    }

    fn normalize_score(
        &self,
        state: &CycleState,
        _pod: &PodInfo,
        scores: &mut [NodeScore],
    ) -> Status {
        let Some(s) = state.read::<PreScoreState>(PRE_SCORE_STATE_KEY) else {
            return Status::success();
        };
        let mut min = i64::MAX;
        let mut max = 0i64;
        for sc in scores.iter() {
            if s.ignored_nodes.contains(&sc.name) {
                continue;
            }
            min = min.min(sc.score);
            max = max.max(sc.score);
        }
        for sc in scores.iter_mut() {
            if s.ignored_nodes.contains(&sc.name) {
                sc.score = 0;
            } else if max == 0 {
                sc.score = MAX_NODE_SCORE;
            } else {
                sc.score = MAX_NODE_SCORE * (max + min - sc.score) / max;
            }
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
mod tests {
    use super::*;
    use crate::plugins::inter_pod_affinity::tests::{labels, node};
    use k8s_openapi::api::core::v1::{Pod, PodSpec, Service, ServiceSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    fn pod(name: &str, app: &str, constraints: Vec<TopologySpreadConstraint>) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(name.into()),
                labels: Some(labels(&[("app", app)])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                topology_spread_constraints: (!constraints.is_empty()).then_some(constraints),
                ..Default::default()
            }),
            ..Default::default()
        })))
    }

    fn constraint(key: &str, skew: i32, action: &str) -> TopologySpreadConstraint {
        TopologySpreadConstraint {
            max_skew: skew,
            topology_key: key.into(),
            when_unsatisfiable: action.into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(labels(&[("app", "web")])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn feasible(pl: &PodTopologySpread, snap: &Snapshot, p: &PodInfo) -> Vec<String> {
        let mut state = CycleState::default();
        let s = pl.pre_filter(&mut state, p, snap);
        if s.code == Code::Skip {
            return snap.nodes.iter().map(|n| n.name.clone()).collect();
        }
        snap.nodes
            .iter()
            .filter(|n| pl.filter(&state, p, n).is_success())
            .map(|n| n.name.clone())
            .collect()
    }

    fn webs(n: usize) -> Vec<Arc<PodInfo>> {
        (0..n)
            .map(|i| pod(&format!("w{i}"), "web", vec![]))
            .collect()
    }

    #[test]
    fn do_not_schedule_keeps_skew_and_needs_the_label() {
        let pl = PodTopologySpread::new(&serde_json::Value::Null).expect("plugin");
        let snap = Snapshot::from_nodes(vec![
            node("a1", &[("zone", "a")], webs(2)),
            node("b1", &[("zone", "b")], webs(1)),
            node("c1", &[("zone", "c")], vec![]),
            node("nolabel", &[], vec![]),
        ]);
        let p = pod("p", "web", vec![constraint("zone", 1, "DoNotSchedule")]);
        assert_eq!(feasible(&pl, &snap, &p), ["c1"]);
        let mut state = CycleState::default();
        assert!(pl.pre_filter(&mut state, &p, &snap).is_success());
        assert_eq!(
            pl.filter(&state, &p, &snap.nodes[0]).message(),
            ERR_REASON_CONSTRAINTS_NOT_MATCH
        );
        let s = pl.filter(&state, &p, &snap.nodes[3]);
        assert_eq!(
            (s.code, s.message().as_str()),
            (
                Code::UnschedulableAndUnresolvable,
                ERR_REASON_NODE_LABEL_NOT_MATCH
            )
        );
        let p = pod("p", "web", vec![constraint("zone", 2, "DoNotSchedule")]);
        assert_eq!(feasible(&pl, &snap, &p), ["b1", "c1"]);
    }

    #[test]
    fn min_domains_treats_missing_domains_as_empty() {
        let pl = PodTopologySpread::new(&serde_json::Value::Null).expect("plugin");
        let snap = Snapshot::from_nodes(vec![
            node("a1", &[("zone", "a")], webs(1)),
            node("b1", &[("zone", "b")], webs(1)),
        ]);
        let mut c = constraint("zone", 1, "DoNotSchedule");
        assert_eq!(
            feasible(&pl, &snap, &pod("p", "web", vec![c.clone()])).len(),
            2
        );
        c.min_domains = Some(3);
        assert!(feasible(&pl, &snap, &pod("p", "web", vec![c])).is_empty());
    }

    #[test]
    fn node_inclusion_policies() {
        let pl = PodTopologySpread::new(&serde_json::Value::Null).expect("plugin");
        let mut tainted = node("b1", &[("zone", "b")], vec![]);
        let mut n = (**tainted.node.as_ref().expect("node")).clone();
        n.spec.get_or_insert_default().taints = Some(vec![k8s_openapi::api::core::v1::Taint {
            key: "k".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        }]);
        tainted.set_node(Arc::new(n));
        let snap = Snapshot::from_nodes(vec![node("a1", &[("zone", "a")], webs(1)), tainted]);
        // Taints ignored (default): zone b is an empty domain, so zone a is at skew 2.
        let c = constraint("zone", 1, "DoNotSchedule");
        assert_eq!(
            feasible(&pl, &snap, &pod("p", "web", vec![c.clone()])),
            ["b1"]
        );
        // Honored: zone b does not count; zone a is the minimum.
        let mut honor = c;
        honor.node_taints_policy = Some("Honor".into());
        assert_eq!(
            feasible(&pl, &snap, &pod("p", "web", vec![honor])),
            ["a1", "b1"]
        );
    }

    #[test]
    fn match_label_keys_narrow_the_selector() {
        let pl = PodTopologySpread::new(&serde_json::Value::Null).expect("plugin");
        let mut v2 = (*pod("old", "web", vec![]).pod).clone();
        v2.metadata
            .labels
            .get_or_insert_default()
            .insert("rev".into(), "1".into());
        let old = Arc::new(PodInfo::new(Arc::new(v2)));
        let snap = Snapshot::from_nodes(vec![
            node("a1", &[("zone", "a")], vec![old.clone(), old]),
            node("b1", &[("zone", "b")], vec![]),
        ]);
        let mut c = constraint("zone", 1, "DoNotSchedule");
        c.match_label_keys = Some(vec!["rev".into()]);
        let mut p = (*pod("p", "web", vec![c]).pod).clone();
        p.metadata
            .labels
            .get_or_insert_default()
            .insert("rev".into(), "2".into());
        let p = PodInfo::new(Arc::new(p));
        assert_eq!(feasible(&pl, &snap, &p), ["a1", "b1"]);
    }

    #[test]
    fn schedule_anyway_scores_emptier_domains_higher() {
        let pl = PodTopologySpread::new(&serde_json::Value::Null).expect("plugin");
        let snap = Snapshot::from_nodes(vec![
            node("a1", &[("zone", "a")], webs(3)),
            node("b1", &[("zone", "b")], webs(1)),
            node("c1", &[("zone", "c")], vec![]),
            node("nolabel", &[], vec![]),
        ]);
        let p = pod("p", "web", vec![constraint("zone", 1, "ScheduleAnyway")]);
        let mut state = CycleState::default();
        assert!(
            pl.pre_score(&mut state, &p, &snap.nodes, &snap)
                .is_success()
        );
        let mut scores: Vec<NodeScore> = snap
            .nodes
            .iter()
            .map(|n| NodeScore {
                name: n.name.clone(),
                score: pl.score(&state, &p, n, &snap).expect("score"),
            })
            .collect();
        // log(3 + 2) = 1.609: 3 pods -> 5, 1 -> 2, 0 -> 0.
        assert_eq!(
            scores.iter().map(|s| s.score).collect::<Vec<_>>(),
            [5, 2, 0, 0]
        );
        pl.normalize_score(&state, &p, &mut scores);
        assert_eq!(
            scores.iter().map(|s| s.score).collect::<Vec<_>>(),
            [0, 60, 100, 0]
        );
    }

    #[test]
    fn system_defaults_need_a_selecting_service_and_list_defaults_apply() {
        let pl = PodTopologySpread::new(&serde_json::Value::Null).expect("plugin");
        let mut snap = Snapshot::from_nodes(vec![
            node("a1", &[(LABEL_ZONE, "a")], webs(2)),
            node("b1", &[(LABEL_ZONE, "b")], vec![]),
        ]);
        let p = pod("p", "web", vec![]);
        assert_eq!(
            pl.pre_score(&mut CycleState::default(), &p, &snap.nodes, &snap)
                .code,
            Code::Skip,
            "no service selects the pod"
        );
        assert!(default_selector(&p, &snap.listers).is_empty());
        let _ = Service {
            spec: Some(ServiceSpec::default()),
            ..Default::default()
        };
        // With List defaulting, a DoNotSchedule default needs a selector too; without one
        // it is dropped.
        let pl = PodTopologySpread::new(&serde_json::json!({
            "defaultingType": "List",
            "defaultConstraints": [{"maxSkew": 1, "topologyKey": LABEL_ZONE, "whenUnsatisfiable": "DoNotSchedule"}],
        }))
        .expect("plugin");
        snap.listers = Arc::default();
        assert_eq!(feasible(&pl, &snap, &p).len(), 2);
        assert!(PodTopologySpread::new(&serde_json::json!({
            "defaultConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}],
        }))
        .is_err());
        assert!(PodTopologySpread::new(&serde_json::json!({"defaultingType": "Other"})).is_err());
    }

    /// PreFilter's counts are carried across cycles: after every change to the cluster
    /// they equal those of a plugin that never saw an earlier cycle, domains that lose
    /// their last node included.
    #[test]
    fn counts_carried_across_cycles_match_a_fresh_count() {
        use crate::plugins::inter_pod_affinity::tests::node_object;
        let cache = crate::cache::Cache::new(None);
        for (name, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")] {
            cache.add_or_update_node(node_object(name, &[("zone", zone)]));
        }
        cache.add_or_update_node(node_object("x1", &[]));
        let incoming = pod("in", "web", vec![constraint("zone", 1, "DoNotSchedule")]);
        let kept = PodTopologySpread::new(&serde_json::Value::Null).expect("plugin");
        let counts = |pl: &PodTopologySpread, snap: &Snapshot| {
            let mut state = CycleState::default();
            assert!(pl.pre_filter(&mut state, &incoming, snap).is_success());
            let s = state
                .read::<PreFilterState>(PRE_FILTER_STATE_KEY)
                .expect("state");
            let mut domains: Vec<(String, i64)> = s.tp_value_to_match_num[0]
                .iter()
                .map(|(v, n)| (v.clone(), *n))
                .collect();
            domains.sort();
            (domains, s.min_match_num(0, 1))
        };
        let check = |step: &str| {
            let snap = cache.snapshot();
            let fresh = PodTopologySpread::new(&serde_json::Value::Null).expect("plugin");
            let got = counts(&kept, &snap);
            assert_eq!(got, counts(&fresh, &snap), "{step}");
            got
        };
        let d = |l: &[(&str, i64)]| l.iter().map(|(v, n)| (v.to_string(), *n)).collect();
        assert_eq!(check("no pods"), (d(&[("a", 0), ("b", 0), ("c", 0)]), 0));
        for (i, n) in ["a1", "b1", "a2", "x1", "c1"].into_iter().enumerate() {
            cache
                .assume(pod(&format!("w{i}"), "web", vec![]), n)
                .expect("assume");
            cache
                .assume(pod(&format!("d{i}"), "db", vec![]), n)
                .expect("assume");
            check(&format!("w{i} on {n}"));
        }
        assert_eq!(check("placed"), (d(&[("a", 2), ("b", 1), ("c", 1)]), 1));
        // c1 moves to zone b, so zone c has no node left; a2 leaves; a pod goes.
        cache.add_or_update_node(node_object("c1", &[("zone", "b")]));
        assert_eq!(check("c1 relabelled"), (d(&[("a", 2), ("b", 2)]), 2));
        cache.remove_node("a2");
        cache.remove_pod("w1");
        assert_eq!(check("a2 and w1 gone"), (d(&[("a", 1), ("b", 1)]), 1));
    }
}
