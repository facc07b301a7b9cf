//! How a ferrokube binary starts: process-wide memory settings first, then the tokio
//! runtime its `main` runs on.

use std::future::Future;
use std::process::ExitCode;

/// Runs `main` to completion on a multi-thread runtime, after turning off transparent huge
/// pages for this process.
///
/// The binaries that use mimalloc (scheduler, Ingress controller) need the latter: mimalloc
/// asks for huge pages (MADV_HUGEPAGE) on its arenas, and with THP in "madvise" mode, as on
/// Debian, a 2 MiB page is resident in full once any byte of it is touched. The Ingress
/// controller holding 5k Ingresses was 59-61 MiB resident with them and 39-40 MiB without.
/// The setting only covers pages faulted in after it, so it comes before the runtime (and
/// anything else) allocates.
pub fn run(main: impl Future<Output = ExitCode>) -> ExitCode {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("warning: transparent huge pages stay enabled: {e}");
    }
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
