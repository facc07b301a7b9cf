//! Pure helpers of the deployment controller, after upstream's
//! `pkg/controller/deployment/util/deployment_util.go`: revisions and annotations,
//! conditions, maxSurge/maxUnavailable arithmetic, proportional scaling, and finding the
//! new and old ReplicaSets.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetCondition,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

/// The revision of a Deployment / ReplicaSet.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Earlier revisions a ReplicaSet served (after rollbacks to it).
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// The Deployment's replicas when the ReplicaSet was last scaled.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// The Deployment's replicas + maxSurge when the ReplicaSet was last scaled.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
/// The deprecated rollback request annotation (`apps.DeprecatedRollbackTo`).
pub const DEPRECATED_ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
/// `kubectl apply`'s annotation, never copied to ReplicaSets.
pub const LAST_APPLIED_CONFIG: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The label that tells a Deployment's ReplicaSets (and their pods) apart.
pub const DEFAULT_DEPLOYMENT_UNIQUE_LABEL_KEY: &str = "pod-template-hash";

/// Condition types.
pub const AVAILABLE: &str = "Available";
/// The Progressing condition.
pub const PROGRESSING: &str = "Progressing";
/// The ReplicaFailure condition (copied from ReplicaSets).
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// Rollback to a revision that does not exist.
pub const ROLLBACK_REVISION_NOT_FOUND: &str = "DeploymentRollbackRevisionNotFound";
/// Rollback to the current template.
pub const ROLLBACK_TEMPLATE_UNCHANGED: &str = "DeploymentRollbackTemplateUnchanged";
/// Rollback done.
pub const ROLLBACK_DONE: &str = "DeploymentRollback";
/// Progressing reasons.
pub const REPLICA_SET_UPDATED_REASON: &str = "ReplicaSetUpdated";
/// The new ReplicaSet could not be created.
pub const FAILED_RS_CREATE_REASON: &str = "ReplicaSetCreateError";
/// A new ReplicaSet was created.
pub const NEW_REPLICA_SET_REASON: &str = "NewReplicaSetCreated";
/// An existing ReplicaSet matches the template.
pub const FOUND_NEW_RS_REASON: &str = "FoundNewReplicaSet";
/// The rollout completed.
pub const NEW_RS_AVAILABLE_REASON: &str = "NewReplicaSetAvailable";
/// progressDeadlineSeconds passed without progress.
pub const TIMED_OUT_REASON: &str = "ProgressDeadlineExceeded";
/// The Deployment is paused.
pub const PAUSED_DEPLOY_REASON: &str = "DeploymentPaused";
/// The Deployment was resumed.
pub const RESUMED_DEPLOY_REASON: &str = "DeploymentResumed";
/// Available condition reasons.
pub const MINIMUM_REPLICAS_AVAILABLE: &str = "MinimumReplicasAvailable";
/// Not enough available replicas.
pub const MINIMUM_REPLICAS_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

/// Longest revision-history annotation kept (`maxRevHistoryLengthInChars`).
pub const MAX_REV_HISTORY_LENGTH_IN_CHARS: usize = 2000;

// === Accessors (fields the apiserver defaults) ===

/// `spec.replicas` of a Deployment (defaulted to 1).
pub fn d_replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// `spec.replicas` of a ReplicaSet (defaulted to 1).
pub fn rs_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn rs_status<T>(
    rs: &ReplicaSet,
    f: impl Fn(&k8s_openapi::api::apps::v1::ReplicaSetStatus) -> T,
) -> Option<T> {
    rs.status.as_ref().map(f)
}

/// `status.replicas` of a ReplicaSet.
pub fn rs_actual(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.replicas).unwrap_or(0)
}

/// `status.availableReplicas` of a ReplicaSet.
pub fn rs_available(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.available_replicas.unwrap_or(0)).unwrap_or(0)
}

/// `status.readyReplicas` of a ReplicaSet.
pub fn rs_ready(rs: &ReplicaSet) -> i32 {
    rs_status(rs, |s| s.ready_replicas.unwrap_or(0)).unwrap_or(0)
}

/// The Deployment's strategy type (`RollingUpdate` by default).
pub fn strategy_type(d: &Deployment) -> &str {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
}

/// `IsRollingUpdate`.
pub fn is_rolling_update(d: &Deployment) -> bool {
    strategy_type(d) == "RollingUpdate"
}

/// `spec.progressDeadlineSeconds` when set and not "infinite" (`HasProgressDeadline`).
pub fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|&s| s != i32::MAX)
}

/// `spec.revisionHistoryLimit` when set and not "infinite" (`HasRevisionHistoryLimit`).
pub fn revision_history_limit(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.revision_history_limit)
        .filter(|&s| s != i32::MAX)
}

/// Whether the Deployment is paused.
pub fn paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
}

/// The Deployment's status with counts defaulted (Go's zero values).
pub fn d_status(d: &Deployment) -> DeploymentStatus {
    normalize(d.status.clone().unwrap_or_default())
}

/// Missing counts as zero and missing conditions as empty, so statuses compare like Go's.
pub fn normalize(mut s: DeploymentStatus) -> DeploymentStatus {
    for f in [
        &mut s.replicas,
        &mut s.updated_replicas,
        &mut s.ready_replicas,
        &mut s.available_replicas,
        &mut s.unavailable_replicas,
    ] {
        f.get_or_insert(0);
    }
    s.observed_generation.get_or_insert(0);
    s.conditions.get_or_insert_with(Vec::new);
    s
}

// === Revisions and annotations ===

/// The revision annotation as a number (`Revision`); missing is 0, garbage is `None`.
pub fn revision(annotations: Option<&BTreeMap<String, String>>) -> Option<i64> {
    match annotations.and_then(|a| a.get(REVISION_ANNOTATION)) {
        None => Some(0),
        Some(v) => v.parse().ok(),
    }
}

/// The ReplicaSet's revision.
pub fn rs_revision(rs: &ReplicaSet) -> Option<i64> {
    revision(rs.metadata.annotations.as_ref())
}

/// `MaxRevision`.
pub fn max_revision(rss: &[ReplicaSet]) -> i64 {
    rss.iter().filter_map(rs_revision).max().unwrap_or(0).max(0)
}

/// `LastRevision`: the second-highest revision.
pub fn last_revision(rss: &[ReplicaSet]) -> i64 {
    let (mut max, mut sec) = (0, 0);
    for v in rss.iter().filter_map(rs_revision) {
        if v >= max {
            sec = max;
            max = v;
        } else if v > sec {
            sec = v;
        }
    }
    sec
}

fn skip_copy_annotation(k: &str) -> bool {
    matches!(
        k,
        LAST_APPLIED_CONFIG
            | REVISION_ANNOTATION
            | REVISION_HISTORY_ANNOTATION
            | DESIRED_REPLICAS_ANNOTATION
            | MAX_REPLICAS_ANNOTATION
            | DEPRECATED_ROLLBACK_TO
    )
}

/// `copyDeploymentAnnotationsToReplicaSet`.
fn copy_deployment_annotations(d: &Deployment, rs: &mut ReplicaSet) -> bool {
    let mut changed = false;
    let ann = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    for (k, v) in d.metadata.annotations.iter().flatten() {
        if skip_copy_annotation(k) || ann.get(k) == Some(v) {
            continue;
        }
        ann.insert(k.clone(), v.clone());
        changed = true;
    }
    changed
}

/// `SetNewReplicaSetAnnotations`: copies the Deployment's annotations, bumps the revision
/// (keeping the history), and for a ReplicaSet being created sets the replicas annotations.
pub fn set_new_replica_set_annotations(
    d: &Deployment,
    rs: &mut ReplicaSet,
    new_revision: &str,
    exists: bool,
    max_history_chars: usize,
) -> bool {
    let mut changed = copy_deployment_annotations(d, rs);
    let ann = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let old = ann.get(REVISION_ANNOTATION).cloned();
    let old_int = match old.as_deref() {
        None | Some("") => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) => n,
            Err(_) => return false,
        },
    };
    let Ok(new_int) = new_revision.parse::<i64>() else {
        return false;
    };
    if old_int < new_int {
        ann.insert(REVISION_ANNOTATION.into(), new_revision.into());
        changed = true;
    }
    if let Some(old_rev) = old.filter(|_| old_int < new_int) {
        let history = ann
            .get(REVISION_HISTORY_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        let olds: Vec<&str> = history.split(',').collect();
        if olds.first().is_none_or(|s| s.is_empty()) {
            ann.insert(REVISION_HISTORY_ANNOTATION.into(), old_rev);
        } else {
            let mut total = history.len() + old_rev.len() + 1;
            let mut start = 0;
            while total > max_history_chars && start < olds.len() {
                total = total.saturating_sub(olds[start].len() + 1);
                start += 1;
            }
            if total <= max_history_chars {
                let mut kept: Vec<&str> = olds[start..].to_vec();
                kept.push(&old_rev);
                let joined = kept.join(",");
                ann.insert(REVISION_HISTORY_ANNOTATION.into(), joined);
            }
        }
    }
    if !exists && set_replicas_annotations(rs, d_replicas(d), d_replicas(d) + max_surge(d)) {
        changed = true;
    }
    changed
}

/// `SetReplicasAnnotations`.
pub fn set_replicas_annotations(rs: &mut ReplicaSet, desired: i32, max: i32) -> bool {
    let ann = rs.metadata.annotations.get_or_insert_with(BTreeMap::new);
    let mut updated = false;
    for (k, v) in [
        (DESIRED_REPLICAS_ANNOTATION, desired.to_string()),
        (MAX_REPLICAS_ANNOTATION, max.to_string()),
    ] {
        if ann.get(k) != Some(&v) {
            ann.insert(k.into(), v);
            updated = true;
        }
    }
    updated
}

/// `ReplicasAnnotationsNeedUpdate`.
pub fn replicas_annotations_need_update(rs: &ReplicaSet, desired: i32, max: i32) -> bool {
    let ann = rs.metadata.annotations.as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).cloned();
    get(DESIRED_REPLICAS_ANNOTATION) != Some(desired.to_string())
        || get(MAX_REPLICAS_ANNOTATION) != Some(max.to_string())
}

fn non_negative_annotation(rs: &ReplicaSet, key: &str) -> Option<i32> {
    let v = rs.metadata.annotations.as_ref()?.get(key)?;
    let n: u32 = v.parse().ok()?;
    i32::try_from(n).ok()
}

/// `GetDesiredReplicasAnnotation`.
pub fn desired_replicas_annotation(rs: &ReplicaSet) -> Option<i32> {
    non_negative_annotation(rs, DESIRED_REPLICAS_ANNOTATION)
}

/// `SetDeploymentRevision`: whether the Deployment's revision annotation changed.
pub fn set_deployment_revision(d: &mut Deployment, revision: &str) -> bool {
    let ann = d.metadata.annotations.get_or_insert_with(BTreeMap::new);
    if ann.get(REVISION_ANNOTATION).map(String::as_str) == Some(revision) {
        return false;
    }
    ann.insert(REVISION_ANNOTATION.into(), revision.into());
    true
}

/// `SetDeploymentAnnotationsTo`: the rolled-back-to ReplicaSet's copyable annotations.
pub fn set_deployment_annotations_to(d: &mut Deployment, rs: &ReplicaSet) {
    let mut kept: BTreeMap<String, String> = d
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| skip_copy_annotation(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in rs.metadata.annotations.iter().flatten() {
        if !skip_copy_annotation(k) {
            kept.insert(k.clone(), v.clone());
        }
    }
    d.metadata.annotations = Some(kept);
}

// === Conditions ===

/// `NewDeploymentCondition`.
pub fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> DeploymentCondition {
    let now = Some(Time(Timestamp::now()));
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: now.clone(),
        last_transition_time: now,
    }
}

/// `GetDeploymentCondition`.
pub fn get_condition<'a>(s: &'a DeploymentStatus, type_: &str) -> Option<&'a DeploymentCondition> {
    s.conditions.as_deref()?.iter().find(|c| c.type_ == type_)
}

/// `SetDeploymentCondition`: no-op when status and reason are unchanged; keeps the
/// transition time when only the reason changed.
pub fn set_condition(s: &mut DeploymentStatus, mut c: DeploymentCondition) {
    if let Some(cur) = get_condition(s, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    let conds = s.conditions.get_or_insert_with(Vec::new);
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

/// `RemoveDeploymentCondition`.
pub fn remove_condition(s: &mut DeploymentStatus, type_: &str) {
    if let Some(c) = s.conditions.as_mut() {
        c.retain(|x| x.type_ != type_);
    }
}

/// `ReplicaSetToDeploymentCondition`.
pub fn replica_set_to_deployment_condition(c: &ReplicaSetCondition) -> DeploymentCondition {
    DeploymentCondition {
        type_: c.type_.clone(),
        status: c.status.clone(),
        last_transition_time: c.last_transition_time.clone(),
        last_update_time: c.last_transition_time.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
    }
}

// === Surge and unavailability ===

/// `intstr.GetScaledValueFromIntOrPercent`.
pub fn scaled_value(v: &IntOrString, total: i32, round_up: bool) -> Result<i32, String> {
    match v {
        IntOrString::Int(i) => Ok(*i),
        IntOrString::String(s) => {
            let Some(p) = s.strip_suffix('%') else {
                return Err(format!("invalid type: string is not a percentage: {s:?}"));
            };
            let p: i32 = p
                .parse()
                .map_err(|_| format!("invalid value for IntOrString: invalid value {s:?}"))?;
            let v = f64::from(p) * f64::from(total) / 100.0;
            let r = if round_up { v.ceil() } else { v.floor() };
            // Bounded by |p| * |total| / 100, which fits an i32 for any valid spec.
            #[allow(clippy::cast_possible_truncation)]
            Ok(r as i32)
        }
    }
}

/// `ResolveFenceposts`: maxSurge rounded up, maxUnavailable rounded down; both zero means
/// one may be unavailable.
pub fn resolve_fenceposts(
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
    desired: i32,
) -> Result<(i32, i32), String> {
    let zero = IntOrString::Int(0);
    let surge = scaled_value(max_surge.unwrap_or(&zero), desired, true)?;
    let mut unavailable = scaled_value(max_unavailable.unwrap_or(&zero), desired, false)?;
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    Ok((surge, unavailable))
}

fn rolling_params(d: &Deployment) -> (Option<&IntOrString>, Option<&IntOrString>) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    (
        ru.and_then(|r| r.max_surge.as_ref()),
        ru.and_then(|r| r.max_unavailable.as_ref()),
    )
}

/// `MaxSurge` (0 for Recreate).
pub fn max_surge(d: &Deployment) -> i32 {
    if !is_rolling_update(d) {
        return 0;
    }
    let (s, u) = rolling_params(d);
    resolve_fenceposts(s, u, d_replicas(d)).map_or(0, |(s, _)| s)
}

/// `MaxUnavailable` (0 for Recreate or zero replicas; at most the replicas).
pub fn max_unavailable(d: &Deployment) -> i32 {
    if !is_rolling_update(d) || d_replicas(d) == 0 {
        return 0;
    }
    let (s, u) = rolling_params(d);
    let u = resolve_fenceposts(s, u, d_replicas(d)).map_or(0, |(_, u)| u);
    u.min(d_replicas(d))
}

/// `integer.RoundToInt32`: half away from zero.
pub fn round_to_i32(a: f64) -> i32 {
    let r = if a < 0.0 { a - 0.5 } else { a + 0.5 };
    // Go converts by truncation; replica counts are far inside i32.
    #[allow(clippy::cast_possible_truncation)]
    let r = r as i32;
    r
}

/// `getReplicaSetFraction`: how many replicas `rs` gains (or loses) when the Deployment
/// scales, in proportion to its size.
pub fn replica_set_fraction(rs: &ReplicaSet, d: &Deployment) -> i32 {
    if d_replicas(d) == 0 {
        return -rs_replicas(rs);
    }
    let deployment_max = d_replicas(d) + max_surge(d);
    let before = match non_negative_annotation(rs, MAX_REPLICAS_ANNOTATION) {
        Some(v) if v != 0 => v,
        _ => {
            let r = d_status(d).replicas.unwrap_or(0);
            if r == 0 {
                return 0;
            }
            r
        }
    };
    let base = rs_replicas(rs);
    let size = f64::from(base * deployment_max) / f64::from(before);
    round_to_i32(size) - base
}

/// `GetReplicaSetProportion`.
pub fn replica_set_proportion(rs: &ReplicaSet, d: &Deployment, to_add: i32, added: i32) -> i32 {
    if rs_replicas(rs) == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let fraction = replica_set_fraction(rs, d);
    let allowed = to_add - added;
    if to_add > 0 {
        fraction.min(allowed)
    } else {
        fraction.max(allowed)
    }
}

/// `NewRSNewReplicas`: the new ReplicaSet's size for this step of the rollout.
pub fn new_rs_new_replicas(
    d: &Deployment,
    all: &[ReplicaSet],
    new_rs: &ReplicaSet,
) -> Result<i32, String> {
    match strategy_type(d) {
        "RollingUpdate" => {
            let (s, _) = rolling_params(d);
            let surge = scaled_value(s.unwrap_or(&IntOrString::Int(0)), d_replicas(d), true)?;
            let current: i32 = all.iter().map(rs_replicas).sum();
            let max_total = d_replicas(d) + surge;
            if current >= max_total {
                return Ok(rs_replicas(new_rs));
            }
            let up = (max_total - current).min(d_replicas(d) - rs_replicas(new_rs));
            Ok(rs_replicas(new_rs) + up)
        }
        "Recreate" => Ok(d_replicas(d)),
        other => Err(format!("deployment type {other} isn't supported")),
    }
}

/// `IsSaturated`: the new ReplicaSet runs all replicas, all available.
pub fn is_saturated(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    let Some(rs) = rs else { return false };
    let desired = rs
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DESIRED_REPLICAS_ANNOTATION))
        .and_then(|v| v.parse::<i32>().ok());
    desired == Some(d_replicas(d))
        && rs_replicas(rs) == d_replicas(d)
        && rs_available(rs) == d_replicas(d)
}

/// `DeploymentComplete`.
pub fn deployment_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let want = d_replicas(d);
    s.updated_replicas.unwrap_or(0) == want
        && s.replicas.unwrap_or(0) == want
        && s.available_replicas.unwrap_or(0) == want
        && s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
}

/// `DeploymentProgressing`: more updated, fewer old, more ready or more available.
pub fn deployment_progressing(d: &Deployment, new: &DeploymentStatus) -> bool {
    let old = d_status(d);
    let g = |x: Option<i32>| x.unwrap_or(0);
    let old_old = g(old.replicas) - g(old.updated_replicas);
    let new_old = g(new.replicas) - g(new.updated_replicas);
    g(new.updated_replicas) > g(old.updated_replicas)
        || new_old < old_old
        || g(new.ready_replicas) > g(old.ready_replicas)
        || g(new.available_replicas) > g(old.available_replicas)
}

/// `DeploymentTimedOut`.
pub fn deployment_timed_out(d: &Deployment, s: &DeploymentStatus, now: Timestamp) -> bool {
    let Some(deadline) = progress_deadline(d) else {
        return false;
    };
    let Some(c) = get_condition(s, PROGRESSING) else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE_REASON) => false,
        Some(TIMED_OUT_REASON) => true,
        _ => c.last_update_time.as_ref().is_some_and(|t| {
            t.0.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                deadline,
            )))
            .is_ok_and(|due| due < now)
        }),
    }
}

// === Templates and ReplicaSet lists ===

fn without_hash(t: &PodTemplateSpec) -> PodTemplateSpec {
    let mut t = t.clone();
    if let Some(m) = t.metadata.as_mut() {
        if let Some(l) = m.labels.as_mut() {
            l.remove(DEFAULT_DEPLOYMENT_UNIQUE_LABEL_KEY);
            if l.is_empty() {
                m.labels = None;
            }
        }
        if m.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
            m.annotations = None;
        }
    }
    t
}

/// `EqualIgnoreHash`: templates equal apart from the pod-template-hash label (semantic
/// equality: empty and missing collections are the same).
pub fn equal_ignore_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    let (a, b) = (without_hash(a), without_hash(b));
    let strip = |t: &PodTemplateSpec| strip_empty(serde_json::to_value(t).unwrap_or_default());
    strip(&a) == strip(&b)
}

fn strip_empty(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, strip_empty(v)))
                .filter(|(_, v)| match v {
                    Value::Null => false,
                    Value::Array(a) => !a.is_empty(),
                    Value::Object(o) => !o.is_empty(),
                    _ => true,
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_empty).collect()),
        v => v,
    }
}

fn created(rs: &ReplicaSet) -> Option<Timestamp> {
    rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// `ReplicaSetsByCreationTimestamp`: oldest first, name as tie breaker.
pub fn by_creation(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    created(a)
        .cmp(&created(b))
        .then_with(|| a.metadata.name.cmp(&b.metadata.name))
}

/// `ReplicaSetsBySizeOlder`: biggest first, then oldest.
pub fn by_size_older(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    rs_replicas(b)
        .cmp(&rs_replicas(a))
        .then_with(|| by_creation(a, b))
}

/// `ReplicaSetsBySizeNewer`: biggest first, then newest.
pub fn by_size_newer(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    rs_replicas(b)
        .cmp(&rs_replicas(a))
        .then_with(|| by_creation(b, a))
}

/// `ReplicaSetsByRevision`: lowest revision first, creation time as tie breaker.
pub fn by_revision(a: &ReplicaSet, b: &ReplicaSet) -> std::cmp::Ordering {
    match (rs_revision(a), rs_revision(b)) {
        (Some(x), Some(y)) if x != y => x.cmp(&y),
        _ => by_creation(a, b),
    }
}

/// `FindNewReplicaSet`: the oldest ReplicaSet whose template equals the Deployment's.
pub fn find_new_replica_set(d: &Deployment, rss: &[ReplicaSet]) -> Option<ReplicaSet> {
    let template = d
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut sorted: Vec<&ReplicaSet> = rss.iter().collect();
    sorted.sort_by(|a, b| by_creation(a, b));
    sorted
        .into_iter()
        .find(|rs| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .is_some_and(|t| equal_ignore_hash(t, &template))
        })
        .cloned()
}

/// `FindOldReplicaSets`: every ReplicaSet but the new one.
pub fn find_old_replica_sets(d: &Deployment, rss: &[ReplicaSet]) -> Vec<ReplicaSet> {
    let new_uid = find_new_replica_set(d, rss).and_then(|n| n.metadata.uid);
    rss.iter()
        .filter(|rs| new_uid.is_none() || rs.metadata.uid != new_uid)
        .cloned()
        .collect()
}

/// `FilterActiveReplicaSets`: those with replicas > 0.
pub fn active(rss: &[ReplicaSet]) -> Vec<ReplicaSet> {
    rss.iter()
        .filter(|rs| rs_replicas(rs) > 0)
        .cloned()
        .collect()
}

/// `FindActiveOrLatest`: the only active ReplicaSet, or the latest when none is active.
pub fn find_active_or_latest(
    new_rs: Option<&ReplicaSet>,
    old: &[ReplicaSet],
) -> Option<ReplicaSet> {
    if new_rs.is_none() && old.is_empty() {
        return None;
    }
    let mut old = old.to_vec();
    old.sort_by(|a, b| by_creation(b, a));
    let mut all = old.clone();
    all.extend(new_rs.cloned());
    let active = active(&all);
    match active.len() {
        0 => new_rs.cloned().or_else(|| old.first().cloned()),
        1 => active.first().cloned(),
        _ => None,
    }
}

/// `generateReplicaSetName`: `<deployment>-<hash>`, the name cut to fit 253 characters.
pub fn replica_set_name(deployment: &str, hash: &str) -> String {
    let max = 253usize.saturating_sub(1 + hash.len());
    let name = if deployment.len() > max && max > 0 {
        &deployment[..max]
    } else {
        deployment
    };
    format!("{name}-{hash}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(replicas: i32, surge: IntOrString, unavailable: IntOrString) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "namespace": "ns", "generation": 1},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "x"}},
                "template": {"metadata": {"labels": {"app": "x"}}},
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
            }
        }))
        .unwrap_or_default()
    }

    fn s(v: &str) -> IntOrString {
        IntOrString::String(v.into())
    }

    #[test]
    fn fenceposts_round_like_upstream() {
        // 25% of 10: surge rounds up to 3, unavailable down to 2.
        assert_eq!(
            resolve_fenceposts(Some(&s("25%")), Some(&s("25%")), 10),
            Ok((3, 2))
        );
        // 25% of 1: surge 1, unavailable 0.
        assert_eq!(
            resolve_fenceposts(Some(&s("25%")), Some(&s("25%")), 1),
            Ok((1, 0))
        );
        // Both zero: one may be unavailable.
        assert_eq!(
            resolve_fenceposts(Some(&IntOrString::Int(0)), Some(&s("0%")), 5),
            Ok((0, 1))
        );
        assert!(resolve_fenceposts(Some(&s("abc")), None, 5).is_err());
        let d = deploy(3, IntOrString::Int(1), IntOrString::Int(5));
        assert_eq!(max_surge(&d), 1);
        assert_eq!(max_unavailable(&d), 3, "capped at replicas");
        let mut recreate = d.clone();
        if let Some(st) = recreate.spec.as_mut().and_then(|s| s.strategy.as_mut()) {
            st.type_ = Some("Recreate".into());
        }
        assert_eq!((max_surge(&recreate), max_unavailable(&recreate)), (0, 0));
    }

    #[test]
    fn proportional_scaling_fraction() {
        // Deployment scaled from 10 (+3 surge = 13) to 20 (+5 = 25): an RS holding 6
        // replicas grows to round(6*25/13) = 12.
        let d = deploy(20, s("25%"), s("25%"));
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "r", "annotations": {MAX_REPLICAS_ANNOTATION: "13"}},
            "spec": {"replicas": 6, "selector": {}},
        }))
        .unwrap_or_default();
        assert_eq!(replica_set_fraction(&rs, &d), 6);
        assert_eq!(replica_set_proportion(&rs, &d, 12, 0), 6);
        assert_eq!(
            replica_set_proportion(&rs, &d, 12, 10),
            2,
            "capped by what is left"
        );
        assert_eq!(round_to_i32(2.5), 3);
        assert_eq!(round_to_i32(-2.5), -3);
    }

    #[test]
    fn new_rs_replicas_respects_surge() {
        let d = deploy(10, s("25%"), s("25%"));
        let rs = |replicas: i32| -> ReplicaSet {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"},
                "spec": {"replicas": replicas, "selector": {}}}))
            .unwrap_or_default()
        };
        let (old, new) = (rs(10), rs(0));
        // 10 old + 0 new, max total 13: the new RS may start 3.
        assert_eq!(
            new_rs_new_replicas(&d, &[old.clone(), new.clone()], &new),
            Ok(3)
        );
        let new3 = rs(3);
        assert_eq!(new_rs_new_replicas(&d, &[old, new3.clone()], &new3), Ok(3));
    }

    #[test]
    fn revision_history_annotation_grows() {
        let d = deploy(1, s("25%"), s("25%"));
        let mut rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "x", "annotations": {REVISION_ANNOTATION: "1"}},
        }))
        .unwrap_or_default();
        assert!(set_new_replica_set_annotations(
            &d, &mut rs, "3", true, 2000
        ));
        let ann = rs.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann.get(REVISION_ANNOTATION).map(String::as_str), Some("3"));
        assert_eq!(
            ann.get(REVISION_HISTORY_ANNOTATION).map(String::as_str),
            Some("1")
        );
        assert!(set_new_replica_set_annotations(
            &d, &mut rs, "5", true, 2000
        ));
        let ann = rs.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            ann.get(REVISION_HISTORY_ANNOTATION).map(String::as_str),
            Some("1,3")
        );
        assert!(!set_new_replica_set_annotations(
            &d, &mut rs, "5", true, 2000
        ));
    }

    #[test]
    fn equal_ignore_hash_and_names() {
        let a: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "x", DEFAULT_DEPLOYMENT_UNIQUE_LABEL_KEY: "abc"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}))
        .unwrap_or_default();
        let b: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "x"}, "annotations": {}},
            "spec": {"containers": [{"name": "c", "image": "i", "args": []}]}}))
        .unwrap_or_default();
        assert!(equal_ignore_hash(&a, &b));
        assert_eq!(replica_set_name("web", "abc"), "web-abc");
        assert_eq!(replica_set_name(&"x".repeat(260), "abc").len(), 253);
    }
}
