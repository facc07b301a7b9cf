//! upstream's `k8s.io/endpointslice` Reconciler: turns a Service and its pods into the
//! EndpointSlices to create, update and delete, with minimal churn.
//!
//! ```text
//!   pods ──▶ endpoint per pod ──▶ grouped by resolved port set (named targetPorts differ per pod)
//!                                      │ per address type, per port set
//!                                      ▼
//!   existing slices: keep endpoints still desired (update if one changed), drop the rest,
//!   fill slices we update anyway up to the max, then the unchanged slice closest to full,
//!   then new slices; a slice left empty is deleted (or its name reused for a new one)
//! ```
//!
//! Planning ([`plan`]) is pure; [`Reconciler::apply`] performs the writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::transform::CachedPod;
use ferrokube_runtime::apierrors;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

use super::tracker::EndpointSliceTracker;
use super::util::{self, ANNOTATION_LAST_CHANGE_TRIGGER_TIME, LABEL_HEADLESS};
use super::{CONTROLLER_NAME, Error, LABEL_MANAGED_BY, LABEL_SERVICE_NAME};

/// `topology.kubernetes.io/zone`.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// `discovery.AddressTypeIPv4` / `IPv6`.
pub const IPV4: &str = "IPv4";
/// See [`IPV4`].
pub const IPV6: &str = "IPv6";

/// The writes one sync makes.
#[derive(Debug, Default)]
pub struct Plan {
    /// New slices (generateName set, no name).
    pub create: Vec<EndpointSlice>,
    /// Full replacements of existing slices (resourceVersion set).
    pub update: Vec<EndpointSlice>,
    /// Slices to delete.
    pub delete: Vec<EndpointSlice>,
    /// Pods left out because their node is not known (they are retried).
    pub skipped: Vec<String>,
    /// The unknown nodes those pods are bound to.
    pub missing_nodes: std::collections::BTreeSet<String>,
}

/// The identity of an endpoint inside a port set: upstream's `endpointHash` fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct EndpointKey {
    addresses: Vec<String>,
    hostname: String,
    namespace: String,
    name: String,
}

fn endpoint_key(ep: &Endpoint) -> EndpointKey {
    let mut addresses = ep.addresses.clone();
    addresses.sort();
    let r = ep.target_ref.as_ref();
    EndpointKey {
        addresses,
        hostname: ep.hostname.clone().unwrap_or_default(),
        namespace: r.and_then(|r| r.namespace.clone()).unwrap_or_default(),
        name: r.and_then(|r| r.name.clone()).unwrap_or_default(),
    }
}

/// `EndpointSet`, ordered so that planning is deterministic.
type EndpointSet = BTreeMap<EndpointKey, Endpoint>;

/// An order-independent identity of a port set (`PortMapKey`).
type PortKey = Vec<(Option<String>, Option<i32>, Option<String>, Option<String>)>;

fn port_key(ports: &[EndpointPort]) -> PortKey {
    let mut k: PortKey = ports
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                p.port,
                p.protocol.clone(),
                p.app_protocol.clone(),
            )
        })
        .collect();
    k.sort();
    k
}

/// `getAddressTypesForService`: from `spec.ipFamilies`, else the family of the cluster IP,
/// else (headless on an old apiserver) both.
pub fn address_types(svc: &Service) -> BTreeSet<&'static str> {
    let spec = svc.spec.as_ref();
    let mut types: BTreeSet<&'static str> = spec
        .and_then(|s| s.ip_families.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some(IPV4),
            "IPv6" => Some(IPV6),
            _ => None,
        })
        .collect();
    if !types.is_empty() {
        return types;
    }
    if util::is_service_ip_set(svc) {
        let ip = spec
            .and_then(|s| s.cluster_ip.as_deref())
            .unwrap_or_default();
        types.insert(if ip.contains(':') { IPV6 } else { IPV4 });
        return types;
    }
    [IPV4, IPV6].into()
}

/// `getEndpointPorts`: the Service's ports resolved against this pod; ports the pod does not
/// declare (a named targetPort no container has) are left out.
pub fn endpoint_ports(svc: &Service, pod: &CachedPod) -> Vec<EndpointPort> {
    let spec = svc.spec.as_ref();
    let ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();
    let mut out = Vec::new();
    for sp in ports {
        match util::find_port(pod, sp) {
            Ok(port) => out.push(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(util::port_protocol(sp).to_string()),
                app_protocol: sp.app_protocol.clone(),
            }),
            Err(e) => tracing::debug!(
                service = ?svc.metadata.name, pod = ?pod.metadata.name, error = %e,
                "failed to find port for service"
            ),
        }
    }
    // A canonical order, so slices for the same port set look alike.
    out.sort_by_key(|p| {
        (
            p.name.clone(),
            p.port,
            p.protocol.clone(),
            p.app_protocol.clone(),
        )
    });
    out
}

/// The pod's addresses of `address_type`, canonicalised.
fn endpoint_addresses(pod: &CachedPod, address_type: &str) -> Vec<String> {
    util::pod_ips(pod)
        .into_iter()
        .filter_map(util::parse_ip_sloppy)
        .filter(|ip| (address_type == IPV6) == ip.is_ipv6())
        .map(|ip| ip.to_string())
        .collect()
}

/// The `(ready, serving, terminating)` conditions of a pod's endpoint (`podToEndpoint`):
/// serving follows the pod's Ready condition, terminating its deletion timestamp, and ready
/// is "serving and not terminating" unless the Service publishes not-ready addresses.
pub fn conditions(pod: &CachedPod, publish_not_ready: bool) -> (bool, bool, bool) {
    let serving = util::is_pod_ready(pod);
    let terminating = util::is_terminating(pod);
    let ready = publish_not_ready || (serving && !terminating);
    (ready, serving, terminating)
}

/// `podToEndpoint`.
pub fn pod_to_endpoint(
    pod: &CachedPod,
    node: Option<&Node>,
    svc: &Service,
    address_type: &str,
) -> Endpoint {
    let (ready, serving, terminating) = conditions(pod, util::publish_not_ready_addresses(svc));
    let zone = node
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
        .filter(|z| !z.is_empty())
        .cloned();
    Endpoint {
        addresses: endpoint_addresses(pod, address_type),
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: pod.metadata.namespace.clone(),
            name: pod.metadata.name.clone(),
            uid: pod.metadata.uid.clone(),
            ..ObjectReference::default()
        }),
        node_name: util::node_name(pod).map(str::to_string),
        zone,
        hostname: util::hostname_for(pod, svc),
        ..Endpoint::default()
    }
}

/// `EndpointsEqualBeyondHash`: the fields outside the endpoint's identity.
fn equal_beyond_hash(a: &Endpoint, b: &Endpoint) -> bool {
    let cond = |e: &Endpoint| {
        let c = e.conditions.clone().unwrap_or_default();
        (c.ready, c.serving, c.terminating)
    };
    let target = |e: &Endpoint| {
        e.target_ref.clone().map(|mut r| {
            r.resource_version = None;
            r
        })
    };
    a.node_name == b.node_name && a.zone == b.zone && cond(a) == cond(b) && target(a) == target(b)
}

fn is_reserved_label(k: &str) -> bool {
    k == LABEL_SERVICE_NAME || k == LABEL_MANAGED_BY || k == LABEL_HEADLESS
}

/// `setEndpointSliceLabels`: the Service's labels plus ours; `true` when the Service's
/// labels differ from the slice's.
fn slice_labels(slice: &EndpointSlice, svc: &Service) -> (BTreeMap<String, String>, bool) {
    let user = |l: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        l.into_iter()
            .flatten()
            .filter(|(k, _)| !is_reserved_label(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let mut labels = user(svc.metadata.labels.as_ref());
    let changed = user(slice.metadata.labels.as_ref()) != labels;
    if !util::is_service_ip_set(svc) {
        labels.insert(LABEL_HEADLESS.into(), String::new());
    }
    labels.insert(
        LABEL_SERVICE_NAME.into(),
        svc.metadata.name.clone().unwrap_or_default(),
    );
    labels.insert(LABEL_MANAGED_BY.into(), CONTROLLER_NAME.into());
    (labels, changed)
}

/// The controller ownerRef of the Service (`metav1.NewControllerRef`).
fn owner_ref(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.metadata.name.clone().unwrap_or_default(),
        uid: svc.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether the slice is owned by this Service (by UID).
pub fn owned_by(slice: &EndpointSlice, svc: &Service) -> bool {
    slice.metadata.owner_references.iter().flatten().any(|o| {
        Some(&o.uid) == svc.metadata.uid.as_ref() && o.kind == "Service" && o.api_version == "v1"
    })
}

/// `getEndpointSlicePrefix`: `<svc>-`, or the name alone if that would be too long.
fn name_prefix(svc_name: &str) -> String {
    let prefix = format!("{svc_name}-");
    // A generated name adds 5 characters; DNS subdomains hold 253.
    if prefix.len() + 5 > 253 {
        svc_name.to_string()
    } else {
        prefix
    }
}

fn new_slice(svc: &Service, ports: &[EndpointPort], address_type: &str) -> EndpointSlice {
    let mut slice = EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(name_prefix(
                svc.metadata.name.as_deref().unwrap_or_default(),
            )),
            namespace: svc.metadata.namespace.clone(),
            owner_references: Some(vec![owner_ref(svc)]),
            ..ObjectMeta::default()
        },
        address_type: address_type.to_string(),
        ports: Some(ports.to_vec()),
        endpoints: Some(vec![]),
    };
    slice.metadata.labels = Some(slice_labels(&slice, svc).0);
    slice
}

fn endpoints_of(slice: &EndpointSlice) -> &[Endpoint] {
    slice.endpoints.as_deref().unwrap_or_default()
}

fn len_of(slice: &EndpointSlice) -> usize {
    endpoints_of(slice).len()
}

fn name_of(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// The placeholder every selector Service gets when it has no endpoints of a type.
fn is_placeholder_like(existing: &EndpointSlice, placeholder: &EndpointSlice) -> bool {
    existing.metadata.namespace == placeholder.metadata.namespace
        && existing.metadata.labels.clone().unwrap_or_default()
            == placeholder.metadata.labels.clone().unwrap_or_default()
        && existing.address_type == placeholder.address_type
        && existing.ports.as_deref().unwrap_or_default().is_empty()
        && endpoints_of(existing).is_empty()
}

/// `getSliceToFill`: the slice that `n` more endpoints fill most completely.
fn slice_to_fill<'a>(
    candidates: impl Iterator<Item = &'a EndpointSlice>,
    n: usize,
    max: usize,
) -> Option<String> {
    let mut closest_diff = max;
    let mut closest = None;
    for s in candidates {
        let used = n + len_of(s);
        if used <= max {
            let diff = max - used;
            if diff < closest_diff {
                closest_diff = diff;
                closest = Some(name_of(s));
                if diff == 0 {
                    break;
                }
            }
        }
    }
    closest
}

struct PortMapping {
    create: Vec<EndpointSlice>,
    update: Vec<EndpointSlice>,
    delete: Vec<EndpointSlice>,
}

/// `reconcileByPortMapping`.
fn reconcile_by_port_mapping(
    svc: &Service,
    existing: &[&EndpointSlice],
    mut desired: EndpointSet,
    ports: &[EndpointPort],
    address_type: &str,
    max: usize,
) -> PortMapping {
    let mut by_name: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut unchanged = BTreeSet::new();
    let mut to_update = BTreeSet::new();
    let mut to_delete = BTreeSet::new();

    // 1. Keep the endpoints of existing slices that are still desired, in place.
    for slice in existing {
        let name = name_of(slice);
        let mut kept = Vec::new();
        let mut endpoint_updated = false;
        for ep in endpoints_of(slice) {
            if let Some(got) = desired.remove(&endpoint_key(ep)) {
                endpoint_updated |= !equal_beyond_hash(&got, ep);
                kept.push(got);
            }
        }
        // Never more than the max, even if the flag was lowered since the slice was written:
        // the overflow goes back to be placed elsewhere.
        if kept.len() > max {
            for ep in kept.split_off(max) {
                desired.insert(endpoint_key(&ep), ep);
            }
        }
        let (labels, labels_changed) = slice_labels(slice, svc);
        if endpoint_updated || kept.len() != len_of(slice) {
            if kept.is_empty() {
                to_delete.insert(name.clone());
                by_name.insert(name, (*slice).clone());
            } else {
                let mut s = (*slice).clone();
                s.endpoints = Some(kept);
                s.metadata.labels = Some(labels);
                to_update.insert(name.clone());
                by_name.insert(name, s);
            }
        } else if labels_changed {
            let mut s = (*slice).clone();
            s.metadata.labels = Some(labels);
            to_update.insert(name.clone());
            by_name.insert(name, s);
        } else {
            unchanged.insert(name.clone());
            by_name.insert(name, (*slice).clone());
        }
    }

    // 2. Slices being updated anyway take new endpoints first, fullest first.
    if !desired.is_empty() && !to_update.is_empty() {
        let mut order: Vec<(usize, String)> = to_update
            .iter()
            .map(|n| (by_name.get(n).map_or(0, len_of), n.clone()))
            .collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
        for (_, name) in order {
            if let Some(s) = by_name.get_mut(&name) {
                let eps = s.endpoints.get_or_insert_with(Vec::new);
                while eps.len() < max {
                    let Some((_, ep)) = desired.pop_first() else {
                        break;
                    };
                    eps.push(ep);
                }
            }
        }
    }

    // 3. The rest go to the unchanged slice they fill best, else to new slices.
    let mut create = Vec::new();
    while !desired.is_empty() {
        let target = if desired.len() < max && !unchanged.is_empty() {
            slice_to_fill(
                unchanged.iter().filter_map(|n| by_name.get(n)),
                desired.len(),
                max,
            )
        } else {
            None
        };
        let mut slice = match &target {
            Some(name) => by_name
                .remove(name)
                .unwrap_or_else(|| new_slice(svc, ports, address_type)),
            None => new_slice(svc, ports, address_type),
        };
        let eps = slice.endpoints.get_or_insert_with(Vec::new);
        while eps.len() < max {
            let Some((_, ep)) = desired.pop_first() else {
                break;
            };
            eps.push(ep);
        }
        match target {
            Some(name) => {
                unchanged.remove(&name);
                to_update.insert(name.clone());
                by_name.insert(name, slice);
            }
            None => create.push(slice),
        }
    }

    let take = |names: &BTreeSet<String>, by_name: &BTreeMap<String, EndpointSlice>| {
        names
            .iter()
            .filter_map(|n| by_name.get(n).cloned())
            .collect::<Vec<_>>()
    };
    PortMapping {
        create,
        update: take(&to_update, &by_name),
        delete: take(&to_delete, &by_name),
    }
}

/// The `trafficDistribution` values that make the controller write zone (and node) hints.
fn traffic_distribution_hints(svc: &Service) -> Option<bool> {
    match svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref())
    {
        Some("PreferClose" | "PreferSameZone") => Some(false),
        Some("PreferSameNode") => Some(true),
        _ => None,
    }
}

fn is_ready(ep: &Endpoint) -> bool {
    ep.conditions.as_ref().and_then(|c| c.ready) == Some(true)
}

/// The hints an endpoint should carry (`trafficdist` heuristics): with a close traffic
/// distribution, ready endpoints are hinted for their own zone (and node for
/// PreferSameNode); otherwise no hints at all.
fn wanted_hints(ep: &Endpoint, close: Option<bool>) -> Option<EndpointHints> {
    let same_node = close?;
    if !is_ready(ep) {
        return ep.hints.clone();
    }
    let for_zones = ep.zone.clone().map(|name| vec![ForZone { name }]);
    let for_nodes = ep
        .node_name
        .clone()
        .filter(|_| same_node)
        .map(|name| vec![ForNode { name }]);
    if for_zones.is_none() && for_nodes.is_none() {
        return None;
    }
    Some(EndpointHints {
        for_zones,
        for_nodes,
    })
}

fn set_hints(slice: &mut EndpointSlice, close: Option<bool>) -> bool {
    let mut changed = false;
    for ep in slice.endpoints.iter_mut().flatten() {
        let want = wanted_hints(ep, close);
        if ep.hints != want {
            ep.hints = want;
            changed = true;
        }
    }
    changed
}

fn placeholder_key(svc: &Service, address_type: &str) -> EndpointSlice {
    new_slice(svc, &[], address_type)
}

/// Plans the writes for one Service (`Reconcile` up to `finalize`'s API calls).
/// `node` looks up a pod's node in the cache; `trigger` is the last-change trigger time.
pub fn plan(
    svc: &Service,
    pods: &[&CachedPod],
    node: &dyn Fn(&str) -> Option<Arc<Node>>,
    existing: &[&EndpointSlice],
    trigger: Option<Timestamp>,
    max: usize,
) -> Plan {
    let max = max.max(1);
    let supported = address_types(svc);
    let mut plan = Plan::default();
    let mut by_type: BTreeMap<&str, Vec<&EndpointSlice>> = BTreeMap::new();
    let mut unsupported = Vec::new();
    for s in existing {
        match supported.get(s.address_type.as_str()) {
            Some(t) => by_type.entry(t).or_default().push(s),
            None => unsupported.push((*s).clone()),
        }
    }
    let publish_not_ready = util::publish_not_ready_addresses(svc);
    for address_type in &supported {
        let existing = by_type.remove(address_type).unwrap_or_default();
        let mut create = Vec::new();
        let mut update = Vec::new();
        let mut delete = Vec::new();

        // Slices of ours not owned by this Service (a recreated Service of the same name)
        // go; the rest are grouped by port set.
        let mut existing_by_ports: BTreeMap<PortKey, Vec<&EndpointSlice>> = BTreeMap::new();
        for s in &existing {
            if owned_by(s, svc) {
                existing_by_ports
                    .entry(port_key(s.ports.as_deref().unwrap_or_default()))
                    .or_default()
                    .push(s);
            } else {
                delete.push((*s).clone());
            }
        }

        let mut desired: BTreeMap<PortKey, (Vec<EndpointPort>, EndpointSet)> = BTreeMap::new();
        for pod in pods {
            if !util::should_pod_be_in_endpoints(pod, true) {
                continue;
            }
            let ports = endpoint_ports(svc, pod);
            let entry = desired
                .entry(port_key(&ports))
                .or_insert_with(|| (ports, EndpointSet::new()));
            let node_name = util::node_name(pod).unwrap_or_default();
            let n = node(node_name);
            if n.is_none() && !publish_not_ready {
                let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
                plan.skipped.push(format!(
                    "skipping Pod {pod_name}: Node {node_name:?} Not Found"
                ));
                plan.missing_nodes.insert(node_name.to_string());
                continue;
            }
            let ep = pod_to_endpoint(pod, n.as_deref(), svc, address_type);
            if !ep.addresses.is_empty() {
                entry.1.insert(endpoint_key(&ep), ep);
            }
        }

        for (key, (ports, set)) in desired.iter() {
            let existing = existing_by_ports.get(key).cloned().unwrap_or_default();
            let m =
                reconcile_by_port_mapping(svc, &existing, set.clone(), ports, address_type, max);
            create.extend(m.create);
            update.extend(m.update);
            delete.extend(m.delete);
        }
        for (key, slices) in &existing_by_ports {
            if !desired.contains_key(key) {
                delete.extend(slices.iter().map(|s| (*s).clone()));
            }
        }

        // A Service with no endpoints of this type keeps exactly one empty slice.
        if existing.len() == delete.len() && create.is_empty() {
            let placeholder = placeholder_key(svc, address_type);
            if delete.len() == 1 && is_placeholder_like(&delete[0], &placeholder) {
                delete.clear();
            } else {
                create.push(placeholder);
            }
        }

        // Hints: slices already being written get the right ones; unchanged slices are
        // rewritten only if their hints are wrong.
        let close = traffic_distribution_hints(svc);
        for s in create.iter_mut().chain(update.iter_mut()) {
            set_hints(s, close);
        }
        let changed: BTreeSet<String> = update.iter().chain(&delete).map(name_of).collect();
        for s in &existing {
            if changed.contains(&name_of(s)) || !owned_by(s, svc) {
                continue;
            }
            let mut copy = (*s).clone();
            if set_hints(&mut copy, close) {
                update.push(copy);
            }
        }

        // `finalize`: a slice about to be deleted lends its name to one about to be created,
        // turning a delete + create into one update.
        let mut i = 0;
        while i < delete.len() && !create.is_empty() {
            if delete[i].address_type == *address_type && owned_by(&delete[i], svc) {
                let gone = delete.remove(i);
                if let Some(mut s) = create.pop() {
                    s.metadata.name = gone.metadata.name;
                    // Write over exactly the version we planned against.
                    s.metadata.resource_version = gone.metadata.resource_version;
                    update.push(s);
                }
            } else {
                i += 1;
            }
        }

        for s in create.iter_mut().chain(update.iter_mut()) {
            set_trigger_time(s, trigger);
        }
        plan.create.extend(create);
        plan.update.extend(update);
        plan.delete.extend(delete);
    }
    plan.delete.extend(unsupported);
    plan
}

/// `addTriggerTimeAnnotation`.
fn set_trigger_time(slice: &mut EndpointSlice, trigger: Option<Timestamp>) {
    let annotations = slice.metadata.annotations.get_or_insert_with(BTreeMap::new);
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
}

/// Performs a [`Plan`] and records the writes in the tracker.
pub struct Reconciler {
    /// The client.
    pub client: kube::Client,
    /// Generations of the slices this controller wrote.
    pub tracker: Arc<EndpointSliceTracker>,
}

impl Reconciler {
    /// Creates, updates and deletes as planned. Creates are skipped for a Service being
    /// deleted, and stop quietly once its namespace is terminating.
    pub async fn apply(&self, svc: &Service, plan: Plan) -> Result<(), Error> {
        let ns = svc.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        if svc.metadata.deletion_timestamp.is_none() {
            for s in plan.create {
                match api.create(&PostParams::default(), &s).await {
                    Ok(created) => self.tracker.update(&created),
                    Err(e) if apierrors::is_namespace_terminating(&e) => return Ok(()),
                    Err(e) => return Err(Error::Write("create", String::new(), e)),
                }
            }
        }
        for s in plan.update {
            let name = name_of(&s);
            match api.replace(&name, &PostParams::default(), &s).await {
                Ok(updated) => self.tracker.update(&updated),
                Err(e) => return Err(Error::Write("update", name, e)),
            }
        }
        for s in plan.delete {
            let name = name_of(&s);
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => self.tracker.expect_deletion(&s),
                Err(e) if apierrors::is_not_found(&e) => self.tracker.expect_deletion(&s),
                Err(e) => return Err(Error::Write("delete", name, e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, Pod, PodCondition, PodIP, PodSpec, PodStatus, ServicePort,
        ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn svc(ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("ns".into()),
                uid: Some("svc-uid".into()),
                labels: Some([("team".to_string(), "a".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                ip_families: Some(vec!["IPv4".into()]),
                selector: Some([("app".to_string(), "web".to_string())].into()),
                ports: Some(ports),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        }
    }

    fn named_port(name: &str) -> ServicePort {
        ServicePort {
            name: Some("http".into()),
            port: 80,
            target_port: Some(IntOrString::String(name.into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        }
    }

    fn pod(i: usize, ready: bool, container_port: Option<i32>) -> CachedPod {
        Pod {
            metadata: ObjectMeta {
                name: Some(format!("p{i}")),
                namespace: Some("ns".into()),
                uid: Some(format!("uid-{i}")),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: container_port.map(|p| {
                        vec![ContainerPort {
                            name: Some("http".into()),
                            container_port: p,
                            protocol: Some("TCP".into()),
                            ..ContainerPort::default()
                        }]
                    }),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: Some(format!("10.0.{}.{}", i / 250, i % 250 + 1)),
                pod_ips: Some(vec![PodIP {
                    ip: format!("10.0.{}.{}", i / 250, i % 250 + 1),
                }]),
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

    fn node(name: &str) -> Option<Arc<Node>> {
        Some(Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(LABEL_TOPOLOGY_ZONE.to_string(), "zone-a".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }))
    }

    /// Pretends the apiserver accepted the plan: names and versions for created slices.
    fn commit(existing: Vec<EndpointSlice>, plan: &Plan) -> Vec<EndpointSlice> {
        let deleted: BTreeSet<String> = plan.delete.iter().map(name_of).collect();
        let updated: BTreeMap<String, EndpointSlice> = plan
            .update
            .iter()
            .map(|s| (name_of(s), s.clone()))
            .collect();
        let mut out: Vec<EndpointSlice> = existing
            .into_iter()
            .filter(|s| !deleted.contains(&name_of(s)))
            .map(|s| updated.get(&name_of(&s)).cloned().unwrap_or(s))
            .collect();
        for (i, s) in plan.create.iter().enumerate() {
            let mut s = s.clone();
            s.metadata.name = Some(format!("web-gen{}-{i}", out.len()));
            out.push(s);
        }
        out
    }

    fn run(
        s: &Service,
        pods: &[CachedPod],
        existing: &[EndpointSlice],
        max: usize,
    ) -> (Plan, Vec<EndpointSlice>) {
        let pods: Vec<&CachedPod> = pods.iter().collect();
        let existing_refs: Vec<&EndpointSlice> = existing.iter().collect();
        let p = plan(s, &pods, &node, &existing_refs, None, max);
        let after = commit(existing.to_vec(), &p);
        (p, after)
    }

    #[test]
    fn conditions_follow_upstream() {
        let mut p = pod(0, true, None);
        assert_eq!(conditions(&p, false), (true, true, false));
        p = pod(0, false, None);
        assert_eq!(conditions(&p, false), (false, false, false));
        assert_eq!(
            conditions(&p, true),
            (true, false, false),
            "publishNotReady"
        );
        p = pod(0, true, None);
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(
            conditions(&p, false),
            (false, true, true),
            "terminating but still serving"
        );
    }

    #[test]
    fn named_target_ports_group_pods_by_resolved_ports() {
        let s = svc(vec![named_port("http")]);
        let pods = vec![
            pod(0, true, Some(8080)),
            pod(1, true, Some(8080)),
            pod(2, true, Some(9090)),
            pod(3, true, None),
        ];
        let (p, _) = run(&s, &pods, &[], 100);
        assert_eq!(p.create.len(), 3, "{p:#?}");
        let mut got: Vec<(Vec<i32>, usize)> = p
            .create
            .iter()
            .map(|s| {
                (
                    s.ports.iter().flatten().filter_map(|p| p.port).collect(),
                    len_of(s),
                )
            })
            .collect();
        got.sort();
        // The pod without the named port gets a slice with no ports (upstream behaviour).
        assert_eq!(got, vec![(vec![], 1), (vec![8080], 2), (vec![9090], 1)]);
        for slice in &p.create {
            let labels = slice.metadata.labels.clone().unwrap_or_default();
            assert_eq!(
                labels.get(LABEL_SERVICE_NAME).map(String::as_str),
                Some("web")
            );
            assert_eq!(labels.get("team").map(String::as_str), Some("a"));
            assert_eq!(slice.metadata.generate_name.as_deref(), Some("web-"));
            let owner = &slice.metadata.owner_references.clone().unwrap_or_default()[0];
            assert_eq!(
                (owner.uid.as_str(), owner.controller),
                ("svc-uid", Some(true))
            );
            let ep = &endpoints_of(slice)[0];
            assert_eq!(ep.zone.as_deref(), Some("zone-a"));
            assert_eq!(ep.node_name.as_deref(), Some("n1"));
        }
    }

    #[test]
    fn packs_at_most_max_and_churns_little() {
        let s = svc(vec![named_port("http")]);
        let mut pods: Vec<CachedPod> = (0..250).map(|i| pod(i, true, Some(8080))).collect();
        let (p, slices) = run(&s, &pods, &[], 100);
        let mut sizes: Vec<usize> = p.create.iter().map(len_of).collect();
        sizes.sort();
        assert_eq!(sizes, vec![50, 100, 100]);
        assert!(p.update.is_empty() && p.delete.is_empty());

        // Steady state: nothing to write.
        let (p, _) = run(&s, &pods, &slices, 100);
        assert!(
            p.create.is_empty() && p.update.is_empty() && p.delete.is_empty(),
            "{p:?}"
        );

        // One pod turns not ready: exactly one slice is rewritten.
        pods[7] = pod(7, false, Some(8080));
        let (p, slices) = run(&s, &pods, &slices, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));

        // 30 more pods fill the partly full slice instead of making a new one.
        pods.extend((250..280).map(|i| pod(i, true, Some(8080))));
        let (p, slices) = run(&s, &pods, &slices, 100);
        assert_eq!((p.create.len(), p.update.len(), p.delete.len()), (0, 1, 0));
        assert_eq!(len_of(&p.update[0]), 80);
        assert!(slices.iter().all(|s| len_of(s) <= 100));
        assert_eq!(slices.iter().map(len_of).sum::<usize>(), 280);

        // A lowered max splits oversized slices; nothing exceeds it.
        let (_, slices) = run(&s, &pods, &slices, 40);
        assert!(
            slices.iter().all(|s| len_of(s) <= 40),
            "{:?}",
            slices.iter().map(len_of).collect::<Vec<_>>()
        );
        assert_eq!(slices.iter().map(len_of).sum::<usize>(), 280);

        // Every pod gone: one empty placeholder remains, reusing a name.
        let (p, slices) = run(&s, &[], &slices, 40);
        assert!(
            p.create.is_empty(),
            "placeholder reuses a deleted slice's name"
        );
        assert_eq!(slices.len(), 1);
        assert_eq!(len_of(&slices[0]), 0);
        let (p, _) = run(&s, &[], &slices, 40);
        assert!(p.create.is_empty() && p.update.is_empty() && p.delete.is_empty());
    }

    #[test]
    fn unknown_nodes_and_foreign_slices() {
        let s = svc(vec![named_port("http")]);
        let mut p = pod(0, true, Some(8080));
        if let Some(spec) = p.spec.as_mut() {
            spec.node_name = Some("gone".into());
        }
        let pods = [&p];
        let no_node = |_: &str| None;
        let out = plan(&s, &pods, &no_node, &[], None, 100);
        assert_eq!(out.skipped.len(), 1);
        assert_eq!(out.missing_nodes, ["gone".to_string()].into());
        // Only the placeholder.
        assert_eq!(out.create.len(), 1);
        assert_eq!(len_of(&out.create[0]), 0);

        // A slice of ours owned by an older Service of the same name is deleted, never
        // reused (its name is not lent to the new Service's slices).
        let mut old = new_slice(&s, &[], IPV4);
        old.metadata.name = Some("web-old".into());
        old.endpoints = Some(vec![pod_to_endpoint(&p, None, &s, IPV4)]);
        if let Some(o) = old.metadata.owner_references.as_mut() {
            o[0].uid = "older".into();
        }
        let out = plan(&s, &[], &no_node, &[&old], None, 100);
        assert_eq!(out.delete.len(), 1);
        assert_eq!(out.create.len(), 1);
        assert!(out.update.is_empty());
    }

    #[test]
    fn trigger_time_and_hints() {
        let mut s = svc(vec![named_port("http")]);
        if let Some(spec) = s.spec.as_mut() {
            spec.traffic_distribution = Some("PreferClose".into());
        }
        let pods = [pod(0, true, Some(8080))];
        let pods: Vec<&CachedPod> = pods.iter().collect();
        let t: Timestamp = "2024-01-02T03:04:05Z".parse().expect("time");
        let out = plan(&s, &pods, &node, &[], Some(t), 100);
        let slice = &out.create[0];
        assert_eq!(
            slice
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_LAST_CHANGE_TRIGGER_TIME))
                .map(String::as_str),
            Some("2024-01-02T03:04:05Z")
        );
        let hints = endpoints_of(slice)[0].hints.clone().unwrap_or_default();
        assert_eq!(
            hints.for_zones,
            Some(vec![ForZone {
                name: "zone-a".into()
            }])
        );
    }
}
