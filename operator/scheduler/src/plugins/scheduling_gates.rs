//! SchedulingGates: pods with `spec.schedulingGates` wait outside the active queue until
//! every gate is removed (PreEnqueue).

use crate::framework::interface::{ClusterEvent, Code, ExtensionPoint, Plugin, Status};
use crate::transform::CachedPod;

/// The plugin.
pub struct SchedulingGates;

impl Plugin for SchedulingGates {
    fn name(&self) -> &'static str {
        "SchedulingGates"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[ExtensionPoint::PreEnqueue]
    }

    fn pre_enqueue(&self, pod: &CachedPod) -> Status {
        let gates: Vec<&str> = pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduling_gates.as_ref())
            .into_iter()
            .flatten()
            .map(|g| g.name.as_str())
            .collect();
        if gates.is_empty() {
            return Status::success();
        }
        // upstream formats the Go slice: "waiting for scheduling gates: [a b]".
        Status::new(
            Code::UnschedulableAndUnresolvable,
            format!("waiting for scheduling gates: [{}]", gates.join(" ")),
        )
    }

    fn events_to_register(&self) -> &'static [ClusterEvent] {
        &[ClusterEvent::UnscheduledPodUpdate]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{PodSchedulingGate, PodSpec};

    #[test]
    fn gated_until_no_gates_remain() {
        let mut pod = Pod {
            spec: Some(PodSpec {
                scheduling_gates: Some(vec![
                    PodSchedulingGate { name: "a".into() },
                    PodSchedulingGate { name: "b".into() },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = SchedulingGates.pre_enqueue(&CachedPod::from(pod.clone()));
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        assert_eq!(s.message(), "waiting for scheduling gates: [a b]");
        if let Some(spec) = pod.spec.as_mut() {
            spec.scheduling_gates = Some(Vec::new());
        }
        assert!(
            SchedulingGates
                .pre_enqueue(&CachedPod::from(pod.clone()))
                .is_success()
        );
    }
}
