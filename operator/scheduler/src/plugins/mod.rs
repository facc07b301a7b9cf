//! The in-tree plugins, one module each, named after upstream's plugin names
//! (`NodeResourcesFit` -> [`node_resources_fit`]), and the registry that builds them.

pub mod default_preemption;
pub mod helper;
pub mod image_locality;
pub mod inter_pod_affinity;
pub mod node_affinity;
pub mod node_name;
pub mod node_ports;
pub mod node_resources_balanced_allocation;
pub mod node_resources_fit;
pub mod node_unschedulable;
pub mod pod_topology_spread;
pub mod priority_sort;
pub mod scheduling_gates;
pub mod taint_toleration;
pub mod volume_binding;

use std::sync::Arc;

use crate::framework::interface::Plugin;

/// Builds a plugin from its (already validated) arguments.
type Factory = fn(&serde_json::Value) -> Result<Arc<dyn Plugin>, String>;

/// Every upstream in-tree plugin name, with ferrokube's implementation where there is one.
/// Names without one are accepted in configuration (so upstream files work unchanged) and
/// skipped with a warning.
pub const REGISTRY: &[(&str, Option<Factory>)] = &[
    (
        "SchedulingGates",
        Some(|_| Ok(Arc::new(scheduling_gates::SchedulingGates))),
    ),
    (
        "PrioritySort",
        Some(|_| Ok(Arc::new(priority_sort::PrioritySort))),
    ),
    (
        "NodeUnschedulable",
        Some(|_| Ok(Arc::new(node_unschedulable::NodeUnschedulable))),
    ),
    ("NodeName", Some(|_| Ok(Arc::new(node_name::NodeName)))),
    (
        "TaintToleration",
        Some(|_| Ok(Arc::new(taint_toleration::TaintToleration))),
    ),
    (
        "NodeAffinity",
        Some(|a| Ok(Arc::new(node_affinity::NodeAffinity::new(a)?))),
    ),
    ("NodePorts", Some(|_| Ok(Arc::new(node_ports::NodePorts)))),
    (
        "NodeResourcesFit",
        Some(|a| Ok(Arc::new(node_resources_fit::Fit::new(a)?))),
    ),
    (
        "NodeResourcesBalancedAllocation",
        Some(|a| {
            Ok(Arc::new(
                node_resources_balanced_allocation::BalancedAllocation::new(a)?,
            ))
        }),
    ),
    (
        "ImageLocality",
        Some(|_| Ok(Arc::new(image_locality::ImageLocality))),
    ),
    ("DefaultBinder", None),
    ("VolumeRestrictions", None),
    ("NodeVolumeLimits", None),
    (
        "VolumeBinding",
        Some(|_| Ok(Arc::new(volume_binding::VolumeBinding))),
    ),
    ("VolumeZone", None),
    (
        "PodTopologySpread",
        Some(|a| Ok(Arc::new(pod_topology_spread::PodTopologySpread::new(a)?))),
    ),
    (
        "InterPodAffinity",
        Some(|a| Ok(Arc::new(inter_pod_affinity::InterPodAffinity::new(a)?))),
    ),
    (
        "DefaultPreemption",
        Some(|a| Ok(Arc::new(default_preemption::DefaultPreemption::new(a)?))),
    ),
    ("DynamicResources", None),
    ("NodeDeclaredFeatures", None),
    ("GangScheduling", None),
    ("PodGroupPodsCount", None),
    ("TopologyAware", None),
];

/// The binder, handled by [`crate::binder`] rather than as a framework plugin.
pub const DEFAULT_BINDER: &str = "DefaultBinder";

/// Whether `name` is an upstream in-tree plugin.
pub fn is_known(name: &str) -> bool {
    REGISTRY.iter().any(|(n, _)| *n == name)
}

/// Builds `name` with `args`; `Ok(None)` for known plugins ferrokube does not implement.
pub fn build(name: &str, args: &serde_json::Value) -> Result<Option<Arc<dyn Plugin>>, String> {
    match REGISTRY.iter().find(|(n, _)| *n == name) {
        Some((_, Some(factory))) => factory(args).map(Some),
        Some((_, None)) => Ok(None),
        None => Err(format!("{name:?} does not exist")),
    }
}

/// Checks a plugin's `args` (pluginConfig) the way its constructor will read them.
pub fn validate_args(name: &str, args: &serde_json::Value) -> Result<(), String> {
    match name {
        "NodeResourcesFit" => node_resources_fit::Fit::new(args).map(|_| ()),
        "NodeResourcesBalancedAllocation" => {
            node_resources_balanced_allocation::BalancedAllocation::new(args).map(|_| ())
        }
        "NodeAffinity" => node_affinity::NodeAffinity::new(args).map(|_| ()),
        "InterPodAffinity" => inter_pod_affinity::InterPodAffinity::new(args).map(|_| ()),
        "PodTopologySpread" => pod_topology_spread::PodTopologySpread::new(args).map(|_| ()),
        "DefaultPreemption" => default_preemption::DefaultPreemption::new(args).map(|_| ()),
        _ => Ok(()),
    }
}

/// Whether `name` implements QueueSort.
pub fn implements_queue_sort(name: &str) -> bool {
    name == "PrioritySort"
}

/// Decodes plugin args (strictly, as upstream) from `value`; `null` means all defaults.
pub fn decode_args<T: serde::de::DeserializeOwned + Default>(
    value: &serde_json::Value,
) -> Result<T, String> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(value.clone()).map_err(|e| format!("Invalid value: {e}"))
}
