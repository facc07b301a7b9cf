//! Helpers shared by the pod-managing controllers, after upstream's
//! `pkg/controller/controller_utils.go` and `pkg/api/v1/pod` utilities: pod activity and
//! readiness, the order in which surplus pods are deleted, and pods made from templates.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::transform::CachedPod;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

/// Reason of the Warning event when a pod create fails.
pub const FAILED_CREATE_POD_REASON: &str = "FailedCreate";
/// Reason of the Normal event when a pod was created.
pub const SUCCESSFUL_CREATE_POD_REASON: &str = "SuccessfulCreate";
/// Reason of the Warning event when a pod delete fails.
pub const FAILED_DELETE_POD_REASON: &str = "FailedDelete";
/// Reason of the Normal event when a pod was deleted.
pub const SUCCESSFUL_DELETE_POD_REASON: &str = "SuccessfulDelete";
/// Upstream's `SlowStartInitialBatchSize`.
pub const SLOW_START_INITIAL_BATCH_SIZE: usize = 1;
/// The annotation that ranks pods for scale-down (`PodDeletionCost`, GA).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The owner reference with `controller: true`, if any (`metav1.GetControllerOf`).
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|r| r.controller == Some(true))
}

/// `namespace/name`, upstream's `PodKey` / `MetaNamespaceKeyFunc`.
pub fn meta_key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn phase(pod: &CachedPod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Not Succeeded, not Failed and not being deleted (`IsPodActive`).
pub fn is_pod_active(pod: &CachedPod) -> bool {
    let p = phase(pod);
    p != "Succeeded" && p != "Failed" && pod.metadata.deletion_timestamp.is_none()
}

/// Being deleted but not yet terminal (`IsPodTerminating`).
pub fn is_pod_terminating(pod: &CachedPod) -> bool {
    let p = phase(pod);
    p != "Succeeded" && p != "Failed" && pod.metadata.deletion_timestamp.is_some()
}

/// The pod's Ready condition, if reported.
pub fn ready_condition(pod: &CachedPod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// The Ready condition is True (`podutil.IsPodReady`).
pub fn is_pod_ready(pod: &CachedPod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

/// Ready for at least `min_ready_seconds` at `now` (`podutil.IsPodAvailable`).
pub fn is_pod_available(pod: &CachedPod, min_ready_seconds: i32, now: Timestamp) -> bool {
    let Some(c) = ready_condition(pod).filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    match &c.last_transition_time {
        Some(Time(t)) => {
            let ready_for = now.duration_since(*t);
            ready_for > k8s_openapi::jiff::SignedDuration::from_secs(i64::from(min_ready_seconds))
        }
        None => false,
    }
}

/// How long until the first ready-but-not-yet-available pod becomes available
/// (`FindMinNextPodAvailabilityCheck`); `None` when no pod is waiting for that.
pub fn next_pod_availability_check<'a>(
    pods: impl IntoIterator<Item = &'a CachedPod>,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Option<Duration> {
    if min_ready_seconds <= 0 {
        return None;
    }
    pods.into_iter()
        .filter_map(|p| {
            let c = ready_condition(p).filter(|c| c.status == "True")?;
            let t = c.last_transition_time.as_ref()?.0;
            let due = t
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                    min_ready_seconds,
                )))
                .ok()?;
            // Pods already available were counted as such; only future deadlines matter.
            Duration::try_from(now.duration_until(due))
                .ok()
                .filter(|d| !d.is_zero())
        })
        .min()
}

/// `spec.nodeName`, empty while unassigned.
pub fn node_name(pod: &CachedPod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn phase_ordinal(pod: &CachedPod) -> u8 {
    match phase(pod) {
        "Pending" => 0,
        "Unknown" => 1,
        "Running" => 2,
        // Upstream's map lookup yields 0 for any other phase.
        _ => 0,
    }
}

fn ready_time(pod: &CachedPod) -> Option<Timestamp> {
    if !is_pod_ready(pod) {
        return None;
    }
    ready_condition(pod)
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
}

fn creation(pod: &CachedPod) -> Option<Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

fn deletion_cost(pod: &CachedPod) -> i32 {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST))
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(0)
}

fn max_container_restarts(pod: &CachedPod) -> (i32, i32) {
    let Some(status) = pod.status.as_ref() else {
        return (0, 0);
    };
    let regular = status
        .container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    let init = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let is_sidecar = |name: &str| {
        init.iter()
            .any(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
    };
    let sidecar = status
        .init_container_statuses
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|c| is_sidecar(&c.name))
        .map(|c| c.restart_count)
        .max()
        .unwrap_or(0);
    (regular, sidecar)
}

/// `afterOrZero`: t1 is after t2, a missing time counting as later than any time.
fn after_or_zero(t1: Option<Timestamp>, t2: Option<Timestamp>) -> bool {
    match (t1, t2) {
        (None, _) | (_, None) => t1.is_none(),
        (Some(a), Some(b)) => a > b,
    }
}

/// Base-2 logarithm of the nanoseconds since `t` (one side of `logarithmicRankDiff`), so
/// that pods of similar age count as equal and are spread by UID instead.
fn log_age(t: Timestamp, now: Timestamp) -> i64 {
    let d = now.duration_since(t).as_nanos();
    if d > 0 {
        // Truncation mirrors Go's int64(math.Log2(float64(d))).
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let r = (d as f64).log2() as i64;
        r
    } else {
        -1
    }
}

/// A pod and its rank: how many active related pods share its node.
#[derive(Clone, Debug)]
pub struct RankedPod<'a> {
    /// The pod.
    pub pod: &'a CachedPod,
    /// Colocated related pods (upstream's `getPodsRankedByRelatedPodsOnSameNode`).
    pub rank: usize,
}

/// A time compared by logarithmic bucket: the time, and its [`log_age`] when there is a
/// reference time.
type AgedTime = (Option<Timestamp>, Option<i64>);

fn aged(t: Option<Timestamp>, now: Option<Timestamp>) -> AgedTime {
    (t, t.zip(now).map(|(t, now)| log_age(t, now)))
}

/// Everything [`DeletionKey::less`] compares of one ranked pod, computed once per pod: a sort
/// of a Deployment's thousands of pods compares O(n log n) times, and reading conditions,
/// annotations and clocks on every comparison was most of the cost of a scale-down.
#[derive(Clone, Debug)]
pub struct DeletionKey<'a> {
    assigned: bool,
    phase: u8,
    ready: bool,
    cost: i32,
    rank: usize,
    ready_time: AgedTime,
    restarts: (i32, i32),
    created: AgedTime,
    uid: &'a str,
}

impl<'a> DeletionKey<'a> {
    /// The key of `p`, with times bucketed relative to `now` when given.
    pub fn new(p: &RankedPod<'a>, now: Option<Timestamp>) -> Self {
        let pod = p.pod;
        Self {
            assigned: !node_name(pod).is_empty(),
            phase: phase_ordinal(pod),
            ready: is_pod_ready(pod),
            cost: deletion_cost(pod),
            rank: p.rank,
            ready_time: aged(ready_time(pod), now),
            restarts: max_container_restarts(pod),
            created: aged(creation(pod), now),
            uid: pod.metadata.uid.as_deref().unwrap_or_default(),
        }
    }

    /// `ActivePodsWithRanks.Less`: whether this pod should be deleted before `other`.
    pub fn less(&self, other: &Self) -> bool {
        let (a, b) = (self, other);
        // 1. Unassigned < assigned.
        if a.assigned != b.assigned {
            return !a.assigned;
        }
        // 2. Pending < Unknown < Running.
        if a.phase != b.phase {
            return a.phase < b.phase;
        }
        // 3. Not ready < ready.
        if a.ready != b.ready {
            return !a.ready;
        }
        // 4. Lower pod-deletion-cost first.
        if a.cost != b.cost {
            return a.cost < b.cost;
        }
        // 5. Doubled up on a node < not doubled up.
        if a.rank != b.rank {
            return a.rank > b.rank;
        }
        // Steps 6 and 8 compare times by logarithmic bucket. Upstream breaks a bucket tie
        // by uid at once but lets exactly equal times fall through, which is not a
        // consistent order (Go's sort tolerates that; Rust's sort panics on it). Here a
        // bucket tie always falls through and the uid is the last criterion: the same
        // decisions wherever upstream's are consistent, and a total order.
        let by_time = |(ti, li): AgedTime, (tj, lj): AgedTime| -> Option<bool> {
            match (li, lj) {
                (Some(li), Some(lj)) => match li - lj {
                    0 => None,
                    d => Some(d < 0),
                },
                _ if ti != tj => Some(after_or_zero(ti, tj)),
                _ => None,
            }
        };
        // 6. Ready for a shorter time < longer (logarithmic buckets).
        if a.ready
            && b.ready
            && let Some(less) = by_time(a.ready_time, b.ready_time)
        {
            return less;
        }
        // 7. More container restarts < fewer.
        if a.restarts.0 != b.restarts.0 {
            return a.restarts.0 > b.restarts.0;
        }
        if a.restarts.1 != b.restarts.1 {
            return a.restarts.1 > b.restarts.1;
        }
        // 8. Newer < older (logarithmic buckets); missing creation time first.
        if let Some(less) = by_time(a.created, b.created) {
            return less;
        }
        a.uid < b.uid
    }

    /// [`Self::less`] as an ordering.
    pub fn order(&self, other: &Self) -> Ordering {
        if self.less(other) {
            Ordering::Less
        } else if other.less(self) {
            Ordering::Greater
        } else {
            Ordering::Equal
        }
    }
}

/// `ActivePodsWithRanks.Less`: whether `a` should be deleted before `b`. The replica
/// controllers only take the head of the ranking (`replicaset::pods_to_delete`); this and
/// [`sort_for_deletion`] are the full ranking the tests hold that head to.
#[cfg(test)]
pub fn deletion_less(a: &RankedPod<'_>, b: &RankedPod<'_>, now: Option<Timestamp>) -> bool {
    DeletionKey::new(a, now).less(&DeletionKey::new(b, now))
}

/// Sorts `pods` so that those to delete first come first.
#[cfg(test)]
pub fn sort_for_deletion(pods: &mut [RankedPod<'_>], now: Option<Timestamp>) {
    let mut keyed: Vec<(DeletionKey<'_>, RankedPod<'_>)> = pods
        .iter()
        .map(|p| (DeletionKey::new(p, now), p.clone()))
        .collect();
    keyed.sort_by(|a, b| a.0.order(&b.0));
    for (slot, (_, p)) in pods.iter_mut().zip(keyed) {
        *slot = p;
    }
}

/// The prefix for generated pod names: `<controller>-` (`getPodsPrefix`), without the dash
/// when that would make an invalid name.
pub fn pods_prefix(controller_name: &str) -> String {
    let prefix = format!("{controller_name}-");
    // Names are DNS subdomains: at most 253 characters. The apiserver appends 5 random
    // characters to generateName, truncating the prefix to 58, so any prefix up to 253
    // passes upstream's check; keep the dash whenever the name itself is valid.
    if prefix.len() > 253 {
        controller_name.to_string()
    } else {
        prefix
    }
}

/// A pod built from `template` for `owner` (`GetPodFromTemplate`): the template's labels,
/// annotations, finalizers and spec, a generated name and the controller reference.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    owner_name: &str,
    controller_ref: OwnerReference,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            generate_name: Some(pods_prefix(owner_name)),
            owner_references: Some(vec![controller_ref]),
            ..ObjectMeta::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Whether `labels` is empty or missing.
pub fn labels_empty(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels.is_none_or(BTreeMap::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn pod(name: &str, node: &str, phase: &str, ready_at: Option<i64>, created: i64) -> CachedPod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(name.into()),
                creation_timestamp: Some(Time(ts(created))),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: (!node.is_empty()).then(|| node.to_string()),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready_at.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(ts(t))),
                        ..PodCondition::default()
                    }]
                }),
                ..PodStatus::default()
            }),
        }
        .into()
    }

    fn order(pods: &[CachedPod], now: Option<Timestamp>) -> Vec<String> {
        let mut ranked: Vec<RankedPod<'_>> =
            pods.iter().map(|pod| RankedPod { pod, rank: 0 }).collect();
        sort_for_deletion(&mut ranked, now);
        ranked
            .iter()
            .map(|r| r.pod.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn deletion_ranking_is_a_strict_weak_order() {
        // Many pods with colliding and near-colliding times: the case that made the sort
        // panic when equal times and equal buckets were treated differently.
        let mut pods = Vec::new();
        for i in 0..60i64 {
            let phase = ["Pending", "Running", "Unknown"][(i % 3) as usize];
            let ready = (i % 4 != 0).then_some(1000 + (i * 37) % 7);
            let node = if i % 5 == 0 { "" } else { "n1" };
            pods.push(pod(
                &format!("p{i:02}"),
                node,
                phase,
                ready,
                100 + (i * 13) % 5,
            ));
        }
        let now = Some(ts(5000));
        let ranked: Vec<RankedPod<'_>> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| RankedPod { pod, rank: i % 2 })
            .collect();
        for a in &ranked {
            assert!(!deletion_less(a, a, now), "irreflexive");
            for b in &ranked {
                assert!(
                    !(deletion_less(a, b, now) && deletion_less(b, a, now)),
                    "asymmetric"
                );
                for c in &ranked {
                    if deletion_less(a, b, now) && deletion_less(b, c, now) {
                        assert!(deletion_less(a, c, now), "transitive");
                    }
                }
            }
        }
        let mut sorted = ranked.clone();
        sort_for_deletion(&mut sorted, now);
        sort_for_deletion(&mut sorted, None);
    }

    #[test]
    fn deletion_ranking_follows_upstream_criteria() {
        let pods = vec![
            pod("running-ready-old", "n1", "Running", Some(100), 10),
            pod("unscheduled", "", "Pending", None, 50),
            pod("running-notready", "n1", "Running", None, 20),
            pod("pending", "n1", "Pending", None, 30),
            pod("unknown", "n1", "Unknown", None, 40),
            pod("running-ready-new", "n1", "Running", Some(5000), 15),
        ];
        assert_eq!(
            order(&pods, None),
            vec![
                "unscheduled",
                "pending",
                "unknown",
                "running-notready",
                "running-ready-new",
                "running-ready-old",
            ]
        );
    }

    #[test]
    fn deletion_cost_rank_and_restarts() {
        let mut cheap = pod("cheap", "n1", "Running", Some(100), 10);
        cheap.metadata.annotations = Some([(POD_DELETION_COST.into(), "-5".into())].into());
        let normal = pod("normal", "n1", "Running", Some(100), 10);
        assert_eq!(
            order(&[normal.clone(), cheap], None),
            vec!["cheap", "normal"]
        );

        let a = RankedPod {
            pod: &normal,
            rank: 3,
        };
        let other = pod("other", "n2", "Running", Some(100), 10);
        let b = RankedPod {
            pod: &other,
            rank: 1,
        };
        assert!(deletion_less(&a, &b, None), "doubled-up pod goes first");

        let mut restarted = pod("restarted", "n1", "Running", Some(100), 10);
        if let Some(s) = restarted.status.as_mut() {
            s.container_statuses = Some(vec![crate::transform::CachedContainerStatus {
                restart_count: 4,
                ..Default::default()
            }]);
        }
        assert_eq!(
            order(&[normal, restarted], None),
            vec!["restarted", "normal"]
        );
    }

    #[test]
    fn logarithmic_buckets_group_similar_ages() {
        let now = ts(1_000_000);
        // Ready 1000s and 1001s ago: same log2 bucket, so UID decides.
        let a = pod("b-pod", "n1", "Running", Some(1_000_000 - 1000), 1);
        let b = pod("a-pod", "n1", "Running", Some(1_000_000 - 1001), 1);
        assert_eq!(
            order(&[a.clone(), b.clone()], Some(now)),
            vec!["a-pod", "b-pod"]
        );
        // Without a reference time the newer ready time goes first.
        assert_eq!(order(&[b, a], None), vec!["b-pod", "a-pod"]);
    }

    #[test]
    fn availability_honours_min_ready_seconds() {
        let p = pod("p", "n1", "Running", Some(100), 1);
        assert!(is_pod_available(&p, 0, ts(100)));
        assert!(!is_pod_available(&p, 10, ts(105)));
        assert!(is_pod_available(&p, 10, ts(111)));
        assert_eq!(
            next_pod_availability_check([&p], 10, ts(105)),
            Some(Duration::from_secs(5))
        );
        let not_ready = pod("q", "n1", "Running", None, 1);
        assert!(!is_pod_available(&not_ready, 0, ts(100)));
    }

    #[test]
    fn active_and_terminating() {
        let mut p = pod("p", "n1", "Running", None, 1);
        assert!(is_pod_active(&p) && !is_pod_terminating(&p));
        p.metadata.deletion_timestamp = Some(Time(ts(5)));
        assert!(!is_pod_active(&p) && is_pod_terminating(&p));
        let done = pod("d", "n1", "Succeeded", None, 1);
        assert!(!is_pod_active(&done) && !is_pod_terminating(&done));
    }
}
