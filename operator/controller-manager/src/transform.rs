//! What the shared informers keep of the pods they cache.
//!
//! A typed Pod is large: its containers carry image, env, volume mounts, probes and
//! resources, and admission adds a projected service-account volume to every pod. No
//! controller here reads any of that from the cache, yet it made up most of the memory of
//! the pod informer, which every pod in the cluster passes through. So the informers
//! decode pods as [`WirePod`], which has only the fields the controllers read (listed
//! there), and serde skips the rest while parsing rather than building it only for a
//! transform to drop it. Controllers never write a cached pod back (they patch, delete or
//! evict by name), so nothing dropped here can be lost on the server.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ContainerStatus, Pod, PodCondition, PodIP, PodSpec, PodStatus,
    Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::Deserialize;

/// The pod as the informers decode it from lists and watches, and (through `Pod::from`) as
/// the controllers read it:
///
/// - metadata: all of it but managedFields;
/// - spec: `nodeName` (pod GC, node lifecycle, taint eviction, endpoints, deletion ranking),
///   `hostname` and `subdomain` (endpoints), `tolerations` (taint eviction), and of the
///   containers and init containers only those that declare ports (named target ports of
///   Services) or are sidecars (`restartPolicy: Always`: their restarts count in deletion
///   ranking), each with just `name`, `ports` and `restartPolicy`. A container struct is
///   over a kilobyte even when empty, so the others are not kept at all: **the cached
///   `spec.containers` is not the pod's container list**, only what the controllers look
///   up in it;
/// - status: `phase`, `conditions`, `podIP(s)`, `reason`, `message`, `startTime`, and per
///   container status only `name`, `ready` and `restartCount`.
///
/// Everything else (containers with env, probes and mounts, the service-account volume,
/// managedFields) is skipped while parsing.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct WirePod {
    #[serde(default, deserialize_with = "without_managed_fields")]
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<WireSpec>,
    #[serde(default)]
    status: Option<WireStatus>,
}

/// `ObjectMeta` decoded through [`WireMeta`].
fn without_managed_fields<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
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
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
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

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    #[serde(default)]
    containers: Vec<WireContainer>,
    init_containers: Option<Vec<WireContainer>>,
    node_name: Option<String>,
    hostname: Option<String>,
    subdomain: Option<String>,
    tolerations: Option<Vec<Toleration>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainer {
    #[serde(default)]
    name: String,
    ports: Option<Vec<ContainerPort>>,
    restart_policy: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireStatus {
    phase: Option<String>,
    conditions: Option<Vec<PodCondition>>,
    #[serde(rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pod_ips: Option<Vec<PodIP>>,
    reason: Option<String>,
    message: Option<String>,
    start_time: Option<Time>,
    container_statuses: Option<Vec<WireContainerStatus>>,
    init_container_statuses: Option<Vec<WireContainerStatus>>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireContainerStatus {
    #[serde(default)]
    name: String,
    #[serde(default)]
    ready: bool,
    #[serde(default)]
    restart_count: i32,
}

impl From<WirePod> for Pod {
    fn from(w: WirePod) -> Self {
        let kept = |cs: Vec<WireContainer>| -> Vec<Container> {
            cs.into_iter()
                .filter(|c| {
                    c.ports.as_ref().is_some_and(|p| !p.is_empty())
                        || c.restart_policy.as_deref() == Some("Always")
                })
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    restart_policy: c.restart_policy,
                    ..Container::default()
                })
                .collect()
        };
        let statuses = |cs: Vec<WireContainerStatus>| -> Vec<ContainerStatus> {
            cs.into_iter()
                .map(|c| ContainerStatus {
                    name: c.name,
                    ready: c.ready,
                    restart_count: c.restart_count,
                    ..ContainerStatus::default()
                })
                .collect()
        };
        Pod {
            metadata: w.metadata,
            spec: w.spec.map(|s| PodSpec {
                containers: kept(s.containers),
                init_containers: s.init_containers.map(kept),
                node_name: s.node_name,
                hostname: s.hostname,
                subdomain: s.subdomain,
                tolerations: s.tolerations,
                ..PodSpec::default()
            }),
            status: w.status.map(|s| PodStatus {
                phase: s.phase,
                conditions: s.conditions,
                pod_ip: s.pod_ip,
                pod_ips: s.pod_ips,
                reason: s.reason,
                message: s.message,
                start_time: s.start_time,
                container_statuses: s.container_statuses.map(statuses),
                init_container_statuses: s.init_container_statuses.map(statuses),
                ..PodStatus::default()
            }),
        }
    }
}

/// The wire pod is listed and watched at the pods' own URLs; kube's watcher reads the
/// objects' resourceVersions through `Resource::meta`, before any conversion.
impl kube::Resource for WirePod {
    type DynamicType = ();
    type Scope = <Pod as kube::Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Pod::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        Pod::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        Pod::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        Pod::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod as the apiserver returns it after admission, with a sidecar, a named port and
    /// a running container.
    fn admitted() -> anyhow::Result<Pod> {
        Ok(serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "labels": { "app": "web" },
                "annotations": { "a": "b" },
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                    "uid": "rs1", "controller": true
                }],
                "deletionTimestamp": "2026-01-01T00:00:00Z"
            },
            "spec": {
                "nodeName": "n1", "hostname": "h", "subdomain": "s",
                "serviceAccountName": "default", "schedulerName": "default-scheduler",
                "tolerations": [{ "key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                  "effect": "NoExecute", "tolerationSeconds": 300 }],
                "initContainers": [{ "name": "side", "image": "side:1", "restartPolicy": "Always",
                                     "ports": [{ "name": "metrics", "containerPort": 9000 }] }],
                "containers": [{ "name": "plain", "image": "plain:1" }, {
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
                "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{ "type": "Ready", "status": "True",
                                 "lastTransitionTime": "2026-01-01T00:00:00Z" }],
                "containerStatuses": [{ "name": "c", "ready": true, "restartCount": 3,
                                        "image": "web:1", "imageID": "sha256:x",
                                        "state": { "running": { "startedAt": "2026-01-01T00:00:00Z" } } }],
                "initContainerStatuses": [{ "name": "side", "ready": true, "restartCount": 5,
                                            "image": "side:1", "imageID": "sha256:y" }]
            }
        }))?)
    }

    /// `pod` as the informers cache it: its JSON decoded as a [`WirePod`], then converted.
    fn cached(pod: &Pod) -> anyhow::Result<Pod> {
        Ok(Pod::from(serde_json::from_value::<WirePod>(
            serde_json::to_value(pod)?,
        )?))
    }

    #[test]
    fn keeps_what_controllers_read() -> anyhow::Result<()> {
        let full = admitted()?;
        let kept = cached(&full)?;
        assert_eq!(kept.metadata, full.metadata);
        let spec = kept.spec.unwrap_or_default();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.hostname.as_deref(), Some("h"));
        assert_eq!(spec.subdomain.as_deref(), Some("s"));
        assert_eq!(spec.tolerations.map(|t| t.len()), Some(1));
        let port = |c: &Container| {
            c.ports
                .iter()
                .flatten()
                .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            spec.containers.len(),
            1,
            "only containers with ports are kept"
        );
        assert_eq!(spec.containers[0].name, "c");
        assert_eq!(port(&spec.containers[0]), vec![("http".into(), 8080)]);
        let sidecar = &spec.init_containers.unwrap_or_default()[0];
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(port(sidecar), vec![("metrics".into(), 9000)]);

        let status = kept.status.unwrap_or_default();
        let was = full.status.unwrap_or_default();
        assert_eq!(status.phase.as_deref(), Some("Running"));
        assert_eq!(status.conditions, was.conditions);
        assert_eq!(status.pod_ip, was.pod_ip);
        assert_eq!(status.pod_ips, was.pod_ips);
        assert_eq!(status.start_time, was.start_time);
        let restarts = |cs: Option<Vec<ContainerStatus>>| {
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

    /// managedFields are skipped while decoding; the resourceVersion the watcher reads
    /// before any conversion is there; a pod without kept containers, status or spec
    /// decodes without them.
    #[test]
    fn wire_pod_drops_managed_fields_and_absent_parts() -> anyhow::Result<()> {
        let mut json = serde_json::to_value(admitted()?)?;
        json["metadata"]["managedFields"] = serde_json::json!([{
            "manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
            "fieldsType": "FieldsV1", "fieldsV1": { "f:metadata": { "f:labels": { ".": {} } } }
        }]);
        let full: Pod = serde_json::from_value(json.clone())?;
        assert!(full.metadata.managed_fields.is_some());
        let mut expected = full.metadata.clone();
        expected.managed_fields = None;
        let wire: WirePod = serde_json::from_value(json.clone())?;
        assert_eq!(
            kube::Resource::meta(&wire).resource_version.as_deref(),
            Some("7")
        );
        assert_eq!(Pod::from(wire).metadata, expected);

        // No containers kept, no status, no spec at all.
        let mut plain = json.clone();
        plain["spec"]["containers"] = serde_json::json!([{ "name": "plain", "image": "p:1" }]);
        plain["spec"]
            .as_object_mut()
            .map(|s| s.remove("initContainers"));
        plain.as_object_mut().map(|o| o.remove("status"));
        let got = Pod::from(serde_json::from_value::<WirePod>(plain.clone())?);
        assert!(got.status.is_none());
        let spec = got.spec.unwrap_or_default();
        assert!(spec.containers.is_empty() && spec.init_containers.is_none());
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        plain.as_object_mut().map(|o| o.remove("spec"));
        let got = Pod::from(serde_json::from_value::<WirePod>(plain)?);
        assert!(got.spec.is_none());
        Ok(())
    }

    #[test]
    fn drops_what_no_controller_reads() -> anyhow::Result<()> {
        let kept = cached(&admitted()?)?;
        let spec = kept.spec.unwrap_or_default();
        assert!(spec.volumes.is_none());
        assert!(spec.service_account_name.is_none());
        assert!(spec.scheduler_name.is_none());
        assert!(spec.containers.iter().all(|c| c.name != "plain"));
        let c = &spec.containers[0];
        assert!(c.image.is_none() && c.env.is_none() && c.volume_mounts.is_none());
        // A pod none of whose containers has ports or is a sidecar keeps none.
        let mut plain = admitted()?;
        if let Some(s) = plain.spec.as_mut() {
            s.containers.retain(|c| c.name == "plain");
            s.init_containers = None;
        }
        let spec = cached(&plain)?.spec.unwrap_or_default();
        assert!(spec.containers.is_empty() && spec.init_containers.is_none());
        let status = kept.status.unwrap_or_default();
        assert!(status.host_ip.is_none() && status.qos_class.is_none());
        let cs = &status.container_statuses.unwrap_or_default()[0];
        assert!(cs.image.is_empty() && cs.image_id.is_empty() && cs.state.is_none());
        Ok(())
    }
}
