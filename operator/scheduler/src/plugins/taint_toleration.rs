//! TaintToleration: nodes with NoSchedule/NoExecute taints the pod does not tolerate are
//! filtered out; nodes with fewer untolerated PreferNoSchedule taints score higher.

use crate::cache::Snapshot;
use crate::framework::interface::{
    ClusterEvent, Code, CycleState, ExtensionPoint, MAX_NODE_SCORE, NodeScore, Plugin, Status,
    default_normalize_score,
};
use crate::framework::types::{NodeInfo, PodInfo};
use crate::plugins::helper::{find_untolerated_taint, tolerates};

/// upstream's Filter message (1.36 no longer names the taint, which could leak it).
pub const ERR_REASON_UNTOLERATED: &str = "node(s) had untolerated taint(s)";

/// The plugin.
pub struct TaintToleration;

impl Plugin for TaintToleration {
    fn name(&self) -> &'static str {
        "TaintToleration"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[
            ExtensionPoint::Filter,
            ExtensionPoint::PreScore,
            ExtensionPoint::Score,
        ]
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(n) = node.node.as_ref() else {
            return Status::error("invalid nodeInfo");
        };
        // Most nodes have no taints; the entry says so without a trip to the node object.
        if !node.has_taints {
            return Status::success();
        }
        let taints = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default();
        let tolerations = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        let hard = |t: &k8s_openapi::api::core::v1::Taint| {
            t.effect == "NoSchedule" || t.effect == "NoExecute"
        };
        if find_untolerated_taint(taints, tolerations, hard).is_some() {
            Status::new(Code::UnschedulableAndUnresolvable, ERR_REASON_UNTOLERATED)
        } else {
            Status::success()
        }
    }

    fn score(
        &self,
        _state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _s: &Snapshot,
    ) -> Result<i64, Status> {
        let Some(n) = node.node.as_ref() else {
            return Err(Status::error("invalid nodeInfo"));
        };
        if !node.has_taints {
            return Ok(0);
        }
        // Only tolerations that can apply to PreferNoSchedule count (upstream PreScore).
        let tolerations: Vec<_> = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|t| {
                t.effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == "PreferNoSchedule")
            })
            .collect();
        let count = n
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_deref())
            .unwrap_or_default()
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .filter(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
            .count();
        Ok(i64::try_from(count).unwrap_or(i64::MAX))
    }

    fn normalize_score(
        &self,
        _state: &CycleState,
        _pod: &PodInfo,
        scores: &mut [NodeScore],
    ) -> Status {
        default_normalize_score(MAX_NODE_SCORE, true, scores);
        Status::success()
    }

    fn events_to_register(&self) -> &'static [ClusterEvent] {
        &[
            ClusterEvent::NodeAdd,
            ClusterEvent::NodeUpdate,
            ClusterEvent::UnscheduledPodUpdate,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodSpec, Taint, Toleration};
    use std::sync::Arc;

    fn node(taints: Vec<Taint>) -> NodeInfo {
        let mut info = NodeInfo::new("n");
        info.set_node(Arc::new(Node {
            spec: Some(NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
            ..Default::default()
        }));
        info
    }

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            value: Some("v".into()),
            effect: effect.into(),
            ..Default::default()
        }
    }

    fn pod(tolerations: Vec<Toleration>) -> PodInfo {
        PodInfo::new(Arc::new(Pod {
            spec: Some(PodSpec {
                tolerations: Some(tolerations),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    #[test]
    fn filter_hard_taints_only() {
        let st = CycleState::default();
        let s = TaintToleration.filter(&st, &pod(vec![]), &node(vec![taint("a", "NoSchedule")]));
        assert_eq!(
            (s.code, s.message().as_str()),
            (Code::UnschedulableAndUnresolvable, ERR_REASON_UNTOLERATED)
        );
        assert!(
            TaintToleration
                .filter(
                    &st,
                    &pod(vec![]),
                    &node(vec![taint("a", "PreferNoSchedule")])
                )
                .is_success()
        );
        let tol = Toleration {
            key: Some("a".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(
            TaintToleration
                .filter(&st, &pod(vec![tol]), &node(vec![taint("a", "NoExecute")]))
                .is_success()
        );
    }

    #[test]
    fn fewer_soft_taints_score_higher() {
        let st = CycleState::default();
        let snap = Snapshot::default();
        let p = pod(vec![]);
        let raw: Vec<i64> = [
            vec![],
            vec![taint("a", "PreferNoSchedule")],
            vec![
                taint("a", "PreferNoSchedule"),
                taint("b", "PreferNoSchedule"),
            ],
        ]
        .into_iter()
        .map(|t| {
            TaintToleration
                .score(&st, &p, &node(t), &snap)
                .expect("score")
        })
        .collect();
        assert_eq!(raw, [0, 1, 2]);
        let mut scores: Vec<NodeScore> = raw
            .iter()
            .map(|s| NodeScore {
                name: String::new(),
                score: *s,
            })
            .collect();
        TaintToleration.normalize_score(&st, &p, &mut scores);
        assert_eq!(
            scores.iter().map(|s| s.score).collect::<Vec<_>>(),
            [100, 50, 0]
        );
    }
}
