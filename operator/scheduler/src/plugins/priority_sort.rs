//! PrioritySort: the active queue pops higher `spec.priority` first, then the pod that
//! has waited longest (QueueSort).

use std::time::Instant;

use crate::framework::interface::{ExtensionPoint, Plugin};
use crate::framework::types::PodInfo;

/// The plugin.
pub struct PrioritySort;

impl Plugin for PrioritySort {
    fn name(&self) -> &'static str {
        "PrioritySort"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[ExtensionPoint::QueueSort]
    }

    fn less(&self, a: &PodInfo, a_ts: Instant, b: &PodInfo, b_ts: Instant) -> bool {
        a.priority > b.priority || (a.priority == b.priority && a_ts < b_ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, PodSpec};
    use std::sync::Arc;
    use std::time::Duration;

    fn pod(priority: i32) -> PodInfo {
        PodInfo::new(Arc::new(Pod {
            spec: Some(PodSpec {
                priority: Some(priority),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    #[test]
    fn priority_then_age() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        assert!(PrioritySort.less(&pod(10), t1, &pod(0), t0));
        assert!(PrioritySort.less(&pod(0), t0, &pod(0), t1));
        assert!(!PrioritySort.less(&pod(0), t1, &pod(0), t0));
    }
}
