//! The replicationcontroller-controller end to end, driven by stock kubectl, with kwok
//! marking pods Running and Ready: pods from the template with a `v1/ReplicationController`
//! controller reference, adoption of an orphan, `kubectl scale rc` both ways, the full
//! status (ready, available, observedGeneration, no terminatingReplicas), events from
//! `replication-controller`, and a ResourceQuota that forbids pods (ReplicaFailure +
//! FailedCreate, recovery once raised).

mod common;

use std::time::Duration;

use ferrokube_tests::{ControlPlane, kwok};

const T: Duration = Duration::from_secs(60);

/// A ReplicationController whose pods land on the kwok node (no scheduler runs here).
const RC: &str = r#"
apiVersion: v1
kind: ReplicationController
metadata:
  name: web
spec:
  replicas: 3
  selector:
    app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      nodeName: kwok-node-0
      containers:
      - name: nginx
        image: nginx:1.25
"#;

async fn start(cp: &ControlPlane) -> anyhow::Result<(common::ControllerManager, kwok::Kwok)> {
    let cm = common::start(
        cp,
        "controller-manager",
        &[
            "--leader-elect=false",
            // The upstream name, not the alias, to check both are accepted.
            "--controllers=serviceaccount,replicationcontroller-controller",
            "--concurrent-rc-syncs=3",
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

/// Names of the live (not terminating) pods among `name|deletionTimestamp` lines.
fn live(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_suffix('|'))
        .map(ToString::to_string)
        .collect()
}

/// Names of the live (not terminating) pods labelled app=web, once there are `want`.
async fn web_pods(cp: &ControlPlane, want: usize) -> anyhow::Result<Vec<String>> {
    let out = common::kubectl_until(
        cp,
        &format!("{want} pods app=web"),
        T,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}|{.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ],
        |o| live(o).len() == want,
    )
    .await?;
    Ok(live(&out))
}

async fn rc_jsonpath(cp: &ControlPlane, what: &str, path: &str, want: &str) -> anyhow::Result<()> {
    common::kubectl_until(
        cp,
        &format!("rc/web {what} = {want}"),
        T,
        &["get", "rc", "web", "-o", &format!("jsonpath={path}")],
        |o| o.trim() == want,
    )
    .await?;
    Ok(())
}

/// replicas/fullyLabeled/ready/available.
async fn rc_counts(cp: &ControlPlane, want: &str) -> anyhow::Result<()> {
    rc_jsonpath(
        cp,
        "counts",
        "{.status.replicas}/{.status.fullyLabeledReplicas}/{.status.readyReplicas}/{.status.availableReplicas}",
        want,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicationcontroller_creates_scales_adopts_and_reports_status() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let (_cm, _kwok) = start(&cp).await?;
    let kubectl = cp.kubectl()?;

    // An orphan that the ReplicationController adopts instead of creating a third pod.
    kubectl
        .ok([
            "run",
            "orphan",
            "--image=nginx:1.25",
            "--labels=app=web",
            r#"--overrides={"spec":{"nodeName":"kwok-node-0"}}"#,
        ])
        .await?;
    kubectl.apply(RC).await?;
    let pods = web_pods(&cp, 3).await?;
    assert!(pods.contains(&"orphan".to_string()), "{pods:?}");
    assert_eq!(
        pods.iter().filter(|p| p.starts_with("web-")).count(),
        2,
        "{pods:?}"
    );
    let want_ref = "v1/ReplicationController/web/true/true";
    for pod in &pods {
        common::kubectl_until(
            &cp,
            &format!("{pod} controlled by rc/web"),
            T,
            &[
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.metadata.ownerReferences[0].apiVersion}/{.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}/{.metadata.ownerReferences[0].blockOwnerDeletion}",
            ],
            |o| o.trim() == want_ref,
        )
        .await?;
    }
    // kwok makes the pods Ready; without minReadySeconds they are available at once.
    rc_counts(&cp, "3/3/3/3").await?;
    rc_jsonpath(
        &cp,
        "observedGeneration",
        "{.metadata.generation}/{.status.observedGeneration}",
        "1/1",
    )
    .await?;
    let status = kubectl
        .ok(["get", "rc", "web", "-o", "jsonpath={.status}"])
        .await?;
    assert!(
        !status.contains("terminatingReplicas"),
        "the RC API has no terminatingReplicas: {status}"
    );

    kubectl.ok(["scale", "rc", "web", "--replicas=5"]).await?;
    web_pods(&cp, 5).await?;
    rc_counts(&cp, "5/5/5/5").await?;
    rc_jsonpath(
        &cp,
        "observedGeneration",
        "{.metadata.generation}/{.status.observedGeneration}",
        "2/2",
    )
    .await?;

    kubectl.ok(["scale", "rc", "web", "--replicas=1"]).await?;
    let pods = web_pods(&cp, 1).await?;
    rc_counts(&cp, "1/1/1/1").await?;

    // Relabel the last pod: it is released (no controller any more) and replaced.
    let survivor = pods[0].clone();
    kubectl
        .ok(["label", "pod", &survivor, "app=other", "--overwrite"])
        .await?;
    common::kubectl_until(
        &cp,
        "relabelled pod released",
        T,
        &[
            "get",
            "pod",
            &survivor,
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ],
        |o| o.trim().is_empty(),
    )
    .await?;
    let replacement = web_pods(&cp, 1).await?;
    assert_ne!(replacement[0], survivor);

    let events = common::kubectl_until(
        &cp,
        "SuccessfulCreate and SuccessfulDelete events from replication-controller",
        T,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=ReplicationController,involvedObject.name=web",
            "-o",
            "jsonpath={range .items[*]}{.reportingComponent}:{.reason}:{.message}{\"\\n\"}{end}",
        ],
        |o| {
            o.contains("replication-controller:SuccessfulCreate:Created pod: web-")
                && o.contains("replication-controller:SuccessfulDelete:Deleted pod: ")
        },
    )
    .await?;
    assert!(!events.contains("FailedCreate"), "{events}");

    // Scaling to zero deletes every pod.
    kubectl.ok(["scale", "rc", "web", "--replicas=0"]).await?;
    web_pods(&cp, 0).await?;
    rc_jsonpath(&cp, "replicas", "{.status.replicas}", "0").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicationcontroller_quota_failure_sets_condition_and_recovers() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let (_cm, _kwok) = start(&cp).await?;
    let manifest = RC.replace("replicas: 3", "replicas: 4");
    common::quota_failure_and_recovery(&cp, "rc", "ReplicationController", &manifest).await?;
    // Ready and available too, on the kwok node.
    rc_counts(&cp, "4/4/4/4").await
}

/// Under `--use-service-account-credentials` the controller acts as
/// `system:serviceaccount:kube-system:replication-controller`, limited by the bootstrap
/// role `system:controller:replication-controller` (which allows `update`, not `patch`,
/// on `replicationcontrollers/status`): pods, status and events must all still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicationcontroller_works_with_its_own_service_account() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let cm = common::start(
        &cp,
        "controller-manager",
        &[
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            "--controllers=serviceaccount,replicationcontroller",
        ],
    )
    .await?;
    common::kubectl_until(
        &cp,
        "default SA",
        T,
        &["get", "serviceaccount", "default", "-o", "name"],
        |o| !o.trim().is_empty(),
    )
    .await?;
    let _kwok = kwok::start(&cp, "kwok-node", 1).await?;
    let kubectl = cp.kubectl()?;
    kubectl.apply(RC).await?;
    web_pods(&cp, 3).await?;
    rc_counts(&cp, "3/3/3/3").await?;
    kubectl.ok(["scale", "rc", "web", "--replicas=1"]).await?;
    web_pods(&cp, 1).await?;
    rc_counts(&cp, "1/1/1/1").await?;
    common::kubectl_until(
        &cp,
        "events from replication-controller",
        T,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=ReplicationController,involvedObject.name=web",
            "-o",
            "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
        ],
        |o| o.contains("SuccessfulCreate") && o.contains("SuccessfulDelete"),
    )
    .await?;
    // The one refusal allowed: the first status merge patch, after which the controller
    // switches to update (PUT) for good.
    let log = std::fs::read_to_string(cm.process.log_path())?;
    assert!(
        log.contains("writing status with update from now on"),
        "no switch to update:\n{log}"
    );
    let refusals = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("forbidden"))
        .count();
    assert_eq!(refusals, 0, "a sync failed on RBAC:\n{log}");
    Ok(())
}
