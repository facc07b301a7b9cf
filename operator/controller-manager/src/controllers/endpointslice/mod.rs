//! `endpointslice-controller`: every Service with a selector gets EndpointSlices listing the
//! pods it selects.
//!
//! Upstream's `pkg/controller/endpointslice` with the `k8s.io/endpointslice` reconciler:
//!
//! ```text
//!   Service events ───────────────────────────────┐
//!   Pod events ──▶ Services selecting it (now/before) ──▶ queue "endpoint_slice" ──▶ sync
//!   EndpointSlice events (not our own writes) ──▶ its Service, after 1s ──┘          │
//!                                                                                   ▼
//!      pods + nodes + our slices from the caches ──▶ reconciler::plan ──▶ create / update / delete
//! ```
//!
//! Slices are labelled `kubernetes.io/service-name` and `endpointslice.kubernetes.io/managed-by:
//! endpointslice-controller.k8s.io` and are controller-owned by their Service. The
//! controller owns every field of its slices, so it writes them whole (create, or update
//! with the resourceVersion it planned against) as upstream does.

pub mod reconciler;
pub mod tracker;
pub mod util;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crate::transform::CachedPod;
use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers};
use ferrokube_runtime::events::{self, EventType, Recorder};
use ferrokube_runtime::informer::{Notification, ObjectKey, Store};
use ferrokube_runtime::workqueue::{
    BucketRateLimiter, ItemExponentialFailureRateLimiter, MaxOf, WorkQueue,
};
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Preconditions};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::StartError;
use crate::context::Context;
use reconciler::Reconciler;
use tracker::EndpointSliceTracker;
use util::TriggerTimeTracker;

/// The value of the managed-by label on slices this controller owns (`ControllerName`).
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// `discovery.LabelServiceName`.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// `discovery.LabelManagedBy`.
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// `maxRetries`.
const MAX_RETRIES: u32 = 15;
/// `endpointSliceChangeMinSyncDelay`: slice events are batched at least this long.
const ENDPOINT_SLICE_CHANGE_MIN_SYNC_DELAY: Duration = Duration::from_secs(1);
/// How soon a sync that found the slice cache behind this controller's writes looks again.
const STALE_CACHE_RETRY: Duration = Duration::from_millis(200);
/// The name the controller reports events as.
const NAME: &str = "endpointslice-controller";

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write failed.
    #[error("failed to {0} EndpointSlice {1:?}: {2}")]
    Write(&'static str, String, #[source] kube::Error),
    /// Some pods were left out (their Node is not known yet); they are retried.
    #[error("{0}")]
    SkippedPods(String),
}

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let max = ctx.options.max_endpoints_per_slice;
    let max = usize::try_from(max)
        .ok()
        .filter(|m| (1..=1000).contains(m))
        .ok_or_else(|| StartError {
            controller: "endpointslice-controller",
            reason: format!("--max-endpoints-per-slice={max} must be between 1 and 1000"),
        })?;
    let pods = ctx.informers.informer::<CachedPod>();
    let services = ctx.informers.informer::<Service>();
    let nodes = ctx.informers.informer::<Node>();
    let slices = ctx.informers.informer::<EndpointSlice>();
    let queue: WorkQueue<ObjectKey> = WorkQueue::with_rate_limiter(
        "endpoint_slice",
        Some(&ctx.metrics),
        Box::new(MaxOf::new(vec![
            Box::new(ItemExponentialFailureRateLimiter::new(
                Duration::from_secs(1),
                Duration::from_secs(1000),
            )),
            Box::new(BucketRateLimiter::new(10.0, 100)),
        ])),
    );
    let tracker = Arc::new(EndpointSliceTracker::default());
    let batch = ctx.options.endpointslice_updates_batch_period;
    let slice_delay = batch.max(ENDPOINT_SLICE_CHANGE_MIN_SYNC_DELAY);

    forward(tasks, services.subscribe(), &ctx.shutdown, {
        let queue = queue.clone();
        move |n: Notification<Service>| queue.add(ObjectKey::of(&**n.object()))
    });
    forward(tasks, pods.subscribe(), &ctx.shutdown, {
        let (queue, services) = (queue.clone(), services.store());
        move |n: Notification<CachedPod>| {
            for key in util::services_to_update(&services, &n) {
                queue.add_after(key, batch);
            }
        }
    });
    // Pods whose Node the cache does not know yet are left out of the slices; the Node's
    // arrival resyncs their Services at once. (Upstream only retries with backoff, and a
    // burst of pod events while the node informer lags can exhaust the retries.)
    let waiting = Arc::new(NodeWaiters::default());
    forward(tasks, nodes.subscribe(), &ctx.shutdown, {
        let (queue, waiting) = (queue.clone(), waiting.clone());
        move |n: Notification<Node>| {
            if let Notification::Added(node) = n {
                for key in waiting.arrived(node.metadata.name.as_deref().unwrap_or_default()) {
                    queue.add(key);
                }
            }
        }
    });
    forward(tasks, slices.subscribe(), &ctx.shutdown, {
        let (queue, tracker) = (queue.clone(), tracker.clone());
        move |n: Notification<EndpointSlice>| {
            for key in slice_event_keys(&tracker, &n) {
                queue.add_after(key, slice_delay);
            }
        }
    });

    let sync = Sync {
        services: services.store(),
        pods: pods.store(),
        nodes: nodes.store(),
        slices: slices.store(),
        reconciler: Arc::new(Reconciler {
            client: ctx.client.clone(),
            tracker: tracker.clone(),
        }),
        tracker,
        triggers: Arc::new(TriggerTimeTracker::default()),
        recorder: ctx.recorder(NAME, tasks),
        max,
        waiting,
        queue: queue.clone(),
    };
    let mut workers = Workers::new(NAME, ctx.options.concurrent_service_endpoint_syncs);
    workers.max_retries = MAX_RETRIES;
    let stores = (
        pods.store(),
        services.store(),
        slices.store(),
        nodes.store(),
    );
    workers.spawn_when(
        tasks,
        async move {
            stores.0.wait_synced().await;
            stores.1.wait_synced().await;
            stores.2.wait_synced().await;
            stores.3.wait_synced().await;
        },
        queue,
        ctx.shutdown.clone(),
        move |key: ObjectKey| {
            let sync = sync.clone();
            async move { sync.service(&key).await }
        },
    );
    Ok(())
}

/// Runs `handle` on every notification until the informer or `shutdown` ends. (The
/// runtime's `enqueue_from` adds immediately; these handlers need delays.)
pub(crate) fn forward<N: Send + 'static>(
    tasks: &mut JoinSet<()>,
    mut rx: UnboundedReceiver<N>,
    shutdown: &CancellationToken,
    handle: impl Fn(N) + Send + 'static,
) {
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                n = rx.recv() => match n {
                    Some(n) => handle(n),
                    None => return,
                },
            }
        }
    });
}

fn labels(s: &EndpointSlice) -> Option<&std::collections::BTreeMap<String, String>> {
    s.metadata.labels.as_ref()
}

fn managed_by_us(s: &EndpointSlice) -> bool {
    labels(s)
        .and_then(|l| l.get(LABEL_MANAGED_BY))
        .map(String::as_str)
        == Some(CONTROLLER_NAME)
}

/// `ServiceControllerKey`.
fn service_key(s: &EndpointSlice) -> Option<ObjectKey> {
    let name = labels(s)?
        .get(LABEL_SERVICE_NAME)
        .filter(|n| !n.is_empty())?;
    Some(ObjectKey::new(
        s.metadata.namespace.as_deref().unwrap_or_default(),
        name,
    ))
}

/// `onEndpointSliceAdd` / `Update` / `Delete`: Services to resync because a slice changed
/// in a way this controller did not cause.
fn slice_event_keys(
    tracker: &EndpointSliceTracker,
    n: &Notification<EndpointSlice>,
) -> Vec<ObjectKey> {
    match n {
        Notification::Added(s) => {
            if managed_by_us(s) && tracker.should_sync(s) {
                return service_key(s).into_iter().collect();
            }
        }
        Notification::Updated { old, new } => {
            let (a, b) = (service_key(old), service_key(new));
            if a != b {
                return a.into_iter().chain(b).collect();
            }
            if managed_by_us(old) != managed_by_us(new)
                || (managed_by_us(new) && tracker.should_sync(new))
            {
                return b.into_iter().collect();
            }
        }
        Notification::Deleted(s) => {
            if managed_by_us(s) && tracker.has(s) && !tracker.handle_deletion(s) {
                return service_key(s).into_iter().collect();
            }
        }
    }
    vec![]
}

#[derive(Clone)]
struct Sync {
    services: Store<Service>,
    pods: Store<CachedPod>,
    nodes: Store<Node>,
    slices: Store<EndpointSlice>,
    reconciler: Arc<Reconciler>,
    tracker: Arc<EndpointSliceTracker>,
    triggers: Arc<TriggerTimeTracker>,
    recorder: Recorder,
    max: usize,
    waiting: Arc<NodeWaiters>,
    queue: WorkQueue<ObjectKey>,
}

/// The Services waiting for a Node to appear in the cache, by node name.
#[derive(Default)]
struct NodeWaiters(std::sync::Mutex<HashMap<String, HashSet<ObjectKey>>>);

impl NodeWaiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashSet<ObjectKey>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `service` left out pods bound to `node`.
    fn wait(&self, node: &str, service: &ObjectKey) {
        self.lock()
            .entry(node.to_string())
            .or_default()
            .insert(service.clone());
    }

    /// `service` no longer waits for `node`.
    fn stop_waiting(&self, node: &str, service: &ObjectKey) {
        let mut map = self.lock();
        if let Some(set) = map.get_mut(node) {
            set.remove(service);
            if set.is_empty() {
                map.remove(node);
            }
        }
    }

    /// The Services that waited for `node`, which has now arrived.
    fn arrived(&self, node: &str) -> HashSet<ObjectKey> {
        self.lock().remove(node).unwrap_or_default()
    }
}

impl Sync {
    /// `syncService`.
    async fn service(&self, key: &ObjectKey) -> Result<Action, Error> {
        let Some(svc) = self.services.get_key(key) else {
            self.triggers.delete_service(key);
            self.tracker.delete_service(key);
            self.delete_orphans(key).await?;
            return Ok(Action::Done);
        };
        if util::is_external_name(&svc) {
            return Ok(Action::Done);
        }
        // Services without a selector are the mirroring controller's.
        let Some(selector) = util::service_selector(&svc) else {
            return Ok(Action::Done);
        };
        let pods = self.pods.filter(|p| {
            p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && util::selector_matches(selector, p.metadata.labels.as_ref())
        });
        let slices = self.our_slices(key);
        let slice_refs: Vec<&EndpointSlice> = slices
            .iter()
            .map(|s| &**s)
            .filter(|s| s.metadata.deletion_timestamp.is_none())
            .collect();
        if self.tracker.stale_slices(key, &slice_refs) {
            // Our own last write has not come back through the informer yet. Upstream
            // fails the sync (exponential backoff per failure); a burst of pod churn then
            // leaves the key waiting a minute or more after the cache caught up, with the
            // slices stuck at an old state. The cache is seconds behind at worst, so look
            // again shortly, without growing the key's backoff.
            tracing::debug!(service = %key, "EndpointSlice informer cache is out of date; retrying shortly");
            return Ok(Action::RequeueAfter(STALE_CACHE_RETRY));
        }
        let pod_refs: Vec<&CachedPod> = pods.iter().map(|p| &**p).collect();
        let trigger = self.triggers.compute(&svc, &pod_refs);
        let nodes = self.nodes.clone();
        let node = move |name: &str| nodes.get("", name);
        let mut plan = reconciler::plan(&svc, &pod_refs, &node, &slice_refs, trigger, self.max);
        tracing::debug!(
            service = %key,
            pods = pods.len(),
            create = plan.create.len(),
            update = plan.update.len(),
            delete = plan.delete.len(),
            "reconciling endpoint slices"
        );
        let skipped = std::mem::take(&mut plan.skipped);
        for node in std::mem::take(&mut plan.missing_nodes) {
            self.waiting.wait(&node, key);
            // Arrived between the plan and now: its notification found no waiter.
            if self.nodes.get("", &node).is_some() {
                self.waiting.stop_waiting(&node, key);
                self.queue.add(key.clone());
            }
        }
        let result = match self.reconciler.apply(&svc, plan).await {
            Ok(()) if skipped.is_empty() => Ok(Action::Done),
            Ok(()) => Err(Error::SkippedPods(skipped.join("; "))),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.recorder.publish(
                events::reference(&*svc),
                EventType::Warning,
                "FailedToUpdateEndpointSlices",
                "UpdateEndpointSlices",
                format!(
                    "Error updating Endpoint Slices for Service {}/{}: {e}",
                    key.namespace, key.name
                ),
            );
        }
        result
    }

    /// Our slices for the Service `key`, from the cache.
    fn our_slices(&self, key: &ObjectKey) -> Vec<Arc<EndpointSlice>> {
        self.slices.filter(|s| {
            s.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && managed_by_us(s)
                && labels(s).and_then(|l| l.get(LABEL_SERVICE_NAME)) == Some(&key.name)
        })
    }

    /// The Service is gone: delete the slices it still owns. Upstream leaves this to the
    /// garbage collector; doing it here keeps clusters without one clean, and is harmless
    /// beside one (a slice already gone is fine). Slices the Service no longer owns (orphan
    /// deletion removed the ownerRef) are kept, as the user asked.
    async fn delete_orphans(&self, key: &ObjectKey) -> Result<(), Error> {
        for s in self.our_slices(key) {
            let owned = s
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Service" && o.api_version == "v1" && o.name == key.name);
            if !owned || s.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = s.metadata.name.clone().unwrap_or_default();
            let api: Api<EndpointSlice> =
                Api::namespaced(self.reconciler.client.clone(), &key.namespace);
            // Only the slice we looked at, never a newer one of the same name.
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: s.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => {
                    tracing::debug!(service = %key, slice = name, "deleted EndpointSlice of deleted Service")
                }
                Err(e) if apierrors::is_not_found(&e) || apierrors::is_conflict(&e) => {}
                Err(e) => return Err(Error::Write("delete", name, e)),
            }
        }
        Ok(())
    }
}
