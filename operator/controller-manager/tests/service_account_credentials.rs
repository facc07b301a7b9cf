//! Controllers under `--use-service-account-credentials=true` (kubeadm's default): each acts
//! as `system:serviceaccount:kube-system:<name>`, limited by upstream's bootstrap
//! `system:controller:<name>` ClusterRole. Several of those grant `update` but not `patch`
//! (deployments and deployments/status, replicasets/status, namespaces/status, configmaps
//! for root-ca-cert-publisher), so these tests prove that each controller's writes get
//! through: a rollout completes, a namespace with content is deleted, a tampered CA
//! ConfigMap is repaired, and the node controllers taint, evict and collect.

mod common;

use std::time::Duration;

use ferrokube_controller_manager::controllers::root_ca_cert_publisher::DESCRIPTION;
use ferrokube_tests::{ControlPlane, kwok};

const T: Duration = Duration::from_secs(90);
const SA_CREDENTIALS: &str = "--use-service-account-credentials=true";
/// What the controller-manager logs once, per writer, when a patch is refused and it
/// switches to update (PUT).
const SWITCHED_STATUS: &str = "writing status with update from now on";
const SWITCHED_OBJECT: &str = "writing the object with update from now on";

/// Fails if a sync failed on RBAC: the one refusal allowed per writer is logged at INFO
/// (the switch to update), anything at WARN or ERROR naming "forbidden" is a bug.
fn assert_no_refusals(log: &str) {
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| (l.contains("WARN") || l.contains("ERROR")) && l.contains("forbidden"))
        .collect();
    assert!(refusals.is_empty(), "syncs failed on RBAC:\n{refusals:#?}");
}

async fn default_service_account(cp: &ControlPlane, ns: &str) -> anyhow::Result<()> {
    common::kubectl_until(
        cp,
        &format!("default SA in {ns}"),
        T,
        &["get", "serviceaccount", "default", "-n", ns, "-o", "name"],
        |o| !o.trim().is_empty(),
    )
    .await?;
    Ok(())
}

fn deployment(image: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
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
      nodeName: kwok-node-0
      containers:
      - name: app
        image: {image}
        ports:
        - containerPort: 80
"#
    )
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
  - port: 80
    targetPort: 80
"#;

async fn rollout_status(cp: &ControlPlane) -> anyhow::Result<()> {
    let out = cp
        .kubectl()?
        .ok(["rollout", "status", "deployment/web", "--timeout=90s"])
        .await?;
    anyhow::ensure!(out.contains("successfully rolled out"), "{out}");
    Ok(())
}

/// `deployment-controller` (update-only on deployments/status) and `replicaset-controller`
/// (update-only on replicasets/status) roll a Deployment out twice; endpoints and
/// endpointslices follow its pods; `root-ca-cert-publisher` (create/update on configmaps,
/// no patch) repairs its ConfigMap; the garbage collector removes the ReplicaSets and pods
/// of the deleted Deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_rolls_out_under_service_account_credentials() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    // Panicking while the control plane is alive dumps its components' logs.
    if let Err(e) = deployment_rolls_out_on(&cp).await {
        panic!("{e:?}");
    }
    Ok(())
}

async fn deployment_rolls_out_on(cp: &ControlPlane) -> anyhow::Result<()> {
    let cm = common::start(
        cp,
        "controller-manager",
        &[
            "--leader-elect=false",
            SA_CREDENTIALS,
            "--controllers=serviceaccount,replicaset,deployment,endpoint,endpointslice,garbagecollector,root-ca-cert-publisher",
        ],
    )
    .await?;
    default_service_account(cp, "default").await?;
    let _kwok = kwok::start(cp, "kwok-node", 1).await?;
    let kubectl = cp.kubectl()?;

    kubectl.apply(&deployment("nginx:1.25")).await?;
    kubectl.apply(SERVICE).await?;
    rollout_status(cp).await?;
    let counts = "jsonpath={.status.observedGeneration}/{.status.replicas}/{.status.updatedReplicas}/{.status.readyReplicas}/{.status.availableReplicas}/{.metadata.annotations.deployment\\.kubernetes\\.io/revision}";
    common::kubectl_until(
        cp,
        "status after the first rollout",
        T,
        &["get", "deploy", "web", "-o", counts],
        |o| o.trim() == "1/3/3/3/3/1",
    )
    .await?;

    // A rolling update: new ReplicaSet scaled up, old one down, status and revision
    // annotation written on the way.
    kubectl
        .ok(["set", "image", "deployment/web", "app=nginx:1.26"])
        .await?;
    rollout_status(cp).await?;
    common::kubectl_until(
        cp,
        "status after the rolling update",
        T,
        &["get", "deploy", "web", "-o", counts],
        |o| o.trim() == "2/3/3/3/3/2",
    )
    .await?;
    common::kubectl_until(
        cp,
        "conditions after the rolling update",
        T,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Available\")].reason}/{.status.conditions[?(@.type==\"Progressing\")].reason}",
        ],
        |o| o.trim() == "MinimumReplicasAvailable/NewReplicaSetAvailable",
    )
    .await?;
    common::kubectl_until(
        cp,
        "ReplicaSet statuses",
        T,
        &[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.replicas}/{.status.replicas}/{.status.readyReplicas} {end}",
        ],
        |o| {
            let mut v: Vec<&str> = o.split_whitespace().collect();
            v.sort_unstable();
            // A zero readyReplicas may be omitted.
            v.len() == 2 && v[0].starts_with("0/0/") && v[1] == "3/3/3"
        },
    )
    .await?;

    // endpoint-controller and endpointslice-controller publish the three pods.
    common::kubectl_until(
        cp,
        "three endpoints",
        T,
        &[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ],
        |o| o.split_whitespace().count() == 3,
    )
    .await?;
    common::kubectl_until(
        cp,
        "three endpoints in slices",
        T,
        &[
            "get",
            "endpointslices",
            "-l",
            "kubernetes.io/service-name=web",
            "-o",
            "json",
        ],
        // The whole list, so that a timeout shows what the slices held.
        |o| {
            let v: serde_json::Value = serde_json::from_str(o).unwrap_or_default();
            let endpoints: usize = v["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["endpoints"].as_array())
                .map(Vec::len)
                .sum();
            endpoints == 3
        },
    )
    .await?;

    // root-ca-cert-publisher repairs a tampered ConfigMap with an update.
    common::kubectl_until(
        cp,
        "kube-root-ca.crt",
        T,
        &["get", "configmap", "kube-root-ca.crt", "-o", "name"],
        |o| !o.trim().is_empty(),
    )
    .await?;
    kubectl
        .ok([
            "patch",
            "configmap",
            "kube-root-ca.crt",
            "--type=merge",
            "-p",
            r#"{"data":{"ca.crt":"tampered","extra":"x"},"metadata":{"annotations":{"kubernetes.io/description":""}}}"#,
        ])
        .await?;
    common::kubectl_until(
        cp,
        "kube-root-ca.crt restored",
        T,
        &["get", "configmap", "kube-root-ca.crt", "-o", "json"],
        |o| {
            let v: serde_json::Value = serde_json::from_str(o).unwrap_or_default();
            v["data"]["ca.crt"].as_str().map(str::trim) == Some(cp.pki.ca.pair.cert_pem.trim())
                && v["data"].as_object().is_some_and(|d| d.len() == 1)
                && v["metadata"]["annotations"]["kubernetes.io/description"] == DESCRIPTION
        },
    )
    .await?;

    // generic-garbage-collector removes what the Deployment owned.
    kubectl
        .ok(["delete", "deployment", "web", "--cascade=background"])
        .await?;
    common::kubectl_until(
        cp,
        "ReplicaSets and pods collected",
        T,
        &["get", "rs,pods", "-l", "app=web", "-o", "name"],
        |o| o.trim().is_empty(),
    )
    .await?;

    let log = std::fs::read_to_string(cm.process.log_path())?;
    // The switch is logged with the refusal, which names the controller's own account.
    for account in ["deployment-controller", "replicaset-controller"] {
        let user = format!("system:serviceaccount:kube-system:{account}");
        assert!(
            log.lines()
                .any(|l| l.contains(SWITCHED_STATUS) && l.contains(&user)),
            "{account} never switched to writing status with update:\n{log}"
        );
    }
    assert!(
        log.contains(SWITCHED_OBJECT),
        "root-ca-cert-publisher never switched to update:\n{log}"
    );
    assert_no_refusals(&log);
    Ok(())
}

/// `namespace-controller` (update-only on namespaces/status and namespaces/finalize)
/// empties and removes a namespace holding a ConfigMap, writing its status conditions on
/// the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_is_deleted_under_service_account_credentials() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    if let Err(e) = namespace_is_deleted_on(&cp).await {
        panic!("{e:?}");
    }
    Ok(())
}

async fn namespace_is_deleted_on(cp: &ControlPlane) -> anyhow::Result<()> {
    let cm = common::start(
        cp,
        "controller-manager",
        &[
            "--leader-elect=false",
            SA_CREDENTIALS,
            "--controllers=serviceaccount,namespace,garbagecollector",
        ],
    )
    .await?;
    let kubectl = cp.kubectl()?;
    kubectl.ok(["create", "namespace", "demo"]).await?;
    default_service_account(cp, "demo").await?;
    kubectl
        .ok([
            "create",
            "configmap",
            "settings",
            "-n",
            "demo",
            "--from-literal=k=v",
        ])
        .await?;
    kubectl
        .ok(["delete", "namespace", "demo", "--wait=false"])
        .await?;
    common::kubectl_until(
        cp,
        "namespace demo gone",
        T,
        &[
            "get",
            "namespace",
            "demo",
            "--ignore-not-found",
            "-o",
            "name",
        ],
        |o| o.trim().is_empty(),
    )
    .await?;
    let log = std::fs::read_to_string(cm.process.log_path())?;
    assert!(
        log.contains(SWITCHED_STATUS),
        "namespace status never written with update:\n{log}"
    );
    assert!(
        !log.contains("couldn't update status conditions"),
        "conditions not written:\n{log}"
    );
    assert_no_refusals(&log);
    Ok(())
}

/// The controllers sharing `node-controller` (nodeipam, nodelifecycle, taint eviction) and
/// `pod-garbage-collector`: a new node gets a Pod CIDR, a silent node is marked Unknown and
/// tainted, its pod evicted, and once the node is deleted its pods are collected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_controllers_work_under_service_account_credentials() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    if let Err(e) = node_controllers_on(&cp).await {
        panic!("{e:?}");
    }
    Ok(())
}

async fn node_controllers_on(cp: &ControlPlane) -> anyhow::Result<()> {
    let cm = common::start(
        cp,
        "controller-manager",
        &[
            "--leader-elect=false",
            SA_CREDENTIALS,
            "--controllers=serviceaccount,nodeipam,nodelifecycle,taint-eviction-controller,podgc",
            "--allocate-node-cidrs",
            "--cluster-cidr=198.18.0.0/16",
            "--node-cidr-mask-size=24",
            "--node-monitor-period=1s",
            "--node-monitor-grace-period=5s",
            "--node-eviction-rate=10",
            "--pod-gc-period=1s",
        ],
    )
    .await?;
    default_service_account(cp, "default").await?;
    let kw = kwok::start(cp, "node", 2).await?;
    let (healthy, silent) = (&kw.nodes[0], &kw.nodes[1]);
    let kubectl = cp.kubectl()?;

    common::kubectl_until(
        cp,
        "Pod CIDRs",
        T,
        &[
            "get",
            "nodes",
            "-o",
            "jsonpath={range .items[*]}{.spec.podCIDR} {end}",
        ],
        |o| o.split_whitespace().count() == 2,
    )
    .await?;

    kubectl
        .apply(&common::tolerating_pod("short", silent, Some(2)))
        .await?;
    kubectl
        .apply(&common::tolerating_pod("elsewhere", healthy, Some(2)))
        .await?;
    common::pods_ready(cp, &["short", "elsewhere"], T).await?;
    kw.silence(cp, silent).await?;
    common::kubectl_until(
        cp,
        "silent node Unknown and tainted",
        T,
        &[
            "get",
            "node",
            silent,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {range .spec.taints[*]}{.key}:{.effect} {end}",
        ],
        |o| o.starts_with("Unknown") && o.contains("node.kubernetes.io/unreachable:NoExecute"),
    )
    .await?;
    common::kubectl_until(
        cp,
        "eviction events",
        T,
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

    kubectl.ok(["delete", "node", silent]).await?;
    common::kubectl_until(
        cp,
        "pods of the deleted node gone",
        T,
        &["get", "pods", "-o", "name"],
        |o| o.trim() == "pod/elsewhere",
    )
    .await?;
    let log = std::fs::read_to_string(cm.process.log_path())?;
    assert_no_refusals(&log);
    Ok(())
}
