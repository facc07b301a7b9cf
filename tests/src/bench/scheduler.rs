//! The scheduler benchmark (upstream's SchedulingBasic shape): N plain Node objects (no
//! kubelet, no kwok: the scheduler only binds) and M pending pods created before the
//! scheduler starts; time from the scheduler's start until every pod is bound, pods/s,
//! CPU seconds and peak RSS of the scheduler. Each peer runs against its own fresh
//! control plane with the same KubeSchedulerConfiguration (client QPS/burst included).
//!
//! The machine's binding ceiling is measured the same way, with clients posting raw
//! `pods/binding` in place of a scheduler, and the same bound-pod watch timing it (see
//! `BoundPods`).
//!
//! Shapes: `basic` (pods requesting CPU and memory) and `spread` (pods also carrying a
//! zone topology spread constraint and a preferred zone pod affinity).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Ceiling, Figure, Peer, median};
use crate::{ControlPlane, procstat, upstream};

/// The pods' shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// CPU and memory requests only.
    Basic,
    /// Also a zone topology spread constraint (DoNotSchedule, maxSkew 1) and a preferred
    /// pod affinity per zone.
    Spread,
}

impl std::str::FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "basic" => Ok(Self::Basic),
            "spread" => Ok(Self::Spread),
            other => Err(format!("unknown shape {other:?} (basic, spread)")),
        }
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Basic => "basic",
            Self::Spread => "spread",
        })
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Nodes.
    pub nodes: usize,
    /// Pending pods.
    pub pods: usize,
    /// Client QPS/burst settings to compare at.
    pub limits: Vec<(f64, u32)>,
    /// Pod shapes to compare.
    pub shapes: Vec<Shape>,
    /// Our scheduler binary.
    pub ferrokube_bin: PathBuf,
    /// How long one run may take before it is abandoned.
    pub timeout: Duration,
    /// Clients posting raw `pods/binding` for the ceiling (0: no ceiling run).
    pub ceiling_clients: usize,
    /// Requests each ceiling client keeps in flight.
    pub ceiling_in_flight: usize,
    /// Times every run is repeated; the medians are reported.
    pub rounds: usize,
}

#[derive(Clone, Debug, Default)]
struct Run {
    seconds: f64,
    cpu: f64,
    rss_mib: f64,
    /// CPU seconds the apiserver and etcd spent from the scheduler's start until every pod
    /// was bound.
    control_plane_cpu: f64,
    /// Requests the apiserver served meanwhile per bound pod, by kind (see
    /// [`requests_per_pod`]).
    requests: String,
}

impl Run {
    /// Each figure's median over `runs` (each figure on its own, so the medians may come
    /// from different runs); the request counts are the median-time run's.
    fn median<'a>(runs: impl Iterator<Item = &'a Run> + Clone) -> Run {
        let m = |f: fn(&Run) -> f64| median(&mut runs.clone().map(f).collect::<Vec<_>>());
        let seconds = m(|r| r.seconds);
        Run {
            seconds,
            cpu: m(|r| r.cpu),
            rss_mib: m(|r| r.rss_mib),
            control_plane_cpu: m(|r| r.control_plane_cpu),
            requests: runs
                .clone()
                .find(|r| r.seconds == seconds)
                .map(|r| r.requests.clone())
                .unwrap_or_default(),
        }
    }
}

/// What the binding ceiling measured.
#[derive(Clone, Copy, Debug)]
struct CeilingRun {
    binds_per_second: f64,
    /// The same, timed until the last binding was answered (the observer's lag is the
    /// difference).
    answered_per_second: f64,
    /// CPU seconds the apiserver and etcd spent on the bindings.
    control_plane_cpu: f64,
}

impl CeilingRun {
    /// Each figure's median over `runs`.
    fn median(runs: &[CeilingRun]) -> CeilingRun {
        let m = |f: fn(&CeilingRun) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
        CeilingRun {
            binds_per_second: m(|c| c.binds_per_second),
            answered_per_second: m(|c| c.answered_per_second),
            control_plane_cpu: m(|c| c.control_plane_cpu),
        }
    }
}

/// CPU seconds used so far by `cp`'s apiserver and etcd.
fn control_plane_cpu(cp: &ControlPlane) -> f64 {
    cp.pids()
        .iter()
        .filter_map(|(_, pid)| procstat::usage(*pid))
        .map(|u| u.cpu_seconds)
        .sum()
}

/// The apiserver's `apiserver_request_total`, summed over response codes, by
/// `verb resource[/subresource]`.
async fn request_counts(client: &kube::Client) -> Result<BTreeMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    Ok(parse_request_counts(&text))
}

/// [`request_counts`] from the text of a Prometheus exposition.
fn parse_request_counts(text: &str) -> BTreeMap<String, f64> {
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| {
                    kv.strip_prefix(name)?
                        .strip_prefix("=\"")?
                        .strip_suffix('"')
                })
                .unwrap_or_default()
        };
        let mut key = format!("{} {}", label("verb"), label("resource"));
        if !label("subresource").is_empty() {
            key = format!("{key}/{}", label("subresource"));
        }
        *counts.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    counts
}

/// What the apiserver served per bound pod between two [`request_counts`], busiest first;
/// kinds under 0.01 per pod are left out.
fn requests_per_pod(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    pods: usize,
) -> String {
    let mut per_pod: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (v - before.get(k).copied().unwrap_or(0.0)) / pods.max(1) as f64,
            )
        })
        .filter(|(_, v)| *v >= 0.01)
        .collect();
    per_pod.sort_by(|a, b| b.1.total_cmp(&a.1));
    per_pod
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const NAMESPACE: &str = "bench";
const ZONES: usize = 10;

/// Runs every shape and setting for both peers, `cfg.rounds` times, and prints one line
/// per figure: the medians over the rounds, after a line per round.
///
/// Rounds alternate which peer goes first, as the Ingress benchmark's do: this machine's
/// speed drifts (its host steals CPU time in bursts), and a single pair of runs measured
/// ours anywhere from 2.4 to 3.8 times upstream's pods/s on the same build.
pub async fn run(cfg: &Config) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let rounds = cfg.rounds.max(1);
    let rate = |r: &Run| cfg.pods as f64 / r.seconds.max(1e-9);
    for &shape in &cfg.shapes {
        let mut ceilings = Vec::new();
        // Per limit, each round's (upstream, ours).
        let mut runs: Vec<Vec<(Run, Run)>> = vec![Vec::new(); cfg.limits.len()];
        for round in 1..=rounds {
            if cfg.ceiling_clients > 0 {
                let run = ceiling(cfg, shape).await?;
                println!(
                    "scheduler binding ceiling ({shape}, {} nodes, {} pods, {} clients x {} in flight, round {round}/{rounds}): {:.2} binds/s observed bound ({:.2} binds/s answered)",
                    cfg.nodes,
                    cfg.pods,
                    cfg.ceiling_clients,
                    cfg.ceiling_in_flight,
                    run.binds_per_second,
                    run.answered_per_second
                );
                ceilings.push(run);
            }
            for (i, &(qps, burst)) in cfg.limits.iter().enumerate() {
                let (up, ours) = if round % 2 == 1 {
                    let up = one(cfg, Peer::Upstream, shape, qps, burst).await?;
                    (up, one(cfg, Peer::Ferrokube, shape, qps, burst).await?)
                } else {
                    let ours = one(cfg, Peer::Ferrokube, shape, qps, burst).await?;
                    (one(cfg, Peer::Upstream, shape, qps, burst).await?, ours)
                };
                println!(
                    "scheduler round {round}/{rounds} ({shape}, qps {qps}/{burst}): ferrokube {:.2} pods/s, {:.2} cpu-s, {:.2} MiB; upstream {:.2} pods/s, {:.2} cpu-s, {:.2} MiB; throughput ratio {:.2}",
                    rate(&ours),
                    ours.cpu,
                    ours.rss_mib,
                    rate(&up),
                    up.cpu,
                    up.rss_mib,
                    rate(&ours) / rate(&up).max(1e-9)
                );
                runs[i].push((up, ours));
            }
        }
        let ceiling = (!ceilings.is_empty()).then(|| CeilingRun::median(&ceilings));
        for (i, &(qps, burst)) in cfg.limits.iter().enumerate() {
            let up = Run::median(runs[i].iter().map(|(u, _)| u));
            let ours = Run::median(runs[i].iter().map(|(_, f)| f));
            let of_rounds = if rounds > 1 {
                format!(", median of {rounds} rounds")
            } else {
                String::new()
            };
            let setting = format!(
                "{shape}, {} nodes, {} pods, qps {qps}/{burst}{of_rounds}",
                cfg.nodes, cfg.pods
            );
            // CPU seconds as milliseconds per pod.
            let ms_per_pod = |cpu: f64| cpu * 1000.0 / cfg.pods as f64;
            let per_pod = |r: &Run| ms_per_pod(r.cpu);
            for (what, unit, u, f) in [
                (
                    "time until all pods are bound",
                    "s",
                    up.seconds,
                    ours.seconds,
                ),
                ("throughput", "pods/s", rate(&up), rate(&ours)),
                ("CPU", "cpu-s", up.cpu, ours.cpu),
                ("CPU per pod", "cpu-ms", per_pod(&up), per_pod(&ours)),
                ("peak RSS", "MiB", up.rss_mib, ours.rss_mib),
            ] {
                let fig = Figure {
                    what: format!("scheduler {what} ({setting})"),
                    unit,
                    upstream: u,
                    ferrokube: f,
                };
                println!("{fig}");
                figures.push(fig);
            }
            if let Some(c) = ceiling {
                println!(
                    "{}",
                    Ceiling {
                        what: format!(
                            "scheduler throughput against the binding ceiling ({setting})"
                        ),
                        unit: "pods/s",
                        upstream: rate(&up),
                        ferrokube: rate(&ours),
                        ceiling: c.binds_per_second,
                    }
                );
            }
            // Where the machine's CPU went per bound pod: on a machine the apiserver
            // saturates, pods/s is bounded by the CPU all parties spend per pod, so this
            // shows how far a scheduler's own requests (binding, Scheduled event, the watch
            // of its pods) and its own CPU can stay from the raw-binding ceiling.
            let ceiling_cp = ceiling.map_or_else(
                || "n/a".to_string(),
                |c| format!("{:.2} cpu-ms", ms_per_pod(c.control_plane_cpu)),
            );
            println!(
                "scheduler apiserver+etcd CPU per bound pod ({setting}): ferrokube {:.2} cpu-ms (+ {:.2} scheduler), upstream {:.2} cpu-ms (+ {:.2} scheduler), ceiling {ceiling_cp} (raw bindings only)",
                ms_per_pod(ours.control_plane_cpu),
                per_pod(&ours),
                ms_per_pod(up.control_plane_cpu),
                per_pod(&up),
            );
            println!(
                "scheduler apiserver requests per bound pod ({setting}): ferrokube: {}; upstream: {}",
                ours.requests, up.requests
            );
        }
    }
    Ok(figures)
}

fn node(i: usize) -> Result<(Node, serde_json::Value)> {
    let name = format!("node-{i}");
    let node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name,
            "topology.kubernetes.io/zone": format!("zone-{}", i % ZONES)}},
    }))?;
    let resources = json!({"cpu": "32", "memory": "256Gi", "pods": "110"});
    let status = json!({"status": {"capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "bench",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    Ok((node, status))
}

fn pod(i: usize, shape: Shape) -> Result<Pod> {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "c", "image": "registry.invalid/pause:3.10",
            "resources": {"requests": {"cpu": "100m", "memory": "500Mi"}}}],
    });
    if shape == Shape::Spread {
        let zone = "topology.kubernetes.io/zone";
        spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": zone,
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "bench"}}}]);
        spec["affinity"] = json!({"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "bench"}}, "topologyKey": zone}}]}});
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": NAMESPACE, "labels": {"app": "bench"}},
        "spec": spec,
    }))?)
}

/// A fresh control plane holding the bench namespace, `cfg.nodes` ready nodes and
/// `cfg.pods` pending pods of `shape`: what every run, peer or ceiling, starts from.
async fn prepare(cfg: &Config, shape: Shape) -> Result<ControlPlane> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let pp = PostParams::default();
    Api::<Namespace>::all(client.clone())
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "default"}}))?,
        )
        .await?;

    let nodes: Api<Node> = Api::all(client.clone());
    let created: Vec<Result<()>> = futures::stream::iter(0..cfg.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            async move {
                let (n, status) = node(i)?;
                let name = format!("node-{i}");
                nodes.create(&PostParams::default(), &n).await?;
                nodes
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                    .await?;
                // Lifts the not-ready taint the TaintNodesByCondition admission plugin set.
                nodes
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": null}})),
                    )
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<()>>>()?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let created: Vec<Result<()>> = futures::stream::iter(0..cfg.pods)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod(i, shape)?).await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    created.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(cp)
}

/// Counts the bench namespace's bound pods from a watch. Every run ends when this has
/// seen all of them bound, the ceiling's too: then each pays the same observer (the
/// apiserver encoding every pod update for it), and a peer's run and the ceiling differ
/// only in who binds. The observer decodes only each pod's name, resourceVersion and
/// nodeName: decoding whole pods made it, not the apiserver, the slowest party of a fast run.
struct BoundPods {
    count: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

/// The part of a pod the observer reads.
#[derive(Clone, Debug, serde::Deserialize)]
struct PodBinding {
    metadata: PodBindingMeta,
    #[serde(default)]
    spec: PodBindingSpec,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodBindingMeta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    resource_version: String,
}

#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodBindingSpec {
    node_name: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct PodBindingList {
    metadata: PodBindingMeta,
    items: Vec<PodBinding>,
}

impl BoundPods {
    fn watch(client: kube::Client) -> Self {
        let (count_tx, count) = watch::channel(0usize);
        let task = tokio::spawn(async move {
            if let Err(e) = observe(&client, &count_tx).await {
                eprintln!("bound-pod watch failed: {e:#}");
            }
        });
        Self { count, task }
    }

    /// Waits until `n` pods have been seen bound, for at most `timeout`.
    async fn all(&mut self, n: usize, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.count.wait_for(|c| *c >= n))
            .await
            .context("timed out")?
            .context("the watch ended")?;
        Ok(())
    }
}

impl Drop for BoundPods {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Lists the bench's pods, then watches them from the list's resourceVersion (again from
/// the last one seen whenever the apiserver ends a watch), sending the number seen bound.
async fn observe(client: &kube::Client, count: &watch::Sender<usize>) -> Result<()> {
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{NAMESPACE}/pods"));
    let mut bound = std::collections::HashSet::new();
    let note = |pod: PodBinding, bound: &mut std::collections::HashSet<String>| {
        if pod.spec.node_name.is_some() {
            bound.insert(pod.metadata.name);
            let _ = count.send(bound.len());
        }
    };
    let list: PodBindingList = client
        .request(request.list(&ListParams::default())?)
        .await?;
    let mut version = list.metadata.resource_version;
    for pod in list.items {
        note(pod, &mut bound);
    }
    loop {
        let events = client
            .request_events::<PodBinding>(request.watch(&WatchParams::default(), &version)?)
            .await?;
        futures::pin_mut!(events);
        while let Some(event) = events.try_next().await? {
            match event {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    version.clone_from(&pod.metadata.resource_version);
                    note(pod, &mut bound);
                }
                WatchEvent::Deleted(pod) => version = pod.metadata.resource_version,
                WatchEvent::Bookmark(b) => version = b.metadata.resource_version,
                WatchEvent::Error(e) => anyhow::bail!("watch error: {e:?}"),
            }
        }
    }
}

/// The machine's binding ceiling for `shape`, in binds/s: against the same kind of control
/// plane, nodes and pending pods the peers get, `cfg.ceiling_clients` clients (each its own
/// connection pool) post raw `pods/binding` for every pod as fast as the apiserver takes
/// them, timed from the first request until the bound-pod watch has seen every pod bound
/// (as the peers' runs are timed).
async fn ceiling(cfg: &Config, shape: Shape) -> Result<CeilingRun> {
    let cp = prepare(cfg, shape).await?;
    let mut bound = BoundPods::watch(cp.client().await?);
    let mut clients = Vec::with_capacity(cfg.ceiling_clients);
    for _ in 0..cfg.ceiling_clients {
        clients.push(Api::<Pod>::namespaced(cp.client().await?, NAMESPACE));
    }
    let nodes = cfg.nodes.max(1);
    let cpu_before = control_plane_cpu(&cp);
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(0..cfg.pods)
        .map(|i| {
            let pods = clients[i % clients.len()].clone();
            async move {
                let name = format!("pod-{i}");
                let binding = json!({"apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": name},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": format!("node-{}", i % nodes)}});
                pods.create_subresource::<_, serde_json::Value>(
                    "binding",
                    &name,
                    &PostParams::default(),
                    &binding,
                )
                .await
                .with_context(|| format!("binding {name}"))?;
                Ok(())
            }
        })
        .buffer_unordered(cfg.ceiling_clients * cfg.ceiling_in_flight.max(1))
        .collect()
        .await;
    let answered = started.elapsed().as_secs_f64();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    bound
        .all(cfg.pods, cfg.timeout)
        .await
        .context("the ceiling's bindings were not all observed")?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = control_plane_cpu(&cp) - cpu_before;
    Ok(CeilingRun {
        binds_per_second: cfg.pods as f64 / seconds.max(1e-9),
        answered_per_second: cfg.pods as f64 / answered.max(1e-9),
        control_plane_cpu: cpu,
    })
}

async fn one(cfg: &Config, peer: Peer, shape: Shape, qps: f64, burst: u32) -> Result<Run> {
    let cp = prepare(cfg, shape).await?;

    let mut bound = BoundPods::watch(cp.client().await?);

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("scheduler.yaml");
    std::fs::write(
        &config,
        format!(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nleaderElection:\n  leaderElect: false\nclientConnection:\n  kubeconfig: {}\n  qps: {qps}\n  burst: {burst}\n",
            cp.kubeconfig_path().display()
        ),
    )?;
    let bin = match peer {
        Peer::Upstream => upstream::binary("kube-scheduler")?,
        Peer::Ferrokube => cfg.ferrokube_bin.clone(),
    };
    let config_flag = format!("--config={}", config.display());
    let admin = cp.client().await?;
    let requests_before = request_counts(&admin).await?;
    let cpu_before = control_plane_cpu(&cp);
    let started = Instant::now();
    let process = cp.spawn_component(
        &format!("{peer}-scheduler"),
        &bin,
        &[&config_flag, "--secure-port=0", "--v=1"],
    )?;
    let pid = process.pid();
    let n = cfg.pods;
    // Sample while waiting: the peak RSS survives, CPU is read at the end.
    bound.all(n, cfg.timeout).await.with_context(|| {
        format!(
            "{peer}: {n} pods were not bound within {:?}\n{}",
            cfg.timeout,
            cp.logs(20)
        )
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let control_plane = control_plane_cpu(&cp) - cpu_before;
    let requests = request_counts(&admin).await?;
    let requests = requests_per_pod(&requests_before, &requests, n);
    let usage = procstat::usage(pid).unwrap_or_default();
    drop(process);
    Ok(Run {
        seconds,
        cpu: usage.cpu_seconds,
        rss_mib: usage.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        control_plane_cpu: control_plane,
        requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_median_run_takes_each_figure_on_its_own() {
        let run = |seconds, cpu, rss_mib, requests: &str| Run {
            seconds,
            cpu,
            rss_mib,
            control_plane_cpu: cpu * 10.0,
            requests: requests.into(),
        };
        let runs = [
            run(12.0, 4.0, 70.0, "slow"),
            run(10.0, 3.0, 72.0, "middle"),
            run(9.0, 5.0, 68.0, "fast"),
        ];
        let m = Run::median(runs.iter());
        assert_eq!(
            (m.seconds, m.cpu, m.rss_mib, m.control_plane_cpu),
            (10.0, 4.0, 70.0, 40.0)
        );
        assert_eq!(m.requests, "middle");
        let one = Run::median(runs[..1].iter());
        assert_eq!((one.seconds, one.requests.as_str()), (12.0, "slow"));
    }

    #[test]
    fn request_counts_sum_codes_and_name_subresources() {
        let before = parse_request_counts(
            "# TYPE apiserver_request_total counter\n\
             apiserver_request_total{code=\"201\",component=\"apiserver\",resource=\"pods\",subresource=\"binding\",verb=\"POST\",version=\"v1\"} 10\n",
        );
        let after = parse_request_counts(
            "apiserver_request_total{code=\"201\",component=\"apiserver\",resource=\"pods\",subresource=\"binding\",verb=\"POST\",version=\"v1\"} 108\n\
             apiserver_request_total{code=\"409\",component=\"apiserver\",resource=\"pods\",subresource=\"binding\",verb=\"POST\",version=\"v1\"} 2\n\
             apiserver_request_total{code=\"201\",component=\"apiserver\",resource=\"events\",subresource=\"\",verb=\"POST\",version=\"v1\"} 50\n\
             apiserver_request_total{code=\"200\",component=\"apiserver\",resource=\"leases\",subresource=\"\",verb=\"PUT\",version=\"v1\"} 0.5\n\
             apiserver_request_duration_seconds_count{resource=\"pods\",verb=\"GET\"} 7\n",
        );
        assert_eq!(after.get("POST pods/binding"), Some(&110.0));
        assert_eq!(after.get("POST events"), Some(&50.0));
        assert_eq!(after.len(), 3, "{after:?}");
        // 100 bindings and 50 events per 100 pods; 0.005 leases per pod is under the cut.
        assert_eq!(
            requests_per_pod(&before, &after, 100),
            "POST pods/binding 1.00, POST events 0.50"
        );
    }
}
