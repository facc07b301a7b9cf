//! `replicationcontroller-controller`: keeps `spec.replicas` pods running for every
//! ReplicationController.
//!
//! Upstream's `ReplicationManager` (`pkg/controller/replication`) is the ReplicaSet
//! controller run on ReplicationControllers converted to ReplicaSets and back. Here the
//! ReplicaSet controller's core is generic over [`ReplicaOwner`] instead, and this module
//! only says how a ReplicationController reads: its selector is a plain label map (a
//! `matchLabels`), its status has no `terminatingReplicas`, its controller reference is
//! `v1/ReplicationController`, and its events come from `replication-controller` with the
//! same reasons (SuccessfulCreate, FailedCreate, ...) and the same `ReplicaFailure`
//! condition. Expectations, slow-start batches, the burst limit, the deletion ranking,
//! adoption and release are the ReplicaSet controller's, unchanged.

use k8s_openapi::api::apps::v1::ReplicaSetCondition;
use k8s_openapi::api::core::v1::{
    PodTemplateSpec, ReplicationController, ReplicationControllerCondition,
    ReplicationControllerStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::core::Selector;
use tokio::task::JoinSet;

use super::StartError;
use super::replicaset::{self, ReplicaOwner, ReplicaStatus};
use crate::context::Context;

/// Starts the controller with `--concurrent-rc-syncs` workers.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    replicaset::run::<ReplicationController>(ctx, tasks, ctx.options.concurrent_rc_syncs)
}

/// The selector map as the `LabelSelector` upstream's conversion makes of it
/// (`Convert_v1_ReplicationControllerSpec_To_apps_ReplicaSetSpec`).
fn label_selector(rc: &ReplicationController) -> Option<LabelSelector> {
    let map = rc.spec.as_ref()?.selector.clone()?;
    Some(LabelSelector {
        match_labels: Some(map),
        match_expressions: None,
    })
}

impl ReplicaOwner for ReplicationController {
    /// Upstream's event source component for this controller.
    const CONTROLLER_NAME: &'static str = "replication-controller";
    const QUEUE_NAME: &'static str = "replicationmanager";
    /// The ReplicationController API has no `status.terminatingReplicas`
    /// (upstream: `EnableStatusTerminatingReplicas: false`).
    const TERMINATING_REPLICAS: bool = false;

    fn has_spec(&self) -> bool {
        self.spec.is_some()
    }

    fn replicas(&self) -> i32 {
        self.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
    }

    fn min_ready_seconds(&self) -> i32 {
        self.spec
            .as_ref()
            .and_then(|s| s.min_ready_seconds)
            .unwrap_or(0)
    }

    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }

    fn selector(&self) -> Result<Selector, String> {
        // Upstream converts a nil map to a nil LabelSelector, which selects nothing; the
        // apiserver defaults the selector from the template, so this is only bad input.
        let sel = label_selector(self).ok_or_else(|| "spec.selector is unset".to_string())?;
        Selector::try_from(sel).map_err(|e| e.0)
    }

    fn orphan_selector(&self) -> Option<Selector> {
        label_selector(self).and_then(|s| replicaset::selector_of(&s))
    }

    fn replica_status(&self) -> ReplicaStatus {
        let s = self.status.clone().unwrap_or_default();
        ReplicaStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            terminating_replicas: None,
            observed_generation: s.observed_generation,
            conditions: s
                .conditions
                .map(|cs| cs.into_iter().map(condition).collect()),
        }
    }

    fn with_replica_status(&self, s: &ReplicaStatus) -> Self {
        let mut rc = self.clone();
        rc.status = Some(ReplicationControllerStatus {
            replicas: s.replicas,
            fully_labeled_replicas: s.fully_labeled_replicas,
            ready_replicas: s.ready_replicas,
            available_replicas: s.available_replicas,
            observed_generation: s.observed_generation,
            conditions: s
                .conditions
                .clone()
                .filter(|c| !c.is_empty())
                .map(|cs| cs.into_iter().map(rc_condition).collect()),
        });
        rc
    }
}

/// The inverse of [`condition`].
fn rc_condition(c: ReplicaSetCondition) -> ReplicationControllerCondition {
    ReplicationControllerCondition {
        type_: c.type_,
        status: c.status,
        reason: c.reason,
        message: c.message,
        last_transition_time: c.last_transition_time,
    }
}

/// The two kinds' conditions have the same fields (and JSON); the core uses ReplicaSet's.
fn condition(c: ReplicationControllerCondition) -> ReplicaSetCondition {
    ReplicaSetCondition {
        type_: c.type_,
        status: c.status,
        reason: c.reason,
        message: c.message,
        last_transition_time: c.last_transition_time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::SelectorExt;
    use std::collections::BTreeMap;

    fn rc(selector: Option<&[(&str, &str)]>) -> ReplicationController {
        let mut v = serde_json::json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"template": {"metadata": {"labels": {"app": "web"}}}},
            "status": {"replicas": 2, "readyReplicas": 1, "conditions": [
                {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                 "message": "quota"}]},
        });
        if let Some(sel) = selector {
            let map: BTreeMap<&str, &str> = sel.iter().copied().collect();
            v["spec"]["selector"] = serde_json::json!(map);
        }
        serde_json::from_value(v).unwrap_or_default()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn map_selector_reads_as_match_labels() {
        let rc = rc(Some(&[("app", "web")]));
        let sel = rc.selector().ok();
        assert!(
            sel.as_ref()
                .is_some_and(|s| s.matches(&labels(&[("app", "web"), ("x", "y")])))
        );
        assert!(sel.is_some_and(|s| !s.matches(&labels(&[("app", "db")]))));
        assert!(rc.orphan_selector().is_some());
        assert_eq!(rc.replicas(), 1, "defaulted as the apiserver does");
    }

    #[test]
    fn missing_or_empty_selector_adopts_nothing() {
        assert!(rc(None).selector().is_err());
        assert!(rc(None).orphan_selector().is_none());
        assert!(rc(Some(&[])).orphan_selector().is_none());
    }

    #[test]
    fn status_reads_without_terminating_replicas() {
        let s = rc(Some(&[("app", "web")])).replica_status();
        assert_eq!(s.replicas, 2);
        assert_eq!(s.ready_replicas, Some(1));
        assert_eq!(s.terminating_replicas, None);
        let c = s.conditions.unwrap_or_default();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].type_, replicaset::REPLICA_FAILURE);
        assert_eq!(c[0].reason.as_deref(), Some("FailedCreate"));
    }
}
