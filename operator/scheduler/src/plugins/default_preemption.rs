//! DefaultPreemption: when no node fits, find a node where evicting lower-priority pods
//! would make the pod fit, choosing victims and node as upstream's preemption evaluator.
//!
//! ```text
//!   eligible? (preemptionPolicy, no victim of an earlier preemption still terminating)
//!     └▶ nodes whose filter status was Unschedulable (resolvable)
//!          └▶ dry run per node, from a random offset, until enough candidates:
//!               remove every lower-priority pod; the pod must fit then;
//!               add them back most important first (PDB-violating ones first), keeping
//!               each that still lets the pod fit: the rest are the victims
//!          └▶ pick: fewest PDB violations, lowest highest victim priority, lowest
//!               priority sum, fewest victims, latest start among top victims, first
//! ```
//!
//! The plugin is pure: it returns the nominated node and victims; the scheduler evicts
//! them (DisruptionTarget condition, delete, `Preempted` event) and sets
//! `status.nominatedNodeName`.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use rand::Rng as _;
use serde::Deserialize;

use crate::cache::Snapshot;
use crate::framework::interface::{
    Code, CycleState, ExtensionPoint, Plugin, PostFilterResult, Status,
};
use crate::framework::runtime::Framework;
use crate::framework::types::{NodeInfo, PodInfo};
use crate::framework::{Diagnosis, FitError};
use crate::plugins::helper::label_selector_as_selector;
use crate::schedule_one::{
    run_filters_with_nominated_pods, run_pre_filter_extension_add_pod,
    run_pre_filter_extension_remove_pod,
};
use crate::transform::CachedPod;

/// The plugin's name.
pub const NAME: &str = "DefaultPreemption";
/// upstream's status for a node without lower-priority pods.
pub const NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// upstream's status for nodes where eviction cannot help.
pub const NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";

/// `DefaultPreemptionArgs`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DefaultPreemptionArgs {
    /// Share of nodes to dry-run (at least `minCandidateNodesAbsolute`).
    #[serde(default = "default_pct")]
    pub min_candidate_nodes_percentage: i32,
    /// Nodes to dry-run at least.
    #[serde(default = "default_abs")]
    pub min_candidate_nodes_absolute: i32,
    /// Set by the apiserver-style encoding; ignored.
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<String>,
    /// Set by the apiserver-style encoding; ignored.
    #[serde(default)]
    pub kind: Option<String>,
}

fn default_pct() -> i32 {
    10
}
fn default_abs() -> i32 {
    100
}

impl Default for DefaultPreemptionArgs {
    fn default() -> Self {
        Self {
            min_candidate_nodes_percentage: 10,
            min_candidate_nodes_absolute: 100,
            api_version: None,
            kind: None,
        }
    }
}

/// The plugin.
pub struct DefaultPreemption {
    args: DefaultPreemptionArgs,
}

impl DefaultPreemption {
    /// Builds the plugin (upstream `ValidateDefaultPreemptionArgs`).
    pub fn new(args: &serde_json::Value) -> Result<Self, String> {
        let args: DefaultPreemptionArgs = super::decode_args(args)?;
        let mut errs = Vec::new();
        let (pct, abs) = (
            args.min_candidate_nodes_percentage,
            args.min_candidate_nodes_absolute,
        );
        if !(0..=100).contains(&pct) {
            errs.push(format!(
                "minCandidateNodesPercentage: Invalid value: {pct}: not in valid range [0, 100]"
            ));
        }
        if abs < 0 {
            errs.push(format!(
                "minCandidateNodesAbsolute: Invalid value: {abs}: not in valid range [0, inf)"
            ));
        }
        if pct == 0 && abs == 0 {
            errs.push("minCandidateNodesPercentage: Invalid value: 0: cannot be zero at the same time as minCandidateNodesAbsolute".into());
        }
        if !errs.is_empty() {
            return Err(errs.join(", "));
        }
        Ok(Self { args })
    }

    /// upstream `calculateNumCandidates`.
    pub fn num_candidates(&self, nodes: usize) -> usize {
        let pct = usize::try_from(self.args.min_candidate_nodes_percentage).unwrap_or(0);
        let abs = usize::try_from(self.args.min_candidate_nodes_absolute).unwrap_or(0);
        (nodes * pct / 100).max(abs).min(nodes)
    }
}

/// When the pod started; pods that have not started count as starting now (upstream
/// `GetPodStartTime`).
fn start_time(pod: &CachedPod, now: i128) -> i128 {
    pod.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map_or(now, |t| t.0.as_nanosecond())
}

/// upstream `MoreImportantPod`: higher priority, then earlier start.
fn more_important(a: &PodInfo, b: &PodInfo, now: i128) -> std::cmp::Ordering {
    b.priority
        .cmp(&a.priority)
        .then(start_time(&a.pod, now).cmp(&start_time(&b.pod, now)))
}

fn pod_terminating_by_preemption(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "DisruptionTarget"))
            .is_some_and(|c| {
                c.status == "True" && c.reason.as_deref() == Some("PreemptionByScheduler")
            })
}

/// upstream `filterPodsWithPDBViolation`: victims whose eviction would exceed a PDB's
/// allowed disruptions, and the others.
fn filter_pods_with_pdb_violation(
    pods: Vec<Arc<PodInfo>>,
    pdbs: &[Arc<PodDisruptionBudget>],
) -> (Vec<Arc<PodInfo>>, Vec<Arc<PodInfo>>) {
    let mut allowed: Vec<i32> = pdbs
        .iter()
        .map(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.disruptions_allowed)
                .unwrap_or(0)
        })
        .collect();
    let (mut violating, mut non_violating) = (Vec::new(), Vec::new());
    for p in pods {
        let mut violated = false;
        if p.labels().is_some_and(|l| !l.is_empty()) {
            for (i, pdb) in pdbs.iter().enumerate() {
                if pdb.metadata.namespace.as_deref() != Some(p.namespace()) {
                    continue;
                }
                let Ok(sel) =
                    label_selector_as_selector(pdb.spec.as_ref().and_then(|s| s.selector.as_ref()))
                else {
                    continue;
                };
                if sel.is_empty() || !sel.matches(p.labels()) {
                    continue;
                }
                // Already being disrupted: the PDB accounted for it.
                if pdb
                    .status
                    .as_ref()
                    .and_then(|s| s.disrupted_pods.as_ref())
                    .is_some_and(|d| d.contains_key(p.name()))
                {
                    continue;
                }
                allowed[i] -= 1;
                if allowed[i] < 0 {
                    violated = true;
                }
            }
        }
        if violated {
            violating.push(p);
        } else {
            non_violating.push(p);
        }
    }
    (violating, non_violating)
}

/// A node and what evicting on it costs.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The node.
    pub node: String,
    /// The victims, most important first.
    pub victims: Vec<Arc<PodInfo>>,
    /// How many victims' eviction violates a PDB.
    pub num_pdb_violations: usize,
}

/// upstream `SelectVictimsOnNode`, on copies of the node and the cycle state.
pub fn select_victims_on_node(
    fwk: &Framework,
    state: &mut CycleState,
    pod: &PodInfo,
    node: &mut NodeInfo,
    pdbs: &[Arc<PodDisruptionBudget>],
    snapshot: &Snapshot,
) -> Result<(Vec<Arc<PodInfo>>, usize), Status> {
    let now = k8s_openapi::jiff::Timestamp::now().as_nanosecond();
    let mut potential: Vec<Arc<PodInfo>> = node
        .pods
        .iter()
        .filter(|p| p.priority < pod.priority)
        .cloned()
        .collect();
    for p in &potential {
        node.remove_pod(&p.uid);
        let s = run_pre_filter_extension_remove_pod(fwk, state, pod, p, node);
        if !s.is_success() {
            return Err(s);
        }
    }
    if potential.is_empty() {
        return Err(Status::new(Code::UnschedulableAndUnresolvable, NO_VICTIMS));
    }
    let s = run_filters_with_nominated_pods(fwk, state, pod, node, snapshot);
    if !s.is_success() {
        return Err(s);
    }
    potential.sort_by(|a, b| more_important(a, b, now));
    let (violating, non_violating) = filter_pods_with_pdb_violation(potential, pdbs);
    let mut victims = Vec::new();
    let mut num_violating = 0;
    let reprieve = |p: &Arc<PodInfo>,
                    state: &mut CycleState,
                    node: &mut NodeInfo,
                    victims: &mut Vec<Arc<PodInfo>>|
     -> Result<bool, Status> {
        node.add_pod(p.clone());
        let s = run_pre_filter_extension_add_pod(fwk, state, pod, p, node);
        if !s.is_success() {
            return Err(s);
        }
        let fits = run_filters_with_nominated_pods(fwk, state, pod, node, snapshot).is_success();
        if !fits {
            node.remove_pod(&p.uid);
            let s = run_pre_filter_extension_remove_pod(fwk, state, pod, p, node);
            if !s.is_success() {
                return Err(s);
            }
            victims.push(p.clone());
        }
        Ok(fits)
    };
    for p in &violating {
        if !reprieve(p, state, node, &mut victims)? {
            num_violating += 1;
        }
    }
    for p in &non_violating {
        reprieve(p, state, node, &mut victims)?;
    }
    if !violating.is_empty() && !non_violating.is_empty() {
        victims.sort_by(|a, b| more_important(a, b, now));
    }
    Ok((victims, num_violating))
}

/// upstream `pickOneNodeForPreemption`.
pub fn pick_one_node_for_preemption(candidates: &[Candidate]) -> Option<&Candidate> {
    let now = k8s_openapi::jiff::Timestamp::now().as_nanosecond();
    let score_fns: [&dyn Fn(&Candidate) -> i128; 5] = [
        &|c| -(c.num_pdb_violations as i128),
        &|c| -(c.victims.first().map_or(0, |p| i128::from(p.priority))),
        &|c| {
            -c.victims
                .iter()
                .map(|p| i128::from(p.priority) + i128::from(i32::MAX) + 1)
                .sum::<i128>()
        },
        &|c| -(c.victims.len() as i128),
        &|c| {
            // The earliest start among the highest-priority victims; later is better.
            let top = c.victims.iter().map(|p| p.priority).max().unwrap_or(0);
            c.victims
                .iter()
                .filter(|p| p.priority == top)
                .map(|p| start_time(&p.pod, now))
                .min()
                .unwrap_or(i128::MIN)
        },
    ];
    let mut all: Vec<&Candidate> = candidates.iter().collect();
    for f in score_fns {
        let max = all.iter().map(|c| f(c)).max()?;
        all.retain(|c| f(c) == max);
        if all.len() == 1 {
            break;
        }
    }
    all.first().copied()
}

/// The message of a failed preemption: upstream's FitError text over the dry-run
/// statuses, the other nodes "not helpful".
fn no_candidate_message(num_all_nodes: usize, statuses: BTreeMap<String, Status>) -> String {
    let e = FitError {
        num_all_nodes,
        diagnosis: Diagnosis {
            node_to_status: statuses.into_iter().collect(),
            absent_nodes_status: Some(Status::new(Code::UnschedulableAndUnresolvable, NOT_HELPFUL)),
            ..Diagnosis::default()
        },
        ..FitError::default()
    };
    e.message()
}

impl Plugin for DefaultPreemption {
    fn name(&self) -> &'static str {
        NAME
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[ExtensionPoint::PostFilter]
    }

    fn post_filter(
        &self,
        fwk: &Framework,
        state: &CycleState,
        pod: &PodInfo,
        diagnosis: &Diagnosis,
        snapshot: &Snapshot,
    ) -> (Option<PostFilterResult>, Status) {
        let unschedulable = |msg: String| {
            (
                None,
                Status::new(Code::Unschedulable, format!("preemption: {msg}")),
            )
        };
        let spec = pod.pod.spec.as_ref();
        if spec.and_then(|s| s.preemption_policy.as_deref()) == Some("Never") {
            return unschedulable("not eligible due to preemptionPolicy=Never.".into());
        }
        // A pod that already preempted waits for its victims to go rather than evicting more.
        if let Some(nominated) = pod
            .pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .filter(|n| !n.is_empty())
        {
            let unresolvable = diagnosis
                .node_to_status
                .get(nominated)
                .or(diagnosis.absent_nodes_status.as_ref())
                .is_some_and(|s| s.code == Code::UnschedulableAndUnresolvable);
            if !unresolvable
                && let Some(n) = snapshot.get(nominated)
                && n.pods
                    .iter()
                    .any(|p| p.priority < pod.priority && pod_terminating_by_preemption(&p.pod))
            {
                return unschedulable(
                    "not eligible due to a terminating pod on the nominated node.".into(),
                );
            }
        }
        let num_all = snapshot.nodes.len();
        let potential: Vec<&Arc<NodeInfo>> = snapshot
            .nodes
            .iter()
            .filter(|n| {
                diagnosis
                    .node_to_status
                    .get(&n.name)
                    .is_some_and(|s| s.code == Code::Unschedulable)
            })
            .collect();
        if potential.is_empty() {
            return unschedulable(no_candidate_message(num_all, BTreeMap::new()));
        }
        let pdbs = snapshot.listers.pdbs();
        let want = self.num_candidates(potential.len());
        let offset = rand::rng().random_range(0..potential.len());
        let mut non_violating = Vec::new();
        let mut violating = Vec::new();
        let mut statuses = BTreeMap::new();
        for i in 0..potential.len() {
            let info = potential[(offset + i) % potential.len()];
            let mut node = (**info).clone();
            let mut st = state.clone();
            match select_victims_on_node(fwk, &mut st, pod, &mut node, &pdbs, snapshot) {
                Ok((victims, n)) if !victims.is_empty() => {
                    let c = Candidate {
                        node: info.name.clone(),
                        victims,
                        num_pdb_violations: n,
                    };
                    if n == 0 {
                        non_violating.push(c);
                    } else {
                        violating.push(c);
                    }
                    if !non_violating.is_empty() && non_violating.len() + violating.len() >= want {
                        break;
                    }
                }
                Ok(_) => {
                    statuses.insert(
                        info.name.clone(),
                        Status::error(format!(
                            "expected at least one victim pod on node {:?}",
                            info.name
                        )),
                    );
                }
                Err(s) => {
                    if s.code == Code::Error {
                        return (None, s);
                    }
                    statuses.insert(info.name.clone(), s);
                }
            }
        }
        non_violating.extend(violating);
        let candidates = non_violating;
        if candidates.is_empty() {
            return unschedulable(no_candidate_message(num_all, statuses));
        }
        let best = if candidates.len() == 1 {
            candidates.first()
        } else {
            pick_one_node_for_preemption(&candidates)
        };
        let Some(best) = best else {
            return unschedulable("no candidate node for preemption".into());
        };
        (
            Some(PostFilterResult {
                nominated_node: best.node.clone(),
                victims: best.victims.clone(),
            }),
            Status::success(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KubeSchedulerConfiguration, finish};
    use crate::plugins::node_resources_fit::tests::{node, pod};
    use crate::schedule_one::{ScheduleError, schedule_pod};
    use crate::transform::CachedNode;
    use k8s_openapi::api::policy::v1::{PodDisruptionBudgetSpec, PodDisruptionBudgetStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use std::sync::atomic::AtomicUsize;

    fn framework() -> Framework {
        let cfg = finish(KubeSchedulerConfiguration::defaulted()).expect("config");
        Framework::new(&cfg.profiles[0], 2).expect("framework")
    }

    fn named(mut n: NodeInfo, name: &str) -> NodeInfo {
        n.name = name.to_string();
        if let Some(node) = n.node.as_mut() {
            let mut copy: CachedNode = (**node).clone();
            copy.metadata.name = Some(name.into());
            *node = Arc::new(copy);
        }
        n
    }

    fn prio(p: Arc<PodInfo>, name: &str, priority: i32, app: &str) -> Arc<PodInfo> {
        let mut pod = (*p.pod).clone();
        pod.metadata.name = Some(name.into());
        pod.metadata.uid = Some(name.into());
        pod.metadata.namespace = Some("ns".into());
        pod.metadata.labels = Some([("app".to_string(), app.to_string())].into());
        pod.spec.get_or_insert_default().priority = Some(priority);
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    fn preempt(snap: &Snapshot, p: &PodInfo) -> (Option<PostFilterResult>, String) {
        let f = framework();
        match schedule_pod(&f, snap, p, &AtomicUsize::new(0)) {
            Err(ScheduleError::Fit(e)) => {
                let msg = e.message();
                (e.post_filter_result.clone(), msg)
            }
            other => panic!("expected a fit error, got {other:?}"),
        }
    }

    #[test]
    fn evicts_the_fewest_lowest_priority_pods() {
        // n1: two low pods (1 cpu each); n2: one mid pod (2 cpu). A 2-cpu pod of priority 100
        // could go to either; n1 needs two victims of priority 1, n2 one of priority 50:
        // lowest highest-victim priority wins (n1), and only as many victims as needed.
        let mut n1 = named(node("2", "8Gi", "110"), "n1");
        n1.add_pod(prio(pod("1", "1Gi"), "low-a", 1, "a"));
        n1.add_pod(prio(pod("1", "1Gi"), "low-b", 1, "a"));
        let mut n2 = named(node("2", "8Gi", "110"), "n2");
        n2.add_pod(prio(pod("2", "1Gi"), "mid", 50, "b"));
        let snap = Snapshot::from_nodes(vec![n1, n2]);
        let p = prio(pod("2", "1Gi"), "high", 100, "h");
        let (r, msg) = preempt(&snap, &p);
        let r = r.expect("nominated");
        assert_eq!(r.nominated_node, "n1");
        let mut names: Vec<&str> = r.victims.iter().map(|v| v.name()).collect();
        names.sort_unstable();
        assert_eq!(names, ["low-a", "low-b"]);
        // A successful preemption adds nothing of its own to the message.
        assert_eq!(msg, "0/2 nodes are available: 2 Insufficient cpu.");

        // Only one core needed: one victim suffices on n1.
        let p = prio(pod("1", "1Gi"), "high", 100, "h");
        let r = preempt(&snap, &p).0.expect("nominated");
        assert_eq!((r.nominated_node.as_str(), r.victims.len()), ("n1", 1));
    }

    #[test]
    fn respects_pdbs_where_possible() {
        let mut n1 = named(node("1", "8Gi", "110"), "n1");
        n1.add_pod(prio(pod("1", "1Gi"), "guarded", 1, "guarded"));
        let mut n2 = named(node("1", "8Gi", "110"), "n2");
        n2.add_pod(prio(pod("1", "1Gi"), "free", 1, "free"));
        let mut snap = Snapshot::from_nodes(vec![n1, n2]);
        snap.listers = Arc::new(crate::cache::Listers::default());
        let pdb = PodDisruptionBudget {
            metadata: ObjectMeta {
                name: Some("pdb".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(PodDisruptionBudgetSpec {
                selector: Some(LabelSelector {
                    match_labels: Some([("app".to_string(), "guarded".to_string())].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PodDisruptionBudgetStatus {
                disruptions_allowed: Some(0),
                ..Default::default()
            }),
        };
        let (v, nv) = filter_pods_with_pdb_violation(
            snap.nodes.iter().flat_map(|n| n.pods.clone()).collect(),
            &[Arc::new(pdb)],
        );
        assert_eq!((v.len(), nv.len(), v[0].name()), (1, 1, "guarded"));
        let c = |node: &str, n| Candidate {
            node: node.into(),
            victims: vec![prio(pod("1", "1Gi"), "x", 1, "x")],
            num_pdb_violations: n,
        };
        let cands = [c("n1", 1), c("n2", 0)];
        assert_eq!(
            pick_one_node_for_preemption(&cands).map(|c| c.node.as_str()),
            Some("n2")
        );
    }

    #[test]
    fn nothing_to_evict_and_policy_never_are_explained() {
        let mut n1 = named(node("2", "8Gi", "110"), "n1");
        n1.add_pod(prio(pod("1", "1Gi"), "same", 100, "a"));
        let mut n2 = named(node("3", "8Gi", "110"), "n2");
        n2.add_pod(prio(pod("1", "1Gi"), "low", 1, "a"));
        n2.add_pod(prio(pod("2", "1Gi"), "higher", 200, "a"));
        let snap = Snapshot::from_nodes(vec![n1, n2]);
        let p = prio(pod("2", "1Gi"), "p", 100, "p");
        let (r, msg) = preempt(&snap, &p);
        assert!(r.is_none());
        // n1: equal priority, no victims; n2: without its low pod still too small.
        assert_eq!(
            msg,
            "0/2 nodes are available: 2 Insufficient cpu. no new claims to deallocate, preemption: 0/2 nodes are available: 1 Insufficient cpu, 1 No preemption victims found for incoming pod."
        );
        let mut never = (*p.pod).clone();
        never.spec.get_or_insert_default().preemption_policy = Some("Never".into());
        let (_, msg) = preempt(&snap, &PodInfo::new(Arc::new(never)));
        assert!(
            msg.ends_with("preemption: not eligible due to preemptionPolicy=Never."),
            "{msg}"
        );
        assert_eq!(framework().post_filter.len(), 1);
        assert!(DefaultPreemption::new(&serde_json::json!({"minCandidateNodesPercentage": 0, "minCandidateNodesAbsolute": 0})).is_err());
    }
}
