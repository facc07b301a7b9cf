//! `node-lifecycle-controller`: watches node heartbeats (the Ready condition's
//! lastHeartbeatTime and the node's Lease in kube-node-lease) and acts when they stop.
//!
//! - After `--node-monitor-grace-period` without a heartbeat, Ready, MemoryPressure,
//!   DiskPressure and PIDPressure become Unknown ("Kubelet stopped posting node status.").
//! - Pods on a node that is not Ready get Ready=False (event NodeNotReady).
//! - Nodes get `node.kubernetes.io/unreachable:NoExecute` (Ready Unknown) or
//!   `node.kubernetes.io/not-ready:NoExecute` (Ready False), at `--node-eviction-rate` per zone,
//!   slower or not at all while a zone is largely down, and never while every zone is down
//!   (then the problem is more likely the control plane's network than the nodes). The
//!   taint-eviction controller evicts pods that don't tolerate them.
//! - NoSchedule taints mirror node conditions and `spec.unschedulable` (taint nodes by
//!   condition), so the scheduler only has to look at taints.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::transform::CachedPod;
use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers, enqueue_from};
use ferrokube_runtime::events::{EventType, Recorder, reference};
use ferrokube_runtime::informer::{Notification, Selectors, Store};
use ferrokube_runtime::ratelimit::TokenBucket;
use ferrokube_runtime::workqueue::WorkQueue;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::StartError;
use crate::context::Context;
use crate::node_util::{self, TAINT_NOT_READY, TAINT_UNREACHABLE, TAINT_UNSCHEDULABLE};

/// Nodes with this label don't count towards zone disruption.
const LABEL_EXCLUDE_DISRUPTION: &str = "node.kubernetes.io/exclude-disruption";

/// The conditions a silent node's kubelet no longer vouches for.
const MONITORED_CONDITIONS: &[&str] = &["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"];

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let nodes = ctx.informers.informer::<Node>();
    let pods = ctx.informers.informer::<CachedPod>();
    let leases = ctx.informers.informer_with::<Lease>(Selectors {
        namespace: Some("kube-node-lease".into()),
        ..Selectors::default()
    });
    let recorder = ctx.recorder("node-controller", tasks);
    let o = &ctx.options;
    let monitor = Arc::new(Monitor {
        client: ctx.client.clone(),
        nodes: nodes.store(),
        pods: pods.store(),
        leases: leases.store(),
        recorder,
        config: Config {
            grace: o.node_monitor_grace_period,
            startup_grace: o.node_startup_grace_period,
            eviction_rate: o.node_eviction_rate,
            secondary_eviction_rate: o.secondary_node_eviction_rate,
            large_cluster_threshold: o.large_cluster_size_threshold,
            unhealthy_zone_threshold: o.unhealthy_zone_threshold,
        },
        health: Mutex::new(HashMap::new()),
        zones: Mutex::new(HashMap::new()),
    });

    // NoSchedule taints follow conditions as soon as a node changes.
    let queue: WorkQueue<String> = WorkQueue::new("node_lifecycle_controller_taints", &ctx.metrics);
    enqueue_from(
        tasks,
        nodes.subscribe(),
        queue.clone(),
        ctx.shutdown.clone(),
        |n: &Notification<Node>| match n {
            Notification::Deleted(_) => vec![],
            n => n.object().metadata.name.clone().into_iter().collect(),
        },
    );

    let period = o.node_monitor_period.max(Duration::from_millis(100));
    let shutdown = ctx.shutdown.clone();
    let (n, p, l) = (nodes.store(), pods.store(), leases.store());
    tasks.spawn(async move {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = async { n.wait_synced().await; p.wait_synced().await; l.wait_synced().await } => {}
        }
        let mut inner = JoinSet::new();
        let tainter = monitor.clone();
        Workers::new("node-lifecycle-controller", 1).spawn(
            &mut inner,
            queue,
            shutdown.clone(),
            move |name: String| {
                let m = tainter.clone();
                async move { m.no_schedule_taints(&name).await }
            },
        );
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => monitor.monitor_node_health().await,
            }
        }
        while inner.join_next().await.is_some() {}
    });
    Ok(())
}

struct Config {
    grace: Duration,
    startup_grace: Duration,
    eviction_rate: f64,
    secondary_eviction_rate: f64,
    large_cluster_threshold: usize,
    unhealthy_zone_threshold: f64,
}

/// What we last saw of a node's heartbeats, and when (our clock) it last changed.
struct Health {
    heartbeat: Option<Timestamp>,
    lease_renew: Option<Timestamp>,
    probe: Instant,
}

/// A zone's state (upstream's `ZoneState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ZoneState {
    /// Most nodes are fine.
    Normal,
    /// At least the threshold fraction (and more than two) of nodes are not ready.
    PartialDisruption,
    /// No node is ready.
    FullDisruption,
}

/// Classifies a zone from its ready and not-ready node counts (upstream's `ComputeZoneState`).
pub fn zone_state(ready: usize, not_ready: usize, threshold: f64) -> ZoneState {
    if ready == 0 && not_ready > 0 {
        ZoneState::FullDisruption
    } else if not_ready > 2 && (not_ready as f64) / ((ready + not_ready) as f64) >= threshold {
        ZoneState::PartialDisruption
    } else {
        ZoneState::Normal
    }
}

struct Monitor {
    client: kube::Client,
    nodes: Store<Node>,
    pods: Store<CachedPod>,
    leases: Store<Lease>,
    recorder: Recorder,
    config: Config,
    health: Mutex<HashMap<String, Health>>,
    /// Per-zone limiter for NoExecute taints, with the rate it was made for.
    zones: Mutex<HashMap<String, (f64, TokenBucket)>>,
}

fn zone_of(node: &Node) -> String {
    let labels = node.metadata.labels.as_ref();
    let get = |k: &str| labels.and_then(|l| l.get(k)).cloned().unwrap_or_default();
    // upstream's GetZoneKey: region and zone joined by a NUL byte.
    format!(
        "{}:\u{0}:{}",
        get(node_util::LABEL_REGION),
        get(node_util::LABEL_ZONE)
    )
}

impl Monitor {
    async fn monitor_node_health(&self) {
        let nodes = self.nodes.list();
        {
            let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            health.retain(|name, _| {
                nodes
                    .iter()
                    .any(|n| n.metadata.name.as_deref() == Some(name))
            });
        }
        let mut zone_counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut readiness = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let ready = match self.update_node_health(node).await {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(node = ?node.metadata.name, error = %e, "updating node health failed");
                    node_util::ready_status(node).to_string()
                }
            };
            if !node
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(LABEL_EXCLUDE_DISRUPTION))
            {
                let c = zone_counts.entry(zone_of(node)).or_default();
                if ready == "True" {
                    c.0 += 1;
                } else {
                    c.1 += 1;
                }
            }
            if ready != "True" {
                self.mark_pods_not_ready(node).await;
            }
            readiness.push((node.clone(), ready));
        }

        let states: BTreeMap<String, ZoneState> = zone_counts
            .iter()
            .map(|(z, (r, n))| {
                (
                    z.clone(),
                    zone_state(*r, *n, self.config.unhealthy_zone_threshold),
                )
            })
            .collect();
        let all_down =
            !states.is_empty() && states.values().all(|s| *s == ZoneState::FullDisruption);
        if all_down {
            tracing::warn!(
                "every zone is fully disrupted; not tainting nodes (master disruption mode)"
            );
        }
        for (node, ready) in readiness {
            let result = if all_down {
                // Nobody is evicted while the control plane may simply be cut off.
                self.remove_no_execute_taints(&node).await
            } else {
                let zone = zone_of(&node);
                let size = zone_counts.get(&zone).map_or(0, |(r, n)| r + n);
                let state = states.get(&zone).copied().unwrap_or(ZoneState::Normal);
                self.taint_based_eviction(&node, &ready, &zone, state, size)
                    .await
            };
            if let Err(e) = result {
                tracing::warn!(node = ?node.metadata.name, error = %e, "tainting node failed");
            }
        }
    }

    /// Upstream's `tryUpdateNodeHealth`: returns the Ready status after any update.
    async fn update_node_health(&self, node: &Node) -> Result<String, kube::Error> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let ready = node_util::condition(node, "Ready");
        let heartbeat = ready
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0);
        let lease_renew = self
            .leases
            .get("kube-node-lease", &name)
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let grace = if ready.is_some() {
            self.config.grace
        } else {
            self.config.startup_grace
        };
        let now = Instant::now();
        let expired = {
            let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            let h = health.entry(name.clone()).or_insert(Health {
                heartbeat,
                lease_renew,
                probe: now,
            });
            if h.heartbeat != heartbeat {
                h.heartbeat = heartbeat;
                h.probe = now;
            }
            if lease_renew.is_some() && (h.lease_renew.is_none() || h.lease_renew < lease_renew) {
                h.lease_renew = lease_renew;
                h.probe = now;
            }
            now.duration_since(h.probe) > grace
        };
        let status = node_util::ready_status(node).to_string();
        if !expired {
            return Ok(status);
        }
        let stamp = Time(Timestamp::now());
        let created = node.metadata.creation_timestamp.clone();
        let mut changed = Vec::new();
        for type_ in MONITORED_CONDITIONS {
            match node_util::condition(node, type_) {
                None => changed.push(serde_json::json!({
                    "type": type_,
                    "status": "Unknown",
                    "reason": "NodeStatusNeverUpdated",
                    "message": "Kubelet never posted node status.",
                    "lastHeartbeatTime": created,
                    "lastTransitionTime": stamp,
                })),
                Some(c) if c.status != "Unknown" => changed.push(serde_json::json!({
                    "type": type_,
                    "status": "Unknown",
                    "reason": "NodeStatusUnknown",
                    "message": "Kubelet stopped posting node status.",
                    "lastTransitionTime": stamp,
                })),
                Some(_) => {}
            }
        }
        if changed.is_empty() {
            return Ok(status);
        }
        tracing::info!(node = %name, "node stopped posting status; marking its conditions Unknown");
        let api: Api<Node> = Api::all(self.client.clone());
        let patch = serde_json::json!({ "status": { "conditions": changed } });
        api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        self.recorder.publish(
            reference(node),
            EventType::Normal,
            "NodeNotReady",
            "NodeNotReady",
            format!("Node {name} status is now: NodeNotReady"),
        );
        Ok("Unknown".into())
    }

    /// Upstream's `MarkPodsNotReady` for the pods bound to `node`.
    async fn mark_pods_not_ready(&self, node: &Node) {
        let Some(name) = node.metadata.name.as_deref() else {
            return;
        };
        for pod in self.pods.filter(|p| node_util::node_name(p) == Some(name)) {
            let ready = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
            if ready.is_none_or(|c| c.status == "False")
                || pod.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            match node_util::patch_pod_condition(&api, &pod_name, "Ready", "False", None, None)
                .await
            {
                Ok(()) => self.recorder.publish(
                    reference(pod.as_ref()),
                    EventType::Warning,
                    "NodeNotReady",
                    "NodeNotReady",
                    "Node is not ready",
                ),
                Err(e) if apierrors::is_not_found(&e) => {}
                Err(e) => {
                    tracing::warn!(pod = %pod_name, namespace = %ns, error = %e, "marking pod not ready failed")
                }
            }
        }
    }

    fn limiter(&self, zone: &str, state: ZoneState, size: usize) -> TokenBucket {
        let rate = match state {
            ZoneState::Normal | ZoneState::FullDisruption => self.config.eviction_rate,
            ZoneState::PartialDisruption if size > self.config.large_cluster_threshold => {
                self.config.secondary_eviction_rate
            }
            ZoneState::PartialDisruption => 0.0,
        };
        let mut zones = self.zones.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = zones
            .entry(zone.to_string())
            .or_insert_with(|| (rate, bucket(rate)));
        if entry.0 != rate {
            *entry = (rate, bucket(rate));
        }
        entry.1.clone()
    }

    /// Upstream's `processTaintBaseEviction`.
    async fn taint_based_eviction(
        &self,
        node: &Node,
        ready: &str,
        zone: &str,
        state: ZoneState,
        size: usize,
    ) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let has = |key: &str| {
            node_util::taints(node)
                .iter()
                .any(|t| t.key == key && t.effect == "NoExecute")
        };
        let (want, opposite) = match ready {
            "False" => (TAINT_NOT_READY, TAINT_UNREACHABLE),
            "Unknown" => (TAINT_UNREACHABLE, TAINT_NOT_READY),
            _ => return self.remove_no_execute_taints(node).await,
        };
        if has(want) {
            return Ok(());
        }
        // Switching between the two is not a new eviction wave: no rate limit.
        if !has(opposite) && !self.limiter(zone, state, size).try_take() {
            return Ok(());
        }
        let add = node_util::taint(want, "NoExecute");
        let remove = node_util::taint(opposite, "NoExecute");
        if node_util::swap_taints(&api, node, &[add], &[remove]).await? {
            tracing::info!(node = ?node.metadata.name, taint = want, "tainted node NoExecute");
        }
        Ok(())
    }

    /// Upstream's `markNodeAsReachable`.
    async fn remove_no_execute_taints(&self, node: &Node) -> Result<(), kube::Error> {
        let api: Api<Node> = Api::all(self.client.clone());
        let remove = [
            node_util::taint(TAINT_UNREACHABLE, "NoExecute"),
            node_util::taint(TAINT_NOT_READY, "NoExecute"),
        ];
        node_util::swap_taints(&api, node, &[], &remove).await?;
        Ok(())
    }

    /// Upstream's `doNoScheduleTaintingPass`.
    async fn no_schedule_taints(&self, name: &str) -> Result<Action, kube::Error> {
        let Some(node) = self.nodes.get("", name) else {
            return Ok(Action::Done);
        };
        let mut want: Vec<Taint> = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|c| node_util::condition_taint_key(&c.type_, &c.status))
            .map(|k| node_util::taint(k, "NoSchedule"))
            .collect();
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            want.push(node_util::taint(TAINT_UNSCHEDULABLE, "NoSchedule"));
        }
        let have: Vec<Taint> = node_util::taints(&node)
            .iter()
            .filter(|t| {
                t.effect == "NoSchedule"
                    && (t.key == TAINT_UNSCHEDULABLE || node_util::is_condition_taint(&t.key))
            })
            .cloned()
            .collect();
        let add: Vec<Taint> = want
            .iter()
            .filter(|w| !have.iter().any(|h| node_util::taint_matches(h, w)))
            .cloned()
            .collect();
        let remove: Vec<Taint> = have
            .iter()
            .filter(|h| !want.iter().any(|w| node_util::taint_matches(h, w)))
            .cloned()
            .collect();
        if add.is_empty() && remove.is_empty() {
            return Ok(Action::Done);
        }
        let api: Api<Node> = Api::all(self.client.clone());
        match node_util::swap_taints(&api, &node, &add, &remove).await {
            Ok(_) => Ok(Action::Done),
            Err(e) if apierrors::is_not_found(&e) => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

/// A per-zone limiter: one node at a time, `rate` per second; zero stops tainting.
fn bucket(rate: f64) -> TokenBucket {
    if rate > 0.0 {
        TokenBucket::new(rate, 1)
    } else {
        TokenBucket::never()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_states_follow_upstream() {
        assert_eq!(zone_state(3, 0, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(0, 1, 0.55), ZoneState::FullDisruption);
        assert_eq!(zone_state(0, 0, 0.55), ZoneState::Normal);
        // Two not-ready nodes never make a partial disruption, whatever the fraction.
        assert_eq!(zone_state(1, 2, 0.55), ZoneState::Normal);
        assert_eq!(zone_state(2, 3, 0.55), ZoneState::PartialDisruption);
        assert_eq!(zone_state(10, 3, 0.55), ZoneState::Normal);
    }
}
