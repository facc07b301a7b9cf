//! Node and taint helpers shared by the node controllers, after upstream's
//! `pkg/controller/util/node` and `pkg/util/taints`.

use crate::transform::CachedPod;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};

/// `node.kubernetes.io/unreachable`: the node controller lost contact with the node.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// `node.kubernetes.io/not-ready`: the node reports itself not ready.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// `node.kubernetes.io/unschedulable`: the node is cordoned.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// The zone label nodes carry.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The region label nodes carry.
pub const LABEL_REGION: &str = "topology.kubernetes.io/region";

/// The NoSchedule taint for a node condition in a given status (upstream's
/// `nodeConditionToTaintKeyStatusMap`, the "taint nodes by condition" feature).
pub fn condition_taint_key(condition: &str, status: &str) -> Option<&'static str> {
    match (condition, status) {
        ("Ready", "False") => Some(TAINT_NOT_READY),
        ("Ready", "Unknown") => Some(TAINT_UNREACHABLE),
        ("MemoryPressure", "True") => Some("node.kubernetes.io/memory-pressure"),
        ("DiskPressure", "True") => Some("node.kubernetes.io/disk-pressure"),
        ("NetworkUnavailable", "True") => Some("node.kubernetes.io/network-unavailable"),
        ("PIDPressure", "True") => Some("node.kubernetes.io/pid-pressure"),
        _ => None,
    }
}

/// Whether `key` is one of the condition taints above.
pub fn is_condition_taint(key: &str) -> bool {
    [
        TAINT_NOT_READY,
        TAINT_UNREACHABLE,
        "node.kubernetes.io/memory-pressure",
        "node.kubernetes.io/disk-pressure",
        "node.kubernetes.io/network-unavailable",
        "node.kubernetes.io/pid-pressure",
    ]
    .contains(&key)
}

/// The node's condition of type `type_`.
pub fn condition<'a>(node: &'a Node, type_: &str) -> Option<&'a NodeCondition> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The node's Ready status: `True`, `False` or `Unknown` (absent counts as Unknown).
pub fn ready_status(node: &Node) -> &str {
    condition(node, "Ready").map_or("Unknown", |c| c.status.as_str())
}

/// The node's taints.
pub fn taints(node: &Node) -> &[Taint] {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_deref())
        .unwrap_or_default()
}

/// Whether two taints are the same taint (key and effect; value and time don't matter).
pub fn taint_matches(a: &Taint, b: &Taint) -> bool {
    a.key == b.key && a.effect == b.effect
}

/// A taint with `key` and `effect`; NoExecute taints record when they were added, which
/// tolerationSeconds count from.
pub fn taint(key: &str, effect: &str) -> Taint {
    Taint {
        key: key.to_string(),
        effect: effect.to_string(),
        time_added: (effect == "NoExecute").then(|| Time(Timestamp::now())),
        value: None,
    }
}

/// Replaces `remove` by `add` in the node's taints, in one patch guarded by the node's
/// resourceVersion (upstream's `SwapNodeControllerTaint`). Returns whether anything changed.
pub async fn swap_taints(
    api: &Api<Node>,
    node: &Node,
    add: &[Taint],
    remove: &[Taint],
) -> Result<bool, kube::Error> {
    let current = taints(node);
    let mut next: Vec<Taint> = current
        .iter()
        .filter(|t| !remove.iter().any(|r| taint_matches(t, r)))
        .cloned()
        .collect();
    for t in add {
        if !next.iter().any(|n| taint_matches(n, t)) {
            next.push(t.clone());
        }
    }
    if next.len() == current.len() && next.iter().zip(current).all(|(a, b)| a == b) {
        return Ok(false);
    }
    let name = node.metadata.name.clone().unwrap_or_default();
    // spec.taints has no merge key: the list is replaced whole, so the resourceVersion
    // guard keeps us from dropping a taint someone added meanwhile.
    let patch = serde_json::json!({
        "metadata": { "resourceVersion": node.metadata.resource_version },
        "spec": { "taints": next },
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(true)
}

pub use ferrokube_runtime::taints::tolerates;

/// The pod's tolerations.
pub fn tolerations(pod: &CachedPod) -> &[Toleration] {
    pod.spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

/// The node a pod is bound to, if any.
pub fn node_name(pod: &CachedPod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Sets one pod condition through a strategic merge patch of the status subresource
/// (conditions merge by `type`, so other conditions are untouched).
pub async fn patch_pod_condition(
    api: &Api<Pod>,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> Result<(), kube::Error> {
    let mut condition = serde_json::json!({
        "type": type_,
        "status": status,
        "lastTransitionTime": Time(Timestamp::now()),
    });
    if let Some(r) = reason {
        condition["reason"] = r.into();
    }
    if let Some(m) = message {
        condition["message"] = m.into();
    }
    let patch = serde_json::json!({ "status": { "conditions": [condition] } });
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_taints() {
        assert_eq!(
            condition_taint_key("Ready", "Unknown"),
            Some(TAINT_UNREACHABLE)
        );
        assert_eq!(condition_taint_key("Ready", "False"), Some(TAINT_NOT_READY));
        assert_eq!(condition_taint_key("Ready", "True"), None);
        assert_eq!(
            condition_taint_key("DiskPressure", "True"),
            Some("node.kubernetes.io/disk-pressure")
        );
        assert!(is_condition_taint(TAINT_UNREACHABLE));
        assert!(!is_condition_taint(TAINT_UNSCHEDULABLE));
    }
}
