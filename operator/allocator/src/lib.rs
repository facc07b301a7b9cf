//! The allocator ferrokube's binaries run on, and its settings that only mimalloc's C API
//! reaches.
//!
//! mimalloc rather than glibc's malloc, for CPU: every watch event and API response is
//! decoded into short-lived allocations, and glibc's malloc and free were 15-20% of the
//! scheduler's CPU in its benchmark profile. It is built without its huge-page advice
//! (the `no_thp` feature; see `ferrokube_runtime::process`).

pub use mimalloc::MiMalloc;

/// mimalloc's option index for `purge_delay` in v3 (`mi_option_purge_delay` in
/// `mimalloc.h`); `libmimalloc-sys` names it only for v2.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Makes mimalloc give freed pages back to the OS `millis` milliseconds after they empty,
/// instead of its v3 default of 1000 ms (v2 used 10 ms).
///
/// With the 1 s default, a process that frees and reallocates a lot keeps up to a second's
/// worth of freed pages resident: the scheduler, placing 10000 pods with spread and
/// affinity terms on 5000 nodes, peaked at 89.9 MiB resident with a live heap of about
/// 46 MB, and at 81.2 MiB with 10 ms, at the same CPU per pod. mimalloc reads the value each
/// time it schedules a purge, so setting it at any point takes effect for the pages freed
/// after it; call it first thing in `main`.
///
/// mimalloc's own `MIMALLOC_PURGE_DELAY` variable, when set, wins: an operator (or a
/// benchmark comparing settings) can choose the trade between RSS and CPU without a rebuild.
pub fn purge_freed_pages_after(millis: u32) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    #[allow(unsafe_code)]
    // SAFETY: `mi_option_set` takes an option index and a value by value and only stores
    // the value in mimalloc's static option table (an atomic-sized `long`); it touches no
    // memory of ours and is valid to call at any time, from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, std::os::raw::c_long::from(millis));
    }
}

#[cfg(test)]
mod tests {
    #[allow(unsafe_code)]
    fn purge_delay() -> std::os::raw::c_long {
        // SAFETY: reads one entry of mimalloc's option table, as `mi_option_set` writes it.
        unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) }
    }

    #[test]
    fn the_index_is_purge_delay_and_setting_it_sticks() {
        // v3's documented default for purge_delay, which no neighbouring option shares: a
        // wrong index would read something else here (the variable would override it).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay(), 1000);
        }
        super::purge_freed_pages_after(10);
        match std::env::var("MIMALLOC_PURGE_DELAY") {
            Ok(set) => assert_eq!(purge_delay().to_string(), set),
            Err(_) => assert_eq!(purge_delay(), 10),
        }
    }
}
