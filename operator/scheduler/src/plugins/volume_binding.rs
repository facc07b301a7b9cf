//! VolumeBinding for claims that are already bound (PreFilter, Filter): a pod's
//! PersistentVolumeClaims must exist, must not be being deleted and must be bound, and the
//! node must satisfy the node affinity of each bound PersistentVolume.
//!
//! Upstream's plugin also binds claims that wait for their first consumer
//! (`volumeBindingMode: WaitForFirstConsumer`): it picks a matching PV per node or lets the
//! provisioner create one, then binds in PreBind. ferrokube does not do that yet; such a pod
//! is reported unschedulable with a message that says so, instead of being bound to a node
//! its volume may never reach.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};

use crate::cache::{Listers, Snapshot};
use crate::framework::interface::{ClusterEvent, Code, CycleState, ExtensionPoint, Plugin, Status};
use crate::framework::types::{NodeInfo, PodInfo};
use crate::plugins::helper::node_selector_matches;
use crate::transform::CachedPod;

/// upstream `ErrReasonNodeConflict` (1.36 wording).
pub const ERR_REASON_NODE_CONFLICT: &str = "node(s) didn't match PersistentVolume's node affinity";
/// upstream's PreFilter reason for unbound claims of Immediate binding mode.
pub const ERR_REASON_UNBOUND_IMMEDIATE: &str = "pod has unbound immediate PersistentVolumeClaims";
/// Why a pod with a WaitForFirstConsumer claim still unbound is not scheduled.
pub const ERR_REASON_DELAYED_BINDING: &str = "pod has unbound WaitForFirstConsumer PersistentVolumeClaims, which ferrokube-scheduler does not bind yet";
/// The annotation the PV controller sets once a claim's binding is complete.
const ANN_BIND_COMPLETED: &str = "pv.kubernetes.io/bind-completed";
/// CycleState key of the bound PersistentVolumes.
const STATE_KEY: &str = "PreFilterVolumeBinding";

/// The plugin.
pub struct VolumeBinding;

/// The claims a pod uses, by name: its `persistentVolumeClaim` volumes and the claims its
/// generic ephemeral volumes get (`<pod>-<volume>`).
pub fn claim_names(pod: &CachedPod) -> Vec<String> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            if let Some(c) = &v.persistent_volume_claim {
                Some(c.claim_name.clone())
            } else {
                v.ephemeral
                    .as_ref()
                    .map(|_| format!("{pod_name}-{}", v.name))
            }
        })
        .collect()
}

fn is_fully_bound(pvc: &PersistentVolumeClaim) -> bool {
    pvc.spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .is_some_and(|v| !v.is_empty())
        && pvc
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANN_BIND_COMPLETED))
}

/// Whether the claim's StorageClass delays binding to the first consumer.
fn is_delay_binding(pvc: &PersistentVolumeClaim, listers: &Listers) -> bool {
    let class = pvc
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref())
        .unwrap_or_default();
    if class.is_empty() {
        return false;
    }
    listers
        .storage_classes
        .as_ref()
        .and_then(|s| s.get("", class))
        .is_some_and(|c| c.volume_binding_mode.as_deref() == Some("WaitForFirstConsumer"))
}

/// What PreFilter found: each bound claim's PV.
struct BoundVolumes(Vec<Arc<PersistentVolume>>);

impl Plugin for VolumeBinding {
    fn name(&self) -> &'static str {
        "VolumeBinding"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[ExtensionPoint::PreFilter, ExtensionPoint::Filter]
    }

    fn pre_filter(&self, state: &mut CycleState, pod: &PodInfo, snapshot: &Snapshot) -> Status {
        let names = claim_names(&pod.pod);
        if names.is_empty() {
            return Status::skip();
        }
        let listers = &snapshot.listers;
        let ns = pod.pod.metadata.namespace.as_deref().unwrap_or_default();
        let mut bound = Vec::new();
        let mut unbound_immediate = false;
        let mut unbound_delayed = false;
        for name in &names {
            let pvc = listers.pvcs.as_ref().and_then(|s| s.get(ns, name));
            let Some(pvc) = pvc else {
                return Status::new(
                    Code::UnschedulableAndUnresolvable,
                    format!("persistentvolumeclaim \"{name}\" not found"),
                );
            };
            if pvc.metadata.deletion_timestamp.is_some() {
                return Status::new(
                    Code::UnschedulableAndUnresolvable,
                    format!("persistentvolumeclaim \"{name}\" is being deleted"),
                );
            }
            if is_fully_bound(&pvc) {
                let pv_name = pvc
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.clone())
                    .unwrap_or_default();
                let Some(pv) = listers.pvs.as_ref().and_then(|s| s.get("", &pv_name)) else {
                    return Status::new(
                        Code::UnschedulableAndUnresolvable,
                        format!("persistentvolume \"{pv_name}\" not found"),
                    );
                };
                bound.push(pv);
            } else if is_delay_binding(&pvc, listers)
                && pvc
                    .spec
                    .as_ref()
                    .and_then(|s| s.volume_name.as_deref())
                    .is_none_or(str::is_empty)
            {
                unbound_delayed = true;
            } else {
                unbound_immediate = true;
            }
        }
        if unbound_immediate {
            return Status::new(
                Code::UnschedulableAndUnresolvable,
                ERR_REASON_UNBOUND_IMMEDIATE,
            );
        }
        if unbound_delayed {
            return Status::new(
                Code::UnschedulableAndUnresolvable,
                ERR_REASON_DELAYED_BINDING,
            );
        }
        state.write(STATE_KEY, BoundVolumes(bound));
        Status::success()
    }

    fn filter(&self, state: &CycleState, _pod: &PodInfo, node: &NodeInfo) -> Status {
        let Some(BoundVolumes(volumes)) = state.read::<BoundVolumes>(STATE_KEY) else {
            return Status::error("VolumeBinding: PreFilter state is missing");
        };
        let Some(n) = node.node.as_ref() else {
            return Status::error("VolumeBinding: node not found");
        };
        for pv in volumes {
            let required = pv
                .spec
                .as_ref()
                .and_then(|s| s.node_affinity.as_ref())
                .and_then(|a| a.required.as_ref());
            if let Some(selector) = required
                && !node_selector_matches(selector, n)
            {
                return Status::new(Code::UnschedulableAndUnresolvable, ERR_REASON_NODE_CONFLICT);
            }
        }
        Status::success()
    }

    fn events_to_register(&self) -> &'static [ClusterEvent] {
        &[
            ClusterEvent::NodeAdd,
            ClusterEvent::NodeUpdate,
            ClusterEvent::StorageChange,
            ClusterEvent::UnscheduledPodUpdate,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{
        Node, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaimSpec,
        PersistentVolumeClaimVolumeSource, PersistentVolumeSpec, PodSpec, Volume,
        VolumeNodeAffinity,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod_with(claims: &[&str]) -> Arc<PodInfo> {
        Arc::new(PodInfo::new(Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                volumes: Some(
                    claims
                        .iter()
                        .map(|c| Volume {
                            name: format!("v-{c}"),
                            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                                claim_name: (*c).to_string(),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        })))
    }

    fn node(name: &str, zone: &str) -> NodeInfo {
        let mut info = NodeInfo::new(name);
        info.set_node(Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("zone".to_string(), zone.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }));
        info
    }

    fn pv_in_zone(zone: &str) -> Arc<PersistentVolume> {
        Arc::new(PersistentVolume {
            metadata: ObjectMeta {
                name: Some("pv".into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                node_affinity: Some(VolumeNodeAffinity {
                    required: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: "zone".into(),
                                operator: "In".into(),
                                values: Some(vec![zone.into()]),
                            }]),
                            ..Default::default()
                        }],
                    }),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn pods_without_claims_skip() {
        let s = VolumeBinding.pre_filter(
            &mut CycleState::default(),
            &pod_with(&[]),
            &Snapshot::default(),
        );
        assert_eq!(s.code, Code::Skip);
    }

    #[test]
    fn missing_claims_are_unresolvable() {
        let s = VolumeBinding.pre_filter(
            &mut CycleState::default(),
            &pod_with(&["data"]),
            &Snapshot::default(),
        );
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        assert_eq!(s.message(), "persistentvolumeclaim \"data\" not found");
    }

    #[test]
    fn bound_volumes_follow_node_affinity() {
        let mut state = CycleState::default();
        state.write(STATE_KEY, BoundVolumes(vec![pv_in_zone("a")]));
        let p = pod_with(&["data"]);
        assert!(
            VolumeBinding
                .filter(&state, &p, &node("n1", "a"))
                .is_success()
        );
        let s = VolumeBinding.filter(&state, &p, &node("n2", "b"));
        assert_eq!(s.code, Code::UnschedulableAndUnresolvable);
        assert_eq!(s.message(), ERR_REASON_NODE_CONFLICT);
    }

    #[test]
    fn bound_means_volume_name_and_bind_completed() {
        let mut pvc = PersistentVolumeClaim {
            spec: Some(PersistentVolumeClaimSpec {
                volume_name: Some("pv".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(!is_fully_bound(&pvc));
        pvc.metadata.annotations =
            Some([(ANN_BIND_COMPLETED.to_string(), "yes".to_string())].into());
        assert!(is_fully_bound(&pvc));
    }
}
