//! InterPodAffinity, PodTopologySpread and DefaultPreemption end to end against a real
//! apiserver: where pods land, upstream's messages when they cannot, and a
//! high-priority pod evicting lower ones (DisruptionTarget, nominatedNodeName) and binding.

mod common;

use std::time::Duration;

use common::NodeSpec;
use ferrokube_tests::{ControlPlane, wait};
use serde_json::json;

/// Three zones, one node each, plus a second node in zone a.
async fn zoned_nodes(cp: &ControlPlane) -> anyhow::Result<()> {
    for (name, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("c1", "c")] {
        common::node(
            cp,
            &NodeSpec {
                name,
                cpu: "8",
                memory: "16Gi",
                labels: &[("topology.kubernetes.io/zone", zone)],
                ..NodeSpec::default()
            },
        )
        .await?;
    }
    Ok(())
}

fn labelled(ns: &str, name: &str, app: &str, extra: serde_json::Value) -> String {
    let mut v: serde_json::Value =
        serde_json::from_str(&common::pod_manifest(ns, name, "100m", extra)).unwrap_or_default();
    v["metadata"]["labels"] = json!({"app": app});
    v.to_string()
}

fn zone_term(app: &str) -> serde_json::Value {
    json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": "topology.kubernetes.io/zone"})
}

async fn zone_of(cp: &ControlPlane, node: &str) -> anyhow::Result<String> {
    Ok(cp
        .kubectl()?
        .ok([
            "get",
            "node",
            node,
            "-o",
            "jsonpath={.metadata.labels.topology\\.kubernetes\\.io/zone}",
        ])
        .await?
        .trim()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inter_pod_affinity_and_topology_spread() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    zoned_nodes(&cp).await?;
    let ns = "aff";
    common::namespace(&cp, ns).await?;
    let _s = common::start(&cp, "ferrokube-scheduler", &["--leader-elect=false"]).await?;
    let result = async {
        // db pinned to b1; web with required affinity to db per zone lands in zone b.
        common::pod(&cp, &labelled(ns, "db", "db", json!({"nodeSelector": {"kubernetes.io/hostname": "b1"}}))).await?;
        assert_eq!(common::bound_node(&cp, ns, "db").await?, "b1");
        common::pod(&cp, &labelled(ns, "web", "web", json!({
            "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [zone_term("db")]}},
        }))).await?;
        assert_eq!(common::bound_node(&cp, ns, "web").await?, "b1");

        // Anti-affinity to db per zone: never zone b.
        for i in 0..3 {
            let name = format!("away-{i}");
            common::pod(&cp, &labelled(ns, &name, "away", json!({
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [zone_term("db")]}},
            }))).await?;
            let node = common::bound_node(&cp, ns, &name).await?;
            assert_ne!(zone_of(&cp, &node).await?, "b", "{name} on {node}");
        }

        // Symmetry: a guard with anti-affinity to app=intruder keeps intruders out of zone c.
        common::pod(&cp, &labelled(ns, "guard", "guard", json!({
            "nodeSelector": {"kubernetes.io/hostname": "c1"},
            "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [zone_term("intruder")]}},
        }))).await?;
        assert_eq!(common::bound_node(&cp, ns, "guard").await?, "c1");
        common::pod(&cp, &labelled(ns, "intruder", "intruder", json!({
            "nodeSelector": {"topology.kubernetes.io/zone": "c"},
        }))).await?;
        let msg = common::unschedulable_message(&cp, ns, "intruder").await?;
        assert_eq!(
            msg,
            "0/4 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules, 3 node(s) didn't match Pod's node affinity/selector. no new claims to deallocate, preemption: 0/4 nodes are available: 1 No preemption victims found for incoming pod, 3 Preemption is not helpful for scheduling."
        );

        // Affinity nothing satisfies: upstream's reason, unresolvable.
        common::pod(&cp, &labelled(ns, "lonely", "lonely", json!({
            "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [zone_term("nobody")]}},
        }))).await?;
        let msg = common::unschedulable_message(&cp, ns, "lonely").await?;
        assert!(msg.starts_with("0/4 nodes are available: 4 node(s) didn't match pod affinity rules."), "{msg}");

        // Deleting the guard lets the intruder in (an assigned pod deletion re-queues it).
        cp.kubectl()?.ok(["delete", "pod", "guard", "-n", ns, "--grace-period=0", "--force"]).await?;
        assert_eq!(common::bound_node(&cp, ns, "intruder").await?, "c1");

        // An invalid affinity term never reaches the scheduler: the apiserver refuses it.
        // (The scheduler's own handling, Unschedulable with "parsing pod: ...", is unit-tested
        // in inter_pod_affinity.)
        let bad = labelled(ns, "bad", "bad", json!({
            "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "Near"}]}, "topologyKey": "zone"}]}},
        }));
        let out = cp.kubectl()?.run(["apply", "-f", "-"], Some(&bad)).await?;
        assert!(!out.success(), "apiserver accepted an invalid selector");

        // Topology spread: 6 pods, zone maxSkew 1 -> at most one apart per zone. Zone a has
        // two nodes; the constraint counts the zone, not the node.
        for i in 0..6 {
            let name = format!("spread-{i}");
            common::pod(&cp, &labelled(ns, &name, "spread", json!({
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}],
            }))).await?;
            common::bound_node(&cp, ns, &name).await?;
        }
        let mut per_zone = std::collections::BTreeMap::new();
        for i in 0..6 {
            let node = common::pod_field(&cp, ns, &format!("spread-{i}"), "{.spec.nodeName}").await?;
            *per_zone.entry(zone_of(&cp, &node).await?).or_insert(0) += 1;
        }
        assert_eq!(per_zone.values().copied().collect::<Vec<_>>(), [2, 2, 2], "{per_zone:?}");

        // A constraint on a key no node has: missing label, unresolvable.
        common::pod(&cp, &labelled(ns, "nokey", "spread", json!({
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "rack",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}],
        }))).await?;
        let msg = common::unschedulable_message(&cp, ns, "nokey").await?;
        assert!(
            msg.starts_with("0/4 nodes are available: 4 node(s) didn't match pod topology spread constraints (missing required label)."),
            "{msg}"
        );

        // minDomains 4 with 3 zones: the global minimum counts as 0, so a zone already at 2
        // is at skew 3 > maxSkew 2 everywhere.
        common::pod(&cp, &labelled(ns, "mindomains", "spread", json!({
            "topologySpreadConstraints": [{"maxSkew": 2, "minDomains": 4, "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}],
        }))).await?;
        let msg = common::unschedulable_message(&cp, ns, "mindomains").await?;
        assert!(msg.starts_with("0/4 nodes are available: 4 node(s) didn't match pod topology spread constraints."), "{msg}");
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cp.logs(80));
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_pod_preempts_lower_ones_and_binds() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    common::node(
        &cp,
        &NodeSpec {
            name: "only",
            cpu: "2",
            memory: "8Gi",
            ..NodeSpec::default()
        },
    )
    .await?;
    let ns = "prio";
    common::namespace(&cp, ns).await?;
    let kubectl = cp.kubectl()?;
    for (name, value) in [("low", 10), ("high", 1000)] {
        kubectl
            .apply(
                &json!({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                    "metadata": {"name": name}, "value": value})
                .to_string(),
            )
            .await?;
    }
    let _s = common::start(&cp, "ferrokube-scheduler", &["--leader-elect=false"]).await?;
    let result = async {
        for name in ["low-1", "low-2"] {
            common::pod(&cp, &common::pod_manifest(ns, name, "1", json!({"priorityClassName": "low"}))).await?;
            assert_eq!(common::bound_node(&cp, ns, name).await?, "only");
        }
        // Equal priority cannot preempt: upstream's message.
        common::pod(&cp, &common::pod_manifest(ns, "peer", "1", json!({"priorityClassName": "low"}))).await?;
        let msg = common::unschedulable_message(&cp, ns, "peer").await?;
        assert_eq!(
            msg,
            "0/1 nodes are available: 1 Insufficient cpu. no new claims to deallocate, preemption: 0/1 nodes are available: 1 No preemption victims found for incoming pod."
        );
        cp.kubectl()?.ok(["delete", "pod", "peer", "-n", ns, "--grace-period=0", "--force"]).await?;

        common::pod(&cp, &common::pod_manifest(ns, "vip", "1500m", json!({"priorityClassName": "high"}))).await?;
        // The victims get the DisruptionTarget condition and are deleted (they stay
        // Terminating: no kubelet confirms). The preemptor is nominated to the node.
        let nominated = wait::until("vip nominated", Duration::from_secs(30), Duration::from_millis(200), || async {
            let n = common::pod_field(&cp, ns, "vip", "{.status.nominatedNodeName}").await.map_err(|e| e.to_string())?;
            if n.is_empty() { Err("not nominated".to_string()) } else { Ok(n) }
        })
        .await?;
        assert_eq!(nominated, "only");
        for victim in ["low-1", "low-2"] {
            let reason = wait::until(&format!("{victim} DisruptionTarget"), Duration::from_secs(30), Duration::from_millis(200), || async {
                let r = common::pod_field(&cp, ns, victim, "{.status.conditions[?(@.type==\"DisruptionTarget\")].reason}")
                    .await
                    .map_err(|e| e.to_string())?;
                let deleting = common::pod_field(&cp, ns, victim, "{.metadata.deletionTimestamp}")
                    .await
                    .map_err(|e| e.to_string())?;
                if r.is_empty() || deleting.is_empty() { Err(format!("reason {r:?}, deletion {deleting:?}")) } else { Ok(r) }
            })
            .await?;
            assert_eq!(reason, "PreemptionByScheduler");
            let ev = common::wait_event(&cp, ns, victim, "Preempted").await?;
            assert!(ev.2.starts_with("Preempted by pod ") && ev.2.ends_with(" on node only"), "{ev:?}");
        }
        // Play the kubelet: the terminating victims go; the preemptor binds.
        for victim in ["low-1", "low-2"] {
            cp.kubectl()?.ok(["delete", "pod", victim, "-n", ns, "--grace-period=0", "--force"]).await?;
        }
        assert_eq!(common::bound_node(&cp, ns, "vip").await?, "only");
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cp.logs(80));
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_default_constraints_spread_pods_selected_by_a_service() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    zoned_nodes(&cp).await?;
    let ns = "defaults";
    common::namespace(&cp, ns).await?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("scheduler.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nleaderElection:\n  leaderElect: false\nprofiles:\n- schedulerName: default-scheduler\n  pluginConfig:\n  - name: PodTopologySpread\n    args:\n      defaultingType: List\n      defaultConstraints:\n      - maxSkew: 1\n        topologyKey: topology.kubernetes.io/zone\n        whenUnsatisfiable: DoNotSchedule\n",
    )?;
    let config_flag = format!("--config={}", config.display());
    let _s = common::start(&cp, "ferrokube-scheduler", &[&config_flag]).await?;
    let result = async {
        // The default constraint applies to pods a Service selects, with its selector.
        cp.kubectl()?
            .apply(
                &json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "svc", "namespace": ns},
                "spec": {"selector": {"app": "svc"}, "ports": [{"port": 80}]}})
                .to_string(),
            )
            .await?;
        // (kubectl round trips take far longer than the Service reaching the informer.)
        for i in 0..9 {
            let name = format!("svc-{i}");
            common::pod(&cp, &labelled(ns, &name, "svc", json!({}))).await?;
            common::bound_node(&cp, ns, &name).await?;
        }
        // Zone a has two nodes, b and c one each: only the constraint keeps zones even.
        let mut per_zone = std::collections::BTreeMap::new();
        for i in 0..9 {
            let node = common::pod_field(&cp, ns, &format!("svc-{i}"), "{.spec.nodeName}").await?;
            *per_zone.entry(zone_of(&cp, &node).await?).or_insert(0) += 1;
        }
        assert_eq!(
            per_zone.values().copied().collect::<Vec<_>>(),
            [3, 3, 3],
            "{per_zone:?}"
        );
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cp.logs(80));
    }
    result
}
