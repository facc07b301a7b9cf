//! The controller-manager binary end to end: leader election, health, metrics, graceful
//! shutdown, the `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap.

mod common;

use std::time::Duration;

use ferrokube_tests::ControlPlane;

const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_get_default_service_account_and_root_ca() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let mut cm = common::start(
        &cp,
        "controller-manager",
        &["--controllers=serviceaccount,root-ca-cert-publisher"],
    )
    .await?;
    let kubectl = cp.kubectl()?;
    let t = Duration::from_secs(20);

    kubectl.ok(["create", "namespace", "demo"]).await?;
    common::kubectl_until(
        &cp,
        "default SA in demo",
        t,
        &[
            "get",
            "serviceaccount",
            "default",
            "-n",
            "demo",
            "-o",
            "name",
        ],
        |o| o.trim() == "serviceaccount/default",
    )
    .await?;
    let ca = common::kubectl_until(
        &cp,
        "kube-root-ca.crt in demo",
        t,
        &[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "demo",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ],
        |o| !o.is_empty(),
    )
    .await?;
    assert_eq!(
        ca.trim(),
        cp.pki.ca.pair.cert_pem.trim(),
        "the published CA is the apiserver's CA"
    );
    let desc = kubectl
        .ok([
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "demo",
            "-o",
            "jsonpath={.metadata.annotations.kubernetes\\.io/description}",
        ])
        .await?;
    assert_eq!(desc, DESCRIPTION);
    // Namespaces that existed before the controller started are covered too.
    for ns in ["default", "kube-system", "kube-public"] {
        common::kubectl_until(
            &cp,
            &format!("default SA in {ns}"),
            t,
            &["get", "serviceaccount", "default", "-n", ns, "-o", "name"],
            |o| !o.is_empty(),
        )
        .await?;
    }

    // Deleting the ServiceAccount or tampering with the ConfigMap is undone.
    kubectl
        .ok(["delete", "serviceaccount", "default", "-n", "demo"])
        .await?;
    common::kubectl_until(
        &cp,
        "default SA recreated",
        t,
        &[
            "get",
            "serviceaccount",
            "default",
            "-n",
            "demo",
            "-o",
            "name",
        ],
        |o| !o.is_empty(),
    )
    .await?;
    kubectl.ok(["patch", "configmap", "kube-root-ca.crt", "-n", "demo", "--type=merge", "-p", r#"{"data":{"ca.crt":"tampered","extra":"x"},"metadata":{"annotations":{"kubernetes.io/description":""}}}"#]).await?;
    common::kubectl_until(
        &cp,
        "kube-root-ca.crt restored",
        t,
        &[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "demo",
            "-o",
            "json",
        ],
        |o| {
            let v: serde_json::Value = serde_json::from_str(o).unwrap_or_default();
            v["data"]["ca.crt"].as_str().map(str::trim) == Some(cp.pki.ca.pair.cert_pem.trim())
                && v["data"].as_object().is_some_and(|d| d.len() == 1)
                && v["metadata"]["annotations"]["kubernetes.io/description"] == DESCRIPTION
        },
    )
    .await?;
    kubectl
        .ok(["delete", "configmap", "kube-root-ca.crt", "-n", "demo"])
        .await?;
    common::kubectl_until(
        &cp,
        "kube-root-ca.crt recreated",
        t,
        &[
            "get",
            "configmap",
            "kube-root-ca.crt",
            "-n",
            "demo",
            "-o",
            "name",
        ],
        |o| !o.is_empty(),
    )
    .await?;

    // Work queue metrics under upstream's names.
    let metrics = cm.metrics().await?;
    for want in [
        "workqueue_adds_total{name=\"serviceaccount\"}",
        "workqueue_depth{name=\"root_ca_cert_publisher\"}",
        "workqueue_work_duration_seconds_count{name=\"serviceaccount\"}",
    ] {
        assert!(
            metrics.contains(want),
            "{want} missing from /metrics:\n{metrics}"
        );
    }

    // The leader holds the upstream Lease; SIGTERM exits cleanly and releases it.
    let holder = kubectl
        .ok([
            "get",
            "lease",
            "kube-controller-manager",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await?;
    assert!(!holder.is_empty(), "lease has a holder");
    let status = cm.process.stop_with_status(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit on SIGTERM: {status:?}\n{}",
        cm.process.log_tail(30)
    );
    let holder = kubectl
        .ok([
            "get",
            "lease",
            "kube-controller-manager",
            "-n",
            "kube-system",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .await?;
    assert_eq!(holder, "", "lease released on shutdown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_waits_and_takes_over_on_release() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let mut first = common::start(&cp, "cm-1", &["--controllers=serviceaccount"]).await?;
    // The second one runs but is not ready: it is not the leader.
    let port = ferrokube_tests::controlplane::free_port()?;
    let port_flag = format!("--secure-port={port}");
    let second = cp.spawn_component(
        "cm-2",
        common::binary(),
        &[
            "--bind-address=127.0.0.1",
            &port_flag,
            "--controllers=serviceaccount",
        ],
    )?;
    let second = common::ControllerManager {
        process: second,
        health_port: port,
    };
    let addr = format!("127.0.0.1:{port}");
    ferrokube_tests::wait::until(
        "cm-2 serving",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let addr = addr.clone();
            async move {
                ferrokube_tests::cluster::http_status(&addr, "/livez")
                    .await
                    .and_then(|s| if s == 200 { Ok(()) } else { Err(s.to_string()) })
            }
        },
    )
    .await?;
    assert_eq!(
        ferrokube_tests::cluster::http_status(&addr, "/readyz").await,
        Ok(500),
        "a follower is not ready"
    );

    assert!(
        first
            .process
            .stop_with_status(Duration::from_secs(15))
            .is_some_and(|s| s.success())
    );
    let started = std::time::Instant::now();
    second.wait_ready().await?;
    // Released leases are taken within a retry period or two, not a lease duration.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took over in {:?}",
        started.elapsed()
    );
    cp.kubectl()?
        .ok(["create", "namespace", "after-failover"])
        .await?;
    common::kubectl_until(
        &cp,
        "default SA after failover",
        Duration::from_secs(20),
        &[
            "get",
            "serviceaccount",
            "default",
            "-n",
            "after-failover",
            "-o",
            "name",
        ],
        |o| !o.is_empty(),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_refused_with_upstream_messages() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let mut p = cp.spawn_component(
        "cm-bad",
        common::binary(),
        &["--controllers=*,bogus", "--secure-port=0"],
    )?;
    let status = p.wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "must exit with an error"
    );
    let log = p.log_tail(20);
    assert!(
        log.contains("\"bogus\" is not in the list of known controllers"),
        "{log}"
    );

    // Upstream names ferrokube does not implement yet are accepted (kubeadm passes them).
    let cm = common::start(
        &cp,
        "cm-kubeadm",
        &["--controllers=*,bootstrapsigner,tokencleaner"],
    )
    .await?;
    drop(cm);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_act_as_their_own_service_accounts() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let cm = common::start(
        &cp,
        "controller-manager",
        &[
            "--use-service-account-credentials=true",
            "--controllers=serviceaccount",
        ],
    )
    .await?;
    let kubectl = cp.kubectl()?;
    let t = Duration::from_secs(30);
    kubectl
        .ok([
            "get",
            "serviceaccount",
            "service-account-controller",
            "-n",
            "kube-system",
        ])
        .await?;
    kubectl.ok(["create", "namespace", "first"]).await?;
    common::kubectl_until(
        &cp,
        "default SA in first",
        t,
        &[
            "get",
            "serviceaccount",
            "default",
            "-n",
            "first",
            "-o",
            "name",
        ],
        |o| !o.is_empty(),
    )
    .await?;

    // Without its RBAC binding the controller is refused, under its own name...
    let binding = "system:controller:service-account-controller";
    kubectl
        .ok(["delete", "clusterrolebinding", binding])
        .await?;
    kubectl.ok(["create", "namespace", "second"]).await?;
    let log = cm.process.log_path().to_path_buf();
    ferrokube_tests::wait::until(
        "a Forbidden error naming the controller's ServiceAccount",
        t,
        Duration::from_millis(200),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
                if text.contains("system:serviceaccount:kube-system:service-account-controller")
                    && text.contains("forbidden")
                {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            }
        },
    )
    .await?;
    // ...and recovers, without a restart, once the binding is back.
    kubectl
        .ok([
            "create",
            "clusterrolebinding",
            binding,
            &format!("--clusterrole={binding}"),
            "--serviceaccount=kube-system:service-account-controller",
        ])
        .await?;
    common::kubectl_until(
        &cp,
        "default SA in second",
        t,
        &[
            "get",
            "serviceaccount",
            "default",
            "-n",
            "second",
            "-o",
            "name",
        ],
        |o| !o.is_empty(),
    )
    .await?;
    Ok(())
}
