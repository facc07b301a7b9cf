//! A token bucket with the semantics of Go's `golang.org/x/time/rate` limiter, which
//! client-go's QPS/burst limit and the work queue's overall limiter are built on.
//!
//! The bucket starts full (`burst` tokens) and refills at `qps` tokens per second. A caller
//! *reserves* a token and is told how long to wait before using it; reserving never fails,
//! it only pushes the wait further out, so callers are served in reservation order.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A shared token bucket. Clones draw from the same bucket.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    inner: Option<Arc<Mutex<Bucket>>>,
    /// Grants nothing, ever (a rate of zero where zero means "stop", not "unlimited").
    closed: bool,
}

#[derive(Debug)]
struct Bucket {
    qps: f64,
    burst: f64,
    /// Tokens available at `last`; negative when reservations ran ahead of the refill.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket refilling at `qps` per second holding at most `burst` tokens (at least one).
    /// A `qps` of zero or less means no limit, like client-go's `QPS < 0`.
    pub fn new(qps: f64, burst: u32) -> Self {
        if qps.is_nan() || qps <= 0.0 || qps.is_infinite() {
            return Self::unlimited();
        }
        let burst = f64::from(burst.max(1));
        Self {
            inner: Some(Arc::new(Mutex::new(Bucket {
                qps,
                burst,
                tokens: burst,
                last: Instant::now(),
            }))),
            closed: false,
        }
    }

    /// A bucket that never makes anyone wait.
    pub fn unlimited() -> Self {
        Self {
            inner: None,
            closed: false,
        }
    }

    /// A bucket that grants nothing: [`TokenBucket::try_take`] is always false.
    pub fn never() -> Self {
        Self {
            inner: None,
            closed: true,
        }
    }

    /// Whether this bucket never makes anyone wait.
    pub fn is_unlimited(&self) -> bool {
        self.inner.is_none() && !self.closed
    }

    /// How long the bucket takes to refill one token; `None` when it never makes anyone
    /// wait (or never grants).
    pub fn token_interval(&self) -> Option<Duration> {
        let inner = self.inner.as_ref()?;
        let qps = inner.lock().unwrap_or_else(PoisonError::into_inner).qps;
        Some(Duration::from_secs_f64(1.0 / qps))
    }

    /// Takes a token now and returns how long the caller must wait before acting on it.
    pub fn reserve(&self) -> Duration {
        if self.closed {
            return Duration::MAX;
        }
        let Some(inner) = &self.inner else {
            return Duration::ZERO;
        };
        let mut b = inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * b.qps).min(b.burst);
        b.last = now;
        b.tokens -= 1.0;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / b.qps)
        }
    }

    /// Takes a token if one is available now; never goes into debt (client-go's
    /// `TryAccept`).
    pub fn try_take(&self) -> bool {
        let Some(inner) = &self.inner else {
            return !self.closed;
        };
        let mut b = inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * b.qps).min(b.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_is_free_then_one_token_per_interval() {
        let bucket = TokenBucket::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(bucket.reserve(), Duration::ZERO);
        }
        // The 4th and 5th queue up behind the refill: 100 ms, then 200 ms.
        assert_eq!(bucket.reserve(), Duration::from_millis(100));
        assert_eq!(bucket.reserve(), Duration::from_millis(200));
        tokio::time::advance(Duration::from_millis(300)).await;
        // 300 ms refilled 3 tokens, two of which were already promised.
        assert_eq!(bucket.reserve(), Duration::ZERO);
        assert_eq!(bucket.reserve(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn refill_is_capped_at_burst() {
        let bucket = TokenBucket::new(100.0, 2);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(bucket.reserve(), Duration::ZERO);
        assert_eq!(bucket.reserve(), Duration::ZERO);
        assert_eq!(bucket.reserve(), Duration::from_millis(10));
    }

    #[test]
    fn non_positive_qps_is_unlimited() {
        for qps in [0.0, -1.0, f64::NAN] {
            let bucket = TokenBucket::new(qps, 1);
            assert!(bucket.is_unlimited());
            for _ in 0..1000 {
                assert_eq!(bucket.reserve(), Duration::ZERO);
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn try_take_never_borrows() {
        let bucket = TokenBucket::new(1.0, 1);
        assert!(bucket.try_take());
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(!bucket.try_take());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(bucket.try_take());
        assert!(!TokenBucket::never().try_take());
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_for_the_reserved_token() {
        let bucket = TokenBucket::new(2.0, 1);
        let start = Instant::now();
        bucket.acquire().await;
        bucket.acquire().await;
        bucket.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
