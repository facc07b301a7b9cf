//! The deployment-controller end to end, driven by stock kubectl, with kwok marking pods
//! Running and Ready: create, scale, rolling update to completion (`rollout status`),
//! history, undo, pause/resume, Recreate, revisionHistoryLimit and the progress deadline.

mod common;

use std::time::Duration;

use ferrokube_tests::{ControlPlane, kwok};

const T: Duration = Duration::from_secs(90);

async fn start(cp: &ControlPlane) -> anyhow::Result<(common::ControllerManager, kwok::Kwok)> {
    let cm = common::start(
        cp,
        "controller-manager",
        &[
            "--leader-elect=false",
            "--controllers=serviceaccount,replicaset,deployment",
        ],
    )
    .await?;
    common::kubectl_until(
        cp,
        "default SA",
        T,
        &["get", "serviceaccount", "default", "-o", "name"],
        |o| !o.trim().is_empty(),
    )
    .await?;
    let k = kwok::start(cp, "kwok-node", 1).await?;
    Ok((cm, k))
}

fn deployment(name: &str, replicas: u32, image: &str, extra_spec: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  revisionHistoryLimit: 2
  selector:
    matchLabels:
      app: {name}
{extra_spec}
  template:
    metadata:
      labels:
        app: {name}
    spec:
      nodeName: kwok-node-0
      containers:
      - name: app
        image: {image}
"#
    )
}

async fn jsonpath(cp: &ControlPlane, what: &str, args: &[&str], want: &str) -> anyhow::Result<()> {
    common::kubectl_until(cp, what, T, args, |o| o.trim() == want).await?;
    Ok(())
}

async fn rollout_status(cp: &ControlPlane, name: &str) -> anyhow::Result<String> {
    let out = cp
        .kubectl()?
        .ok([
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=90s",
        ])
        .await?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_scales_undoes_and_pauses() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let (_cm, _kwok) = start(&cp).await?;
    let kubectl = cp.kubectl()?;

    kubectl
        .apply(&deployment("web", 3, "nginx:1.25", ""))
        .await?;
    let out = rollout_status(&cp, "web").await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    jsonpath(
        &cp,
        "status after first rollout",
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.replicas}/{.status.updatedReplicas}/{.status.readyReplicas}/{.status.availableReplicas}/{.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
        ],
        "3/3/3/3/1",
    )
    .await?;
    jsonpath(
        &cp,
        "conditions",
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Available\")].reason}/{.status.conditions[?(@.type==\"Progressing\")].reason}",
        ],
        "MinimumReplicasAvailable/NewReplicaSetAvailable",
    )
    .await?;
    // The ReplicaSet is named after the template hash, with the replicas annotations.
    let rs = kubectl
        .ok([
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}/{.items[0].metadata.labels.pod-template-hash}/{.items[0].metadata.annotations.deployment\\.kubernetes\\.io/desired-replicas}/{.items[0].metadata.annotations.deployment\\.kubernetes\\.io/max-replicas}",
        ])
        .await?;
    let parts: Vec<&str> = rs.trim().split('/').collect();
    assert_eq!(parts.len(), 4, "{rs}");
    assert_eq!(parts[0], format!("web-{}", parts[1]));
    assert_eq!(&parts[2..], &["3", "4"], "{rs}");

    // Scale.
    kubectl
        .ok(["scale", "deploy", "web", "--replicas=5"])
        .await?;
    jsonpath(
        &cp,
        "scaled to 5",
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.availableReplicas}",
        ],
        "5",
    )
    .await?;

    // Rolling update to a new image.
    kubectl
        .ok(["set", "image", "deploy/web", "app=nginx:1.26"])
        .await?;
    let out = rollout_status(&cp, "web").await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    jsonpath(
        &cp,
        "two ReplicaSets, old one scaled to 0",
        &[
            "get",
            "rs",
            "-l",
            "app=web",
            "--sort-by=.metadata.annotations.deployment\\.kubernetes\\.io/revision",
            "-o",
            "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/revision}:{.spec.replicas};{end}",
        ],
        "1:0;2:5;",
    )
    .await?;
    let history = kubectl.ok(["rollout", "history", "deploy/web"]).await?;
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo: back to nginx:1.25, which becomes revision 3 (the old ReplicaSet is reused).
    kubectl.ok(["rollout", "undo", "deploy/web"]).await?;
    let out = rollout_status(&cp, "web").await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    jsonpath(
        &cp,
        "undo reused the first ReplicaSet",
        &[
            "get",
            "rs",
            "-l",
            "app=web",
            "--sort-by=.metadata.annotations.deployment\\.kubernetes\\.io/revision",
            "-o",
            "jsonpath={range .items[*]}{.spec.template.spec.containers[0].image}:{.metadata.annotations.deployment\\.kubernetes\\.io/revision}:{.spec.replicas};{end}",
        ],
        "nginx:1.26:2:0;nginx:1.25:3:5;",
    )
    .await?;

    // Pause: template changes are not rolled out until resumed.
    kubectl.ok(["rollout", "pause", "deploy/web"]).await?;
    jsonpath(
        &cp,
        "paused condition",
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].reason}",
        ],
        "DeploymentPaused",
    )
    .await?;
    kubectl
        .ok(["set", "image", "deploy/web", "app=nginx:1.27"])
        .await?;
    jsonpath(
        &cp,
        "paused deployment observed",
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.metadata.generation}={.status.observedGeneration}",
        ],
        &{
            let g = kubectl
                .ok([
                    "get",
                    "deploy",
                    "web",
                    "-o",
                    "jsonpath={.metadata.generation}",
                ])
                .await?;
            format!("{g}={g}")
        },
    )
    .await?;
    let n = kubectl
        .ok(["get", "rs", "-l", "app=web", "-o", "name"])
        .await?;
    assert_eq!(n.lines().count(), 2, "no new ReplicaSet while paused: {n}");
    kubectl.ok(["rollout", "resume", "deploy/web"]).await?;
    let out = rollout_status(&cp, "web").await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    jsonpath(
        &cp,
        "history limited to 2 old ReplicaSets",
        &[
            "get",
            "rs",
            "-l",
            "app=web",
            "--sort-by=.metadata.annotations.deployment\\.kubernetes\\.io/revision",
            "-o",
            "jsonpath={range .items[*]}{.metadata.annotations.deployment\\.kubernetes\\.io/revision};{end}",
        ],
        "2;3;4;",
    )
    .await?;

    let events = kubectl
        .ok([
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=Deployment,involvedObject.name=web",
            "-o",
            "jsonpath={range .items[*]}{.reason}:{.message}{\"\\n\"}{end}",
        ])
        .await?;
    assert!(
        events.contains("ScalingReplicaSet:Scaled up replica set web-")
            && events.contains("ScalingReplicaSet:Scaled down replica set web-"),
        "{events}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_recreate_and_progress_deadline() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let (_cm, _kwok) = start(&cp).await?;
    let kubectl = cp.kubectl()?;

    kubectl
        .apply(&deployment(
            "batch",
            2,
            "busybox:1",
            "  strategy:\n    type: Recreate",
        ))
        .await?;
    rollout_status(&cp, "batch").await?;
    kubectl
        .ok(["set", "image", "deploy/batch", "app=busybox:2"])
        .await?;
    let out = rollout_status(&cp, "batch").await?;
    assert!(out.contains("successfully rolled out"), "{out}");
    jsonpath(
        &cp,
        "recreate finished",
        &[
            "get",
            "deploy",
            "batch",
            "-o",
            "jsonpath={.status.updatedReplicas}/{.status.availableReplicas}",
        ],
        "2/2",
    )
    .await?;

    // A rollout that can never progress (its pods go to a node nobody runs) times out.
    kubectl
        .apply(
            &deployment("stuck", 1, "nginx:1.25", "  progressDeadlineSeconds: 3")
                .replace("nodeName: kwok-node-0", "nodeName: no-such-node"),
        )
        .await?;
    jsonpath(
        &cp,
        "ProgressDeadlineExceeded",
        &[
            "get",
            "deploy",
            "stuck",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Progressing\")].status}/{.status.conditions[?(@.type==\"Progressing\")].reason}",
        ],
        "False/ProgressDeadlineExceeded",
    )
    .await?;
    jsonpath(
        &cp,
        "MinimumReplicasUnavailable",
        &[
            "get",
            "deploy",
            "stuck",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Available\")].reason}",
        ],
        "MinimumReplicasUnavailable",
    )
    .await?;
    let out = kubectl
        .run(["rollout", "status", "deploy/stuck", "--timeout=20s"], None)
        .await?;
    assert!(
        !out.success() && out.stderr.contains("exceeded its progress deadline"),
        "{out:?}"
    );
    Ok(())
}
