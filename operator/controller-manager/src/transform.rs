//! What the shared informers keep of the pods they cache.
//!
//! A typed Pod is large: its containers carry image, env, volume mounts, probes and
//! resources, and admission adds a projected service-account volume to every pod. No
//! controller here reads any of that from the cache, yet it made up most of the memory of
//! the pod informer, which every pod in the cluster passes through. So the informers
//! decode pods as [`CachedPod`], which has only the fields the controllers read (listed
//! there), and serde skips the rest while parsing rather than building it only to drop it.
//! Controllers never write a cached pod back (they patch, delete or evict by name), so
//! nothing dropped here can be lost on the server.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ContainerStatus, Pod, PodCondition, PodIP, PodSpec, PodStatus,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Deserializer};

/// The pod as the informers decode it from lists and watches and the controllers read it:
///
/// - metadata: all of it but managedFields;
/// - spec ([`CachedPodSpec`]): `nodeName` (pod GC, node lifecycle, taint eviction,
///   endpoints, deletion ranking), `hostname` and `subdomain` (endpoints), `tolerations`
///   (taint eviction), and of the containers and init containers only those that declare
///   ports (named target ports of Services) or are sidecars (`restartPolicy: Always`: their
///   restarts count in deletion ranking), each with just `name`, `ports` and
///   `restartPolicy`: **the cached `spec.containers` is not the pod's container list**,
///   only what the controllers look up in it;
/// - status ([`CachedPodStatus`]): `phase`, `conditions`, `podIP(s)`, `reason`, `message`,
///   `startTime`, and per container status only `name`, `ready` and `restartCount`.
///
/// Why not the k8s-openapi `Pod` with the other fields left empty: that struct is 2.4 KB
/// whatever it holds, and with 5000 pods those inline sizes were the largest part of the
/// controller-manager's heap. The kept fields have the same names and types as in `Pod`,
/// so the controllers read them the same way.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct CachedPod {
    /// The pod's metadata, without managedFields.
    #[serde(default, deserialize_with = "without_managed_fields")]
    pub metadata: ObjectMeta,
    /// What the controllers read of the spec.
    #[serde(default)]
    pub spec: Option<CachedPodSpec>,
    /// What the controllers read of the status.
    #[serde(default)]
    pub status: Option<CachedPodStatus>,
}

/// `ObjectMeta` decoded through [`WireMeta`].
fn without_managed_fields<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    WireMeta::deserialize(d).map(ObjectMeta::from)
}

/// `ObjectMeta` without `managedFields` (often the largest part of it, and never cached).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireMeta {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    #[serde(default, deserialize_with = "shrunk")]
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default, deserialize_with = "shrunk")]
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

impl From<WireMeta> for ObjectMeta {
    fn from(m: WireMeta) -> Self {
        Self {
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: m.self_link,
            uid: m.uid,
        }
    }
}

/// The fields of `PodSpec` the controllers read (see [`CachedPod`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodSpec {
    /// The containers that declare ports or are sidecars ([`CachedContainer::is_kept`]).
    #[serde(default, deserialize_with = "kept_containers")]
    pub containers: Vec<CachedContainer>,
    /// The init containers that declare ports or are sidecars.
    #[serde(default, deserialize_with = "kept_init_containers")]
    pub init_containers: Option<Vec<CachedContainer>>,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.hostname`.
    pub hostname: Option<String>,
    /// `spec.subdomain`.
    pub subdomain: Option<String>,
    /// `spec.tolerations`.
    #[serde(default, deserialize_with = "shrunk")]
    pub tolerations: Option<Vec<Toleration>>,
}

/// The fields of a `Container` the controllers read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainer {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// Its ports (named target ports of Services).
    pub ports: Option<Vec<ContainerPort>>,
    /// `Always` for a sidecar init container.
    pub restart_policy: Option<String>,
}

impl CachedContainer {
    /// Whether any controller looks this container up: it declares ports or is a sidecar.
    fn is_kept(&self) -> bool {
        self.ports.as_ref().is_some_and(|p| !p.is_empty())
            || self.restart_policy.as_deref() == Some("Always")
    }
}

/// The containers any controller looks up, without spare capacity.
fn kept(mut cs: Vec<CachedContainer>) -> Vec<CachedContainer> {
    cs.retain(CachedContainer::is_kept);
    cs.shrink_to_fit();
    cs
}

fn kept_containers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<CachedContainer>, D::Error> {
    Vec::deserialize(d).map(kept)
}

fn kept_init_containers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<CachedContainer>>, D::Error> {
    Option::<Vec<_>>::deserialize(d).map(|cs| cs.map(kept))
}

/// A list decoded without spare capacity. serde cannot know a JSON array's length before
/// reading it, so a decoded `Vec` keeps the capacity of its last growth: at least four
/// elements, where a pod typically has one owner reference and two tolerations. Cached for
/// the pod's lifetime, that slack was about a fifth of the pod cache.
fn shrunk<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    let mut v = Option::<Vec<T>>::deserialize(d)?;
    if let Some(v) = v.as_mut() {
        v.shrink_to_fit();
    }
    Ok(v)
}

/// The fields of `PodStatus` the controllers read (see [`CachedPod`]).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedPodStatus {
    /// `status.phase`.
    pub phase: Option<String>,
    /// `status.conditions`.
    #[serde(default, deserialize_with = "shrunk")]
    pub conditions: Option<Vec<PodCondition>>,
    /// `status.podIP`.
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    /// `status.podIPs`.
    #[serde(rename = "podIPs", default, deserialize_with = "shrunk")]
    pub pod_ips: Option<Vec<PodIP>>,
    /// `status.reason`.
    pub reason: Option<String>,
    /// `status.message`.
    pub message: Option<String>,
    /// `status.startTime`.
    pub start_time: Option<Time>,
    /// `status.containerStatuses`.
    #[serde(default, deserialize_with = "shrunk")]
    pub container_statuses: Option<Vec<CachedContainerStatus>>,
    /// `status.initContainerStatuses`.
    #[serde(default, deserialize_with = "shrunk")]
    pub init_container_statuses: Option<Vec<CachedContainerStatus>>,
}

/// The fields of a `ContainerStatus` the controllers read.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedContainerStatus {
    /// The container's name.
    #[serde(default)]
    pub name: String,
    /// Whether it passes its readiness probe.
    #[serde(default)]
    pub ready: bool,
    /// How often it restarted.
    #[serde(default)]
    pub restart_count: i32,
}

/// A full API pod reduced to what the informers decode of it (a unit test holds the two to
/// each other). For callers that hold a `Pod` (tests).
impl From<Pod> for CachedPod {
    fn from(p: Pod) -> Self {
        let mut metadata = p.metadata;
        metadata.managed_fields = None;
        Self {
            metadata,
            spec: p.spec.map(pod_spec),
            status: p.status.map(pod_status),
        }
    }
}

fn pod_spec(s: PodSpec) -> CachedPodSpec {
    let kept = |cs: Vec<Container>| -> Vec<CachedContainer> {
        cs.into_iter()
            .map(|c| CachedContainer {
                name: c.name,
                ports: c.ports,
                restart_policy: c.restart_policy,
            })
            .filter(CachedContainer::is_kept)
            .collect()
    };
    CachedPodSpec {
        containers: kept(s.containers),
        init_containers: s.init_containers.map(kept),
        node_name: s.node_name,
        hostname: s.hostname,
        subdomain: s.subdomain,
        tolerations: s.tolerations,
    }
}

fn pod_status(s: PodStatus) -> CachedPodStatus {
    let statuses = |cs: Vec<ContainerStatus>| -> Vec<CachedContainerStatus> {
        cs.into_iter()
            .map(|c| CachedContainerStatus {
                name: c.name,
                ready: c.ready,
                restart_count: c.restart_count,
            })
            .collect()
    };
    CachedPodStatus {
        phase: s.phase,
        conditions: s.conditions,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        reason: s.reason,
        message: s.message,
        start_time: s.start_time,
        container_statuses: s.container_statuses.map(statuses),
        init_container_statuses: s.init_container_statuses.map(statuses),
    }
}

// The cached pod is listed and watched at the pods' own URLs.
ferrokube_runtime::resource_as!(CachedPod, Pod);

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the apiserver returns it after admission, with a sidecar, a named port, a
    /// container without ports and a running container.
    fn admitted() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "generateName": "web-", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": { "app": "web" },
                "annotations": { "a": "b" },
                "finalizers": ["f"],
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                    "uid": "rs1", "controller": true
                }],
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "deletionGracePeriodSeconds": 30,
                "managedFields": [{
                    "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
                    "fieldsType": "FieldsV1", "fieldsV1": { "f:metadata": { "f:labels": { ".": {} } } }
                }]
            },
            "spec": {
                "nodeName": "n1", "hostname": "h", "subdomain": "s",
                "serviceAccountName": "default", "schedulerName": "default-scheduler",
                "tolerations": [{ "key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                  "effect": "NoExecute", "tolerationSeconds": 300 }],
                "initContainers": [
                    { "name": "init", "image": "init:1" },
                    { "name": "side", "image": "side:1", "restartPolicy": "Always",
                      "ports": [{ "name": "metrics", "containerPort": 9000 }] }
                ],
                "containers": [{ "name": "plain", "image": "plain:1", "ports": [] }, {
                    "name": "c", "image": "web:1",
                    "env": [{ "name": "A", "value": "b" }],
                    "ports": [{ "name": "http", "containerPort": 8080, "protocol": "TCP" }],
                    "volumeMounts": [{ "name": "kube-api-access-x",
                                       "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount" }]
                }],
                "volumes": [{ "name": "kube-api-access-x", "projected": { "sources": [
                    { "serviceAccountToken": { "path": "token", "expirationSeconds": 3607 } }
                ] } }]
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.1", "podIPs": [{ "ip": "10.0.0.1" }],
                "hostIP": "192.168.0.1", "qosClass": "BestEffort",
                "reason": "r", "message": "m",
                "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{ "type": "Ready", "status": "True",
                                 "lastTransitionTime": "2026-01-01T00:00:00Z" }],
                "containerStatuses": [{ "name": "c", "ready": true, "restartCount": 3,
                                        "image": "web:1", "imageID": "sha256:x",
                                        "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } } }],
                "initContainerStatuses": [{ "name": "side", "ready": true, "restartCount": 5,
                                            "image": "side:1", "imageID": "sha256:y" }]
            }
        })
    }

    /// `json` decoded the way the informers decode it, and as a full `Pod` reduced by
    /// `CachedPod::from`: both must give the same cached pod.
    fn both_ways(json: serde_json::Value) -> anyhow::Result<CachedPod> {
        let decoded: CachedPod = serde_json::from_value(json.clone())?;
        let converted = CachedPod::from(serde_json::from_value::<Pod>(json)?);
        assert_eq!(decoded, converted);
        Ok(decoded)
    }

    #[test]
    fn keeps_what_controllers_read() -> anyhow::Result<()> {
        let json = admitted();
        let full: Pod = serde_json::from_value(json.clone())?;
        let kept = both_ways(json)?;
        let mut meta = full.metadata.clone();
        assert!(meta.managed_fields.take().is_some());
        assert_eq!(kept.metadata, meta, "all metadata but managedFields");
        assert_eq!(
            kube::Resource::meta(&kept).resource_version.as_deref(),
            Some("7")
        );
        let spec = kept.spec.unwrap_or_default();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.hostname.as_deref(), Some("h"));
        assert_eq!(spec.subdomain.as_deref(), Some("s"));
        assert_eq!(spec.tolerations, full.spec.and_then(|s| s.tolerations));
        let port = |c: &CachedContainer| {
            c.ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
                .collect::<Vec<_>>()
        };
        let names = |cs: &[CachedContainer]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&spec.containers), ["c"], "only containers with ports");
        assert_eq!(port(&spec.containers[0]), vec![("http".into(), 8080)]);
        let init = spec.init_containers.unwrap_or_default();
        assert_eq!(
            names(&init),
            ["side"],
            "only sidecars and containers with ports"
        );
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
        assert_eq!(port(&init[0]), vec![("metrics".into(), 9000)]);

        let status = kept.status.unwrap_or_default();
        let was = full.status.unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.conditions, was.conditions);
        assert_eq!(status.pod_ip, was.pod_ip);
        assert_eq!(status.pod_ips, was.pod_ips);
        assert_eq!(status.reason.as_deref(), Some("r"));
        assert_eq!(status.message.as_deref(), Some("m"));
        assert_eq!(status.start_time, was.start_time);
        let restarts = |cs: Option<Vec<CachedContainerStatus>>| {
            cs.unwrap_or_default()
                .into_iter()
                .map(|c| (c.name, c.ready, c.restart_count))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            restarts(status.container_statuses),
            vec![("c".into(), true, 3)]
        );
        assert_eq!(
            restarts(status.init_container_statuses),
            vec![("side".into(), true, 5)]
        );
        Ok(())
    }

    /// The lists a cached pod keeps carry no spare capacity (serde grows a decoded `Vec` to
    /// at least four elements).
    #[test]
    fn decoded_lists_have_no_spare_capacity() -> anyhow::Result<()> {
        let kept: CachedPod = serde_json::from_value(admitted())?;
        fn tight<T>(what: &str, v: Option<&Vec<T>>) {
            let v = v.map(|v| (v.len(), v.capacity()));
            assert!(
                v.is_some_and(|(len, cap)| len > 0 && len == cap),
                "{what}: {v:?}"
            );
        }
        let meta = &kept.metadata;
        tight("ownerReferences", meta.owner_references.as_ref());
        tight("finalizers", meta.finalizers.as_ref());
        let spec = kept.spec.as_ref();
        tight("tolerations", spec.and_then(|s| s.tolerations.as_ref()));
        tight("containers", spec.map(|s| &s.containers));
        tight(
            "initContainers",
            spec.and_then(|s| s.init_containers.as_ref()),
        );
        let status = kept.status.as_ref();
        tight("conditions", status.and_then(|s| s.conditions.as_ref()));
        tight("podIPs", status.and_then(|s| s.pod_ips.as_ref()));
        tight(
            "containerStatuses",
            status.and_then(|s| s.container_statuses.as_ref()),
        );
        tight(
            "initContainerStatuses",
            status.and_then(|s| s.init_container_statuses.as_ref()),
        );
        // A pod none of whose containers is kept holds no allocation for them.
        let mut plain = admitted();
        plain["spec"]["containers"] = serde_json::json!([{ "name": "plain", "image": "p:1" }]);
        let spec = serde_json::from_value::<CachedPod>(plain)?
            .spec
            .unwrap_or_default();
        assert_eq!(spec.containers.capacity(), 0);
        Ok(())
    }

    /// A pod without kept containers, without status, or without spec decodes without
    /// them, both ways.
    #[test]
    fn absent_parts_stay_absent() -> anyhow::Result<()> {
        let mut plain = admitted();
        plain["spec"]["containers"] = serde_json::json!([{ "name": "plain", "image": "p:1" }]);
        plain["spec"]
            .as_object_mut()
            .map(|s| s.remove("initContainers"));
        plain.as_object_mut().map(|o| o.remove("status"));
        let got = both_ways(plain.clone())?;
        assert!(got.status.is_none());
        let spec = got.spec.unwrap_or_default();
        assert!(spec.containers.is_empty() && spec.init_containers.is_none());
        assert_eq!(spec.node_name.as_deref(), Some("n1"));

        // Init containers present but none kept: an empty list, as the conversion gives.
        plain["spec"]["initContainers"] = serde_json::json!([{ "name": "i", "image": "i:1" }]);
        let spec = both_ways(plain.clone())?.spec.unwrap_or_default();
        assert_eq!(spec.init_containers, Some(vec![]));

        plain.as_object_mut().map(|o| o.remove("spec"));
        assert!(both_ways(plain)?.spec.is_none());
        Ok(())
    }
}
