//! `ferrokube-controller-manager`: a drop-in for kube-controller-manager.

use clap::Parser;

// mimalloc rather than glibc's malloc, for CPU: every watch event and API response is decoded
// into short-lived strings, maps and buffers, and glibc's malloc and free were 17% of the
// controller-manager's CPU in the benchmark's profile (5000 pods created and deleted at
// 500 QPS). Its huge pages are off, as for the other binaries on it (see
// `ferrokube_runtime::process::run_current_thread`).
#[global_allocator]
static GLOBAL: ferrokube_allocator::MiMalloc = ferrokube_allocator::MiMalloc;

// One thread runs every task. The controller-manager's work is many small wake-ups (a
// request admitted by the QPS limiter, a watch event, a queue hand-off), and on the
// multi-thread runtime each of them also woke an idle worker to look for work to steal:
// at --kube-api-qps=20 (issue 3's benchmark, 5000 pods up and down) two workers made
// 108k context switches and 9.3 cpu-s, one worker 56k and 7.8 cpu-s. Its CPU need is a
// fraction of one core even at 500 QPS, so a second thread buys no throughput.
fn main() -> std::process::ExitCode {
    ferrokube_runtime::process::run_current_thread(run())
}

async fn run() -> std::process::ExitCode {
    let options = ferrokube_controller_manager::options::Options::parse();
    ferrokube_runtime::logging::init(options.verbosity, options.logging_format);
    match ferrokube_controller_manager::run(options).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "controller-manager failed");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
