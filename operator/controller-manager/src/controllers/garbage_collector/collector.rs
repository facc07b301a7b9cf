//! The attempt-to-delete and attempt-to-orphan workers (upstream's `garbagecollector.go`
//! and `operations.go`).
//!
//! Workers never trust the graph for a destructive decision: the item and each of its
//! owners are read live (metadata only) first, and every delete carries the uid the graph
//! knows as a precondition, so an object re-created under the same name is never touched.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ferrokube_runtime::apierrors;
use ferrokube_runtime::events::{EventType as EventSeverity, Recorder};
use ferrokube_runtime::workqueue::WorkQueue;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::ApiResource;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::graph::{
    Effect, FINALIZER_DELETE_DEPENDENTS, FINALIZER_ORPHAN_DEPENDENTS, Graph, GraphEvent, Identity,
    Node, absent_keys, has_finalizer,
};
use crate::controllers::resource_discovery::Discovered;

/// How often a conflicting finalizer removal is retried at once (client-go's
/// `retry.DefaultBackoff.Steps`).
const UPDATE_MAX_RETRIES: usize = 4;

/// Why handling an item stopped.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The item (or the owner it stands for) is absent; a virtual delete event was queued.
    #[error("enqueued virtual delete event")]
    EnqueuedVirtualDelete,
    /// A cluster-scoped object names a namespaced owner: never valid, never retried.
    #[error("cluster-scoped objects cannot refer to namespaced owners")]
    NamespacedOwnerOfClusterScopedObject,
    /// apiVersion/kind is not served (yet): retried after the next discovery.
    #[error("unable to get REST mapping for {kind}.{api_version}")]
    RestMapping {
        /// The kind.
        kind: String,
        /// The apiVersion.
        api_version: String,
    },
    /// An apiserver call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// Conflicts kept coming.
    #[error(
        "updateMaxRetries({UPDATE_MAX_RETRIES}) has reached. The garbage collector will retry later for owner {0}"
    )]
    TooManyConflicts(Box<Identity>),
    /// Orphaning some dependents failed.
    #[error("failed to orphan dependents of owner {owner}, got errors: {errors}")]
    Orphan {
        /// The owner.
        owner: Box<Identity>,
        /// The failures.
        errors: String,
    },
}

/// What a worker does with an item after handling it.
enum ItemAction {
    Forget,
    Requeue,
}

/// The garbage collector's shared state.
pub(super) struct Collector {
    pub(super) client: kube::Client,
    pub(super) graph: Mutex<Graph>,
    /// The latest discovery, for apiVersion/kind -> resource mapping.
    pub(super) mapper: RwLock<Arc<Discovered>>,
    pub(super) attempt_to_delete: WorkQueue<String>,
    pub(super) attempt_to_orphan: WorkQueue<String>,
    pub(super) graph_changes: mpsc::UnboundedSender<GraphEvent>,
    pub(super) recorder: Recorder,
}

impl Collector {
    fn graph(&self) -> std::sync::MutexGuard<'_, Graph> {
        self.graph.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Carries out what the graph builder asked for.
    pub(super) fn apply(&self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::AttemptToDelete(uid) => self.attempt_to_delete.add(uid),
                Effect::AttemptToDeleteRateLimited(uid) => {
                    self.attempt_to_delete.add_rate_limited(uid);
                }
                Effect::AttemptToOrphan(uid) => self.attempt_to_orphan.add(uid),
                Effect::InvalidNamespaceOwnerRef { dependent, owner } => {
                    tracing::info!(item = %dependent, owner = %owner, "item references an owner but does not match namespaces");
                    self.recorder.publish(
                        ObjectReference {
                            api_version: Some(dependent.api_version.clone()),
                            kind: Some(dependent.kind.clone()),
                            namespace: Some(dependent.namespace.clone()),
                            name: Some(dependent.name.clone()),
                            uid: Some(dependent.uid.clone()),
                            ..ObjectReference::default()
                        },
                        EventSeverity::Warning,
                        "OwnerRefInvalidNamespace",
                        "GarbageCollect",
                        format!(
                            "ownerRef {owner} does not exist in namespace {:?}",
                            dependent.namespace
                        ),
                    );
                }
            }
        }
    }

    /// Spawns `count` workers for each queue (attempt-to-delete, attempt-to-orphan). Not
    /// `runtime::controller::Workers`: upstream's collector requeues an item with backoff
    /// for as long as it needs (waiting on dependents is not an error), never dropping it.
    pub(super) fn spawn_workers(
        self: &Arc<Self>,
        tasks: &mut JoinSet<()>,
        count: usize,
        shutdown: &CancellationToken,
    ) {
        for _ in 0..count.max(1) {
            for orphan in [false, true] {
                let gc = self.clone();
                let stop = shutdown.clone();
                tasks.spawn(async move {
                    let queue = if orphan {
                        &gc.attempt_to_orphan
                    } else {
                        &gc.attempt_to_delete
                    };
                    loop {
                        let uid = tokio::select! {
                            () = stop.cancelled() => return,
                            uid = queue.get() => uid,
                        };
                        let Some(uid) = uid else { return };
                        let action = if orphan {
                            gc.attempt_to_orphan_worker(&uid).await
                        } else {
                            gc.attempt_to_delete_worker(&uid).await
                        };
                        match action {
                            ItemAction::Forget => queue.forget(&uid),
                            ItemAction::Requeue => queue.add_rate_limited(uid.clone()),
                        }
                        queue.done(&uid);
                    }
                });
            }
        }
    }

    async fn attempt_to_delete_worker(&self, uid: &str) -> ItemAction {
        let Some(item) = self.graph().get(uid).cloned() else {
            return ItemAction::Forget;
        };
        match self.attempt_to_delete_item(&item).await {
            Err(GcError::EnqueuedVirtualDelete | GcError::NamespacedOwnerOfClusterScopedObject) => {
                ItemAction::Forget
            }
            Err(e @ GcError::RestMapping { .. }) => {
                tracing::debug!(item = %item.identity, error = %e, "error syncing item");
                ItemAction::Requeue
            }
            Err(e) => {
                tracing::warn!(item = %item.identity, error = %e, "error syncing item");
                ItemAction::Requeue
            }
            // A virtual node that exists but is not observed yet: look again until an
            // informer reports it (or it turns out absent).
            Ok(()) if item.virtual_ => ItemAction::Requeue,
            Ok(()) => ItemAction::Forget,
        }
    }

    fn virtual_delete(&self, identity: &Identity) -> GcError {
        // The receiver lives as long as the controller; at shutdown losing this is fine.
        let _ = self
            .graph_changes
            .send(GraphEvent::virtual_delete(identity));
        GcError::EnqueuedVirtualDelete
    }

    /// upstream's `attemptToDeleteItem`.
    async fn attempt_to_delete_item(&self, item: &Node) -> Result<(), GcError> {
        if item.being_deleted && !item.deleting_dependents {
            tracing::debug!(item = %item.identity, "processing item returned at once, because its DeletionTimestamp is non-nil");
            return Ok(());
        }
        let latest = match self.get_object(&item.identity).await {
            Ok(m) => m,
            Err(GcError::Kube(e)) if apierrors::is_not_found(&e) => {
                tracing::debug!(item = %item.identity, "item not found, generating a virtual delete event");
                return Err(self.virtual_delete(&item.identity));
            }
            Err(e) => return Err(e),
        };
        if latest.uid.as_deref() != Some(item.identity.uid.as_str()) {
            tracing::debug!(item = %item.identity, "UID doesn't match, item not found, generating a virtual delete event");
            return Err(self.virtual_delete(&item.identity));
        }
        if item.deleting_dependents {
            return self.process_deleting_dependents_item(item).await;
        }
        let refs = latest.owner_references.clone().unwrap_or_default();
        if refs.is_empty() {
            return Ok(());
        }

        let (mut solid, mut dangling, mut waiting) = (Vec::new(), Vec::new(), Vec::new());
        for r in refs {
            match self.is_dangling(&r, item).await? {
                None => dangling.push(r),
                Some(owner) => {
                    if owner.deletion_timestamp.is_some()
                        && has_finalizer(&owner, FINALIZER_DELETE_DEPENDENTS)
                    {
                        waiting.push(r);
                    } else {
                        solid.push(r);
                    }
                }
            }
        }
        tracing::debug!(item = %item.identity, solid = solid.len(), dangling = dangling.len(), waiting = waiting.len(), "classified references");

        if !solid.is_empty() {
            if dangling.is_empty() && waiting.is_empty() {
                return Ok(());
            }
            // Still owned: only the references to absent owners and to owners deleting
            // in the foreground are dropped.
            let drop: Vec<&str> = dangling
                .iter()
                .chain(&waiting)
                .map(|r| r.uid.as_str())
                .collect();
            tracing::debug!(item = %item.identity, ?drop, "removing references to dangling and waiting owners");
            return self.delete_owner_refs(&item.identity, &drop).await;
        }

        let has_dependents = !self.graph().dependents(&item.identity.uid).is_empty();
        if !waiting.is_empty() && has_dependents {
            // Deleting this item in the foreground while it has dependents; if one of them
            // is itself waiting for this item, unblock it first or both wait forever.
            let dep_deleting = self
                .graph()
                .dependents(&item.identity.uid)
                .iter()
                .any(|d| d.deleting_dependents);
            if dep_deleting {
                tracing::debug!(item = %item.identity, "unblocking owner references: a dependent is deleting its dependents");
                self.unblock_owner_refs(&item.identity).await?;
            }
            return self
                .delete_object(
                    &item.identity,
                    latest.resource_version.as_deref(),
                    latest.owner_references.as_deref(),
                    PropagationPolicy::Foreground,
                )
                .await;
        }

        let policy = if has_finalizer(&latest, FINALIZER_ORPHAN_DEPENDENTS) {
            PropagationPolicy::Orphan
        } else if has_finalizer(&latest, FINALIZER_DELETE_DEPENDENTS) {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        tracing::info!(item = %item.identity, ?policy, "deleting item");
        self.delete_object(
            &item.identity,
            latest.resource_version.as_deref(),
            latest.owner_references.as_deref(),
            policy,
        )
        .await
    }

    /// upstream's `isDangling`: `None` if the owner is absent (or is another object with
    /// the same name), else the owner's live metadata.
    async fn is_dangling(
        &self,
        r: &OwnerReference,
        item: &Node,
    ) -> Result<Option<ObjectMeta>, GcError> {
        let [cluster_key, ns_key] = absent_keys(r, &item.identity.namespace);
        {
            let mut g = self.graph();
            if g.absent_owners.has(&cluster_key) || g.absent_owners.has(&ns_key) {
                return Ok(None);
            }
        }
        let (resource, namespaced) = self.resolve(&r.api_version, &r.kind)?;
        if item.identity.namespace.is_empty() && namespaced {
            tracing::info!(item = %item.identity, owner = %ns_key, "cluster-scoped item has a namespaced owner; ignoring");
            return Err(GcError::NamespacedOwnerOfClusterScopedObject);
        }
        let absent_key = if namespaced { ns_key } else { cluster_key };
        let api = self.api(
            &resource,
            namespaced.then_some(item.identity.namespace.as_str()),
        );
        match api.get_metadata_opt(&r.name).await? {
            None => {
                tracing::debug!(item = %item.identity, owner = %absent_key, "item's owner is not found");
                self.graph().absent_owners.add(absent_key);
                Ok(None)
            }
            Some(owner) if owner.metadata.uid.as_deref() != Some(r.uid.as_str()) => {
                tracing::debug!(item = %item.identity, owner = %absent_key, "item's owner is not found, UID mismatch");
                self.graph().absent_owners.add(absent_key);
                Ok(None)
            }
            Some(owner) => Ok(Some(owner.metadata)),
        }
    }

    /// upstream's `processDeletingDependentsItem`.
    async fn process_deleting_dependents_item(&self, item: &Node) -> Result<(), GcError> {
        let blocking: Vec<(String, bool)> = self
            .graph()
            .blocking_dependents(&item.identity.uid)
            .iter()
            .map(|d| (d.identity.uid.clone(), d.deleting_dependents))
            .collect();
        if blocking.is_empty() {
            tracing::debug!(item = %item.identity, "removing foregroundDeletion finalizer: no blocking dependents remain");
            return self
                .remove_finalizer(&item.identity, FINALIZER_DELETE_DEPENDENTS)
                .await;
        }
        for (uid, deleting) in blocking {
            if !deleting {
                self.attempt_to_delete.add(uid);
            }
        }
        Ok(())
    }

    async fn attempt_to_orphan_worker(&self, uid: &str) -> ItemAction {
        let (owner, dependents) = {
            let g = self.graph();
            let Some(owner) = g.get(uid) else {
                return ItemAction::Forget;
            };
            let deps: Vec<Identity> = g
                .dependents(uid)
                .iter()
                .map(|d| d.identity.clone())
                .collect();
            (owner.identity.clone(), deps)
        };
        if let Err(e) = self.orphan_dependents(&owner, &dependents).await {
            tracing::warn!(owner = %owner, error = %e, "orphanDependents failed");
            return ItemAction::Requeue;
        }
        if let Err(e) = self
            .remove_finalizer(&owner, FINALIZER_ORPHAN_DEPENDENTS)
            .await
        {
            tracing::warn!(owner = %owner, error = %e, "removeOrphanFinalizer failed");
            return ItemAction::Requeue;
        }
        ItemAction::Forget
    }

    /// upstream's `orphanDependents`: removes the owner's reference from every dependent,
    /// all at once.
    async fn orphan_dependents(&self, owner: &Identity, deps: &[Identity]) -> Result<(), GcError> {
        let results =
            futures::future::join_all(deps.iter().map(|d| async move {
                (d, self.delete_owner_refs(d, &[owner.uid.as_str()]).await)
            }))
            .await;
        let errors: Vec<String> = results
            .into_iter()
            .filter_map(|(d, r)| match r {
                Ok(()) | Err(GcError::EnqueuedVirtualDelete) => None,
                Err(GcError::Kube(e)) if apierrors::is_not_found(&e) => None,
                Err(e) => Some(format!("orphaning {d} failed, {e}")),
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(GcError::Orphan {
                owner: Box::new(owner.clone()),
                errors: errors.join(", "),
            })
        }
    }

    // === Operations (upstream's operations.go and patch.go) ===

    /// The resource serving `api_version`/`kind` and whether it is namespaced.
    fn resolve(&self, api_version: &str, kind: &str) -> Result<(ApiResource, bool), GcError> {
        let mapper = self
            .mapper
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        mapper
            .resolve(api_version, kind)
            .map(|r| (r.resource.clone(), r.namespaced))
            .ok_or_else(|| GcError::RestMapping {
                kind: kind.to_string(),
                api_version: api_version.to_string(),
            })
    }

    fn api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// The API for the object `id` names.
    fn api_for(&self, id: &Identity) -> Result<Api<DynamicObject>, GcError> {
        let (resource, namespaced) = self.resolve(&id.api_version, &id.kind)?;
        if namespaced && id.namespace.is_empty() {
            return Err(GcError::NamespacedOwnerOfClusterScopedObject);
        }
        Ok(self.api(&resource, namespaced.then_some(id.namespace.as_str())))
    }

    /// upstream's `getObject`: the live metadata.
    async fn get_object(&self, id: &Identity) -> Result<ObjectMeta, GcError> {
        let api = self.api_for(id)?;
        Ok(api.get_metadata(&id.name).await?.metadata)
    }

    /// upstream's `deleteObject`: deletes with uid (and resourceVersion) preconditions. If
    /// only the resourceVersion moved and the owner references are unchanged, the decision
    /// still holds and the delete is retried with the uid precondition alone.
    async fn delete_object(
        &self,
        id: &Identity,
        resource_version: Option<&str>,
        owners_at_version: Option<&[OwnerReference]>,
        policy: PropagationPolicy,
    ) -> Result<(), GcError> {
        let api = self.api_for(id)?;
        let params = |rv: Option<&str>| DeleteParams {
            propagation_policy: Some(policy.clone()),
            preconditions: Some(Preconditions {
                uid: Some(id.uid.clone()),
                resource_version: rv.map(ToString::to_string),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&id.name, &params(resource_version)).await {
            Ok(_) => Ok(()),
            Err(e) if apierrors::is_not_found(&e) => Err(self.virtual_delete(id)),
            Err(e) if apierrors::is_conflict(&e) && resource_version.is_some() => {
                let live = match api.get_metadata_opt(&id.name).await? {
                    None => return Err(self.virtual_delete(id)),
                    Some(live) => live.metadata,
                };
                if live.uid.as_deref() == Some(id.uid.as_str())
                    && live.resource_version.as_deref() != resource_version
                    && live.owner_references.as_deref().unwrap_or_default()
                        == owners_at_version.unwrap_or_default()
                {
                    return match api.delete(&id.name, &params(None)).await {
                        Ok(_) => Ok(()),
                        Err(e) if apierrors::is_not_found(&e) => Err(self.virtual_delete(id)),
                        Err(e) => Err(e.into()),
                    };
                }
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `meta`'s owner references (read at `meta.resourceVersion`) back as
    /// `new_refs`. A JSON merge patch replaces the whole list, so it carries the
    /// resourceVersion and uid it was computed from: a concurrent change fails it with a
    /// conflict instead of being overwritten.
    async fn patch_owner_refs(
        &self,
        api: &Api<DynamicObject>,
        id: &Identity,
        meta: &ObjectMeta,
        new_refs: Vec<OwnerReference>,
    ) -> Result<(), kube::Error> {
        let patch = serde_json::json!({
            "metadata": {
                "ownerReferences": new_refs,
                "uid": id.uid,
                "resourceVersion": meta.resource_version,
            }
        });
        api.patch_metadata(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
    }

    /// Removes the references to `owner_uids` from the live object `id`.
    async fn delete_owner_refs(&self, id: &Identity, owner_uids: &[&str]) -> Result<(), GcError> {
        let api = self.api_for(id)?;
        let Some(live) = api.get_metadata_opt(&id.name).await? else {
            return Err(self.virtual_delete(id));
        };
        let meta = live.metadata;
        if meta.uid.as_deref() != Some(id.uid.as_str()) {
            return Err(self.virtual_delete(id));
        }
        let refs = meta.owner_references.clone().unwrap_or_default();
        let kept: Vec<OwnerReference> = refs
            .iter()
            .filter(|r| !owner_uids.contains(&r.uid.as_str()))
            .cloned()
            .collect();
        if kept.len() == refs.len() {
            return Ok(());
        }
        Ok(self.patch_owner_refs(&api, id, &meta, kept).await?)
    }

    /// upstream's `unblockOwnerReferences`: sets blockOwnerDeletion to false on every
    /// reference of `id` that has it true.
    async fn unblock_owner_refs(&self, id: &Identity) -> Result<(), GcError> {
        let api = self.api_for(id)?;
        let Some(live) = api.get_metadata_opt(&id.name).await? else {
            return Err(self.virtual_delete(id));
        };
        let meta = live.metadata;
        if meta.uid.as_deref() != Some(id.uid.as_str()) {
            return Err(self.virtual_delete(id));
        }
        let mut refs = meta.owner_references.clone().unwrap_or_default();
        if !refs.iter().any(|r| r.block_owner_deletion == Some(true)) {
            return Ok(());
        }
        for r in &mut refs {
            if r.block_owner_deletion == Some(true) {
                r.block_owner_deletion = Some(false);
            }
        }
        Ok(self.patch_owner_refs(&api, id, &meta, refs).await?)
    }

    /// upstream's `removeFinalizer`: retried on conflicts a few times, then left to the
    /// queue's backoff.
    async fn remove_finalizer(&self, id: &Identity, finalizer: &str) -> Result<(), GcError> {
        let api = self.api_for(id)?;
        for _ in 0..UPDATE_MAX_RETRIES {
            let Some(live) = api.get_metadata_opt(&id.name).await? else {
                return Ok(());
            };
            let meta = live.metadata;
            if meta.uid.as_deref() != Some(id.uid.as_str()) {
                return Ok(());
            }
            let finalizers = meta.finalizers.clone().unwrap_or_default();
            if !finalizers.iter().any(|f| f == finalizer) {
                tracing::debug!(object = %id, finalizer, "finalizer already removed from object");
                return Ok(());
            }
            let kept: Vec<&String> = finalizers.iter().filter(|f| *f != finalizer).collect();
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": meta.resource_version, "finalizers": kept}
            });
            match api
                .patch_metadata(&id.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(object = %id, finalizer, "removed finalizer");
                    return Ok(());
                }
                Err(e) if apierrors::is_not_found(&e) => return Ok(()),
                Err(e) if apierrors::is_conflict(&e) => continue,
                Err(e) => {
                    return Err(e.into());
                }
            }
        }
        Err(GcError::TooManyConflicts(Box::new(id.clone())))
    }
}
