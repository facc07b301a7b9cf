//! `ferrokube-scheduler`: a drop-in for kube-scheduler.

use clap::Parser;

// mimalloc rather than glibc's malloc, for CPU: glibc's malloc and free were 15-20% of the
// scheduler's CPU in the benchmark's profile (every cycle allocates per node). It costs
// memory: peak RSS at 5000 nodes / 10000 pods went from about 282 to 301-309 MiB.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
