//! `garbage-collector-controller` end to end, driven by stock kubectl: the three cascade
//! modes, dangling owner references, cross-namespace and cluster-scope rules, and a CRD
//! created after the controller-manager started.

mod common;

use std::time::Duration;

use ferrokube_tests::ControlPlane;
use ferrokube_tests::kubectl::Kubectl;

const CONTROLLERS: &str = "--controllers=serviceaccount,namespace,garbagecollector";

async fn uid(kubectl: &Kubectl, what: &str, ns: Option<&str>) -> anyhow::Result<String> {
    let mut args = vec!["get", what, "-o", "jsonpath={.metadata.uid}"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    let uid = kubectl.ok(args).await?;
    anyhow::ensure!(!uid.is_empty(), "no uid for {what}");
    Ok(uid)
}

/// A ConfigMap `name` in `ns` owned by each of `owners` (apiVersion, kind, name, uid, block).
fn dependent(ns: &str, name: &str, owners: &[(&str, &str, &str, &str, bool)]) -> String {
    let refs: Vec<serde_json::Value> = owners
        .iter()
        .map(|(api_version, kind, owner, uid, block)| {
            serde_json::json!({
                "apiVersion": api_version, "kind": kind, "name": owner, "uid": uid,
                "blockOwnerDeletion": block,
            })
        })
        .collect();
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "ownerReferences": refs},
    })
    .to_string()
}

async fn wait_absent(cp: &ControlPlane, what: &str, ns: &str) -> anyhow::Result<()> {
    common::kubectl_until(
        cp,
        &format!("{what} in {ns} collected"),
        Duration::from_secs(60),
        &["get", what, "-n", ns, "--ignore-not-found", "-o", "name"],
        |o| o.trim().is_empty(),
    )
    .await?;
    Ok(())
}

async fn exists(kubectl: &Kubectl, what: &str, ns: Option<&str>) -> anyhow::Result<bool> {
    let mut args = vec!["get", what, "--ignore-not-found", "-o", "name"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    Ok(!kubectl.ok(args).await?.trim().is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cascading_deletion_background_foreground_orphan() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    // Panicking while the control plane is alive dumps its components' logs.
    if let Err(e) = cascading_deletion_background_foreground_orphan_on(&cp).await {
        panic!("{e:?}");
    }
    Ok(())
}

async fn cascading_deletion_background_foreground_orphan_on(
    cp: &ControlPlane,
) -> anyhow::Result<()> {
    let _cm = common::start(cp, "controller-manager", &[CONTROLLERS]).await?;
    let kubectl = cp.kubectl()?;
    let ns = "gc";
    kubectl.ok(["create", "namespace", ns]).await?;

    // --- background: the owner goes at once, its dependents after it.
    kubectl
        .ok(["create", "configmap", "bg-owner", "-n", ns])
        .await?;
    let owner = uid(&kubectl, "configmap/bg-owner", Some(ns)).await?;
    for name in ["bg-a", "bg-b"] {
        kubectl
            .apply(&dependent(
                ns,
                name,
                &[("v1", "ConfigMap", "bg-owner", &owner, false)],
            ))
            .await?;
    }
    let started = std::time::Instant::now();
    kubectl
        .ok([
            "delete",
            "configmap",
            "bg-owner",
            "-n",
            ns,
            "--cascade=background",
        ])
        .await?;
    wait_absent(cp, "configmap/bg-a", ns).await?;
    wait_absent(cp, "configmap/bg-b", ns).await?;
    eprintln!(
        "FIGURE background cascade of 2 dependents collected in {:.2}s",
        started.elapsed().as_secs_f64()
    );

    // --- foreground: the owner waits (foregroundDeletion finalizer) until its blocking
    // dependent is gone, then the GC removes the finalizer.
    kubectl
        .ok(["create", "configmap", "fg-owner", "-n", ns])
        .await?;
    let owner = uid(&kubectl, "configmap/fg-owner", Some(ns)).await?;
    let mut held: serde_json::Value = serde_json::from_str(&dependent(
        ns,
        "fg-held",
        &[("v1", "ConfigMap", "fg-owner", &owner, true)],
    ))?;
    held["metadata"]["finalizers"] = serde_json::json!(["example.com/hold"]);
    kubectl.apply(&held.to_string()).await?;
    kubectl
        .apply(&dependent(
            ns,
            "fg-free",
            &[("v1", "ConfigMap", "fg-owner", &owner, true)],
        ))
        .await?;
    kubectl
        .ok([
            "delete",
            "configmap",
            "fg-owner",
            "-n",
            ns,
            "--cascade=foreground",
            "--wait=false",
        ])
        .await?;
    wait_absent(cp, "configmap/fg-free", ns).await?;
    // The held dependent is terminating; the owner still waits for it.
    common::kubectl_until(
        cp,
        "fg-held terminating",
        Duration::from_secs(30),
        &[
            "get",
            "configmap",
            "fg-held",
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
        |o| !o.is_empty(),
    )
    .await?;
    let finalizers = kubectl
        .ok([
            "get",
            "configmap",
            "fg-owner",
            "-n",
            ns,
            "-o",
            "jsonpath={.metadata.finalizers}",
        ])
        .await?;
    assert!(finalizers.contains("foregroundDeletion"), "{finalizers}");
    kubectl
        .ok([
            "patch",
            "configmap",
            "fg-held",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ])
        .await?;
    wait_absent(cp, "configmap/fg-held", ns).await?;
    wait_absent(cp, "configmap/fg-owner", ns).await?;

    // --- orphan: the GC strips the owner reference from dependents, then removes the
    // `orphan` finalizer; kubectl's wait for the owner to vanish returns.
    kubectl
        .ok(["create", "configmap", "or-owner", "-n", ns])
        .await?;
    let owner = uid(&kubectl, "configmap/or-owner", Some(ns)).await?;
    for name in ["or-a", "or-b"] {
        kubectl
            .apply(&dependent(
                ns,
                name,
                &[("v1", "ConfigMap", "or-owner", &owner, true)],
            ))
            .await?;
    }
    kubectl
        .ok([
            "delete",
            "configmap",
            "or-owner",
            "-n",
            ns,
            "--cascade=orphan",
            "--timeout=60s",
        ])
        .await?;
    for name in ["or-a", "or-b"] {
        let refs = kubectl
            .ok([
                "get",
                "configmap",
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.metadata.ownerReferences}",
            ])
            .await?;
        assert_eq!(refs, "", "{name} was orphaned");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dangling_cross_namespace_and_cluster_scoped_references() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    // Panicking while the control plane is alive dumps its components' logs.
    if let Err(e) = dangling_cross_namespace_and_cluster_scoped_references_on(&cp).await {
        panic!("{e:?}");
    }
    Ok(())
}

async fn dangling_cross_namespace_and_cluster_scoped_references_on(
    cp: &ControlPlane,
) -> anyhow::Result<()> {
    let _cm = common::start(cp, "controller-manager", &[CONTROLLERS]).await?;
    let kubectl = cp.kubectl()?;
    for ns in ["a", "b"] {
        kubectl.ok(["create", "namespace", ns]).await?;
    }

    // A dependent of an owner that never existed is collected after a live check.
    kubectl
        .apply(&dependent(
            "a",
            "ghost-child",
            &[(
                "v1",
                "ConfigMap",
                "ghost",
                "00000000-0000-0000-0000-000000000001",
                false,
            )],
        ))
        .await?;
    // An owner reference by name to an object whose uid differs (re-created owner)
    // counts as absent: the dependent goes, the same-named object stays.
    kubectl
        .ok(["create", "configmap", "recreated", "-n", "a"])
        .await?;
    kubectl
        .apply(&dependent(
            "a",
            "stale-child",
            &[(
                "v1",
                "ConfigMap",
                "recreated",
                "00000000-0000-0000-0000-000000000002",
                false,
            )],
        ))
        .await?;
    wait_absent(cp, "configmap/ghost-child", "a").await?;
    wait_absent(cp, "configmap/stale-child", "a").await?;
    assert!(exists(&kubectl, "configmap/recreated", Some("a")).await?);

    // Cross-namespace: a ConfigMap in b names an owner that lives in a. The GC reports
    // OwnerRefInvalidNamespace, drops that reference from a dependent that has a valid
    // owner too, collects one that has no other owner, and never touches the owner in a.
    kubectl
        .ok(["create", "configmap", "owner-a", "-n", "a"])
        .await?;
    kubectl
        .ok(["create", "configmap", "owner-b", "-n", "b"])
        .await?;
    let owner_a = uid(&kubectl, "configmap/owner-a", Some("a")).await?;
    let owner_b = uid(&kubectl, "configmap/owner-b", Some("b")).await?;
    kubectl
        .apply(&dependent(
            "b",
            "two-owners",
            &[
                ("v1", "ConfigMap", "owner-b", &owner_b, false),
                ("v1", "ConfigMap", "owner-a", &owner_a, false),
            ],
        ))
        .await?;
    kubectl
        .apply(&dependent(
            "b",
            "only-cross",
            &[("v1", "ConfigMap", "owner-a", &owner_a, false)],
        ))
        .await?;
    let events = common::kubectl_until(
        cp,
        "OwnerRefInvalidNamespace event",
        Duration::from_secs(60),
        &[
            "get",
            "events",
            "-n",
            "b",
            "--field-selector=reason=OwnerRefInvalidNamespace",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name}|{.type}|{.message}{\"\\n\"}{end}",
        ],
        |o| o.contains("two-owners|") && o.contains("only-cross|"),
    )
    .await?;
    let expected = format!(
        "two-owners|Warning|ownerRef [v1/ConfigMap, namespace: b, name: owner-a, uid: {owner_a}] does not exist in namespace \"b\""
    );
    assert!(events.lines().any(|l| l == expected), "{events}");
    wait_absent(cp, "configmap/only-cross", "b").await?;
    common::kubectl_until(
        cp,
        "cross-namespace reference dropped",
        Duration::from_secs(60),
        &[
            "get",
            "configmap",
            "two-owners",
            "-n",
            "b",
            "-o",
            "jsonpath={.metadata.ownerReferences[*].name}",
        ],
        |o| o == "owner-b",
    )
    .await?;
    assert!(exists(&kubectl, "configmap/owner-a", Some("a")).await?);
    assert!(exists(&kubectl, "configmap/owner-b", Some("b")).await?);

    // Cluster-scoped owner, namespaced dependent: collected when the owner goes.
    kubectl
        .ok([
            "create",
            "clusterrole",
            "gc-owner",
            "--verb=get",
            "--resource=pods",
        ])
        .await?;
    let role = uid(&kubectl, "clusterrole/gc-owner", None).await?;
    kubectl
        .apply(&dependent(
            "a",
            "of-clusterrole",
            &[(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "gc-owner",
                &role,
                false,
            )],
        ))
        .await?;
    // A cluster-scoped object naming a namespaced owner: ignored, never deleted.
    kubectl
        .apply(
            &serde_json::json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "gc-bad-owner", "ownerReferences": [{
                    "apiVersion": "v1", "kind": "ConfigMap", "name": "owner-a", "uid": "00000000-0000-0000-0000-000000000003",
                }]},
                "rules": [],
            })
            .to_string(),
        )
        .await?;
    kubectl.ok(["delete", "clusterrole", "gc-owner"]).await?;
    wait_absent(cp, "configmap/of-clusterrole", "a").await?;
    // By now the GC has long looked at gc-bad-owner (queued when it appeared).
    assert!(exists(&kubectl, "clusterrole/gc-bad-owner", None).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_resources_added_later_own_configmaps() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    // Panicking while the control plane is alive dumps its components' logs.
    if let Err(e) = custom_resources_added_later_own_configmaps_on(&cp).await {
        panic!("{e:?}");
    }
    Ok(())
}

async fn custom_resources_added_later_own_configmaps_on(cp: &ControlPlane) -> anyhow::Result<()> {
    let _cm = common::start(cp, "controller-manager", &[CONTROLLERS]).await?;
    let kubectl = cp.kubectl()?;
    kubectl.ok(["create", "namespace", "cr"]).await?;

    // The CRD appears after the GC's first discovery: the periodic re-discovery (30 s)
    // must start watching it.
    kubectl
        .apply(
            r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#,
        )
        .await?;
    kubectl
        .ok([
            "wait",
            "--for=condition=Established",
            "crd/gadgets.example.com",
            "--timeout=30s",
        ])
        .await?;
    kubectl
        .apply("apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g, namespace: cr}\n")
        .await?;
    let owner = uid(&kubectl, "gadget/g", Some("cr")).await?;
    for name in ["g-a", "g-b"] {
        kubectl
            .apply(&dependent(
                "cr",
                name,
                &[("example.com/v1", "Gadget", "g", &owner, true)],
            ))
            .await?;
    }
    // Foreground deletion of the custom object: the GC, not the apiserver, must finish it.
    let started = std::time::Instant::now();
    kubectl
        .ok([
            "delete",
            "gadget",
            "g",
            "-n",
            "cr",
            "--cascade=foreground",
            "--wait=false",
        ])
        .await?;
    common::kubectl_until(
        cp,
        "gadget and its configmaps collected",
        Duration::from_secs(90),
        &["get", "gadgets,configmaps", "-n", "cr", "-o", "name"],
        |o| !o.contains("gadget.example.com/g") && !o.contains("g-a") && !o.contains("g-b"),
    )
    .await?;
    eprintln!(
        "FIGURE foreground deletion of a CR created after start: {:.1}s (bounded by the 30 s re-discovery)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
