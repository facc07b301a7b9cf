//! The running scheduler: informer events into the cache and queue, the scheduling loop,
//! the asynchronous binding cycle, and failure reporting (upstream `scheduler.go`,
//! `eventhandlers.go` and the cycle parts of `schedule_one.go`).
//!
//! ```text
//!   pods informer ──▶ assigned? ── yes ─▶ cache (confirms assumed pods)
//!        │                 └─ no, ours ──▶ queue
//!   nodes informer ─▶ cache ─▶ queue.on_event (re-queue unschedulable pods)
//!
//!   loop: queue.pop ─▶ schedule_pod(snapshot) ─▶ assume in cache ─▶ spawn bind
//!                          │ no fit                                 │ ok: Scheduled event
//!                          ▼                                        │ err: forget, retry
//!         PodScheduled=False + FailedScheduling event, back to queue
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use ferrokube_runtime::events::{self, EventType, Recorder, Reporter};
use ferrokube_runtime::informer::{Notification, Store};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::binder::default_binder::DefaultBinder;
use crate::cache::Cache;
use crate::framework::interface::{ClusterEvent, PostFilterResult};
use crate::framework::runtime::Framework;
use crate::framework::types::{PodInfo, pod_uid};
use crate::metrics::{AttemptResult, SchedulerMetrics};
use crate::queue::{QueuedPodInfo, SchedulingQueue};
use crate::schedule_one::{NO_NODES_AVAILABLE, ScheduleError, schedule_pod};
use crate::transform::{CachedNode, CachedPod};

/// The scheduler's shared state.
pub struct Scheduler {
    /// Nodes and placed pods.
    pub cache: Arc<Cache>,
    /// Pending pods.
    pub queue: Arc<SchedulingQueue>,
    /// Frameworks by scheduler name.
    pub profiles: HashMap<String, Arc<Framework>>,
    /// Event recorders by scheduler name (each profile reports as its scheduler name).
    pub recorders: HashMap<String, Recorder>,
    /// Writes bindings.
    pub binder: DefaultBinder,
    /// The API client.
    pub client: kube::Client,
    /// The pods informer's cache, to check a pod still exists before reporting on it.
    pub pods: Store<CachedPod>,
    /// Metric families.
    pub metrics: SchedulerMetrics,
    next_start: AtomicUsize,
    /// Binding cycles allowed at once; a slot is taken before a pod is popped.
    binding_slots: Arc<tokio::sync::Semaphore>,
    /// The runtime that does the scheduler's I/O: binding cycles, status patches and
    /// preemption run there, so the scheduling thread only schedules.
    io: tokio::runtime::Handle,
}

/// How many binding cycles may run at once. Upstream's binding goroutines are unbounded
/// and share one HTTP/2 connection; ours share one too (the runtime's transport), where the
/// apiserver allows 250 concurrent streams per connection (Go's default) and the informers'
/// watches hold some. 128 keeps the apiserver saturated and leaves the rest of the streams
/// to watches and status updates; on an HTTP/1.1 fallback it also bounds the connections
/// the pool opens.
///
/// The scheduling loop takes a slot before it pops the next pod, so when bindings are
/// slower than scheduling (a low client QPS) the loop waits instead of assuming the whole
/// queue ahead of the apiserver: memory then holds 128 binding tasks rather than one per
/// pending pod (at 50 QPS, 10000 of them), and each pod is placed against a cache at most
/// 128 bindings ahead of the apiserver. Throughput is unchanged: the bindings, not the
/// scheduling, are the bottleneck then.
const MAX_BINDINGS_IN_FLIGHT: usize = 128;

/// Event recorders, one per profile, whose sink tasks join `tasks`.
pub fn recorders(
    client: &kube::Client,
    profiles: &HashMap<String, Arc<Framework>>,
    identity: &str,
    tasks: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> HashMap<String, Recorder> {
    let host = identity.split('_').next().unwrap_or(identity).to_string();
    profiles
        .keys()
        .map(|name| {
            let (recorder, sink) = events::start(
                client.clone(),
                Reporter {
                    controller: name.clone(),
                    instance: format!("{name}-{host}"),
                },
                shutdown.clone(),
            );
            tasks.spawn(async move {
                let _ = sink.await;
            });
            (name.clone(), recorder)
        })
        .collect()
}

fn scheduler_name(pod: &CachedPod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .unwrap_or(crate::config::DEFAULT_SCHEDULER_NAME)
}

fn assigned(pod: &CachedPod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .is_some_and(|n| !n.is_empty())
}

/// Whether a node change can make a pod fit that did not (upstream's node update
/// pre-check: allocatable, labels, taints, unschedulable, images). Allocatable compares as
/// counted, so `1000m` and `1` are equal, as upstream's semantic comparison of quantities.
fn node_scheduling_changed(old: &CachedNode, new: &CachedNode) -> bool {
    let alloc = |n: &CachedNode| n.status.as_ref().map(|s| s.allocatable.clone());
    let images = |n: &CachedNode| n.status.as_ref().and_then(|s| s.images.clone());
    old.spec != new.spec
        || old.metadata.labels != new.metadata.labels
        || alloc(old) != alloc(new)
        || images(old) != images(new)
}

impl Scheduler {
    /// Builds the scheduler around its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cache: Arc<Cache>,
        queue: Arc<SchedulingQueue>,
        profiles: HashMap<String, Arc<Framework>>,
        recorders: HashMap<String, Recorder>,
        client: kube::Client,
        pods: Store<CachedPod>,
        metrics: SchedulerMetrics,
        io: tokio::runtime::Handle,
    ) -> Self {
        Self {
            cache,
            queue,
            profiles,
            recorders,
            binder: DefaultBinder::new(client.clone()),
            client,
            pods,
            metrics,
            next_start: AtomicUsize::new(0),
            binding_slots: Arc::new(tokio::sync::Semaphore::new(MAX_BINDINGS_IN_FLIGHT)),
            io,
        }
    }

    fn responsible_for(&self, pod: &CachedPod) -> bool {
        self.profiles.contains_key(scheduler_name(pod))
    }

    /// Applies a pod informer event.
    pub fn on_pod(&self, n: Notification<CachedPod>) {
        match n {
            Notification::Added(pod) | Notification::Updated { new: pod, .. } => {
                if assigned(&pod) {
                    let uid = pod_uid(&pod);
                    self.queue.delete(&uid);
                    self.cache.set_nominated(&uid, None);
                    self.cache.add_or_update_pod(pod);
                    self.queue.on_event(ClusterEvent::AssignedPodAddOrUpdate);
                } else if self.responsible_for(&pod) {
                    if pod.metadata.deletion_timestamp.is_some() {
                        let uid = pod_uid(&pod);
                        self.cache.set_nominated(&uid, None);
                        self.queue.delete(&uid);
                    } else {
                        let info = Arc::new(PodInfo::new(pod));
                        // A pod nominated by preemption keeps its place on the node for
                        // pods of lower priority (upstream's nominator).
                        let nominated = info
                            .pod
                            .status
                            .as_ref()
                            .and_then(|s| s.nominated_node_name.clone())
                            .filter(|n| !n.is_empty());
                        self.cache
                            .set_nominated(&info.uid, nominated.map(|n| (n, info.clone())));
                        self.queue.update(info);
                    }
                }
            }
            Notification::Deleted(pod) => {
                let uid = pod_uid(&pod);
                self.cache.set_nominated(&uid, None);
                if assigned(&pod) || self.cache.contains_pod(&uid) {
                    self.cache.remove_pod(&uid);
                    self.queue.on_event(ClusterEvent::AssignedPodDelete);
                }
                self.queue.delete(&uid);
            }
        }
    }

    /// Applies a node informer event.
    pub fn on_node(&self, n: Notification<CachedNode>) {
        match n {
            Notification::Added(node) => {
                self.cache.add_or_update_node(node);
                self.queue.on_event(ClusterEvent::NodeAdd);
            }
            Notification::Updated { old, new } => {
                let changed = node_scheduling_changed(&old, &new);
                self.cache.add_or_update_node(new);
                if changed {
                    self.queue.on_event(ClusterEvent::NodeUpdate);
                }
            }
            Notification::Deleted(node) => {
                self.cache
                    .remove_node(node.metadata.name.as_deref().unwrap_or_default());
            }
        }
    }

    /// A claim, volume or storage class was added or changed.
    pub fn on_storage_change(&self) {
        self.queue.on_event(ClusterEvent::StorageChange);
    }

    /// Runs [`Self::run`] on a thread of its own until `shutdown`, and returns when that
    /// thread is done.
    ///
    /// Filtering and scoring are CPU work that never awaits. On the I/O runtime they
    /// either stalled every watch and binding for the length of a cycle, or (with
    /// `block_in_place` on a multi-thread runtime) handed the worker's queue to another
    /// thread on every cycle, and the idle workers were woken to steal work on every
    /// request and watch event. Here the I/O runtime is single-threaded and this thread
    /// only pops, schedules and assumes; it sleeps on the queue and the binding slots.
    pub async fn run_on_own_thread(self: Arc<Self>, shutdown: CancellationToken) {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let stop = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name("scheduling".into())
            .spawn(move || {
                // Only the queue, the binding slots and a final timeout are awaited here.
                match tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()
                {
                    Ok(rt) => rt.block_on(self.run(stop)),
                    Err(e) => tracing::error!(error = %e, "starting the scheduling thread"),
                }
                drop(done_tx);
            });
        match spawned {
            // The sender is dropped when the thread ends, however it ends.
            Ok(_) => {
                let _ = done_rx.await;
            }
            Err(e) => {
                // Without the loop nothing is ever scheduled: stop instead of idling.
                tracing::error!(error = %e, "starting the scheduling thread");
                shutdown.cancel();
            }
        }
    }

    /// Pops and schedules pods until `shutdown`, each once a binding slot is free;
    /// bindings run as tasks in `binds`, on the I/O runtime.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut binds = JoinSet::new();
        loop {
            let slot = tokio::select! {
                () = shutdown.cancelled() => break,
                // The semaphore is never closed.
                slot = self.binding_slots.clone().acquire_owned() => slot.ok(),
            };
            let Some((info, cycle)) = self.queue.pop(&shutdown).await else {
                break;
            };
            self.clone().schedule_one(info, cycle, &mut binds, slot);
            // Reap finished binding tasks so the set does not grow without bound.
            while binds.try_join_next().is_some() {}
        }
        // Let bindings in flight finish; they are short API calls.
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while binds.join_next().await.is_some() {}
        })
        .await;
    }

    /// One scheduling cycle; the binding cycle continues in a task, which holds `slot`
    /// until its binding is written.
    fn schedule_one(
        self: Arc<Self>,
        info: QueuedPodInfo,
        cycle: u64,
        binds: &mut JoinSet<()>,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let started = Instant::now();
        let pod = info.pod.clone();
        let Some(fwk) = self.profiles.get(scheduler_name(&pod.pod)).cloned() else {
            self.queue.done(&pod.uid);
            return;
        };
        // Skip pods being deleted, or already assumed (an update raced the cycle).
        if pod.pod.metadata.deletion_timestamp.is_some() || self.cache.contains_pod(&pod.uid) {
            self.queue.done(&pod.uid);
            return;
        }
        let snapshot = self.cache.snapshot();
        // CPU work that does not await: this is the scheduling thread (`run_on_own_thread`),
        // not the I/O runtime.
        let result = schedule_pod(&fwk, &snapshot, &pod, &self.next_start);
        match result {
            Ok(r) => {
                if let Err(e) = self.cache.assume(pod.clone(), &r.node) {
                    tracing::error!(pod = %pod.key, error = %e, "assuming pod failed");
                    self.fail(
                        &fwk,
                        info,
                        cycle,
                        AttemptResult::Error,
                        "SchedulerError",
                        &e.to_string(),
                        started,
                    );
                    return;
                }
                // Assumed now: its nomination would count it twice.
                self.cache.set_nominated(&pod.uid, None);
                self.queue.done(&pod.uid);
                tracing::debug!(pod = %pod.key, node = %r.node, evaluated = r.evaluated_nodes, feasible = r.feasible_nodes, "pod assumed");
                let this = self.clone();
                binds.spawn_on(
                    async move {
                        this.bind(fwk, info, cycle, r.node, started, slot).await;
                    },
                    &self.io,
                );
            }
            Err(ScheduleError::Fit(e)) => {
                let mut info = info;
                info.unschedulable_plugins =
                    e.diagnosis.unschedulable_plugins.iter().copied().collect();
                let msg = e.message();
                let nominated = e
                    .post_filter_result
                    .as_ref()
                    .map(|r| r.nominated_node.clone());
                if let Some(r) = e.post_filter_result {
                    self.clone().preempt(&fwk, &pod, r);
                }
                self.fail_nominated(
                    &fwk,
                    info,
                    cycle,
                    AttemptResult::Unschedulable,
                    "Unschedulable",
                    &msg,
                    started,
                    nominated,
                );
            }
            Err(ScheduleError::NoNodes) => {
                let mut info = info;
                // Any node arriving may help.
                info.unschedulable_plugins = ["NodeName"].into_iter().collect();
                self.fail(
                    &fwk,
                    info,
                    cycle,
                    AttemptResult::Unschedulable,
                    "Unschedulable",
                    NO_NODES_AVAILABLE,
                    started,
                );
            }
            Err(ScheduleError::Internal(s)) => {
                let msg = format!("running {} plugin: {}", s.plugin, s.message());
                self.fail(
                    &fwk,
                    info,
                    cycle,
                    AttemptResult::Error,
                    "SchedulerError",
                    &msg,
                    started,
                );
            }
        }
    }

    async fn bind(
        self: Arc<Self>,
        fwk: Arc<Framework>,
        info: QueuedPodInfo,
        cycle: u64,
        node: String,
        started: Instant,
        slot: Option<OwnedSemaphorePermit>,
    ) {
        let pod = info.pod.clone();
        let bound = self.binder.bind(&pod, &node).await;
        drop(slot);
        match bound {
            Ok(()) => {
                self.cache.finish_binding(&pod.uid);
                self.metrics.observe_attempt(
                    AttemptResult::Scheduled,
                    &fwk.profile_name,
                    started.elapsed().as_secs_f64(),
                );
                if let Some(r) = self.recorders.get(&fwk.profile_name) {
                    r.publish(
                        events::reference(&*pod.pod),
                        EventType::Normal,
                        "Scheduled",
                        "Binding",
                        format!("Successfully assigned {} to {node}", pod.key),
                    );
                }
                tracing::debug!(pod = %pod.key, %node, "bound");
            }
            Err(e) => {
                tracing::info!(pod = %pod.key, error = %e, "binding failed");
                if let Err(fe) = self.cache.forget(&pod.uid) {
                    tracing::warn!(pod = %pod.key, error = %fe, "forgetting pod");
                }
                // The binding may fail because the pod is gone or already bound; only
                // report on pods that still wait.
                let mut info = info;
                info.unschedulable_plugins.clear();
                self.fail(
                    &fwk,
                    info,
                    cycle,
                    AttemptResult::Error,
                    "SchedulerError",
                    &format!("binding rejected: {e}"),
                    started,
                );
            }
        }
    }

    /// Evicts the victims preemption chose (upstream `prepareCandidate`): each gets the
    /// DisruptionTarget condition, is deleted, and a `Preempted` event names the
    /// preemptor. Runs in the background, as upstream's asynchronous preemption.
    fn preempt(self: Arc<Self>, fwk: &Framework, pod: &PodInfo, r: PostFilterResult) {
        let profile = fwk.profile_name.clone();
        let preemptor_uid = pod.uid.clone();
        let preemptor_key = pod.key.clone();
        let io = self.io.clone();
        io.spawn(async move {
            for victim in &r.victims {
                let api: Api<Pod> = Api::namespaced(self.client.clone(), victim.namespace());
                let condition = serde_json::json!({"status": {"conditions": [{
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "PreemptionByScheduler",
                    "message": format!("{profile}: preempting to accommodate a higher priority pod"),
                    "lastTransitionTime": Timestamp::now().to_string(),
                    "observedGeneration": victim.pod.metadata.generation,
                }]}});
                let patched = api
                    .patch_status(
                        victim.name(),
                        &PatchParams::default(),
                        &Patch::Strategic(&condition),
                    )
                    .await;
                match patched {
                    Err(kube::Error::Api(e)) if e.code == 404 => continue,
                    Err(e) => {
                        tracing::warn!(victim = %victim.key, error = %e, "could not add DisruptionTarget condition due to preemption");
                        continue;
                    }
                    Ok(_) => {}
                }
                // Preconditioned on the UID so a recreated pod of the same name survives.
                let dp = kube::api::DeleteParams {
                    preconditions: victim.pod.metadata.uid.clone().map(|uid| {
                        kube::api::Preconditions {
                            uid: Some(uid),
                            resource_version: None,
                        }
                    }),
                    ..Default::default()
                };
                match api.delete(victim.name(), &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => continue,
                    Err(e) => {
                        tracing::warn!(victim = %victim.key, error = %e, "preempting pod");
                        continue;
                    }
                }
                tracing::info!(preemptor = %preemptor_key, victim = %victim.key, node = %r.nominated_node, "preemptor pod preempted victim pod");
                if let Some(rec) = self.recorders.get(&profile) {
                    rec.publish(
                        events::reference(&*victim.pod),
                        EventType::Normal,
                        "Preempted",
                        "Preempting",
                        format!(
                            "Preempted by pod {preemptor_uid} on node {}",
                            r.nominated_node
                        ),
                    );
                }
            }
        });
    }

    /// Reports a failed attempt and puts the pod back (upstream `handleSchedulingFailure`).
    #[allow(clippy::too_many_arguments)]
    fn fail(
        &self,
        fwk: &Framework,
        info: QueuedPodInfo,
        cycle: u64,
        result: AttemptResult,
        reason: &str,
        message: &str,
        started: Instant,
    ) {
        self.fail_nominated(fwk, info, cycle, result, reason, message, started, None);
    }

    /// [`Self::fail`], also setting `status.nominatedNodeName` when preemption chose a node.
    #[allow(clippy::too_many_arguments)]
    fn fail_nominated(
        &self,
        fwk: &Framework,
        info: QueuedPodInfo,
        cycle: u64,
        result: AttemptResult,
        reason: &str,
        message: &str,
        started: Instant,
        nominated: Option<String>,
    ) {
        self.metrics
            .observe_attempt(result, &fwk.profile_name, started.elapsed().as_secs_f64());
        let pod = info.pod.clone();
        // Only pods that still exist unassigned go back; others are gone or bound.
        let current = self.pods.get(pod.namespace(), pod.name());
        let waiting = current
            .as_ref()
            .is_some_and(|p| pod_uid(p) == pod.uid && !assigned(p));
        if !waiting {
            self.queue.done(&pod.uid);
            return;
        }
        tracing::debug!(pod = %pod.key, %reason, %message, "unable to schedule pod");
        self.queue.add_unschedulable(info, cycle);
        if let Some(r) = self.recorders.get(&fwk.profile_name) {
            r.publish(
                events::reference(&*pod.pod),
                EventType::Warning,
                "FailedScheduling",
                "Scheduling",
                message.to_string(),
            );
        }
        if let Some(current) = current {
            let client = self.client.clone();
            let (reason, message) = (reason.to_string(), message.to_string());
            self.io.spawn(async move {
                if let Err(e) = update_pod_scheduled_condition(
                    client,
                    &current,
                    &reason,
                    &message,
                    nominated.as_deref(),
                )
                .await
                {
                    tracing::info!(pod = ?current.metadata.name, error = %e, "updating PodScheduled condition");
                }
            });
        }
    }

    /// Moves pods whose backoff ended, retries old unschedulable ones and publishes the
    /// queue lengths, until `shutdown` (upstream's 1 s and 30 s loops).
    pub async fn run_flushers(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            self.queue.flush_backoff_completed(now);
            n += 1;
            if n.is_multiple_of(30) {
                self.queue.flush_unschedulable_leftover(now);
                for key in self.cache.cleanup_expired_assumed(now) {
                    tracing::warn!(pod = %key, "assumed pod expired before its binding was confirmed");
                }
            }
            self.metrics.set_pending(self.queue.pending());
        }
    }
}

/// Sets `PodScheduled=False` with `reason`/`message` (and `status.nominatedNodeName` when
/// preemption nominated a node), leaving the patch out when nothing changes (upstream
/// `updatePod` with `UpdatePodCondition`). A strategic merge patch on the status
/// subresource touches only these fields.
async fn update_pod_scheduled_condition(
    client: kube::Client,
    pod: &CachedPod,
    reason: &str,
    message: &str,
    nominated: Option<&str>,
) -> Result<(), kube::Error> {
    let current_nominated = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref());
    let existing = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
    if let Some(c) = existing
        && c.status == "False"
        && c.reason.as_deref() == Some(reason)
        && c.message.as_deref() == Some(message)
        && (nominated.is_none() || nominated == current_nominated)
    {
        return Ok(());
    }
    let transition = match existing {
        Some(c) if c.status == "False" => c
            .last_transition_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_else(|| Timestamp::now().to_string()),
        _ => Timestamp::now().to_string(),
    };
    let mut patch = serde_json::json!({
        "status": {
            "conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": reason,
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": transition,
                "observedGeneration": pod.metadata.generation,
            }]
        }
    });
    if let Some(n) = nominated {
        patch["status"]["nominatedNodeName"] = serde_json::Value::String(n.to_string());
    }
    let api: Api<Pod> = Api::namespaced(
        client,
        pod.metadata.namespace.as_deref().unwrap_or_default(),
    );
    api.patch_status(
        pod.metadata.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
    .map(|_| ())
}
