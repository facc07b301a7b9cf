//! NodeUnschedulable: cordoned nodes (`spec.unschedulable`) take only pods tolerating the
//! `node.kubernetes.io/unschedulable:NoSchedule` taint (Filter).

use k8s_openapi::api::core::v1::Taint;

use crate::framework::interface::{ClusterEvent, Code, CycleState, ExtensionPoint, Plugin, Status};
use crate::framework::types::{NodeInfo, PodInfo};
use crate::plugins::helper::tolerates;

/// upstream `ErrReasonUnknownCondition`.
pub const ERR_REASON_UNKNOWN_CONDITION: &str = "node(s) had unknown conditions";
/// upstream `ErrReasonUnschedulable`.
pub const ERR_REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";

/// The plugin.
pub struct NodeUnschedulable;

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &'static str {
        "NodeUnschedulable"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[ExtensionPoint::Filter]
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        if node.node.is_none() {
            return Status::new(
                Code::UnschedulableAndUnresolvable,
                ERR_REASON_UNKNOWN_CONDITION,
            );
        }
        // The node's own flag, copied into the entry: no trip to the node object.
        if !node.unschedulable {
            return Status::success();
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tolerated = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| tolerates(t, &taint)));
        if tolerated {
            Status::success()
        } else {
            Status::new(Code::UnschedulableAndUnresolvable, ERR_REASON_UNSCHEDULABLE)
        }
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
    use k8s_openapi::api::core::v1::{Node, NodeSpec, Pod, PodSpec, Toleration};
    use std::sync::Arc;

    #[test]
    fn cordoned_nodes_need_the_toleration() {
        let mut info = NodeInfo::new("n");
        info.set_node(Arc::new(Node {
            spec: Some(NodeSpec {
                unschedulable: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let plain = PodInfo::new(Arc::new(Pod::default()));
        let s = NodeUnschedulable.filter(&CycleState::default(), &plain, &info);
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        assert_eq!(s.message(), ERR_REASON_UNSCHEDULABLE);
        let tolerant = PodInfo::new(Arc::new(Pod {
            spec: Some(PodSpec {
                tolerations: Some(vec![Toleration {
                    key: Some("node.kubernetes.io/unschedulable".into()),
                    operator: Some("Exists".into()),
                    effect: Some("NoSchedule".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }));
        assert!(
            NodeUnschedulable
                .filter(&CycleState::default(), &tolerant, &info)
                .is_success()
        );
    }
}
