//! ImageLocality: favours nodes that already have the pod's images, weighted by image
//! size and damped by how many nodes have them (to avoid "node heating").

use crate::cache::Snapshot;
use crate::framework::interface::{CycleState, ExtensionPoint, MAX_NODE_SCORE, Plugin, Status};
use crate::framework::types::{NodeInfo, PodInfo, normalized_image_name};

const MB: i64 = 1024 * 1024;
/// Images smaller than this in total do not count (upstream `minThreshold`).
const MIN_THRESHOLD: i64 = 23 * MB;
/// Per container, sizes above this saturate the score (upstream `maxContainerThreshold`).
const MAX_CONTAINER_THRESHOLD: i64 = 1000 * MB;

/// The plugin.
pub struct ImageLocality;

fn calculate_priority(sum: i64, num_containers: usize) -> i64 {
    let max = MAX_CONTAINER_THRESHOLD * i64::try_from(num_containers).unwrap_or(1);
    let sum = sum.clamp(MIN_THRESHOLD, max.max(MIN_THRESHOLD));
    if max <= MIN_THRESHOLD {
        return 0;
    }
    MAX_NODE_SCORE * (sum - MIN_THRESHOLD) / (max - MIN_THRESHOLD)
}

impl Plugin for ImageLocality {
    fn name(&self) -> &'static str {
        "ImageLocality"
    }

    fn extension_points(&self) -> &'static [ExtensionPoint] {
        &[ExtensionPoint::Score]
    }

    fn score(
        &self,
        _state: &CycleState,
        pod: &PodInfo,
        node: &NodeInfo,
        snapshot: &Snapshot,
    ) -> Result<i64, Status> {
        let Some(spec) = pod.pod.spec.as_ref() else {
            return Ok(0);
        };
        let total = snapshot.nodes.len().max(1) as f64;
        let images = spec
            .init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter_map(|c| c.image.as_deref())
            .chain(
                spec.volumes
                    .iter()
                    .flatten()
                    .filter_map(|v| v.image.as_ref().and_then(|i| i.reference.as_deref())),
            );
        let mut sum = 0i64;
        for image in images {
            let name = normalized_image_name(image);
            if let Some(size) = node.images.get(&name) {
                let spread = snapshot.image_nodes.get(&name).copied().unwrap_or(1) as f64 / total;
                sum += (*size as f64 * spread) as i64;
            }
        }
        let containers = spec.init_containers.as_ref().map_or(0, Vec::len) + spec.containers.len();
        Ok(calculate_priority(sum, containers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerImage, Node, NodeStatus, Pod, PodSpec};
    use std::sync::Arc;

    fn node(name: &str, images: &[(&str, i64)]) -> NodeInfo {
        let mut info = NodeInfo::new(name);
        info.set_node(Arc::new(Node {
            status: Some(NodeStatus {
                images: Some(
                    images
                        .iter()
                        .map(|(n, s)| ContainerImage {
                            names: Some(vec![(*n).to_string()]),
                            size_bytes: Some(*s),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }));
        info
    }

    #[test]
    fn bigger_and_more_common_images_score_higher() {
        let pod = PodInfo::new(Arc::new(Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    image: Some("gcr.io/250".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }));
        let snap = Snapshot::from_nodes(vec![
            node("a", &[("gcr.io/250:latest", 250 * MB)]),
            node("b", &[("gcr.io/10:latest", 10 * MB)]),
        ]);
        let st = CycleState::default();
        let scores: Vec<i64> = snap
            .nodes
            .iter()
            .map(|n| ImageLocality.score(&st, &pod, n, &snap).expect("score"))
            .collect();
        // upstream test "two images spread on two nodes, prefer the larger image one":
        // 250MB * 1/2 = 125MB -> 100 * (125 - 23) / (1000 - 23) = 10.
        assert_eq!(scores, [10, 0]);
    }
}
