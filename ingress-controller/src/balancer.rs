//! Load balancing across a backend's ready endpoints: round robin, skipping endpoints a
//! retry already tried and endpoints passively ejected after connect failures.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long an endpoint that refused a connection is left out of the rotation. Short, so
/// an endpoint that recovers gets traffic again soon even before its EndpointSlice moves.
pub const EJECTION: Duration = Duration::from_secs(5);

/// The endpoints of one Service port and the round-robin position among them.
#[derive(Debug)]
pub struct Upstream {
    /// `namespace/service:port`, for logs.
    pub name: String,
    endpoints: Vec<SocketAddr>,
    next: AtomicUsize,
    /// Endpoint -> when its ejection ends.
    ejected: Mutex<HashMap<SocketAddr, Instant>>,
}

impl Upstream {
    /// An upstream over `endpoints` (deduplicated, in a stable order).
    pub fn new(name: String, mut endpoints: Vec<SocketAddr>) -> Self {
        endpoints.sort();
        endpoints.dedup();
        Self {
            name,
            endpoints,
            next: AtomicUsize::new(0),
            ejected: Mutex::new(HashMap::new()),
        }
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
        let now = Instant::now();
        let ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        let mut fallback = None;
        for i in 0..n {
            let ep = self.endpoints[(start + i) % n];
            if tried.contains(&ep) {
                continue;
            }
            match ejected.get(&ep) {
                Some(until) if *until > now => {
                    fallback.get_or_insert(ep);
                }
                _ => return Some(ep),
            }
        }
        fallback
    }

    /// Records a connect failure: `ep` leaves the rotation for [`EJECTION`].
    pub fn eject(&self, ep: SocketAddr) {
        let mut ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        ejected.retain(|_, until| *until > now);
        ejected.insert(ep, now + EJECTION);
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
}
