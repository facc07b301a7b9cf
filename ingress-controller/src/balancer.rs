//! Load balancing across a backend's ready endpoints: round robin, or power-of-two-choices
//! least-loaded (two random candidates, the one with fewer requests in flight wins), both
//! skipping endpoints a retry already tried and endpoints passively ejected after connect
//! failures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long an endpoint that refused a connection is left out of the rotation. Short, so
/// an endpoint that recovers gets traffic again soon even before its EndpointSlice moves.
pub const EJECTION: Duration = Duration::from_secs(5);

/// How an endpoint is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// Power of two choices on requests in flight: nearly as good as scanning for the least
    /// loaded endpoint, without the herd that a strict "least" causes when every proxy
    /// replica sees the same idle endpoint.
    LeastRequest,
}

impl Policy {
    /// Parses ingress-nginx's `load-balance` values (`ewma` is P2C on latency there; ours
    /// is P2C on requests in flight, which tracks the same slowness) and our own name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "round_robin" => Some(Self::RoundRobin),
            "least_request" | "ewma" => Some(Self::LeastRequest),
            _ => None,
        }
    }
}

/// The endpoints of one Service port and the round-robin position among them.
#[derive(Debug)]
pub struct Upstream {
    /// `namespace/service:port`, for logs.
    pub name: String,
    endpoints: Vec<SocketAddr>,
    /// Requests in flight per endpoint (same order as `endpoints`).
    in_flight: Vec<AtomicUsize>,
    next: AtomicUsize,
    /// When each endpoint's ejection ends (same order as `endpoints`), in milliseconds
    /// since `epoch`; 0 for never ejected. Atomics rather than a locked map: every request
    /// consults them, from every proxy worker thread at once.
    ejected_until: Vec<AtomicU64>,
    epoch: Instant,
}

impl Upstream {
    /// An upstream over `endpoints` (deduplicated, in a stable order).
    pub fn new(name: String, mut endpoints: Vec<SocketAddr>) -> Self {
        endpoints.sort();
        endpoints.dedup();
        Self {
            name,
            in_flight: endpoints.iter().map(|_| AtomicUsize::new(0)).collect(),
            ejected_until: endpoints.iter().map(|_| AtomicU64::new(0)).collect(),
            endpoints,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    /// Milliseconds since `epoch`, the clock of `ejected_until`.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the `i`-th endpoint is ejected at `now` (see [`Upstream::now_ms`]).
    fn ejected(&self, i: usize, now: u64) -> bool {
        self.ejected_until[i].load(Ordering::Relaxed) > now
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    /// The next endpoint in turn that is not in `tried` and not ejected. When every
    /// untried endpoint is ejected, an ejected one is still better than failing outright.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let mut fallback = None;
        for i in 0..n {
            let at = (start + i) % n;
            let ep = self.endpoints[at];
            if tried.contains(&ep) {
                continue;
            }
            if !self.ejected(at, now) {
                return Some(ep);
            }
            fallback.get_or_insert(ep);
        }
        fallback
    }

    /// Picks by `policy`; see [`Upstream::pick`] for what is skipped.
    pub fn pick_with(&self, tried: &[SocketAddr], policy: Policy) -> Option<SocketAddr> {
        if policy == Policy::RoundRobin || self.endpoints.len() < 2 {
            return self.pick(tried);
        }
        let now = self.now_ms();
        let eligible: Vec<usize> = (0..self.endpoints.len())
            .filter(|&i| !tried.contains(&self.endpoints[i]) && !self.ejected(i, now))
            .collect();
        match eligible.len() {
            // Nothing healthy and untried: round robin knows the last resort.
            0 => self.pick(tried),
            1 => Some(self.endpoints[eligible[0]]),
            k => {
                let a = rand::random_range(0..k);
                // A second candidate distinct from the first.
                let b = (a + rand::random_range(1..k)) % k;
                let (a, b) = (eligible[a], eligible[b]);
                let load = |i: usize| self.in_flight[i].load(Ordering::Relaxed);
                Some(self.endpoints[if load(b) < load(a) { b } else { a }])
            }
        }
    }

    /// Counts a request to `ep` as in flight until the guard drops.
    pub fn start(&self, ep: SocketAddr) -> InFlight<'_> {
        let counter = self
            .endpoints
            .binary_search(&ep)
            .ok()
            .and_then(|i| self.in_flight.get(i));
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        InFlight(counter)
    }

    /// Records a connect failure: `ep` leaves the rotation for [`EJECTION`]. An address
    /// that is not one of the endpoints is never picked, so there is nothing to record.
    pub fn eject(&self, ep: SocketAddr) {
        if let Ok(i) = self.endpoints.binary_search(&ep) {
            let until = self
                .now_ms()
                .saturating_add(u64::try_from(EJECTION.as_millis()).unwrap_or(u64::MAX));
            self.ejected_until[i].store(until, Ordering::Relaxed);
        }
    }

    /// Whether this upstream has the same endpoints as `other` (then the controller keeps
    /// the old one, and with it the rotation and ejections, across table rebuilds).
    pub fn same_endpoints(&self, endpoints: &[SocketAddr]) -> bool {
        let mut sorted = endpoints.to_vec();
        sorted.sort();
        sorted.dedup();
        sorted == self.endpoints
    }
}

/// A request in flight to one endpoint (see [`Upstream::start`]).
#[derive(Debug)]
pub struct InFlight<'a>(Option<&'a AtomicUsize>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn round_robin_skips_tried_and_ejected() {
        let u = Upstream::new("u".into(), vec![addr(3), addr(1), addr(2), addr(1)]);
        assert_eq!(u.endpoints().len(), 3);
        let picks: Vec<_> = (0..6).filter_map(|_| u.pick(&[])).collect();
        assert_eq!(
            picks,
            vec![addr(1), addr(2), addr(3), addr(1), addr(2), addr(3)]
        );
        // A retry never gets an endpoint it tried.
        for _ in 0..3 {
            assert_ne!(u.pick(&[addr(1)]), Some(addr(1)));
        }
        assert_eq!(u.pick(&[addr(1), addr(2), addr(3)]), None);
        u.eject(addr(2));
        for _ in 0..6 {
            assert_ne!(u.pick(&[]), Some(addr(2)));
        }
        // All others tried: the ejected one is the last resort.
        assert_eq!(u.pick(&[addr(1), addr(3)]), Some(addr(2)));
        assert!(u.same_endpoints(&[addr(2), addr(3), addr(1)]));
        assert!(!u.same_endpoints(&[addr(2)]));
        assert_eq!(Upstream::new("e".into(), vec![]).pick(&[]), None);
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let u = Upstream::new("u".into(), vec![addr(1), addr(2), addr(3)]);
        // addr(1) and addr(2) are busy; of any two candidates the idler one wins, so
        // addr(1) (the busiest) is never chosen.
        let _busy: Vec<_> = (0..5).map(|_| u.start(addr(1))).collect();
        let _less: Vec<_> = (0..2).map(|_| u.start(addr(2))).collect();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let ep = u.pick_with(&[], Policy::LeastRequest).expect("pick");
            assert_ne!(ep, addr(1));
            seen.insert(ep);
        }
        assert!(seen.contains(&addr(3)));
        // Guards give the count back.
        drop(_busy);
        assert_eq!(u.in_flight[0].load(Ordering::Relaxed), 0);
        // Tried and ejected endpoints are skipped as in round robin.
        u.eject(addr(3));
        assert_eq!(u.pick_with(&[addr(2)], Policy::LeastRequest), Some(addr(1)));
        assert_eq!(
            u.pick_with(&[addr(1), addr(2)], Policy::LeastRequest),
            Some(addr(3))
        );
        assert_eq!(Policy::parse("ewma"), Some(Policy::LeastRequest));
        assert_eq!(Policy::parse("round_robin"), Some(Policy::RoundRobin));
        assert_eq!(Policy::parse("random"), None);
    }
}
