//! Per-client limits as ingress-nginx sets them (`limit-rps`, `limit-rpm`,
//! `limit-connections`, `limit-burst-multiplier`, `limit-whitelist`).
//!
//! ingress-nginx gives each Ingress its own nginx zones keyed by the client address:
//! `limit_req ... burst=<rate * multiplier> nodelay` and `limit_conn`. Both reject with 503
//! (its `limit-req-status-code` / `limit-conn-status-code` defaults). nginx's `limit_req`
//! with `nodelay` lets `burst + 1` requests through at once, then one per `1/rate`; that is
//! a token bucket of `burst + 1` tokens refilling at `rate`, which is what we use
//! ([`ferrokube_runtime::ratelimit::TokenBucket`]). Clients in `limit-whitelist` are not
//! limited at all.
//!
//! The state lives in the proxy, keyed by Ingress and settings, so a routing table swap
//! (an endpoint change, say) does not hand every client a fresh bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ferrokube_runtime::informer::ObjectKey;
use ferrokube_runtime::ratelimit::TokenBucket;

use crate::annotations::Cidr;

/// ingress-nginx's default `limit-burst-multiplier`.
pub const DEFAULT_BURST_MULTIPLIER: u32 = 5;

/// How often clients whose buckets have refilled (and zones left without clients, such
/// as those of deleted Ingresses) are forgotten: memory follows the active clients.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// One Ingress's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// `limit-rps`: requests per second per client.
    pub rps: Option<u32>,
    /// `limit-rpm`: requests per minute per client.
    pub rpm: Option<u32>,
    /// `limit-connections`: requests in progress per client.
    pub connections: Option<u32>,
    /// `limit-burst-multiplier`.
    pub burst_multiplier: u32,
    /// `limit-whitelist`: clients never limited.
    pub whitelist: Vec<Cidr>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rps: None,
            rpm: None,
            connections: None,
            burst_multiplier: DEFAULT_BURST_MULTIPLIER,
            whitelist: Vec::new(),
        }
    }
}

impl Limits {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.rps.is_some() || self.rpm.is_some() || self.connections.is_some()
    }

    /// The request-rate zones: (rate per second, bucket size).
    fn rates(&self) -> impl Iterator<Item = Rate> + '_ {
        let m = u64::from(self.burst_multiplier.max(1));
        let rps = self.rps.map(|r| Rate {
            per_minute: u64::from(r) * 60,
            burst: u64::from(r) * m,
        });
        let rpm = self.rpm.map(|r| Rate {
            per_minute: u64::from(r),
            burst: u64::from(r) * m,
        });
        rps.into_iter().chain(rpm)
    }
}

/// A request-rate setting; integer so it can key a map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Rate {
    per_minute: u64,
    burst: u64,
}

impl Rate {
    fn per_second(self) -> f64 {
        // Rates are at most u32::MAX * 60, exactly representable in an f64.
        self.per_minute as f64 / 60.0
    }

    /// How long an unused bucket takes to refill completely: after that, forgetting it
    /// changes nothing.
    fn idle_after(self) -> Duration {
        let tokens = (self.burst + 1) as f64;
        Duration::from_secs_f64((tokens / self.per_second()).min(86_400.0))
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The client sent more requests than its rate and burst allow.
    #[error("request rate limit exceeded")]
    Rate,
    /// The client has too many requests in progress.
    #[error("connection limit exceeded")]
    Connections,
}

/// One request-rate zone: a bucket and its last use per client.
type Zone = HashMap<IpAddr, (TokenBucket, Instant)>;

#[derive(Debug)]
struct Zones {
    by_key: HashMap<(ObjectKey, Rate), Zone>,
    swept: Instant,
}

impl Default for Zones {
    fn default() -> Self {
        Self {
            by_key: HashMap::new(),
            swept: Instant::now(),
        }
    }
}

impl Zones {
    /// Forgets clients idle long enough for their bucket to be full again (forgetting
    /// one changes nothing) and zones left empty.
    fn sweep(&mut self, now: Instant) {
        self.by_key.retain(|(_, rate), clients| {
            let idle = rate.idle_after();
            clients.retain(|_, (_, last)| now.saturating_duration_since(*last) < idle);
            !clients.is_empty()
        });
        self.swept = now;
    }
}

/// The limiters of every Ingress, shared by all connections.
#[derive(Debug, Default)]
pub struct Limiters {
    zones: Mutex<Zones>,
    in_progress: Mutex<HashMap<(ObjectKey, IpAddr), u32>>,
}

/// Counts a request in progress for `limit-connections` until dropped.
#[derive(Debug)]
pub struct InProgress {
    limiters: Arc<Limiters>,
    key: (ObjectKey, IpAddr),
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut m = self
            .limiters
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

impl Limiters {
    /// Admits a request from `ip` to `ingress` under `limits`, or says why not. Keep the
    /// returned guard until the response is finished.
    pub fn admit(
        self: &Arc<Self>,
        ingress: &ObjectKey,
        limits: &Limits,
        ip: IpAddr,
    ) -> Result<Option<InProgress>, Rejected> {
        if !limits.is_set() || limits.whitelist.iter().any(|c| c.contains(ip)) {
            return Ok(None);
        }
        // nginx checks limit_req before limit_conn (both in its preaccess phase).
        for rate in limits.rates() {
            if !self.take(ingress, rate, ip) {
                return Err(Rejected::Rate);
            }
        }
        let Some(max) = limits.connections else {
            return Ok(None);
        };
        let key = (ingress.clone(), ip);
        let mut m = self
            .in_progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(key.clone()).or_default();
        if *n >= max {
            return Err(Rejected::Connections);
        }
        *n += 1;
        Ok(Some(InProgress {
            limiters: self.clone(),
            key,
        }))
    }

    fn take(&self, ingress: &ObjectKey, rate: Rate, ip: IpAddr) -> bool {
        let mut zones = self.zones.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if now.saturating_duration_since(zones.swept) >= SWEEP_EVERY {
            zones.sweep(now);
        }
        let zone = zones.by_key.entry((ingress.clone(), rate)).or_default();
        let (bucket, last) = zone.entry(ip).or_insert_with(|| {
            let size = u32::try_from(rate.burst + 1).unwrap_or(u32::MAX);
            (TokenBucket::new(rate.per_second(), size), now)
        });
        *last = now;
        bucket.try_take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[tokio::test(start_paused = true)]
    async fn rps_allows_burst_plus_one_then_refills() {
        let l = Arc::new(Limiters::default());
        let ing = ObjectKey::new("ns", "i");
        let limits = Limits {
            rps: Some(2),
            burst_multiplier: 2,
            ..Limits::default()
        };
        // burst = 2 * 2 = 4: five at once, like nginx's `burst=4 nodelay`.
        for i in 0..5 {
            assert!(
                l.admit(&ing, &limits, ip("10.0.0.1")).is_ok(),
                "request {i}"
            );
        }
        assert_eq!(
            l.admit(&ing, &limits, ip("10.0.0.1")).err(),
            Some(Rejected::Rate)
        );
        // Other clients and other Ingresses have their own buckets.
        assert!(l.admit(&ing, &limits, ip("10.0.0.2")).is_ok());
        assert!(
            l.admit(&ObjectKey::new("ns", "j"), &limits, ip("10.0.0.1"))
                .is_ok()
        );
        // Two per second: one more after half a second.
        tokio::time::advance(Duration::from_millis(510)).await;
        assert!(l.admit(&ing, &limits, ip("10.0.0.1")).is_ok());
        assert!(l.admit(&ing, &limits, ip("10.0.0.1")).is_err());
    }

    #[test]
    fn connections_are_counted_until_the_guard_drops_and_whitelist_exempts() {
        let l = Arc::new(Limiters::default());
        let ing = ObjectKey::new("ns", "i");
        let limits = Limits {
            connections: Some(2),
            whitelist: vec![Cidr::parse("192.168.0.0/16").expect("cidr")],
            ..Limits::default()
        };
        let a = l.admit(&ing, &limits, ip("10.0.0.1")).expect("first");
        let b = l.admit(&ing, &limits, ip("10.0.0.1")).expect("second");
        assert_eq!(
            l.admit(&ing, &limits, ip("10.0.0.1")).err(),
            Some(Rejected::Connections)
        );
        drop(a);
        let c = l
            .admit(&ing, &limits, ip("10.0.0.1"))
            .expect("after one ended");
        drop((b, c));
        assert!(
            l.in_progress
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
        for _ in 0..10 {
            assert!(matches!(
                l.admit(&ing, &limits, ip("192.168.3.4")),
                Ok(None)
            ));
        }
    }

    #[test]
    fn sweeps_forget_refilled_clients_and_empty_zones() {
        let l = Arc::new(Limiters::default());
        let limits = Limits {
            rps: Some(1),
            ..Limits::default()
        };
        for i in 0..3u8 {
            let ing = ObjectKey::new("ns", &format!("i{i}"));
            assert!(l.admit(&ing, &limits, IpAddr::from([10, 0, 0, i])).is_ok());
        }
        let mut zones = l.zones.lock().unwrap_or_else(PoisonError::into_inner);
        assert_eq!(zones.by_key.len(), 3);
        let now = Instant::now();
        // 1 rps, burst 5: a bucket is full again 6 s after its last use.
        zones.sweep(now + Duration::from_secs(1));
        assert_eq!(zones.by_key.len(), 3);
        zones.sweep(now + Duration::from_secs(7));
        assert!(zones.by_key.is_empty());
    }

    #[test]
    fn rates() {
        let r = Rate {
            per_minute: 120,
            burst: 10,
        };
        assert!((r.per_second() - 2.0).abs() < f64::EPSILON);
        assert_eq!(r.idle_after(), Duration::from_secs_f64(5.5));
    }
}
