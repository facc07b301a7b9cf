//! Workers that drain a [`WorkQueue`] into a sync function, with client-go's error handling.
//!
//! This is the `worker → processNextWorkItem → syncHandler(key) → handleErr` loop every
//! upstream controller repeats: a key that syncs cleanly is forgotten (its backoff resets),
//! a key that fails is re-added with per-key backoff until `max_retries`, then dropped with
//! an error log (the next event or resync brings it back).

use std::fmt::{Debug, Display};
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::workqueue::WorkQueue;

/// What a successful sync asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next event.
    Done,
    /// Look at the key again after this long (a deadline, a minReadySeconds check...).
    RequeueAfter(Duration),
}

/// How a controller's workers behave.
#[derive(Clone, Debug)]
pub struct Workers {
    /// The controller's name, for logs.
    pub name: String,
    /// How many keys sync at once (upstream's `--concurrent-*-syncs`).
    pub count: usize,
    /// Retries with backoff before a failing key is dropped (upstream: usually 15).
    pub max_retries: u32,
}

impl Workers {
    /// `count` workers for controller `name`, dropping a key after 15 failed retries.
    pub fn new(name: &str, count: usize) -> Self {
        Self {
            name: name.to_string(),
            count: count.max(1),
            max_retries: 15,
        }
    }

    /// Spawns into `tasks` one task that waits for `ready` (the informers' first full
    /// lists, and anything else that must precede the first sync), then runs the workers
    /// as [`spawn`](Self::spawn) does until `shutdown`. Nothing syncs on a partial cache.
    pub fn spawn_when<K, F, Fut, E>(
        self,
        tasks: &mut JoinSet<()>,
        ready: impl Future<Output = ()> + Send + 'static,
        queue: WorkQueue<K>,
        shutdown: CancellationToken,
        sync: F,
    ) where
        K: Clone + Eq + Hash + Debug + Display + Send + Sync + 'static,
        F: Fn(K) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        tasks.spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = ready => {}
            }
            let mut workers = JoinSet::new();
            self.spawn(&mut workers, queue, shutdown, sync);
            while workers.join_next().await.is_some() {}
        });
    }

    /// Spawns the workers into `tasks`. They stop when `shutdown` is cancelled: the queue
    /// is shut down, in-flight syncs finish, and queued keys are dropped.
    pub fn spawn<K, F, Fut, E>(
        &self,
        tasks: &mut JoinSet<()>,
        queue: WorkQueue<K>,
        shutdown: CancellationToken,
        sync: F,
    ) where
        K: Clone + Eq + Hash + Debug + Display + Send + Sync + 'static,
        F: Fn(K) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Action, E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        {
            let queue = queue.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move {
                shutdown.cancelled().await;
                queue.shut_down();
            });
        }
        for _ in 0..self.count {
            let queue = queue.clone();
            let sync = sync.clone();
            let cfg = self.clone();
            tasks.spawn(async move {
                while let Some(key) = queue.get().await {
                    let span = tracing::info_span!("sync", controller = %cfg.name, key = %key);
                    let run = tracing::Instrument::instrument(sync(key.clone()), span);
                    // A bug that panics in one sync must not take the worker (and the key it
                    // holds) with it: that would stall the queue for good. It is logged and
                    // the key retried with backoff, like an error.
                    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
                        Ok(result) => cfg.handle(&queue, &key, result),
                        Err(panic) => {
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(ToString::to_string)
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            tracing::error!(controller = %cfg.name, %key, panic = %what, "sync panicked; retrying with backoff");
                            queue.add_rate_limited(key.clone());
                        }
                    }
                    queue.done(&key);
                }
            });
        }
    }

    fn handle<K, E>(&self, queue: &WorkQueue<K>, key: &K, result: Result<Action, E>)
    where
        K: Clone + Eq + Hash + Debug + Display + Send + Sync + 'static,
        E: Display,
    {
        match result {
            Ok(Action::Done) => queue.forget(key),
            Ok(Action::RequeueAfter(after)) => {
                queue.forget(key);
                queue.add_after(key.clone(), after);
            }
            Err(e) if queue.num_requeues(key) < self.max_retries => {
                tracing::warn!(controller = %self.name, %key, error = %e, "sync failed; retrying with backoff");
                queue.add_rate_limited(key.clone());
            }
            Err(e) => {
                tracing::error!(controller = %self.name, %key, error = %e, "sync failed too often; dropping key");
                queue.forget(key);
            }
        }
    }
}

/// Feeds an informer's notifications into `queue`: `keys` maps each notification to the
/// keys to enqueue (often the object's own key, sometimes its owner's). Runs until the
/// informer or `shutdown` ends.
pub fn enqueue_from<N, K, F>(
    tasks: &mut JoinSet<()>,
    mut notifications: tokio::sync::mpsc::UnboundedReceiver<N>,
    queue: WorkQueue<K>,
    shutdown: CancellationToken,
    keys: F,
) where
    N: Send + 'static,
    K: Clone + Eq + Hash + Send + Sync + 'static,
    F: Fn(&N) -> Vec<K> + Send + 'static,
{
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                n = notifications.recv() => match n {
                    Some(n) => for key in keys(&n) {
                        queue.add(key);
                    },
                    None => return,
                },
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_sync_is_retried_and_the_worker_survives() {
        let queue: WorkQueue<String> = WorkQueue::with_rate_limiter(
            "panics",
            None,
            Box::new(crate::workqueue::ItemExponentialFailureRateLimiter::new(
                Duration::from_millis(1),
                Duration::from_millis(10),
            )),
        );
        let attempts = Arc::new(AtomicU32::new(0));
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let a = attempts.clone();
        Workers::new("panics", 1).spawn(
            &mut tasks,
            queue.clone(),
            shutdown.clone(),
            move |key: String| {
                let (a, done_tx) = (a.clone(), done_tx.clone());
                async move {
                    if a.fetch_add(1, Ordering::SeqCst) < 2 {
                        panic!("bug in sync of {key}");
                    }
                    let _ = done_tx.send(key);
                    Ok::<_, String>(Action::Done)
                }
            },
        );
        queue.add("ns/a".to_string());
        let synced = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
        assert_eq!(synced.ok().flatten().as_deref(), Some("ns/a"));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            3,
            "two panics, then success"
        );
        // The same worker still serves other keys.
        queue.add("ns/b".to_string());
        let synced = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
        assert_eq!(synced.ok().flatten().as_deref(), Some("ns/b"));
        shutdown.cancel();
        while tasks.join_next().await.is_some() {}
    }
}
