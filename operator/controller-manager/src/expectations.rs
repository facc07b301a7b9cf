//! Upstream's `ControllerExpectations` and `UIDTrackingControllerExpectations`
//! (`pkg/controller/controller_utils.go`).
//!
//! A controller that creates or deletes N objects records that it expects to observe N
//! creations or deletions in its informer cache. Until it has (or until the record is five
//! minutes old, in case a watch event was lost), it does not act on the cache again: the
//! cache may not show its own writes yet, and acting on it would create or delete twice.
//!
//! Shared by every controller that manages pods through expectations (replicaset, job,
//! daemonset).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Upstream's `ExpectationsTimeout`: expectations older than this count as satisfied, so a
/// lost watch event never stalls a controller for more than five minutes.
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// The adds and deletes one controller (key `namespace/name`) still waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlleeExpectations {
    /// Creations not yet observed.
    pub add: i64,
    /// Deletions not yet observed.
    pub del: i64,
    /// When the expectations were set.
    pub timestamp: Instant,
}

impl ControlleeExpectations {
    /// Both counts reached zero (or below: observations may outrun expectations).
    pub fn fulfilled(&self) -> bool {
        self.add <= 0 && self.del <= 0
    }
}

#[derive(Default)]
struct State {
    counts: HashMap<String, ControlleeExpectations>,
    /// Keys (`namespace/name`) of the objects each controller expects to see deleted, so
    /// that a deletion is counted once whether it shows up as an update carrying a
    /// deletionTimestamp or as the final delete.
    deleting: HashMap<String, HashSet<String>>,
}

/// Expectations of every controller of one kind. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct ControllerExpectations {
    state: Arc<Mutex<State>>,
    ttl: Duration,
}

impl Default for ControllerExpectations {
    fn default() -> Self {
        Self::new()
    }
}

impl ControllerExpectations {
    /// Expectations that expire after upstream's five minutes.
    pub fn new() -> Self {
        Self::with_ttl(EXPECTATIONS_TIMEOUT)
    }

    /// Expectations that expire after `ttl` (tests).
    pub fn with_ttl(ttl: Duration) -> Self {
        Self {
            state: Arc::new(Mutex::new(State::default())),
            ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a single map operation, so a poisoned lock still holds a
        // consistent map.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current expectations of `key`, if any were set.
    pub fn get(&self, key: &str) -> Option<ControlleeExpectations> {
        self.lock().counts.get(key).copied()
    }

    /// Whether `key` may act on its cache: no expectations recorded, all observed, or the
    /// record expired.
    pub fn satisfied(&self, key: &str) -> bool {
        match self.lock().counts.get(key) {
            Some(e) if e.fulfilled() => true,
            Some(e) if e.timestamp.elapsed() > self.ttl => {
                tracing::debug!(
                    controller = key,
                    add = e.add,
                    del = e.del,
                    "expectations expired"
                );
                true
            }
            Some(e) => {
                tracing::trace!(
                    controller = key,
                    add = e.add,
                    del = e.del,
                    "waiting on expectations"
                );
                false
            }
            None => true,
        }
    }

    /// Forgets `key` (its object was deleted).
    pub fn delete(&self, key: &str) {
        let mut st = self.lock();
        st.counts.remove(key);
        st.deleting.remove(key);
    }

    /// Replaces `key`'s expectations with `add` creations and `del` deletions.
    pub fn set(&self, key: &str, add: i64, del: i64) {
        self.lock().counts.insert(
            key.to_string(),
            ControlleeExpectations {
                add,
                del,
                timestamp: Instant::now(),
            },
        );
    }

    /// Expect `adds` creations (replacing earlier expectations).
    pub fn expect_creations(&self, key: &str, adds: usize) {
        self.set(key, to_i64(adds), 0);
    }

    /// Expect the deletion of the objects with `keys` (replacing earlier expectations).
    pub fn expect_deletions(&self, key: &str, keys: Vec<String>) {
        let mut st = self.lock();
        let n = to_i64(keys.len());
        st.deleting.entry(key.to_string()).or_default().extend(keys);
        st.counts.insert(
            key.to_string(),
            ControlleeExpectations {
                add: 0,
                del: n,
                timestamp: Instant::now(),
            },
        );
    }

    /// Lowers `key`'s counts (no-op when none are recorded).
    pub fn lower(&self, key: &str, add: i64, del: i64) {
        if let Some(e) = self.lock().counts.get_mut(key) {
            e.add -= add;
            e.del -= del;
        }
    }

    /// Raises `key`'s counts (no-op when none are recorded).
    pub fn raise(&self, key: &str, add: i64, del: i64) {
        self.lower(key, -add, -del);
    }

    /// One expected creation was observed (or will never happen).
    pub fn creation_observed(&self, key: &str) {
        self.lower(key, 1, 0);
    }

    /// The object `object_key` was seen being deleted; counts only if `key` expected it,
    /// and only once.
    pub fn deletion_observed(&self, key: &str, object_key: &str) {
        let mut st = self.lock();
        let expected = st
            .deleting
            .get_mut(key)
            .is_some_and(|set| set.remove(object_key));
        if expected && let Some(e) = st.counts.get_mut(key) {
            e.del -= 1;
        }
    }

    /// The keys of the objects `key` still expects to see deleted.
    pub fn pending_deletions(&self, key: &str) -> HashSet<String> {
        self.lock().deleting.get(key).cloned().unwrap_or_default()
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_satisfied() {
        let e = ControllerExpectations::new();
        assert!(e.satisfied("ns/rs"));
        assert_eq!(e.get("ns/rs"), None);
    }

    #[test]
    fn creations_are_counted_down() {
        let e = ControllerExpectations::new();
        e.expect_creations("ns/rs", 2);
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(!e.satisfied("ns/rs"));
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        // Extra observations (adoptions, other creators) keep it satisfied.
        e.creation_observed("ns/rs");
        assert!(e.satisfied("ns/rs"));
        e.raise("ns/rs", 2, 0);
        assert!(!e.satisfied("ns/rs"));
    }

    #[test]
    fn deletions_count_once_per_expected_object() {
        let e = ControllerExpectations::new();
        e.expect_deletions("ns/rs", vec!["ns/a".into(), "ns/b".into()]);
        assert!(!e.satisfied("ns/rs"));
        e.deletion_observed("ns/rs", "ns/a");
        // Seen again as the final delete after the deletionTimestamp update.
        e.deletion_observed("ns/rs", "ns/a");
        // Not one we deleted.
        e.deletion_observed("ns/rs", "ns/zzz");
        assert!(!e.satisfied("ns/rs"));
        assert_eq!(e.pending_deletions("ns/rs").len(), 1);
        e.deletion_observed("ns/rs", "ns/b");
        assert!(e.satisfied("ns/rs"));
    }

    #[test]
    fn expired_expectations_are_satisfied() {
        let e = ControllerExpectations::with_ttl(Duration::ZERO);
        e.expect_creations("ns/rs", 5);
        std::thread::sleep(Duration::from_millis(2));
        assert!(e.satisfied("ns/rs"));
        assert_eq!(e.get("ns/rs").map(|x| x.add), Some(5));
    }

    #[test]
    fn delete_forgets() {
        let e = ControllerExpectations::new();
        e.expect_deletions("ns/rs", vec!["ns/a".into()]);
        e.delete("ns/rs");
        assert!(e.satisfied("ns/rs"));
        assert!(e.pending_deletions("ns/rs").is_empty());
    }
}
