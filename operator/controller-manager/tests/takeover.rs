//! Drop-in compatibility with upstream kube-controller-manager, on the same cluster:
//!
//! - **Takeover without churn**: workloads made by upstream's controller-manager are left
//!   exactly as they are when ours takes over (no object written: every resourceVersion of
//!   every Deployment, ReplicaSet and Pod is unchanged), and the same in the other direction.
//! - **Differential check**: one scenario script run under each controller-manager yields the
//!   same objects (names, labels, annotations, owner references, conditions and reasons).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use ferrokube_tests::process::Process;
use ferrokube_tests::{ControlPlane, kwok, upstream};

const T: Duration = Duration::from_secs(120);
const CONTROLLERS: &str = "--controllers=serviceaccount,replicaset,deployment";

fn deployment(name: &str, replicas: u32, image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      nodeName: kwok-0
      containers:
      - name: app
        image: {image}
"#
    )
}

fn start_upstream(cp: &ControlPlane, name: &str) -> anyhow::Result<Process> {
    Ok(cp.spawn_component(
        name,
        &upstream::binary("kube-controller-manager")?,
        &["--leader-elect=false", "--secure-port=0", CONTROLLERS],
    )?)
}

async fn start_ours(cp: &ControlPlane, name: &str) -> anyhow::Result<common::ControllerManager> {
    common::start(cp, name, &["--leader-elect=false", CONTROLLERS]).await
}

async fn rollout(cp: &ControlPlane, name: &str) -> anyhow::Result<()> {
    cp.kubectl()?
        .ok([
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=120s",
        ])
        .await?;
    Ok(())
}

/// `kind/name -> resourceVersion` of every Deployment, ReplicaSet and Pod in `default`.
async fn versions(cp: &ControlPlane) -> anyhow::Result<BTreeMap<String, String>> {
    let out = cp
        .kubectl()?
        .ok(["get", "deployments,replicasets,pods", "-o", "json"])
        .await?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                ),
                o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect())
}

/// Waits until our controller-manager has synced every Deployment and ReplicaSet at least
/// once and its queues are empty: from then on, anything it would change is changed.
async fn settled(
    cm: &common::ControllerManager,
    deployments: usize,
    replicasets: usize,
) -> anyhow::Result<()> {
    ferrokube_tests::wait::until(
        "our controller-manager synced everything",
        T,
        Duration::from_millis(250),
        || async {
            let m = cm.metrics().await.map_err(|e| e.to_string())?;
            let count = |queue: &str| -> usize {
                m.lines()
                    .find(|l| {
                        l.starts_with(&format!(
                            "workqueue_work_duration_seconds_count{{name=\"{queue}\"}}"
                        ))
                    })
                    .and_then(|l| l.split_whitespace().last())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let depth_zero = m
                .lines()
                .filter(|l| l.starts_with("workqueue_depth{"))
                .all(|l| l.ends_with(" 0"));
            if count("deployment") >= deployments
                && count("replicaset") >= replicasets
                && depth_zero
            {
                Ok(())
            } else {
                Err(format!(
                    "deployment syncs {}, replicaset syncs {}, queues empty {depth_zero}",
                    count("deployment"),
                    count("replicaset")
                ))
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_in_both_directions_changes_nothing() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let _kwok = kwok::start(&cp, "kwok", 1).await?;
    let kubectl = cp.kubectl()?;

    // Upstream builds the workloads, including a second revision.
    let mut up = start_upstream(&cp, "upstream-kcm")?;
    common::kubectl_until(
        &cp,
        "default SA",
        T,
        &["get", "sa", "default", "-o", "name"],
        |o| !o.is_empty(),
    )
    .await?;
    kubectl
        .apply(&deployment("web", 3, "registry.invalid/web:1"))
        .await?;
    kubectl
        .apply(&deployment("api", 2, "registry.invalid/api:1"))
        .await?;
    rollout(&cp, "web").await?;
    rollout(&cp, "api").await?;
    kubectl
        .ok([
            "set",
            "image",
            "deployment/web",
            "app=registry.invalid/web:2",
        ])
        .await?;
    rollout(&cp, "web").await?;
    let before = versions(&cp).await?;
    up.stop(Duration::from_secs(10));

    let ours = start_ours(&cp, "ferrokube-kcm").await?;
    settled(&ours, 2, 3).await?;
    let after = versions(&cp).await?;
    assert_eq!(
        before, after,
        "taking over from upstream must write nothing"
    );

    // Ours changes something, then hands back to upstream.
    kubectl
        .ok(["scale", "deployment/api", "--replicas=4"])
        .await?;
    rollout(&cp, "api").await?;
    let before = versions(&cp).await?;
    drop(ours);
    let mut up = start_upstream(&cp, "upstream-kcm-2")?;
    // Upstream has no queue metrics to watch here; give it a bounded window in which any
    // write would show, checking the whole time.
    let window = std::time::Instant::now();
    while window.elapsed() < Duration::from_secs(15) {
        assert_eq!(
            before,
            versions(&cp).await?,
            "upstream taking over from ferrokube wrote something"
        );
        assert!(!up.has_exited(), "upstream exited:\n{}", up.log_tail(20));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

/// The objects a scenario leaves, reduced to what both implementations must agree on.
async fn normalized(cp: &ControlPlane) -> anyhow::Result<serde_json::Value> {
    // `rollout status` returns when the Deployment is done; the old ReplicaSets' own status
    // (observedGeneration after their scale-down) may still be on its way, their scaled-down
    // pods may still be terminating (kwok deletes them a moment later), and the Deployment's
    // sums follow its ReplicaSets' one sync later. Compare only the settled state: every
    // object has observed its latest generation, no pod is terminating, and each
    // Deployment's counts agree with its ReplicaSets'.
    let out = common::kubectl_until(
        cp,
        "every Deployment and ReplicaSet to observe its generation, count no terminating pod and agree on counts",
        T,
        &["get", "deployments,replicasets", "-o", "json"],
        |o| {
            let v: serde_json::Value = serde_json::from_str(o).unwrap_or_default();
            v["items"].as_array().is_some_and(|items| {
                items
                    .iter()
                    .all(|i| i["metadata"]["generation"] == i["status"]["observedGeneration"])
                    && items
                        .iter()
                        .all(|i| i["status"]["terminatingReplicas"].as_u64().unwrap_or(0) == 0)
                    && items
                        .iter()
                        .filter(|i| i["kind"] == "Deployment")
                        .all(|d| counts_agree(d, items))
            })
        },
    )
    .await?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let mut objects = BTreeMap::new();
    for o in v["items"].as_array().into_iter().flatten() {
        let kind = o["kind"].as_str().unwrap_or_default().to_string();
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let owners: Vec<serde_json::Value> = o["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| serde_json::json!({"kind": r["kind"], "name": r["name"], "controller": r["controller"], "blockOwnerDeletion": r["blockOwnerDeletion"]}))
            .collect();
        let mut annotations = o["metadata"]["annotations"].clone();
        if let Some(a) = annotations.as_object_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        let conditions: Vec<serde_json::Value> = o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| serde_json::json!({"type": c["type"], "status": c["status"], "reason": c["reason"], "message": c["message"]}))
            .collect();
        let mut status = o["status"].clone();
        if let Some(s) = status.as_object_mut() {
            s.remove("conditions");
            // How many scaling steps a rollout takes depends on when pods turn ready, so
            // generations differ from run to run even with one implementation; that each
            // object observed its latest generation is checked above.
            s.remove("observedGeneration");
        }
        objects.insert(
            format!("{kind}/{name}"),
            serde_json::json!({
                "labels": o["metadata"]["labels"],
                "annotations": annotations,
                "owners": owners,
                "replicas": o["spec"]["replicas"],
                "status": status,
                "conditions": conditions,
            }),
        );
    }
    Ok(serde_json::to_value(objects)?)
}

/// Whether a Deployment's status counts equal the sums over the ReplicaSets it controls, as
/// the deployment controller computes them once it has seen their latest status.
fn counts_agree(deployment: &serde_json::Value, items: &[serde_json::Value]) -> bool {
    let name = &deployment["metadata"]["name"];
    let owned: Vec<&serde_json::Value> = items
        .iter()
        .filter(|i| i["kind"] == "ReplicaSet")
        .filter(|rs| {
            rs["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["kind"] == "Deployment" && &r["name"] == name)
        })
        .collect();
    // terminatingReplicas needs no sum: the caller waits for it to be 0 everywhere.
    ["replicas", "readyReplicas", "availableReplicas"]
        .iter()
        .all(|field| {
            let sum: u64 = owned
                .iter()
                .map(|rs| rs["status"][field].as_u64().unwrap_or(0))
                .sum();
            deployment["status"][field].as_u64().unwrap_or(0) == sum
        })
}

async fn scenario(cp: &ControlPlane) -> anyhow::Result<Vec<serde_json::Value>> {
    let kubectl = cp.kubectl()?;
    let mut snapshots = Vec::new();
    common::kubectl_until(
        cp,
        "default SA",
        T,
        &["get", "sa", "default", "-o", "name"],
        |o| !o.is_empty(),
    )
    .await?;
    kubectl
        .apply(&deployment("web", 3, "registry.invalid/web:1"))
        .await?;
    rollout(cp, "web").await?;
    snapshots.push(normalized(cp).await?);
    kubectl
        .ok(["scale", "deployment/web", "--replicas=5"])
        .await?;
    rollout(cp, "web").await?;
    snapshots.push(normalized(cp).await?);
    kubectl
        .ok([
            "set",
            "image",
            "deployment/web",
            "app=registry.invalid/web:2",
        ])
        .await?;
    rollout(cp, "web").await?;
    snapshots.push(normalized(cp).await?);
    kubectl.ok(["rollout", "undo", "deployment/web"]).await?;
    rollout(cp, "web").await?;
    snapshots.push(normalized(cp).await?);
    Ok(snapshots)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_scenario_yields_the_same_objects() -> anyhow::Result<()> {
    let upstream_result = {
        let cp = ControlPlane::start().await?;
        let _kwok = kwok::start(&cp, "kwok", 1).await?;
        let _up = start_upstream(&cp, "upstream-kcm")?;
        scenario(&cp).await?
    };
    let ours_result = {
        let cp = ControlPlane::start().await?;
        let _kwok = kwok::start(&cp, "kwok", 1).await?;
        let _ours = start_ours(&cp, "ferrokube-kcm").await?;
        scenario(&cp).await?
    };
    for (step, (u, o)) in upstream_result.iter().zip(&ours_result).enumerate() {
        assert_eq!(
            u,
            o,
            "step {step} differs\nupstream: {}\nferrokube: {}",
            serde_json::to_string_pretty(u)?,
            serde_json::to_string_pretty(o)?
        );
    }
    Ok(())
}
