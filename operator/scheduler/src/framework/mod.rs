//! The scheduling framework: the plugin interface ([`interface`]), the data plugins see
//! ([`types`]), a profile's plugin set ([`runtime`]), and the diagnosis of a failed
//! attempt ([`FitError`]).

pub mod interface;
pub mod node_sums;
pub mod parallelize;
pub mod runtime;
pub mod types;

use std::collections::{BTreeSet, HashMap};

use interface::Status;

/// Why a pod fits no node (upstream `Diagnosis`).
#[derive(Clone, Debug, Default)]
pub struct Diagnosis {
    /// The status of each node that was filtered out.
    pub node_to_status: HashMap<String, Status>,
    /// The status of nodes absent from `node_to_status` (all nodes after a PreFilter
    /// rejection).
    pub absent_nodes_status: Option<Status>,
    /// Plugins that rejected the pod; they decide which events re-queue it.
    pub unschedulable_plugins: BTreeSet<&'static str>,
    /// The PreFilter rejection message, if PreFilter rejected.
    pub pre_filter_msg: String,
    /// Which PreFilter plugin (its index in the framework's order) rejected, if one did.
    pub pre_filter_rejected_at: Option<usize>,
    /// What PostFilter (preemption) had to say.
    pub post_filter_msg: String,
}

/// No node fits the pod (upstream `FitError`).
#[derive(Clone, Debug, Default)]
pub struct FitError {
    /// How many nodes were considered.
    pub num_all_nodes: usize,
    /// Why.
    pub diagnosis: Diagnosis,
    /// What PostFilter (preemption) decided, if it nominated a node.
    pub post_filter_result: Option<interface::PostFilterResult>,
}

impl FitError {
    /// upstream's message: `0/N nodes are available: <PreFilter msg>. <reason histogram>.
    /// <PostFilter msg>`, reasons sorted as strings ("3 Insufficient cpu, 2 node(s) ...").
    pub fn message(&self) -> String {
        let mut msg = format!("0/{} nodes are available:", self.num_all_nodes);
        let d = &self.diagnosis;
        if !d.pre_filter_msg.is_empty() {
            msg.push_str(&format!(" {}.", d.pre_filter_msg));
        } else {
            let mut counts: HashMap<&str, usize> = HashMap::new();
            for status in d.node_to_status.values() {
                for reason in &status.reasons {
                    *counts.entry(&**reason).or_default() += 1;
                }
            }
            if d.node_to_status.len() < self.num_all_nodes
                && let Some(absent) = &d.absent_nodes_status
            {
                for reason in &absent.reasons {
                    *counts.entry(&**reason).or_default() +=
                        self.num_all_nodes - d.node_to_status.len();
                }
            }
            let mut reasons: Vec<String> = counts.iter().map(|(r, n)| format!("{n} {r}")).collect();
            reasons.sort();
            if !reasons.is_empty() {
                msg.push_str(&format!(" {}.", reasons.join(", ")));
            }
        }
        if !d.post_filter_msg.is_empty() {
            msg.push_str(&format!(" {}", d.post_filter_msg));
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interface::Code;

    #[test]
    fn fit_error_message_has_upstream_format() {
        let mut d = Diagnosis::default();
        for (node, reasons) in [
            ("a", vec!["Insufficient cpu"]),
            ("b", vec!["Insufficient cpu", "Insufficient memory"]),
            ("c", vec!["Insufficient cpu"]),
            ("d", vec!["node(s) had untolerated taint(s)"]),
            ("e", vec!["node(s) had untolerated taint(s)"]),
        ] {
            d.node_to_status.insert(
                node.into(),
                Status::with_reasons(Code::Unschedulable, reasons),
            );
        }
        d.post_filter_msg =
            "preemption: 0/5 nodes are available: 5 No preemption victims found for incoming pod."
                .into();
        let e = FitError {
            num_all_nodes: 5,
            diagnosis: d,
            ..FitError::default()
        };
        assert_eq!(
            e.message(),
            "0/5 nodes are available: 1 Insufficient memory, 2 node(s) had untolerated taint(s), 3 Insufficient cpu. preemption: 0/5 nodes are available: 5 No preemption victims found for incoming pod."
        );
        let pre = FitError {
            num_all_nodes: 3,
            diagnosis: Diagnosis {
                pre_filter_msg: "some prefilter message".into(),
                ..Diagnosis::default()
            },
            ..FitError::default()
        };
        assert_eq!(
            pre.message(),
            "0/3 nodes are available: some prefilter message."
        );
    }
}
