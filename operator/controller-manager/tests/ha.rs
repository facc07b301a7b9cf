//! High availability: two controller-manager replicas with leader election on Lease
//! `kube-system/kube-controller-manager`. The leader is SIGKILLed in the middle of a
//! Deployment rollout (no chance to release the Lease, as in a node crash); the standby
//! takes the Lease once it expires, starts from fresh caches, and the rollout completes
//! with no duplicate ReplicaSets and the expected replica counts.

mod common;

use std::time::Duration;

use ferrokube_tests::{ControlPlane, kwok, wait};

const T: Duration = Duration::from_secs(90);
const REPLICAS: usize = 6;

/// Short leader-election timings (upstream's ratios) so the standby takes over within
/// seconds of the crash rather than upstream's 15s lease.
const ELECTION: &[&str] = &[
    "--leader-elect=true",
    "--leader-elect-lease-duration=6s",
    "--leader-elect-renew-deadline=4s",
    "--leader-elect-retry-period=1s",
    "--controllers=serviceaccount,replicaset,deployment",
];

/// A Deployment that rolls one pod at a time and waits 3s for each new pod to become
/// available, so that a rollout of 6 pods lasts long enough to crash in the middle of it.
fn deployment(image: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {REPLICAS}
  minReadySeconds: 3
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxSurge: 1
      maxUnavailable: 0
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
"#
    )
}

async fn lease_holder(cp: &ControlPlane) -> anyhow::Result<String> {
    let out = common::kubectl_until(
        cp,
        "controller-manager Lease held",
        T,
        &[
            "get",
            "lease",
            "-n",
            "kube-system",
            "kube-controller-manager",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
        |o| !o.trim().is_empty(),
    )
    .await?;
    Ok(out.trim().to_string())
}

/// `name spec.replicas status.replicas image` of each ReplicaSet labelled app=web.
async fn replicasets(cp: &ControlPlane) -> anyhow::Result<Vec<(String, String, String, String)>> {
    let out = cp
        .kubectl()?
        .ok([
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.replicas} {.status.replicas} {.spec.template.spec.containers[0].image}{\"\\n\"}{end}",
        ])
        .await?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [name, spec, status, image] => Some((
                    (*name).to_string(),
                    (*spec).to_string(),
                    (*status).to_string(),
                    (*image).to_string(),
                )),
                _ => None,
            }
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_rollout_standby_completes_it() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    // The first replica becomes leader (its /readyz turns 200 only when leading).
    let mut leader = common::start(&cp, "controller-manager-1", ELECTION).await?;
    let first_holder = lease_holder(&cp).await?;

    // The standby: same flags, its own health port.
    let standby_port = ferrokube_tests::controlplane::free_port()?;
    let port_flag = format!("--secure-port={standby_port}");
    let mut args = vec!["--bind-address=127.0.0.1", port_flag.as_str(), "--v=4"];
    args.extend_from_slice(ELECTION);
    let standby = common::ControllerManager {
        process: cp.spawn_component("controller-manager-2", common::binary(), &args)?,
        health_port: standby_port,
    };
    // The standby's health server answers, but it is not ready: it does not lead.
    let addr = format!("127.0.0.1:{standby_port}");
    wait::until(
        "standby /readyz answering (not ready)",
        T,
        Duration::from_millis(200),
        || {
            let addr = addr.clone();
            async move {
                match ferrokube_tests::cluster::http_status(&addr, "/readyz").await? {
                    200 => Err("standby is ready while another replica leads".to_string()),
                    _ => Ok(()),
                }
            }
        },
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

    kubectl.apply(&deployment("nginx:1.25")).await?;
    let out = kubectl
        .ok(["rollout", "status", "deployment/web", "--timeout=120s"])
        .await?;
    assert!(out.contains("successfully rolled out"), "{out}");

    // Start the rollout and wait until it is under way but not done: the new ReplicaSet
    // has some, not all, of its pods.
    kubectl
        .ok(["set", "image", "deployment/web", "app=nginx:1.26"])
        .await?;
    common::kubectl_until(
        &cp,
        "rollout under way",
        T,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.updatedReplicas}",
        ],
        |o| {
            o.trim()
                .parse::<usize>()
                .is_ok_and(|n| (2..REPLICAS).contains(&n))
        },
    )
    .await?;
    let before_crash = replicasets(&cp).await?;
    assert_eq!(
        before_crash.len(),
        2,
        "old and new ReplicaSet: {before_crash:?}"
    );

    // Crash the leader: SIGKILL, so its Lease is left to expire rather than released.
    leader.process.kill();
    standby.wait_ready().await?;
    let second_holder = lease_holder(&cp).await?;
    assert_ne!(
        first_holder, second_holder,
        "the standby holds the Lease now"
    );

    let out = kubectl
        .ok(["rollout", "status", "deployment/web", "--timeout=120s"])
        .await?;
    assert!(out.contains("successfully rolled out"), "{out}");

    // No duplicate ReplicaSet: the one made before the crash was carried on, not made
    // again; it has every replica and the old one none.
    let after = replicasets(&cp).await?;
    assert_eq!(after.len(), 2, "{after:?}");
    let names_before: Vec<&String> = before_crash.iter().map(|r| &r.0).collect();
    for rs in &after {
        assert!(
            names_before.contains(&&rs.0),
            "new ReplicaSet {rs:?} after the crash"
        );
    }
    let n = REPLICAS.to_string();
    let new = after.iter().find(|r| r.3 == "nginx:1.26");
    let old = after.iter().find(|r| r.3 == "nginx:1.25");
    assert!(
        new.is_some_and(|r| r.1 == n),
        "new ReplicaSet has {REPLICAS} replicas: {after:?}"
    );
    assert!(
        old.is_some_and(|r| r.1 == "0"),
        "old one scaled to 0: {after:?}"
    );
    common::kubectl_until(
        &cp,
        "ReplicaSet statuses settle",
        T,
        &[
            "get",
            "rs",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.template.spec.containers[0].image}={.status.replicas}/{.status.readyReplicas}/{.status.availableReplicas};{end}",
        ],
        |o| o.contains(&format!("nginx:1.26={n}/{n}/{n};")) && o.contains("nginx:1.25=0/"),
    )
    .await?;
    common::kubectl_until(
        &cp,
        "Deployment status",
        T,
        &[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.status.replicas}/{.status.updatedReplicas}/{.status.readyReplicas}/{.status.availableReplicas}/{.metadata.annotations.deployment\\.kubernetes\\.io/revision}/{.metadata.generation}/{.status.observedGeneration}",
        ],
        |o| o.trim() == format!("{n}/{n}/{n}/{n}/2/2/2"),
    )
    .await?;
    // Exactly the desired pods, all from the new template.
    let pods = common::kubectl_until(
        &cp,
        "pods all on the new template",
        T,
        &[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={range .items[*]}{.spec.containers[0].image}{\"\\n\"}{end}",
        ],
        |o| {
            let lines: Vec<&str> = o.lines().filter(|l| !l.is_empty()).collect();
            lines.len() == REPLICAS && lines.iter().all(|l| *l == "nginx:1.26")
        },
    )
    .await?;
    assert_eq!(pods.lines().count(), REPLICAS);
    Ok(())
}
