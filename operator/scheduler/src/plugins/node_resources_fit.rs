//! NodeResourcesFit: the pod's requests must fit in what the node has left (Filter), and
//! nodes are scored by the configured strategy: LeastAllocated (default), MostAllocated or
//! RequestedToCapacityRatio (Score). The resource-allocation scoring shared with
//! NodeResourcesBalancedAllocation lives here too (upstream `resource_allocation.go`).

use std::collections::HashSet;

use serde::Deserialize;
use smallvec::SmallVec;

use crate::cache::Snapshot;
use crate::framework::interface::{
    ClusterEvent, Code, CycleState, ExtensionPoint, MAX_NODE_SCORE, Plugin, Status,
};
use crate::framework::types::{
    NodeInfo, PodInfo, is_extended_resource_name, is_scalar_resource_name,
};

/// upstream `MaxCustomPriorityScore`: RequestedToCapacityRatio shape scores are 0-10.
const MAX_CUSTOM_PRIORITY_SCORE: i64 = 10;
/// upstream `MaxUtilization`.
const MAX_UTILIZATION: i64 = 100;

/// A resource and its weight in scoring.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceSpec {
    /// The resource name (`cpu`, `memory`, `example.com/gpu`).
    pub name: String,
    /// Its weight (1-100; 1 when unset).
    #[serde(default)]
    pub weight: i64,
}

/// One point of the RequestedToCapacityRatio shape.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UtilizationShapePoint {
    /// Utilization in percent (0-100).
    pub utilization: i64,
    /// Score at that utilization (0-10).
    pub score: i64,
}

/// `requestedToCapacityRatio`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestedToCapacityRatioParam {
    /// The piecewise-linear shape, by increasing utilization.
    #[serde(default)]
    pub shape: Vec<UtilizationShapePoint>,
}

/// `scoringStrategy`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScoringStrategy {
    /// `LeastAllocated`, `MostAllocated` or `RequestedToCapacityRatio`.
    #[serde(default, rename = "type")]
    pub type_: String,
    /// Scored resources; cpu and memory with weight 1 when empty.
    #[serde(default)]
    pub resources: Vec<ResourceSpec>,
    /// The shape for RequestedToCapacityRatio.
    #[serde(default)]
    pub requested_to_capacity_ratio: Option<RequestedToCapacityRatioParam>,
}

/// `NodeResourcesFitArgs`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeResourcesFitArgs {
    /// Resources the filter ignores.
    #[serde(default)]
    pub ignored_resources: Vec<String>,
    /// Resource groups (`example.com` in `example.com/gpu`) the filter ignores.
    #[serde(default)]
    pub ignored_resource_groups: Vec<String>,
    /// How nodes are scored.
    #[serde(default)]
    pub scoring_strategy: Option<ScoringStrategy>,
    /// Ignored (type metadata inside args).
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<String>,
    /// Ignored (type metadata inside args).
    #[serde(default)]
    pub kind: Option<String>,
}

/// The scoring strategy, ready to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Favour nodes with the most room left.
    LeastAllocated,
    /// Favour the fullest nodes (bin packing).
    MostAllocated,
    /// Score by a piecewise-linear function of utilization (shape scaled to 0-100).
    RequestedToCapacityRatio(Vec<UtilizationShapePoint>),
}

/// The default scored resources: cpu and memory, weight 1 each.
pub fn default_resources() -> Vec<ResourceSpec> {
    vec![
        ResourceSpec {
            name: "cpu".into(),
            weight: 1,
        },
        ResourceSpec {
            name: "memory".into(),
            weight: 1,
        },
    ]
}

/// Checks and defaults a resource list (weights 1-100, valid names).
pub fn validate_resources(
    resources: &[ResourceSpec],
    path: &str,
) -> Result<Vec<ResourceSpec>, String> {
    if resources.is_empty() {
        return Ok(default_resources());
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        let weight = if r.weight == 0 { 1 } else { r.weight };
        if !(1..=100).contains(&weight) {
            return Err(format!(
                "{path}[{i}].weight: Invalid value: {}: resource weight of {} should be in range [1, 100]",
                r.weight, r.name
            ));
        }
        if !seen.insert(r.name.clone()) {
            return Err(format!("{path}[{i}].name: Duplicate value: {:?}", r.name));
        }
        out.push(ResourceSpec {
            name: r.name.clone(),
            weight,
        });
    }
    Ok(out)
}

/// The plugin.
pub struct Fit {
    ignored_resources: HashSet<String>,
    ignored_groups: HashSet<String>,
    resources: Vec<ResourceSpec>,
    strategy: Strategy,
}

impl Fit {
    /// Builds the plugin from `NodeResourcesFitArgs`.
    pub fn new(args: &serde_json::Value) -> Result<Self, String> {
        let args: NodeResourcesFitArgs = super::decode_args(args)?;
        let ss = args.scoring_strategy.unwrap_or_default();
        let resources = validate_resources(&ss.resources, "scoringStrategy.resources")?;
        let strategy = match ss.type_.as_str() {
            "" | "LeastAllocated" => Strategy::LeastAllocated,
            "MostAllocated" => Strategy::MostAllocated,
            "RequestedToCapacityRatio" => {
                let shape = ss
                    .requested_to_capacity_ratio
                    .map(|r| r.shape)
                    .unwrap_or_default();
                validate_shape(&shape)?;
                Strategy::RequestedToCapacityRatio(
                    shape
                        .iter()
                        .map(|p| UtilizationShapePoint {
                            utilization: p.utilization,
                            score: p.score * (MAX_NODE_SCORE / MAX_CUSTOM_PRIORITY_SCORE),
                        })
                        .collect(),
                )
            }
            other => {
                return Err(format!(
                    "scoringStrategy.type: Unsupported value: {other:?}: supported values: \"LeastAllocated\", \"MostAllocated\", \"RequestedToCapacityRatio\""
                ));
            }
        };
        Ok(Self {
            ignored_resources: args.ignored_resources.into_iter().collect(),
            ignored_groups: args.ignored_resource_groups.into_iter().collect(),
            resources,
            strategy,
        })
    }

    /// The reasons the pod does not fit the node (upstream `fitsRequest`), each with
    /// whether it is unresolvable: the pod asks for more than the node has at all, so
    /// evicting pods (preemption) cannot help.
    pub fn insufficient(&self, pod: &PodInfo, node: &NodeInfo) -> Vec<(String, bool)> {
        let mut reasons = Vec::new();
        let allowed = node.allocatable.allowed_pod_number;
        if i64::try_from(node.pods.len()).unwrap_or(i64::MAX) + 1 > allowed {
            reasons.push(("Too many pods".to_string(), false));
        }
        let req = &pod.requests;
        if req.is_zero() {
            return reasons;
        }
        let (alloc, used) = (&node.allocatable, &node.requested);
        for (name, want, have, taken) in [
            ("cpu", req.milli_cpu, alloc.milli_cpu, used.milli_cpu),
            ("memory", req.memory, alloc.memory, used.memory),
            (
                "ephemeral-storage",
                req.ephemeral_storage,
                alloc.ephemeral_storage,
                used.ephemeral_storage,
            ),
        ] {
            if want > 0 && want > have - taken {
                reasons.push((format!("Insufficient {name}"), want > have));
            }
        }
        for (name, want) in &req.scalar {
            if *want == 0 {
                continue;
            }
            if is_extended_resource_name(name) {
                let group = name.split('/').next().unwrap_or_default();
                if self.ignored_resources.contains(name) || self.ignored_groups.contains(group) {
                    continue;
                }
            }
            let have = alloc.scalar.get(name).copied().unwrap_or(0);
            let free = have - used.scalar.get(name).copied().unwrap_or(0);
            if *want > free {
                reasons.push((format!("Insufficient {name}"), *want > have));
            }
        }
        reasons
    }
}

/// upstream's shape validation: 1+ points, utilization 0-100 strictly increasing, score 0-10.
fn validate_shape(shape: &[UtilizationShapePoint]) -> Result<(), String> {
    let path = "scoringStrategy.requestedToCapacityRatio.shape";
    if shape.is_empty() {
        return Err(format!(
            "{path}: Required value: at least one point must be specified"
        ));
    }
    for (i, p) in shape.iter().enumerate() {
        if !(0..=MAX_UTILIZATION).contains(&p.utilization) {
            return Err(format!(
                "{path}[{i}].utilization: Invalid value: {}: not in valid range [0, 100]",
                p.utilization
            ));
        }
        if i > 0 && p.utilization <= shape[i - 1].utilization {
            return Err(format!(
                "{path}[{i}].utilization: Invalid value: {}: utilization values must be sorted in increasing order",
                p.utilization
            ));
        }
        if !(0..=MAX_CUSTOM_PRIORITY_SCORE).contains(&p.score) {
            return Err(format!(
                "{path}[{i}].score: Invalid value: {}: not in valid range [0, 10]",
                p.score
            ));
        }
    }
    Ok(())
}

/// One value per scored resource. Scoring runs for every feasible node of every cycle
/// (hundreds per pod) and the list is cpu and memory unless configured otherwise, so it
/// lives on the stack: three heap rows per node and plugin were a tenth of a cycle.
pub type PerResource = SmallVec<[i64; 4]>;

/// For each scored resource: (requested with the pod, allocatable); entries skipped by
/// upstream (extended resources the pod does not ask for, zero allocatable) are (0, 0).
/// `use_requested` picks real requests (BalancedAllocation) over the non-zero defaults
/// (NodeResourcesFit).
pub fn requested_and_allocatable(
    resources: &[ResourceSpec],
    pod: &PodInfo,
    node: &NodeInfo,
    use_requested: bool,
) -> (PerResource, PerResource, PerResource) {
    let n = resources.len();
    let zeros = || PerResource::from_elem(0, n);
    let (mut requested, mut allocated, mut allocatable) = (zeros(), zeros(), zeros());
    for (i, r) in resources.iter().enumerate() {
        let name = r.name.as_str();
        let pod_req = match name {
            "cpu" | "memory" if !use_requested => pod.non_zero_requests.get(name),
            _ => pod.requests.get(name),
        };
        if pod_req == 0 && is_scalar_resource_name(name) {
            continue;
        }
        let alloc = node.allocatable.get(name);
        let used = match name {
            "cpu" | "memory" if !use_requested => node.non_zero_requested.get(name),
            _ => node.requested.get(name),
        };
        if alloc == 0 {
            continue;
        }
        allocatable[i] = alloc;
        allocated[i] = used;
        requested[i] = used + pod_req;
    }
    (requested, allocated, allocatable)
}

fn least_requested_score(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 || requested > capacity {
        return 0;
    }
    (capacity - requested) * MAX_NODE_SCORE / capacity
}

fn most_requested_score(requested: i64, capacity: i64) -> i64 {
    if capacity == 0 {
        return 0;
    }
    // Pods without requests count with defaults, which may exceed the capacity.
    requested.min(capacity) * MAX_NODE_SCORE / capacity
}

/// upstream `helper.BuildBrokenLinearFunction`.
fn broken_linear(shape: &[UtilizationShapePoint], p: i64) -> i64 {
    for (i, point) in shape.iter().enumerate() {
        if p <= point.utilization {
            if i == 0 {
                return shape[0].score;
            }
            let prev = shape[i - 1];
            return prev.score
                + (point.score - prev.score) * (p - prev.utilization)
                    / (point.utilization - prev.utilization);
        }
    }
    shape.last().map_or(0, |p| p.score)
}

impl Strategy {
    /// The node's score for the given per-resource amounts.
    pub fn score(&self, resources: &[ResourceSpec], requested: &[i64], allocatable: &[i64]) -> i64 {
        let (mut node_score, mut weight_sum) = (0i64, 0i64);
        for i in 0..requested.len() {
            if allocatable[i] == 0 {
                continue;
            }
            let weight = resources[i].weight;
            match self {
                Self::LeastAllocated => {
                    node_score += least_requested_score(requested[i], allocatable[i]) * weight;
                    weight_sum += weight;
                }
                Self::MostAllocated => {
                    node_score += most_requested_score(requested[i], allocatable[i]) * weight;
                    weight_sum += weight;
                }
                Self::RequestedToCapacityRatio(shape) => {
                    let utilization = if requested[i] > allocatable[i] {
                        MAX_UTILIZATION
                    } else {
                        requested[i] * MAX_UTILIZATION / allocatable[i]
                    };
                    let s = broken_linear(shape, utilization);
                    if s > 0 {
                        node_score += s * weight;
                        weight_sum += weight;
                    }
                }
            }
        }
        if weight_sum == 0 {
            return 0;
        }
        match self {
            Self::RequestedToCapacityRatio(_) => {
                // upstream rounds here (math.Round of the float division).
                (node_score * 2 + weight_sum) / (2 * weight_sum)
            }
            _ => node_score / weight_sum,
        }
    }
}

impl Plugin for Fit {
    fn name(&self) -> &'static str {
        "NodeResourcesFit"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[
            ExtensionPoint::PreFilter,
            ExtensionPoint::Filter,
            ExtensionPoint::PreScore,
            ExtensionPoint::Score,
        ]
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let insufficient = self.insufficient(pod, node);
        if insufficient.is_empty() {
            return Status::success();
        }
        let code = if insufficient.iter().any(|(_, unresolvable)| *unresolvable) {
            Code::UnschedulableAndUnresolvable
        } else {
            Code::Unschedulable
        };
        Status::with_reasons(code, insufficient.into_iter().map(|(r, _)| r))
    }

    fn score(
        &self,
        _state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _s: &Snapshot,
    ) -> Result<i64, Status> {
        let (requested, _, allocatable) =
            requested_and_allocatable(&self.resources, pod, node, false);
        Ok(self
            .strategy
            .score(&self.resources, &requested, &allocatable))
    }

    fn events_to_register(&self) -> &'static [ClusterEvent] {
        &[
            ClusterEvent::NodeAdd,
            ClusterEvent::NodeUpdate,
            ClusterEvent::AssignedPodDelete,
            ClusterEvent::UnscheduledPodUpdate,
        ]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, Node, NodeStatus, Pod, PodSpec, ResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    pub(crate) fn pod(cpu: &str, mem: &str) -> Arc<PodInfo> {
        let mut reqs = BTreeMap::new();
        if !cpu.is_empty() {
            reqs.insert("cpu".to_string(), Quantity(cpu.into()));
        }
        if !mem.is_empty() {
            reqs.insert("memory".to_string(), Quantity(mem.into()));
        }
        Arc::new(PodInfo::new(Arc::new(Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    resources: Some(ResourceRequirements {
                        requests: Some(reqs),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        })))
    }

    pub(crate) fn node(cpu: &str, mem: &str, pods: &str) -> NodeInfo {
        let mut info = NodeInfo::new("n");
        info.set_node(Arc::new(Node {
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity(cpu.into())),
                    ("memory".to_string(), Quantity(mem.into())),
                    ("pods".to_string(), Quantity(pods.into())),
                ])),
                ..Default::default()
            }),
            ..Default::default()
        }));
        info
    }

    #[test]
    fn filter_reasons() {
        let fit = Fit::new(&serde_json::Value::Null).expect("plugin");
        let st = CycleState::default();
        let mut n = node("2", "4Gi", "2");
        assert!(fit.filter(&st, &pod("1", "1Gi"), &n).is_success());
        n.add_pod(pod("1500m", "3Gi"));
        let s = fit.filter(&st, &pod("1", "2Gi"), &n);
        assert_eq!(s.code, Code::Unschedulable, "evicting pods would make room");
        assert_eq!(
            s.reasons.as_slice(),
            ["Insufficient cpu", "Insufficient memory"]
        );
        let s = fit.filter(&st, &pod("3", ""), &n);
        assert_eq!(
            s.code,
            Code::UnschedulableAndUnresolvable,
            "more than the node has"
        );
        n.add_pod(pod("", ""));
        assert_eq!(
            fit.filter(&st, &pod("", ""), &n).reasons.as_slice(),
            ["Too many pods"]
        );
    }

    fn score_with(args: serde_json::Value, p: &PodInfo, n: &NodeInfo) -> i64 {
        let fit = Fit::new(&args).expect("plugin");
        fit.score(&CycleState::default(), p, n, &Snapshot::default())
            .expect("score")
    }

    #[test]
    fn least_most_and_ratio_scores_match_upstream_examples() {
        // upstream least_allocated_test "nothing scheduled, resources requested, differently
        // sized nodes": cpu (4000-3000)/4000=25, mem (10000-5000)/10000=50 -> 37.
        let mut n = node("4", "10000", "110");
        let p = pod("3", "5000");
        assert_eq!(score_with(serde_json::Value::Null, &p, &n), 37);
        // MostAllocated: cpu 75, mem 50 -> 62.
        let most = serde_json::json!({"scoringStrategy": {"type": "MostAllocated"}});
        assert_eq!(score_with(most, &p, &n), 62);
        // Weighted: cpu weight 3 -> (25*3 + 50) / 4 = 31.
        let weighted = serde_json::json!({"scoringStrategy": {"resources": [
            {"name": "cpu", "weight": 3}, {"name": "memory", "weight": 1}]}});
        assert_eq!(score_with(weighted, &p, &n), 31);
        // RequestedToCapacityRatio, bin packing shape 0->0, 100->10: cpu 75, mem 50 -> 63 (rounded).
        let ratio = serde_json::json!({"scoringStrategy": {"type": "RequestedToCapacityRatio",
            "requestedToCapacityRatio": {"shape": [{"utilization": 0, "score": 0}, {"utilization": 100, "score": 10}]}}});
        assert_eq!(score_with(ratio, &p, &n), 63);
        // Pods without requests count 100m / 200Mi when scoring.
        n = node("1", "1Gi", "110");
        assert_eq!(
            score_with(serde_json::Value::Null, &pod("", ""), &n),
            (90 + 80) / 2
        );
    }

    #[test]
    fn args_are_validated() {
        assert!(Fit::new(&serde_json::json!({"scoringStrategy": {"type": "Nope"}})).is_err());
        assert!(Fit::new(&serde_json::json!({"scoringStrategy": {"resources": [{"name": "cpu", "weight": 101}]}})).is_err());
        assert!(
            Fit::new(&serde_json::json!({"scoringStrategy": {"type": "RequestedToCapacityRatio"}}))
                .is_err()
        );
        assert!(Fit::new(&serde_json::json!({"scoringStrategy": {"type": "RequestedToCapacityRatio",
            "requestedToCapacityRatio": {"shape": [{"utilization": 50, "score": 1}, {"utilization": 10, "score": 2}]}}})).is_err());
        assert!(Fit::new(&serde_json::json!({"unknownField": true})).is_err());
    }
}
