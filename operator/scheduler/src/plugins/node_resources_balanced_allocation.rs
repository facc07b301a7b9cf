//! NodeResourcesBalancedAllocation: favours nodes whose resource usage stays balanced
//! across resources with the pod on it, scored by how much the pod improves or worsens
//! the balance (upstream 1.36's formula).

use serde::Deserialize;
use smallvec::SmallVec;

use crate::cache::Snapshot;
use crate::framework::interface::{CycleState, ExtensionPoint, MAX_NODE_SCORE, Plugin, Status};
use crate::framework::types::{NodeInfo, PodInfo};
use crate::plugins::node_resources_fit::{
    ResourceSpec, requested_and_allocatable, validate_resources,
};

/// `NodeResourcesBalancedAllocationArgs`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BalancedAllocationArgs {
    /// Resources to balance; cpu and memory when empty.
    #[serde(default)]
    pub resources: Vec<ResourceSpec>,
    /// Ignored (type metadata inside args).
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<String>,
    /// Ignored (type metadata inside args).
    #[serde(default)]
    pub kind: Option<String>,
}

/// The plugin.
pub struct BalancedAllocation {
    resources: Vec<ResourceSpec>,
}

impl BalancedAllocation {
    /// Builds the plugin from its args.
    pub fn new(args: &serde_json::Value) -> Result<Self, String> {
        let args: BalancedAllocationArgs = super::decode_args(args)?;
        Ok(Self {
            resources: validate_resources(&args.resources, "resources")?,
        })
    }
}

/// `(1 - std of the utilization fractions) * 100`.
fn balanced_resource_score(requested: &[i64], allocatable: &[i64]) -> i64 {
    // On the stack for the usual few resources, as the rows it reads.
    let fractions: SmallVec<[f64; 4]> = requested
        .iter()
        .zip(allocatable)
        .filter(|(_, a)| **a != 0)
        .map(|(r, a)| (*r as f64 / *a as f64).min(1.0))
        .collect();
    let std = match fractions.len() {
        0 | 1 => 0.0,
        2 => ((fractions[0] - fractions[1]) / 2.0).abs(),
        n => {
            let mean = fractions.iter().sum::<f64>() / n as f64;
            (fractions
                .iter()
                .map(|f| (f - mean) * (f - mean))
                .sum::<f64>()
                / n as f64)
                .sqrt()
        }
    };
    ((1.0 - std) * MAX_NODE_SCORE as f64) as i64
}

impl Plugin for BalancedAllocation {
    fn name(&self) -> &'static str {
        "NodeResourcesBalancedAllocation"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[ExtensionPoint::PreScore, ExtensionPoint::Score]
    }

    fn pre_score(
        &self,
        _state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[std::sync::Arc<NodeInfo>],
        _snapshot: &Snapshot,
    ) -> Status {
        // Best-effort pods are not scored here, or they would all pile onto one node
        // (kubernetes#129138).
        if self
            .resources
            .iter()
            .all(|r| pod.requests.get(&r.name) == 0)
        {
            Status::skip()
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
        let (requested, allocated, allocatable) =
            requested_and_allocatable(&self.resources, pod, node, true);
        let with_pod = balanced_resource_score(&requested, &allocatable);
        let without_pod = balanced_resource_score(&allocated, &allocatable);
        // Both are in [50, 100]; the difference is brought back to [50, 100] around 75.
        Ok(MAX_NODE_SCORE / 2 + (MAX_NODE_SCORE / 2 + with_pod - without_pod) / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framework::interface::Code;
    use crate::plugins::node_resources_fit::tests::{node, pod};

    #[test]
    fn balance_improvement() {
        let pl = BalancedAllocation::new(&serde_json::Value::Null).expect("plugin");
        let st = CycleState::default();
        let snap = Snapshot::default();
        let mut state = CycleState::default();
        assert_eq!(
            pl.pre_score(&mut state, &pod("", ""), &[], &snap).code,
            Code::Skip
        );
        // Empty node, pod takes 50% cpu and 50% memory: perfectly balanced, no change -> 75.
        let n = node("2", "2Gi", "110");
        assert_eq!(
            pl.score(&st, &pod("1", "1Gi"), &n, &snap).expect("score"),
            75
        );
        // cpu 50%, memory 0%: std 0.25 -> with 75, without 100 -> 50 + (50 + 75 - 100)/2 = 62.
        assert_eq!(pl.score(&st, &pod("1", ""), &n, &snap).expect("score"), 62);
        // A node already cpu-heavy gets better balanced by a memory-only pod.
        let mut busy = node("2", "2Gi", "110");
        busy.add_pod(pod("1", ""));
        assert_eq!(
            pl.score(&st, &pod("", "1Gi"), &busy, &snap).expect("score"),
            87
        );
    }
}
