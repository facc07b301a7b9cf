//! The Ingress controller in front of a Deployment that rolls under steady load, every part
//! real: etcd + kube-apiserver, our controller-manager (deployment, replicaset,
//! endpointslice, ...) and scheduler, our kubelet running runc/CNI pods from a local
//! registry, and our Ingress controller.
//!
//! Each pod runs busybox httpd answering `<version> <pod name>`, with a readiness probe, a
//! `preStop` hook that keeps it serving for 2 s after it is told to go, and a grace period.
//! While a few clients loop over keep-alive connections through the Ingress:
//! 1. `kubectl set image` rolls every replica (maxUnavailable 0, maxSurge 1): not one
//!    request may fail (no 5xx, no connection error), and the answers switch from v1 to v2;
//! 2. one pod is deleted: as soon as the EndpointSlice update that marks it not ready
//!    arrives, the proxy must stop sending it requests (one update, no resync), although
//!    the pod still serves during its preStop hook.
//!
//! The controller-manager, scheduler and kubelet binaries are the workspace's own, found
//! beside this test's binary; a missing one, or a machine that cannot run pods (root, runc,
//! CNI), fails the test with the reason rather than skipping it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferrokube_tests::images::ImageBuilder;
use ferrokube_tests::{ControlPlane, node, wait};
use futures::StreamExt as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::json;
use tokio::net::TcpStream;

use support::{NS, T};

const HOST: &str = "web.example.com";
/// Concurrent keep-alive clients of the load.
const CLIENTS: usize = 4;
/// Each client's pace: at most one request per tick, which leaves the two cores to the
/// components under test.
const TICK: Duration = Duration::from_millis(10);
/// How long the proxy may take to apply an EndpointSlice update after this test's own watch
/// saw it: both receive the same watch event, so this is only delivery jitter.
const ONE_UPDATE: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_while_the_backend_deployment_rolls() -> anyhow::Result<()> {
    let mut stack = node::Stack::builder(NS, "node-rollout", "198.18.49.0/24").controllers(
        "deployment,replicaset,endpointslice,serviceaccount,root-ca-cert-publisher,node-lifecycle-controller",
    );
    for v in ["v1", "v2"] {
        let version = format!("{v}\n").into_bytes();
        stack = stack.image(
            "web",
            v,
            ImageBuilder::busybox()?.file("version", version, 0o644),
        );
    }
    let stack = stack.start().await?;
    let (cp, registry) = (&stack.cp, &stack.registry);
    let ic = support::start_controller(cp).await?;
    let kubectl = cp.kubectl()?.with_timeout(Duration::from_secs(240));

    let result = scenario(cp, &kubectl, &registry.addr, ic.http).await;
    if result.is_err() {
        let mut report = String::new();
        for args in [
            &["get", "pods", "-n", NS, "-o", "wide"][..],
            &["get", "endpointslices", "-n", NS, "-o", "yaml"],
            &["get", "events", "-n", NS],
        ] {
            let out = kubectl.run(args.iter().copied(), None).await;
            report.push_str(&out.map(|o| o.stdout).unwrap_or_default());
        }
        eprintln!("{report}");
    }
    let _ = kubectl.ok(["delete", "deployment", "web", "-n", NS]).await;
    stack.finish(result).await
}

/// The backend: 3 replicas of `<reg>/web:v1` behind Service `web` and Ingress `web`.
fn manifests(reg: &str) -> String {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "ferrokube"},
            "spec": {"controller": "ferrokube.io/ingress"},
        },
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 5,
                        "containers": [{
                            "name": "web",
                            "image": format!("{reg}/web:v1"),
                            // Backticks, not `$(...)`: the kubelet expands `$(VAR)` itself.
                            "command": ["sh", "-c",
                                "mkdir -p /tmp/www && echo `cat /version` $POD_NAME > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"],
                            "env": [{"name": "POD_NAME",
                                "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/index.html", "port": 8080},
                                "periodSeconds": 1,
                            },
                            // Keeps serving while the endpoint removal spreads, as real
                            // deployments do in front of a proxy.
                            "lifecycle": {"preStop": {"exec": {"command": ["sleep", "2"]}}},
                        }],
                    },
                },
            },
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"selector": {"app": "web"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        },
        {
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": NS},
            "spec": {"ingressClassName": "ferrokube",
                "rules": [{"host": HOST, "http": {"paths": [support::path("/", "Prefix", "web")]}}]},
        },
    ]})
    .to_string()
}

/// One answered (or failed) request of the load.
struct Sample {
    /// When the request was sent.
    sent: Instant,
    /// `Ok((version, pod))`, or what went wrong.
    outcome: Result<(String, String), String>,
}

/// A client looping over one keep-alive connection (a new one only when the proxy closed
/// it between requests) until `stop` holds `true`.
async fn client(port: u16, mut stop: tokio::sync::watch::Receiver<bool>) -> (Vec<Sample>, usize) {
    let mut samples = Vec::new();
    let mut connections = 0;
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        // A connection the proxy closed while idle is not a failed request: no request was
        // on it. Anything after the request is sent is.
        if conn.as_mut().is_none_or(|c| c.is_closed()) {
            conn = None;
        }
        let sent = Instant::now();
        let send = match conn.as_mut() {
            Some(c) => c,
            None => match connect(port).await {
                Ok(c) => {
                    connections += 1;
                    conn.insert(c)
                }
                Err(e) => {
                    samples.push(Sample {
                        sent,
                        outcome: Err(format!("connect: {e}")),
                    });
                    continue;
                }
            },
        };
        let outcome = match tokio::time::timeout(T, request(send)).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_string()),
        };
        if outcome.is_err() {
            conn = None;
        }
        samples.push(Sample { sent, outcome });
    }
    (samples, connections)
}

async fn connect(
    port: u16,
) -> Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>, String> {
    let io = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    // The connection task ends with the connection (when `send` drops or the peer closes).
    tokio::spawn(conn);
    Ok(send)
}

/// `GET /` on the keep-alive connection: `(version, pod)` from a 200, else the failure.
async fn request(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) -> Result<(String, String), String> {
    send.ready().await.map_err(|e| format!("ready: {e}"))?;
    let req = hyper::Request::builder()
        .uri("/index.html")
        .header("host", HOST)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    let body = String::from_utf8_lossy(&body).trim().to_string();
    match (status, body.split_once(' ')) {
        (200, Some((v, pod))) => Ok((v.to_string(), pod.to_string())),
        _ => Err(format!("{status} {body:?}")),
    }
}

/// The pods of app=web that are Ready and not terminating.
async fn ready_pods(api: &Api<Pod>) -> Result<Vec<String>, String> {
    let pods = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// Whether `slice` lists pod `pod` as a ready endpoint (a nil `ready` means ready).
fn lists_ready(slice: &EndpointSlice, pod: &str) -> bool {
    slice.endpoints.iter().flatten().any(|e| {
        e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod)
            && e.conditions.as_ref().and_then(|c| c.ready) != Some(false)
    })
}

/// When each pod left the ready endpoints of Service `web`'s EndpointSlices (first time
/// only), as seen by this watch, until `stop` holds `true`.
async fn unlisting_times(
    slices: Api<EndpointSlice>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<BTreeMap<String, Instant>> {
    let watch = watcher(
        slices,
        watcher::Config::default().labels("kubernetes.io/service-name=web"),
    )
    .applied_objects();
    let mut watch = std::pin::pin!(watch);
    // Ready pods per slice: a pod counts as listed while any slice lists it ready.
    let mut by_slice: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut unlisted = BTreeMap::new();
    loop {
        let slice = tokio::select! {
            s = watch.next() => s.context("slice watch ended")??,
            _ = stop.wait_for(|s| *s) => return Ok(unlisted),
        };
        let before: BTreeSet<String> = by_slice.values().flatten().cloned().collect();
        let ready = slice
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .filter_map(|e| e.target_ref.as_ref().and_then(|r| r.name.clone()))
            .collect();
        by_slice.insert(slice.metadata.name.unwrap_or_default(), ready);
        let after: BTreeSet<String> = by_slice.values().flatten().cloned().collect();
        let now = Instant::now();
        for pod in before.difference(&after) {
            unlisted.entry(pod.clone()).or_insert(now);
        }
    }
}

async fn scenario(
    cp: &ControlPlane,
    kubectl: &ferrokube_tests::Kubectl,
    reg: &str,
    port: u16,
) -> anyhow::Result<()> {
    kubectl.apply(&manifests(reg)).await?;
    kubectl
        .ok([
            "rollout",
            "status",
            "deployment/web",
            "-n",
            NS,
            "--timeout=180s",
        ])
        .await?;
    // Every ready pod is routed before the load starts: the load is about the rollout,
    // not about the Ingress's first programming.
    let pods: Api<Pod> = Api::namespaced(cp.client().await?, NS);
    let v1 = ready_pods(&pods).await.map_err(anyhow::Error::msg)?;
    wait::until(
        "every v1 pod answering through the Ingress",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            let mut seen = BTreeSet::new();
            let v1 = &v1;
            async move {
                for _ in 0..30 {
                    let r = support::get(port, HOST, "/index.html").await?;
                    seen.insert(r.body.trim().to_string());
                }
                if v1.iter().all(|p| seen.contains(&format!("v1 {p}"))) {
                    Ok(())
                } else {
                    Err(format!("saw {seen:?}"))
                }
            }
        },
    )
    .await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let slices: Api<EndpointSlice> = Api::namespaced(cp.client().await?, NS);
    let tracker = tokio::spawn(unlisting_times(slices.clone(), stop_rx.clone()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(port, stop_rx.clone())))
        .collect();
    let started = Instant::now();
    let phases = async {
        // 1. The rollout.
        let image = format!("web={reg}/web:v2");
        kubectl
            .ok(["set", "image", "deployment/web", "-n", NS, image.as_str()])
            .await?;
        kubectl
            .ok([
                "rollout",
                "status",
                "deployment/web",
                "-n",
                NS,
                "--timeout=180s",
            ])
            .await?;
        let rolled = Instant::now();
        // 2. One pod deleted: when does its endpoint leave the slice's ready set?
        let victim = wait::until(
            "3 ready v2 pods",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                let ready = ready_pods(&pods).await?;
                match ready.first() {
                    Some(p) if ready.len() == 3 => Ok(p.clone()),
                    _ => Err(format!("ready: {ready:?}")),
                }
            },
        )
        .await?;
        let victim_ip = pods
            .get(&victim)
            .await?
            .status
            .and_then(|s| s.pod_ip)
            .context("the victim has no IP")?;
        let watch = watcher(
            slices,
            watcher::Config::default().labels("kubernetes.io/service-name=web"),
        )
        .applied_objects();
        let mut watch = std::pin::pin!(watch);
        // The watch's initial list must show the victim ready, or the time measured
        // below would not be the removal's.
        let first = watch.next().await.context("slice watch ended")??;
        anyhow::ensure!(
            lists_ready(&first, &victim),
            "{victim} not ready in {first:?}"
        );
        let deleted = Instant::now();
        kubectl
            .ok(["delete", "pod", victim.as_str(), "-n", NS, "--wait=false"])
            .await?;
        let unlisted = tokio::time::timeout(T, async {
            while let Some(slice) = watch.next().await {
                if !lists_ready(&slice?, &victim) {
                    return Ok(Instant::now());
                }
            }
            anyhow::bail!("slice watch ended")
        })
        .await
        .context("the victim's endpoint never left the slice's ready set")??;
        // The victim still serves (its preStop hook runs), so a stale route would be
        // answered, not refused: the check below is not vacuous.
        let direct =
            ferrokube_tests::cluster::http_get(&format!("{victim_ip}:8080"), "/index.html")
                .await
                .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(
            direct.0 == 200 && direct.1.contains(&victim),
            "the victim stopped serving before the check: {direct:?}"
        );
        let direct_after = unlisted.elapsed();
        // The victim serves during its preStop hook (2 s) and grace period: let the load
        // run through it, so that a stale route would show.
        wait::until(
            "the deleted pod gone",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || async {
                match pods.get_opt(&victim).await.map_err(|e| e.to_string())? {
                    None => Ok(()),
                    Some(_) => Err("still there".to_string()),
                }
            },
        )
        .await?;
        anyhow::Ok((rolled, victim, deleted, unlisted, direct_after))
    }
    .await;
    let _ = stop_tx.send(true);
    let mut samples = Vec::new();
    let mut connections = 0;
    for c in clients {
        let (s, n) = c.await?;
        samples.extend(s);
        connections += n;
    }
    let unlisted_at = tracker.await??;
    let (rolled, victim, deleted, unlisted, direct_after) = phases?;
    samples.sort_by_key(|s| s.sent);

    let mut by_version: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for s in &samples {
        match &s.outcome {
            Ok((v, _)) => *by_version.entry(v.as_str()).or_default() += 1,
            Err(e) => failures.push(format!("+{:?}: {e}", s.sent - started)),
        }
    }
    let served: Vec<&(String, String)> = samples
        .iter()
        .filter_map(|s| s.outcome.as_ref().ok())
        .collect();
    // The victim's last request, relative to the slice update that unlisted it.
    let victim_hits: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.outcome.as_ref().is_ok_and(|(_, p)| *p == victim))
        .collect();
    let last_victim_hit = victim_hits.last().map(|s| s.sent);
    let late = |bound: Duration| {
        victim_hits
            .iter()
            .filter(|s| s.sent > unlisted + bound)
            .count()
    };
    let after_update = late(Duration::ZERO);
    // Every pod that left the ready set during the run (the rollout's old pods, the
    // victim): how long after its slice update did it still receive requests?
    let mut lags = BTreeMap::new();
    for (pod, at) in &unlisted_at {
        let hits = samples
            .iter()
            .filter(|s| s.sent > *at && s.outcome.as_ref().is_ok_and(|(_, p)| p == pod));
        let lag = hits.map(|s| s.sent - *at).max();
        lags.insert(pod.clone(), lag);
    }
    println!(
        "rollout under load: {} requests over {CLIENTS} keep-alive clients ({connections} connections) in {:?}, \
         {} failed; served {by_version:?}; rollout took {:?}",
        samples.len(),
        started.elapsed(),
        failures.len(),
        rolled - started,
    );
    println!(
        "endpoint removal: slice unlisted {victim} {:?} after its deletion; its last request was sent {} the update; \
         {after_update} requests reached it after the update (all within {ONE_UPDATE:?}), though it still answered directly {direct_after:?} after it",
        unlisted - deleted,
        match last_victim_hit {
            Some(t) if t > unlisted => format!("{:?} after", t - unlisted),
            Some(t) => format!("{:?} before", unlisted - t),
            None => "never during".to_string(),
        },
    );
    println!(
        "pods unlisted during the run, with the latest request each got after its slice update: {lags:?}"
    );
    anyhow::ensure!(
        unlisted_at.len() >= 4,
        "expected the 3 old pods and the victim to leave the slices' ready set: {unlisted_at:?}"
    );
    anyhow::ensure!(
        lags.values().flatten().all(|l| *l <= ONE_UPDATE),
        "pods got requests more than {ONE_UPDATE:?} after their slice update: {lags:?}"
    );
    anyhow::ensure!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        samples.len(),
        &failures[..failures.len().min(20)]
    );
    anyhow::ensure!(
        served.first().is_some_and(|(v, _)| v == "v1")
            && served.last().is_some_and(|(v, _)| v == "v2"),
        "the answers did not switch from v1 to v2: {by_version:?}"
    );
    anyhow::ensure!(
        by_version.keys().all(|v| ["v1", "v2"].contains(v)),
        "unexpected versions: {by_version:?}"
    );
    anyhow::ensure!(
        !victim_hits.is_empty(),
        "the deleted pod {victim} served nothing before its deletion: the load did not cover it"
    );
    anyhow::ensure!(
        late(ONE_UPDATE) == 0,
        "{} requests reached {victim} more than {ONE_UPDATE:?} after the slice update that unlisted it",
        late(ONE_UPDATE)
    );
    Ok(())
}
