//! `ferrokube-bench` refuses bad flags with a message before it starts anything.

use std::process::Command;

fn bench(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferrokube-bench"))
        .args(args)
        .output()
        .expect("running ferrokube-bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_scheduler_bench_refuses_zero_rounds_and_malformed_limits() {
    let (ok, stderr) = bench(&["scheduler", "--rounds", "0"]);
    assert!(!ok, "zero rounds were accepted");
    assert!(stderr.contains("--rounds must be at least 1"), "{stderr}");

    let (ok, stderr) = bench(&["scheduler", "--limits", "5000"]);
    assert!(!ok, "a limit without a burst was accepted");
    assert!(stderr.contains("expected qps/burst"), "{stderr}");
}
