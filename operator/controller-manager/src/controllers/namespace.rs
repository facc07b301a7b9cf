//! `namespace-controller`: empties a namespace being deleted, then lets it go.
//!
//! Upstream's `NamespaceController` with its `namespacedResourcesDeleter`:
//!
//! ```text
//!   Namespace with deletionTimestamp ──(5 s grace)──▶ queue ──▶ sync:
//!     phase Terminating ─▶ discover namespaced resources (per group-version; broken
//!     groups are reported, not fatal) ─▶ pods first, then every other resource:
//!     deletecollection (or list + delete each) ─▶ list what remains ─▶ status conditions
//!     (status by merge patch, or PUT where RBAC allows only update: `crate::status_writer`)
//!       ├─ content remains  ─▶ requeue after estimate/2 + 1 s
//!       ├─ errors           ─▶ requeue with backoff (5 ms .. 60 s, never dropped)
//!       └─ empty            ─▶ remove the `kubernetes` finalizer via namespaces/finalize
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers};
use ferrokube_runtime::informer::{Notification, Store};
use ferrokube_runtime::workqueue::{
    BucketRateLimiter, ItemExponentialFailureRateLimiter, MaxOf, WorkQueue,
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, NamespaceStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use tokio::task::JoinSet;

use super::StartError;
use super::resource_discovery::{self, DiscoveredResource, error_text, is_method_not_supported};
use crate::context::Context;
use crate::status_writer::StatusWriter;

/// The finalizer this controller owns (`v1.FinalizerKubernetes`).
pub const FINALIZER_TOKEN: &str = "kubernetes";

/// Upstream's `namespaceDeletionGracePeriod`: lets HA apiservers observe the deletion (so
/// admission refuses new content) before the namespace is emptied.
const DELETION_GRACE_PERIOD: Duration = Duration::from_secs(5);

/// Upstream's `finalizerEstimateSeconds`: how long content with finalizers is assumed to
/// take.
const FINALIZER_ESTIMATE_SECONDS: i64 = 15;

/// How many resource types are emptied at once.
const PARALLEL_RESOURCES: usize = 4;

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let namespaces = ctx.informers.informer::<Namespace>();
    // upstream's nsControllerRateLimiter: retries at least every minute, never gives up.
    let queue: WorkQueue<String> = WorkQueue::with_rate_limiter(
        "namespace",
        Some(&ctx.metrics),
        Box::new(MaxOf::new(vec![
            Box::new(ItemExponentialFailureRateLimiter::new(
                Duration::from_millis(5),
                Duration::from_secs(60),
            )),
            Box::new(BucketRateLimiter::new(10.0, 100)),
        ])),
    );

    {
        let mut rx = namespaces.subscribe();
        let (queue, shutdown) = (queue.clone(), ctx.shutdown.clone());
        tasks.spawn(async move {
            loop {
                let n = tokio::select! {
                    () = shutdown.cancelled() => return,
                    n = rx.recv() => n,
                };
                let Some(n) = n else { return };
                let ns = match &n {
                    Notification::Deleted(_) => continue,
                    n => n.object(),
                };
                if ns.metadata.deletion_timestamp.is_none() {
                    continue;
                }
                if let Some(name) = &ns.metadata.name {
                    queue.add_after(name.clone(), DELETION_GRACE_PERIOD);
                }
            }
        });
    }

    let deleter = Deleter {
        client: ctx.client.clone(),
        namespaces: namespaces.store(),
        status_writer: StatusWriter::default(),
    };
    let mut workers = Workers::new("namespace", ctx.options.concurrent_namespace_syncs);
    // Upstream never drops a namespace: deletion must eventually finish.
    workers.max_retries = u32::MAX;
    let store = namespaces.store();
    let deleter = Arc::new(deleter);
    workers.spawn_when(
        tasks,
        async move { store.wait_synced().await },
        queue,
        ctx.shutdown.clone(),
        move |ns: String| {
            let deleter = deleter.clone();
            async move { deleter.sync(&ns).await }
        },
    );
    Ok(())
}

/// Why a namespace sync failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// An apiserver call failed.
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// Some content could not be deleted (or discovered); all messages, as upstream's
    /// aggregate error.
    #[error("{}", aggregate(.0))]
    Content(Vec<String>),
    /// The namespace was deleted and re-created while this sync ran.
    #[error("namespace uid has changed across retries")]
    UidChanged,
}

/// utilerrors.NewAggregate's text.
fn aggregate(errs: &[String]) -> String {
    match errs {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

struct Deleter {
    client: kube::Client,
    namespaces: Store<Namespace>,
    /// `system:controller:namespace-controller` grants only `update` on
    /// `namespaces/status`: status goes by merge patch, else by PUT of the live object.
    status_writer: StatusWriter,
}

impl Deleter {
    /// upstream's `syncNamespaceFromKey` + `namespacedResourcesDeleter.Delete`.
    async fn sync(&self, name: &str) -> Result<Action, SyncError> {
        if self.namespaces.get("", name).is_none() {
            tracing::info!(namespace = name, "namespace has been deleted");
            return Ok(Action::Done);
        }
        // Deleting content is destructive: act on the live object, not the cache.
        let api: Api<Namespace> = Api::all(self.client.clone());
        let Some(mut namespace) = api.get_opt(name).await? else {
            return Ok(Action::Done);
        };
        let Some(deleted_at) = namespace.metadata.deletion_timestamp.clone() else {
            return Ok(Action::Done);
        };
        let phase = namespace.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase != Some("Terminating") {
            // The apiserver sets this itself on delete; upstream repairs it if not.
            let patch = serde_json::json!({"status": {"phase": "Terminating"}});
            let write = self.status_writer.write(&api, name, &patch, || {
                let mut put = namespace.clone();
                put.status
                    .get_or_insert_with(NamespaceStatus::default)
                    .phase = Some("Terminating".into());
                put
            });
            match write.await {
                Ok(ns) => namespace = ns,
                Err(e) if apierrors::is_not_found(&e) => return Ok(Action::Done),
                Err(e) => return Err(e.into()),
            }
        }
        let finalizers = namespace
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default();
        if finalizers.is_empty() {
            return Ok(Action::Done);
        }

        let estimate = self.delete_all_content(&namespace, deleted_at.0).await?;
        if estimate > 0 {
            let wait = Duration::from_secs(u64::try_from(estimate / 2 + 1).unwrap_or(1));
            tracing::debug!(
                namespace = name,
                wait_seconds = wait.as_secs(),
                "content remaining in namespace"
            );
            return Ok(Action::RequeueAfter(wait));
        }
        self.finalize(&namespace).await?;
        Ok(Action::Done)
    }

    /// upstream's `deleteAllContent`: the estimate of seconds until the remaining content
    /// is gone (0: empty), or the errors met. Conditions are written either way.
    async fn delete_all_content(
        &self,
        namespace: &Namespace,
        deleted_at: Timestamp,
    ) -> Result<i64, SyncError> {
        let ns = namespace.metadata.name.clone().unwrap_or_default();
        let mut errs: Vec<String> = Vec::new();
        let mut updater = ConditionUpdater::default();

        let resources: Vec<DiscoveredResource> =
            match resource_discovery::discover(&self.client).await {
                Ok(d) => {
                    if let Some(msg) = d.failure_message() {
                        updater.process_discovery_failure(d.failed.len(), &msg);
                        errs.push(msg);
                    }
                    d.preferred
                        .into_iter()
                        .filter(|r| r.namespaced && r.supports_all(&["delete"]))
                        .collect()
                }
                Err(e) => {
                    let msg = e.to_string();
                    updater.process_discovery_error(&msg);
                    errs.push(msg);
                    Vec::new()
                }
            };

        let mut totals = ContentTotals::default();
        let mut estimate = 0;
        let is_pods =
            |r: &DiscoveredResource| r.resource.group.is_empty() && r.resource.plural == "pods";

        // OrderedNamespaceDeletion (on by default): pods go first, so workloads stop
        // before the Secrets, ConfigMaps and policies they use disappear.
        if let Some(pods) = resources.iter().find(|r| is_pods(r)) {
            let (meta, err) = self.delete_all_of(pods, &ns, deleted_at).await;
            if let Some(e) = err {
                errs.push(format!(
                    "failed to delete pods for namespace: {ns}, err: {e}"
                ));
                updater.process_delete_content_error(e);
            }
            estimate = estimate.max(meta.estimate);
            totals.add(pods, &meta);
            if meta.remaining > 0 {
                tracing::debug!(
                    namespace = ns,
                    "pods still remain, delaying deletion of other resources"
                );
                self.write_conditions(namespace, updater).await;
                return finish(estimate, errs);
            }
        }

        // Owned values keep the futures free of borrowed closure arguments (which trip
        // the compiler's higher-ranked Send check).
        let others: Vec<DiscoveredResource> =
            resources.iter().filter(|r| !is_pods(r)).cloned().collect();
        let results: Vec<(DiscoveredResource, (GvrDeletion, Option<String>))> =
            futures::stream::iter(others)
                .map(|r| {
                    let ns = ns.clone();
                    async move {
                        let out = self.delete_all_of(&r, &ns, deleted_at).await;
                        (r, out)
                    }
                })
                .buffer_unordered(PARALLEL_RESOURCES)
                .collect()
                .await;
        for (r, (meta, err)) in results {
            if let Some(e) = err {
                errs.push(e.clone());
                updater.process_delete_content_error(e);
            }
            estimate = estimate.max(meta.estimate);
            totals.add(&r, &meta);
        }
        updater.process_content_totals(&totals);
        self.write_conditions(namespace, updater).await;
        finish(estimate, errs)
    }

    /// Writes the conditions if they changed. A failure is only logged, as upstream: the
    /// next sync computes them again.
    async fn write_conditions(&self, namespace: &Namespace, updater: ConditionUpdater) {
        let mut status = namespace.status.clone().unwrap_or_default();
        if !updater.update(&mut status, Timestamp::now()) {
            return;
        }
        let name = namespace.metadata.name.as_deref().unwrap_or_default();
        // The resourceVersion makes this a compare-and-swap: the list replaces the
        // conditions, so it must be based on what is there now.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": namespace.metadata.resource_version},
            "status": {"conditions": status.conditions},
        });
        let api: Api<Namespace> = Api::all(self.client.clone());
        let write = self.status_writer.write(&api, name, &patch, || {
            let mut put = namespace.clone();
            put.status = Some(status.clone());
            put
        });
        if let Err(e) = write.await {
            tracing::warn!(namespace = name, error = %e, "couldn't update status conditions for namespace");
        }
    }

    /// upstream's `deleteAllContentForGroupVersionResource`.
    async fn delete_all_of(
        &self,
        r: &DiscoveredResource,
        ns: &str,
        deleted_at: Timestamp,
    ) -> (GvrDeletion, Option<String>) {
        let ar = &r.resource;
        let mut estimate = 0;
        if ar.group.is_empty() && ar.plural == "pods" {
            match self.estimate_pods(ns).await {
                Ok(e) => estimate = e,
                Err(e) => return (GvrDeletion::default(), Some(error_text(&e))),
            }
            let elapsed = Timestamp::now().duration_since(deleted_at).as_secs();
            if elapsed >= estimate {
                estimate = 0;
            }
        }
        let failed = |e: &kube::Error| {
            (
                GvrDeletion {
                    estimate,
                    ..GvrDeletion::default()
                },
                Some(error_text(e)),
            )
        };
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, ar);
        let mut collection_deleted = false;
        if r.supports_all(&["deletecollection"]) {
            match api
                .delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
            {
                Ok(_) => collection_deleted = true,
                Err(e) if is_method_not_supported(&e) || apierrors::is_not_found(&e) => {}
                Err(e) => return failed(&e),
            }
        }
        let list_supported = r.supports_all(&["list"]);
        if !collection_deleted && list_supported {
            // deleteEachItem
            match api.list_metadata(&ListParams::default()).await {
                Ok(list) => {
                    for item in list.items {
                        let Some(name) = item.metadata.name.as_deref() else {
                            continue;
                        };
                        match api.delete(name, &DeleteParams::background()).await {
                            Ok(_) => {}
                            Err(e)
                                if apierrors::is_not_found(&e) || is_method_not_supported(&e) => {}
                            Err(e) => return failed(&e),
                        }
                    }
                }
                Err(e) if is_method_not_supported(&e) || apierrors::is_not_found(&e) => {}
                Err(e) => return failed(&e),
            }
        }
        if !list_supported {
            return (
                GvrDeletion {
                    estimate,
                    ..GvrDeletion::default()
                },
                None,
            );
        }
        let remaining = match api.list_metadata(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) if is_method_not_supported(&e) || apierrors::is_not_found(&e) => {
                return (GvrDeletion::default(), None);
            }
            Err(e) => return failed(&e),
        };
        if remaining.is_empty() {
            return (GvrDeletion::default(), None);
        }
        let mut finalizers: BTreeMap<String, usize> = BTreeMap::new();
        for item in &remaining {
            for f in item.metadata.finalizers.iter().flatten() {
                *finalizers.entry(f.clone()).or_default() += 1;
            }
        }
        let meta = GvrDeletion {
            estimate,
            remaining: remaining.len(),
            finalizers,
        };
        if estimate != 0 {
            return (meta, None);
        }
        if !meta.finalizers.is_empty() {
            return (
                GvrDeletion {
                    estimate: FINALIZER_ESTIMATE_SECONDS,
                    ..meta
                },
                None,
            );
        }
        let gvr = format!("{}/{}, Resource={}", ar.group, ar.version, ar.plural);
        (
            meta,
            Some(format!(
                "unexpected items still remain in namespace: {ns} for gvr: {gvr}"
            )),
        )
    }

    /// upstream's `estimateGracefulTerminationForPods`: the longest grace period of a pod
    /// that has not finished.
    async fn estimate_pods(&self, ns: &str) -> Result<i64, kube::Error> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let list = pods.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter(|p| {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                !matches!(phase, Some("Succeeded" | "Failed"))
            })
            .filter_map(|p| p.spec.as_ref()?.termination_grace_period_seconds)
            .max()
            .unwrap_or(0)
            .max(0))
    }

    /// upstream's `finalizeNamespace` with `retryOnConflictError`: removes our finalizer
    /// through `namespaces/<name>/finalize`.
    ///
    /// That subresource only supports update, and the update takes metadata and spec from
    /// the request, so the body is the live object read as JSON (nothing a newer apiserver
    /// added is lost) with only `spec.finalizers` changed; its resourceVersion makes the
    /// write fail rather than overwrite a concurrent change.
    async fn finalize(&self, namespace: &Namespace) -> Result<(), SyncError> {
        let name = namespace.metadata.name.as_deref().unwrap_or_default();
        let ar = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("", "v1", "Namespace"),
            "namespaces",
        );
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        loop {
            let Some(mut live) = api.get_opt(name).await? else {
                return Ok(());
            };
            if live.metadata.uid != namespace.metadata.uid {
                return Err(SyncError::UidChanged);
            }
            let current: Vec<String> = live
                .data
                .pointer("/spec/finalizers")
                .and_then(|f| serde_json::from_value(f.clone()).ok())
                .unwrap_or_default();
            let kept = remove_finalizer(&current, FINALIZER_TOKEN);
            if kept.len() == current.len() {
                return Ok(());
            }
            if let Some(spec) = live.data.get_mut("spec").and_then(|s| s.as_object_mut()) {
                spec.insert("finalizers".into(), serde_json::json!(kept));
            }
            match api
                .replace_subresource("finalize", name, &PostParams::default(), &live)
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = name, "namespace finalized");
                    return Ok(());
                }
                Err(e) if apierrors::is_not_found(&e) => return Ok(()),
                Err(e) if apierrors::is_conflict(&e) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn finish(estimate: i64, errs: Vec<String>) -> Result<i64, SyncError> {
    if errs.is_empty() {
        Ok(estimate)
    } else {
        Err(SyncError::Content(errs))
    }
}

/// `finalizers` without `token`, de-duplicated and sorted as upstream's string set.
fn remove_finalizer(finalizers: &[String], token: &str) -> Vec<String> {
    let set: std::collections::BTreeSet<&String> =
        finalizers.iter().filter(|f| *f != token).collect();
    set.into_iter().cloned().collect()
}

/// What remains of one resource type (upstream's `gvrDeletionMetadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GvrDeletion {
    /// Seconds until the remaining content is expected to be gone.
    pub estimate: i64,
    /// How many objects remain.
    pub remaining: usize,
    /// Remaining objects per finalizer.
    pub finalizers: BTreeMap<String, usize>,
}

/// What remains of all resource types (upstream's `allGVRDeletionMetadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContentTotals {
    /// `resource.group` -> remaining objects.
    pub remaining: BTreeMap<String, usize>,
    /// finalizer -> remaining objects.
    pub finalizers: BTreeMap<String, usize>,
}

impl ContentTotals {
    fn add(&mut self, r: &DiscoveredResource, meta: &GvrDeletion) {
        if meta.remaining == 0 {
            return;
        }
        *self.remaining.entry(r.group_resource()).or_default() += meta.remaining;
        for (f, n) in &meta.finalizers {
            *self.finalizers.entry(f.clone()).or_default() += n;
        }
    }
}

// === Conditions (upstream's status_condition_utils.go) ===

/// The condition types this controller maintains, in upstream's order.
pub const CONDITION_TYPES: [&str; 5] = [
    "NamespaceDeletionDiscoveryFailure",
    "NamespaceDeletionGroupVersionParsingFailure",
    "NamespaceDeletionContentFailure",
    "NamespaceContentRemaining",
    "NamespaceFinalizersRemaining",
];

/// The reason and message of a condition type when nothing is wrong.
fn ok_condition(type_: &str) -> (&'static str, &'static str) {
    match type_ {
        "NamespaceDeletionDiscoveryFailure" => (
            "ResourcesDiscovered",
            "All resources successfully discovered",
        ),
        "NamespaceDeletionGroupVersionParsingFailure" => (
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed",
        ),
        "NamespaceDeletionContentFailure" => (
            "ContentDeleted",
            "All content successfully deleted, may be waiting on finalization",
        ),
        "NamespaceContentRemaining" => ("ContentRemoved", "All content successfully removed"),
        _ => (
            "ContentHasNoFinalizers",
            "All content-preserving finalizers finished",
        ),
    }
}

/// Turns what a deletion pass met into namespace conditions.
#[derive(Debug, Default)]
pub struct ConditionUpdater {
    /// (type, reason, message) of failing conditions.
    new_conditions: Vec<(String, String, String)>,
    delete_content_errors: Vec<String>,
}

impl ConditionUpdater {
    /// Some group-versions could not be discovered (`ErrGroupDiscoveryFailed`).
    pub fn process_discovery_failure(&mut self, failing: usize, error: &str) {
        self.push(
            "NamespaceDeletionDiscoveryFailure",
            "DiscoveryFailed",
            format!("Discovery failed for some groups, {failing} failing: {error}"),
        );
    }

    /// Discovery failed altogether.
    pub fn process_discovery_error(&mut self, error: &str) {
        self.push(
            "NamespaceDeletionDiscoveryFailure",
            "DiscoveryFailed",
            error.to_string(),
        );
    }

    /// Deleting one resource type failed.
    pub fn process_delete_content_error(&mut self, error: String) {
        self.delete_content_errors.push(error);
    }

    /// What remains, by resource and by finalizer.
    pub fn process_content_totals(&mut self, totals: &ContentTotals) {
        if !totals.remaining.is_empty() {
            let parts: Vec<String> = totals
                .remaining
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(gr, n)| format!("{gr} has {n} resource instances"))
                .collect();
            self.push(
                "NamespaceContentRemaining",
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", sorted_join(parts)),
            );
        }
        if !totals.finalizers.is_empty() {
            let parts: Vec<String> = totals
                .finalizers
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(f, n)| format!("{f} in {n} resource instances"))
                .collect();
            self.push(
                "NamespaceFinalizersRemaining",
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    sorted_join(parts)
                ),
            );
        }
    }

    fn push(&mut self, type_: &str, reason: &str, message: String) {
        self.new_conditions
            .push((type_.to_string(), reason.to_string(), message));
    }

    /// Applies the conditions to `status`; whether anything changed. Every maintained
    /// type is present afterwards, `False` with its ok reason when nothing failed.
    pub fn update(mut self, status: &mut NamespaceStatus, now: Timestamp) -> bool {
        if !self.delete_content_errors.is_empty()
            && !self
                .new_conditions
                .iter()
                .any(|c| c.0 == "NamespaceDeletionContentFailure")
        {
            let n = self.delete_content_errors.len();
            let msgs = sorted_join(std::mem::take(&mut self.delete_content_errors));
            self.push(
                "NamespaceDeletionContentFailure",
                "ContentDeletionFailed",
                format!("Failed to delete all resource types, {n} remaining: {msgs}"),
            );
        }
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        let mut changed = false;
        for type_ in CONDITION_TYPES {
            let (status_, reason, message) = match self.new_conditions.iter().find(|c| c.0 == type_)
            {
                Some((_, reason, message)) => ("True", reason.clone(), message.clone()),
                None => {
                    let (r, m) = ok_condition(type_);
                    ("False", r.to_string(), m.to_string())
                }
            };
            match conditions.iter_mut().find(|c| c.type_ == type_) {
                None => {
                    conditions.push(NamespaceCondition {
                        type_: type_.to_string(),
                        status: status_.to_string(),
                        reason: Some(reason),
                        message: Some(message),
                        last_transition_time: Some(Time(now)),
                    });
                    changed = true;
                }
                Some(old) => {
                    if old.status != status_
                        || old.reason.as_deref() != Some(reason.as_str())
                        || old.message.as_deref() != Some(message.as_str())
                    {
                        if old.status != status_ {
                            old.last_transition_time = Some(Time(now));
                        }
                        old.status = status_.to_string();
                        old.reason = Some(reason);
                        old.message = Some(message);
                        changed = true;
                    }
                }
            }
        }
        changed
    }
}

fn sorted_join(mut parts: Vec<String>) -> String {
    parts.sort();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(s: &'a NamespaceStatus, t: &str) -> &'a NamespaceCondition {
        s.conditions
            .as_ref()
            .and_then(|c| c.iter().find(|c| c.type_ == t))
            .expect("condition present")
    }

    #[test]
    fn all_ok_sets_every_condition_false() {
        let mut status = NamespaceStatus::default();
        let now = Timestamp::now();
        assert!(ConditionUpdater::default().update(&mut status, now));
        assert_eq!(status.conditions.as_ref().map(Vec::len), Some(5));
        let c = find(&status, "NamespaceContentRemaining");
        assert_eq!(c.status, "False");
        assert_eq!(c.reason.as_deref(), Some("ContentRemoved"));
        // A second identical pass changes nothing.
        assert!(!ConditionUpdater::default().update(&mut status, now));
    }

    #[test]
    fn remaining_content_and_finalizers() {
        let mut totals = ContentTotals::default();
        totals.remaining.insert("configmaps.".into(), 2);
        totals.remaining.insert("widgets.example.com".into(), 1);
        totals.finalizers.insert("example.com/hold".into(), 2);
        let mut u = ConditionUpdater::default();
        u.process_content_totals(&totals);
        let mut status = NamespaceStatus::default();
        assert!(u.update(&mut status, Timestamp::now()));
        let c = find(&status, "NamespaceContentRemaining");
        assert_eq!(c.status, "True");
        assert_eq!(c.reason.as_deref(), Some("SomeResourcesRemain"));
        assert_eq!(
            c.message.as_deref(),
            Some(
                "Some resources are remaining: configmaps. has 2 resource instances, widgets.example.com has 1 resource instances"
            )
        );
        let f = find(&status, "NamespaceFinalizersRemaining");
        assert_eq!(f.reason.as_deref(), Some("SomeFinalizersRemain"));
        assert_eq!(
            f.message.as_deref(),
            Some(
                "Some content in the namespace has finalizers remaining: example.com/hold in 2 resource instances"
            )
        );
    }

    #[test]
    fn content_errors_and_discovery_failures() {
        let mut u = ConditionUpdater::default();
        u.process_delete_content_error("b failed".into());
        u.process_delete_content_error("a failed".into());
        u.process_discovery_failure(
            1,
            "unable to retrieve the complete list of server APIs: x/v1: down",
        );
        let mut status = NamespaceStatus::default();
        u.update(&mut status, Timestamp::now());
        let c = find(&status, "NamespaceDeletionContentFailure");
        assert_eq!(c.reason.as_deref(), Some("ContentDeletionFailed"));
        assert_eq!(
            c.message.as_deref(),
            Some("Failed to delete all resource types, 2 remaining: a failed, b failed")
        );
        let d = find(&status, "NamespaceDeletionDiscoveryFailure");
        assert_eq!(d.status, "True");
        assert_eq!(d.reason.as_deref(), Some("DiscoveryFailed"));
        assert!(
            d.message
                .as_deref()
                .is_some_and(|m| m.starts_with("Discovery failed for some groups, 1 failing: "))
        );
    }

    #[test]
    fn transition_time_moves_only_with_status() {
        let mut status = NamespaceStatus::default();
        let t0 = Timestamp::from_second(1_000).expect("valid");
        let t1 = Timestamp::from_second(2_000).expect("valid");
        let mut totals = ContentTotals::default();
        totals.remaining.insert("configmaps.".into(), 2);
        let mut u = ConditionUpdater::default();
        u.process_content_totals(&totals);
        u.update(&mut status, t0);
        // Same status, new message: the transition time stays.
        totals.remaining.insert("configmaps.".into(), 1);
        let mut u = ConditionUpdater::default();
        u.process_content_totals(&totals);
        assert!(u.update(&mut status, t1));
        let c = find(&status, "NamespaceContentRemaining");
        assert_eq!(c.last_transition_time, Some(Time(t0)));
        // Back to False: it moves.
        assert!(ConditionUpdater::default().update(&mut status, t1));
        let c = find(&status, "NamespaceContentRemaining");
        assert_eq!(c.last_transition_time, Some(Time(t1)));
    }

    #[test]
    fn finalizer_removal_keeps_others_sorted() {
        let f: Vec<String> = ["z", "kubernetes", "a", "z"]
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(remove_finalizer(&f, FINALIZER_TOKEN), vec!["a", "z"]);
    }

    #[test]
    fn aggregate_text() {
        assert_eq!(aggregate(&["x".into()]), "x");
        assert_eq!(aggregate(&["x".into(), "y".into()]), "[x, y]");
    }
}
