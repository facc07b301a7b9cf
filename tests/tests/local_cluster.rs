//! The local cluster command, run as a user runs it: `up`, kubectl against the printed
//! kubeconfig, `status`, `down`.

use std::process::Command;

use ferrokube_tests::controlplane::free_port;
use ferrokube_tests::images::ImageBuilder;
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
    // Its node runs real pods: root, runc and the CNI plugins are required (hack/test.sh
    // installs them), never silently skipped.
    ferrokube_tests::cluster::can_run_pods().map_err(anyhow::Error::msg)?;
    let components = ferrokube_tests::cluster::COMPONENTS
        .iter()
        .chain(&["ferrokube-kubelet"]);
    for component in components {
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

    // A node name and pod range of its own, beside the other tests' kubelets.
    let node = format!("lc-{}", std::process::id());
    let up_args = [
        "up",
        "--apiserver-port",
        &api_port,
        "--registry-port",
        &reg_port,
        "--node-name",
        &node,
        "--pod-cidr",
        "198.18.47.0/24",
    ];
    let up = cluster_cmd(&dir, &up_args);
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

    // Our scheduler runs: a pod no node matches is reported unschedulable.
    kubectl
        .apply("apiVersion: v1\nkind: Pod\nmetadata:\n  name: waits\n  namespace: hello\nspec:\n  nodeSelector:\n    disk: none\n  containers:\n  - name: c\n    image: registry.invalid/pause:1\n")
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

    // Our kubelet is the node: an image pushed to the cluster's registry runs as a
    // Deployment whose pods answer HTTP on their pod IPs.
    ImageBuilder::busybox()?
        .file(
            "www/index.html",
            b"hello from the local cluster\n".to_vec(),
            0o644,
        )
        .push(&format!("127.0.0.1:{reg_port}"), "web", "1")
        .await?;
    kubectl
        .ok([
            "create",
            "deployment",
            "web",
            "-n",
            "hello",
            "--replicas=2",
            &format!("--image=127.0.0.1:{reg_port}/web:1"),
            "--",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ])
        .await?;
    kubectl
        .ok([
            "rollout",
            "status",
            "deployment/web",
            "-n",
            "hello",
            "--timeout=120s",
        ])
        .await?;
    let ips = kubectl
        .ok([
            "get",
            "pods",
            "-n",
            "hello",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ])
        .await?;
    let ips: Vec<&str> = ips.split_whitespace().collect();
    assert_eq!(ips.len(), 2, "{ips:?}");
    for ip in &ips {
        let (status, body) =
            ferrokube_tests::cluster::http_get(&format!("{ip}:8080"), "/index.html")
                .await
                .map_err(anyhow::Error::msg)?;
        assert_eq!(status, 200);
        assert!(body.contains("hello from the local cluster"), "{body}");
    }

    // The kubelet API behind the apiserver: `kubectl exec` and `kubectl logs`.
    let pod = kubectl
        .ok([
            "get",
            "pods",
            "-n",
            "hello",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .await?;
    let out = kubectl
        .ok([
            "exec",
            "-n",
            "hello",
            pod.trim(),
            "--",
            "cat",
            "/www/index.html",
        ])
        .await?;
    assert!(out.contains("hello from the local cluster"), "{out}");
    kubectl.ok(["logs", "-n", "hello", pod.trim()]).await?;

    // What the pods hold on the host, to be gone after `down`: their network namespaces,
    // their containers' processes and the node's bridge (the one with the pod gateway).
    let uids = kubectl
        .ok([
            "get",
            "pods",
            "-n",
            "hello",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.uid}",
        ])
        .await?;
    let netns: Vec<std::path::PathBuf> = uids
        .split_whitespace()
        .map(|uid| std::path::Path::new("/run/netns").join(format!("fk-{uid}")))
        .collect();
    assert!(netns.iter().all(|p| p.exists()), "{netns:?}");
    let runc = Command::new("runc")
        .arg("--root")
        .arg(dir.join("kubelet/runc"))
        .args(["list", "--format=json"])
        .output()?;
    let containers: Vec<serde_json::Value> = serde_json::from_slice(&runc.stdout)?;
    let pids: Vec<u32> = containers
        .iter()
        .filter_map(|c| c["pid"].as_u64())
        .filter_map(|p| u32::try_from(p).ok())
        .collect();
    assert!(pids.len() >= 2, "runc list: {containers:?}");
    let addrs = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()?;
    let addrs = String::from_utf8_lossy(&addrs.stdout).to_string();
    let bridge = addrs
        .lines()
        .find(|l| l.contains(" 198.18.47.1/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(str::to_string)
        .ok_or_else(|| anyhow::anyhow!("no bridge with the pod gateway: {addrs}"))?;

    // A second `up` leaves the running cluster alone.
    let again = cluster_cmd(&dir, &up_args);
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
        "kubelet",
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
    // `down` took the pods with it.
    assert!(
        !dir.join("kubelet").exists(),
        "the kubelet's root dir is left"
    );
    for p in &netns {
        assert!(!p.exists(), "{} is left", p.display());
    }
    for pid in &pids {
        assert!(
            !ferrokube_tests::process::is_alive(*pid),
            "container process {pid} still runs"
        );
    }
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "bridge {bridge} is left"
    );
    Ok(())
}
