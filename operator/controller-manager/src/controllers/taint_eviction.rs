//! `taint-eviction-controller`: deletes pods from nodes with `NoExecute` taints they don't
//! tolerate — at once when no toleration matches, after the smallest `tolerationSeconds`
//! when tolerations are time-limited, never when one tolerates forever.
//!
//! Level-triggered on the pod: each sync computes the eviction deadline from the taints'
//! `timeAdded` and either evicts or asks to be looked at again at the deadline. (Upstream
//! counts from when its in-memory timer started, which restarts with the process; counting
//! from `timeAdded` gives the same deadline across restarts and leader changes.)

use std::time::Duration;

use crate::transform::CachedPod;
use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers, enqueue_from};
use ferrokube_runtime::events::{EventType, Recorder, reference};
use ferrokube_runtime::informer::{Notification, ObjectKey, Store};
use ferrokube_runtime::workqueue::WorkQueue;
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Preconditions};
use tokio::task::JoinSet;

use super::StartError;
use crate::context::Context;
use crate::node_util;

/// What should happen to a pod on a tainted node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing: no NoExecute taint, or all tolerated forever.
    Keep,
    /// Evict at this time (now or in the past: at once).
    EvictAt(Timestamp),
}

/// Upstream's `getMinTolerationTime` over the NoExecute taints, with deadlines counted
/// from each taint's `timeAdded`.
pub fn verdict(taints: &[Taint], tolerations: &[Toleration], now: Timestamp) -> Verdict {
    let mut deadline: Option<Timestamp> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> = tolerations
            .iter()
            .filter(|t| node_util::tolerates(t, taint))
            .collect();
        if matching.is_empty() {
            return Verdict::EvictAt(now);
        }
        // A forever-toleration (no seconds) wins over time-limited ones for this taint.
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let seconds = matching
            .iter()
            .filter_map(|t| t.toleration_seconds)
            .min()
            .unwrap_or(0)
            .max(0);
        let added = taint.time_added.as_ref().map_or(now, |t| t.0);
        let at = added
            .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
            .unwrap_or(added);
        deadline = Some(deadline.map_or(at, |d| d.min(at)));
    }
    deadline.map_or(Verdict::Keep, Verdict::EvictAt)
}

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let nodes = ctx.informers.informer::<Node>();
    let pods = ctx.informers.informer::<CachedPod>();
    let queue: WorkQueue<ObjectKey> = WorkQueue::new("taint_eviction_controller", &ctx.metrics);
    let recorder = ctx.recorder("taint-eviction-controller", tasks);

    enqueue_from(
        tasks,
        pods.subscribe(),
        queue.clone(),
        ctx.shutdown.clone(),
        |n: &Notification<CachedPod>| match n {
            Notification::Deleted(_) => vec![],
            n if node_util::node_name(n.object()).is_some() => {
                vec![ObjectKey::of(n.object().as_ref())]
            }
            _ => vec![],
        },
    );
    let pod_store = pods.store();
    enqueue_from(
        tasks,
        nodes.subscribe(),
        queue.clone(),
        ctx.shutdown.clone(),
        move |n: &Notification<Node>| {
            let no_execute = |node: &Node| -> Vec<Taint> {
                node_util::taints(node)
                    .iter()
                    .filter(|t| t.effect == "NoExecute")
                    .cloned()
                    .collect()
            };
            let changed = match n {
                Notification::Added(node) => !no_execute(node).is_empty(),
                Notification::Updated { old, new } => no_execute(old) != no_execute(new),
                Notification::Deleted(_) => false,
            };
            if !changed {
                return vec![];
            }
            let name = n.object().metadata.name.clone().unwrap_or_default();
            pod_store
                .filter(|p| node_util::node_name(p) == Some(name.as_str()))
                .iter()
                .map(|p| ObjectKey::of(p.as_ref()))
                .collect()
        },
    );

    let sync = Sync {
        client: ctx.client.clone(),
        nodes: nodes.store(),
        pods: pods.store(),
        recorder,
    };
    let (n, p) = (nodes.store(), pods.store());
    Workers::new("taint-eviction-controller", 8).spawn_when(
        tasks,
        async move {
            n.wait_synced().await;
            p.wait_synced().await;
        },
        queue,
        ctx.shutdown.clone(),
        move |key: ObjectKey| {
            let sync = sync.clone();
            async move { sync.pod(&key).await }
        },
    );
    Ok(())
}

#[derive(Clone)]
struct Sync {
    client: kube::Client,
    nodes: Store<Node>,
    pods: Store<CachedPod>,
    recorder: Recorder,
}

impl Sync {
    async fn pod(&self, key: &ObjectKey) -> Result<Action, kube::Error> {
        let Some(pod) = self.pods.get_key(key) else {
            return Ok(Action::Done);
        };
        if pod.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let Some(node) = node_util::node_name(&pod).and_then(|n| self.nodes.get("", n)) else {
            return Ok(Action::Done);
        };
        let now = Timestamp::now();
        let at = match verdict(node_util::taints(&node), node_util::tolerations(&pod), now) {
            Verdict::Keep => return Ok(Action::Done),
            Verdict::EvictAt(at) => at,
        };
        if at > now {
            let wait = Duration::try_from(at.duration_since(now)).unwrap_or(Duration::from_secs(1));
            return Ok(Action::RequeueAfter(wait));
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.namespace);
        self.recorder.publish(
            reference(pod.as_ref()),
            EventType::Normal,
            "TaintManagerEviction",
            "Evicting",
            format!("Marking for deletion Pod {key}"),
        );
        // Tell the pod's owners why it goes (upstream's DisruptionTarget condition).
        match node_util::patch_pod_condition(
            &api,
            &key.name,
            "DisruptionTarget",
            "True",
            Some("DeletionByTaintManager"),
            Some("Taint manager: deleting due to NoExecute taint"),
        )
        .await
        {
            Ok(()) => {}
            Err(e) if apierrors::is_not_found(&e) => return Ok(Action::Done),
            Err(e) => return Err(e),
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&key.name, &params).await {
            Ok(_) => Ok(Action::Done),
            Err(e) if apierrors::is_not_found(&e) || apierrors::is_conflict(&e) => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn taint(key: &str, added: Timestamp) -> Taint {
        Taint {
            key: key.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(added)),
        }
    }

    fn tol(key: &str, seconds: Option<i64>) -> Toleration {
        Toleration {
            key: Some(key.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: seconds,
            value: None,
        }
    }

    #[test]
    fn verdicts() {
        let t0 = Timestamp::from_second(1_000_000).expect("ts");
        let now = Timestamp::from_second(1_000_010).expect("ts");
        let unreachable = taint(node_util::TAINT_UNREACHABLE, t0);
        assert_eq!(verdict(&[], &[], now), Verdict::Keep);
        assert_eq!(
            verdict(std::slice::from_ref(&unreachable), &[], now),
            Verdict::EvictAt(now)
        );
        assert_eq!(
            verdict(
                std::slice::from_ref(&unreachable),
                &[tol(node_util::TAINT_UNREACHABLE, Some(300))],
                now
            ),
            Verdict::EvictAt(Timestamp::from_second(1_000_300).expect("ts"))
        );
        assert_eq!(
            verdict(
                std::slice::from_ref(&unreachable),
                &[tol(node_util::TAINT_UNREACHABLE, None)],
                now
            ),
            Verdict::Keep
        );
        // The smallest of several matching time limits counts.
        assert_eq!(
            verdict(
                std::slice::from_ref(&unreachable),
                &[
                    tol(node_util::TAINT_UNREACHABLE, Some(300)),
                    tol("", Some(5))
                ],
                now
            ),
            Verdict::EvictAt(Timestamp::from_second(1_000_005).expect("ts"))
        );
        // One untolerated taint among tolerated ones evicts at once.
        let other = taint("example.com/broken", t0);
        assert_eq!(
            verdict(
                &[unreachable, other],
                &[tol(node_util::TAINT_UNREACHABLE, None)],
                now
            ),
            Verdict::EvictAt(now)
        );
    }
}
