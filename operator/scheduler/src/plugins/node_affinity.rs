//! NodeAffinity: `spec.nodeSelector` and required node affinity filter nodes; preferred
//! node affinity terms add their weights to a node's score. The scheduler-wide
//! `addedAffinity` (NodeAffinityArgs) applies to every pod of the profile.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeAffinity as NodeAffinitySpec, PreferredSchedulingTerm};
use serde::Deserialize;

use crate::cache::Snapshot;
use crate::framework::interface::{
    ClusterEvent, Code, CycleState, ExtensionPoint, MAX_NODE_SCORE, NodeScore, Plugin, Status,
    default_normalize_score,
};
use crate::framework::types::{NodeInfo, PodInfo};
use crate::plugins::helper::{node_selector_matches, term_matches};
use crate::transform::CachedNode;

/// upstream `ErrReasonPod`.
pub const ERR_REASON_POD: &str = "node(s) didn't match Pod's node affinity/selector";
/// upstream `errReasonEnforced`.
pub const ERR_REASON_ENFORCED: &str = "node(s) didn't match scheduler-enforced node affinity";

/// `NodeAffinityArgs`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeAffinityArgs {
    /// Affinity added to every pod of the profile.
    #[serde(default)]
    pub added_affinity: Option<NodeAffinitySpec>,
    /// Set by the apiserver-style encoding; ignored.
    #[serde(default, rename = "apiVersion")]
    pub api_version: Option<String>,
    /// Set by the apiserver-style encoding; ignored.
    #[serde(default)]
    pub kind: Option<String>,
}

/// The plugin.
pub struct NodeAffinity {
    added: Option<NodeAffinitySpec>,
}

impl NodeAffinity {
    /// Builds the plugin from its args.
    pub fn new(args: &serde_json::Value) -> Result<Self, String> {
        let args: NodeAffinityArgs = super::decode_args(args)?;
        if let Some(a) = &args.added_affinity
            && let Some(req) = &a.required_during_scheduling_ignored_during_execution
            && req.node_selector_terms.is_empty()
        {
            return Err(
                "addedAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms: Required value: must have at least one node selector term"
                    .into(),
            );
        }
        Ok(Self {
            added: args.added_affinity,
        })
    }

    fn pod_affinity(pod: &PodInfo) -> Option<&NodeAffinitySpec> {
        pod.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
    }
}

/// Whether `node` satisfies the pod's nodeSelector and required node affinity
/// (upstream `RequiredNodeAffinity.Match`).
pub fn pod_matches_node(pod: &PodInfo, node: &CachedNode) -> bool {
    let spec = pod.pod.spec.as_ref();
    if let Some(selector) = spec.and_then(|s| s.node_selector.as_ref()) {
        // Borrowed, not cloned: PodTopologySpread calls this for every node of every cycle.
        let labels: Option<&BTreeMap<String, String>> = node.metadata.labels.as_ref();
        if !selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            return false;
        }
    }
    match NodeAffinity::pod_affinity(pod).and_then(|a| {
        a.required_during_scheduling_ignored_during_execution
            .as_ref()
    }) {
        Some(required) => node_selector_matches(required, node),
        None => true,
    }
}

fn preferred_score(terms: &[PreferredSchedulingTerm], node: &CachedNode) -> i64 {
    terms
        .iter()
        .filter(|t| t.weight != 0 && term_matches(&t.preference, node))
        .map(|t| i64::from(t.weight))
        .sum()
}

impl Plugin for NodeAffinity {
    fn name(&self) -> &'static str {
        "NodeAffinity"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[
            ExtensionPoint::PreFilter,
            ExtensionPoint::Filter,
            ExtensionPoint::PreScore,
            ExtensionPoint::Score,
        ]
    }

    fn pre_filter(&self, _state: &mut CycleState, pod: &PodInfo, _snapshot: &Snapshot) -> Status {
        let spec = pod.pod.spec.as_ref();
        let required = Self::pod_affinity(pod).and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
        let enforced = self.added.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
        if required.is_none()
            && enforced.is_none()
            && spec.and_then(|s| s.node_selector.as_ref()).is_none()
        {
            return Status::skip();
        }
        Status::success()
    }

    fn filter(&self, _state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(n) = node.node.as_ref() else {
            return Status::error("node not found");
        };
        if let Some(enforced) = self.added.as_ref().and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        }) && !node_selector_matches(enforced, n)
        {
            return Status::new(Code::UnschedulableAndUnresolvable, ERR_REASON_ENFORCED);
        }
        if pod_matches_node(pod, n) {
            Status::success()
        } else {
            Status::new(Code::UnschedulableAndUnresolvable, ERR_REASON_POD)
        }
    }

    fn pre_score(
        &self,
        _state: &mut CycleState,
        pod: &PodInfo,
        _nodes: &[std::sync::Arc<NodeInfo>],
        _snapshot: &Snapshot,
    ) -> Status {
        let has_pod_terms = Self::pod_affinity(pod)
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty());
        let has_added = self
            .added
            .as_ref()
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty());
        if has_pod_terms || has_added {
            Status::success()
        } else {
            Status::skip()
        }
    }

    fn score(
        &self,
        _state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        _s: &Snapshot,
    ) -> Result<i64, Status> {
        let Some(n) = node.node.as_ref() else {
            return Err(Status::error("node not found"));
        };
        let mut score = 0;
        if let Some(terms) = self.added.as_ref().and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
            score += preferred_score(terms, n);
        }
        if let Some(terms) = Self::pod_affinity(pod).and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        }) {
            score += preferred_score(terms, n);
        }
        Ok(score)
    }

    fn normalize_score(
        &self,
        _state: &CycleState,
        _pod: &PodInfo,
        scores: &mut [NodeScore],
    ) -> Status {
        default_normalize_score(MAX_NODE_SCORE, false, scores);
        Status::success()
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
    use k8s_openapi::api::core::v1::{
        Affinity, Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::sync::Arc;

    fn node(labels: &[(&str, &str)]) -> NodeInfo {
        let mut info = NodeInfo::new("n");
        info.set_node(Arc::new(Node {
            metadata: ObjectMeta {
                name: Some("n".into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }));
        info
    }

    fn term(key: &str, value: &str) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(vec![NodeSelectorRequirement {
                key: key.into(),
                operator: "In".into(),
                values: Some(vec![value.into()]),
            }]),
            ..Default::default()
        }
    }

    fn pod(selector: &[(&str, &str)], affinity: Option<NodeAffinitySpec>) -> PodInfo {
        PodInfo::new(Arc::new(Pod {
            spec: Some(PodSpec {
                node_selector: (!selector.is_empty()).then(|| {
                    selector
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect()
                }),
                affinity: affinity.map(|a| Affinity {
                    node_affinity: Some(a),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    #[test]
    fn selector_and_required_terms() {
        let pl = NodeAffinity::new(&serde_json::Value::Null).expect("plugin");
        let st = CycleState::default();
        let snap = Snapshot::default();
        let mut state = CycleState::default();
        assert_eq!(
            pl.pre_filter(&mut state, &pod(&[], None), &snap).code,
            Code::Skip
        );
        let p = pod(&[("disk", "ssd")], None);
        assert!(pl.filter(&st, &p, &node(&[("disk", "ssd")])).is_success());
        assert_eq!(
            pl.filter(&st, &p, &node(&[("disk", "hdd")])).message(),
            ERR_REASON_POD
        );
        let required = NodeAffinitySpec {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![term("zone", "a"), term("zone", "b")],
            }),
            ..Default::default()
        };
        let p = pod(&[], Some(required));
        assert!(pl.filter(&st, &p, &node(&[("zone", "b")])).is_success());
        assert!(!pl.filter(&st, &p, &node(&[("zone", "c")])).is_success());
    }

    #[test]
    fn preferred_terms_and_added_affinity() {
        let args = serde_json::json!({"addedAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ours"]}]}]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "preference": {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}}]
        }});
        let pl = NodeAffinity::new(&args).expect("plugin");
        let st = CycleState::default();
        let snap = Snapshot::default();
        let p = pod(
            &[],
            Some(NodeAffinitySpec {
                preferred_during_scheduling_ignored_during_execution: Some(vec![
                    PreferredSchedulingTerm {
                        weight: 10,
                        preference: term("disk", "ssd"),
                    },
                ]),
                ..Default::default()
            }),
        );
        assert_eq!(
            pl.filter(&st, &p, &node(&[("zone", "a")])).message(),
            ERR_REASON_ENFORCED
        );
        let both = node(&[("pool", "ours"), ("zone", "a"), ("disk", "ssd")]);
        assert!(pl.filter(&st, &p, &both).is_success());
        assert_eq!(pl.score(&st, &p, &both, &snap).expect("score"), 15);
        assert_eq!(
            pl.score(&st, &p, &node(&[("zone", "a")]), &snap)
                .expect("score"),
            5
        );
        let mut scores = vec![
            NodeScore {
                name: "a".into(),
                score: 15,
            },
            NodeScore {
                name: "b".into(),
                score: 5,
            },
        ];
        pl.normalize_score(&st, &p, &mut scores);
        assert_eq!((scores[0].score, scores[1].score), (100, 33));
        assert!(NodeAffinity::new(&serde_json::json!({"bogus": 1})).is_err());
    }
}
