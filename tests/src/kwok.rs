//! kwok as a stand-in for kubelets: fake Nodes whose pods it marks Running and Ready (and
//! finishes deleting), so rollouts complete without real containers.
//!
//! kwok manages only the Nodes annotated `kwok.x-k8s.io/node=fake`, so it never touches
//! Nodes of a real kubelet that shares the control plane. There is no scheduler in most
//! tests: pod templates name the node (`spec.nodeName`) directly.

use std::time::Duration;

use anyhow::Result;

use crate::process::Process;
use crate::{ControlPlane, wait};

/// kwok's stock stages (node ready with heartbeats, pod ready/complete/delete), vendored
/// from its repository.
const STAGES: &str = include_str!("kwok-stages.yaml");

/// The annotation (and value) that kwok's node selector matches.
pub const NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// A running kwok and the fake nodes it manages.
pub struct Kwok {
    /// The kwok process (its log is dumped with the control plane's on failure).
    pub process: Process,
    /// The fake nodes' names.
    pub nodes: Vec<String>,
}

impl Kwok {
    /// Makes `node` go silent: kwok stops heartbeating for a node once it no longer
    /// carries kwok's annotation, as a kubelet that died would.
    pub async fn silence(&self, cp: &ControlPlane, node: &str) -> Result<()> {
        cp.kubectl()?
            .ok(["annotate", "node", node, &format!("{NODE_ANNOTATION}-")])
            .await?;
        Ok(())
    }
}

/// Starts kwok against `cp` and registers `nodes` fake nodes named `<prefix>-0`, ...; waits
/// until kwok reports the first one Ready.
pub async fn start(cp: &ControlPlane, prefix: &str, nodes: usize) -> Result<Kwok> {
    let bin = crate::upstream::binary("kwok")?;
    let selector = format!("--manage-nodes-with-annotation-selector={NODE_ANNOTATION}=fake");
    // Raw kwok runs only the stages its config lists: give it the stock ones (node ready
    // with Lease heartbeats, pod ready, pod complete, pod delete).
    let config = cp.dir().join("kwok.yaml");
    std::fs::write(&config, STAGES)?;
    let config_flag = format!("--config={}", config.display());
    let process = cp.spawn_component(
        "kwok",
        &bin,
        &[
            "--manage-all-nodes=false",
            &selector,
            &config_flag,
            "--node-lease-duration-seconds=40",
            "--cidr=10.0.0.0/16",
        ],
    )?;
    let kubectl = cp.kubectl()?;
    let mut names = Vec::new();
    for i in 0..nodes {
        let name = format!("{prefix}-{i}");
        kubectl.apply(&node_manifest(&name)).await?;
        names.push(name);
    }
    if let Some(first) = names.first() {
        let kubectl = &kubectl;
        wait::until(
            "kwok node Ready",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || async move {
                let out = kubectl
                    .ok([
                        "get",
                        "node",
                        first.as_str(),
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ])
                    .await
                    .map_err(|e| e.to_string())?;
                if out.trim() == "True" {
                    Ok(())
                } else {
                    Err(format!("Ready={out:?}"))
                }
            },
        )
        .await?;
    }
    Ok(Kwok {
        process,
        nodes: names,
    })
}

fn node_manifest(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    {NODE_ANNOTATION}: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/role: agent
    type: kwok
spec:
  taints: []
status:
  allocatable:
    cpu: "32"
    memory: 256Gi
    pods: "110"
  capacity:
    cpu: "32"
    memory: 256Gi
    pods: "110"
"#
    )
}
