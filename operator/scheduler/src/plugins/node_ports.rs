//! NodePorts: a pod's host ports must be free on the node (PreFilter, Filter).

use crate::cache::Snapshot;
use crate::framework::interface::{ClusterEvent, Code, CycleState, ExtensionPoint, Plugin, Status};
use crate::framework::types::{NodeInfo, PodInfo};

/// upstream `ErrReason`.
pub const ERR_REASON: &str = "node(s) didn't have free ports for the requested pod ports";

/// The plugin.
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &'static str {
        "NodePorts"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[ExtensionPoint::PreFilter, ExtensionPoint::Filter]
    }

    fn pre_filter(&self, _state: &mut CycleState, pod: &PodInfo, _snapshot: &Snapshot) -> Status {
        // Pods without host ports cannot conflict: skip Filter for them.
        if pod.host_ports.is_empty() {
            Status::skip()
        } else {
            Status::success()
        }
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let conflict = pod
            .host_ports
            .iter()
            .any(|want| node.used_ports.iter().any(|used| used.conflicts(want)));
        if conflict {
            Status::new(Code::Unschedulable, ERR_REASON)
        } else {
            Status::success()
        }
    }

    fn events_to_register(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::AssignedPodDelete, ClusterEvent::NodeAdd]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodSpec};
    use std::sync::Arc;

    fn pod(host_port: Option<i32>) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        container_port: 80,
                        host_port,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })))
    }

    #[test]
    fn host_port_conflicts() {
        let mut state = CycleState::default();
        let snap = Snapshot::default();
        assert_eq!(
            NodePorts.pre_filter(&mut state, &pod(None), &snap).code,
            Code::Skip
        );
        let mut node = NodeInfo::new("n");
        let p = pod(Some(8080));
        assert!(NodePorts.pre_filter(&mut state, &p, &snap).is_success());
        assert!(NodePorts.filter(&state, &p, &node).is_success());
        node.add_pod(pod(Some(8080)));
        let s = NodePorts.filter(&state, &p, &node);
        assert_eq!(
            (s.code, s.message().as_str()),
            (Code::Unschedulable, ERR_REASON)
        );
        assert!(
            NodePorts
                .filter(&state, &pod(Some(8081)), &node)
                .is_success()
        );
    }
}
