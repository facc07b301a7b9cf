//! `ferrokube-ingress-controller`: serves networking.k8s.io/v1 Ingresses of its class.

use clap::Parser;

// mimalloc rather than glibc's malloc: the controller rebuilds its routing table (thousands
// of small allocations) on whichever runtime thread handles the change, and glibc keeps
// what each thread's arena freed. In the ingress benchmark the resident set after 5k
// routes came out lower with mimalloc; the peak during bulk creation did not.
#[global_allocator]
static GLOBAL: ferrokube_allocator::MiMalloc = ferrokube_allocator::MiMalloc;

fn main() -> std::process::ExitCode {
    ferrokube_runtime::process::run_current_thread(run())
}

async fn run() -> std::process::ExitCode {
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
