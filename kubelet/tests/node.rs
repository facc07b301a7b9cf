//! The kubelet's Node: registration, Lease renewal and Ready status.

mod common;

use std::time::Duration;

use ferrokube_tests::{ControlPlane, wait};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_renews_lease_and_is_ready() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let mut kubelet = common::start(&cp, "node-reg", "198.18.41.0/24").await?;
    let client = cp.client().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = wait::until(
        "node Ready",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let nodes = nodes.clone();
            async move {
                let n = nodes
                    .get_opt("node-reg")
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("no node yet")?;
                let ready = n
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| (c.status.clone(), c.reason.clone()));
                match ready {
                    Some((s, r)) if s == "True" && r.as_deref() == Some("KubeletReady") => Ok(n),
                    other => Err(format!("Ready: {other:?}")),
                }
            }
        },
    )
    .await;
    let node = match node {
        Ok(n) => n,
        Err(e) => anyhow::bail!("{e}\n{}", cp.logs(40)),
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("kubernetes.io/hostname").map(String::as_str),
        Some("node-reg")
    );
    assert_eq!(
        labels.get("kubernetes.io/os").map(String::as_str),
        Some("linux")
    );
    assert!(labels.contains_key("kubernetes.io/arch"));
    assert_eq!(
        node.spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone())
            .as_deref(),
        Some("198.18.41.0/24")
    );
    let status = node.status.clone().unwrap_or_default();
    let cap = status.capacity.clone().unwrap_or_default();
    assert_eq!(cap.get("pods").map(|q| q.0.as_str()), Some("110"));
    assert!(
        cap.contains_key("cpu")
            && cap.contains_key("memory")
            && cap.contains_key("ephemeral-storage")
    );
    assert!(
        status
            .allocatable
            .unwrap_or_default()
            .contains_key("memory")
    );
    let info = status.node_info.unwrap_or_default();
    assert!(info.kubelet_version.starts_with("v1."), "{info:?}");
    assert!(
        info.container_runtime_version.starts_with("runc://"),
        "{info:?}"
    );
    let addrs = status.addresses.unwrap_or_default();
    assert!(
        addrs
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == "127.0.0.1")
    );
    assert!(addrs.iter().any(|a| a.type_ == "Hostname"));
    for t in ["MemoryPressure", "DiskPressure", "PIDPressure"] {
        assert!(
            status.conditions.iter().flatten().any(|c| c.type_ == t),
            "{t}"
        );
    }

    // The Lease is owned by the Node and renewed every 10 s.
    let leases: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let first = leases.get("node-reg").await?;
    assert_eq!(
        first
            .metadata
            .owner_references
            .as_ref()
            .map(|o| o[0].kind.as_str()),
        Some("Node")
    );
    let spec = first.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("node-reg"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    let first_renew = spec.renew_time.map(|t| t.0);
    wait::until(
        "lease renewal",
        Duration::from_secs(25),
        Duration::from_millis(500),
        || {
            let leases = leases.clone();
            async move {
                let l = leases.get("node-reg").await.map_err(|e| e.to_string())?;
                let renew = l.spec.and_then(|s| s.renew_time).map(|t| t.0);
                if renew > first_renew {
                    Ok(())
                } else {
                    Err(format!("renewTime still {renew:?}"))
                }
            }
        },
    )
    .await?;

    // A restarted kubelet finds its Node registered and keeps it.
    kubelet.stop();
    let mut kubelet2 = common::start(&cp, "node-reg", "198.18.41.0/24").await?;
    let again = nodes.get("node-reg").await?;
    assert_eq!(again.metadata.uid, node.metadata.uid);
    kubelet2.teardown();
    kubelet.teardown();
    Ok(())
}

/// `--eviction-hard` decides the pressure conditions: a disk threshold no file system can
/// meet reports DiskPressure (which node-lifecycle-controller turns into a NoSchedule
/// taint); a bad threshold stops the kubelet with a message naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_thresholds_drive_pressure_conditions() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let kubectl = cp.kubectl()?;
    let mut kubelet = common::start_with(
        &cp,
        "node-evict",
        "198.18.48.0/24",
        &["--eviction-hard=nodefs.available<100%"],
    )
    .await?;
    let conditions = "jsonpath={.status.conditions[?(@.type==\"DiskPressure\")].status}/{.status.conditions[?(@.type==\"MemoryPressure\")].status}/{.status.allocatable.ephemeral-storage}";
    let seen = wait::until(
        "DiskPressure",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let out = kubectl
                .ok(["get", "node", "node-evict", "-o", conditions])
                .await
                .map_err(|e| e.to_string())?;
            // The whole disk is the threshold: nothing of it is allocatable.
            if out.trim() == "True/False/0" {
                Ok(out)
            } else {
                Err(format!("{out:?}"))
            }
        },
    )
    .await;
    if let Err(e) = seen {
        anyhow::bail!("{e}\n{}", cp.logs(40));
    }
    kubelet.teardown();

    let out = std::process::Command::new(common::binary())
        .args([
            "--hostname-override=node-bad",
            "--eviction-hard=nodefs.available<15 percent",
        ])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--eviction-hard") && stderr.contains("15 percent"),
        "{stderr}"
    );
    Ok(())
}
