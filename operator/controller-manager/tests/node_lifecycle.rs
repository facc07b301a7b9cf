//! Node failure end to end: kwok plays two kubelets; one of them goes silent. Our
//! node-lifecycle controller marks it Unknown and taints it, the taint-eviction controller
//! evicts the pods that tolerate the taint only for a while, the pod GC removes pods of the
//! node once it is deleted; node-ipam hands out Pod CIDRs.

mod common;

use std::time::Duration;

use ferrokube_tests::{ControlPlane, kwok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_tainted_and_its_pods_evicted() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let _cm = common::start(
        &cp,
        "controller-manager",
        &[
            "--controllers=serviceaccount,nodelifecycle,taint-eviction-controller,podgc",
            "--node-monitor-period=1s",
            "--node-monitor-grace-period=5s",
            "--node-eviction-rate=10",
            "--pod-gc-period=1s",
        ],
    )
    .await?;
    let kw = kwok::start(&cp, "node", 2).await?;
    let (healthy, silent) = (&kw.nodes[0], &kw.nodes[1]);
    let kubectl = cp.kubectl()?;
    let t = Duration::from_secs(40);
    common::kubectl_until(
        &cp,
        "default SA",
        t,
        &["get", "sa", "default", "-o", "name"],
        |o| !o.is_empty(),
    )
    .await?;
    kubectl
        .apply(&common::tolerating_pod("short", silent, Some(2)))
        .await?;
    kubectl
        .apply(&common::tolerating_pod("forever", silent, None))
        .await?;
    kubectl
        .apply(&common::tolerating_pod("elsewhere", healthy, Some(2)))
        .await?;
    common::pods_ready(&cp, &["short", "forever", "elsewhere"], t).await?;

    kw.silence(&cp, silent).await?;
    let ready = common::kubectl_until(&cp, "silent node Unknown", t, &["get", "node", silent, "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}/{.status.conditions[?(@.type==\"Ready\")].reason}"], |o| o.starts_with("Unknown")).await?;
    assert_eq!(ready, "Unknown/NodeStatusUnknown");
    let taints = common::kubectl_until(
        &cp,
        "unreachable taints",
        t,
        &[
            "get",
            "node",
            silent,
            "-o",
            "jsonpath={range .spec.taints[*]}{.key}:{.effect} {end}",
        ],
        |o| {
            o.contains("node.kubernetes.io/unreachable:NoExecute")
                && o.contains("node.kubernetes.io/unreachable:NoSchedule")
        },
    )
    .await?;
    assert_eq!(taints.split_whitespace().count(), 2, "{taints}");

    // The pod tolerating the taint for 2 s is marked not ready, then evicted (kwok may
    // finish the deletion, so the events are the record).
    common::kubectl_until(
        &cp,
        "short evicted",
        t,
        &[
            "get",
            "pod",
            "short",
            "-o",
            "jsonpath={.metadata.deletionTimestamp}",
        ],
        |o| !o.is_empty(),
    )
    .await
    .or_else(|e| {
        if e.to_string().contains("NotFound") {
            Ok(String::new())
        } else {
            Err(e)
        }
    })?;
    let events = common::kubectl_until(
        &cp,
        "eviction events",
        t,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=short",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        |o| o.contains("TaintManagerEviction") && o.contains("NodeNotReady"),
    )
    .await?;
    assert!(!events.is_empty());
    // ...the one tolerating it forever stays, and so does the pod on the healthy node.
    for p in ["forever", "elsewhere"] {
        let ts = kubectl
            .ok([
                "get",
                "pod",
                p,
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ])
            .await?;
        assert_eq!(ts, "", "{p} must not be evicted");
    }
    let healthy_taints = kubectl
        .ok(["get", "node", healthy, "-o", "jsonpath={.spec.taints}"])
        .await?;
    assert_eq!(healthy_taints, "", "the healthy node stays untainted");

    // Cordoning is mirrored as a NoSchedule taint.
    kubectl.ok(["cordon", healthy]).await?;
    common::kubectl_until(
        &cp,
        "unschedulable taint",
        t,
        &[
            "get",
            "node",
            healthy,
            "-o",
            "jsonpath={.spec.taints[*].key}",
        ],
        |o| o == "node.kubernetes.io/unschedulable",
    )
    .await?;
    kubectl.ok(["uncordon", healthy]).await?;
    common::kubectl_until(
        &cp,
        "unschedulable taint removed",
        t,
        &["get", "node", healthy, "-o", "jsonpath={.spec.taints}"],
        |o| o.is_empty(),
    )
    .await?;

    // Once the silent node is deleted, the pod GC removes what is left of its pods.
    kubectl.ok(["delete", "node", silent]).await?;
    common::kubectl_until(
        &cp,
        "pods of the deleted node gone",
        t,
        &["get", "pods", "-o", "name"],
        |o| o.trim() == "pod/elsewhere",
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ipam_hands_out_pod_cidrs() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    // Bad flags are refused with a message naming the missing one.
    let mut bad = cp.spawn_component(
        "cm-bad",
        common::binary(),
        &[
            "--controllers=nodeipam",
            "--allocate-node-cidrs",
            "--secure-port=0",
        ],
    )?;
    assert!(
        bad.wait_exit(Duration::from_secs(30))
            .is_some_and(|s| !s.success()),
        "must exit with an error"
    );
    assert!(
        bad.log_tail(10)
            .contains("--allocate-node-cidrs needs --cluster-cidr"),
        "{}",
        bad.log_tail(10)
    );

    let _cm = common::start(
        &cp,
        "controller-manager",
        &[
            "--controllers=nodeipam",
            "--allocate-node-cidrs",
            "--cluster-cidr=198.18.0.0/23",
            "--node-cidr-mask-size=24",
        ],
    )
    .await?;
    let kubectl = cp.kubectl()?;
    let t = Duration::from_secs(30);
    let node = |n: &str| format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {n}\n");
    kubectl.apply(&node("a")).await?;
    common::kubectl_until(
        &cp,
        "a's CIDR",
        t,
        &[
            "get",
            "node",
            "a",
            "-o",
            "jsonpath={.spec.podCIDR} {.spec.podCIDRs}",
        ],
        |o| o == "198.18.0.0/24 [\"198.18.0.0/24\"]",
    )
    .await?;
    kubectl.apply(&node("b")).await?;
    common::kubectl_until(
        &cp,
        "b's CIDR",
        t,
        &["get", "node", "b", "-o", "jsonpath={.spec.podCIDR}"],
        |o| o == "198.18.1.0/24",
    )
    .await?;
    // The range is full: c waits, with an event saying why.
    kubectl.apply(&node("c")).await?;
    common::kubectl_until(
        &cp,
        "CIDRNotAvailable event",
        t,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=c",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
        |o| o.contains("CIDRNotAvailable"),
    )
    .await?;
    assert_eq!(
        kubectl
            .ok(["get", "node", "c", "-o", "jsonpath={.spec.podCIDR}"])
            .await?,
        ""
    );
    // Deleting a frees its range for c.
    kubectl.ok(["delete", "node", "a"]).await?;
    common::kubectl_until(
        &cp,
        "c's CIDR",
        Duration::from_secs(60),
        &["get", "node", "c", "-o", "jsonpath={.spec.podCIDR}"],
        |o| o == "198.18.0.0/24",
    )
    .await?;
    Ok(())
}
