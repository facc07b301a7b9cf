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
                    let result = tracing::Instrument::instrument(sync(key.clone()), span).await;
                    cfg.handle(&queue, &key, result);
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
