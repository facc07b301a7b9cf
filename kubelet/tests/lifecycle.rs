//! Container lifecycle on our kubelet: init containers in order sharing an emptyDir,
//! liveness failures restarting a container, exec readiness, and a kubelet restart that
//! adopts running containers without restarting any.

mod common;

use std::time::Duration;

use ferrokube_tests::ControlPlane;
use ferrokube_tests::images::ImageBuilder;
use k8s_openapi::api::core::v1::Pod;

const NODE: &str = "node-life";
const NS: &str = "default";

fn pod_manifest(name: &str, mut spec: serde_json::Value) -> String {
    spec["nodeName"] = serde_json::json!(NODE);
    spec["terminationGracePeriodSeconds"] = serde_json::json!(5);
    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec})
        .to_string()
}

fn first_status(p: &Pod) -> Option<&k8s_openapi::api::core::v1::ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_probes_and_kubelet_restart() -> anyhow::Result<()> {
    let mut stack = common::stack(NS, NODE, "198.18.43.0/24")
        .image("bb", "1", ImageBuilder::busybox()?)
        .start()
        .await?;
    let kubectl = stack.cp.kubectl()?;
    let reg = stack.registry.addr.clone();
    let result = scenarios(&stack.cp, &kubectl, &reg, &mut stack.kubelet).await;
    stack.finish(result).await
}

async fn scenarios(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    reg: &str,
    kubelet: &mut common::Kubelet,
) -> anyhow::Result<()> {
    let t = Duration::from_secs(60);
    let image = format!("{reg}/bb:1");
    // Two init containers run in order, each appending to a shared emptyDir that the app
    // container serves; the app only becomes ready once /tmp/ready exists (exec probe).
    kubectl
        .apply(&pod_manifest(
            "init",
            serde_json::json!({
                "initContainers": [
                    {"name": "one", "image": image, "command": ["sh", "-c", "echo one >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                    {"name": "two", "image": image, "command": ["sh", "-c", "echo two >> /work/order"], "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                ],
                "containers": [{
                    "name": "web", "image": image,
                    "command": ["sh", "-c", "sleep 2; touch /tmp/ready; exec httpd -f -p 8080 -h /work"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                    "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
                }],
                "volumes": [{"name": "work", "emptyDir": {}}],
            }),
        ))
        .await?;
    let ip = common::pod_until(cp, NS, "init", "init pod Ready", t, |p| {
        let inits = p
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.clone())
            .unwrap_or_default();
        let done = inits.len() == 2
            && inits.iter().all(|s| {
                s.state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .is_some_and(|t| t.reason.as_deref() == Some("Completed"))
            });
        match (
            done,
            is_ready(p),
            p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        ) {
            (true, true, Some(ip)) => Ok(ip),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let (status, body) = common::http_get_until(&format!("{ip}:8080"), "/order").await?;
    assert_eq!((status, body.as_str()), (200, "one\ntwo\n"));

    // A sidecar (restartPolicy Always init container) starts, keeps running beside the app,
    // and the init container after it can already talk to it.
    kubectl
        .apply(&pod_manifest(
            "sidecar",
            serde_json::json!({
                "initContainers": [
                    {"name": "side", "image": image, "restartPolicy": "Always",
                     "command": ["sh", "-c", "echo ok > /tmp/index.html; exec httpd -f -p 8081 -h /tmp"]},
                    {"name": "fetch", "image": image,
                     "command": ["sh", "-c", "until wget -q -O /work/got http://127.0.0.1:8081/index.html; do sleep 0.2; done"],
                     "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                ],
                "containers": [{"name": "web", "image": image, "command": ["httpd", "-f", "-p", "8080", "-h", "/work"],
                                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}],
                "volumes": [{"name": "work", "emptyDir": {}}],
            }),
        ))
        .await?;
    let side_ip = common::pod_until(cp, NS, "sidecar", "sidecar pod Ready", t, |p| {
        let inits = p
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.clone())
            .unwrap_or_default();
        let side_running = inits
            .iter()
            .any(|s| s.name == "side" && s.state.as_ref().is_some_and(|st| st.running.is_some()));
        match (
            side_running,
            is_ready(p),
            p.status.as_ref().and_then(|s| s.pod_ip.clone()),
        ) {
            (true, true, Some(ip)) => Ok(ip),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let (status, body) = common::http_get_until(&format!("{side_ip}:8080"), "/got").await?;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // A failing liveness probe restarts the container (and only it).
    kubectl
        .apply(&pod_manifest(
            "live",
            serde_json::json!({"containers": [{
                "name": "web", "image": image,
                "command": ["httpd", "-f", "-p", "8080", "-h", "/tmp"],
                "livenessProbe": {"httpGet": {"path": "/missing", "port": 8080}, "periodSeconds": 1, "failureThreshold": 2},
            }]}),
        ))
        .await?;
    common::pod_until(cp, NS, "live", "liveness restart", t, |p| {
        let s = first_status(p).ok_or("no status")?;
        let last = s
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.as_ref())
            .map(|t| t.exit_code);
        match (s.restart_count, last) {
            (n, Some(137)) if n >= 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;

    // postStart runs after start; on deletion preStop runs, then SIGTERM reaches the
    // container, which exits within its grace period.
    let host = tempfile::tempdir()?;
    kubectl
        .apply(&pod_manifest(
            "hooks",
            serde_json::json!({"containers": [{
                "name": "c", "image": image,
                "command": ["sh", "-c", "trap 'echo term >> /host/events; exit 0' TERM; while true; do sleep 0.2; done"],
                "lifecycle": {
                    "postStart": {"exec": {"command": ["sh", "-c", "echo poststart >> /host/events"]}},
                    "preStop": {"exec": {"command": ["sh", "-c", "echo prestop >> /host/events"]}},
                },
                "volumeMounts": [{"name": "host", "mountPath": "/host"}],
            }],
            "volumes": [{"name": "host", "hostPath": {"path": host.path()}}]}),
        ))
        .await?;
    let events = host.path().join("events");
    common::pod_until(cp, NS, "hooks", "postStart ran", t, |p| {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        if is_ready(p) && text.contains("poststart") {
            Ok(())
        } else {
            Err(format!("{text:?}"))
        }
    })
    .await?;
    kubectl
        .ok([
            "delete",
            "pod",
            "hooks",
            "-n",
            NS,
            "--wait=true",
            "--timeout=60s",
        ])
        .await?;
    let text = std::fs::read_to_string(&events)?;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, vec!["poststart", "prestop", "term"], "{text}");

    // A kubelet restart adopts the running container: same container ID, no restart.
    let before = common::pod_until(cp, NS, "init", "init still ready", t, |p| {
        let s = first_status(p).ok_or("no status")?;
        Ok((s.container_id.clone(), s.restart_count))
    })
    .await?;
    kubelet.restart(cp).await?;
    // Give the new kubelet time to sync every pod once before judging.
    let api: kube::Api<Pod> = kube::Api::namespaced(cp.client().await?, NS);
    ferrokube_tests::wait::until(
        "kubelet resynced",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let api = api.clone();
            let logs =
                std::fs::read_to_string(cp.log_dir().join(format!("kubelet-{NODE}-restarted.log")))
                    .unwrap_or_default();
            async move {
                let _ = api.get("init").await.map_err(|e| e.to_string())?;
                if logs.contains("serving /healthz") {
                    Ok(())
                } else {
                    Err("not started".into())
                }
            }
        },
    )
    .await?;
    let after = common::pod_until(cp, NS, "init", "init after kubelet restart", t, |p| {
        let s = first_status(p).ok_or("no status")?;
        if !is_ready(p) {
            return Err("not ready".into());
        }
        Ok((s.container_id.clone(), s.restart_count))
    })
    .await?;
    assert_eq!(
        before, after,
        "the container was restarted by the kubelet restart"
    );
    let (status, _) = common::http_get_until(&format!("{ip}:8080"), "/order").await?;
    assert_eq!(status, 200);
    // The adopted pod is still deleted properly.
    kubectl
        .ok([
            "delete",
            "pod",
            "init",
            "-n",
            NS,
            "--wait=true",
            "--timeout=60s",
        ])
        .await?;
    Ok(())
}
