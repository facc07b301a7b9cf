//! `ferrokube-scheduler`: a drop-in for kube-scheduler.

use clap::Parser;

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
