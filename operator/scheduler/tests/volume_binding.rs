//! VolumeBinding end to end, side by side with upstream's kube-scheduler on the same
//! apiserver: pods whose claims are bound land where their volumes are, and pods whose
//! claims are missing, unbound or bound to an unreachable volume get upstream's message.

mod common;

use std::time::Duration;

use common::NodeSpec;
use ferrokube_tests::ControlPlane;
use serde_json::json;

const NS: &str = "vol";

/// A PersistentVolume reachable only from nodes labelled `zone=<zone>`, bound to `claim`.
fn pv(name: &str, zone: &str, claim: &str) -> String {
    json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": name},
        "spec": {
            "capacity": {"storage": "1Gi"},
            "accessModes": ["ReadWriteOnce"],
            "hostPath": {"path": format!("/tmp/{name}")},
            "claimRef": {"namespace": NS, "name": claim},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "zone", "operator": "In", "values": [zone]}
            ]}]}},
        },
    })
    .to_string()
}

/// A claim; bound to `volume` the way the PV controller leaves it when `volume` is set.
fn pvc(name: &str, volume: Option<&str>) -> String {
    let mut c = json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}},
            "storageClassName": "",
        },
    });
    if let Some(v) = volume {
        c["spec"]["volumeName"] = json!(v);
        c["metadata"]["annotations"] = json!({"pv.kubernetes.io/bind-completed": "yes"});
    }
    c.to_string()
}

fn pod_using(name: &str, claim: &str, ours: bool) -> String {
    let mut extra = json!({
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
    });
    if ours {
        extra["schedulerName"] = json!("ferrokube-scheduler");
    }
    common::pod_manifest(NS, name, "100m", extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_claims_place_pods_and_failures_match_upstream() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    for (name, zone) in [("node-a", "a"), ("node-b", "b")] {
        common::node(
            &cp,
            &NodeSpec {
                name,
                cpu: "4",
                memory: "8Gi",
                labels: &[("zone", zone)],
                ..NodeSpec::default()
            },
        )
        .await?;
    }
    common::namespace(&cp, NS).await?;
    let kubectl = cp.kubectl()?;
    for manifest in [
        pv("pv-a", "a", "data-a"),
        pvc("data-a", Some("pv-a")),
        pv("pv-c", "c", "data-c"),
        pvc("data-c", Some("pv-c")),
        pvc("unbound", None),
        pvc("gone-pv", Some("pv-never-created")),
    ] {
        kubectl.apply(&manifest).await?;
    }

    let upstream_bin = ferrokube_tests::upstream::binary("kube-scheduler")?;
    let upstream_port = ferrokube_tests::controlplane::free_port()?;
    let mut upstream = cp.spawn_component(
        "kube-scheduler",
        &upstream_bin,
        &[
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            &format!("--secure-port={upstream_port}"),
        ],
    )?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ferrokube-scheduler.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nleaderElection:\n  leaderElect: false\nprofiles:\n- schedulerName: ferrokube-scheduler\n",
    )?;
    let config_flag = format!("--config={}", config.display());
    let result = async {
        let _ours = common::start(&cp, "ferrokube-scheduler", &[&config_flag]).await?;

        // A bound claim takes the pod to its volume's zone.
        for (name, ours) in [("a-up", false), ("a-ours", true)] {
            common::pod(&cp, &pod_using(name, "data-a", ours)).await?;
            assert_eq!(common::bound_node(&cp, NS, name).await?, "node-a", "{name}");
        }

        // Missing claim, unbound claim, a volume no node reaches, a claim bound to a
        // volume that does not exist: the same message from both schedulers.
        let mut mismatches = Vec::new();
        for claim in ["missing", "unbound", "data-c", "gone-pv"] {
            let (up, ours) = (format!("{claim}-up"), format!("{claim}-ours"));
            common::pod(&cp, &pod_using(&up, claim, false)).await?;
            common::pod(&cp, &pod_using(&ours, claim, true)).await?;
            let want = common::unschedulable_message(&cp, NS, &up).await?;
            let got = common::unschedulable_message(&cp, NS, &ours).await?;
            if got != want {
                mismatches.push(format!(
                    "claim {claim}:\n  ours:     {got}\n  upstream: {want}"
                ));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));

        // The missing claim appears, bound to a volume in zone b: the waiting pod is
        // scheduled there without any change to the pod itself.
        kubectl.apply(&pv("pv-b", "b", "missing")).await?;
        kubectl.apply(&pvc("missing", Some("pv-b"))).await?;
        assert_eq!(common::bound_node(&cp, NS, "missing-ours").await?, "node-b");
        anyhow::Ok(())
    }
    .await;
    upstream.stop(Duration::from_secs(5));
    if result.is_err() {
        eprintln!("{}", cp.logs(80));
    }
    result
}
