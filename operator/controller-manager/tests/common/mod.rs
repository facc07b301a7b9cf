//! Shared set-up for the controller-manager's end-to-end tests.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use ferrokube_tests::process::Process;
use ferrokube_tests::{ControlPlane, wait};

/// The binary under test, built by cargo for this test run.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferrokube-controller-manager"))
}

/// A running controller-manager and the port of its health server.
pub struct ControllerManager {
    /// The process.
    pub process: Process,
    /// Where /healthz, /readyz and /metrics answer.
    pub health_port: u16,
}

/// Starts our controller-manager against `cp` with `args` (beyond kubeconfig and ports),
/// and waits until it is ready (leader, controllers started).
pub async fn start(
    cp: &ControlPlane,
    name: &str,
    args: &[&str],
) -> anyhow::Result<ControllerManager> {
    let health_port = ferrokube_tests::controlplane::free_port()?;
    let port_flag = format!("--secure-port={health_port}");
    let mut all = vec!["--bind-address=127.0.0.1", port_flag.as_str(), "--v=4"];
    all.extend_from_slice(args);
    let process = cp.spawn_component(name, binary(), &all)?;
    let cm = ControllerManager {
        process,
        health_port,
    };
    cm.wait_ready().await?;
    Ok(cm)
}

impl ControllerManager {
    /// Waits for `/readyz` to answer 200.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", self.health_port);
        wait::until(
            "controller-manager /readyz",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let addr = addr.clone();
                async move {
                    match ferrokube_tests::cluster::http_status(&addr, "/readyz").await? {
                        200 => Ok(()),
                        s => Err(format!("status {s}")),
                    }
                }
            },
        )
        .await?;
        Ok(())
    }

    /// The body of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let addr = format!("127.0.0.1:{}", self.health_port);
        let (_, body) = ferrokube_tests::cluster::http_get(&addr, "/metrics")
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(body)
    }
}

/// Polls `kubectl args` until its output satisfies `pred`; returns that output.
pub async fn kubectl_until(
    cp: &ControlPlane,
    what: &str,
    timeout: Duration,
    args: &[&str],
    pred: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let kubectl = cp.kubectl()?;
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    let out = wait::until(what, timeout, Duration::from_millis(200), || {
        let (kubectl, args) = (&kubectl, args.clone());
        let pred = &pred;
        async move {
            let out = kubectl.run(&args, None).await.map_err(|e| e.to_string())?;
            let text = format!("{}{}", out.stdout, out.stderr);
            if out.success() && pred(&out.stdout) {
                Ok(out.stdout)
            } else {
                Err(text)
            }
        }
    })
    .await?;
    Ok(out)
}

/// A pod bound to `node` that tolerates the `unreachable` and `not-ready` NoExecute taints,
/// for `toleration_seconds` or, with `None`, forever (the node-failure scenarios).
pub fn tolerating_pod(name: &str, node: &str, toleration_seconds: Option<u32>) -> String {
    let seconds = toleration_seconds
        .map(|s| format!("\n    tolerationSeconds: {s}"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
spec:
  nodeName: {node}
  containers:
  - name: c
    image: registry.invalid/pause:1
  tolerations:
  - key: node.kubernetes.io/unreachable
    operator: Exists
    effect: NoExecute{seconds}
  - key: node.kubernetes.io/not-ready
    operator: Exists
    effect: NoExecute{seconds}
"#
    )
}

/// Waits until each of `pods` in `default` reports Ready=True.
pub async fn pods_ready(cp: &ControlPlane, pods: &[&str], timeout: Duration) -> anyhow::Result<()> {
    for p in pods {
        kubectl_until(
            cp,
            &format!("{p} Ready"),
            timeout,
            &[
                "get",
                "pod",
                p,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ],
            |o| o == "True",
        )
        .await?;
    }
    Ok(())
}

/// The quota scenario of the replicaset and replicationcontroller tests. `manifest` is a
/// controller named `web` of 4 replicas labelled `app=web`, of kind `kind` (kubectl short
/// name `short`). With a quota of 2 pods it stops at 2, with the ReplicaFailure condition
/// (shown by `kubectl describe`) and a FailedCreate Warning; once the quota is raised the
/// controller, retrying with backoff, completes and clears the condition.
pub async fn quota_failure_and_recovery(
    cp: &ControlPlane,
    short: &str,
    kind: &str,
    manifest: &str,
) -> anyhow::Result<()> {
    const T: Duration = Duration::from_secs(60);
    let kubectl = cp.kubectl()?;
    // No resourcequota controller runs here, so the quota's status is written by hand;
    // the quota admission plugin then counts each new pod against it.
    kubectl
        .ok(["create", "quota", "pods", "--hard=pods=2"])
        .await?;
    let patch_quota = |patch: &'static str, status: bool| {
        let kubectl = kubectl.clone();
        async move {
            let mut args = vec![
                "patch",
                "resourcequota",
                "pods",
                "--type=merge",
                "-p",
                patch,
            ];
            if status {
                args.push("--subresource=status");
            }
            kubectl.ok(args).await
        }
    };
    patch_quota(
        r#"{"status":{"hard":{"pods":"2"},"used":{"pods":"0"}}}"#,
        true,
    )
    .await?;
    kubectl.apply(manifest).await?;

    let pods = ["get", "pods", "-l", "app=web", "-o", "name"];
    let count = |want: usize| move |o: &str| o.lines().filter(|l| !l.is_empty()).count() == want;
    kubectl_until(cp, "2 pods app=web", T, &pods, count(2)).await?;
    let condition = "jsonpath={.status.conditions[?(@.type==\"ReplicaFailure\")].status}/{.status.conditions[?(@.type==\"ReplicaFailure\")].reason}/{.status.conditions[?(@.type==\"ReplicaFailure\")].message}";
    kubectl_until(
        cp,
        "ReplicaFailure condition",
        T,
        &["get", short, "web", "-o", condition],
        |o| o.starts_with("True/FailedCreate/") && o.contains("exceeded quota: pods"),
    )
    .await?;
    let selector = format!("involvedObject.kind={kind},involvedObject.name=web,type=Warning");
    kubectl_until(
        cp,
        "FailedCreate event",
        T,
        &[
            "get",
            "events",
            "--field-selector",
            &selector,
            "-o",
            "jsonpath={range .items[*]}{.reason}:{.message}{\"\\n\"}{end}",
        ],
        |o| o.contains("FailedCreate:Error creating: ") && o.contains("exceeded quota"),
    )
    .await?;
    let replicas = ["get", short, "web", "-o", "jsonpath={.status.replicas}"];
    kubectl_until(cp, "status.replicas 2", T, &replicas, |o| o.trim() == "2").await?;
    let described = kubectl.ok(["describe", short, "web"]).await?;
    assert!(described.contains("ReplicaFailure"), "{described}");

    // Raise the quota: spec and status, as the resourcequota controller would.
    patch_quota(r#"{"spec":{"hard":{"pods":"10"}}}"#, false).await?;
    patch_quota(r#"{"status":{"hard":{"pods":"10"}}}"#, true).await?;
    kubectl_until(cp, "4 pods app=web", T, &pods, count(4)).await?;
    kubectl_until(cp, "status.replicas 4", T, &replicas, |o| o.trim() == "4").await?;
    kubectl_until(
        cp,
        "ReplicaFailure removed",
        T,
        &["get", short, "web", "-o", condition],
        |o| o.trim() == "//",
    )
    .await?;
    Ok(())
}
