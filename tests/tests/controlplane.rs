//! The control plane harness itself: a real etcd + kube-apiserver comes up, stock kubectl
//! works against it, and it survives an apiserver restart.

use std::time::Duration;

use ferrokube_tests::ControlPlane;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_works_against_the_control_plane() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    eprintln!("control plane ready in {:?}", cp.startup);
    let kubectl = cp.kubectl()?;

    let version = kubectl.ok(["version", "-o", "json"]).await?;
    let v: serde_json::Value = serde_json::from_str(&version)?;
    let want = ferrokube_tests::upstream::kubernetes_version();
    assert_eq!(v["serverVersion"]["gitVersion"], want, "{version}");
    assert_eq!(v["clientVersion"]["gitVersion"], want, "{version}");

    let resources = kubectl.ok(["api-resources", "-o", "name"]).await?;
    for r in [
        "pods",
        "deployments.apps",
        "leases.coordination.k8s.io",
        "events.events.k8s.io",
    ] {
        assert!(
            resources.lines().any(|l| l == r),
            "{r} missing from:\n{resources}"
        );
    }

    let whoami = kubectl.ok(["auth", "whoami", "-o", "json"]).await?;
    let w: serde_json::Value = serde_json::from_str(&whoami)?;
    assert_eq!(
        w["status"]["userInfo"]["username"],
        ferrokube_tests::pki::ADMIN_USER
    );
    assert!(
        w["status"]["userInfo"]["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "system:masters")),
        "{whoami}"
    );

    // `kubectl apply` needs /openapi/v2, which the harness waits for.
    kubectl
        .apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hello\n  namespace: default\ndata:\n  a: b\n")
        .await?;
    let a = kubectl
        .ok(["get", "configmap", "hello", "-o", "jsonpath={.data.a}"])
        .await?;
    assert_eq!(a, "b");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_an_apiserver_restart() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start().await?;
    let kubectl = cp.kubectl()?;
    kubectl.ok(["create", "namespace", "kept"]).await?;
    cp.restart_apiserver().await?;
    let out = kubectl
        .ok(["get", "namespace", "kept", "-o", "name"])
        .await?;
    assert_eq!(out.trim(), "namespace/kept");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_is_enforced_for_other_identities() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let kc = cp.kubeconfig_for("jane", &["developers"])?;
    let jane = ferrokube_tests::Kubectl::new(ferrokube_tests::upstream::binary("kubectl")?, &kc)
        .with_timeout(Duration::from_secs(30));
    let out = jane.run(["get", "pods", "-A"], None).await?;
    assert!(!out.success(), "jane must not list pods: {out:?}");
    assert!(out.stderr.contains("forbidden"), "{}", out.stderr);
    let can = jane.run(["auth", "can-i", "list", "pods"], None).await?;
    assert_eq!(can.stdout.trim(), "no");
    Ok(())
}

#[tokio::test]
async fn processes_are_gone_after_drop() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let pids = cp.pids();
    assert_eq!(pids.len(), 2);
    drop(cp);
    for (name, pid) in pids {
        assert!(
            !ferrokube_tests::process::is_alive(pid),
            "{name} ({pid}) still running"
        );
    }
    Ok(())
}
