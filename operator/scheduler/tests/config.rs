//! Bad configuration is refused at start, before any connection, with a clear message.

mod common;

use std::io::Write as _;
use std::process::Command;

fn run_with_config(text: &str) -> (bool, String) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    let out = Command::new(common::binary())
        .arg(format!("--config={}", file.path().display()))
        // Nothing listens here: a valid config would fail later, on the connection.
        .arg("--kubeconfig=/nonexistent/kubeconfig")
        .arg("--secure-port=0")
        .output()
        .expect("run scheduler");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn invalid_config_file_is_refused_with_a_clear_message() {
    let cases = [
        (
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: \"\"\n",
            "profiles[0].schedulerName: Required value",
        ),
        (
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: a\n  plugins:\n    score:\n      enabled:\n      - name: NoSuchPlugin\n",
            "profiles[0].plugins.score.enabled[0]: Invalid value: \"NoSuchPlugin\"",
        ),
        (
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: a\n  pluginConfig:\n  - name: NodeResourcesFit\n    args:\n      scoringStrategy:\n        type: Fastest\n",
            "scoringStrategy.type: Unsupported value: \"Fastest\"",
        ),
        (
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nunknownField: 1\n",
            "unknown field `unknownField`",
        ),
        (
            "apiVersion: kubescheduler.config.k8s.io/v1beta3\nkind: KubeSchedulerConfiguration\n",
            "no kind \"KubeSchedulerConfiguration\" is registered for version \"kubescheduler.config.k8s.io/v1beta3\"",
        ),
        ("{not yaml", "--config: decoding"),
    ];
    for (config, want) in cases {
        let (ok, stderr) = run_with_config(config);
        assert!(!ok, "config must be refused:\n{config}");
        assert!(stderr.contains("error: --config"), "stderr: {stderr}");
        assert!(stderr.contains(want), "want {want:?} in stderr: {stderr}");
    }
    // A missing file names the file.
    let out = Command::new(common::binary())
        .args(["--config=/nonexistent/ks.yaml", "--secure-port=0"])
        .output()
        .expect("run scheduler");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/ks.yaml"));
}
