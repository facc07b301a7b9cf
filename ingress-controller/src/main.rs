//! `ferrokube-ingress-controller`: serves networking.k8s.io/v1 Ingresses of its class.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let options = ferrokube_ingress_controller::options::Options::parse();
    ferrokube_runtime::logging::init(options.verbosity, options.logging_format);
    match ferrokube_ingress_controller::run(options).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "ingress controller failed");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
