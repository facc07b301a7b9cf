//! The replicaset-controller end to end, driven by stock kubectl: pods from the template,
//! scaling both ways, adopting orphans and releasing pods whose labels change, and a
//! ResourceQuota that forbids pods (ReplicaFailure + FailedCreate, recovery once raised).

mod common;

use std::time::Duration;

use ferrokube_tests::ControlPlane;

const T: Duration = Duration::from_secs(60);

const RS: &str = r#"
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
"#;

async fn start(cp: &ControlPlane) -> anyhow::Result<common::ControllerManager> {
    let cm = common::start(
        cp,
        "controller-manager",
        &[
            "--leader-elect=false",
            "--controllers=serviceaccount,replicaset",
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
    Ok(cm)
}

/// Names of the pods labelled app=web, sorted.
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
            "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
        ],
        |o| o.lines().filter(|l| !l.is_empty()).count() == want,
    )
    .await?;
    Ok(out.lines().map(ToString::to_string).collect())
}

async fn rs_status(cp: &ControlPlane, field: &str, want: &str) -> anyhow::Result<()> {
    common::kubectl_until(
        cp,
        &format!("rs/web {field}={want}"),
        T,
        &[
            "get",
            "rs",
            "web",
            "-o",
            &format!("jsonpath={{.status.{field}}}"),
        ],
        |o| o.trim() == want,
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_creates_scales_adopts_and_releases() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let _cm = start(&cp).await?;
    let kubectl = cp.kubectl()?;

    // An orphan that the ReplicaSet will adopt instead of creating a third pod.
    kubectl
        .ok(["run", "orphan", "--image=nginx:1.25", "--labels=app=web"])
        .await?;
    kubectl.apply(RS).await?;
    let pods = web_pods(&cp, 3).await?;
    assert!(pods.contains(&"orphan".to_string()), "{pods:?}");
    assert!(
        pods.iter().filter(|p| p.starts_with("web-")).count() == 2,
        "{pods:?}"
    );
    common::kubectl_until(
        &cp,
        "orphan adopted",
        T,
        &[
            "get",
            "pod",
            "orphan",
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].controller}/{.metadata.ownerReferences[0].blockOwnerDeletion}",
        ],
        |o| o.trim() == "ReplicaSet/web/true/true",
    )
    .await?;
    rs_status(&cp, "replicas", "3").await?;
    rs_status(&cp, "fullyLabeledReplicas", "3").await?;
    common::kubectl_until(
        &cp,
        "observedGeneration",
        T,
        &[
            "get",
            "rs",
            "web",
            "-o",
            "jsonpath={.metadata.generation}/{.status.observedGeneration}",
        ],
        |o| o.trim() == "1/1",
    )
    .await?;

    kubectl.ok(["scale", "rs", "web", "--replicas=5"]).await?;
    web_pods(&cp, 5).await?;
    rs_status(&cp, "replicas", "5").await?;

    kubectl.ok(["scale", "rs", "web", "--replicas=1"]).await?;
    let pods = web_pods(&cp, 1).await?;
    rs_status(&cp, "replicas", "1").await?;

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
        "SuccessfulCreate and SuccessfulDelete events",
        T,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.kind=ReplicaSet,involvedObject.name=web",
            "-o",
            "jsonpath={range .items[*]}{.reason}:{.message}{\"\\n\"}{end}",
        ],
        |o| {
            o.contains("SuccessfulCreate:Created pod: web-")
                && o.contains("SuccessfulDelete:Deleted pod: ")
        },
    )
    .await?;
    assert!(!events.contains("FailedCreate"), "{events}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_quota_failure_sets_condition_and_recovers() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let _cm = start(&cp).await?;
    let manifest = RS.replace("replicas: 3", "replicas: 4");
    common::quota_failure_and_recovery(&cp, "rs", "ReplicaSet", &manifest).await
}

/// client-go's spam filter, as upstream's controller-manager records through it: one
/// object gets a burst of 25 events of a type, and the rest are dropped until the bucket
/// refills (one per 5 minutes). 40 pod creations therefore leave exactly 25
/// `SuccessfulCreate` events, while a Warning (its own bucket) still gets through. (Checked
/// to fail with the filter off: 40 events.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicaset_events_are_capped_by_the_spam_filter() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let _cm = start(&cp).await?;
    let kubectl = cp.kubectl()?;

    // A quota one pod short of the replicas: the 41st creation fails with a Warning.
    kubectl
        .ok(["create", "quota", "pods", "--hard=pods=40"])
        .await?;
    kubectl
        .ok([
            "patch",
            "resourcequota",
            "pods",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"hard":{"pods":"40"},"used":{"pods":"0"}}}"#,
        ])
        .await?;
    kubectl
        .apply(&RS.replace("replicas: 3", "replicas: 41"))
        .await?;
    web_pods(&cp, 40).await?;
    let events = |type_: &'static str| {
        [
            "get",
            "events",
            "--field-selector",
            match type_ {
                "Normal" => "involvedObject.kind=ReplicaSet,involvedObject.name=web,type=Normal",
                _ => "involvedObject.kind=ReplicaSet,involvedObject.name=web,type=Warning",
            },
            "-o",
            "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
        ]
    };
    // The Warning was published after every creation's event was filtered or let through.
    common::kubectl_until(&cp, "FailedCreate event", T, &events("Warning"), |o| {
        o.lines().any(|l| l == "FailedCreate")
    })
    .await?;
    let created = common::kubectl_until(
        &cp,
        "25 SuccessfulCreate events",
        T,
        &events("Normal"),
        |o| o.lines().filter(|l| *l == "SuccessfulCreate").count() >= 25,
    )
    .await?;
    let n = created.lines().filter(|l| *l == "SuccessfulCreate").count();
    assert_eq!(n, 25, "SuccessfulCreate events for 40 pods:\n{created}");
    Ok(())
}
