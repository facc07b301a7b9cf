//! Running per-node work on several threads (upstream `parallelize`): threads pull chunks
//! of indices from a shared counter, so uneven nodes do not leave threads idle.
//!
//! Upstream starts goroutines, which cost about a microsecond; waking a helper thread costs
//! about as much as filtering a hundred nodes. So the calling thread works alone through
//! the first [`MIN_PARALLEL`] items and asks for helpers only if at least as many are still
//! left: a filter pass that finds its share of feasible nodes early, or a score pass over a
//! few hundred nodes, never pays for them.
//!
//! The helpers are rayon's pool threads, started once and kept. This module first started
//! scoped threads per pass: a spawn, a fresh stack and a fresh allocator heap each time,
//! which a filter pass pays whenever few nodes are feasible (a zone spread constraint with
//! one zone left at the minimum scans every node).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

/// Items the calling thread handles before helpers start, and the least left over for
/// them to be worth starting.
pub const MIN_PARALLEL: usize = 1024;
const CHUNK: usize = 16;

/// Runs `f(i)` for `i` in `0..n` on up to `threads` threads and returns the results in
/// index order, skipping `None`. `stop` lets workers end early (a result count reached).
pub fn for_each<T: Send>(
    n: usize,
    threads: usize,
    stop: &AtomicBool,
    f: impl Fn(usize) -> Option<T> + Sync,
) -> Vec<(usize, T)> {
    let threads = threads.min(available_cpus()).min(n.div_ceil(CHUNK)).max(1);
    let next = AtomicUsize::new(0);
    // One chunk into `out`; false once there is nothing left to do.
    let chunk = |out: &mut Vec<(usize, T)>| {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let start = next.fetch_add(CHUNK, Ordering::Relaxed);
        if start >= n {
            return false;
        }
        for i in start..(start + CHUNK).min(n) {
            if let Some(v) = f(i) {
                out.push((i, v));
            }
        }
        true
    };
    let work = || {
        let mut local = Vec::new();
        while chunk(&mut local) {}
        local
    };
    let mut out = Vec::new();
    while (threads == 1 || next.load(Ordering::Relaxed) < MIN_PARALLEL) && chunk(&mut out) {}
    let left = n.saturating_sub(next.load(Ordering::Relaxed));
    if left == 0 || stop.load(Ordering::Relaxed) {
        return out;
    }
    if left < MIN_PARALLEL {
        out.extend(work());
        return out;
    }
    let helped: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::new());
    rayon::in_place_scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| {
                let local = work();
                helped
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(local);
            });
        }
        out.extend(work());
    });
    out.extend(helped.into_inner().unwrap_or_else(PoisonError::into_inner));
    out.sort_by_key(|(i, _)| *i);
    out
}

/// The CPUs this process may use. Read once: the standard library reads the cgroup quota
/// files on every call, which cost more than the filtering it sized.
fn available_cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_in_order_and_early_stop() {
        let stop = AtomicBool::new(false);
        let out = for_each(1000, 4, &stop, |i| (i % 3 == 0).then_some(i));
        assert_eq!(out.len(), 334);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        let stop = AtomicBool::new(true);
        assert!(for_each(1000, 4, &stop, Some).is_empty());
    }

    #[test]
    fn long_runs_share_the_rest_with_helpers() {
        let stop = AtomicBool::new(false);
        let n = MIN_PARALLEL * 8;
        let out = for_each(n, 4, &stop, |i| (i % 2 == 0).then_some(i));
        assert_eq!(out.len(), n / 2);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(out.iter().all(|(i, v)| i == v));
        // Stopping part way still returns in order, without what was never run.
        let seen = AtomicUsize::new(0);
        let out = for_each(n, 4, &stop, |i| {
            if seen.fetch_add(1, Ordering::Relaxed) + 1 >= MIN_PARALLEL * 2 {
                stop.store(true, Ordering::Relaxed);
            }
            Some(i)
        });
        assert!(out.len() < n);
        assert!(out.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
