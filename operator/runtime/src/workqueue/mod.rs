//! client-go's rate-limited work queue.
//!
//! The guarantees controllers are written against:
//!
//! - **De-duplication**: a key added many times before a worker takes it is handed out once.
//! - **No concurrent syncs of one key**: a key added while a worker holds it is parked
//!   ("dirty") and handed out again only after that worker calls [`WorkQueue::done`].
//! - **Fair order**: keys come out in the order they were first added.
//! - **Delays**: [`WorkQueue::add_after`] keeps only the earliest pending delay per key;
//!   [`WorkQueue::add_rate_limited`] asks the [`RateLimiter`] how long a failing key waits.
//!
//! Metrics carry upstream's names (`workqueue_depth`, `workqueue_adds_total`, ...) with the
//! queue's name as the `name` label.

mod rate_limiter;

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::{Metrics, QueueLabel, WorkqueueMetrics};

pub use rate_limiter::{
    BucketRateLimiter, ItemExponentialFailureRateLimiter, MaxOf, RateLimiter,
    default_controller_rate_limiter,
};

/// A rate-limited work queue. Clones share the queue.
pub struct WorkQueue<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K> {
    name: String,
    state: Mutex<State<K>>,
    notify: Notify,
    limiter: Box<dyn RateLimiter<K>>,
    metrics: Option<(WorkqueueMetrics, QueueLabel)>,
}

struct State<K> {
    /// Keys ready to hand out, in order.
    queue: VecDeque<K>,
    /// Keys that need processing (queued, or re-added while being processed), with the
    /// time they were first added, for the queue-duration metric.
    dirty: HashMap<K, Instant>,
    /// Keys a worker holds, with the time it took them.
    processing: HashMap<K, Instant>,
    /// Keys waiting out a delay, with the earliest time they become ready.
    waiting: HashMap<K, Instant>,
    shutting_down: bool,
}

impl<K> WorkQueue<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    /// A queue named `name` with client-go's default controller rate limiter, reporting to
    /// `metrics`.
    pub fn new(name: &str, metrics: &Metrics) -> Self {
        Self::with_rate_limiter(
            name,
            Some(metrics),
            Box::new(default_controller_rate_limiter()),
        )
    }

    /// A queue with a chosen rate limiter; `metrics` may be left out (tests, tools).
    pub fn with_rate_limiter(
        name: &str,
        metrics: Option<&Metrics>,
        limiter: Box<dyn RateLimiter<K>>,
    ) -> Self {
        let inner = Arc::new(Inner {
            name: name.to_string(),
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashMap::new(),
                processing: HashMap::new(),
                waiting: HashMap::new(),
                shutting_down: false,
            }),
            notify: Notify::new(),
            limiter,
            metrics: metrics.map(|m| {
                (
                    m.workqueue(),
                    QueueLabel {
                        name: name.to_string(),
                    },
                )
            }),
        });
        if inner.metrics.is_some()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(report_unfinished_work(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn state(&self) -> MutexGuard<'_, State<K>> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks `key` as needing processing.
    pub fn add(&self, key: K) {
        let mut st = self.state();
        if st.shutting_down || st.dirty.contains_key(&key) {
            return;
        }
        if let Some((m, label)) = &self.inner.metrics {
            m.adds.get_or_create(label).inc();
        }
        st.dirty.insert(key.clone(), Instant::now());
        if st.processing.contains_key(&key) {
            // Handed out again when the worker holding it calls `done`.
            return;
        }
        st.queue.push_back(key);
        self.set_depth(&st);
        drop(st);
        self.inner.notify.notify_one();
    }

    /// Adds `key` once `delay` has passed. Of several pending delays for one key only the
    /// earliest counts.
    pub fn add_after(&self, key: K, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let ready = Instant::now() + delay;
        {
            let mut st = self.state();
            if st.shutting_down {
                return;
            }
            match st.waiting.get(&key) {
                Some(at) if *at <= ready => return,
                _ => {
                    st.waiting.insert(key.clone(), ready);
                }
            }
        }
        let queue = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            tokio::time::sleep_until(ready).await;
            let Some(inner) = queue.upgrade() else {
                return;
            };
            let q = WorkQueue { inner };
            let due = {
                let mut st = q.state();
                // A later, earlier-deadline add_after replaced this one and fired already.
                if st.waiting.get(&key) == Some(&ready) {
                    st.waiting.remove(&key);
                    true
                } else {
                    false
                }
            };
            if due {
                q.add(key);
            }
        });
    }

    /// Adds `key` after the wait the rate limiter gives it (one more failure counted).
    pub fn add_rate_limited(&self, key: K) {
        if let Some((m, label)) = &self.inner.metrics {
            m.retries.get_or_create(label).inc();
        }
        let delay = self.inner.limiter.when(&key);
        self.add_after(key, delay);
    }

    /// Resets `key`'s failure count: its next retry starts from the shortest backoff.
    pub fn forget(&self, key: &K) {
        self.inner.limiter.forget(key);
    }

    /// How many times `key` failed since it was last forgotten.
    pub fn num_requeues(&self, key: &K) -> u32 {
        self.inner.limiter.num_requeues(key)
    }

    /// Waits for the next key. `None` once the queue is shut down.
    ///
    /// The caller owns the key until it calls [`WorkQueue::done`].
    pub async fn get(&self) -> Option<K> {
        loop {
            // Register for a wake-up before looking, so an add or shut_down between the
            // look and the await is not missed.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state();
                if st.shutting_down {
                    return None;
                }
                if let Some(key) = st.queue.pop_front() {
                    let now = Instant::now();
                    let added = st.dirty.remove(&key);
                    st.processing.insert(key.clone(), now);
                    self.set_depth(&st);
                    if let (Some((m, label)), Some(added)) = (&self.inner.metrics, added) {
                        m.queue_duration
                            .get_or_create(label)
                            .observe(now.duration_since(added).as_secs_f64());
                    }
                    let more = !st.queue.is_empty();
                    drop(st);
                    if more {
                        // Pass the baton: another waiting worker may take the next key.
                        self.inner.notify.notify_one();
                    }
                    return Some(key);
                }
            }
            notified.await;
        }
    }

    /// Releases `key` after processing; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &K) {
        let mut st = self.state();
        if let Some(started) = st.processing.remove(key)
            && let Some((m, label)) = &self.inner.metrics
        {
            m.work_duration
                .get_or_create(label)
                .observe(started.elapsed().as_secs_f64());
        }
        if st.dirty.contains_key(key) && !st.shutting_down {
            st.queue.push_back(key.clone());
            self.set_depth(&st);
            drop(st);
            self.inner.notify.notify_one();
        }
    }

    /// Stops the queue: waiting and future [`WorkQueue::get`] calls return `None`, adds are
    /// ignored and queued keys are dropped.
    pub fn shut_down(&self) {
        let mut st = self.state();
        st.shutting_down = true;
        st.queue.clear();
        st.dirty.clear();
        st.waiting.clear();
        self.set_depth(&st);
        drop(st);
        self.inner.notify.notify_waiters();
    }

    /// Whether [`WorkQueue::shut_down`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.state().shutting_down
    }

    /// Keys ready to hand out (not counting ones being processed or waiting out a delay).
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    /// Whether no key is ready to hand out.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn set_depth(&self, st: &State<K>) {
        if let Some((m, label)) = &self.inner.metrics {
            m.depth
                .get_or_create(label)
                .set(i64::try_from(st.queue.len()).unwrap_or(i64::MAX));
        }
    }
}

/// client-go's `updateUnfinishedWorkLoop`: every 500 ms, how long in-flight work has run.
async fn report_unfinished_work<K>(queue: Weak<Inner<K>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Some(inner) = queue.upgrade() else {
            return;
        };
        let Some((m, label)) = &inner.metrics else {
            return;
        };
        let (unfinished, longest, stop) = {
            let st = inner.state.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Instant::now();
            let ages = st
                .processing
                .values()
                .map(|t| now.duration_since(*t).as_secs_f64());
            let (sum, max) = ages.fold((0.0, 0.0f64), |(s, m), a| (s + a, m.max(a)));
            (sum, max, st.shutting_down)
        };
        m.unfinished_work.get_or_create(label).set(unfinished);
        m.longest_running.get_or_create(label).set(longest);
        if stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn queue() -> WorkQueue<&'static str> {
        WorkQueue::with_rate_limiter(
            "test",
            None,
            Box::new(ItemExponentialFailureRateLimiter::new(
                Duration::from_millis(5),
                Duration::from_secs(1000),
            )),
        )
    }

    #[tokio::test]
    async fn duplicates_collapse_and_order_is_first_add() {
        let q = queue();
        for k in ["a", "b", "a", "c", "b"] {
            q.add(k);
        }
        assert_eq!(q.len(), 3);
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(q.get().await, Some("b"));
        assert_eq!(q.get().await, Some("c"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn key_added_while_processing_waits_for_done() {
        let q = queue();
        q.add("a");
        let held = q.get().await;
        assert_eq!(held, Some("a"));
        q.add("a");
        q.add("a");
        assert!(
            q.is_empty(),
            "a is being processed; it must not be handed out twice"
        );
        q.done(&"a");
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await, Some("a"));
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_keeps_the_earliest_delay() {
        let q = queue();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(2));
        q.add_after("a", Duration::from_secs(5));
        let start = Instant::now();
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        q.done(&"a");
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            q.is_empty(),
            "the later delays were folded into the earliest"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limited_backs_off_and_forget_resets() {
        let q = queue();
        let start = Instant::now();
        for expected_ms in [5u64, 10, 20] {
            let t = Instant::now();
            q.add_rate_limited("a");
            assert_eq!(q.get().await, Some("a"));
            assert_eq!(t.elapsed(), Duration::from_millis(expected_ms));
            q.done(&"a");
        }
        assert_eq!(q.num_requeues(&"a"), 3);
        q.forget(&"a");
        assert_eq!(q.num_requeues(&"a"), 0);
        assert_eq!(start.elapsed(), Duration::from_millis(35));
    }

    #[tokio::test]
    async fn shut_down_wakes_waiting_workers() {
        let q = queue();
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..3 {
            let q = q.clone();
            workers.spawn(async move { q.get().await });
        }
        tokio::task::yield_now().await;
        q.shut_down();
        while let Some(r) = workers.join_next().await {
            assert_eq!(r.expect("worker"), None);
        }
        q.add("late");
        assert!(q.is_empty(), "adds after shut-down are ignored");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_workers_never_hold_one_key_twice() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let q: WorkQueue<u32> = WorkQueue::with_rate_limiter(
            "stress",
            None,
            Box::new(ItemExponentialFailureRateLimiter::new(
                Duration::from_millis(1),
                Duration::from_millis(1),
            )),
        );
        let held = Arc::new(Mutex::new(HashSet::new()));
        let processed = Arc::new(AtomicUsize::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (q, held, processed) = (q.clone(), held.clone(), processed.clone());
            workers.spawn(async move {
                while let Some(k) = q.get().await {
                    assert!(held.lock().expect("lock").insert(k), "key {k} held twice");
                    tokio::task::yield_now().await;
                    held.lock().expect("lock").remove(&k);
                    processed.fetch_add(1, Ordering::SeqCst);
                    q.done(&k);
                }
            });
        }
        for round in 0..200u32 {
            q.add(round % 10);
            if round % 7 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(q.is_empty() && held.lock().expect("lock").is_empty()) {
            assert!(Instant::now() < deadline, "queue did not drain");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        q.shut_down();
        while let Some(r) = workers.join_next().await {
            r.expect("worker panicked");
        }
        // Every distinct key was processed at least once, and de-duplication kept the
        // count well under the 200 adds.
        let n = processed.load(Ordering::SeqCst);
        assert!((10..=200).contains(&n), "processed {n}");
    }

    #[tokio::test]
    async fn metrics_track_depth_adds_and_retries() {
        let metrics = Metrics::new();
        let q: WorkQueue<String> = WorkQueue::new("replicaset", &metrics);
        q.add("ns/a".into());
        q.add("ns/b".into());
        q.add("ns/a".into());
        let text = metrics.encode();
        assert!(
            text.contains("workqueue_depth{name=\"replicaset\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("workqueue_adds_total{name=\"replicaset\"} 2"),
            "{text}"
        );
        let k = q.get().await.expect("key");
        q.add_rate_limited(k.clone());
        q.done(&k);
        let text = metrics.encode();
        assert!(
            text.contains("workqueue_retries_total{name=\"replicaset\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("workqueue_work_duration_seconds_count{name=\"replicaset\"} 1"),
            "{text}"
        );
    }
}
