//! `endpointslice-controller` and `endpoints-controller` end to end, driven by stock kubectl
//! against a real apiserver. There is no kubelet: pods name their node and get their IP and
//! Ready condition from status patches, as a kubelet would write them.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use ferrokube_tests::ControlPlane;
use ferrokube_tests::kubectl::Kubectl;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Pod};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const T: Duration = Duration::from_secs(30);
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
const TRIGGER: &str = "endpoints.kubernetes.io/last-change-trigger-time";

async fn start(cp: &ControlPlane, extra: &[&str]) -> anyhow::Result<common::ControllerManager> {
    let mut args = vec![
        "--leader-elect=false",
        "--controllers=serviceaccount,endpointslice,endpoint",
    ];
    args.extend_from_slice(extra);
    common::start(cp, "controller-manager", &args).await
}

/// A namespace whose `default` ServiceAccount exists (pods are admitted), and a Node `n1` in
/// zone `zone-a`.
async fn namespace_and_node(cp: &ControlPlane, ns: &str) -> anyhow::Result<()> {
    let kubectl = cp.kubectl()?;
    kubectl.ok(["create", "namespace", ns]).await?;
    kubectl
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
            })
            .to_string(),
        )
        .await?;
    common::kubectl_until(
        cp,
        &format!("default SA in {ns}"),
        T,
        &["get", "serviceaccount", "default", "-n", ns, "-o", "name"],
        |o| o.trim() == "serviceaccount/default",
    )
    .await?;
    Ok(())
}

fn pod_manifest(
    ns: &str,
    name: &str,
    app: &str,
    http_port: Option<i32>,
    hostname: Option<(&str, &str)>,
) -> serde_json::Value {
    let mut container = json!({"name": "app", "image": "registry.invalid/app:1"});
    if let Some(p) = http_port {
        container["ports"] = json!([{"name": "http", "containerPort": p}]);
    }
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": "n1", "containers": [container]},
    });
    if let Some((h, sub)) = hostname {
        pod["spec"]["hostname"] = json!(h);
        pod["spec"]["subdomain"] = json!(sub);
    }
    pod
}

/// The status a kubelet writes for a running pod.
fn pod_status(ip: &str, ready: bool) -> serde_json::Value {
    let now = Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    json!({"status": {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "conditions": [{
            "type": "Ready",
            "status": if ready { "True" } else { "False" },
            "lastTransitionTime": now,
        }],
    }})
}

async fn set_status(
    kubectl: &Kubectl,
    ns: &str,
    pod: &str,
    ip: &str,
    ready: bool,
) -> anyhow::Result<()> {
    kubectl
        .ok([
            "patch",
            "pod",
            pod,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &pod_status(ip, ready).to_string(),
        ])
        .await?;
    Ok(())
}

fn parse_items<K: serde::de::DeserializeOwned>(o: &str) -> Option<Vec<K>> {
    let v: serde_json::Value = serde_json::from_str(o).ok()?;
    v["items"]
        .as_array()?
        .iter()
        .map(|i| serde_json::from_value(i.clone()).ok())
        .collect()
}

/// Waits until the Service's EndpointSlices (as `kubectl get endpointslices -l
/// kubernetes.io/service-name=...` lists them) satisfy `pred`.
async fn slices_until(
    cp: &ControlPlane,
    ns: &str,
    svc: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[EndpointSlice]) -> bool,
) -> anyhow::Result<Vec<EndpointSlice>> {
    let selector = format!("kubernetes.io/service-name={svc}");
    let out = common::kubectl_until(
        cp,
        what,
        timeout,
        &[
            "get",
            "endpointslices",
            "-n",
            ns,
            "-l",
            &selector,
            "-o",
            "json",
        ],
        |o| parse_items::<EndpointSlice>(o).is_some_and(|s| pred(&s)),
    )
    .await?;
    parse_items(&out).ok_or_else(|| anyhow::anyhow!("unparsable slices: {out}"))
}

/// Waits until the Service's Endpoints object satisfies `pred`.
async fn endpoints_until(
    cp: &ControlPlane,
    ns: &str,
    svc: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Endpoints) -> bool,
) -> anyhow::Result<Endpoints> {
    let out = common::kubectl_until(
        cp,
        what,
        timeout,
        &["get", "endpoints", svc, "-n", ns, "-o", "json"],
        |o| serde_json::from_str::<Endpoints>(o).is_ok_and(|e| pred(&e)),
    )
    .await?;
    Ok(serde_json::from_str(&out)?)
}

/// The endpoint of `pod` and the slice holding it.
fn find<'a>(slices: &'a [EndpointSlice], pod: &str) -> Option<(&'a EndpointSlice, &'a Endpoint)> {
    slices.iter().find_map(|s| {
        s.endpoints
            .iter()
            .flatten()
            .find(|e| e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod))
            .map(|e| (s, e))
    })
}

/// `(ready, serving, terminating)` of `pod`'s endpoint.
fn conditions(slices: &[EndpointSlice], pod: &str) -> Option<(bool, bool, bool)> {
    let c = find(slices, pod)?.1.conditions.clone()?;
    Some((c.ready?, c.serving?, c.terminating?))
}

fn ports(slice: &EndpointSlice) -> Vec<i32> {
    slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| p.port)
        .collect()
}

fn total(slices: &[EndpointSlice]) -> usize {
    slices
        .iter()
        .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
        .sum()
}

/// `(ready IPs, not-ready IPs)` per port of an Endpoints object.
fn addresses_for_port(ep: &Endpoints, port: i32) -> (Vec<String>, Vec<String>) {
    let mut ready = Vec::new();
    let mut not_ready = Vec::new();
    for s in ep.subsets.iter().flatten() {
        if s.ports.iter().flatten().any(|p| p.port == port) {
            ready.extend(s.addresses.iter().flatten().map(|a| a.ip.clone()));
            not_ready.extend(s.not_ready_addresses.iter().flatten().map(|a| a.ip.clone()));
        }
    }
    ready.sort();
    not_ready.sort();
    (ready, not_ready)
}

fn label<'a>(meta: &'a kube::api::ObjectMeta, k: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(k).map(String::as_str)
}

fn annotation<'a>(meta: &'a kube::api::ObjectMeta, k: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(k).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slices_and_endpoints_follow_pods() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let _cm = start(&cp, &[]).await?;
    let kubectl = cp.kubectl()?;
    let ns = "demo";
    namespace_and_node(&cp, ns).await?;

    // Pods first: web-0 and web-1 declare the named port "http" on different numbers;
    // web-2 declares no "http" at all (bad input: it gets no ports).
    let pods = [
        pod_manifest(
            ns,
            "web-0",
            "web",
            Some(8080),
            Some(("web-0", "web-headless")),
        ),
        pod_manifest(ns, "web-1", "web", Some(9090), None),
        pod_manifest(ns, "web-2", "web", None, None),
    ];
    for p in &pods {
        kubectl.apply(&p.to_string()).await?;
    }
    kubectl
        .ok([
            "create",
            "service",
            "clusterip",
            "web",
            "-n",
            ns,
            "--tcp=80:http",
        ])
        .await?;
    kubectl
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web-headless", "namespace": ns},
                "spec": {"clusterIP": "None", "selector": {"app": "web"},
                         "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
            })
            .to_string(),
        )
        .await?;
    let svc_uid = kubectl
        .ok([
            "get",
            "service",
            "web",
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .await?;

    // No pod has an IP yet: one empty placeholder slice, owned by the Service.
    let slices = slices_until(&cp, ns, "web", "placeholder slice", T, |s| {
        s.len() == 1 && total(s) == 0
    })
    .await?;
    let placeholder = &slices[0];
    assert_eq!(
        label(&placeholder.metadata, MANAGED_BY),
        Some("endpointslice-controller.k8s.io")
    );
    assert_eq!(placeholder.address_type, "IPv4");
    assert_eq!(placeholder.metadata.generate_name.as_deref(), Some("web-"));
    let owner = placeholder
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert_eq!(owner.len(), 1);
    assert_eq!(
        (
            owner[0].kind.as_str(),
            owner[0].uid.as_str(),
            owner[0].controller
        ),
        ("Service", svc_uid.trim(), Some(true))
    );
    endpoints_until(&cp, ns, "web", "empty Endpoints", T, |e| {
        e.subsets.as_ref().is_none_or(Vec::is_empty)
            && label(&e.metadata, "endpoints.kubernetes.io/managed-by")
                == Some("endpoint-controller")
    })
    .await?;

    // The "kubelet" reports IPs; web-1 is not ready.
    set_status(&kubectl, ns, "web-0", "10.244.1.10", true).await?;
    set_status(&kubectl, ns, "web-1", "10.244.1.11", false).await?;
    set_status(&kubectl, ns, "web-2", "10.244.1.12", true).await?;

    let slices = slices_until(&cp, ns, "web", "three pods in slices", T, |s| {
        total(s) == 3 && conditions(s, "web-1") == Some((false, false, false))
    })
    .await?;
    // Pods are grouped by their resolved ports: 8080, 9090, and none for web-2.
    let mut by_port: Vec<(Vec<i32>, String)> = slices
        .iter()
        .flat_map(|s| {
            s.endpoints.iter().flatten().map(move |e| {
                (
                    ports(s),
                    e.target_ref
                        .clone()
                        .and_then(|r| r.name)
                        .unwrap_or_default(),
                )
            })
        })
        .collect();
    by_port.sort();
    assert_eq!(
        by_port,
        vec![
            (vec![], "web-2".to_string()),
            (vec![8080], "web-0".to_string()),
            (vec![9090], "web-1".to_string()),
        ]
    );
    assert_eq!(
        slices.len(),
        3,
        "one slice per port set, placeholder reused"
    );
    assert!(
        slices
            .iter()
            .any(|s| s.metadata.name == placeholder.metadata.name),
        "the placeholder's name was reused instead of delete + create"
    );
    let (s0, e0) = find(&slices, "web-0").ok_or_else(|| anyhow::anyhow!("web-0 missing"))?;
    assert_eq!(e0.addresses, vec!["10.244.1.10".to_string()]);
    assert_eq!(conditions(&slices, "web-0"), Some((true, true, false)));
    assert_eq!(e0.node_name.as_deref(), Some("n1"));
    assert_eq!(e0.zone.as_deref(), Some("zone-a"));
    assert_eq!(e0.hostname, None, "subdomain names another Service");
    let port = &s0.ports.clone().unwrap_or_default()[0];
    assert_eq!(
        (port.name.as_deref(), port.port, port.protocol.as_deref()),
        (Some("80-http"), Some(8080), Some("TCP"))
    );
    for s in &slices {
        assert_eq!(
            label(&s.metadata, "kubernetes.io/service-name"),
            Some("web")
        );
        assert!(
            annotation(&s.metadata, TRIGGER).is_some(),
            "trigger time on {s:?}"
        );
    }

    // The Endpoints object: ready web-0 on 8080, not-ready web-1 on 9090, no web-2 (no port).
    let ep = endpoints_until(&cp, ns, "web", "Endpoints with two pods", T, |e| {
        addresses_for_port(e, 9090).1 == vec!["10.244.1.11".to_string()]
    })
    .await?;
    assert_eq!(
        addresses_for_port(&ep, 8080),
        (vec!["10.244.1.10".to_string()], vec![])
    );
    let all_ips: Vec<&str> = ep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| {
            s.addresses
                .iter()
                .flatten()
                .chain(s.not_ready_addresses.iter().flatten())
        })
        .map(|a| a.ip.as_str())
        .collect();
    assert!(
        !all_ips.contains(&"10.244.1.12"),
        "web-2 has no port: {all_ips:?}"
    );
    assert!(annotation(&ep.metadata, TRIGGER).is_some());
    assert_eq!(label(&ep.metadata, "service.kubernetes.io/headless"), None);

    // Headless Service: hostname for the pod whose subdomain names it, headless labels.
    let headless = slices_until(&cp, ns, "web-headless", "headless slices", T, |s| {
        total(s) == 3
    })
    .await?;
    let (hs, he) = find(&headless, "web-0").ok_or_else(|| anyhow::anyhow!("web-0 missing"))?;
    assert_eq!(he.hostname.as_deref(), Some("web-0"));
    assert_eq!(
        label(&hs.metadata, "service.kubernetes.io/headless"),
        Some("")
    );
    let hep = endpoints_until(&cp, ns, "web-headless", "headless Endpoints", T, |e| {
        e.subsets.as_ref().is_some_and(|s| !s.is_empty())
    })
    .await?;
    assert_eq!(
        label(&hep.metadata, "service.kubernetes.io/headless"),
        Some("")
    );
    let hostnames: Vec<Option<String>> = hep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter(|a| a.ip == "10.244.1.10")
        .map(|a| a.hostname.clone())
        .collect();
    assert_eq!(hostnames, vec![Some("web-0".to_string())]);

    // web-1 turns ready: ready in its slice, moved to addresses in Endpoints.
    set_status(&kubectl, ns, "web-1", "10.244.1.11", true).await?;
    slices_until(&cp, ns, "web", "web-1 ready", T, |s| {
        conditions(s, "web-1") == Some((true, true, false))
    })
    .await?;
    endpoints_until(&cp, ns, "web", "web-1 ready in Endpoints", T, |e| {
        addresses_for_port(e, 9090) == (vec!["10.244.1.11".to_string()], vec![])
    })
    .await?;

    // web-0 is deleted gracefully; with no kubelet it stays terminating: still serving,
    // not ready, terminating; gone from Endpoints.
    kubectl
        .ok(["delete", "pod", "web-0", "-n", ns, "--wait=false"])
        .await?;
    slices_until(&cp, ns, "web", "web-0 terminating", T, |s| {
        conditions(s, "web-0") == Some((false, true, true))
    })
    .await?;
    endpoints_until(&cp, ns, "web", "web-0 gone from Endpoints", T, |e| {
        addresses_for_port(e, 8080) == (vec![], vec![])
    })
    .await?;
    // Gone for good: its endpoint (and the then-empty 8080 slice) go.
    kubectl
        .ok([
            "delete",
            "pod",
            "web-0",
            "-n",
            ns,
            "--force",
            "--grace-period=0",
        ])
        .await?;
    let slices = slices_until(&cp, ns, "web", "web-0 removed", T, |s| {
        find(s, "web-0").is_none() && total(s) == 2
    })
    .await?;
    assert!(
        slices.iter().all(|s| ports(s) != vec![8080]),
        "empty slice deleted: {slices:?}"
    );

    // Deleting the Service removes its slices and its Endpoints.
    kubectl.ok(["delete", "service", "web", "-n", ns]).await?;
    slices_until(
        &cp,
        ns,
        "web",
        "slices of deleted Service gone",
        T,
        <[_]>::is_empty,
    )
    .await?;
    common::kubectl_until(
        &cp,
        "Endpoints of deleted Service gone",
        T,
        &["get", "endpoints", "-n", ns, "-o", "name"],
        |o| !o.lines().any(|l| l.trim() == "endpoints/web"),
    )
    .await?;
    // The headless Service is untouched.
    slices_until(&cp, ns, "web-headless", "headless slices remain", T, |s| {
        total(s) == 2
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pods_pack_into_slices_of_at_most_100() -> anyhow::Result<()> {
    const PODS: usize = 250;
    let cp = ControlPlane::start().await?;
    let _cm = start(&cp, &[]).await?;
    let kubectl = cp.kubectl()?;
    let ns = "big";
    namespace_and_node(&cp, ns).await?;

    // A Service without a selector is the mirroring controller's: left alone.
    kubectl
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "manual", "namespace": ns},
                "spec": {"ports": [{"port": 80}]},
            })
            .to_string(),
        )
        .await?;

    ready_pods(&cp, ns, "big", PODS).await?;
    kubectl
        .ok([
            "expose",
            "pod",
            "big-0",
            "-n",
            ns,
            "--name=big",
            "--port=80",
            "--target-port=8080",
            "--selector=app=big",
        ])
        .await?;

    let long = Duration::from_secs(120);
    let slices = slices_until(&cp, ns, "big", "250 endpoints in slices", long, |s| {
        total(s) == PODS
    })
    .await?;
    let mut sizes: Vec<usize> = slices
        .iter()
        .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![50, 100, 100], "3 slices of at most 100");
    assert!(
        slices
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten())
            .all(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
    );
    let ep = endpoints_until(&cp, ns, "big", "250 addresses in Endpoints", long, |e| {
        addresses_for_port(e, 8080).0.len() == PODS
    })
    .await?;
    assert_eq!(
        annotation(&ep.metadata, "endpoints.kubernetes.io/over-capacity"),
        None
    );

    // 10 pods go: their endpoints leave the slices they were in; no slice is created.
    let names: BTreeSet<Option<String>> = slices.iter().map(|s| s.metadata.name.clone()).collect();
    let mut args: Vec<String> = ["delete", "pod", "-n", ns, "--force", "--grace-period=0"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend((0..10).map(|i| format!("big-{i}")));
    kubectl.ok(&args).await?;
    let after = slices_until(&cp, ns, "big", "240 endpoints", long, |s| {
        total(s) == PODS - 10
    })
    .await?;
    let after_names: BTreeSet<Option<String>> =
        after.iter().map(|s| s.metadata.name.clone()).collect();
    assert_eq!(names, after_names, "slices updated in place");
    endpoints_until(&cp, ns, "big", "240 addresses in Endpoints", long, |e| {
        addresses_for_port(e, 8080).0.len() == PODS - 10
    })
    .await?;

    let manual = kubectl
        .ok([
            "get",
            "endpointslices",
            "-n",
            ns,
            "-l",
            &format!(
                "kubernetes.io/service-name=manual,{MANAGED_BY}=endpointslice-controller.k8s.io"
            ),
            "-o",
            "name",
        ])
        .await?;
    assert_eq!(manual.trim(), "", "selector-less Service left alone");
    let manual_ep = kubectl
        .run(["get", "endpoints", "manual", "-n", ns, "-o", "name"], None)
        .await?;
    assert!(
        !manual_ep.success(),
        "no Endpoints for a selector-less Service"
    );
    Ok(())
}

/// Creates `n` pods `<prefix>-<i>` labelled `app=<prefix>` on n1 declaring `http: 8080`, and
/// marks them Running and Ready with distinct IPs.
async fn ready_pods(cp: &ControlPlane, ns: &str, prefix: &str, n: usize) -> anyhow::Result<()> {
    let items: Vec<serde_json::Value> = (0..n)
        .map(|i| pod_manifest(ns, &format!("{prefix}-{i}"), prefix, Some(8080), None))
        .collect();
    let manifest = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    let out = cp
        .kubectl()?
        .with_timeout(Duration::from_secs(300))
        .run(["create", "-f", "-"], Some(&manifest))
        .await?;
    anyhow::ensure!(out.success(), "creating pods: {}", out.stderr);
    let api: Api<Pod> = Api::namespaced(cp.client().await?, ns);
    futures::stream::iter(0..n)
        .map(|i| {
            let api = api.clone();
            async move {
                let ip = format!(
                    "10.{}.{}.{}",
                    100 + i / 40_000,
                    (i / 200) % 200,
                    1 + i % 200
                );
                api.patch_status(
                    &format!("{prefix}-{i}"),
                    &PatchParams::default(),
                    &Patch::Merge(pod_status(&ip, true)),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_truncate_at_1000_and_slices_honour_the_max_flag() -> anyhow::Result<()> {
    const PODS: usize = 1001;
    let cp = ControlPlane::start().await?;
    let _cm = start(&cp, &["--max-endpoints-per-slice=500"]).await?;
    let kubectl = cp.kubectl()?;
    let ns = "huge";
    namespace_and_node(&cp, ns).await?;
    ready_pods(&cp, ns, "huge", PODS).await?;
    kubectl
        .ok([
            "create",
            "service",
            "clusterip",
            "huge",
            "-n",
            ns,
            "--tcp=80:8080",
        ])
        .await?;

    let long = Duration::from_secs(180);
    let slices = slices_until(&cp, ns, "huge", "1001 endpoints in slices", long, |s| {
        total(s) == PODS
    })
    .await?;
    let sizes: Vec<usize> = slices
        .iter()
        .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
        .collect();
    assert!(
        sizes.len() >= 3 && sizes.iter().all(|n| *n <= 500),
        "--max-endpoints-per-slice=500 honoured: {sizes:?}"
    );
    let ep = endpoints_until(&cp, ns, "huge", "truncated Endpoints", long, |e| {
        annotation(&e.metadata, "endpoints.kubernetes.io/over-capacity") == Some("truncated")
    })
    .await?;
    assert_eq!(
        addresses_for_port(&ep, 8080).0.len(),
        1000,
        "truncated to 1000"
    );

    // Back under capacity: the annotation goes and every address is listed.
    kubectl
        .ok([
            "delete",
            "pod",
            "huge-0",
            "huge-1",
            "-n",
            ns,
            "--force",
            "--grace-period=0",
        ])
        .await?;
    endpoints_until(&cp, ns, "huge", "999 addresses, not truncated", long, |e| {
        annotation(&e.metadata, "endpoints.kubernetes.io/over-capacity").is_none()
            && addresses_for_port(e, 8080).0.len() == PODS - 2
    })
    .await?;
    Ok(())
}

/// Pods bound to a Node the controller's cache does not know are left out, with a Warning
/// Event naming the Node; a burst of their updates (enough failed syncs to use up the
/// Service's retries) does not strand them: once the Node exists they are published at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_a_late_node_join_as_soon_as_it_exists() -> anyhow::Result<()> {
    const PODS: usize = 20;
    let cp = ControlPlane::start().await?;
    let cm = start(&cp, &[]).await?;
    let kubectl = cp.kubectl()?;
    let ns = "late";
    namespace_and_node(&cp, ns).await?;
    kubectl
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "late", "namespace": ns},
                "spec": {"selector": {"app": "late"}, "ports": [{"port": 80}]},
            })
            .to_string(),
        )
        .await?;
    for i in 0..PODS {
        let mut pod = pod_manifest(ns, &format!("late-{i}"), "late", None, None);
        pod["spec"]["nodeName"] = json!("n-late");
        kubectl.apply(&pod.to_string()).await?;
        set_status(
            &kubectl,
            ns,
            &format!("late-{i}"),
            &format!("10.9.0.{}", i + 1),
            true,
        )
        .await?;
    }
    common::kubectl_until(
        &cp,
        "a Warning Event naming the missing Node",
        T,
        &[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector=reason=FailedToUpdateEndpointSlices",
            "-o",
            "jsonpath={.items[*].message}",
        ],
        |o| o.contains(r#"Node "n-late" Not Found"#),
    )
    .await?;
    let slices = slices_until(&cp, ns, "late", "the placeholder slice", T, |s| {
        s.len() == 1
    })
    .await?;
    assert_eq!(total(&slices), 0, "pods of an unknown node are left out");
    // Readiness flaps until the Service's key has failed more often than its 15 retries
    // (upstream then drops it; its backoff is hours long well before that).
    let mut ready = false;
    for round in 0.. {
        let metrics = cm.metrics().await?;
        let retries = metrics
            .lines()
            .find_map(|l| l.strip_prefix(r#"workqueue_retries_total{name="endpoint_slice"} "#))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if retries >= 16.0 {
            break;
        }
        anyhow::ensure!(round < 200, "only {retries} retries after {round} rounds");
        for i in 0..PODS {
            set_status(
                &kubectl,
                ns,
                &format!("late-{i}"),
                &format!("10.9.0.{}", i + 1),
                ready,
            )
            .await?;
        }
        ready = !ready;
    }
    for i in 0..PODS {
        set_status(
            &kubectl,
            ns,
            &format!("late-{i}"),
            &format!("10.9.0.{}", i + 1),
            true,
        )
        .await?;
    }

    kubectl
        .apply(
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n-late"}})
                .to_string(),
        )
        .await?;
    // Well inside the first retry interval a 15-failure backoff would leave (over 4 hours).
    slices_until(
        &cp,
        ns,
        "late",
        "all pods published after their Node appeared",
        Duration::from_secs(10),
        |s| total(s) == PODS,
    )
    .await?;
    Ok(())
}
