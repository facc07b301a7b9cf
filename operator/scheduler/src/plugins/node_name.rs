//! NodeName: a pod naming a node in `spec.nodeName` fits only that node (Filter).

use crate::framework::interface::{ClusterEvent, Code, CycleState, ExtensionPoint, Plugin, Status};
use crate::framework::types::{NodeInfo, PodInfo};

/// upstream `ErrReason`.
pub const ERR_REASON: &str = "node(s) didn't match the requested node name";

/// The plugin.
pub struct NodeName;

impl Plugin for NodeName {
    fn name(&self) -> &'static str {
        "NodeName"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[ExtensionPoint::Filter]
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        match pod.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(name) if !name.is_empty() && name != node.name => {
                Status::new(Code::UnschedulableAndUnresolvable, ERR_REASON)
            }
            _ => Status::success(),
        }
    }

    fn events_to_register(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::NodeAdd]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, PodSpec};
    use std::sync::Arc;

    #[test]
    fn only_the_named_node() {
        let pod = PodInfo::new(Arc::new(Pod {
            spec: Some(PodSpec {
                node_name: Some("a".into()),
                ..Default::default()
            }),
            ..Default::default()
        }));
        let st = CycleState::default();
        assert!(NodeName.filter(&st, &pod, &NodeInfo::new("a")).is_success());
        assert_eq!(
            NodeName.filter(&st, &pod, &NodeInfo::new("b")).message(),
            ERR_REASON
        );
    }
}
