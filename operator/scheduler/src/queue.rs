//! The scheduling queue (upstream `backend/queue`, `PriorityQueue`).
//!
//! ```text
//!   new pod ──PreEnqueue──▶ activeQ (ordered by QueueSort) ──pop──▶ scheduling cycle
//!              │ gated                  ▲        ▲                      │ failed
//!              ▼                        │        │ backoff over         ▼
//!        unschedulablePods ◀────────────┼──── backoffQ ◀─── error / moved during the cycle
//!          │  ▲ rejected by plugins     │
//!          │  └─────────────────────────┼─── cluster event a rejecting plugin cares about
//!          └──── flushed after 5 min ───┘    (node added/updated, assigned pod deleted, ...)
//! ```
//!
//! A pod that failed `n` times backs off `initial * 2^(n-1)`, capped at `max` (1 s and 10 s
//! by default). A cluster event while a pod is being scheduled sends that pod to the backoff
//! queue rather than the unschedulable pool, so the event is not lost on it.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::framework::interface::{ClusterEvent, Plugin};
use crate::framework::types::PodInfo;
use crate::transform::CachedPod;

/// How long a pod may stay in the unschedulable pool before it is retried anyway
/// (upstream `DefaultPodMaxInUnschedulablePodsDuration`).
pub const MAX_IN_UNSCHEDULABLE: Duration = Duration::from_secs(5 * 60);

/// A pod in the queue with its scheduling history (upstream `QueuedPodInfo`).
#[derive(Clone, Debug)]
pub struct QueuedPodInfo {
    /// The pod.
    pub pod: Arc<PodInfo>,
    /// When the pod was (re-)added; QueueSort's tie-breaker and the backoff origin.
    pub timestamp: Instant,
    /// How many scheduling attempts were made.
    pub attempts: u32,
    /// When the first attempt was made (for latency metrics).
    pub initial_attempt: Option<Instant>,
    /// Plugins that rejected the pod in its last attempt.
    pub unschedulable_plugins: HashSet<&'static str>,
    /// The PreEnqueue plugin holding the pod back, if any.
    pub gated_by: Option<&'static str>,
}

impl QueuedPodInfo {
    fn new(pod: Arc<PodInfo>, now: Instant) -> Self {
        Self {
            pod,
            timestamp: now,
            attempts: 0,
            initial_attempt: None,
            unschedulable_plugins: HashSet::new(),
            gated_by: None,
        }
    }
}

/// Orders the active queue: `less(a, b)` means `a` is popped first.
pub type LessFn = Arc<dyn Fn(&QueuedPodInfo, &QueuedPodInfo) -> bool + Send + Sync>;

struct HeapEntry {
    info: QueuedPodInfo,
    seq: u64,
    less: LessFn,
}

impl PartialEq for HeapEntry {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}
impl Eq for HeapEntry {}
impl PartialOrd for HeapEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap pops the greatest: the pod that sorts first must compare greatest.
        if (self.less)(&self.info, &other.info) {
            Ordering::Greater
        } else if (self.less)(&other.info, &self.info) {
            Ordering::Less
        } else {
            other.seq.cmp(&self.seq)
        }
    }
}

/// Queue lengths per sub-queue, for `scheduler_pending_pods{queue}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// In activeQ.
    pub active: usize,
    /// In backoffQ.
    pub backoff: usize,
    /// In the unschedulable pool, not gated.
    pub unschedulable: usize,
    /// Held back by a PreEnqueue plugin.
    pub gated: usize,
}

struct Inner {
    heap: BinaryHeap<HeapEntry>,
    /// uid -> seq of the live heap entry (older entries are skipped on pop).
    active: HashMap<String, u64>,
    backoff: HashMap<String, QueuedPodInfo>,
    unschedulable: HashMap<String, (QueuedPodInfo, Instant)>,
    in_flight: HashSet<String>,
    seq: u64,
    scheduling_cycle: u64,
    move_request_cycle: u64,
    closed: bool,
}

/// The scheduling queue. Share it behind an `Arc`.
pub struct SchedulingQueue {
    inner: Mutex<Inner>,
    notify: Notify,
    less: LessFn,
    pre_enqueue: Vec<Arc<dyn Plugin>>,
    /// plugin name -> the events that may make a pod it rejected schedulable.
    interest: HashMap<&'static str, HashSet<ClusterEvent>>,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl SchedulingQueue {
    /// A queue ordered by `less`, gated by `pre_enqueue` plugins, re-queueing pods on the
    /// events `plugins` register.
    pub fn new(
        less: LessFn,
        pre_enqueue: Vec<Arc<dyn Plugin>>,
        plugins: &[Arc<dyn Plugin>],
        initial_backoff: Duration,
        max_backoff: Duration,
    ) -> Self {
        let mut interest: HashMap<&'static str, HashSet<ClusterEvent>> = HashMap::new();
        for p in plugins {
            interest
                .entry(p.name())
                .or_default()
                .extend(p.events_to_register().iter().copied());
        }
        Self {
            inner: Mutex::new(Inner {
                heap: BinaryHeap::new(),
                active: HashMap::new(),
                backoff: HashMap::new(),
                unschedulable: HashMap::new(),
                in_flight: HashSet::new(),
                seq: 0,
                scheduling_cycle: 0,
                move_request_cycle: 0,
                closed: false,
            }),
            notify: Notify::new(),
            less,
            pre_enqueue,
            interest,
            initial_backoff,
            max_backoff,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push_active(&self, inner: &mut Inner, info: QueuedPodInfo) {
        inner.seq += 1;
        let seq = inner.seq;
        inner.active.insert(info.pod.uid.clone(), seq);
        inner.heap.push(HeapEntry {
            info,
            seq,
            less: self.less.clone(),
        });
        self.notify.notify_one();
    }

    /// Runs the PreEnqueue plugins; the first that refuses gates the pod.
    fn gate(&self, pod: &CachedPod) -> Option<&'static str> {
        self.pre_enqueue
            .iter()
            .find(|p| !p.pre_enqueue(pod).is_success())
            .map(|p| p.name())
    }

    /// Backoff for a pod that failed `attempts` times.
    pub fn backoff_duration(&self, attempts: u32) -> Duration {
        let mut d = self.initial_backoff;
        for _ in 1..attempts {
            d = d.saturating_mul(2);
            if d >= self.max_backoff {
                return self.max_backoff;
            }
        }
        d.min(self.max_backoff)
    }

    fn backoff_expiry(&self, info: &QueuedPodInfo) -> Instant {
        info.timestamp + self.backoff_duration(info.attempts)
    }

    /// A new unscheduled pod (upstream `Add`).
    pub fn add(&self, pod: Arc<PodInfo>) {
        let now = Instant::now();
        let mut info = QueuedPodInfo::new(pod, now);
        let mut inner = self.lock();
        let uid = info.pod.uid.clone();
        if inner.active.contains_key(&uid)
            || inner.backoff.contains_key(&uid)
            || inner.unschedulable.contains_key(&uid)
            || inner.in_flight.contains(&uid)
        {
            drop(inner);
            self.update(info.pod);
            return;
        }
        info.gated_by = self.gate(&info.pod.pod);
        if info.gated_by.is_some() {
            inner.unschedulable.insert(uid, (info, now));
        } else {
            self.push_active(&mut inner, info);
        }
    }

    /// An unscheduled pod changed (upstream `Update`).
    pub fn update(&self, pod: Arc<PodInfo>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let uid = pod.uid.clone();
        if let Some(seq) = inner.active.get(&uid).copied() {
            // Re-push with the new object; the old heap entry is skipped by seq.
            let old = inner
                .heap
                .iter()
                .find(|e| e.seq == seq)
                .map(|e| e.info.clone());
            let mut info = old.unwrap_or_else(|| QueuedPodInfo::new(pod.clone(), now));
            info.pod = pod;
            self.push_active(&mut inner, info);
            return;
        }
        if let Some(info) = inner.backoff.get_mut(&uid) {
            info.pod = pod;
            return;
        }
        if let Some((mut info, _)) = inner.unschedulable.remove(&uid) {
            let spec_changed = spec_or_labels_changed(&info.pod.pod, &pod.pod);
            info.pod = pod;
            info.gated_by = self.gate(&info.pod.pod);
            if info.gated_by.is_some() {
                inner.unschedulable.insert(uid, (info, now));
            } else if spec_changed || info.attempts == 0 {
                // A change to the pod itself may fix what rejected it (upstream moves it
                // on UnscheduledPodUpdate); a pod that was only gated has never been tried.
                self.requeue(&mut inner, info, now);
            } else {
                inner.unschedulable.insert(uid, (info, now));
            }
            return;
        }
        if inner.in_flight.contains(&uid) {
            // The cycle in progress requeues it; let that attempt see the event.
            inner.move_request_cycle = inner.scheduling_cycle;
            return;
        }
        drop(inner);
        self.add(pod);
    }

    /// Back to activeQ, or backoffQ while still backing off.
    fn requeue(&self, inner: &mut Inner, info: QueuedPodInfo, now: Instant) {
        if info.attempts > 0 && self.backoff_expiry(&info) > now {
            inner.backoff.insert(info.pod.uid.clone(), info);
        } else {
            self.push_active(inner, info);
        }
    }

    /// A pod was deleted or bound by someone else.
    pub fn delete(&self, uid: &str) {
        let mut inner = self.lock();
        inner.active.remove(uid);
        inner.backoff.remove(uid);
        inner.unschedulable.remove(uid);
    }

    /// Waits for the next pod to schedule; `None` once `shutdown` fires or the queue closes.
    pub async fn pop(&self, shutdown: &CancellationToken) -> Option<(QueuedPodInfo, u64)> {
        loop {
            {
                let mut inner = self.lock();
                if inner.closed {
                    return None;
                }
                while let Some(entry) = inner.heap.pop() {
                    if inner.active.get(&entry.info.pod.uid) == Some(&entry.seq) {
                        inner.active.remove(&entry.info.pod.uid);
                        inner.scheduling_cycle += 1;
                        let mut info = entry.info;
                        info.attempts += 1;
                        info.initial_attempt.get_or_insert_with(Instant::now);
                        inner.in_flight.insert(info.pod.uid.clone());
                        return Some((info, inner.scheduling_cycle));
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = self.notify.notified() => {}
            }
        }
    }

    /// The scheduling cycle for `uid` is over (bound, assumed or requeued).
    pub fn done(&self, uid: &str) {
        self.lock().in_flight.remove(uid);
    }

    /// Puts a pod that failed back (upstream `AddUnschedulableIfNotPresent`): rejected by
    /// plugins -> unschedulable pool; an error, or an event during its cycle -> backoffQ.
    pub fn add_unschedulable(&self, mut info: QueuedPodInfo, cycle: u64) {
        let now = Instant::now();
        let mut inner = self.lock();
        let uid = info.pod.uid.clone();
        inner.in_flight.remove(&uid);
        if inner.active.contains_key(&uid)
            || inner.backoff.contains_key(&uid)
            || inner.unschedulable.contains_key(&uid)
        {
            return;
        }
        info.timestamp = now;
        if info.unschedulable_plugins.is_empty() || inner.move_request_cycle >= cycle {
            inner.backoff.insert(uid, info);
        } else {
            inner.unschedulable.insert(uid, (info, now));
        }
    }

    /// A cluster event happened: pods rejected by a plugin that registered it may fit now
    /// (upstream `MoveAllToActiveOrBackoffQueue`).
    pub fn on_event(&self, event: ClusterEvent) {
        // An event no plugin registered cannot move anything: skip the pool scan (assigned
        // pod updates arrive once per binding, so this is the hot path).
        if !self.interest.values().any(|events| events.contains(&event)) {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        inner.move_request_cycle = inner.scheduling_cycle;
        let movable: Vec<String> = inner
            .unschedulable
            .iter()
            .filter(|(_, (info, _))| {
                info.gated_by.is_none()
                    && (info.unschedulable_plugins.is_empty()
                        || info.unschedulable_plugins.iter().any(|p| {
                            self.interest
                                .get(p)
                                .is_none_or(|events| events.contains(&event))
                        }))
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in movable {
            if let Some((info, _)) = inner.unschedulable.remove(&uid) {
                self.requeue(&mut inner, info, now);
            }
        }
    }

    /// Moves pods whose backoff is over to activeQ (upstream runs this every second).
    pub fn flush_backoff_completed(&self, now: Instant) {
        let mut inner = self.lock();
        let done: Vec<String> = inner
            .backoff
            .iter()
            .filter(|(_, info)| self.backoff_expiry(info) <= now)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in done {
            if let Some(info) = inner.backoff.remove(&uid) {
                self.push_active(&mut inner, info);
            }
        }
    }

    /// Retries pods that sat in the unschedulable pool longer than [`MAX_IN_UNSCHEDULABLE`]
    /// (upstream runs this every 30 s). Gated pods stay until their gates are removed.
    pub fn flush_unschedulable_leftover(&self, now: Instant) {
        let mut inner = self.lock();
        let old: Vec<String> = inner
            .unschedulable
            .iter()
            .filter(|(_, (info, since))| {
                info.gated_by.is_none() && now.duration_since(*since) >= MAX_IN_UNSCHEDULABLE
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in old {
            if let Some((info, _)) = inner.unschedulable.remove(&uid) {
                self.requeue(&mut inner, info, now);
            }
        }
    }

    /// Sub-queue lengths.
    pub fn pending(&self) -> Pending {
        let inner = self.lock();
        let gated = inner
            .unschedulable
            .values()
            .filter(|(i, _)| i.gated_by.is_some())
            .count();
        Pending {
            active: inner.active.len(),
            backoff: inner.backoff.len(),
            unschedulable: inner.unschedulable.len() - gated,
            gated,
        }
    }

    /// Stops `pop` for good.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }
}

/// Whether an update to an unscheduled pod may change a scheduling decision: anything
/// but status and bookkeeping metadata.
fn spec_or_labels_changed(old: &CachedPod, new: &CachedPod) -> bool {
    old.spec != new.spec || old.metadata.labels != new.metadata.labels
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::interface::{ExtensionPoint, Status};
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{PodSchedulingGate, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str, priority: i32, gated: bool) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                uid: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                priority: Some(priority),
                scheduling_gates: gated.then(|| {
                    vec![PodSchedulingGate {
                        name: "example.com/gate".into(),
                    }]
                }),
                ..Default::default()
            }),
            ..Default::default()
        })))
    }

    struct Gates;
    impl Plugin for Gates {
        fn name(&self) -> &'static str {
            "SchedulingGates"
        }
        fn extension_points(&self) -> &'static [ExtensionPoint] {
            &[ExtensionPoint::PreEnqueue]
        }
        fn pre_enqueue(&self, pod: &CachedPod) -> Status {
            if pod
                .spec
                .as_ref()
                .is_some_and(|s| s.scheduling_gates.as_ref().is_some_and(|g| !g.is_empty()))
            {
                Status::new(
                    crate::framework::interface::Code::UnschedulableAndUnresolvable,
                    "gated",
                )
            } else {
                Status::success()
            }
        }
    }

    struct Fit;
    impl Plugin for Fit {
        fn name(&self) -> &'static str {
            "NodeResourcesFit"
        }
        fn extension_points(&self) -> &'static [ExtensionPoint] {
            &[ExtensionPoint::Filter]
        }
        fn events_to_register(&self) -> &'static [ClusterEvent] {
            &[ClusterEvent::NodeAdd, ClusterEvent::AssignedPodDelete]
        }
    }

    fn queue() -> SchedulingQueue {
        let less: LessFn = Arc::new(|a, b| {
            a.pod.priority > b.pod.priority
                || (a.pod.priority == b.pod.priority && a.timestamp < b.timestamp)
        });
        let plugins: Vec<Arc<dyn Plugin>> = vec![Arc::new(Gates), Arc::new(Fit)];
        SchedulingQueue::new(
            less,
            vec![plugins[0].clone()],
            &plugins,
            Duration::from_secs(1),
            Duration::from_secs(10),
        )
    }

    #[tokio::test]
    async fn priority_order_then_fifo() {
        let q = queue();
        let t = CancellationToken::new();
        q.add(pod("low", 0, false));
        q.add(pod("high", 100, false));
        q.add(pod("low2", 0, false));
        let mut order = Vec::new();
        for _ in 0..3 {
            let (info, _) = q.pop(&t).await.expect("pod");
            order.push(info.pod.name().to_string());
        }
        assert_eq!(order, ["high", "low", "low2"]);
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let q = queue();
        let secs: Vec<u64> = (1..=6).map(|n| q.backoff_duration(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 10, 10]);
    }

    #[tokio::test]
    async fn gated_pods_wait_until_their_gates_go() {
        let q = queue();
        q.add(pod("g", 0, true));
        assert_eq!(q.pending().gated, 1);
        // Cluster events do not release gated pods.
        q.on_event(ClusterEvent::NodeAdd);
        assert_eq!(q.pending().active, 0);
        q.update(pod("g", 0, false));
        assert_eq!(
            q.pending(),
            Pending {
                active: 1,
                ..Pending::default()
            }
        );
    }

    #[tokio::test]
    async fn unschedulable_pods_move_on_events_their_plugins_registered() {
        let q = queue();
        let t = CancellationToken::new();
        q.add(pod("p", 0, false));
        let (mut info, cycle) = q.pop(&t).await.expect("pod");
        info.unschedulable_plugins.insert("NodeResourcesFit");
        q.add_unschedulable(info, cycle);
        assert_eq!(q.pending().unschedulable, 1);
        // Not an event NodeResourcesFit cares about.
        q.on_event(ClusterEvent::AssignedPodAddOrUpdate);
        assert_eq!(q.pending().unschedulable, 1);
        q.on_event(ClusterEvent::NodeAdd);
        // Still inside its 1 s backoff: goes to backoffQ, then activeQ once it is over.
        assert_eq!(q.pending().backoff, 1);
        q.flush_backoff_completed(Instant::now() + Duration::from_secs(2));
        assert_eq!(q.pending().active, 1);
    }

    #[tokio::test]
    async fn event_during_the_cycle_sends_the_pod_to_backoff() {
        let q = queue();
        let t = CancellationToken::new();
        q.add(pod("p", 0, false));
        let (mut info, cycle) = q.pop(&t).await.expect("pod");
        q.on_event(ClusterEvent::NodeAdd);
        info.unschedulable_plugins.insert("NodeResourcesFit");
        q.add_unschedulable(info, cycle);
        assert_eq!(q.pending().backoff, 1);
    }

    #[tokio::test]
    async fn leftover_unschedulable_pods_are_flushed_after_five_minutes() {
        let q = queue();
        let t = CancellationToken::new();
        q.add(pod("p", 0, false));
        let (mut info, cycle) = q.pop(&t).await.expect("pod");
        info.unschedulable_plugins.insert("NodeResourcesFit");
        q.add_unschedulable(info, cycle);
        q.flush_unschedulable_leftover(Instant::now() + Duration::from_secs(60));
        assert_eq!(q.pending().unschedulable, 1);
        q.flush_unschedulable_leftover(Instant::now() + MAX_IN_UNSCHEDULABLE);
        assert_eq!(q.pending().active, 1);
        q.delete("p");
        assert_eq!(q.pending(), Pending::default());
    }
}
