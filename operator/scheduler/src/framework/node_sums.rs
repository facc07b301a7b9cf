//! Sums over every node of the snapshot, carried from one scheduling cycle to the next.
//!
//! PodTopologySpread's PreFilter counts, for each topology domain, the pods on its nodes
//! that the incoming pod's constraints select; InterPodAffinity's PreScore sums the weights
//! of the affinity terms between the incoming pod and every existing pod, per domain.
//! Upstream recomputes both from every pod in the cluster on every cycle (in parallel). But
//! consecutive pods are usually alike (replicas of one Deployment) and a cycle changes one
//! node (the one the last pod was assumed onto), so with 10k pods placed that walk
//! re-derives 10k identical answers to place one more.
//!
//! [`NodeSums`] keeps, per key (what the sum depends on besides the nodes: the pod's
//! namespace, selectors, terms...), each node's part of the sum and the total. The next
//! cycle with an equal key compares its snapshot's node entries with the remembered ones by
//! pointer and recomputes only the parts of entries that changed: the cache replaces an
//! entry whenever its node or pods change (copy on write), and the memo holds the entries
//! it was computed from, so a pointer cannot be reused for a different entry while
//! remembered. The result is exactly the full walk's: parts are integer counts, and a part
//! is taken back out of the total before its replacement goes in.

use std::sync::{Arc, Mutex, PoisonError};

use super::types::NodeInfo;

/// How many keys are remembered (least recently used dropped first): enough for a few
/// workloads scheduled in turn, few enough that a memo's node entries never keep much of
/// an old snapshot alive.
const CAPACITY: usize = 4;

/// A sum over nodes that parts can be added to and taken back out of.
pub trait Sum: Default + Clone {
    /// One node's contribution.
    type Part;
    /// Adds `part` (`sign` 1) or takes it back out (`sign` -1).
    fn apply(&mut self, part: &Self::Part, sign: i64);
}

struct Memo<K, S: Sum> {
    key: K,
    nodes: Vec<Arc<NodeInfo>>,
    parts: Vec<S::Part>,
    total: S,
}

/// Remembered sums by key; see the module documentation.
pub struct NodeSums<K, S: Sum> {
    memos: Mutex<Vec<Memo<K, S>>>,
}

impl<K, S: Sum> Default for NodeSums<K, S> {
    fn default() -> Self {
        Self {
            memos: Mutex::new(Vec::new()),
        }
    }
}

impl<K: PartialEq, S: Sum> NodeSums<K, S> {
    /// The sum of `part(node)` over `nodes`, for `key`: `part` must depend only on the node
    /// entry and on what `key` captures.
    pub fn total(&self, key: K, nodes: &[Arc<NodeInfo>], part: impl Fn(&NodeInfo) -> S::Part) -> S {
        let found = {
            let mut memos = self.memos.lock().unwrap_or_else(PoisonError::into_inner);
            memos
                .iter()
                .position(|m| m.key == key)
                .map(|i| memos.remove(i))
        };
        let mut memo = found.unwrap_or_else(|| Memo {
            key,
            nodes: Vec::with_capacity(nodes.len()),
            parts: Vec::with_capacity(nodes.len()),
            total: S::default(),
        });
        // Entries past the new list's end leave the sum.
        while memo.nodes.len() > nodes.len() {
            memo.nodes.pop();
            if let Some(p) = memo.parts.pop() {
                memo.total.apply(&p, -1);
            }
        }
        for (i, node) in nodes.iter().enumerate() {
            match memo.nodes.get(i) {
                Some(old) if Arc::ptr_eq(old, node) => {}
                Some(_) => {
                    let new = part(node);
                    memo.total.apply(&memo.parts[i], -1);
                    memo.total.apply(&new, 1);
                    memo.parts[i] = new;
                    memo.nodes[i] = node.clone();
                }
                None => {
                    let new = part(node);
                    memo.total.apply(&new, 1);
                    memo.parts.push(new);
                    memo.nodes.push(node.clone());
                }
            }
        }
        let total = memo.total.clone();
        let mut memos = self.memos.lock().unwrap_or_else(PoisonError::into_inner);
        if memos.len() >= CAPACITY {
            memos.remove(0);
        }
        memos.push(memo);
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Default, Debug, PartialEq)]
    struct Total(i64);

    impl Sum for Total {
        type Part = i64;
        fn apply(&mut self, part: &i64, sign: i64) {
            self.0 += part * sign;
        }
    }

    fn node(name: &str, pods: usize) -> Arc<NodeInfo> {
        let mut n = NodeInfo::new(name);
        n.generation = pods as u64;
        Arc::new(n)
    }

    #[test]
    fn recomputes_only_replaced_entries_and_matches_a_full_walk() {
        let sums: NodeSums<&str, Total> = NodeSums::default();
        let calls = AtomicUsize::new(0);
        let part = |n: &NodeInfo| {
            calls.fetch_add(1, Ordering::Relaxed);
            n.generation as i64
        };
        let mut nodes: Vec<_> = (0..10).map(|i| node(&format!("n{i}"), i)).collect();
        assert_eq!(sums.total("a", &nodes, part), Total(45));
        assert_eq!(calls.swap(0, Ordering::Relaxed), 10);

        // Same entries: nothing recomputed.
        assert_eq!(sums.total("a", &nodes, part), Total(45));
        assert_eq!(calls.swap(0, Ordering::Relaxed), 0);

        // One entry replaced (an equal-looking copy is still a new entry).
        nodes[3] = node("n3", 13);
        assert_eq!(sums.total("a", &nodes, part), Total(55));
        assert_eq!(calls.swap(0, Ordering::Relaxed), 1);

        // The list shrinks and grows.
        nodes.truncate(5);
        assert_eq!(sums.total("a", &nodes, part), Total(20));
        nodes.push(node("n9", 100));
        assert_eq!(sums.total("a", &nodes, part), Total(120));
        assert_eq!(calls.swap(0, Ordering::Relaxed), 1);

        // Another key starts from scratch and does not disturb the first.
        assert_eq!(sums.total("b", &nodes, |_| 1), Total(6));
        assert_eq!(sums.total("a", &nodes, part), Total(120));
        assert_eq!(calls.swap(0, Ordering::Relaxed), 0);
    }

    #[test]
    fn least_recently_used_keys_are_dropped() {
        let sums: NodeSums<usize, Total> = NodeSums::default();
        let nodes = vec![node("n", 1)];
        let calls = AtomicUsize::new(0);
        let part = |_: &NodeInfo| {
            calls.fetch_add(1, Ordering::Relaxed);
            1
        };
        for k in 0..=CAPACITY {
            sums.total(k, &nodes, part);
        }
        assert_eq!(calls.swap(0, Ordering::Relaxed), CAPACITY + 1);
        // The most recent keys are remembered; the first was dropped.
        sums.total(CAPACITY, &nodes, part);
        assert_eq!(calls.swap(0, Ordering::Relaxed), 0);
        sums.total(0, &nodes, part);
        assert_eq!(calls.swap(0, Ordering::Relaxed), 1);
    }
}
