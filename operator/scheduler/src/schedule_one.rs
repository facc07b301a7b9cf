//! One scheduling attempt for one pod (upstream `schedule_one.go`'s `schedulePod`):
//! PreFilter, Filter over (a rotating share of) the nodes in parallel, PreScore, Score,
//! NormalizeScore, weights, and the pick of the best node.
//!
//! This part is pure: it reads a [`Snapshot`] and returns a decision, so it is unit-tested
//! without an apiserver. The surrounding cycle (assume, bind, report) is in
//! [`crate::scheduler`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

use rand::Rng as _;

use crate::cache::Snapshot;
use crate::framework::interface::{Code, CycleState, NodeScore, Plugin, Reason, Status};
use crate::framework::runtime::Framework;
use crate::framework::types::{NodeInfo, PodInfo};
use crate::framework::{Diagnosis, FitError, parallelize};

/// upstream `minFeasibleNodesToFind`.
pub const MIN_FEASIBLE_NODES_TO_FIND: usize = 100;
/// upstream `minFeasibleNodesPercentageToFind`.
pub const MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND: usize = 5;
/// upstream `ErrNoNodesAvailable`.
pub const NO_NODES_AVAILABLE: &str = "no nodes available to schedule pods";

/// Why an attempt found no node.
#[derive(Debug)]
pub enum ScheduleError {
    /// No node fits; the pod waits for a cluster change.
    Fit(Box<FitError>),
    /// The cluster has no nodes at all.
    NoNodes,
    /// A plugin failed; the pod is retried with backoff.
    Internal(Status),
}

/// A successful attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduleResult {
    /// The chosen node.
    pub node: String,
    /// How many nodes were filtered.
    pub evaluated_nodes: usize,
    /// How many of them fit.
    pub feasible_nodes: usize,
}

/// upstream `numFeasibleNodesToFind`: all nodes below 100; otherwise a share that
/// shrinks with cluster size (adaptive: 50% - nodes/125, at least 5%), at least 100.
pub fn num_feasible_nodes_to_find(percentage: i32, num_all_nodes: usize) -> usize {
    if num_all_nodes < MIN_FEASIBLE_NODES_TO_FIND {
        return num_all_nodes;
    }
    let mut pct = usize::try_from(percentage).unwrap_or(0);
    if pct == 0 {
        pct = 50usize.saturating_sub(num_all_nodes / 125);
        if pct < MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND {
            pct = MIN_FEASIBLE_NODES_PERCENTAGE_TO_FIND;
        }
    }
    if pct >= 100 {
        return num_all_nodes;
    }
    (num_all_nodes * pct / 100).max(MIN_FEASIBLE_NODES_TO_FIND)
}

/// Runs the PreFilter extensions' AddPod of the plugins not skipped for this pod.
pub fn run_pre_filter_extension_add_pod(
    fwk: &Framework,
    state: &mut CycleState,
    pod: &PodInfo,
    added: &Arc<PodInfo>,
    node: &NodeInfo,
) -> Status {
    for pl in &fwk.pre_filter {
        if state.skip_filter.contains(pl.name()) {
            continue;
        }
        let s = pl.add_pod(state, pod, added, node);
        if !s.is_success() {
            return s.with_plugin(pl.name());
        }
    }
    Status::success()
}

/// Runs the PreFilter extensions' RemovePod of the plugins not skipped for this pod.
pub fn run_pre_filter_extension_remove_pod(
    fwk: &Framework,
    state: &mut CycleState,
    pod: &PodInfo,
    removed: &Arc<PodInfo>,
    node: &NodeInfo,
) -> Status {
    for pl in &fwk.pre_filter {
        if state.skip_filter.contains(pl.name()) {
            continue;
        }
        let s = pl.remove_pod(state, pod, removed, node);
        if !s.is_success() {
            return s.with_plugin(pl.name());
        }
    }
    Status::success()
}

/// upstream `RunPostFilterPlugins`: the first plugin that succeeds (or is unresolvable)
/// decides; otherwise the rejections' reasons are joined. DynamicResources, configured
/// but not implemented, says what upstream's says for pods without resource claims.
pub fn run_post_filter_plugins(
    fwk: &Framework,
    state: &CycleState,
    pod: &PodInfo,
    diagnosis: &Diagnosis,
    snapshot: &Snapshot,
) -> (
    Option<crate::framework::interface::PostFilterResult>,
    Status,
) {
    // DynamicResources runs first among the PostFilter plugins (it precedes
    // DefaultPreemption in the default profile).
    if let (Some(rejected), Some(dra)) = (
        diagnosis.pre_filter_rejected_at,
        fwk.dynamic_resources_pre_filter_at,
    ) && rejected < dra
    {
        return (
            None,
            Status::error("not found").with_plugin("DynamicResources"),
        );
    }
    let mut reasons: Vec<Reason> = Vec::new();
    if fwk.unimplemented.iter().any(|n| n == "DynamicResources") {
        reasons.push("no new claims to deallocate".into());
    }
    let mut result = None;
    for pl in &fwk.post_filter {
        let (r, s) = pl.post_filter(fwk, state, pod, diagnosis, snapshot);
        match s.code {
            Code::Success | Code::UnschedulableAndUnresolvable => {
                return (r, s.with_plugin(pl.name()));
            }
            Code::Unschedulable | Code::Pending => {
                if r.is_some() {
                    result = r;
                }
                reasons.extend(s.reasons.into_iter().filter(|r| !r.is_empty()));
            }
            _ => return (None, s.with_plugin(pl.name())),
        }
    }
    (result, Status::with_reasons(Code::Unschedulable, reasons))
}

/// upstream `RunFilterPluginsWithNominatedPods`: with pods nominated to the node of at
/// least this pod's priority counted as placed there first (so a preemptor's room is
/// not taken), then without them (so what they would free is not relied on).
pub fn run_filters_with_nominated_pods(
    fwk: &Framework,
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
    snapshot: &Snapshot,
) -> Status {
    // Most cycles have no nominated pods at all: no lookup by name then.
    if snapshot.nominated.is_empty() {
        return run_filters(fwk, state, pod, node);
    }
    let nominated: Vec<&Arc<PodInfo>> = snapshot
        .nominated
        .get(&node.name)
        .into_iter()
        .flatten()
        .filter(|p| p.uid != pod.uid && p.priority >= pod.priority)
        .collect();
    if nominated.is_empty() {
        return run_filters(fwk, state, pod, node);
    }
    let mut with = node.clone();
    let mut st = state.clone();
    for p in nominated {
        with.add_pod(p.clone());
        let s = run_pre_filter_extension_add_pod(fwk, &mut st, pod, p, &with);
        if !s.is_success() {
            return s;
        }
    }
    let s = run_filters(fwk, &st, pod, &with);
    if !s.is_success() {
        return s;
    }
    run_filters(fwk, state, pod, node)
}

/// Runs the filter plugins on one node, stopping at the first rejection.
pub fn run_filters(fwk: &Framework, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
    run_filter_plugins(active_filters(fwk, state), state, pod, node)
}

/// Runs `plugins`' filters on one node in order, stopping at the first rejection.
fn run_filter_plugins<'a>(
    plugins: impl IntoIterator<Item = &'a dyn Plugin>,
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Status {
    for pl in plugins {
        let s = pl.filter(state, pod, node);
        if !s.is_success() {
            return s.with_plugin(pl.name());
        }
    }
    Status::success()
}

/// The filter plugins not skipped for this cycle's pod (by its PreFilter), in order.
fn active_filters<'f, 's>(
    fwk: &'f Framework,
    state: &'s CycleState,
) -> impl Iterator<Item = &'f dyn Plugin> + use<'f, 's> {
    fwk.filter
        .iter()
        .filter(|pl| !state.skip_filter.contains(pl.name()))
        .map(|pl| &**pl)
}

/// Finds the node for `pod`. `next_start` rotates where filtering starts, so that with
/// a partial share of nodes every node gets its turn (upstream `nextStartNodeIndex`).
pub fn schedule_pod(
    fwk: &Framework,
    snapshot: &Snapshot,
    pod: &PodInfo,
    next_start: &AtomicUsize,
) -> Result<ScheduleResult, ScheduleError> {
    let nodes = &snapshot.nodes;
    if nodes.is_empty() {
        return Err(ScheduleError::NoNodes);
    }
    let mut state = CycleState::default();
    let mut diagnosis = Diagnosis::default();

    // PreFilter.
    for (i, pl) in fwk.pre_filter.iter().enumerate() {
        let s = pl.pre_filter(&mut state, pod, snapshot);
        match s.code {
            Code::Success => {}
            Code::Skip => {
                state.skip_filter.insert(pl.name());
            }
            Code::Error => return Err(ScheduleError::Internal(s.with_plugin(pl.name()))),
            _ => {
                diagnosis.pre_filter_msg = s.message();
                diagnosis.pre_filter_rejected_at = Some(i);
                diagnosis.unschedulable_plugins.insert(pl.name());
                diagnosis.absent_nodes_status = Some(s.with_plugin(pl.name()));
                return Err(post_filter(fwk, &state, pod, diagnosis, snapshot));
            }
        }
    }

    // Filter, starting where the last cycle stopped.
    let n = nodes.len();
    let to_find = num_feasible_nodes_to_find(fwk.percentage_of_nodes_to_score, n);
    let start = next_start.load(Ordering::Relaxed) % n;
    let found = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Picked once per cycle rather than for every node.
    let active: Vec<&dyn Plugin> = active_filters(fwk, &state).collect();
    let results = parallelize::for_each(n, fwk.parallelism, &stop, |i| {
        let node = &nodes[(start + i) % n];
        // Without nominated pods that is all run_filters_with_nominated_pods would do.
        let s = if snapshot.nominated.is_empty() {
            run_filter_plugins(active.iter().copied(), &state, pod, node)
        } else {
            run_filters_with_nominated_pods(fwk, &state, pod, node, snapshot)
        };
        if s.is_success() && found.fetch_add(1, Ordering::Relaxed) + 1 >= to_find {
            stop.store(true, Ordering::Relaxed);
        }
        Some(s)
    });
    let mut feasible: Vec<Arc<NodeInfo>> = Vec::new();
    let mut processed = 0;
    for (i, s) in &results {
        if s.is_success() {
            // Threads may overshoot the count a little; keep the first `to_find`, as
            // upstream does, and count the rest as not processed.
            if feasible.len() < to_find {
                feasible.push(nodes[(start + i) % n].clone());
                processed += 1;
            }
            continue;
        }
        processed += 1;
        if s.code == Code::Error {
            return Err(ScheduleError::Internal(s.clone()));
        }
    }
    next_start.store((start + processed) % n, Ordering::Relaxed);

    if feasible.is_empty() {
        // Only a pod that fits nowhere needs the per-node diagnosis: built on every cycle,
        // as upstream does, it was a map of thousands of entries whenever one zone or a
        // few nodes were left feasible.
        for (i, s) in results {
            diagnosis.unschedulable_plugins.insert(s.plugin);
            diagnosis
                .node_to_status
                .insert(nodes[(start + i) % n].name.clone(), s);
        }
        return Err(post_filter(fwk, &state, pod, diagnosis, snapshot));
    }
    if feasible.len() == 1 {
        return Ok(ScheduleResult {
            node: feasible[0].name.clone(),
            evaluated_nodes: processed,
            feasible_nodes: 1,
        });
    }

    let totals = weighted_totals(fwk, &mut state, pod, &feasible, snapshot)?;
    let best = select_index(&totals).unwrap_or_default();
    Ok(ScheduleResult {
        node: feasible[best].name.clone(),
        evaluated_nodes: processed,
        feasible_nodes: feasible.len(),
    })
}

/// Runs PostFilter on a failed attempt and wraps the outcome into the fit error (upstream
/// `schedulingCycle`: the PostFilter status message becomes `PostFilterMsg`).
fn post_filter(
    fwk: &Framework,
    state: &CycleState,
    pod: &PodInfo,
    diagnosis: Diagnosis,
    snapshot: &Snapshot,
) -> ScheduleError {
    // As upstream, a PostFilter error is logged and the pod stays unschedulable with that
    // error as the PostFilter part of its message.
    let (result, status) = run_post_filter_plugins(fwk, state, pod, &diagnosis, snapshot);
    if status.code == Code::Error {
        tracing::warn!(pod = %pod.key, status = %status.message(), "PostFilter failed");
    }
    let mut e = FitError {
        num_all_nodes: snapshot.nodes.len(),
        diagnosis,
        post_filter_result: None,
    };
    e.diagnosis.post_filter_msg = status.message();
    if status.is_success() {
        e.post_filter_result = result;
    }
    ScheduleError::Fit(Box::new(e))
}

/// Every node's verdict for `pod` without stopping early: the feasible nodes with their
/// weighted totals, or why none fits. For differential tests and diagnosis; the
/// scheduler itself uses [`schedule_pod`].
pub fn evaluate(
    fwk: &Framework,
    snapshot: &Snapshot,
    pod: &PodInfo,
) -> Result<Vec<NodeScore>, ScheduleError> {
    if snapshot.nodes.is_empty() {
        return Err(ScheduleError::NoNodes);
    }
    let mut state = CycleState::default();
    let mut diagnosis = Diagnosis::default();
    for pl in &fwk.pre_filter {
        let s = pl.pre_filter(&mut state, pod, snapshot);
        match s.code {
            Code::Success => {}
            Code::Skip => {
                state.skip_filter.insert(pl.name());
            }
            Code::Error => return Err(ScheduleError::Internal(s.with_plugin(pl.name()))),
            _ => {
                diagnosis.pre_filter_msg = s.message();
                diagnosis.absent_nodes_status = Some(s.with_plugin(pl.name()));
                return Err(post_filter(fwk, &state, pod, diagnosis, snapshot));
            }
        }
    }
    let mut feasible = Vec::new();
    for node in snapshot.nodes.iter() {
        let s = run_filters_with_nominated_pods(fwk, &state, pod, node, snapshot);
        if s.is_success() {
            feasible.push(node.clone());
        } else {
            diagnosis.unschedulable_plugins.insert(s.plugin);
            diagnosis.node_to_status.insert(node.name.clone(), s);
        }
    }
    if feasible.is_empty() {
        return Err(post_filter(fwk, &state, pod, diagnosis, snapshot));
    }
    prioritize_nodes(fwk, &mut state, pod, &feasible, snapshot)
}

/// PreScore, Score, NormalizeScore and weights: the weighted total per feasible node
/// (upstream `prioritizeNodes`).
pub fn prioritize_nodes(
    fwk: &Framework,
    state: &mut CycleState,
    pod: &PodInfo,
    feasible: &[Arc<NodeInfo>],
    snapshot: &Snapshot,
) -> Result<Vec<NodeScore>, ScheduleError> {
    let totals = weighted_totals(fwk, state, pod, feasible, snapshot)?;
    Ok(feasible
        .iter()
        .zip(totals)
        .map(|(n, score)| NodeScore {
            name: n.name.clone(),
            score,
        })
        .collect())
}

/// [`prioritize_nodes`]' totals in `feasible`'s order. Node names are copied once per
/// cycle, into the one row NormalizeScore plugins see, not once per plugin and node, and
/// only when one of them reads names.
fn weighted_totals(
    fwk: &Framework,
    state: &mut CycleState,
    pod: &PodInfo,
    feasible: &[Arc<NodeInfo>],
    snapshot: &Snapshot,
) -> Result<Vec<i64>, ScheduleError> {
    for pl in &fwk.pre_score {
        let s = pl.pre_score(state, pod, feasible, snapshot);
        match s.code {
            Code::Success => {}
            Code::Skip => {
                state.skip_score.insert(pl.name());
            }
            _ => return Err(ScheduleError::Internal(s.with_plugin(pl.name()))),
        }
    }
    let plugins: Vec<_> = fwk
        .score
        .iter()
        .filter(|(p, _)| !state.skip_score.contains(p.name()))
        .collect();
    // Raw scores in one buffer, node-major (node i, plugin j at i * width + j): one
    // allocation per cycle rather than a row per node. Each slot is written by the one
    // thread scoring its node; the atomics only make sharing the buffer safe.
    let state_ref = &*state;
    let width = plugins.len();
    let raw: Vec<AtomicI64> = (0..feasible.len() * width)
        .map(|_| AtomicI64::new(0))
        .collect();
    let stop = AtomicBool::new(false);
    // Only failures come back: (node, (plugin, status)).
    let failed = parallelize::for_each(feasible.len(), fwk.parallelism, &stop, |i| {
        for (j, (p, _)) in plugins.iter().enumerate() {
            match p.score(state_ref, pod, &feasible[i], snapshot) {
                Ok(score) => raw[i * width + j].store(score, Ordering::Relaxed),
                Err(s) => {
                    stop.store(true, Ordering::Relaxed);
                    return Some((j, s));
                }
            }
        }
        None
    });
    if let Some((_, (j, s))) = failed.into_iter().next() {
        return Err(ScheduleError::Internal(s.with_plugin(plugins[j].0.name())));
    }
    // Names only when a NormalizeScore plugin reads them; empty strings do not allocate.
    let names = plugins.iter().any(|(p, _)| p.normalize_reads_node_names());
    let mut scratch: Vec<NodeScore> = feasible
        .iter()
        .map(|n| NodeScore {
            name: if names { n.name.clone() } else { String::new() },
            score: 0,
        })
        .collect();
    let mut totals = vec![0i64; feasible.len()];
    for (j, (pl, weight)) in plugins.iter().enumerate() {
        for (i, ns) in scratch.iter_mut().enumerate() {
            ns.score = raw[i * width + j].load(Ordering::Relaxed);
        }
        let s = pl.normalize_score(state, pod, &mut scratch);
        if !s.is_success() {
            return Err(ScheduleError::Internal(s.with_plugin(pl.name())));
        }
        for (total, ns) in totals.iter_mut().zip(&scratch) {
            *total += ns.score * weight;
        }
    }
    Ok(totals)
}

/// The node with the highest total; ties broken uniformly at random (upstream
/// `selectHost`'s reservoir sampling).
pub fn select_host(scores: &[NodeScore]) -> String {
    let totals: Vec<i64> = scores.iter().map(|s| s.score).collect();
    select_index(&totals)
        .map(|i| scores[i].name.clone())
        .unwrap_or_default()
}

/// [`select_host`] over totals by index.
fn select_index(totals: &[i64]) -> Option<usize> {
    let mut rng = rand::rng();
    let mut best: Option<usize> = None;
    let mut ties = 0u32;
    for (i, &score) in totals.iter().enumerate() {
        match best {
            Some(b) if score < totals[b] => {}
            Some(b) if score == totals[b] => {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some(i);
                }
            }
            _ => {
                best = Some(i);
                ties = 1;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KubeSchedulerConfiguration, finish};
    use crate::plugins::node_resources_fit::tests::{node, pod};
    use crate::transform::CachedNode;
    use k8s_openapi::api::core::v1::Taint;

    fn framework(percentage: i32) -> Framework {
        let cfg = finish(KubeSchedulerConfiguration::defaulted()).expect("config");
        let mut f = Framework::new(&cfg.profiles[0], 2).expect("framework");
        f.percentage_of_nodes_to_score = percentage;
        f
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

    #[test]
    fn feasible_share() {
        assert_eq!(num_feasible_nodes_to_find(0, 50), 50);
        assert_eq!(num_feasible_nodes_to_find(0, 1000), 420);
        assert_eq!(num_feasible_nodes_to_find(0, 5000), 500);
        assert_eq!(num_feasible_nodes_to_find(0, 6000), 300);
        assert_eq!(num_feasible_nodes_to_find(0, 10000), 500);
        assert_eq!(num_feasible_nodes_to_find(10, 500), 100);
        assert_eq!(num_feasible_nodes_to_find(100, 500), 500);
    }

    #[test]
    fn picks_the_least_allocated_fitting_node_and_explains_failures() {
        let f = framework(0);
        let mut busy = named(node("4", "8Gi", "110"), "busy");
        busy.add_pod(pod("3", "1Gi"));
        let mut tainted = named(node("8", "8Gi", "110"), "tainted");
        if let Some(n) = tainted.node.clone() {
            let mut copy: CachedNode = (*n).clone();
            copy.spec.get_or_insert_default().taints = Some(vec![Taint {
                key: "dedicated".into(),
                value: Some("db".into()),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]);
            // Through set_node, which keeps the entry's copy of the taints' presence.
            tainted.set_node(Arc::new(copy));
        }
        let snap = Snapshot::from_nodes(vec![
            busy,
            named(node("4", "8Gi", "110"), "free"),
            named(node("2", "8Gi", "110"), "small"),
            tainted,
        ]);
        let start = AtomicUsize::new(0);
        let r = schedule_pod(&f, &snap, &pod("1500m", "1Gi"), &start).expect("fits");
        assert_eq!(r.node, "free");
        assert_eq!(r.feasible_nodes, 2);
        assert_eq!(
            start.load(Ordering::Relaxed),
            0,
            "all 4 nodes processed: back to 0"
        );

        let Err(ScheduleError::Fit(e)) = schedule_pod(&f, &snap, &pod("5", "1Gi"), &start) else {
            panic!("must not fit");
        };
        assert_eq!(
            e.message(),
            "0/4 nodes are available: 1 node(s) had untolerated taint(s), 3 Insufficient cpu. no new claims to deallocate, preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling."
        );
        assert!(
            e.diagnosis
                .unschedulable_plugins
                .contains("NodeResourcesFit")
        );
        assert!(matches!(
            schedule_pod(&f, &Snapshot::default(), &pod("1", ""), &start),
            Err(ScheduleError::NoNodes)
        ));
    }

    #[test]
    fn large_clusters_filter_a_rotating_share_in_parallel() {
        let f = framework(0);
        let nodes: Vec<NodeInfo> = (0..1000)
            .map(|i| named(node("4", "8Gi", "110"), &format!("n{i}")))
            .collect();
        let snap = Snapshot::from_nodes(nodes);
        let start = AtomicUsize::new(0);
        let r = schedule_pod(&f, &snap, &pod("1", "1Gi"), &start).expect("fits");
        assert_eq!(r.feasible_nodes, 420);
        assert_eq!(r.evaluated_nodes, 420);
        assert_eq!(start.load(Ordering::Relaxed), 420);
        schedule_pod(&f, &snap, &pod("1", "1Gi"), &start).expect("fits");
        assert_eq!(start.load(Ordering::Relaxed), 840);
    }

    fn with_priority(p: &PodInfo, uid: &str, priority: i32) -> Arc<PodInfo> {
        let mut pod = (*p.pod).clone();
        pod.metadata.uid = Some(uid.into());
        pod.spec.get_or_insert_default().priority = Some(priority);
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    #[test]
    fn nominated_pods_keep_their_room_from_lower_priority_pods() {
        let f = framework(0);
        let mut snap = Snapshot::from_nodes(vec![named(node("2", "8Gi", "110"), "n")]);
        let nominee = with_priority(&pod("2", "1Gi"), "nominee", 100);
        snap.nominated = Arc::new([("n".to_string(), vec![nominee.clone()])].into());
        let start = AtomicUsize::new(0);
        let low = with_priority(&pod("1", "1Gi"), "low", 0);
        assert!(matches!(
            schedule_pod(&f, &snap, &low, &start),
            Err(ScheduleError::Fit(_))
        ));
        let high = with_priority(&pod("1", "1Gi"), "high", 1000);
        assert!(schedule_pod(&f, &snap, &high, &start).is_ok());
        // The nominee itself is not in its own way.
        assert!(schedule_pod(&f, &snap, &nominee, &start).is_ok());
    }

    #[test]
    fn ties_are_broken_among_the_best_only() {
        let scores = vec![
            NodeScore {
                name: "a".into(),
                score: 10,
            },
            NodeScore {
                name: "b".into(),
                score: 30,
            },
            NodeScore {
                name: "c".into(),
                score: 30,
            },
        ];
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(select_host(&scores));
        }
        assert_eq!(
            seen,
            ["b".to_string(), "c".to_string()].into_iter().collect()
        );
    }
}
