//! `ferrokube-scheduler`: a drop-in for kube-scheduler.

use clap::Parser;

// mimalloc rather than glibc's malloc, for CPU: glibc's malloc and free were 15-20% of the
// scheduler's CPU in the benchmark's profile (every cycle allocates per node). Its huge
// pages are turned off (see `ferrokube_runtime::process::run`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ferrokube_runtime::process::run(run())
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
