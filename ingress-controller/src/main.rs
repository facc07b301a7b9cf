//! `ferrokube-ingress-controller`: serves networking.k8s.io/v1 Ingresses of its class.

use clap::Parser;

// mimalloc rather than glibc's malloc: the controller rebuilds its routing table (thousands
// of small allocations) on whichever runtime thread handles the change, and glibc keeps
// what each thread's arena freed. In the ingress benchmark the resident set after 5k
// routes came out lower with mimalloc; the peak during bulk creation did not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process. mimalloc asks for them (MADV_HUGEPAGE) on
    // its arenas, and a huge page is resident in full once any byte of it is touched: with
    // 5k Ingresses (the controller loading them from the apiserver) the resident set was
    // 59-61 MiB with them and 39-40 MiB without (peak 66-71 against 42 MiB). This has to
    // come before the allocations it is about, so before the runtime is built.
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("warning: transparent huge pages stay enabled: {e}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
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
