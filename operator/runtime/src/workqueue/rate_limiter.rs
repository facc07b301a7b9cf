//! How long a key waits before it is retried: client-go's `workqueue` rate limiters.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::ratelimit::TokenBucket;

/// Decides how long a failing key waits before it is handed out again.
pub trait RateLimiter<K>: Send + Sync {
    /// How long `key` should wait now; counts one more failure for it.
    fn when(&self, key: &K) -> Duration;
    /// Forgets `key`'s failures (it synced cleanly).
    fn forget(&self, key: &K);
    /// How many times `key` has failed since it was last forgotten.
    fn num_requeues(&self, key: &K) -> u32;
}

/// Per-key exponential backoff: `base * 2^failures`, capped at `max`.
#[derive(Debug)]
pub struct ItemExponentialFailureRateLimiter<K> {
    base: Duration,
    max: Duration,
    failures: Mutex<HashMap<K, u32>>,
}

impl<K> ItemExponentialFailureRateLimiter<K> {
    /// Backoff starting at `base`, doubling per failure, never above `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Clone + Eq + Hash + Send> RateLimiter<K> for ItemExponentialFailureRateLimiter<K> {
    fn when(&self, key: &K) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let n = failures.entry(key.clone()).or_insert(0);
        let exp = *n;
        *n = n.saturating_add(1);
        // Float math as client-go does: 2^exp overflows integers long before the cap.
        let secs =
            self.base.as_secs_f64() * 2f64.powi(i32::try_from(exp.min(1024)).unwrap_or(1024));
        if secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    fn forget(&self, key: &K) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    fn num_requeues(&self, key: &K) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// An overall limit across all keys: a token bucket (client-go's `BucketRateLimiter`).
#[derive(Debug)]
pub struct BucketRateLimiter {
    bucket: TokenBucket,
}

impl BucketRateLimiter {
    /// `qps` retries per second overall, `burst` at once.
    pub fn new(qps: f64, burst: u32) -> Self {
        Self {
            bucket: TokenBucket::new(qps, burst),
        }
    }
}

impl<K> RateLimiter<K> for BucketRateLimiter {
    fn when(&self, _key: &K) -> Duration {
        self.bucket.reserve()
    }
    fn forget(&self, _key: &K) {}
    fn num_requeues(&self, _key: &K) -> u32 {
        0
    }
}

/// The longest wait any of its limiters asks for.
pub struct MaxOf<K> {
    limiters: Vec<Box<dyn RateLimiter<K>>>,
}

impl<K> MaxOf<K> {
    /// Combines `limiters`.
    pub fn new(limiters: Vec<Box<dyn RateLimiter<K>>>) -> Self {
        Self { limiters }
    }
}

impl<K> RateLimiter<K> for MaxOf<K> {
    fn when(&self, key: &K) -> Duration {
        // Every limiter must see the failure, so no short-circuiting.
        self.limiters
            .iter()
            .map(|l| l.when(key))
            .max()
            .unwrap_or_default()
    }
    fn forget(&self, key: &K) {
        for l in &self.limiters {
            l.forget(key);
        }
    }
    fn num_requeues(&self, key: &K) -> u32 {
        self.limiters
            .iter()
            .map(|l| l.num_requeues(key))
            .max()
            .unwrap_or(0)
    }
}

/// client-go's `DefaultTypedControllerRateLimiter`: per-key backoff from 5 ms to 1000 s,
/// and no more than 10 retries per second overall (burst 100).
pub fn default_controller_rate_limiter<K>() -> MaxOf<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    MaxOf::new(vec![
        Box::new(ItemExponentialFailureRateLimiter::new(
            Duration::from_millis(5),
            Duration::from_secs(1000),
        )),
        Box::new(BucketRateLimiter::new(10.0, 100)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_per_failure_and_caps() {
        let l = ItemExponentialFailureRateLimiter::new(
            Duration::from_millis(5),
            Duration::from_secs(1000),
        );
        let waits: Vec<_> = (0..5).map(|_| l.when(&"a")).collect();
        assert_eq!(
            waits,
            [5, 10, 20, 40, 80].map(Duration::from_millis).to_vec()
        );
        assert_eq!(l.num_requeues(&"a"), 5);
        assert_eq!(
            l.when(&"b"),
            Duration::from_millis(5),
            "keys back off independently"
        );
        for _ in 0..100 {
            l.when(&"a");
        }
        assert_eq!(l.when(&"a"), Duration::from_secs(1000));
        l.forget(&"a");
        assert_eq!(l.num_requeues(&"a"), 0);
        assert_eq!(l.when(&"a"), Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn default_limiter_is_max_of_backoff_and_bucket() {
        let l = default_controller_rate_limiter::<u32>();
        // 100 distinct keys fit the burst: each waits only its own 5 ms.
        for k in 0..100 {
            assert_eq!(l.when(&k), Duration::from_millis(5));
        }
        // The 101st waits for the bucket's refill (100 ms at 10 qps).
        assert_eq!(l.when(&100), Duration::from_millis(100));
        assert_eq!(l.num_requeues(&7), 1);
        l.forget(&7);
        assert_eq!(l.num_requeues(&7), 0);
    }
}
