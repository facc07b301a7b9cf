//! The local cluster command, run as a user runs it: `up`, kubectl against the printed
//! kubeconfig, `status`, `down`.

use std::process::Command;

use ferrokube_tests::controlplane::free_port;
use ferrokube_tests::{Kubectl, upstream};

fn cluster_cmd(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrokube-cluster"))
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run ferrokube-cluster")
}

/// Stops the cluster even when an assertion fails half-way.
struct Down<'a>(&'a std::path::Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let out = cluster_cmd(self.0, &["down"]);
        if std::thread::panicking() {
            eprintln!(
                "{}",
                ferrokube_tests::controlplane::dump_logs(&self.0.join("logs"), 40)
            );
            eprintln!("down: {}", String::from_utf8_lossy(&out.stdout));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_cluster_comes_up_and_goes_down() -> anyhow::Result<()> {
    // The cluster starts the ferrokube components installed beside it; a workspace build
    // (`cargo test --workspace`, the README's test command) puts them there.
    for component in ferrokube_tests::cluster::COMPONENTS {
        let bin =
            std::path::Path::new(env!("CARGO_BIN_EXE_ferrokube-cluster")).with_file_name(component);
        assert!(
            bin.is_file(),
            "{} missing: build the workspace's binaries first (cargo build --workspace --bins)",
            bin.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("cluster");
    let api_port = free_port()?.to_string();
    let reg_port = free_port()?.to_string();
    let guard = Down(&dir);

    let up = cluster_cmd(
        &dir,
        &[
            "up",
            "--apiserver-port",
            &api_port,
            "--registry-port",
            &reg_port,
        ],
    );
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "up failed: {stdout}\n{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let kubeconfig = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("export KUBECONFIG="))
        .expect("up prints the kubeconfig");

    let kubectl = Kubectl::new(
        upstream::binary("kubectl")?,
        std::path::Path::new(kubeconfig),
    );
    let version = kubectl.ok(["version"]).await?;
    assert!(
        version.contains(upstream::kubernetes_version()),
        "{version}"
    );
    let whoami = kubectl.ok(["auth", "whoami"]).await?;
    assert!(whoami.contains("system:masters"), "{whoami}");
    let resources = kubectl.ok(["api-resources"]).await?;
    assert!(resources.contains("deployments"), "{resources}");

    // The registry answers the OCI distribution API.
    let status =
        ferrokube_tests::cluster::http_status(&format!("127.0.0.1:{reg_port}"), "/v2/").await;
    assert_eq!(status, Ok(200));

    // Our controller-manager runs: a new namespace gets its default ServiceAccount.
    kubectl.ok(["create", "namespace", "hello"]).await?;
    ferrokube_tests::wait::until(
        "default ServiceAccount in namespace hello",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(200),
        || async {
            kubectl
                .ok([
                    "get",
                    "serviceaccount",
                    "default",
                    "-n",
                    "hello",
                    "-o",
                    "name",
                ])
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await?;

    // Our scheduler runs: with no node in the cluster, a pod is reported unschedulable.
    kubectl
        .apply("apiVersion: v1\nkind: Pod\nmetadata:\n  name: waits\n  namespace: hello\nspec:\n  containers:\n  - name: c\n    image: registry.invalid/pause:1\n")
        .await?;
    ferrokube_tests::wait::until(
        "the scheduler to report the pod unschedulable",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_millis(200),
        || async {
            let reason = kubectl
                .ok([
                    "get",
                    "pod",
                    "waits",
                    "-n",
                    "hello",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"PodScheduled\")].reason}",
                ])
                .await
                .map_err(|e| e.to_string())?;
            if reason == "Unschedulable" {
                Ok(())
            } else {
                Err(format!("reason {reason:?}"))
            }
        },
    )
    .await?;

    // A second `up` leaves the running cluster alone.
    let again = cluster_cmd(
        &dir,
        &[
            "up",
            "--apiserver-port",
            &api_port,
            "--registry-port",
            &reg_port,
        ],
    );
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains(kubeconfig));

    let status = cluster_cmd(&dir, &["status"]);
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    for c in [
        "etcd",
        "kube-apiserver",
        "registry",
        "controller-manager",
        "scheduler",
    ] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(c) && l.contains("running")),
            "{status}"
        );
    }
    let state = ferrokube_tests::cluster::State::load(&dir)?.expect("state file");

    drop(guard);
    for c in &state.components {
        assert!(
            !ferrokube_tests::process::is_alive(c.pid),
            "{} still running",
            c.name
        );
    }
    assert!(ferrokube_tests::cluster::State::load(&dir)?.is_none());
    Ok(())
}
