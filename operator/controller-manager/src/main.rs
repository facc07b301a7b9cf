//! `ferrokube-controller-manager`: a drop-in for kube-controller-manager.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
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
