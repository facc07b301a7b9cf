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
//!   written with a merge patch on the status subresource (a PUT where RBAC allows
//!   only update: `crate::status_writer`)
//! ```
//!
//! The core is generic over [`ReplicaOwner`], so that `replicationcontroller-controller`
//! (`super::replicationcontroller`) runs this very code for ReplicationControllers, as
//! upstream's `ReplicationManager` runs the ReplicaSet controller through conversions.
//!
//! Pods are found through an index of the shared pod informer by controller reference
//! (upstream's `PodControllerIndex`), so a sync reads only its own pods and the orphans of
//! its namespace rather than every pod in the cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::transform::CachedPod;
use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers, enqueue_from};
use ferrokube_runtime::events::{self, EventType, Recorder};
use ferrokube_runtime::informer::{Notification, ObjectKey, Store, UnknownIndex};
use ferrokube_runtime::workqueue::WorkQueue;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::core::{Selector, SelectorExt};
use tokio::task::JoinSet;

use super::StartError;
use crate::context::Context;
use crate::controller_ref::{ClaimError, Claimable, ControllerRefManager, Owner, recheck_by_get};
use crate::controller_utils::{
    self as cu, DeletionKey, FAILED_CREATE_POD_REASON, FAILED_DELETE_POD_REASON, RankedPod,
    SLOW_START_INITIAL_BATCH_SIZE, SUCCESSFUL_CREATE_POD_REASON, SUCCESSFUL_DELETE_POD_REASON,
};
use crate::expectations::ControllerExpectations;
use crate::status_writer::StatusWriter;

/// Upstream's `BurstReplicas`: at most this many pods are created or deleted per sync.
pub const BURST_REPLICAS: usize = 500;
/// The condition type set when pods cannot be created or deleted (the same string for
/// ReplicaSets and ReplicationControllers).
pub const REPLICA_FAILURE: &str = "ReplicaFailure";
/// Upstream's `PodControllerIndex`: pods by `namespace/Kind/name/uid` of their controller,
/// orphans by `namespace` alone (see [`pod_controller_index_key`]).
pub const POD_CONTROLLER_INDEX: &str = "podController";
/// Owners (ReplicaSets, ReplicationControllers) by the uid of their own controller, to find
/// the siblings of a Deployment's ReplicaSet without scanning the namespace.
const CONTROLLER_UID_INDEX: &str = "controllerUID";

/// What the core needs of the kind it keeps pods for: the spec's fields and the status,
/// read the same way whether a selector is a `LabelSelector` or a plain label map.
pub trait ReplicaOwner: Claimable + serde::Serialize {
    /// The reporting controller in events (upstream's event source component).
    const CONTROLLER_NAME: &'static str;
    /// The work queue's name, which labels its metrics (upstream's queue name).
    const QUEUE_NAME: &'static str;
    /// Whether the status has `terminatingReplicas` (ReplicaSets since 1.33;
    /// ReplicationControllers never had it, so it must not be written to them).
    const TERMINATING_REPLICAS: bool;

    /// Whether the object has a spec at all (nothing to do without one).
    fn has_spec(&self) -> bool;
    /// `spec.replicas`, defaulting to 1 as the apiserver does.
    fn replicas(&self) -> i32;
    /// `spec.minReadySeconds`, 0 when unset.
    fn min_ready_seconds(&self) -> i32;
    /// `spec.template`.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// The selector as a matcher, or why it cannot be one.
    fn selector(&self) -> Result<Selector, String>;
    /// The selector used to find owners for an orphan; `None` for an empty selector, which
    /// matches no orphans (upstream's `GetPodReplicaSets` / `GetPodControllers` skip it).
    fn orphan_selector(&self) -> Option<Selector>;
    /// The current status in the shape shared by both kinds.
    fn replica_status(&self) -> ReplicaStatus;
    /// This object with its status replaced by `status` (for a PUT of `/status`).
    fn with_replica_status(&self, status: &ReplicaStatus) -> Self;
}

/// The status fields shared by ReplicaSets and ReplicationControllers (their conditions
/// have the same fields and JSON, so ReplicaSet's condition type serves both).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicaStatus {
    /// `replicas`.
    pub replicas: i32,
    /// `fullyLabeledReplicas`.
    pub fully_labeled_replicas: Option<i32>,
    /// `readyReplicas`.
    pub ready_replicas: Option<i32>,
    /// `availableReplicas`.
    pub available_replicas: Option<i32>,
    /// `terminatingReplicas` (ReplicaSets only).
    pub terminating_replicas: Option<i32>,
    /// `observedGeneration`.
    pub observed_generation: Option<i64>,
    /// `conditions`.
    pub conditions: Option<Vec<ReplicaSetCondition>>,
}

impl ReplicaOwner for ReplicaSet {
    const CONTROLLER_NAME: &'static str = "replicaset-controller";
    const QUEUE_NAME: &'static str = "replicaset";
    const TERMINATING_REPLICAS: bool = true;

    fn has_spec(&self) -> bool {
        self.spec.is_some()
    }

    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }

    fn selector(&self) -> Result<Selector, String> {
        let sel = self
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        Selector::try_from(sel).map_err(|e| e.0)
    }

    fn orphan_selector(&self) -> Option<Selector> {
        self.spec.as_ref().and_then(|s| selector_of(&s.selector))
    }

    fn replica_status(&self) -> ReplicaStatus {
        let s = self.status.clone().unwrap_or_default();
        ReplicaStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            terminating_replicas: s.terminating_replicas,
            observed_generation: s.observed_generation,
            conditions: s.conditions,
        }
    }

    fn with_replica_status(&self, s: &ReplicaStatus) -> Self {
        let mut rs = self.clone();
        rs.status = Some(k8s_openapi::api::apps::v1::ReplicaSetStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            terminating_replicas: s.terminating_replicas,
            observed_generation: s.observed_generation,
            conditions: s.conditions.clone().filter(|c| !c.is_empty()),
        });
        rs
    }
}

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
    #[error("updating status of {kind} {key}: {source}")]
    Status {
        /// `ReplicaSet` or `ReplicationController`.
        kind: String,
        /// The owner.
        key: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The pod informer has no index by controller (a programming error in `run`).
    #[error(transparent)]
    Index(#[from] UnknownIndex),
}

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    run::<ReplicaSet>(ctx, tasks, ctx.options.concurrent_replicaset_syncs)
}

/// The key under which [`POD_CONTROLLER_INDEX`] files a pod with controller `cref` in
/// `namespace` (upstream's `PodControllerIndexKey`): `namespace/Kind/name/uid`, or just
/// `namespace` for an orphan.
pub fn pod_controller_index_key(namespace: &str, cref: Option<&OwnerReference>) -> String {
    match cref {
        Some(r) => format!("{namespace}/{}/{}/{}", r.kind, r.name, r.uid),
        None => namespace.to_string(),
    }
}

/// Adds [`POD_CONTROLLER_INDEX`] to the shared pod informer (once; every controller that
/// asks shares it, as upstream's `AddPodControllerIndexer`).
pub fn add_pod_controller_index(pods: &Store<CachedPod>) {
    pods.add_index(POD_CONTROLLER_INDEX, |pod: &CachedPod| {
        vec![pod_controller_index_key(
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            cu::controller_of(&pod.metadata),
        )]
    });
}

/// Starts the replica-keeping core for owners of kind `K` with `concurrency` workers.
pub fn run<K: ReplicaOwner>(
    ctx: &Context,
    tasks: &mut JoinSet<()>,
    concurrency: usize,
) -> Result<(), StartError> {
    let rs_informer = ctx.informers.informer::<K>();
    let pod_informer = ctx.informers.informer::<CachedPod>();
    let queue: WorkQueue<ObjectKey> = WorkQueue::new(K::QUEUE_NAME, &ctx.metrics);
    let expectations = ControllerExpectations::new();
    let rs_store = rs_informer.store();
    let pod_store = pod_informer.store();
    // Indexes are added before the informers start, so they are complete from the first
    // sync on (and `add_index` builds them from the cache in any case).
    add_pod_controller_index(&pod_store);
    rs_store.add_index(CONTROLLER_UID_INDEX, |o: &K| {
        cu::controller_of(o.meta())
            .map(|r| vec![r.uid.clone()])
            .unwrap_or_default()
    });

    {
        let expectations = expectations.clone();
        enqueue_from(
            tasks,
            rs_informer.subscribe(),
            queue.clone(),
            ctx.shutdown.clone(),
            move |n: &Notification<K>| {
                let key = ObjectKey::of(&**n.object());
                match n {
                    Notification::Deleted(_) => expectations.delete(&key.to_string()),
                    // A ReplicaSet recreated under the same name starts afresh.
                    Notification::Updated { old, new } if old.meta().uid != new.meta().uid => {
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
            move |n: &Notification<CachedPod>| handler.keys(n),
        );
    }

    let sync = Sync {
        client: ctx.client.clone(),
        rs_store: rs_store.clone(),
        pod_store: pod_store.clone(),
        expectations,
        recorder: ctx.recorder(K::CONTROLLER_NAME, tasks),
        burst_replicas: BURST_REPLICAS,
        status_writer: StatusWriter::default(),
    };
    let mut workers = Workers::new(K::QUEUE_NAME, concurrency);
    // Upstream retries a failing ReplicaSet forever (with backoff): a quota raised an hour
    // later must still be noticed without another event.
    workers.max_retries = u32::MAX;
    workers.spawn_when(
        tasks,
        async move {
            rs_store.wait_synced().await;
            pod_store.wait_synced().await;
        },
        queue,
        ctx.shutdown.clone(),
        move |key: ObjectKey| {
            let sync = sync.clone();
            async move { sync.sync(&key).await }
        },
    );
    Ok(())
}

/// Turns pod events into ReplicaSet keys, observing expectations on the way
/// (upstream's `addPod` / `updatePod` / `deletePod`).
struct PodHandler<K> {
    rs_store: Store<K>,
    expectations: ControllerExpectations,
    queue: WorkQueue<ObjectKey>,
}

impl<K: ReplicaOwner> PodHandler<K> {
    fn resolve(&self, namespace: &str, cref: &OwnerReference) -> Option<Arc<K>> {
        if cref.kind != K::kind(&()) {
            return None;
        }
        self.rs_store
            .get(namespace, &cref.name)
            .filter(|rs| rs.meta().uid.as_deref() == Some(cref.uid.as_str()))
    }

    /// ReplicaSets whose selector matches an orphan (`getPodReplicaSets`).
    fn matching(&self, pod: &CachedPod) -> Vec<ObjectKey> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let empty = Default::default();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        self.rs_store
            .list_in(&ns)
            .iter()
            .filter(|rs| rs.orphan_selector().is_some_and(|sel| sel.matches(labels)))
            .map(|rs| ObjectKey::of(&**rs))
            .collect()
    }

    fn deleted(&self, pod: &CachedPod) -> Vec<ObjectKey> {
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

    fn keys(&self, n: &Notification<CachedPod>) -> Vec<ObjectKey> {
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
                        let min_ready = rs.min_ready_seconds();
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

/// The selector as a matcher; `None` when it cannot be parsed or selects nothing useful
/// (an empty selector matches no orphans, as upstream's `getPodReplicaSets` skips it).
pub fn selector_of(sel: &LabelSelector) -> Option<Selector> {
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        return None;
    }
    Selector::try_from(sel.clone()).ok()
}

struct Sync<K> {
    client: kube::Client,
    rs_store: Store<K>,
    pod_store: Store<CachedPod>,
    expectations: ControllerExpectations,
    recorder: Recorder,
    burst_replicas: usize,
    status_writer: StatusWriter,
}

// Not derived: the derive would demand `K: Clone` for no reason (stores are shared handles).
impl<K> Clone for Sync<K> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            rs_store: self.rs_store.clone(),
            pod_store: self.pod_store.clone(),
            expectations: self.expectations.clone(),
            recorder: self.recorder.clone(),
            burst_replicas: self.burst_replicas,
            status_writer: self.status_writer.clone(),
        }
    }
}

impl<K: ReplicaOwner> Sync<K> {
    /// Pods controlled by `rs` and the orphans of its namespace, from the controller index
    /// (upstream's `FilterPodsByOwner(..., includeOrphanedPods=true)`).
    fn pods_of(&self, rs: &K) -> Result<Vec<Arc<CachedPod>>, UnknownIndex> {
        let meta = rs.meta();
        let ns = meta.namespace.as_deref().unwrap_or_default();
        let own = OwnerReference {
            kind: K::kind(&()).into_owned(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            ..OwnerReference::default()
        };
        let mut pods = self.pod_store.by_index(
            POD_CONTROLLER_INDEX,
            &pod_controller_index_key(ns, Some(&own)),
        )?;
        pods.extend(
            self.pod_store
                .by_index(POD_CONTROLLER_INDEX, &pod_controller_index_key(ns, None))?,
        );
        Ok(pods)
    }

    async fn sync(&self, key: &ObjectKey) -> Result<Action, SyncError> {
        let started = std::time::Instant::now();
        let skey = key.to_string();
        let Some(rs) = self.rs_store.get_key(key) else {
            tracing::debug!(replicaset = %key, "deleted");
            self.expectations.delete(&skey);
            return Ok(Action::Done);
        };
        let needs_sync = self.expectations.satisfied(&skey);
        if !rs.has_spec() {
            return Ok(Action::Done);
        }
        let selector = match rs.selector() {
            Ok(s) => s,
            Err(e) => {
                // Bad input: nothing to do until the object changes.
                tracing::warn!(replicaset = %key, error = %e, "invalid selector");
                return Ok(Action::Done);
            }
        };
        let uid = rs.meta().uid.clone().unwrap_or_default();
        // Ours (controller ref to this owner) and orphans: upstream's FilterPodsByOwner.
        let all_pods = self.pods_of(&rs)?;
        let active: Vec<Arc<CachedPod>> = all_pods
            .iter()
            .filter(|p| cu::is_pod_active(p))
            .cloned()
            .collect();
        let owner = Owner::of(&*rs);
        let manager = ControllerRefManager::new(
            self.client.clone(),
            owner.clone(),
            selector.clone(),
            recheck_by_get::<K>(self.client.clone(), &owner),
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

        let manage_err = if needs_sync && rs.meta().deletion_timestamp.is_none() {
            self.manage_replicas(&rs, &skey, &active).await.err()
        } else {
            None
        };

        let now = Timestamp::now();
        let status = calculate_status(&*rs, &active, terminating, manage_err.as_deref(), now);
        let updated = self.update_status(&rs, status).await?;
        tracing::debug!(replicaset = %key, elapsed = ?started.elapsed(), "finished syncing");
        if let Some(e) = manage_err {
            return Err(SyncError::ManageReplicas(e));
        }
        let min_ready = rs.min_ready_seconds();
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
        rs: &K,
        key: &str,
        active: &[Arc<CachedPod>],
    ) -> Result<(), String> {
        let want = rs.replicas();
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
            // Every pod of the batch is the same POST body (generateName names them), so it
            // is built and encoded once rather than once per pod.
            let body = pod_body(rs);
            let (created, err) = slow_start_batch(n, SLOW_START_INITIAL_BATCH_SIZE, || {
                self.create_pod(rs, &body)
            })
            .await;
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

    async fn create_pod(&self, rs: &K, body: &PodBody) -> Result<(), String> {
        let body = match body {
            PodBody::NoSpec => return Ok(()),
            PodBody::Invalid(e) => return Err(e.clone()),
            PodBody::Json(b) => b.clone(),
        };
        let owner = Owner::of(rs);
        match create_pod(&self.client, &owner.namespace, body).await {
            Ok(name) => {
                // Upstream's `CreatePods` logs this at V(4): no line per pod at the default -v=2.
                tracing::trace!(replicaset = %owner.name, pod = %name, "created pod");
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

    async fn delete_pod(&self, rs: &K, key: &str, pod: &CachedPod) -> Result<(), String> {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        // Upstream's `DeletePod` logs this at V(2), which is debug here: a line per pod
        // scaled away is no default-level (info) output.
        tracing::debug!(replicaset = key, pod = %name, "deleting pod");
        match delete_pod(&self.client, &ns, &name).await {
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
    fn indirectly_related_pods(&self, rs: &K) -> Vec<Arc<CachedPod>> {
        let Some(cref) = cu::controller_of(rs.meta()) else {
            return vec![];
        };
        let ns = rs.meta().namespace.clone().unwrap_or_default();
        // The index is added in `run`; without it there are simply no siblings to weigh.
        let siblings = self
            .rs_store
            .by_index(CONTROLLER_UID_INDEX, &cref.uid)
            .unwrap_or_default();
        // An invalid selector matches no pods.
        let selectors: Vec<Selector> = siblings
            .iter()
            .filter(|related| related.meta().namespace.as_deref() == Some(ns.as_str()))
            .filter_map(|related| related.selector().ok())
            .collect();
        if selectors.is_empty() {
            return vec![];
        }
        // One pass over the namespace's pods, each taken once if any sibling selects it
        // (upstream's union of the siblings' pod lists, deduplicated by uid).
        let empty = Default::default();
        let mut pods = self.pod_store.list_in(&ns);
        pods.retain(|pod| {
            let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
            selectors.iter().any(|sel| sel.matches(labels))
        });
        pods
    }

    async fn update_status(
        &self,
        rs: &K,
        mut status: ReplicaStatus,
    ) -> Result<ReplicaStatus, SyncError> {
        let current = rs.replica_status();
        let generation = rs.meta().generation;
        if same_counts(&current, &status) && generation == current.observed_generation {
            return Ok(current);
        }
        // Record the generation acted on, so that a retry never claims a newer spec.
        status.observed_generation = generation;
        let key = cu::meta_key(rs.meta());
        tracing::debug!(
            replicaset = %key,
            replicas = format!("{}->{}", current.replicas, status.replicas),
            ready = format!("{:?}->{:?}", current.ready_replicas, status.ready_replicas),
            available = format!("{:?}->{:?}", current.available_replicas, status.available_replicas),
            "updating status"
        );
        let api: Api<K> = Api::namespaced(
            self.client.clone(),
            rs.meta().namespace.as_deref().unwrap_or_default(),
        );
        // The bootstrap roles `system:controller:replicaset-controller` and
        // `system:controller:replication-controller` grant only `update` on `.../status`:
        // the writer falls back to a PUT of the cached object with the new status.
        let name = rs.meta().name.clone().unwrap_or_default();
        let patch = serde_json::json!({ "status": status_json(&status, K::TERMINATING_REPLICAS) });
        self.status_writer
            .write(&api, &name, &patch, || rs.with_replica_status(&status))
            .await
            .map_err(|source| SyncError::Status {
                kind: K::kind(&()).into_owned(),
                key,
                source,
            })?;
        Ok(status)
    }
}

/// The status as a merge patch: zero counts written explicitly (a merge patch leaves absent
/// fields alone), conditions replaced as a whole. `terminatingReplicas` only for kinds
/// that have it: the apiserver would drop it from a ReplicationController anyway, and a
/// field it does not know must not be sent.
fn status_json(s: &ReplicaStatus, terminating: bool) -> serde_json::Value {
    let mut v = serde_json::json!({
        "replicas": s.replicas,
        "fullyLabeledReplicas": s.fully_labeled_replicas.unwrap_or(0),
        "readyReplicas": s.ready_replicas.unwrap_or(0),
        "availableReplicas": s.available_replicas.unwrap_or(0),
        "observedGeneration": s.observed_generation,
        "conditions": s.conditions.clone().filter(|c| !c.is_empty()),
    });
    if terminating && let Some(obj) = v.as_object_mut() {
        obj.insert(
            "terminatingReplicas".into(),
            serde_json::json!(s.terminating_replicas),
        );
    }
    v
}

fn same_counts(a: &ReplicaStatus, b: &ReplicaStatus) -> bool {
    a.replicas == b.replicas
        && a.fully_labeled_replicas.unwrap_or(0) == b.fully_labeled_replicas.unwrap_or(0)
        && a.ready_replicas.unwrap_or(0) == b.ready_replicas.unwrap_or(0)
        && a.available_replicas.unwrap_or(0) == b.available_replicas.unwrap_or(0)
        && a.terminating_replicas == b.terminating_replicas
        && a.conditions.as_deref().unwrap_or_default()
            == b.conditions.as_deref().unwrap_or_default()
}

/// The POST body of the pods `rs` creates (`GetPodFromTemplate`, encoded).
enum PodBody {
    /// The owner has no spec: nothing to create.
    NoSpec,
    /// The pod cannot be created; the message for the ReplicaFailure condition.
    Invalid(String),
    /// The encoded Pod.
    Json(Vec<u8>),
}

fn pod_body<K: ReplicaOwner>(rs: &K) -> PodBody {
    if !rs.has_spec() {
        return PodBody::NoSpec;
    }
    let empty = PodTemplateSpec::default();
    let template = rs.template().unwrap_or(&empty);
    if cu::labels_empty(template.metadata.as_ref().and_then(|m| m.labels.as_ref())) {
        return PodBody::Invalid("unable to create pods, no labels".into());
    }
    let owner = Owner::of(rs);
    let pod = cu::pod_from_template(template, &owner.name, owner.controller_ref());
    match serde_json::to_vec(&pod) {
        Ok(json) => PodBody::Json(json),
        Err(e) => PodBody::Invalid(e.to_string()),
    }
}

/// The `Accept` of pod creations and deletions: the apiserver answers with the pod's
/// `PartialObjectMetadata` (what client-go's metadata client asks for) rather than the
/// whole Pod, whose spec (containers, the projected service-account volume) and status
/// nobody here reads. That halves the bytes every create and delete brings back through
/// TLS, HTTP/2 and the body buffers. Plain JSON is the fallback the apiserver uses for
/// error Statuses and for a response it cannot convert, so errors read as before.
const METADATA_ONLY: http::HeaderValue = http::HeaderValue::from_static(
    "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json",
);

/// POSTs the encoded pod `body` in `namespace` and returns the name the apiserver gave it.
/// Only the name is read from the response, asked for as metadata only ([`METADATA_ONLY`]);
/// decoding the whole created Pod (as `Api::create` does) cost a few KiB and microseconds
/// per pod for fields nobody looks at.
async fn create_pod(client: &kube::Client, namespace: &str, body: Vec<u8>) -> kube::Result<String> {
    /// The part of the created Pod that is read; serde skips the rest without allocating.
    #[derive(serde::Deserialize)]
    struct Created {
        metadata: CreatedMeta,
    }
    #[derive(serde::Deserialize)]
    struct CreatedMeta {
        name: Option<String>,
    }
    let mut request =
        kube::core::Request::new(<Pod as kube::Resource>::url_path(&(), Some(namespace)))
            .create(&PostParams::default(), body)
            .map_err(kube::Error::BuildRequest)?;
    request
        .headers_mut()
        .insert(http::header::ACCEPT, METADATA_ONLY);
    let created: Created = client.request(request).await?;
    Ok(created.metadata.name.unwrap_or_default())
}

/// Deletes the pod `namespace/name`. The response (the Pod being deleted, as metadata only:
/// [`METADATA_ONLY`]; or a Status) is not decoded: `Api::delete` parses it twice, once into
/// a JSON value and once into a Pod, and nothing here reads it. Failures still come back as
/// `kube::Error::Api`.
async fn delete_pod(client: &kube::Client, namespace: &str, name: &str) -> kube::Result<()> {
    let mut request =
        kube::core::Request::new(<Pod as kube::Resource>::url_path(&(), Some(namespace)))
            .delete(name, &DeleteParams::default())
            .map_err(kube::Error::BuildRequest)?;
    request
        .headers_mut()
        .insert(http::header::ACCEPT, METADATA_ONLY);
    client.request_text(request).await.map(drop)
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
    active: &[Arc<CachedPod>],
    related: &[Arc<CachedPod>],
    n: usize,
    now: Option<Timestamp>,
) -> Vec<Arc<CachedPod>> {
    if n >= active.len() {
        return active.to_vec();
    }
    let node_of = cu::node_name;
    let mut on_node: HashMap<&str, usize> = HashMap::new();
    for p in related.iter().filter(|p| cu::is_pod_active(p)) {
        *on_node.entry(node_of(p)).or_default() += 1;
    }
    let mut ranked: Vec<(usize, DeletionKey<'_>)> = active
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let rank = on_node.get(node_of(pod)).copied().unwrap_or(0);
            (i, DeletionKey::new(&RankedPod { pod, rank }, now))
        })
        .collect();
    // Only the first `n` are wanted: partition around the n-th, then sort those. The order
    // is total (the uid breaks every tie), so they are the first `n` of a full sort, in the
    // same order.
    let by_key = |(_, a): &(usize, DeletionKey<'_>), (_, b): &(usize, DeletionKey<'_>)| a.order(b);
    if n > 0 {
        ranked.select_nth_unstable_by(n - 1, by_key);
    }
    ranked.truncate(n);
    ranked.sort_unstable_by(by_key);
    // Back to the shared handles by position (a search per victim was O(n * active)).
    ranked
        .iter()
        .filter_map(|(i, _)| active.get(*i).cloned())
        .collect()
}

/// Upstream's `calculateStatus`.
fn calculate_status<K: ReplicaOwner>(
    rs: &K,
    active: &[Arc<CachedPod>],
    terminating: usize,
    manage_err: Option<&str>,
    now: Timestamp,
) -> ReplicaStatus {
    let mut status = rs.replica_status();
    // Borrowed, not cloned: this runs over every active pod on every sync.
    let empty = Default::default();
    let template_labels = rs
        .template()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .unwrap_or(&empty);
    let min_ready = rs.min_ready_seconds();
    let (mut fully, mut ready, mut available) = (0, 0, 0);
    for pod in active {
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
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
            let want = i64::from(rs.replicas());
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
    status.terminating_replicas = K::TERMINATING_REPLICAS.then(|| count(terminating));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// The victims are the first `n` of the full deletion order, in that order, with ranks
    /// from the related pods' nodes.
    #[test]
    fn pods_to_delete_are_the_head_of_the_full_ranking() -> anyhow::Result<()> {
        let pod = |i: usize| -> anyhow::Result<Arc<CachedPod>> {
            let node = ["", "n1", "n2", "n3"][i % 4];
            let phase = ["Pending", "Running", "Unknown"][i % 3];
            Ok(Arc::new(serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("p{i}"), "uid": format!("u{:03}", (i * 37) % 101),
                             "creationTimestamp": format!("2020-01-01T00:{:02}:00Z", i % 7)},
                "spec": {"nodeName": node},
                "status": {"phase": phase, "conditions": [
                    {"type": "Ready", "status": if i.is_multiple_of(5) {"False"} else {"True"},
                     "lastTransitionTime": format!("2020-01-02T00:00:{:02}Z", i % 11)}]}
            }))?))
        };
        let active = (0..60).map(pod).collect::<anyhow::Result<Vec<_>>>()?;
        let related: Vec<Arc<CachedPod>> = active.iter().take(45).cloned().collect();
        let now = Some(Timestamp::from_second(1_600_000_000)?);
        let mut on_node: HashMap<&str, usize> = HashMap::new();
        for p in &related {
            *on_node.entry(cu::node_name(p)).or_default() += 1;
        }
        let mut full: Vec<RankedPod<'_>> = active
            .iter()
            .map(|pod| RankedPod {
                pod,
                rank: on_node.get(cu::node_name(pod)).copied().unwrap_or(0),
            })
            .collect();
        cu::sort_for_deletion(&mut full, now);
        let names = |ps: &[&CachedPod]| -> Vec<String> {
            ps.iter()
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect()
        };
        let full: Vec<&CachedPod> = full.iter().map(|r| r.pod).collect();
        for n in [0, 1, 7, 30, 59] {
            let got = pods_to_delete(&active, &related, n, now);
            let got: Vec<&CachedPod> = got.iter().map(|p| &**p).collect();
            assert_eq!(names(&got), names(&full[..n]), "n = {n}");
        }
        assert_eq!(pods_to_delete(&active, &related, 60, now).len(), 60);
        Ok(())
    }

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
    fn pod_controller_index_keys_follow_upstream() {
        let cref = OwnerReference {
            kind: "ReplicaSet".into(),
            name: "web".into(),
            uid: "u-1".into(),
            ..OwnerReference::default()
        };
        assert_eq!(
            pod_controller_index_key("ns", Some(&cref)),
            "ns/ReplicaSet/web/u-1"
        );
        // Orphans are filed under the bare namespace, which no owner key can equal.
        assert_eq!(pod_controller_index_key("ns", None), "ns");
    }

    #[test]
    fn status_patch_has_terminating_replicas_only_where_the_api_does() {
        let s = ReplicaStatus {
            replicas: 2,
            terminating_replicas: Some(1),
            ..ReplicaStatus::default()
        };
        let rs = status_json(&s, true);
        assert_eq!(rs["terminatingReplicas"], serde_json::json!(1));
        assert_eq!(
            rs["readyReplicas"],
            serde_json::json!(0),
            "zeros are explicit"
        );
        let rc = status_json(&s, false);
        assert!(rc.get("terminatingReplicas").is_none(), "{rc}");
    }

    #[test]
    fn status_counts_and_failure_condition() {
        let rs: ReplicaSet = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns", "generation": 2},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}}}},
        }))
        .unwrap_or_default();
        let pod = |labels: serde_json::Value, ready: bool| -> Arc<CachedPod> {
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
        rs2.status = Some(k8s_openapi::api::apps::v1::ReplicaSetStatus {
            replicas: s.replicas,
            conditions: s.conditions.clone(),
            ..Default::default()
        });
        let s2 = calculate_status(&rs2, &active, 0, None, Timestamp::now());
        assert!(s2.conditions.unwrap_or_default().is_empty());
    }
}
