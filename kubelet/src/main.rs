//! `ferrokube-kubelet`: a drop-in for the kubelet.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Re-executed as a container shim: no async runtime, no flags, just hold the container.
    // This runs before any runtime exists so that each container's shim stays small.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == ferrokube_kubelet::runtime::SHIM_ARG)
    {
        let code = ferrokube_kubelet::runtime::shim_main(&args[2..]);
        return std::process::ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if args
        .get(1)
        .is_some_and(|a| a == ferrokube_kubelet::reset::RESET_ARG)
    {
        let flags = ferrokube_kubelet::reset::ResetFlags::parse_from(&args[1..]);
        let failures = ferrokube_kubelet::reset::reset(&flags);
        for f in &failures {
            eprintln!("reset: {f} failed");
        }
        return if failures.is_empty() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    // reqwest (under oci-client) uses the process-wide rustls provider; ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flags = ferrokube_kubelet::options::Flags::parse();
    ferrokube_runtime::logging::init(flags.verbosity, flags.logging_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ferrokube_kubelet::run(flags)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "kubelet failed");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
