//! `ferrokube-scheduler`: a drop-in for kube-scheduler.

use clap::Parser;

// mimalloc rather than glibc's malloc, for CPU: glibc's malloc and free were 15-20% of the
// scheduler's CPU in the benchmark's profile (every cycle allocates per node). Its huge
// pages are turned off (see `ferrokube_runtime::process::run_current_thread`).
#[global_allocator]
static GLOBAL: ferrokube_allocator::MiMalloc = ferrokube_allocator::MiMalloc;

// The I/O (watches, bindings, events) runs on one thread; the scheduling loop has a
// thread of its own (`Scheduler::run_on_own_thread`). On a multi-thread runtime every
// watch event and binding response also woke the idle worker to look for work to steal,
// and every cycle's `block_in_place` handed the worker's queue to another thread; each
// thread also kept allocator memory of its own (peak RSS, 5000 nodes and 10000 pods: 132-138
// MiB before, 98 MiB after).
fn main() -> std::process::ExitCode {
    // Freed pages go back to the OS after 10 ms rather than mimalloc's 1 s: the scheduler
    // frees and reallocates per cycle and per watch event, and with the 1 s delay its peak
    // RSS (5000 nodes, 10000 spread pods) was 10% higher at the same CPU.
    ferrokube_allocator::purge_freed_pages_after(10);
    ferrokube_runtime::process::run_current_thread(run())
}

async fn run() -> std::process::ExitCode {
    let options = ferrokube_scheduler::options::Options::parse();
    ferrokube_runtime::logging::init(options.verbosity, options.logging_format);
    match ferrokube_scheduler::run(options).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "scheduler failed");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
