//! `deployment-controller`: rolls Deployments out through ReplicaSets.
//!
//! Upstream's `DeploymentController` (`pkg/controller/deployment`), split as upstream
//! splits it:
//!
//! ```text
//!   Deployment / ReplicaSet / Pod events ──▶ queue of Deployment keys
//!        │ sync(key)
//!        ▼
//!   claim ReplicaSets (adopt / release) ─▶ paused? rollback? scaling event?
//!        │                    │               │           │
//!        │                    ▼               ▼           ▼
//!        │               sync.rs (scale, status)   rollback.rs
//!        ▼
//!   rolling.rs (maxSurge / maxUnavailable) or recreate.rs (down, wait, up)
//!        ▼
//!   progress.rs: Progressing / Available / ReplicaFailure conditions, deadline requeue
//! ```
//!
//! ReplicaSets are written with merge patches carrying the cached resourceVersion (a stale
//! cache fails and retries instead of overwriting), the Deployment's status and revision
//! annotation with merge patches on the status subresource — or PUTs, where RBAC allows
//! only update (`crate::status_writer`).

mod hash;
mod progress;
mod recreate;
mod rollback;
mod rolling;
mod sync;
pub mod util;

pub use hash::compute_hash;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::transform::CachedPod;
use ferrokube_runtime::controller::{Action, Workers, enqueue_from};
use ferrokube_runtime::events::{self, EventType, Recorder};
use ferrokube_runtime::informer::{Notification, ObjectKey, Store};
use ferrokube_runtime::workqueue::WorkQueue;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use tokio::task::JoinSet;

use super::StartError;
use crate::context::Context;
use crate::controller_ref::{ClaimError, ControllerRefManager, Owner, recheck_by_get};
use crate::controller_utils::controller_of;
use crate::status_writer::{StatusWriter, Target};
use util::{d_replicas, max_surge, rs_replicas};

const CONTROLLER_NAME: &str = "deployment-controller";

/// Why a sync failed (the key is retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An apiserver write failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being written.
        what: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// Adopting or releasing ReplicaSets failed.
    #[error(transparent)]
    Claim(#[from] ClaimError),
    /// The Deployment cannot be acted on as it is.
    #[error("{0}")]
    Invalid(String),
}

fn api_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> SyncError {
    let what = what.into();
    move |source| SyncError::Api { what, source }
}

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let d_informer = ctx.informers.informer::<Deployment>();
    let rs_informer = ctx.informers.informer::<ReplicaSet>();
    let pod_informer = ctx.informers.informer::<CachedPod>();
    let queue: WorkQueue<ObjectKey> = WorkQueue::new("deployment", &ctx.metrics);
    let (d_store, rs_store, pod_store) = (
        d_informer.store(),
        rs_informer.store(),
        pod_informer.store(),
    );

    enqueue_from(
        tasks,
        d_informer.subscribe(),
        queue.clone(),
        ctx.shutdown.clone(),
        |n: &Notification<Deployment>| vec![ObjectKey::of(&**n.object())],
    );
    {
        let d_store = d_store.clone();
        enqueue_from(
            tasks,
            rs_informer.subscribe(),
            queue.clone(),
            ctx.shutdown.clone(),
            move |n: &Notification<ReplicaSet>| replica_set_keys(&d_store, n),
        );
    }
    {
        let (d_store, rs_store) = (d_store.clone(), rs_store.clone());
        enqueue_from(
            tasks,
            pod_informer.subscribe(),
            queue.clone(),
            ctx.shutdown.clone(),
            move |n: &Notification<CachedPod>| match n {
                // Recreate waits for old pods to be gone; their deletion moves it on.
                Notification::Deleted(pod) => deployment_for_pod(&d_store, &rs_store, pod)
                    .filter(|d| util::strategy_type(d) == "Recreate")
                    .map(|d| ObjectKey::of(&*d))
                    .into_iter()
                    .collect(),
                _ => vec![],
            },
        );
    }

    let dc = DeploymentController {
        client: ctx.client.clone(),
        d_store: d_store.clone(),
        rs_store: rs_store.clone(),
        pod_store: pod_store.clone(),
        recorder: ctx.recorder(CONTROLLER_NAME, tasks),
        status_writer: StatusWriter::new(Target::Status),
        object_writer: StatusWriter::new(Target::Object),
    };
    let workers = Workers::new("deployment", ctx.options.concurrent_deployment_syncs);
    workers.spawn_when(
        tasks,
        async move {
            d_store.wait_synced().await;
            rs_store.wait_synced().await;
            pod_store.wait_synced().await;
        },
        queue,
        ctx.shutdown.clone(),
        move |key: ObjectKey| {
            let dc = dc.clone();
            async move { dc.sync_deployment(&key).await }
        },
    );
    Ok(())
}

fn resolve(store: &Store<Deployment>, ns: &str, r: &OwnerReference) -> Option<Arc<Deployment>> {
    if r.kind != "Deployment" {
        return None;
    }
    store
        .get(ns, &r.name)
        .filter(|d| d.metadata.uid.as_deref() == Some(r.uid.as_str()))
}

/// Deployments whose selector matches an orphan ReplicaSet (`getDeploymentsForReplicaSet`).
fn matching_deployments(store: &Store<Deployment>, rs: &ReplicaSet) -> Vec<ObjectKey> {
    let Some(labels) = rs.metadata.labels.as_ref().filter(|l| !l.is_empty()) else {
        return vec![];
    };
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    store
        .list_in(&ns)
        .iter()
        .filter(|d| {
            d.spec
                .as_ref()
                .and_then(|s| non_empty_selector(&s.selector))
                .is_some_and(|sel| sel.matches(labels))
        })
        .map(|d| ObjectKey::of(&**d))
        .collect()
}

fn non_empty_selector(sel: &LabelSelector) -> Option<Selector> {
    if selects_everything(sel) {
        return None;
    }
    Selector::try_from(sel.clone()).ok()
}

fn selects_everything(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// upstream's `addReplicaSet` / `updateReplicaSet` / `deleteReplicaSet`.
fn replica_set_keys(store: &Store<Deployment>, n: &Notification<ReplicaSet>) -> Vec<ObjectKey> {
    let resolve_of = |rs: &ReplicaSet| {
        let ns = rs.metadata.namespace.clone().unwrap_or_default();
        controller_of(&rs.metadata).and_then(|r| resolve(store, &ns, r))
    };
    match n {
        Notification::Added(rs) => {
            if rs.metadata.deletion_timestamp.is_some() || controller_of(&rs.metadata).is_some() {
                return resolve_of(rs)
                    .map(|d| ObjectKey::of(&*d))
                    .into_iter()
                    .collect();
            }
            matching_deployments(store, rs)
        }
        Notification::Updated { old, new } => {
            if old.metadata.resource_version == new.metadata.resource_version {
                return vec![];
            }
            let (old_ref, cur_ref) = (controller_of(&old.metadata), controller_of(&new.metadata));
            let mut keys = Vec::new();
            if old_ref != cur_ref
                && let Some(d) = resolve_of(old)
            {
                keys.push(ObjectKey::of(&*d));
            }
            if cur_ref.is_some() {
                keys.extend(resolve_of(new).map(|d| ObjectKey::of(&*d)));
                return keys;
            }
            if old.metadata.labels != new.metadata.labels || old_ref != cur_ref {
                keys.extend(matching_deployments(store, new));
            }
            keys
        }
        Notification::Deleted(rs) => resolve_of(rs)
            .map(|d| ObjectKey::of(&*d))
            .into_iter()
            .collect(),
    }
}

fn deployment_for_pod(
    d_store: &Store<Deployment>,
    rs_store: &Store<ReplicaSet>,
    pod: &CachedPod,
) -> Option<Arc<Deployment>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let r = controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet")?;
    let rs = rs_store
        .get(&ns, &r.name)
        .filter(|rs| rs.metadata.uid.as_deref() == Some(r.uid.as_str()))?;
    let dr = controller_of(&rs.metadata)?;
    resolve(d_store, &ns, dr)
}

#[derive(Clone)]
pub(crate) struct DeploymentController {
    client: kube::Client,
    d_store: Store<Deployment>,
    rs_store: Store<ReplicaSet>,
    pod_store: Store<CachedPod>,
    recorder: Recorder,
    /// Status writes: a merge patch, or a PUT where RBAC allows only update.
    status_writer: StatusWriter,
    /// Writes of the Deployment itself (rollback): the role allows `update`, not `patch`,
    /// on `deployments` either.
    object_writer: StatusWriter,
}

impl DeploymentController {
    /// upstream's `syncDeployment`.
    async fn sync_deployment(&self, key: &ObjectKey) -> Result<Action, SyncError> {
        let started = std::time::Instant::now();
        let Some(cached) = self.d_store.get_key(key) else {
            tracing::debug!(deployment = %key, "deployment has been deleted");
            return Ok(Action::Done);
        };
        let mut d = (*cached).clone();
        let selector = d
            .spec
            .as_ref()
            .map(|s| s.selector.clone())
            .unwrap_or_default();
        if selects_everything(&selector) {
            // Bad input: say so on the object, and record that this generation was seen.
            self.event(
                &d,
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.".into(),
            );
            let mut status = util::d_status(&d);
            if status.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
                status.observed_generation = d.metadata.generation;
                d.status = Some(status);
                self.update_status(&mut d).await?;
            }
            return Ok(Action::Done);
        }
        let rs_list = self.get_replica_sets_for_deployment(&d, &selector).await?;
        let result = if d.metadata.deletion_timestamp.is_some() {
            self.sync_status_only(&mut d, &rs_list).await
        } else {
            self.check_paused_conditions(&mut d).await?;
            if util::paused(&d) {
                self.sync(&mut d, &rs_list).await
            } else if rollback::get_rollback_to(&d).is_some() {
                self.rollback(&mut d, &rs_list).await
            } else if self.is_scaling_event(&mut d, &rs_list).await? {
                self.sync(&mut d, &rs_list).await
            } else {
                match util::strategy_type(&d) {
                    "Recreate" => self.rollout_recreate(&mut d, &rs_list).await,
                    "RollingUpdate" => self.rollout_rolling(&mut d, &rs_list).await,
                    other => Err(SyncError::Invalid(format!(
                        "unexpected deployment strategy type: {other}"
                    ))),
                }
            }
        };
        tracing::debug!(deployment = %key, elapsed = ?started.elapsed(), "finished syncing deployment");
        result
    }

    /// ReplicaSets this Deployment controls, after adopting matching orphans and releasing
    /// those that no longer match (`getReplicaSetsForDeployment`).
    async fn get_replica_sets_for_deployment(
        &self,
        d: &Deployment,
        selector: &LabelSelector,
    ) -> Result<Vec<ReplicaSet>, SyncError> {
        let selector = Selector::try_from(selector.clone())
            .map_err(|e| SyncError::Invalid(format!("invalid selector: {}", e.0)))?;
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let candidates: Vec<Arc<ReplicaSet>> = self
            .rs_store
            .list_in(&ns)
            .into_iter()
            .filter(|rs| controller_of(&rs.metadata).is_none_or(|r| r.uid == uid))
            .collect();
        let owner = Owner::of(d);
        let manager = ControllerRefManager::new(
            self.client.clone(),
            owner.clone(),
            selector,
            recheck_by_get::<Deployment>(self.client.clone(), &owner),
        );
        let (claimed, err) = manager.claim(candidates).await;
        if let Some(e) = err {
            return Err(e.into());
        }
        Ok(claimed.into_iter().map(|rs| (*rs).clone()).collect())
    }

    /// Pods of the Deployment's ReplicaSets, by ReplicaSet uid (`getPodMapForDeployment`).
    fn pod_map(
        &self,
        d: &Deployment,
        rs_list: &[ReplicaSet],
    ) -> BTreeMap<String, Vec<Arc<CachedPod>>> {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let selector = d
            .spec
            .as_ref()
            .and_then(|s| Selector::try_from(s.selector.clone()).ok());
        let mut map: BTreeMap<String, Vec<Arc<CachedPod>>> = rs_list
            .iter()
            .filter_map(|rs| rs.metadata.uid.clone())
            .map(|u| (u, Vec::new()))
            .collect();
        let Some(selector) = selector else {
            return map;
        };
        let empty = BTreeMap::new();
        for pod in self.pod_store.list_in(&ns) {
            if !selector.matches(pod.metadata.labels.as_ref().unwrap_or(&empty)) {
                continue;
            }
            if let Some(r) = controller_of(&pod.metadata)
                && let Some(list) = map.get_mut(&r.uid)
            {
                list.push(pod.clone());
            }
        }
        map
    }

    fn event(&self, d: &Deployment, type_: EventType, reason: &str, note: String) {
        self.recorder
            .publish(events::reference(d), type_, reason, "Scaling", note);
    }

    /// Writes the Deployment's status (and its revision annotation, which the status
    /// subresource also accepts) with a merge patch. Counts are written even when zero:
    /// a merge patch leaves absent fields as they were.
    ///
    /// The bootstrap role `system:controller:deployment-controller` grants only `update`
    /// on `deployments/status`, so under `--use-service-account-credentials` the writer
    /// falls back to a PUT of `d` (the cached object with the new status and annotation,
    /// as upstream's `UpdateStatus`). `d` then takes the stored resourceVersion, so that a
    /// second write in the same sync (upstream reassigns `d` after each write) is not
    /// refused as a conflict with our own first one.
    async fn update_status(&self, d: &mut Deployment) -> Result<(), SyncError> {
        let s = util::normalize(d.status.clone().unwrap_or_default());
        let revision = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(util::REVISION_ANNOTATION));
        let mut patch = serde_json::json!({ "status": status_json(&s) });
        if let Some(rev) = revision {
            patch["metadata"] =
                serde_json::json!({ "annotations": { util::REVISION_ANNOTATION: rev } });
        }
        let name = d.metadata.name.clone().unwrap_or_default();
        let written = self
            .status_writer
            .write(&self.deployments(d), &name, &patch, || {
                let mut put = d.clone();
                put.status = Some(s.clone());
                put
            })
            .await
            .map_err(api_err(format!("updating status of deployment {name}")))?;
        d.metadata.resource_version = written.metadata.resource_version;
        Ok(())
    }

    fn deployments(&self, d: &Deployment) -> Api<Deployment> {
        Api::namespaced(
            self.client.clone(),
            d.metadata.namespace.as_deref().unwrap_or_default(),
        )
    }

    fn replica_sets(&self, ns: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// upstream's `scaleReplicaSet`: sets the size and the replicas annotations in one
    /// merge patch guarded by the cached resourceVersion. Returns whether the size changed
    /// and the ReplicaSet as written.
    async fn scale_replica_set(
        &self,
        rs: &ReplicaSet,
        new_scale: i32,
        d: &Deployment,
        force: bool,
    ) -> Result<(bool, ReplicaSet), SyncError> {
        let old_scale = rs_replicas(rs);
        if !force && old_scale == new_scale {
            return Ok((false, rs.clone()));
        }
        let (desired, max) = (d_replicas(d), d_replicas(d) + max_surge(d));
        let size_changed = old_scale != new_scale;
        if !size_changed && !util::replicas_annotations_need_update(rs, desired, max) {
            return Ok((false, rs.clone()));
        }
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = serde_json::json!({
            "metadata": {
                "resourceVersion": rs.metadata.resource_version,
                "annotations": {
                    util::DESIRED_REPLICAS_ANNOTATION: desired.to_string(),
                    util::MAX_REPLICAS_ANNOTATION: max.to_string(),
                },
            },
            "spec": { "replicas": new_scale },
        });
        let updated = self
            .replica_sets(rs.metadata.namespace.as_deref().unwrap_or_default())
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(api_err(format!("scaling replica set {name}")))?;
        if size_changed {
            let op = if old_scale < new_scale { "up" } else { "down" };
            self.event(
                d,
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled {op} replica set {name} from {old_scale} to {new_scale}"),
            );
        }
        Ok((size_changed, updated))
    }
}

/// The status as a merge patch body.
fn status_json(s: &DeploymentStatus) -> serde_json::Value {
    serde_json::json!({
        "observedGeneration": s.observed_generation.unwrap_or(0),
        "replicas": s.replicas.unwrap_or(0),
        "updatedReplicas": s.updated_replicas.unwrap_or(0),
        "readyReplicas": s.ready_replicas.unwrap_or(0),
        "availableReplicas": s.available_replicas.unwrap_or(0),
        "unavailableReplicas": s.unavailable_replicas.unwrap_or(0),
        "terminatingReplicas": s.terminating_replicas,
        "collisionCount": s.collision_count,
        "conditions": s.conditions.clone().filter(|c| !c.is_empty()),
    })
}
