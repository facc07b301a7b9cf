//! `pod-garbage-collector-controller` (alias `podgc`): every `--pod-gc-period` it deletes
//!
//! - the oldest terminated pods (Succeeded/Failed) beyond `--terminated-pod-gc-threshold`;
//! - pods bound to a node that no longer exists (after the node has been missing for two
//!   periods, and confirmed absent by a live GET, so a slow informer never costs pods);
//! - pods that are terminating but were never scheduled (no kubelet will finish them).
//!
//! Pods deleted for a missing node first get the DisruptionTarget condition
//! (reason DeletionByPodGC), as upstream does, and are force-deleted.

use std::collections::HashMap;
use std::sync::Arc;

use crate::transform::CachedPod;
use ferrokube_runtime::apierrors;
use ferrokube_runtime::informer::Store;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::StartError;
use crate::context::Context;
use crate::node_util;

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let nodes = ctx.informers.informer::<Node>().store();
    let pods = ctx.informers.informer::<CachedPod>().store();
    let period = ctx
        .options
        .pod_gc_period
        .max(std::time::Duration::from_millis(100));
    let gc = Arc::new(PodGc {
        client: ctx.client.clone(),
        nodes,
        pods,
        threshold: ctx.options.terminated_pod_gc_threshold,
        quarantine: period * 2,
    });
    let shutdown = ctx.shutdown.clone();
    tasks.spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async { gc.nodes.wait_synced().await; gc.pods.wait_synced().await } => {}
        }
        let mut missing_since: HashMap<String, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            gc.collect_terminated().await;
            gc.collect_orphaned(&mut missing_since).await;
            gc.collect_unscheduled_terminating().await;
        }
    });
    Ok(())
}

struct PodGc {
    client: kube::Client,
    nodes: Store<Node>,
    pods: Store<CachedPod>,
    threshold: usize,
    quarantine: std::time::Duration,
}

fn phase(pod: &CachedPod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

impl PodGc {
    async fn delete(&self, pod: &CachedPod, force: bool) {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: force.then_some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => tracing::info!(namespace = %ns, pod = %name, "garbage collected pod"),
            Err(e) if apierrors::is_not_found(&e) || apierrors::is_conflict(&e) => {}
            Err(e) => {
                tracing::warn!(namespace = %ns, pod = %name, error = %e, "deleting pod failed")
            }
        }
    }

    /// Terminated pods beyond the threshold, oldest first (upstream's `gcTerminated`).
    async fn collect_terminated(&self) {
        if self.threshold == 0 {
            return;
        }
        let mut terminated = self.pods.filter(|p| {
            matches!(phase(p), "Succeeded" | "Failed") && p.metadata.deletion_timestamp.is_none()
        });
        if terminated.len() <= self.threshold {
            return;
        }
        terminated.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let excess = terminated.len() - self.threshold;
        for pod in terminated.iter().take(excess) {
            self.delete(pod, false).await;
        }
    }

    /// Pods bound to nodes that are gone (upstream's `gcOrphaned`).
    async fn collect_orphaned(&self, missing_since: &mut HashMap<String, Instant>) {
        let now = Instant::now();
        let mut candidates: HashMap<String, Vec<Arc<CachedPod>>> = HashMap::new();
        for pod in self.pods.list() {
            if let Some(node) = node_util::node_name(&pod)
                && self.nodes.get("", node).is_none()
            {
                candidates
                    .entry(node.to_string())
                    .or_default()
                    .push(pod.clone());
            }
        }
        missing_since.retain(|node, _| candidates.contains_key(node));
        let nodes: Api<Node> = Api::all(self.client.clone());
        for (node, pods) in candidates {
            let since = *missing_since.entry(node.clone()).or_insert(now);
            if now.duration_since(since) < self.quarantine {
                continue;
            }
            // The cache may lag: only a live "not found" proves the node is gone.
            match nodes.get_opt(&node).await {
                Ok(None) => {}
                Ok(Some(_)) => {
                    missing_since.remove(&node);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(%node, error = %e, "checking node failed");
                    continue;
                }
            }
            for pod in pods {
                let ns = pod.metadata.namespace.clone().unwrap_or_default();
                let name = pod.metadata.name.clone().unwrap_or_default();
                let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
                if !matches!(phase(&pod), "Succeeded" | "Failed") {
                    let _ = node_util::patch_pod_condition(
                        &api,
                        &name,
                        "DisruptionTarget",
                        "True",
                        Some("DeletionByPodGC"),
                        Some("PodGC: node no longer exists"),
                    )
                    .await;
                }
                self.delete(&pod, true).await;
            }
        }
    }

    /// Terminating pods that were never scheduled (upstream's `gcUnscheduledTerminating`).
    async fn collect_unscheduled_terminating(&self) {
        for pod in self.pods.filter(|p| {
            p.metadata.deletion_timestamp.is_some() && node_util::node_name(p).is_none()
        }) {
            self.delete(&pod, true).await;
        }
    }
}
