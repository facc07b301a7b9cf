//! Shared set-up for the scheduler's end-to-end tests: nodes as plain Node objects with
//! capacity in their status (no kubelet: the scheduler only binds), pods from YAML, and
//! waits on what the apiserver shows.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use ferrokube_tests::process::Process;
use ferrokube_tests::{ControlPlane, wait};

/// The binary under test, built by cargo for this test run.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferrokube-scheduler"))
}

/// A running scheduler and the port of its health server.
pub struct Scheduler {
    /// The process.
    pub process: Process,
    /// Where /healthz, /readyz and /metrics answer.
    pub health_port: u16,
}

/// Starts our scheduler against `cp` with `args` and waits for `/readyz`.
pub async fn start(cp: &ControlPlane, name: &str, args: &[&str]) -> anyhow::Result<Scheduler> {
    let health_port = ferrokube_tests::controlplane::free_port()?;
    let port_flag = format!("--secure-port={health_port}");
    let mut all = vec!["--bind-address=127.0.0.1", port_flag.as_str(), "--v=4"];
    all.extend_from_slice(args);
    let process = cp.spawn_component(name, binary(), &all)?;
    let s = Scheduler {
        process,
        health_port,
    };
    let addr = format!("127.0.0.1:{health_port}");
    wait::until(
        "scheduler /readyz",
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
    Ok(s)
}

impl Scheduler {
    /// The body of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let addr = format!("127.0.0.1:{}", self.health_port);
        let (_, body) = ferrokube_tests::cluster::http_get(&addr, "/metrics")
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(body)
    }
}

/// Creates a namespace with its `default` ServiceAccount (the ServiceAccount admission
/// plugin rejects pods without it, and no controller-manager runs here).
pub async fn namespace(cp: &ControlPlane, ns: &str) -> anyhow::Result<()> {
    let kubectl = cp.kubectl()?;
    kubectl.ok(["create", "namespace", ns]).await?;
    kubectl
        .ok(["create", "serviceaccount", "default", "-n", ns])
        .await?;
    Ok(())
}

/// A node's shape.
#[derive(Clone, Debug, Default)]
pub struct NodeSpec<'a> {
    /// Name.
    pub name: &'a str,
    /// Allocatable CPU.
    pub cpu: &'a str,
    /// Allocatable memory.
    pub memory: &'a str,
    /// Labels.
    pub labels: &'a [(&'a str, &'a str)],
    /// Taints as (key, value, effect).
    pub taints: &'a [(&'a str, &'a str, &'a str)],
    /// Cordoned.
    pub unschedulable: bool,
}

/// Creates a Node object and gives it capacity/allocatable and a Ready condition through
/// the status subresource.
pub async fn node(cp: &ControlPlane, n: &NodeSpec<'_>) -> anyhow::Result<()> {
    let kubectl = cp.kubectl()?;
    let mut labels = serde_json::Map::new();
    labels.insert("kubernetes.io/hostname".into(), n.name.into());
    for (k, v) in n.labels {
        labels.insert((*k).into(), (*v).into());
    }
    let taints: Vec<serde_json::Value> = n
        .taints
        .iter()
        .map(|(k, v, e)| serde_json::json!({"key": k, "value": v, "effect": e}))
        .collect();
    let node = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": n.name, "labels": labels},
        "spec": {"taints": taints, "unschedulable": n.unschedulable},
    });
    kubectl.apply(&node.to_string()).await?;
    let resources = serde_json::json!({"cpu": n.cpu, "memory": n.memory, "pods": "110"});
    let status = serde_json::json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }});
    kubectl
        .ok([
            "patch",
            "node",
            n.name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status.to_string(),
        ])
        .await?;
    // The TaintNodesByCondition admission plugin gave the new node the not-ready taint,
    // which the node lifecycle controller (not running here) would lift: set the taints.
    let taints = if taints.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::Value::Array(taints)
    };
    kubectl
        .ok([
            "patch",
            "node",
            n.name,
            "--type=merge",
            "-p",
            &serde_json::json!({"spec": {"taints": taints}}).to_string(),
        ])
        .await?;
    Ok(())
}

/// Creates a pod from a JSON/YAML manifest.
pub async fn pod(cp: &ControlPlane, manifest: &str) -> anyhow::Result<()> {
    cp.kubectl()?.apply(manifest).await?;
    Ok(())
}

/// A minimal pod manifest: `extra_spec` is merged into the spec.
pub fn pod_manifest(ns: &str, name: &str, cpu: &str, extra_spec: serde_json::Value) -> String {
    let mut spec = serde_json::json!({
        "containers": [{
            "name": "c",
            "image": "registry.invalid/pause:3.10",
            "resources": {"requests": {"cpu": cpu}},
        }],
    });
    if let (Some(s), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
    .to_string()
}

/// `kubectl get pod -o jsonpath=<path>`.
pub async fn pod_field(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    path: &str,
) -> anyhow::Result<String> {
    let out = cp
        .kubectl()?
        .ok([
            "get",
            "pod",
            name,
            "-n",
            ns,
            "-o",
            &format!("jsonpath={path}"),
        ])
        .await?;
    Ok(out.trim().to_string())
}

/// Waits until the pod is bound and returns its node.
pub async fn bound_node(cp: &ControlPlane, ns: &str, name: &str) -> anyhow::Result<String> {
    let node = wait::until(
        &format!("pod {ns}/{name} bound"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            match pod_field(cp, ns, name, "{.spec.nodeName}").await {
                Ok(n) if !n.is_empty() => Ok(n),
                Ok(_) => Err(pod_field(cp, ns, name, "{.status.conditions}")
                    .await
                    .unwrap_or_default()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?;
    Ok(node)
}

/// Waits until the pod has PodScheduled=False/Unschedulable and returns its message.
pub async fn unschedulable_message(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
) -> anyhow::Result<String> {
    let msg = wait::until(
        &format!("pod {ns}/{name} Unschedulable"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let reason = pod_field(
                cp,
                ns,
                name,
                "{.status.conditions[?(@.type==\"PodScheduled\")].reason}",
            )
            .await
            .map_err(|e| e.to_string())?;
            if reason != "Unschedulable" {
                return Err(format!("reason {reason:?}"));
            }
            pod_field(
                cp,
                ns,
                name,
                "{.status.conditions[?(@.type==\"PodScheduled\")].message}",
            )
            .await
            .map_err(|e| e.to_string())
        },
    )
    .await?;
    Ok(msg)
}

/// Events (events.k8s.io/v1) about `pod`, as (reason, reportingController, note).
pub async fn events_about(
    cp: &ControlPlane,
    ns: &str,
    pod: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let out = cp
        .kubectl()?
        .ok(["get", "events.events.k8s.io", "-n", ns, "-o", "json"])
        .await?;
    let list: serde_json::Value = serde_json::from_str(&out)?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["regarding"]["name"] == pod)
        .map(|e| (s(&e["reason"]), s(&e["reportingController"]), s(&e["note"])))
        .collect())
}

/// Waits for an event with `reason` about `pod`.
pub async fn wait_event(
    cp: &ControlPlane,
    ns: &str,
    pod: &str,
    reason: &str,
) -> anyhow::Result<(String, String, String)> {
    let ev = wait::until(
        &format!("{reason} event for {ns}/{pod}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let evs = events_about(cp, ns, pod).await.map_err(|e| e.to_string())?;
            evs.iter()
                .find(|e| e.0 == reason)
                .cloned()
                .ok_or_else(|| format!("{evs:?}"))
        },
    )
    .await?;
    Ok(ev)
}
