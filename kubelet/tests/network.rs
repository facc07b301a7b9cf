//! Pod networking and gRPC probes on our kubelet against the real apiserver, runc and CNI:
//! a `hostPort` published through the portmap plugin (reachable on the node's address,
//! refused to a second pod asking for the same port, free again once its pod is gone or its
//! node reset), and gRPC readiness and liveness probes against a real `grpc.health.v1`
//! server.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferrokube_tests::ControlPlane;
use ferrokube_tests::images::ImageBuilder;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;

const NODE: &str = "node-net";
const NS: &str = "default";

fn pod_manifest(name: &str, mut spec: serde_json::Value) -> String {
    spec["nodeName"] = serde_json::json!(NODE);
    spec["terminationGracePeriodSeconds"] = serde_json::json!(2);
    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS}, "spec": spec})
        .to_string()
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus` values.
const SERVING: u8 = 1;
const NOT_SERVING: u8 = 2;

/// A `grpc.health.v1.Health/Check` server over plaintext HTTP/2: the status per service
/// name is whatever the test sets; unknown services get NOT_FOUND, as grpc-go's server does.
#[derive(Clone, Default)]
struct HealthServer {
    statuses: Arc<Mutex<HashMap<String, u8>>>,
    calls: Arc<Mutex<Vec<String>>>,
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type GrpcBody =
    StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

impl HealthServer {
    fn set(&self, service: &str, status: u8) {
        lock(&self.statuses).insert(service.to_string(), status);
    }

    /// Serves on every address of the host (the probe of a hostNetwork pod goes to the
    /// node's IP); returns the port.
    async fn start(&self) -> anyhow::Result<u16> {
        let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
        let port = listener.local_addr()?.port();
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let this = this.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let this = this.clone();
                        async move { Ok::<_, Infallible>(this.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(port)
    }

    async fn answer(&self, req: http::Request<hyper::body::Incoming>) -> http::Response<GrpcBody> {
        let path = req.uri().path().to_string();
        let ua = req
            .headers()
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        // HealthCheckRequest: 5-byte frame header, then optional field 1 (service).
        let msg = body.get(5..).unwrap_or_default();
        let service = match msg {
            [0x0a, len, rest @ ..] => {
                String::from_utf8_lossy(&rest[..usize::from(*len).min(rest.len())]).into_owned()
            }
            _ => String::new(),
        };
        lock(&self.calls).push(format!("{path} {service:?} {ua}"));
        let status = lock(&self.statuses).get(&service).copied();
        let mut trailers = http::HeaderMap::new();
        let frames = match (path.as_str(), status) {
            ("/grpc.health.v1.Health/Check", Some(s)) => {
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                vec![
                    Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 2, 0x08, s]))),
                    Ok(Frame::trailers(trailers)),
                ]
            }
            _ => {
                trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
                trailers.insert(
                    "grpc-message",
                    http::HeaderValue::from_static("unknown service"),
                );
                vec![Ok(Frame::trailers(trailers))]
            }
        };
        http::Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(StreamBody::new(futures::stream::iter(frames)))
            .expect("a static response")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_and_grpc_probes() -> anyhow::Result<()> {
    let mut stack = common::stack(NS, NODE, "198.18.47.0/24")
        .image("bb", "1", ImageBuilder::busybox()?)
        .start()
        .await?;
    let (cp, reg) = (&stack.cp, stack.registry.addr.clone());
    let kubectl = cp.kubectl()?;
    let health = HealthServer::default();
    let mut result = grpc_probes(cp, &kubectl, &reg, &health).await;
    let mut published = None;
    if result.is_ok() {
        match host_ports(cp, &kubectl, &reg).await {
            Ok(addr) => published = Some(addr),
            Err(e) => result = Err(e),
        }
    }
    if let Err(e) = &result {
        eprintln!(
            "{e:#}\ngRPC calls seen: {:?}\n{}",
            lock(&health.calls)
                .iter()
                .rev()
                .take(10)
                .collect::<Vec<_>>(),
            cp.logs(80)
        );
        ferrokube_tests::node::delete_all_pods(&kubectl, NS).await;
    }
    // The last hostPort pod is left running: stopping the node and `ferrokube-kubelet
    // reset` (the teardown) must take its port mapping away too.
    stack.kubelet.teardown();
    if let Some(addr) = published {
        let nat = std::process::Command::new("iptables")
            .args(["-t", "nat", "-S"])
            .output()?;
        let port = addr.rsplit(':').next().unwrap_or_default();
        let rules = String::from_utf8_lossy(&nat.stdout);
        let left: Vec<&str> = rules
            .lines()
            .filter(|l| l.contains(&format!("--dport {port} ")))
            .collect();
        anyhow::ensure!(left.is_empty(), "rules left after reset: {left:?}");
        anyhow::ensure!(
            ferrokube_tests::cluster::http_get(&addr, "/")
                .await
                .is_err(),
            "{addr} still answers after reset"
        );
    }
    result
}

async fn grpc_probes(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    reg: &str,
    health: &HealthServer,
) -> anyhow::Result<()> {
    let t = Duration::from_secs(60);
    health.set("", SERVING);
    health.set("live", SERVING);
    let port = health.start().await?;
    // A hostNetwork pod's IP is the node's, where this test's health server listens.
    kubectl
        .apply(&pod_manifest(
            "grpc",
            serde_json::json!({
                "hostNetwork": true,
                "containers": [{
                    "name": "c", "image": format!("{reg}/bb:1"), "command": ["sleep", "3600"],
                    "readinessProbe": {"grpc": {"port": port}, "periodSeconds": 1, "failureThreshold": 1},
                    "livenessProbe": {"grpc": {"port": port, "service": "live"}, "periodSeconds": 1, "failureThreshold": 2},
                }],
            }),
        ))
        .await?;
    common::pod_until(cp, NS, "grpc", "Ready through the gRPC probe", t, |p| {
        if is_ready(p) {
            Ok(())
        } else {
            Err("not ready".into())
        }
    })
    .await?;
    let calls = lock(&health.calls).clone();
    anyhow::ensure!(
        calls
            .iter()
            .any(|c| c == "/grpc.health.v1.Health/Check \"\" kube-probe/1.36"),
        "{calls:?}"
    );

    // NOT_SERVING takes readiness away without a restart, SERVING gives it back.
    health.set("", NOT_SERVING);
    common::pod_until(cp, NS, "grpc", "not Ready on NOT_SERVING", t, |p| {
        match (is_ready(p), restarts(p)) {
            (false, 0) => Ok(()),
            other => Err(format!("ready/restarts {other:?}")),
        }
    })
    .await?;
    health.set("", SERVING);
    common::pod_until(cp, NS, "grpc", "Ready again on SERVING", t, |p| {
        if is_ready(p) {
            Ok(())
        } else {
            Err("not ready".into())
        }
    })
    .await?;

    // The liveness probe's service stops serving: the container is restarted.
    health.set("live", NOT_SERVING);
    common::pod_until(
        cp,
        NS,
        "grpc",
        "restart on a failing gRPC liveness probe",
        t,
        |p| {
            if restarts(p) >= 1 {
                Ok(())
            } else {
                Err("no restart yet".into())
            }
        },
    )
    .await?;
    health.set("live", SERVING);
    kubectl
        .ok(["delete", "pod", "grpc", "-n", NS, "--wait=true"])
        .await?;
    Ok(())
}

/// A busybox httpd answering with its pod name, published on `host_port`.
fn web_with_host_port(reg: &str, host_port: u16) -> serde_json::Value {
    serde_json::json!({
        "containers": [{
            "name": "web", "image": format!("{reg}/bb:1"),
            "command": ["sh", "-c", "mkdir /www && echo $POD > /www/index.html && exec httpd -f -p 8080 -h /www"],
            "env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "ports": [{"containerPort": 8080, "hostPort": host_port}],
            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
        }],
    })
}

async fn host_ports(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    reg: &str,
) -> anyhow::Result<String> {
    let t = Duration::from_secs(60);
    let host_port = ferrokube_tests::controlplane::free_port()?;
    kubectl
        .apply(&pod_manifest("hp-a", web_with_host_port(reg, host_port)))
        .await?;
    let host_ip = common::pod_until(cp, NS, "hp-a", "hostPort pod Ready", t, |p| {
        match (
            is_ready(p),
            p.status.as_ref().and_then(|s| s.host_ip.clone()),
        ) {
            (true, Some(ip)) => Ok(ip),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    let addr = format!("{host_ip}:{host_port}");
    let (status, body) = common::http_get_until(&addr, "/").await?;
    anyhow::ensure!(
        (status, body.as_str()) == (200, "hp-a\n"),
        "through {addr}: {status} {body:?}"
    );

    // The same port again on this node: refused at admission with upstream's reason, and
    // the first pod keeps serving.
    kubectl
        .apply(&pod_manifest("hp-b", web_with_host_port(reg, host_port)))
        .await?;
    let message = common::pod_until(cp, NS, "hp-b", "hostPort conflict rejected", t, |p| {
        let s = p.status.as_ref().ok_or("no status")?;
        match (s.phase.as_deref(), s.reason.as_deref()) {
            (Some("Failed"), Some("NodePorts")) => Ok(s.message.clone().unwrap_or_default()),
            other => Err(format!("phase/reason {other:?}")),
        }
    })
    .await?;
    anyhow::ensure!(
        message
            == "Pod was rejected: Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports"
    );
    let (status, body) = common::http_get_until(&addr, "/").await?;
    anyhow::ensure!(
        (status, body.as_str()) == (200, "hp-a\n"),
        "through {addr}: {status} {body:?}"
    );

    // Once the first pod is gone its mapping is gone too (CNI DEL), and a new pod can
    // publish the same port.
    kubectl
        .ok(["delete", "pod", "hp-a", "hp-b", "-n", NS, "--wait=true"])
        .await?;
    anyhow::ensure!(
        ferrokube_tests::cluster::http_get(&addr, "/")
            .await
            .is_err(),
        "{addr} still answers after its pod was deleted"
    );
    kubectl
        .apply(&pod_manifest("hp-c", web_with_host_port(reg, host_port)))
        .await?;
    common::pod_until(cp, NS, "hp-c", "second hostPort pod Ready", t, |p| {
        if is_ready(p) {
            Ok(())
        } else {
            Err("not ready".into())
        }
    })
    .await?;
    let (status, body) = common::http_get_until(&addr, "/").await?;
    anyhow::ensure!(
        (status, body.as_str()) == (200, "hp-c\n"),
        "through {addr}: {status} {body:?}"
    );
    Ok(addr)
}
