//! Pod and Service helpers shared by `endpointslice-controller` and `endpoints-controller`:
//! upstream's `k8s.io/endpointslice/util` (and `FindPort` from `k8s.io/endpointslice`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use crate::transform::CachedPod;
use ferrokube_runtime::informer::{Notification, ObjectKey, Store};
use k8s_openapi::api::core::v1::{Service, ServicePort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;

/// `endpoints.kubernetes.io/last-change-trigger-time` (`v1.EndpointsLastChangeTriggerTime`).
pub const ANNOTATION_LAST_CHANGE_TRIGGER_TIME: &str =
    "endpoints.kubernetes.io/last-change-trigger-time";
/// `service.kubernetes.io/headless` (`v1.IsHeadlessService`).
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// `spec.clusterIP` of a headless Service.
pub const CLUSTER_IP_NONE: &str = "None";

/// Whether the pod's `Ready` condition is `True` (`podutil.IsPodReady`).
pub fn is_pod_ready(pod: &CachedPod) -> bool {
    ready_condition(pod).is_some_and(|c| c.status == "True")
}

fn ready_condition(pod: &CachedPod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
}

/// Whether the pod has a deletion timestamp (it is terminating).
pub fn is_terminating(pod: &CachedPod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

fn is_terminal(pod: &CachedPod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pod's IPs as listed in `status.podIPs`.
pub fn pod_ips(pod: &CachedPod) -> Vec<&str> {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.as_str()).collect())
        .unwrap_or_default()
}

/// `ShouldPodBeInEndpoints`: not terminal, has an IP, and (unless `include_terminating`)
/// not being deleted.
pub fn should_pod_be_in_endpoints(pod: &CachedPod, include_terminating: bool) -> bool {
    if is_terminal(pod) {
        return false;
    }
    let status = pod.status.as_ref();
    let has_ip = status
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty())
        || status
            .and_then(|s| s.pod_ips.as_ref())
            .is_some_and(|ips| !ips.is_empty());
    if !has_ip {
        return false;
    }
    include_terminating || !is_terminating(pod)
}

fn hostname(pod: &CachedPod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.hostname.as_deref())
        .unwrap_or_default()
}

fn subdomain(pod: &CachedPod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.subdomain.as_deref())
        .unwrap_or_default()
}

/// `ShouldSetHostname`: the pod names a hostname and the Service as its subdomain (the DNS
/// records of headless Services with `pod.spec.subdomain`).
pub fn should_set_hostname(pod: &CachedPod, svc: &Service) -> bool {
    !hostname(pod).is_empty()
        && Some(subdomain(pod)) == svc.metadata.name.as_deref()
        && svc.metadata.namespace == pod.metadata.namespace
}

/// The pod's `spec.hostname`, when [`should_set_hostname`] holds.
pub fn hostname_for(pod: &CachedPod, svc: &Service) -> Option<String> {
    should_set_hostname(pod, svc).then(|| hostname(pod).to_string())
}

/// `spec.nodeName`, when set.
pub fn node_name(pod: &CachedPod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The protocol of a Service port; the API defaults it to TCP.
pub fn port_protocol(p: &ServicePort) -> &str {
    p.protocol.as_deref().unwrap_or("TCP")
}

/// Why [`find_port`] found nothing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no suitable port for manifest: {uid}")]
pub struct NoSuitablePort {
    /// The pod's UID (upstream's message names it).
    pub uid: String,
}

/// `FindPort`: the container port a Service port targets in this pod. A numeric (or
/// absent, which the API defaults to `port`) targetPort is taken as is; a named one is
/// looked up among the containers' ports (and restartable init containers', the sidecars)
/// with the same name and protocol.
pub fn find_port(pod: &CachedPod, svc_port: &ServicePort) -> Result<i32, NoSuitablePort> {
    let protocol = port_protocol(svc_port);
    match &svc_port.target_port {
        None => return Ok(svc_port.port),
        Some(IntOrString::Int(n)) => return Ok(*n),
        Some(IntOrString::String(name)) => {
            if let Some(spec) = &pod.spec {
                let sidecars = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .filter(|c| c.restart_policy.as_deref() == Some("Always"));
                for c in spec.containers.iter().chain(sidecars) {
                    for p in c.ports.iter().flatten() {
                        if p.name.as_deref() == Some(name.as_str())
                            && p.protocol.as_deref().unwrap_or("TCP") == protocol
                        {
                            return Ok(p.container_port);
                        }
                    }
                }
            }
        }
    }
    Err(NoSuitablePort {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    })
}

/// Parses an IP as `utilnet.ParseIPSloppy` does (IPv4 octets with leading zeros are
/// decimal), so that addresses are written in canonical form.
pub fn parse_ip_sloppy(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if s.contains(':') {
        return None;
    }
    let octets: Vec<u8> = s
        .split('.')
        .map(|o| o.parse::<u8>().ok())
        .collect::<Option<_>>()?;
    let o: [u8; 4] = octets.try_into().ok()?;
    Some(IpAddr::from(o))
}

/// Whether a selector (a Service's `spec.selector`) selects these labels. An absent or empty
/// selector selects nothing here: the API never stores an empty selector, and such Services
/// are left to the mirroring controller.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
}

/// The Service's selector if it selects pods at all.
pub fn service_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
}

/// Whether the Service is headless (`!helper.IsServiceIPSet`).
pub fn is_service_ip_set(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty() && ip != CLUSTER_IP_NONE)
}

/// Whether the Service is of type ExternalName (no endpoints).
pub fn is_external_name(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
}

/// `spec.publishNotReadyAddresses`.
pub fn publish_not_ready_addresses(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false)
}

/// The pod's changes that matter to endpoints (`podEndpointsChanged`):
/// `(pod_changed, labels_changed)`.
fn pod_endpoints_changed(old: &CachedPod, new: &CachedPod) -> (bool, bool) {
    let labels_changed = old.metadata.labels != new.metadata.labels
        || hostname(old) != hostname(new)
        || subdomain(old) != subdomain(new);
    let pod_changed = old.metadata.deletion_timestamp != new.metadata.deletion_timestamp
        || is_pod_ready(old) != is_pod_ready(new)
        || pod_ips(old) != pod_ips(new);
    // Name, namespace and UID are immutable, and nodeName is set before the pod gets an IP.
    (pod_changed, labels_changed)
}

fn services_for_labels(
    services: &Store<Service>,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> BTreeSet<ObjectKey> {
    services
        .list_in(namespace)
        .iter()
        .filter(|svc| {
            service_selector(svc).is_some_and(|selector| selector_matches(selector, labels))
        })
        .map(|svc| ObjectKey::of(&**svc))
        .collect()
}

/// The Services to resync for a pod event (`GetPodUpdateProjectionKey` +
/// `GetServicesToUpdate`): those selecting the pod now and, when its labels changed, those
/// that selected it before (all of them if the pod changed too, else only the ones whose
/// membership flipped).
pub fn services_to_update(
    services: &Store<Service>,
    n: &Notification<CachedPod>,
) -> Vec<ObjectKey> {
    let (old, new) = match n {
        Notification::Added(p) | Notification::Deleted(p) => {
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            return services_for_labels(services, ns, p.metadata.labels.as_ref())
                .into_iter()
                .collect();
        }
        Notification::Updated { old, new } => (old, new),
    };
    // A resync: nothing about the pod changed.
    if old.metadata.resource_version.is_some()
        && old.metadata.resource_version == new.metadata.resource_version
    {
        return vec![];
    }
    let (pod_changed, labels_changed) = pod_endpoints_changed(old, new);
    if !pod_changed && !labels_changed {
        return vec![];
    }
    let ns = new.metadata.namespace.as_deref().unwrap_or_default();
    let now = services_for_labels(services, ns, new.metadata.labels.as_ref());
    if !labels_changed {
        return now.into_iter().collect();
    }
    let before = services_for_labels(services, ns, old.metadata.labels.as_ref());
    if pod_changed {
        now.union(&before).cloned().collect()
    } else {
        now.symmetric_difference(&before).cloned().collect()
    }
}

/// Formats a time as Go's `time.RFC3339Nano` in UTC (trailing fractional zeros trimmed).
pub fn format_rfc3339_nano(t: Timestamp) -> String {
    // jiff's default Display is RFC 3339 in UTC with the shortest exact fraction.
    t.to_string()
}

#[derive(Default)]
struct ServiceState {
    last_service_trigger_time: Option<Timestamp>,
    last_pod_trigger_times: HashMap<String, Timestamp>,
}

/// `TriggerTimeTracker`: computes the `last-change-trigger-time` annotation, the time of the
/// earliest change (pod readiness transition or Service creation) not yet reflected in the
/// Service's endpoints. Its value feeds the apiserver-side network programming latency SLI.
#[derive(Default)]
pub struct TriggerTimeTracker {
    states: Mutex<HashMap<ObjectKey, ServiceState>>,
}

fn pod_trigger_time(pod: &CachedPod) -> Option<Timestamp> {
    ready_condition(pod)?
        .last_transition_time
        .as_ref()
        .map(|t| t.0)
}

fn earliest(current: Option<Timestamp>, t: Timestamp) -> Option<Timestamp> {
    Some(current.map_or(t, |c| c.min(t)))
}

impl TriggerTimeTracker {
    /// `ComputeEndpointLastChangeTriggerTime`: `None` means "no new trigger; clear the
    /// annotation".
    pub fn compute(&self, service: &Service, pods: &[&CachedPod]) -> Option<Timestamp> {
        let key = ObjectKey::of(service);
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let was_known = states.contains_key(&key);
        let state = states.entry(key).or_default();
        let mut min_changed = None;
        let mut pod_times = HashMap::new();
        for pod in pods {
            if let Some(t) = pod_trigger_time(pod) {
                let name = pod.metadata.name.clone().unwrap_or_default();
                if state
                    .last_pod_trigger_times
                    .get(&name)
                    .is_none_or(|last| t > *last)
                {
                    min_changed = earliest(min_changed, t);
                }
                pod_times.insert(name, t);
            }
        }
        let service_time = service.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if let Some(t) = service_time
            && state.last_service_trigger_time.is_none_or(|last| t > last)
        {
            min_changed = earliest(min_changed, t);
        }
        state.last_pod_trigger_times = pod_times;
        state.last_service_trigger_time = service_time;
        if !was_known {
            // The first sync of a Service: its creation is the trigger.
            return service_time;
        }
        min_changed
    }

    /// Forgets a deleted Service.
    pub fn delete_service(&self, key: &ObjectKey) {
        self.states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::{CachedContainer, CachedPodStatus};
    use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodSpec};

    fn pod_with_ports(ports: &[(&str, i32, &str)]) -> CachedPod {
        Pod {
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(
                        ports
                            .iter()
                            .map(|(n, p, proto)| ContainerPort {
                                name: Some((*n).into()),
                                container_port: *p,
                                protocol: Some((*proto).into()),
                                ..ContainerPort::default()
                            })
                            .collect(),
                    ),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
        .into()
    }

    fn svc_port(target: IntOrString, proto: &str) -> ServicePort {
        ServicePort {
            port: 80,
            target_port: Some(target),
            protocol: Some(proto.into()),
            ..ServicePort::default()
        }
    }

    #[test]
    fn find_port_resolves_names_per_pod_and_protocol() {
        let pod = pod_with_ports(&[("http", 8080, "TCP"), ("dns", 53, "UDP")]);
        assert_eq!(
            find_port(&pod, &svc_port(IntOrString::String("http".into()), "TCP")),
            Ok(8080)
        );
        assert_eq!(
            find_port(&pod, &svc_port(IntOrString::String("dns".into()), "UDP")),
            Ok(53)
        );
        // Same name, wrong protocol: no port.
        assert!(find_port(&pod, &svc_port(IntOrString::String("dns".into()), "TCP")).is_err());
        assert!(find_port(&pod, &svc_port(IntOrString::String("nope".into()), "TCP")).is_err());
        assert_eq!(
            find_port(&pod, &svc_port(IntOrString::Int(9000), "TCP")),
            Ok(9000)
        );
        let mut sidecar = pod_with_ports(&[]);
        if let Some(spec) = sidecar.spec.as_mut() {
            spec.init_containers = Some(vec![CachedContainer {
                name: "side".into(),
                restart_policy: Some("Always".into()),
                ports: Some(vec![ContainerPort {
                    name: Some("metrics".into()),
                    container_port: 9090,
                    ..ContainerPort::default()
                }]),
            }]);
        }
        assert_eq!(
            find_port(
                &sidecar,
                &svc_port(IntOrString::String("metrics".into()), "TCP")
            ),
            Ok(9090)
        );
    }

    #[test]
    fn pods_in_endpoints() {
        let mut pod = CachedPod::default();
        assert!(!should_pod_be_in_endpoints(&pod, true), "no IP");
        pod.status = Some(CachedPodStatus {
            pod_ip: Some("10.0.0.1".into()),
            phase: Some("Running".into()),
            ..CachedPodStatus::default()
        });
        assert!(should_pod_be_in_endpoints(&pod, false));
        pod.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH),
        );
        assert!(!should_pod_be_in_endpoints(&pod, false));
        assert!(should_pod_be_in_endpoints(&pod, true));
        if let Some(s) = pod.status.as_mut() {
            s.phase = Some("Succeeded".into());
        }
        assert!(!should_pod_be_in_endpoints(&pod, true), "terminal");
    }

    #[test]
    fn sloppy_ips_and_go_time_format() {
        assert_eq!(
            parse_ip_sloppy("010.000.0.1").map(|i| i.to_string()),
            Some("10.0.0.1".into())
        );
        assert_eq!(
            parse_ip_sloppy("fd00:0::1").map(|i| i.to_string()),
            Some("fd00::1".into())
        );
        assert_eq!(parse_ip_sloppy("nonsense"), None);
        let t: Timestamp = "2024-06-19T15:22:45Z".parse().expect("time");
        assert_eq!(format_rfc3339_nano(t), "2024-06-19T15:22:45Z");
        let t: Timestamp = "2024-06-19T15:22:45.120Z".parse().expect("time");
        assert_eq!(format_rfc3339_nano(t), "2024-06-19T15:22:45.12Z");
    }

    #[test]
    fn selectors() {
        let sel: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        let labels: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("x".to_string(), "y".to_string()),
        ]
        .into();
        assert!(selector_matches(&sel, Some(&labels)));
        assert!(!selector_matches(&sel, None));
        assert!(!selector_matches(&BTreeMap::new(), Some(&labels)));
    }
}
