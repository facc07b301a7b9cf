//! Running per-node work on several threads (upstream `parallelize`): scoped threads pull
//! chunks of indices from a shared counter, so uneven nodes do not leave threads idle.
//! The calling thread is one of the workers, so a cycle starts `threads - 1` helpers.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Below this many items the work runs on the calling thread: starting threads would
/// cost more than it saves.
pub const MIN_PARALLEL: usize = 256;
const CHUNK: usize = 16;

/// Runs `f(i)` for `i` in `0..n` on up to `threads` threads and returns the results in
/// index order, skipping `None`. `stop` lets workers end early (a result count reached).
pub fn for_each<T: Send>(
    n: usize,
    threads: usize,
    stop: &AtomicBool,
    f: impl Fn(usize) -> Option<T> + Sync,
) -> Vec<(usize, T)> {
    let threads = threads
        .min(available_cpus())
        .min(n.div_ceil(CHUNK))
        .max(1);
    if threads == 1 || n < MIN_PARALLEL {
        let mut out = Vec::new();
        for i in 0..n {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(v) = f(i) {
                out.push((i, v));
            }
        }
        return out;
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut local = Vec::new();
        loop {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let start = next.fetch_add(CHUNK, Ordering::Relaxed);
            if start >= n {
                break;
            }
            for i in start..(start + CHUNK).min(n) {
                if let Some(v) = f(i) {
                    local.push((i, v));
                }
            }
        }
        local
    };
    let mut out: Vec<(usize, T)> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(work)).collect();
        let mut out = work();
        for h in helpers {
            out.extend(h.join().unwrap_or_default());
        }
        out
    });
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
}
