//! The scheduler end to end against a real apiserver: where pods land (resource fit,
//! taints, node affinity, cordoned nodes, host ports, scheduling gates), the Unschedulable
//! condition and events in upstream's words, metrics, and running beside upstream's
//! kube-scheduler.

mod common;

use std::time::Duration;

use common::NodeSpec;
use ferrokube_tests::{ControlPlane, wait};
use serde_json::json;

/// Five nodes, each distinguishable by what can land on it.
async fn five_nodes(cp: &ControlPlane) -> anyhow::Result<()> {
    for n in [
        NodeSpec {
            name: "small",
            cpu: "1",
            memory: "4Gi",
            ..NodeSpec::default()
        },
        NodeSpec {
            name: "big",
            cpu: "8",
            memory: "16Gi",
            ..NodeSpec::default()
        },
        NodeSpec {
            name: "tainted",
            cpu: "8",
            memory: "16Gi",
            taints: &[("dedicated", "db", "NoSchedule")],
            ..NodeSpec::default()
        },
        NodeSpec {
            name: "cordoned",
            cpu: "8",
            memory: "16Gi",
            unschedulable: true,
            ..NodeSpec::default()
        },
        NodeSpec {
            name: "ssd",
            cpu: "4",
            memory: "8Gi",
            labels: &[("disk", "ssd")],
            ..NodeSpec::default()
        },
    ] {
        common::node(cp, &n).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_land_where_they_fit_and_failures_are_explained() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    five_nodes(&cp).await?;
    let ns = "sched";
    common::namespace(&cp, ns).await?;
    let s = common::start(&cp, "ferrokube-scheduler", &["--leader-elect=false"]).await?;
    let result = async {
        // Resource fit: 6 cores fit only "big" (the other 8-core nodes are tainted or cordoned).
        common::pod(&cp, &common::pod_manifest(ns, "fit", "6", json!({}))).await?;
        assert_eq!(common::bound_node(&cp, ns, "fit").await?, "big");

        // Taints: a tolerating pod pinned to the tainted node goes there.
        common::pod(&cp, &common::pod_manifest(ns, "tolerates", "1", json!({
            "nodeSelector": {"kubernetes.io/hostname": "tainted"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
        }))).await?;
        assert_eq!(common::bound_node(&cp, ns, "tolerates").await?, "tainted");

        // Required node affinity.
        common::pod(&cp, &common::pod_manifest(ns, "affinity", "100m", json!({
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}}},
        }))).await?;
        assert_eq!(common::bound_node(&cp, ns, "affinity").await?, "ssd");

        // Host ports: the second pod wanting 8080 on "ssd" cannot go anywhere.
        for name in ["port-1", "port-2"] {
            common::pod(&cp, &common::pod_manifest(ns, name, "100m", json!({
                "nodeSelector": {"disk": "ssd"},
                "containers": [{"name": "c", "image": "registry.invalid/pause:3.10",
                    "ports": [{"containerPort": 80, "hostPort": 8080}]}],
            }))).await?;
        }
        assert_eq!(common::bound_node(&cp, ns, "port-1").await?, "ssd");
        let msg = common::unschedulable_message(&cp, ns, "port-2").await?;
        assert_eq!(
            msg,
            "0/5 nodes are available: 1 node(s) didn't have free ports for the requested pod ports, 1 node(s) had untolerated taint(s), 1 node(s) were unschedulable, 2 node(s) didn't match Pod's node affinity/selector. no new claims to deallocate, preemption: 0/5 nodes are available: 1 No preemption victims found for incoming pod, 4 Preemption is not helpful for scheduling."
        );

        // Too big for every node: upstream's message, condition and event.
        common::pod(&cp, &common::pod_manifest(ns, "huge", "100", json!({}))).await?;
        let msg = common::unschedulable_message(&cp, ns, "huge").await?;
        assert_eq!(
            msg,
            "0/5 nodes are available: 1 node(s) had untolerated taint(s), 1 node(s) were unschedulable, 3 Insufficient cpu. no new claims to deallocate, preemption: 0/5 nodes are available: 5 Preemption is not helpful for scheduling."
        );
        let ev = common::wait_event(&cp, ns, "huge", "FailedScheduling").await?;
        assert_eq!((ev.1.as_str(), ev.2.as_str()), ("default-scheduler", msg.as_str()));
        let ev = common::wait_event(&cp, ns, "fit", "Scheduled").await?;
        assert_eq!((ev.1.as_str(), ev.2.as_str()), ("default-scheduler", "Successfully assigned sched/fit to big"));

        // A node that fits arrives: the unschedulable pod is re-queued by the node event.
        common::node(&cp, &NodeSpec { name: "huge-node", cpu: "128", memory: "64Gi", ..NodeSpec::default() }).await?;
        assert_eq!(common::bound_node(&cp, ns, "huge").await?, "huge-node");

        // Cordoning: uncordoning "cordoned" lets a pod pinned to it land.
        common::pod(&cp, &common::pod_manifest(ns, "pinned", "1", json!({
            "nodeSelector": {"kubernetes.io/hostname": "cordoned"},
        }))).await?;
        let msg = common::unschedulable_message(&cp, ns, "pinned").await?;
        assert!(msg.contains("1 node(s) were unschedulable"), "{msg}");
        cp.kubectl()?.ok(["uncordon", "cordoned"]).await?;
        assert_eq!(common::bound_node(&cp, ns, "pinned").await?, "cordoned");

        // Scheduling gates: the pod waits, untouched, until its gate is removed.
        common::pod(&cp, &common::pod_manifest(ns, "gated", "100m", json!({
            "schedulingGates": [{"name": "example.com/wait"}],
        }))).await?;
        wait::until("gated pod reported as SchedulingGated", Duration::from_secs(10), Duration::from_millis(200), || async {
            let r = common::pod_field(&cp, ns, "gated", "{.status.conditions[?(@.type==\"PodScheduled\")].reason}")
                .await
                .map_err(|e| e.to_string())?;
            if r == "SchedulingGated" { Ok(()) } else { Err(r) }
        })
        .await?;
        // The queue lengths are published every second.
        wait::until("scheduler_pending_pods{queue=gated} 1", Duration::from_secs(10), Duration::from_millis(200), || async {
            let m = s.metrics().await.map_err(|e| e.to_string())?;
            if m.contains("scheduler_pending_pods{queue=\"gated\"} 1") { Ok(()) } else { Err(m) }
        })
        .await?;
        assert_eq!(common::pod_field(&cp, ns, "gated", "{.spec.nodeName}").await?, "");
        cp.kubectl()?
            .ok(["patch", "pod", "gated", "-n", ns, "--type=json", "-p", r#"[{"op":"remove","path":"/spec/schedulingGates"}]"#])
            .await?;
        common::bound_node(&cp, ns, "gated").await?;

        // Deleting the pod holding port 8080 frees it for port-2.
        cp.kubectl()?.ok(["delete", "pod", "port-1", "-n", ns, "--grace-period=0", "--force"]).await?;
        assert_eq!(common::bound_node(&cp, ns, "port-2").await?, "ssd");

        let metrics = s.metrics().await?;
        for want in [
            "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"}",
            "scheduler_schedule_attempts_total{result=\"unschedulable\",profile=\"default-scheduler\"}",
            "scheduler_scheduling_attempt_duration_seconds_bucket",
        ] {
            assert!(metrics.contains(want), "missing {want} in\n{metrics}");
        }
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cp.logs(80));
    }
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_beside_upstream_kube_scheduler_and_matches_its_message() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    five_nodes(&cp).await?;
    let ns = "pair";
    common::namespace(&cp, ns).await?;
    let upstream_bin = ferrokube_tests::upstream::binary("kube-scheduler")?;
    let upstream_port = ferrokube_tests::controlplane::free_port()?;
    let mut upstream = cp.spawn_component(
        "kube-scheduler",
        &upstream_bin,
        &[
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            &format!("--secure-port={upstream_port}"),
            "--v=2",
        ],
    )?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ferrokube-scheduler.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nleaderElection:\n  leaderElect: true\n  resourceName: ferrokube-scheduler\nprofiles:\n- schedulerName: ferrokube-scheduler\n",
    )?;
    let config_flag = format!("--config={}", config.display());
    let result = async {
        let _ours = common::start(&cp, "ferrokube-scheduler", &[&config_flag]).await?;
        for i in 0..3 {
            common::pod(
                &cp,
                &common::pod_manifest(ns, &format!("up-{i}"), "100m", json!({})),
            )
            .await?;
            common::pod(
                &cp,
                &common::pod_manifest(
                    ns,
                    &format!("ours-{i}"),
                    "100m",
                    json!({"schedulerName": "ferrokube-scheduler"}),
                ),
            )
            .await?;
        }
        for i in 0..3 {
            common::bound_node(&cp, ns, &format!("up-{i}")).await?;
            common::bound_node(&cp, ns, &format!("ours-{i}")).await?;
            let (_, up, _) = common::wait_event(&cp, ns, &format!("up-{i}"), "Scheduled").await?;
            assert_eq!(up, "default-scheduler");
            let (_, ours, _) =
                common::wait_event(&cp, ns, &format!("ours-{i}"), "Scheduled").await?;
            assert_eq!(ours, "ferrokube-scheduler");
        }
        // The same unschedulable pod, once per scheduler: the same message.
        for (name, extra) in [
            ("big-up", json!({})),
            ("big-ours", json!({"schedulerName": "ferrokube-scheduler"})),
        ] {
            common::pod(&cp, &common::pod_manifest(ns, name, "100", extra)).await?;
        }
        let up = common::unschedulable_message(&cp, ns, "big-up").await?;
        let ours = common::unschedulable_message(&cp, ns, "big-ours").await?;
        assert_eq!(ours, up, "ours vs upstream");
        // Each scheduler only reported on its own pods.
        for (pod, who) in [
            ("big-up", "default-scheduler"),
            ("big-ours", "ferrokube-scheduler"),
        ] {
            let evs = common::events_about(&cp, ns, pod).await?;
            assert!(
                !evs.is_empty() && evs.iter().all(|e| e.1 == who),
                "{pod}: {evs:?}"
            );
        }
        // Our Lease is ours, not kube-scheduler's.
        let holder = cp
            .kubectl()?
            .ok([
                "get",
                "lease",
                "ferrokube-scheduler",
                "-n",
                "kube-system",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .await?;
        assert!(!holder.is_empty());
        anyhow::Ok(())
    }
    .await;
    upstream.stop(Duration::from_secs(5));
    if result.is_err() {
        eprintln!("{}", cp.logs(80));
    }
    result
}
