//! `EndpointSliceTracker`: the generation of every EndpointSlice this controller wrote, so
//! that (1) its own writes coming back through the informer don't trigger another sync, and
//! (2) a sync never runs on a cache older than its own last write (which would recreate or
//! resurrect slices).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use ferrokube_runtime::informer::ObjectKey;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::LABEL_SERVICE_NAME;

/// Marks a slice this controller deleted and expects to see disappear.
const DELETION_EXPECTED: i64 = -1;

type GenerationsBySlice = HashMap<String, i64>;

/// Generations by slice UID, by Service.
#[derive(Default)]
pub struct EndpointSliceTracker {
    by_service: Mutex<HashMap<ObjectKey, GenerationsBySlice>>,
}

fn service_key(slice: &EndpointSlice) -> ObjectKey {
    ObjectKey::new(
        slice.metadata.namespace.as_deref().unwrap_or_default(),
        slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SERVICE_NAME))
            .map(String::as_str)
            .unwrap_or_default(),
    )
}

fn uid(slice: &EndpointSlice) -> String {
    slice.metadata.uid.clone().unwrap_or_default()
}

fn generation(slice: &EndpointSlice) -> i64 {
    slice.metadata.generation.unwrap_or_default()
}

impl EndpointSliceTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, GenerationsBySlice>> {
        self.by_service
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the slice is tracked.
    pub fn has(&self, slice: &EndpointSlice) -> bool {
        self.lock()
            .get(&service_key(slice))
            .is_some_and(|g| g.contains_key(&uid(slice)))
    }

    /// Whether an informer event for `slice` needs a sync: it is unknown, or someone else
    /// wrote a newer generation than ours.
    pub fn should_sync(&self, slice: &EndpointSlice) -> bool {
        match self.lock().get(&service_key(slice)) {
            None => true,
            Some(g) => g.get(&uid(slice)).is_none_or(|g| generation(slice) > *g),
        }
    }

    /// Whether `slices` (from the cache) are older than what this controller last wrote
    /// for `service`: a slice older than ours, one we deleted, or one we wrote missing.
    pub fn stale_slices(&self, service: &ObjectKey, slices: &[&EndpointSlice]) -> bool {
        let map = self.lock();
        let Some(gens) = map.get(service) else {
            return false;
        };
        let mut provided = HashMap::new();
        for s in slices {
            provided.insert(uid(s), generation(s));
            if let Some(g) = gens.get(&uid(s))
                && (*g == DELETION_EXPECTED || *g > generation(s))
            {
                return true;
            }
        }
        gens.iter()
            .any(|(u, g)| *g != DELETION_EXPECTED && !provided.contains_key(u))
    }

    /// Records a slice as written (created or updated) by this controller.
    pub fn update(&self, slice: &EndpointSlice) {
        self.lock()
            .entry(service_key(slice))
            .or_default()
            .insert(uid(slice), generation(slice));
    }

    /// Records that this controller deleted `slice`.
    pub fn expect_deletion(&self, slice: &EndpointSlice) {
        self.lock()
            .entry(service_key(slice))
            .or_default()
            .insert(uid(slice), DELETION_EXPECTED);
    }

    /// Handles the informer's deletion of a slice; `true` when it was expected (no sync).
    pub fn handle_deletion(&self, slice: &EndpointSlice) -> bool {
        let mut map = self.lock();
        if let Some(gens) = map.get_mut(&service_key(slice))
            && let Some(g) = gens.remove(&uid(slice))
            && g != DELETION_EXPECTED
        {
            return false;
        }
        true
    }

    /// Forgets a deleted Service.
    pub fn delete_service(&self, service: &ObjectKey) {
        self.lock().remove(service);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn slice(uid: &str, generation: i64) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                generation: Some(generation),
                labels: Some([(LABEL_SERVICE_NAME.to_string(), "svc".to_string())].into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            ..EndpointSlice::default()
        }
    }

    #[test]
    fn own_writes_dont_sync_and_stale_caches_are_detected() {
        let t = EndpointSliceTracker::default();
        let key = ObjectKey::new("ns", "svc");
        let a1 = slice("a", 1);
        assert!(t.should_sync(&a1), "unknown slices sync");
        t.update(&slice("a", 2));
        assert!(!t.should_sync(&slice("a", 2)), "our own write");
        assert!(t.should_sync(&slice("a", 3)), "someone else's newer write");
        assert!(t.stale_slices(&key, &[&a1]), "cache older than our write");
        assert!(
            t.stale_slices(&key, &[]),
            "our slice missing from the cache"
        );
        assert!(!t.stale_slices(&key, &[&slice("a", 2)]));
        t.expect_deletion(&slice("a", 2));
        assert!(
            t.stale_slices(&key, &[&slice("a", 2)]),
            "deleted but cached"
        );
        assert!(!t.stale_slices(&key, &[]));
        assert!(t.handle_deletion(&slice("a", 2)), "expected deletion");
        t.update(&slice("b", 1));
        assert!(!t.handle_deletion(&slice("b", 1)), "unexpected deletion");
    }
}
