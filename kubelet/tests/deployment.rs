//! The whole path on our components: `kubectl create deployment` -> our controller-manager
//! (deployment, replicaset) -> our scheduler -> our kubelet -> pods that answer HTTP on
//! their pod IPs; then `kubectl set image` rolls them.
//!
//! node-lifecycle-controller runs too: the apiserver's TaintNodesByCondition admission gives a new
//! Node the `node.kubernetes.io/not-ready` taint, which that controller lifts once the
//! kubelet reports Ready (as in a real cluster).
//!
//! The scheduler and controller-manager binaries are the workspace's own, found beside this
//! test's binary (`cargo test --workspace` builds them); without them the test fails and
//! says how to build them.

mod common;

use std::time::Duration;

use ferrokube_tests::ControlPlane;
use ferrokube_tests::images::ImageBuilder;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;

const NS: &str = "default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_runs_and_rolls_on_our_components() -> anyhow::Result<()> {
    let mut stack = common::stack(NS, "node-deploy", "198.18.46.0/24").controllers(
        "deployment,replicaset,serviceaccount,root-ca-cert-publisher,node-lifecycle-controller",
    );
    for v in ["1", "2"] {
        let page = format!("v{v}\n").into_bytes();
        stack = stack.image(
            "web",
            v,
            ImageBuilder::busybox()?.file("www/index.html", page, 0o644),
        );
    }
    let stack = stack.start().await?;
    let (cp, registry) = (&stack.cp, &stack.registry);
    let kubectl = cp.kubectl()?.with_timeout(Duration::from_secs(120));
    let result = scenario(cp, &kubectl, &registry.addr).await;
    if result.is_err() {
        let pods = kubectl
            .run(["get", "pods", "-n", NS, "-o", "wide"], None)
            .await
            .map(|o| o.stdout)
            .unwrap_or_default();
        let events = kubectl
            .run(["get", "events", "-n", NS], None)
            .await
            .map(|o| o.stdout)
            .unwrap_or_default();
        let nodes = kubectl
            .run(
                [
                    "get",
                    "nodes",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name} taints={.spec.taints} ready={.status.conditions[?(@.type==\"Ready\")]}{\"\\n\"}{end}",
                ],
                None,
            )
            .await
            .map(|o| o.stdout)
            .unwrap_or_default();
        eprintln!("{pods}\n{events}\n{nodes}");
    }
    let _ = kubectl.ok(["delete", "deployment", "web", "-n", NS]).await;
    stack.finish(result).await
}

/// The IPs of `n` Running, Ready pods of app=web whose web server answers `body`.
async fn pods_answer(cp: &ControlPlane, n: usize, body: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<Pod> = Api::namespaced(cp.client().await?, NS);
    let ips = ferrokube_tests::wait::until(
        &format!("{n} web pods answering {body:?}"),
        Duration::from_secs(120),
        Duration::from_millis(300),
        || {
            let api = api.clone();
            async move {
                let pods = api
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .map_err(|e| e.to_string())?;
                let mut ips = Vec::new();
                for p in &pods.items {
                    if p.metadata.deletion_timestamp.is_some() {
                        continue;
                    }
                    let st = p.status.clone().unwrap_or_default();
                    let ready = st
                        .conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    if let (Some("Running"), true, Some(ip)) =
                        (st.phase.as_deref(), ready, st.pod_ip)
                    {
                        ips.push(ip);
                    }
                }
                if ips.len() != n || pods.items.len() != n {
                    return Err(format!("{} ready of {} pods", ips.len(), pods.items.len()));
                }
                for ip in &ips {
                    let (status, got) =
                        ferrokube_tests::cluster::http_get(&format!("{ip}:8080"), "/index.html")
                            .await?;
                    if status != 200 || got != body {
                        return Err(format!("{ip} answered {status} {got:?}"));
                    }
                }
                Ok(ips)
            }
        },
    )
    .await?;
    Ok(ips)
}

async fn scenario(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    reg: &str,
) -> anyhow::Result<()> {
    let image = format!("--image={reg}/web:1");
    kubectl
        .ok([
            "create",
            "deployment",
            "web",
            "-n",
            NS,
            image.as_str(),
            "--replicas=3",
            "--port=8080",
            "--",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
            "/www",
        ])
        .await?;
    let mut ips = pods_answer(cp, 3, "v1\n").await?;
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 3, "distinct pod IPs");
    let new_image = format!("web={reg}/web:2");
    kubectl
        .ok([
            "set",
            "image",
            "deployment/web",
            "-n",
            NS,
            new_image.as_str(),
        ])
        .await?;
    kubectl
        .ok([
            "rollout",
            "status",
            "deployment/web",
            "-n",
            NS,
            "--timeout=120s",
        ])
        .await?;
    pods_answer(cp, 3, "v2\n").await?;
    Ok(())
}
