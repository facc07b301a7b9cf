//! `replicaset-controller`: keeps `spec.replicas` pods running for every ReplicaSet.
//!
//! Upstream's `ReplicaSetController` (`pkg/controller/replicaset`):
//!
//! ```text
//!   ReplicaSet / Pod events ──▶ queue of ReplicaSet keys (expectations observed on the way)
//!        │
//!        ▼ sync(key)
//!   pods in cache (ours + orphans) ─▶ claim (adopt / release) ─▶ active pods
//!        │ expectations satisfied?
//!        ├─ too few: create in slow-start batches 1, 2, 4, ... (stop at the first failure)
//!        ├─ too many: delete the lowest-ranked (unscheduled, pending, not ready, ...)
//!        ▼
//!   status (replicas, fullyLabeled, ready, available, terminating, ReplicaFailure)
//!   written with a merge patch on the status subresource
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers, enqueue_from};
use ferrokube_runtime::events::{self, EventType, Recorder};
use ferrokube_runtime::informer::{Notification, ObjectKey, Store};
use ferrokube_runtime::workqueue::WorkQueue;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{Selector, SelectorExt};
use tokio::task::JoinSet;

use super::StartError;
use crate::context::Context;
use crate::controller_ref::{ClaimError, ControllerRefManager, Owner, recheck_by_get};
use crate::controller_utils::{
    self as cu, FAILED_CREATE_POD_REASON, FAILED_DELETE_POD_REASON, RankedPod,
    SLOW_START_INITIAL_BATCH_SIZE, SUCCESSFUL_CREATE_POD_REASON, SUCCESSFUL_DELETE_POD_REASON,
};
use crate::expectations::ControllerExpectations;

/// Upstream's `BurstReplicas`: at most this many pods are created or deleted per sync.
pub const BURST_REPLICAS: usize = 500;
/// The condition type set when pods cannot be created or deleted.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// The reporting controller name in events.
const CONTROLLER_NAME: &str = "replicaset-controller";

/// Why a sync failed (the key is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Adopting or releasing pods failed.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// Creating or deleting pods failed.
    #[error("{0}")]
    ManageReplicas(String),
    /// Writing status failed.
    #[error("updating status of ReplicaSet {key}: {source}")]
    Status {
        /// The ReplicaSet.
        key: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let rs_informer = ctx.informers.informer::<ReplicaSet>();
    let pod_informer = ctx.informers.informer::<Pod>();
    let queue: WorkQueue<ObjectKey> = WorkQueue::new("replicaset", &ctx.metrics);
    let expectations = ControllerExpectations::new();
    let rs_store = rs_informer.store();
    let pod_store = pod_informer.store();

    {
        let expectations = expectations.clone();
        enqueue_from(
            tasks,
            rs_informer.subscribe(),
            queue.clone(),
            ctx.shutdown.clone(),
            move |n: &Notification<ReplicaSet>| {
                let key = ObjectKey::of(&**n.object());
                match n {
                    Notification::Deleted(_) => expectations.delete(&key.to_string()),
                    // A ReplicaSet recreated under the same name starts afresh.
                    Notification::Updated { old, new } if old.metadata.uid != new.metadata.uid => {
                        expectations.delete(&key.to_string());
                    }
                    _ => {}
                }
                vec![key]
            },
        );
    }
    {
        let handler = PodHandler {
            rs_store: rs_store.clone(),
            expectations: expectations.clone(),
            queue: queue.clone(),
        };
        enqueue_from(
            tasks,
            pod_informer.subscribe(),
            queue.clone(),
            ctx.shutdown.clone(),
            move |n: &Notification<Pod>| handler.keys(n),
        );
    }

    let sync = Sync {
        client: ctx.client.clone(),
        rs_store: rs_store.clone(),
        pod_store: pod_store.clone(),
        expectations,
        recorder: ctx.recorder(CONTROLLER_NAME, tasks),
        burst_replicas: BURST_REPLICAS,
    };
    let mut workers = Workers::new("replicaset", ctx.options.concurrent_replicaset_syncs);
    // Upstream retries a failing ReplicaSet forever (with backoff): a quota raised an hour
    // later must still be noticed without another event.
    workers.max_retries = u32::MAX;
    let shutdown = ctx.shutdown.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async { rs_store.wait_synced().await; pod_store.wait_synced().await } => {}
        }
        let mut inner = JoinSet::new();
        workers.spawn(&mut inner, queue, shutdown, move |key: ObjectKey| {
            let sync = sync.clone();
            async move { sync.sync(&key).await }
        });
        while inner.join_next().await.is_some() {}
    });
    Ok(())
}

/// Turns pod events into ReplicaSet keys, observing expectations on the way
/// (upstream's `addPod` / `updatePod` / `deletePod`).
struct PodHandler {
    rs_store: Store<ReplicaSet>,
    expectations: ControllerExpectations,
    queue: WorkQueue<ObjectKey>,
}

impl PodHandler {
    fn resolve(&self, namespace: &str, cref: &OwnerReference) -> Option<Arc<ReplicaSet>> {
        if cref.kind != "ReplicaSet" {
            return None;
        }
        self.rs_store
            .get(namespace, &cref.name)
            .filter(|rs| rs.metadata.uid.as_deref() == Some(cref.uid.as_str()))
    }

    /// ReplicaSets whose selector matches an orphan (`getPodReplicaSets`).
    fn matching(&self, pod: &Pod) -> Vec<ObjectKey> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let empty = Default::default();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        self.rs_store
            .list_in(&ns)
            .iter()
            .filter(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| selector_of(&s.selector))
                    .is_some_and(|sel| sel.matches(labels))
            })
            .map(|rs| ObjectKey::of(&**rs))
            .collect()
    }

    fn deleted(&self, pod: &Pod) -> Vec<ObjectKey> {
        let Some(cref) = cu::controller_of(&pod.metadata) else {
            return vec![];
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let Some(rs) = self.resolve(&ns, cref) else {
            return vec![];
        };
        let key = ObjectKey::of(&*rs);
        self.expectations
            .deletion_observed(&key.to_string(), &cu::meta_key(&pod.metadata));
        vec![key]
    }

    fn keys(&self, n: &Notification<Pod>) -> Vec<ObjectKey> {
        match n {
            Notification::Added(pod) => {
                if pod.metadata.deletion_timestamp.is_some() {
                    return self.deleted(pod);
                }
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                if let Some(cref) = cu::controller_of(&pod.metadata) {
                    let Some(rs) = self.resolve(&ns, cref) else {
                        return vec![];
                    };
                    let key = ObjectKey::of(&*rs);
                    self.expectations.creation_observed(&key.to_string());
                    return vec![key];
                }
                self.matching(pod)
            }
            Notification::Updated { old, new } => {
                // A periodic resync: nothing changed.
                if old.metadata.resource_version == new.metadata.resource_version {
                    return vec![];
                }
                let label_changed = old.metadata.labels != new.metadata.labels;
                if new.metadata.deletion_timestamp.is_some() {
                    let mut keys = self.deleted(new);
                    if label_changed {
                        keys.extend(self.deleted(old));
                    }
                    return keys;
                }
                let ns = new.metadata.namespace.clone().unwrap_or_default();
                let cur_ref = cu::controller_of(&new.metadata);
                let old_ref = cu::controller_of(&old.metadata);
                let ref_changed = cur_ref != old_ref;
                let mut keys = Vec::new();
                if ref_changed && let Some(rs) = old_ref.and_then(|r| self.resolve(&ns, r)) {
                    keys.push(ObjectKey::of(&*rs));
                }
                if let Some(cref) = cur_ref {
                    if let Some(rs) = self.resolve(&ns, cref) {
                        let key = ObjectKey::of(&*rs);
                        let min_ready = min_ready_seconds(&rs);
                        if !cu::is_pod_ready(old) && cu::is_pod_ready(new) && min_ready > 0 {
                            // Look again once the pod has been ready long enough to be
                            // available.
                            self.queue.add_after(
                                key.clone(),
                                Duration::from_secs(u64::from(min_ready.unsigned_abs())),
                            );
                        }
                        keys.push(key);
                    }
                    return keys;
                }
                if label_changed || ref_changed {
                    keys.extend(self.matching(new));
                }
                keys
            }
            Notification::Deleted(pod) => self.deleted(pod),
        }
    }
}

fn min_ready_seconds(rs: &ReplicaSet) -> i32 {
    rs.spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0)
}

/// The selector as a matcher; `None` when it cannot be parsed or selects nothing useful
/// (an empty selector matches no orphans, as upstream's `getPodReplicaSets` skips it).
fn selector_of(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Option<Selector> {
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        return None;
    }
    Selector::try_from(sel.clone()).ok()
}

#[derive(Clone)]
struct Sync {
    client: kube::Client,
    rs_store: Store<ReplicaSet>,
    pod_store: Store<Pod>,
    expectations: ControllerExpectations,
    recorder: Recorder,
    burst_replicas: usize,
}

impl Sync {
    async fn sync(&self, key: &ObjectKey) -> Result<Action, SyncError> {
        let started = std::time::Instant::now();
        let skey = key.to_string();
        let Some(rs) = self.rs_store.get_key(key) else {
            tracing::debug!(replicaset = %key, "deleted");
            self.expectations.delete(&skey);
            return Ok(Action::Done);
        };
        let needs_sync = self.expectations.satisfied(&skey);
        let Some(spec) = rs.spec.as_ref() else {
            return Ok(Action::Done);
        };
        let selector = match Selector::try_from(spec.selector.clone()) {
            Ok(s) => s,
            Err(e) => {
                // Bad input: nothing to do until the object changes.
                tracing::warn!(replicaset = %key, error = %e.0, "invalid selector");
                return Ok(Action::Done);
            }
        };
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        // Ours (controller ref to this uid) and orphans: upstream's FilterPodsByOwner.
        let all_pods = self.pod_store.filter(|p| {
            p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && cu::controller_of(&p.metadata).is_none_or(|r| r.uid == uid)
        });
        let active: Vec<Arc<Pod>> = all_pods
            .iter()
            .filter(|p| cu::is_pod_active(p))
            .cloned()
            .collect();
        let owner = Owner::of(&*rs);
        let manager = ControllerRefManager::new(
            self.client.clone(),
            owner.clone(),
            selector.clone(),
            recheck_by_get::<ReplicaSet>(self.client.clone(), &owner),
        );
        let (active, claim_err) = manager.claim(active).await;
        if let Some(e) = claim_err {
            return Err(e.into());
        }
        let terminating = all_pods
            .iter()
            .filter(|p| {
                cu::is_pod_terminating(p)
                    && cu::controller_of(&p.metadata).is_some_and(|r| r.uid == uid)
                    && manager.matches(&***p)
            })
            .count();

        let manage_err = if needs_sync && rs.metadata.deletion_timestamp.is_none() {
            self.manage_replicas(&rs, &skey, &active).await.err()
        } else {
            None
        };

        let now = Timestamp::now();
        let status = calculate_status(&rs, &active, terminating, manage_err.as_deref(), now);
        let updated = self.update_status(&rs, status).await?;
        tracing::debug!(replicaset = %key, elapsed = ?started.elapsed(), "finished syncing");
        if let Some(e) = manage_err {
            return Err(SyncError::ManageReplicas(e));
        }
        let min_ready = min_ready_seconds(&rs);
        if min_ready > 0 && updated.ready_replicas != updated.available_replicas {
            let fallback = Duration::from_secs(u64::from(min_ready.unsigned_abs()));
            let next = cu::next_pod_availability_check(
                active.iter().map(|p| &**p),
                min_ready,
                Timestamp::now(),
            )
            .unwrap_or(fallback);
            return Ok(Action::RequeueAfter(next));
        }
        Ok(Action::Done)
    }

    /// Creates or deletes pods to reach `spec.replicas` (`manageReplicas`). The error is a
    /// message for the ReplicaFailure condition.
    async fn manage_replicas(
        &self,
        rs: &ReplicaSet,
        key: &str,
        active: &[Arc<Pod>],
    ) -> Result<(), String> {
        let want = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let have = i64::try_from(active.len()).unwrap_or(i64::MAX);
        let diff = have - i64::from(want);
        let burst = self.burst_replicas;
        if diff < 0 {
            let n = usize::try_from(-diff).unwrap_or(usize::MAX).min(burst);
            self.expectations.expect_creations(key, n);
            tracing::info!(
                replicaset = key,
                need = want,
                creating = n,
                "too few replicas"
            );
            let (created, err) =
                slow_start_batch(n, SLOW_START_INITIAL_BATCH_SIZE, || self.create_pod(rs)).await;
            // Pods never created will never be observed.
            for _ in created..n {
                self.expectations.creation_observed(key);
            }
            if created < n {
                tracing::info!(
                    replicaset = key,
                    skipped = n - created,
                    "slow-start failure; skipping creation of pods"
                );
            }
            return err.map_or(Ok(()), Err);
        }
        if diff > 0 {
            let n = usize::try_from(diff).unwrap_or(usize::MAX).min(burst);
            tracing::info!(
                replicaset = key,
                need = want,
                deleting = n,
                "too many replicas"
            );
            let related = self.indirectly_related_pods(rs);
            let victims = pods_to_delete(active, &related, n, Some(Timestamp::now()));
            self.expectations.expect_deletions(
                key,
                victims.iter().map(|p| cu::meta_key(&p.metadata)).collect(),
            );
            let results = join_all(victims.iter().map(|p| self.delete_pod(rs, key, p))).await;
            if let Some(e) = results.into_iter().find_map(Result::err) {
                return Err(e);
            }
        }
        Ok(())
    }

    async fn create_pod(&self, rs: &ReplicaSet) -> Result<(), String> {
        let Some(spec) = rs.spec.as_ref() else {
            return Ok(());
        };
        let template = spec.template.clone().unwrap_or_default();
        if cu::labels_empty(template.metadata.as_ref().and_then(|m| m.labels.as_ref())) {
            return Err("unable to create pods, no labels".into());
        }
        let owner = Owner::of(rs);
        let pod = cu::pod_from_template(&template, &owner.name, owner.controller_ref());
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &owner.namespace);
        match api.create(&PostParams::default(), &pod).await {
            Ok(created) => {
                let name = created.metadata.name.unwrap_or_default();
                tracing::debug!(replicaset = %owner.name, pod = %name, "created pod");
                self.recorder.publish(
                    events::reference(rs),
                    EventType::Normal,
                    SUCCESSFUL_CREATE_POD_REASON,
                    "Create",
                    format!("Created pod: {name}"),
                );
                Ok(())
            }
            // The namespace is going away: every create would fail, and that is fine.
            Err(e) if apierrors::is_namespace_terminating(&e) => Ok(()),
            Err(e) => {
                let msg = error_message(&e);
                self.recorder.publish(
                    events::reference(rs),
                    EventType::Warning,
                    FAILED_CREATE_POD_REASON,
                    "Create",
                    format!("Error creating: {msg}"),
                );
                Err(msg)
            }
        }
    }

    async fn delete_pod(&self, rs: &ReplicaSet, key: &str, pod: &Pod) -> Result<(), String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        tracing::info!(replicaset = key, pod = %name, "deleting pod");
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {
                self.recorder.publish(
                    events::reference(rs),
                    EventType::Normal,
                    SUCCESSFUL_DELETE_POD_REASON,
                    "Delete",
                    format!("Deleted pod: {name}"),
                );
                Ok(())
            }
            Err(e) => {
                // The informer won't observe a deletion that did not happen.
                self.expectations
                    .deletion_observed(key, &cu::meta_key(&pod.metadata));
                if apierrors::is_not_found(&e) {
                    return Ok(());
                }
                let msg = error_message(&e);
                self.recorder.publish(
                    events::reference(rs),
                    EventType::Warning,
                    FAILED_DELETE_POD_REASON,
                    "Delete",
                    format!("Error deleting: {msg}"),
                );
                Err(format!("unable to delete pods: {msg}"))
            }
        }
    }

    /// Pods of every ReplicaSet sharing this one's controller (`getIndirectlyRelatedPods`),
    /// used to prefer deleting pods doubled up on a node.
    fn indirectly_related_pods(&self, rs: &ReplicaSet) -> Vec<Arc<Pod>> {
        let Some(cref) = cu::controller_of(&rs.metadata) else {
            return vec![];
        };
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for related in self.rs_store.list_in(&ns) {
            if cu::controller_of(&related.metadata).is_none_or(|r| r.uid != cref.uid) {
                continue;
            }
            let Some(sel) = related
                .spec
                .as_ref()
                .and_then(|s| Selector::try_from(s.selector.clone()).ok())
            else {
                continue;
            };
            let empty = Default::default();
            for pod in self.pod_store.list_in(&ns) {
                if sel.matches(pod.metadata.labels.as_ref().unwrap_or(&empty))
                    && seen.insert(pod.metadata.uid.clone())
                {
                    out.push(pod);
                }
            }
        }
        out
    }

    async fn update_status(
        &self,
        rs: &ReplicaSet,
        mut status: ReplicaSetStatus,
    ) -> Result<ReplicaSetStatus, SyncError> {
        let current = rs.status.clone().unwrap_or_default();
        let generation = rs.metadata.generation;
        if same_counts(&current, &status) && generation == current.observed_generation {
            return Ok(current);
        }
        // Record the generation acted on, so that a retry never claims a newer spec.
        status.observed_generation = generation;
        let key = cu::meta_key(&rs.metadata);
        tracing::debug!(
            replicaset = %key,
            replicas = format!("{}->{}", current.replicas, status.replicas),
            ready = format!("{:?}->{:?}", current.ready_replicas, status.ready_replicas),
            available = format!("{:?}->{:?}", current.available_replicas, status.available_replicas),
            "updating status"
        );
        let api: Api<ReplicaSet> = Api::namespaced(
            self.client.clone(),
            rs.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let patch = serde_json::json!({ "status": status_json(&status) });
        api.patch_status(
            rs.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(|source| SyncError::Status { key, source })?;
        Ok(status)
    }
}

/// The status as a merge patch: zero counts written explicitly (a merge patch leaves absent
/// fields alone), conditions replaced as a whole.
fn status_json(s: &ReplicaSetStatus) -> serde_json::Value {
    serde_json::json!({
        "replicas": s.replicas,
        "fullyLabeledReplicas": s.fully_labeled_replicas.unwrap_or(0),
        "readyReplicas": s.ready_replicas.unwrap_or(0),
        "availableReplicas": s.available_replicas.unwrap_or(0),
        "terminatingReplicas": s.terminating_replicas,
        "observedGeneration": s.observed_generation,
        "conditions": s.conditions.clone().filter(|c| !c.is_empty()),
    })
}

fn same_counts(a: &ReplicaSetStatus, b: &ReplicaSetStatus) -> bool {
    a.replicas == b.replicas
        && a.fully_labeled_replicas.unwrap_or(0) == b.fully_labeled_replicas.unwrap_or(0)
        && a.ready_replicas.unwrap_or(0) == b.ready_replicas.unwrap_or(0)
        && a.available_replicas.unwrap_or(0) == b.available_replicas.unwrap_or(0)
        && a.terminating_replicas == b.terminating_replicas
        && a.conditions.clone().unwrap_or_default() == b.conditions.clone().unwrap_or_default()
}

/// The Go-style error text of an apiserver error (the Status message).
pub fn error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}

/// Calls `f` `count` times in batches of 1, 2, 4, ... (`slowStartBatch`); stops after the
/// first batch with a failure. Returns the successes and the first error.
pub async fn slow_start_batch<F, Fut, E>(count: usize, initial: usize, f: F) -> (usize, Option<E>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let mut remaining = count;
    let mut successes = 0;
    let mut batch = remaining.min(initial);
    while batch > 0 {
        let results = join_all((0..batch).map(|_| f())).await;
        let mut first_err = None;
        for r in results {
            match r {
                Ok(()) => successes += 1,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if first_err.is_some() {
            return (successes, first_err);
        }
        remaining -= batch;
        batch = (2 * batch).min(remaining);
    }
    (successes, None)
}

/// The `n` pods to delete first (`getPodsToDelete`), ranked by colocation with `related`.
pub fn pods_to_delete(
    active: &[Arc<Pod>],
    related: &[Arc<Pod>],
    n: usize,
    now: Option<Timestamp>,
) -> Vec<Arc<Pod>> {
    if n >= active.len() {
        return active.to_vec();
    }
    let mut on_node: HashMap<String, usize> = HashMap::new();
    for p in related.iter().filter(|p| cu::is_pod_active(p)) {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        *on_node.entry(node).or_default() += 1;
    }
    let mut ranked: Vec<RankedPod<'_>> = active
        .iter()
        .map(|pod| {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            RankedPod {
                pod,
                rank: on_node.get(&node).copied().unwrap_or(0),
            }
        })
        .collect();
    cu::sort_for_deletion(&mut ranked, now);
    ranked
        .iter()
        .take(n)
        .filter_map(|r| active.iter().find(|p| std::ptr::eq(&***p, r.pod)).cloned())
        .collect()
}

/// Upstream's `calculateStatus`.
fn calculate_status(
    rs: &ReplicaSet,
    active: &[Arc<Pod>],
    terminating: usize,
    manage_err: Option<&str>,
    now: Timestamp,
) -> ReplicaSetStatus {
    let mut status = rs.status.clone().unwrap_or_default();
    let spec = rs.spec.clone().unwrap_or_default();
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let (mut fully, mut ready, mut available) = (0, 0, 0);
    for pod in active {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if template_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            fully += 1;
        }
        if cu::is_pod_ready(pod) {
            ready += 1;
            if cu::is_pod_available(pod, min_ready, now) {
                available += 1;
            }
        }
    }
    let failure = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == REPLICA_FAILURE);
    match manage_err {
        Some(msg) if !failure => {
            let want = i64::from(spec.replicas.unwrap_or(1));
            let have = i64::try_from(active.len()).unwrap_or(i64::MAX);
            let reason = match have.cmp(&want) {
                std::cmp::Ordering::Less => FAILED_CREATE_POD_REASON,
                std::cmp::Ordering::Greater => FAILED_DELETE_POD_REASON,
                std::cmp::Ordering::Equal => "",
            };
            status
                .conditions
                .get_or_insert_with(Vec::new)
                .push(ReplicaSetCondition {
                    type_: REPLICA_FAILURE.into(),
                    status: "True".into(),
                    reason: Some(reason.into()),
                    message: Some(msg.into()),
                    last_transition_time: Some(Time(now)),
                });
        }
        None if failure => {
            if let Some(c) = status.conditions.as_mut() {
                c.retain(|c| c.type_ != REPLICA_FAILURE);
            }
        }
        _ => {}
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    status.replicas = count(active.len());
    status.fully_labeled_replicas = Some(fully);
    status.ready_replicas = Some(ready);
    status.available_replicas = Some(available);
    status.terminating_replicas = Some(count(terminating));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn slow_start_doubles_and_stops_at_first_failure() {
        let calls = AtomicUsize::new(0);
        let (ok, err) = slow_start_batch(10, 1, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<(), String>(())
        })
        .await;
        assert_eq!((ok, err), (10, None));
        assert_eq!(calls.load(Ordering::SeqCst), 10);

        // Fail from the 4th call on: batches 1, 2 succeed, batch of 4 has failures.
        let calls = AtomicUsize::new(0);
        let (ok, err) = slow_start_batch(20, 1, || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n >= 3 {
                    Err(format!("quota {n}"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert_eq!(ok, 3);
        assert!(err.is_some());
        assert_eq!(
            calls.load(Ordering::SeqCst),
            7,
            "1 + 2 + 4 calls, then stop"
        );
    }

    #[test]
    fn status_counts_and_failure_condition() {
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "generation": 2},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}}}},
        }))
        .unwrap_or_default();
        let pod = |labels: serde_json::Value, ready: bool| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "p", "labels": labels},
                    "status": {"phase": "Running", "conditions": [
                        {"type": "Ready", "status": if ready {"True"} else {"False"},
                         "lastTransitionTime": "2020-01-01T00:00:00Z"}]}
                }))
                .unwrap_or_default(),
            )
        };
        let active = vec![
            pod(serde_json::json!({"app": "web", "tier": "fe"}), true),
            pod(serde_json::json!({"app": "web"}), false),
        ];
        let s = calculate_status(&rs, &active, 1, Some("forbidden"), Timestamp::now());
        assert_eq!(s.replicas, 2);
        assert_eq!(s.fully_labeled_replicas, Some(1));
        assert_eq!(s.ready_replicas, Some(1));
        assert_eq!(s.available_replicas, Some(1));
        assert_eq!(s.terminating_replicas, Some(1));
        let c = s.conditions.clone().unwrap_or_default();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].reason.as_deref(), Some("FailedCreate"));

        let mut rs2 = rs.clone();
        rs2.status = Some(s);
        let s2 = calculate_status(&rs2, &active, 0, None, Timestamp::now());
        assert!(s2.conditions.unwrap_or_default().is_empty());
    }
}
