//! `endpoints-controller`: the legacy core/v1 Endpoints object of every Service with a
//! selector (upstream's `pkg/controller/endpoint`).
//!
//! ```text
//!   Service events ─┐
//!   Pod events ─────┼─▶ queue "endpoint" ──▶ sync: pods ──▶ one subset per (pod, port)
//!   Endpoints deleted ┘                          ──▶ RepackSubsets (group pods by port set)
//!                                                ──▶ truncate at 1000 addresses
//!                                                ──▶ create / update (skipped when equal)
//! ```
//!
//! Ready pods go to `addresses`, others to `notReadyAddresses` (all to `addresses` with
//! `publishNotReadyAddresses`); terminating pods are left out unless not-ready addresses
//! are published. The Endpoints of a deleted Service is deleted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::transform::CachedPod;
use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers};
use ferrokube_runtime::events::{self, EventType, Recorder};
use ferrokube_runtime::informer::{Notification, ObjectKey, Store};
use ferrokube_runtime::workqueue::WorkQueue;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Service,
};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use tokio::task::JoinSet;

use super::StartError;
use super::endpointslice::forward;
use super::endpointslice::util::{
    self, ANNOTATION_LAST_CHANGE_TRIGGER_TIME, LABEL_HEADLESS, TriggerTimeTracker,
};
use crate::context::Context;

/// `maxCapacity`: addresses an Endpoints object holds before it is truncated.
pub const MAX_CAPACITY: usize = 1000;
/// `v1.EndpointsOverCapacity`.
pub const ANNOTATION_OVER_CAPACITY: &str = "endpoints.kubernetes.io/over-capacity";
/// `LabelManagedBy`.
pub const LABEL_MANAGED_BY: &str = "endpoints.kubernetes.io/managed-by";
/// `ControllerName`, the managed-by label's value.
pub const CONTROLLER_NAME: &str = "endpoint-controller";
/// `resourcelock.LeaderElectionRecordAnnotationKey`: Endpoints used as (old-style) locks.
const LEADER_ANNOTATION: &str = "control-plane.alpha.kubernetes.io/leader";
/// The name events are reported as.
const NAME: &str = "endpoints-controller";
/// How soon a sync that found the cache behind this controller's writes looks again.
const STALE_CACHE_RETRY: Duration = Duration::from_millis(200);

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A write failed.
    #[error("failed to {0} endpoints {1}: {2}")]
    Write(&'static str, ObjectKey, #[source] kube::Error),
}

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let pods = ctx.informers.informer::<CachedPod>();
    let services = ctx.informers.informer::<Service>();
    let endpoints = ctx.informers.informer::<Endpoints>();
    let queue: WorkQueue<ObjectKey> = WorkQueue::new("endpoint", &ctx.metrics);
    let batch = ctx.options.endpoint_updates_batch_period;

    forward(tasks, services.subscribe(), &ctx.shutdown, {
        let queue = queue.clone();
        move |n: Notification<Service>| queue.add(ObjectKey::of(&**n.object()))
    });
    forward(tasks, pods.subscribe(), &ctx.shutdown, {
        let (queue, services) = (queue.clone(), services.store());
        move |n: Notification<CachedPod>| {
            for key in util::services_to_update(&services, &n) {
                queue.add_after(key, batch);
            }
        }
    });
    forward(tasks, endpoints.subscribe(), &ctx.shutdown, {
        let queue = queue.clone();
        move |n: Notification<Endpoints>| {
            if let Notification::Deleted(ep) = n {
                queue.add(ObjectKey::of(&*ep));
            }
        }
    });

    let sync = Sync {
        client: ctx.client.clone(),
        services: services.store(),
        pods: pods.store(),
        endpoints: endpoints.store(),
        stale: Arc::new(Mutex::new(BTreeMap::new())),
        triggers: Arc::new(TriggerTimeTracker::default()),
        recorder: ctx.recorder(NAME, tasks),
    };
    let workers = Workers::new(NAME, ctx.options.concurrent_endpoint_syncs);
    let stores = (pods.store(), services.store(), endpoints.store());
    let leftovers = queue.clone();
    let ready = async move {
        stores.0.wait_synced().await;
        stores.1.wait_synced().await;
        stores.2.wait_synced().await;
        // `checkLeftoverEndpoints`: Endpoints whose Service was deleted while no controller
        // ran are found by syncing every Endpoints once.
        for ep in stores.2.list() {
            let lock = ep
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(LEADER_ANNOTATION));
            if !lock {
                leftovers.add(ObjectKey::of(&*ep));
            }
        }
    };
    workers.spawn_when(
        tasks,
        ready,
        queue,
        ctx.shutdown.clone(),
        move |key: ObjectKey| {
            let sync = sync.clone();
            async move { sync.service(&key).await }
        },
    );
    Ok(())
}

#[derive(Clone)]
struct Sync {
    client: kube::Client,
    services: Store<Service>,
    pods: Store<CachedPod>,
    endpoints: Store<Endpoints>,
    /// `staleEndpointsTracker`: the resourceVersion each Endpoints had when we last
    /// replaced it; seeing it again in the cache means the cache is behind.
    stale: Arc<Mutex<BTreeMap<ObjectKey, String>>>,
    triggers: Arc<TriggerTimeTracker>,
    recorder: Recorder,
}

impl Sync {
    fn is_stale(&self, key: &ObjectKey, ep: &Endpoints) -> bool {
        let stale = self.stale.lock().unwrap_or_else(PoisonError::into_inner);
        stale
            .get(key)
            .is_some_and(|rv| ep.metadata.resource_version.as_ref() == Some(rv))
    }

    /// `syncService`.
    async fn service(&self, key: &ObjectKey) -> Result<Action, Error> {
        let api: Api<Endpoints> = Api::namespaced(self.client.clone(), &key.namespace);
        let Some(svc) = self.services.get_key(key) else {
            // The Service is gone: so is its Endpoints (whoever wrote it), as upstream.
            match api.delete(&key.name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(e) if apierrors::is_not_found(&e) => {}
                Err(e) => return Err(Error::Write("delete", key.clone(), e)),
            }
            self.triggers.delete_service(key);
            self.stale
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(key);
            return Ok(Action::Done);
        };
        if util::is_external_name(&svc) {
            return Ok(Action::Done);
        }
        let Some(selector) = util::service_selector(&svc) else {
            return Ok(Action::Done);
        };
        let pods = self.pods.filter(|p| {
            p.metadata.namespace.as_deref() == Some(key.namespace.as_str())
                && util::selector_matches(selector, p.metadata.labels.as_ref())
        });
        let pod_refs: Vec<&CachedPod> = pods.iter().map(|p| &**p).collect();
        let trigger = self.triggers.compute(&svc, &pod_refs);
        let subsets = repack_subsets(&desired_subsets(&svc, &pod_refs));

        let current = self.endpoints.get_key(key);
        if let Some(cur) = &current
            && self.is_stale(key, cur)
        {
            // Our own last write has not come back through the informer yet. Upstream
            // fails the sync and so grows the key's backoff; a burst of pod events then
            // leaves the Endpoints stale for minutes after the cache caught up. The cache
            // is behind by moments: look again shortly, without a failure.
            tracing::debug!(
                service = %key,
                resource_version = cur.metadata.resource_version.as_deref().unwrap_or_default(),
                "Endpoints informer cache is out of date; retrying shortly"
            );
            return Ok(Action::RequeueAfter(STALE_CACHE_RETRY));
        }
        let svc_labels = svc.metadata.labels.clone().unwrap_or_default();
        if let Some(cur) = &current {
            let cur_subsets = cur.subsets.clone().unwrap_or_default();
            let equal = normalize(&cur_subsets) == normalize(&subsets)
                || normalize(&repack_subsets(&cur_subsets)) == normalize(&subsets);
            if equal
                && labels_correct(cur.metadata.labels.as_ref(), &svc_labels)
                && capacity_annotation_set_correctly(cur)
            {
                return Ok(Action::Done);
            }
        }

        let mut new = current.as_deref().cloned().unwrap_or_else(|| Endpoints {
            metadata: ObjectMeta {
                name: Some(key.name.clone()),
                namespace: Some(key.namespace.clone()),
                ..ObjectMeta::default()
            },
            ..Endpoints::default()
        });
        new.subsets = Some(subsets);
        let annotations = new.metadata.annotations.get_or_insert_with(BTreeMap::new);
        match trigger {
            Some(t) => {
                annotations.insert(
                    ANNOTATION_LAST_CHANGE_TRIGGER_TIME.into(),
                    util::format_rfc3339_nano(t),
                );
            }
            None => {
                annotations.remove(ANNOTATION_LAST_CHANGE_TRIGGER_TIME);
            }
        }
        if truncate_endpoints(&mut new) {
            new.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(ANNOTATION_OVER_CAPACITY.into(), "truncated".into());
        } else if let Some(a) = new.metadata.annotations.as_mut() {
            a.remove(ANNOTATION_OVER_CAPACITY);
        }
        let mut labels = svc_labels;
        if util::is_service_ip_set(&svc) {
            labels.remove(LABEL_HEADLESS);
        } else {
            labels.insert(LABEL_HEADLESS.into(), String::new());
        }
        labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
        new.metadata.labels = Some(labels);

        let result = match &current {
            None => api.create(&PostParams::default(), &new).await,
            Some(_) => api.replace(&key.name, &PostParams::default(), &new).await,
        };
        match result {
            Ok(written) => {
                if let Some(cur) = &current
                    && written.metadata.resource_version != cur.metadata.resource_version
                    && let Some(rv) = cur.metadata.resource_version.clone()
                {
                    self.stale
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(key.clone(), rv);
                }
                Ok(Action::Done)
            }
            Err(e) if current.is_none() && apierrors::is_namespace_terminating(&e) => {
                Ok(Action::Done)
            }
            // Created by our previous sync, not in the cache yet: the same lag as above.
            Err(e) if current.is_none() && apierrors::is_already_exists(&e) => {
                tracing::debug!(service = %key, "Endpoints exists but is not cached yet; retrying shortly");
                Ok(Action::RequeueAfter(STALE_CACHE_RETRY))
            }
            Err(e) => {
                let (reason, verb, note) = if current.is_none() {
                    (
                        "FailedToCreateEndpoint",
                        "create",
                        format!(
                            "Failed to create endpoint for service {}/{}: {e}",
                            key.namespace, key.name
                        ),
                    )
                } else {
                    (
                        "FailedToUpdateEndpoint",
                        "update",
                        format!(
                            "Failed to update endpoint {}/{}: {e}",
                            key.namespace, key.name
                        ),
                    )
                };
                self.recorder.publish(
                    events::reference(&*svc),
                    EventType::Warning,
                    reason,
                    "UpdateEndpoints",
                    note,
                );
                Err(Error::Write(verb, key.clone(), e))
            }
        }
    }
}

/// `podToEndpointAddressForService`: the pod's IP of the Service's (first) family.
fn endpoint_address(svc: &Service, pod: &CachedPod) -> Option<EndpointAddress> {
    let spec = svc.spec.as_ref();
    let want_v6 = if let Some(f) = spec
        .and_then(|s| s.ip_families.as_ref())
        .and_then(|f| f.first())
    {
        f == "IPv6"
    } else if util::is_service_ip_set(svc) {
        spec.and_then(|s| s.cluster_ip.as_deref())
            .is_some_and(|ip| ip.contains(':'))
    } else {
        pod.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .is_some_and(|ip| ip.contains(':'))
    };
    let ip = util::pod_ips(pod)
        .into_iter()
        .filter_map(util::parse_ip_sloppy)
        .find(|ip| ip.is_ipv6() == want_v6)?;
    Some(EndpointAddress {
        ip: ip.to_string(),
        // Upstream points at spec.nodeName even when empty, which validation refuses; a pod
        // with an IP has a node, so leaving an empty one out only avoids that failure.
        node_name: util::node_name(pod).map(str::to_string),
        hostname: util::hostname_for(pod, svc),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
    })
}

/// One subset per pod and resolved port, before repacking (the loop of `syncService` and
/// `addEndpointSubset`).
pub fn desired_subsets(svc: &Service, pods: &[&CachedPod]) -> Vec<EndpointSubset> {
    let tolerate_unready = util::publish_not_ready_addresses(svc);
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let headless = !util::is_service_ip_set(svc)
        && svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some(util::CLUSTER_IP_NONE);
    let mut subsets = Vec::new();
    for pod in pods {
        if !util::should_pod_be_in_endpoints(pod, tolerate_unready) {
            continue;
        }
        let Some(addr) = endpoint_address(svc, pod) else {
            tracing::debug!(service = ?svc.metadata.name, pod = ?pod.metadata.name, "no pod IP of the service's family");
            continue;
        };
        let ready = tolerate_unready || util::is_pod_ready(pod);
        let subset = |ports: Option<Vec<EndpointPort>>| {
            let addrs = Some(vec![addr.clone()]);
            if ready {
                EndpointSubset {
                    addresses: addrs,
                    not_ready_addresses: None,
                    ports,
                }
            } else {
                EndpointSubset {
                    addresses: None,
                    not_ready_addresses: addrs,
                    ports,
                }
            }
        };
        if ports.is_empty() {
            // A headless Service without ports still lists its pods' addresses.
            if headless {
                subsets.push(subset(None));
            }
            continue;
        }
        for sp in &ports {
            match util::find_port(pod, sp) {
                Ok(port) => subsets.push(subset(Some(vec![EndpointPort {
                    name: sp.name.clone(),
                    port,
                    protocol: Some(util::port_protocol(sp).to_string()),
                    app_protocol: sp.app_protocol.clone(),
                }]))),
                Err(e) => {
                    tracing::debug!(service = ?svc.metadata.name, error = %e, "failed to find port for service")
                }
            }
        }
    }
    subsets
}

type AddrKey = (String, String);
type PortKey = (Option<String>, i32, Option<String>, Option<String>);

fn addr_key(a: &EndpointAddress) -> AddrKey {
    (
        a.ip.clone(),
        a.target_ref
            .as_ref()
            .and_then(|r| r.uid.clone())
            .unwrap_or_default(),
    )
}

fn port_key(p: &EndpointPort) -> PortKey {
    (
        p.name.clone(),
        p.port,
        p.protocol.clone(),
        p.app_protocol.clone(),
    )
}

/// `RepackSubsets`: one subset per distinct set of addresses, carrying every port those
/// addresses share. An address not ready on any port is not ready on all of them.
pub fn repack_subsets(subsets: &[EndpointSubset]) -> Vec<EndpointSubset> {
    // The sentinel for "no ports" (headless without ports).
    const NO_PORT: PortKey = (None, -1, None, None);
    let mut all: BTreeMap<AddrKey, EndpointAddress> = BTreeMap::new();
    let mut by_port: BTreeMap<PortKey, (EndpointPort, BTreeMap<AddrKey, bool>)> = BTreeMap::new();
    for s in subsets {
        let ports: Vec<(PortKey, EndpointPort)> = match s.ports.as_deref() {
            Some(p) if !p.is_empty() => p.iter().map(|p| (port_key(p), p.clone())).collect(),
            _ => vec![(
                NO_PORT,
                EndpointPort {
                    port: -1,
                    ..EndpointPort::default()
                },
            )],
        };
        for (pk, port) in ports {
            let ready = s.addresses.iter().flatten().map(|a| (a, true));
            let not_ready = s.not_ready_addresses.iter().flatten().map(|a| (a, false));
            for (addr, is_ready) in ready.chain(not_ready) {
                let k = addr_key(addr);
                all.entry(k.clone()).or_insert_with(|| addr.clone());
                let set = &mut by_port
                    .entry(pk.clone())
                    .or_insert_with(|| (port.clone(), BTreeMap::new()))
                    .1;
                match set.get_mut(&k) {
                    None => {
                        set.insert(k, is_ready);
                    }
                    Some(was) if *was => *was = is_ready,
                    Some(_) => {}
                }
            }
        }
    }
    let mut groups: BTreeMap<Vec<(AddrKey, bool)>, Vec<EndpointPort>> = BTreeMap::new();
    for (pk, (port, addrs)) in by_port {
        let key: Vec<(AddrKey, bool)> = addrs.into_iter().collect();
        let ports = groups.entry(key).or_default();
        if pk != NO_PORT {
            ports.push(port);
        }
    }
    let mut out: Vec<EndpointSubset> = groups
        .into_iter()
        .map(|(addrs, mut ports)| {
            let mut ready = Vec::new();
            let mut not_ready = Vec::new();
            for (k, r) in addrs {
                if let Some(a) = all.get(&k) {
                    if r {
                        ready.push(a.clone())
                    } else {
                        not_ready.push(a.clone())
                    }
                }
            }
            ports.sort_by_key(port_key);
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    // `SortSubsets`: addresses by IP then UID (done by the map order), subsets canonically.
    out.sort_by_cached_key(|s| serde_json::to_string(s).unwrap_or_default());
    out
}

/// Subsets as compared for "nothing changed": empty lists as absent, targetRef
/// resourceVersions ignored.
fn normalize(subsets: &[EndpointSubset]) -> Vec<EndpointSubset> {
    let fix = |v: &Option<Vec<EndpointAddress>>| {
        v.as_ref().filter(|v| !v.is_empty()).map(|v| {
            v.iter()
                .cloned()
                .map(|mut a| {
                    if let Some(r) = a.target_ref.as_mut() {
                        r.resource_version = None;
                    }
                    a
                })
                .collect()
        })
    };
    subsets
        .iter()
        .map(|s| EndpointSubset {
            addresses: fix(&s.addresses),
            not_ready_addresses: fix(&s.not_ready_addresses),
            ports: s.ports.clone().filter(|p| !p.is_empty()),
        })
        .collect()
}

/// `labelsCorrectForEndpoints`: ours plus exactly the Service's.
fn labels_correct(ep: Option<&BTreeMap<String, String>>, svc: &BTreeMap<String, String>) -> bool {
    let Some(ep) = ep else { return false };
    if ep.get(LABEL_MANAGED_BY).map(String::as_str) != Some(CONTROLLER_NAME) {
        return false;
    }
    let mut skipped = 0;
    for (k, v) in ep {
        if k == LABEL_HEADLESS || k == LABEL_MANAGED_BY {
            skipped += 1;
        } else if svc.get(k) != Some(v) {
            return false;
        }
    }
    svc.len() == ep.len() - skipped
}

fn count(subsets: &[EndpointSubset]) -> (usize, usize) {
    subsets.iter().fold((0, 0), |(r, n), s| {
        (
            r + s.addresses.as_ref().map_or(0, Vec::len),
            n + s.not_ready_addresses.as_ref().map_or(0, Vec::len),
        )
    })
}

/// `capacityAnnotationSetCorrectly`: the object is within capacity and not annotated.
fn capacity_annotation_set_correctly(ep: &Endpoints) -> bool {
    let (r, n) = count(ep.subsets.as_deref().unwrap_or_default());
    if r + n > MAX_CAPACITY {
        return false;
    }
    !ep.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_OVER_CAPACITY))
}

/// `truncateEndpoints`: keeps at most [`MAX_CAPACITY`] addresses, ready ones first, taking
/// from each subset in proportion to its size. `true` when something was cut.
pub fn truncate_endpoints(ep: &mut Endpoints) -> bool {
    let subsets = ep.subsets.get_or_insert_with(Vec::new);
    let (total_ready, total_not_ready) = count(subsets);
    if total_ready + total_not_ready <= MAX_CAPACITY {
        return false;
    }
    let truncate_ready = total_ready > MAX_CAPACITY;
    let (max, num_total) = if truncate_ready {
        (MAX_CAPACITY, total_ready)
    } else {
        (MAX_CAPACITY - total_ready, total_not_ready)
    };
    let mut can_be_added = max;
    for s in subsets.iter_mut() {
        let list = if truncate_ready {
            &mut s.addresses
        } else {
            &mut s.not_ready_addresses
        };
        let in_subset = list.as_ref().map_or(0, Vec::len);
        // Same float arithmetic as upstream, so both cut the same addresses.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let to_be_added = ((in_subset as f64 / num_total as f64) * max as f64).ceil() as usize;
        let to_be_added = to_be_added.min(can_be_added);
        if let Some(l) = list.as_mut() {
            l.truncate(to_be_added);
        }
        can_be_added -= list.as_ref().map_or(0, Vec::len);
        if truncate_ready {
            s.not_ready_addresses = None;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, Pod, PodCondition, PodIP, PodSpec, PodStatus, ServicePort,
        ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn svc(ports: Vec<ServicePort>, cluster_ip: &str) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(cluster_ip.into()),
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn sport(name: &str, target: IntOrString) -> ServicePort {
        ServicePort {
            name: Some(name.into()),
            port: 80,
            target_port: Some(target),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        }
    }

    fn pod(i: usize, ready: bool, http: Option<i32>) -> CachedPod {
        let ip = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p{i}")),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{i:05}")),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: http.map(|p| {
                        vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: p,
                            ..ContainerPort::default()
                        }]
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                pod_ip: Some(ip.clone()),
                pod_ips: Some(vec![PodIP { ip }]),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                ..PodStatus::default()
            }),
        }
        .into()
    }

    #[test]
    fn ready_and_not_ready_pods_repack_by_port() {
        let s = svc(
            vec![
                sport("http", IntOrString::String("http".into())),
                sport("admin", IntOrString::Int(9000)),
            ],
            "10.96.0.1",
        );
        let pods = [
            pod(0, true, Some(8080)),
            pod(1, false, Some(8080)),
            pod(2, true, None),
        ];
        let refs: Vec<&CachedPod> = pods.iter().collect();
        let subsets = repack_subsets(&desired_subsets(&s, &refs));
        // Subsets group addresses by port: http has {p0, p1}; admin:9000 has {p0, p1, p2}.
        assert_eq!(subsets.len(), 2, "{subsets:#?}");
        let by_port = |name: &str| {
            subsets
                .iter()
                .find(|s| {
                    s.ports
                        .as_ref()
                        .is_some_and(|p| p.len() == 1 && p[0].name.as_deref() == Some(name))
                })
                .map(|s| {
                    (
                        s.addresses.as_ref().map_or(0, Vec::len),
                        s.not_ready_addresses.as_ref().map_or(0, Vec::len),
                        s.ports.as_ref().map_or(0, |p| p[0].port),
                    )
                })
        };
        assert_eq!(by_port("http"), Some((1, 1, 8080)));
        assert_eq!(by_port("admin"), Some((2, 1, 9000)));
        // Repacking is idempotent, so a second sync sees "equal".
        assert_eq!(normalize(&repack_subsets(&subsets)), normalize(&subsets));
    }

    #[test]
    fn headless_without_ports_and_publish_not_ready() {
        let mut s = svc(vec![], "None");
        let pods = [pod(0, false, None)];
        let refs: Vec<&CachedPod> = pods.iter().collect();
        let subsets = repack_subsets(&desired_subsets(&s, &refs));
        assert_eq!(subsets.len(), 1);
        assert!(subsets[0].ports.is_none());
        assert_eq!(
            subsets[0].not_ready_addresses.as_ref().map(Vec::len),
            Some(1)
        );
        if let Some(spec) = s.spec.as_mut() {
            spec.publish_not_ready_addresses = Some(true);
        }
        let subsets = repack_subsets(&desired_subsets(&s, &refs));
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(1));
    }

    #[test]
    fn truncates_at_capacity_ready_first() {
        let s = svc(vec![sport("http", IntOrString::Int(80))], "10.96.0.1");
        let pods: Vec<CachedPod> = (0..1200).map(|i| pod(i, i % 2 == 0, None)).collect();
        let refs: Vec<&CachedPod> = pods.iter().collect();
        let mut ep = Endpoints {
            subsets: Some(repack_subsets(&desired_subsets(&s, &refs))),
            ..Endpoints::default()
        };
        assert!(truncate_endpoints(&mut ep));
        let (r, n) = count(ep.subsets.as_deref().unwrap_or_default());
        assert_eq!((r, n), (600, 400), "all ready kept, not-ready cut");
        assert!(!truncate_endpoints(&mut ep));

        let pods: Vec<CachedPod> = (0..1500).map(|i| pod(i, true, None)).collect();
        let refs: Vec<&CachedPod> = pods.iter().collect();
        let mut ep = Endpoints {
            subsets: Some(repack_subsets(&desired_subsets(&s, &refs))),
            ..Endpoints::default()
        };
        assert!(truncate_endpoints(&mut ep));
        assert_eq!(count(ep.subsets.as_deref().unwrap_or_default()), (1000, 0));
    }

    #[test]
    fn labels_check() {
        let svc: BTreeMap<String, String> = [("a".to_string(), "b".to_string())].into();
        let mut ep = svc.clone();
        assert!(!labels_correct(Some(&ep), &svc), "managed-by missing");
        ep.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
        assert!(labels_correct(Some(&ep), &svc));
        ep.insert(LABEL_HEADLESS.into(), String::new());
        assert!(labels_correct(Some(&ep), &svc));
        ep.insert("extra".into(), "x".into());
        assert!(!labels_correct(Some(&ep), &svc));
    }
}
