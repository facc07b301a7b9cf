//! How a ferrokube binary starts: process-wide memory settings first, then the tokio
//! runtime its `main` runs on.

use std::future::Future;
use std::process::ExitCode;

/// Runs `main` to completion on a multi-thread runtime, after turning off transparent huge
/// pages for this process.
///
/// mimalloc is built without its MADV_HUGEPAGE advice (the `no_thp` feature), but other
/// mappings could still get huge pages: with THP in "madvise" mode, as on Debian, a 2 MiB
/// page is resident in full once any byte of it is touched. The Ingress controller holding
/// 5k Ingresses was 59-61 MiB resident with huge pages and 39-40 MiB without. The setting
/// only covers pages faulted in after it, so it comes before the runtime (and anything
/// else) allocates.
pub fn run(main: impl Future<Output = ExitCode>) -> ExitCode {
    start(tokio::runtime::Builder::new_multi_thread(), main)
}

/// As [`run`], on a single-threaded runtime: for a binary whose work is many small
/// wake-ups that one core keeps up with (the controller-manager: on two workers each
/// wake-up also woke the idle one to look for work to steal), or whose hot path runs on
/// threads of its own (the Ingress controller's proxy workers). Each allocating thread
/// also keeps memory of its own in the allocator: with one fewer pool the Ingress
/// controller's peak while 5k Ingresses were created came out 3-8 MiB lower.
pub fn run_current_thread(main: impl Future<Output = ExitCode>) -> ExitCode {
    start(tokio::runtime::Builder::new_current_thread(), main)
}

fn start(mut builder: tokio::runtime::Builder, main: impl Future<Output = ExitCode>) -> ExitCode {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("warning: transparent huge pages stay enabled: {e}");
    }
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
