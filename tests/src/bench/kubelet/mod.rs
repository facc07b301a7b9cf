//! The kubelet benchmark: pod start-up latency through the real stack (apiserver, kubelet,
//! image store, CNI, runc) with the image already cached, and the kubelet's own cost.
//!
//! * single pods: N pods one after the other, each bound to the node by `spec.nodeName`
//!   (no scheduler) and deleted before the next; latency is from the create call returning
//!   to a watch of this program seeing the pod's Ready condition turn True. The pod's own
//!   timestamps (`creationTimestamp`, the Ready condition's `lastTransitionTime`) are only
//!   whole seconds, too coarse for sub-second figures, so they are not used;
//! * batch: M pods created at once (concurrent create calls), time until all are Ready and
//!   the per-pod latency percentiles, CPU seconds the kubelet used meanwhile;
//! * the kubelet's resident memory (`VmRSS`) idle and with the batch running;
//! * node-wide CPU and memory: the kubelet with its runtime daemon (upstream's containerd;
//!   ours has none) and the shims, since ours does in-process what upstream's hands over.
//!
//! The kubelet runs as root on this machine with its own node name, pod range, ports and
//! root dir; everything it creates on the host is removed afterwards with
//! `ferrokube-kubelet reset`, also when the run fails. When upstream's kubelet and Debian's
//! containerd are provisioned, the same run measures them the same way (module `upstream`,
//! which also puts back what they change on the host) and prints ratios ferrokube/upstream;
//! otherwise it says why the peer was not run.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use tokio::time::Instant;

use super::{Figure, Peer};
use crate::images::ImageBuilder;
use crate::registry::Registry;
use crate::{ControlPlane, procstat, wait};

mod host_footprint;
mod ours;
mod pod_watch;
mod upstream;

use ours::KubeletNode;
use pod_watch::PodWatch;

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Our kubelet binary (release build).
    pub ferrokube_bin: PathBuf,
    /// Sequential single pods.
    pub singles: usize,
    /// Pods of the batch.
    pub batch: usize,
    /// How long one phase may take before the run is abandoned.
    pub timeout: Duration,
}

const NS: &str = "bench";
/// Far from the ranges the kubelet's tests use (198.18.1-48.0/24), so a bench beside a
/// test run on the same machine does not overlap their routes.
const POD_CIDR: &str = "198.18.200.0/24";
/// How long the kubelet is left alone before its idle memory is read.
const SETTLE: Duration = Duration::from_secs(5);
const MIB: f64 = 1024.0 * 1024.0;

/// One peer's figures.
#[derive(Clone, Debug, Default)]
struct Run {
    /// Per-pod created -> Ready of the sequential pods, ms, sorted.
    singles_ms: Vec<f64>,
    /// Per-pod created -> Ready of the batch, ms, sorted.
    batch_ms: Vec<f64>,
    /// First create call to the last pod Ready, s.
    batch_all_s: f64,
    /// Kubelet CPU seconds from the first create of the batch to the last Ready.
    batch_cpu: f64,
    /// VmRSS with no pods, after start-up settled (before the first image pull).
    idle_mib: f64,
    /// VmRSS with no pods, after the warm-up pod (image pulled and cached) was deleted.
    idle_cached_mib: f64,
    /// VmRSS with the batch running.
    loaded_mib: f64,
    /// VmHWM at the end.
    peak_mib: f64,
    /// The container runtime's VmRSS with the batch running (upstream's containerd).
    runtime_mib: f64,
    /// CPU seconds of every node process (kubelet, runtime daemon, shims, and the runc and
    /// CNI plugins they waited for) from the first create of the batch to the last Ready.
    node_cpu: f64,
    /// VmRSS of every node process with the batch running.
    node_loaded_mib: f64,
}

/// Runs the benchmark and prints one line per figure.
pub async fn run(cfg: &Config) -> Result<()> {
    if !rustix::process::geteuid().is_root() {
        bail!(
            "the kubelet benchmark must run as root: the kubelet creates network namespaces, \
             bridges, mounts and cgroups (try: sudo hack/bench.sh kubelet)"
        );
    }
    for p in [
        "/usr/sbin/runc",
        "/usr/lib/cni/bridge",
        "/usr/lib/cni/host-local",
        crate::images::BUSYBOX,
    ] {
        if !Path::new(p).exists() {
            bail!("{p} is missing (hack/provision.sh installs it)");
        }
    }
    if !cfg.ferrokube_bin.is_file() {
        bail!(
            "{} not found: build it with cargo build --release -p ferrokube-kubelet",
            cfg.ferrokube_bin.display()
        );
    }
    let registry = Registry::start().await?;
    ImageBuilder::busybox()?
        .push(&registry.addr, "kbench", "1")
        .await
        .context("pushing the busybox image to the local registry")?;
    let image = format!("{}/kbench:1", registry.addr);

    let ours = measure(cfg, Peer::Ferrokube, &registry.addr, &image).await?;
    // The upstream peer runs after ours, each with the machine to itself; its failure is
    // reported, and our figures still stand.
    let theirs = match upstream::unavailable() {
        Some(reason) => Err(reason),
        None => {
            // containerd's sandbox ("pause") image: busybox sleeping, from the same registry.
            // CMD cleared: busybox's `sh` would follow the entrypoint as an argument, and
            // `sleep 2147483647 sh` exits at once (a sandbox that dies as it starts).
            ImageBuilder::busybox()?
                .entrypoint(&["/bin/sleep", "2147483647"])
                .cmd(&[])
                .push(&registry.addr, "kbench-pause", "1")
                .await
                .context("pushing the sandbox image to the local registry")?;
            measure(cfg, Peer::Upstream, &registry.addr, &image)
                .await
                .map_err(|e| format!("{e:#}"))
        }
    };

    let singles = format!(
        "{} sequential pods, image cached, create returned -> Ready seen on a watch",
        ours.singles_ms.len()
    );
    let batch = format!("{} pods created at once on one node", ours.batch_ms.len());
    let figures = |r: &Run| -> Vec<(String, f64, &'static str, &'static str)> {
        vec![
            (
                format!("kubelet single pod start-up p50 ({singles})"),
                percentile(&r.singles_ms, 0.50),
                "ms",
                "-",
            ),
            (
                format!("kubelet single pod start-up p99 ({singles})"),
                percentile(&r.singles_ms, 0.99),
                "ms",
                "< 500 ms (upstream SLO 5 s)",
            ),
            (
                format!("kubelet batch all Ready ({batch})"),
                r.batch_all_s,
                "s",
                "< 10 s",
            ),
            (
                format!("kubelet batch per-pod start-up p50 ({batch})"),
                percentile(&r.batch_ms, 0.50),
                "ms",
                "-",
            ),
            (
                format!("kubelet batch per-pod start-up p99 ({batch})"),
                percentile(&r.batch_ms, 0.99),
                "ms",
                "-",
            ),
            (
                format!("kubelet CPU during the batch ({batch})"),
                r.batch_cpu,
                "cpu-s",
                "-",
            ),
            (
                format!(
                    "node CPU during the batch (kubelet, runtime, shims and the runc/CNI they ran; {batch})"
                ),
                r.node_cpu,
                "cpu-s",
                "-",
            ),
            (
                "kubelet RSS idle (no pods, start-up settled, before the first pull)".into(),
                r.idle_mib,
                "MiB",
                "< 30 MiB (upstream node tests allow 70 MiB)",
            ),
            (
                "kubelet RSS idle (no pods, image pulled and cached)".into(),
                r.idle_cached_mib,
                "MiB",
                "< 30 MiB (upstream node tests allow 70 MiB)",
            ),
            (
                format!("kubelet RSS with {} pods running", r.batch_ms.len()),
                r.loaded_mib,
                "MiB",
                "-",
            ),
            ("kubelet peak RSS".into(), r.peak_mib, "MiB", "-"),
            (
                format!(
                    "node RSS with {} pods running (kubelet, runtime and shims)",
                    r.batch_ms.len()
                ),
                r.node_loaded_mib,
                "MiB",
                "-",
            ),
        ]
    };
    let mine = figures(&ours);
    match &theirs {
        Ok(up) => {
            for ((what, f, unit, _), (_, u, _, _)) in mine.iter().zip(figures(up)) {
                println!(
                    "{}",
                    Figure {
                        what: what.clone(),
                        unit,
                        upstream: u,
                        ferrokube: *f,
                    }
                );
            }
            println!(
                "upstream peer: kubelet {} on containerd {} (containerd's RSS with the batch {:.2} MiB, not counted above)",
                crate::upstream::kubernetes_version(),
                upstream::containerd_version(),
                up.runtime_mib
            );
            for (what, value, unit, goal) in &mine {
                if *goal != "-" {
                    println!("{what}: ferrokube {value:.2} {unit}, goal {goal}");
                }
            }
        }
        Err(reason) => {
            for (what, value, unit, goal) in &mine {
                if *goal == "-" {
                    println!("{what}: ferrokube {value:.2} {unit}");
                } else {
                    println!("{what}: ferrokube {value:.2} {unit}, goal {goal}");
                }
            }
            println!("upstream peer: not run ({reason})");
        }
    }
    Ok(())
}

/// The value at quantile `q` of `sorted` (nearest rank); 0 when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Starts a control plane and `peer`'s kubelet, measures, and cleans up whatever happened.
async fn measure(cfg: &Config, peer: Peer, registry: &str, image: &str) -> Result<Run> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    crate::node::prepare_namespace(&cp, NS).await?;
    let node_name = format!("kbench-{peer}-{}", std::process::id());
    let mut node = match peer {
        Peer::Ferrokube => {
            NodeUnderTest::Ferrokube(KubeletNode::start(&cp, &cfg.ferrokube_bin, &node_name).await?)
        }
        Peer::Upstream => NodeUnderTest::Upstream(
            upstream::UpstreamNode::start(
                &cp,
                &node_name,
                registry,
                &format!("{registry}/kbench-pause:1"),
            )
            .await?,
        ),
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let result = async {
        wait_node_ready(&client, &node_name).await?;
        let mut seen = PodWatch::start(pods.clone());
        scenarios(cfg, &pods, &mut seen, &node, &node_name, image).await
    }
    .await;
    // Delete the pods through the API first, so the kubelet tears them down as it would in
    // a cluster; the node's teardown then removes whatever is left.
    let _ = pods
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let _ = wait::until(
        "bench pods gone",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            match pods.list_metadata(&ListParams::default()).await {
                Ok(l) if l.items.is_empty() => Ok(()),
                Ok(l) => Err(format!("{} left", l.items.len())),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    node.teardown();
    if result.is_err() {
        // The logs go to stderr; the error itself stays one readable line.
        eprintln!("{}", cp.logs(30));
    }
    result.map_err(|e| e.context(format!("{peer} kubelet bench")))
}

/// The kubelet under test.
enum NodeUnderTest {
    Ferrokube(KubeletNode),
    Upstream(upstream::UpstreamNode),
}

impl NodeUnderTest {
    fn pid(&self) -> Result<u32> {
        match self {
            Self::Ferrokube(n) => n.pid(),
            Self::Upstream(n) => n.pid(),
        }
    }

    /// The container runtime's own process, when it is not the kubelet (containerd).
    fn runtime_pid(&self) -> Option<u32> {
        match self {
            Self::Ferrokube(_) => None,
            Self::Upstream(n) => n.containerd_pid(),
        }
    }

    /// Every process the node runs besides the pods' own: kubelet, runtime daemon, shims.
    fn node_pids(&self) -> Vec<u32> {
        match self {
            Self::Ferrokube(n) => n.node_pids(),
            Self::Upstream(n) => n.node_pids(),
        }
    }

    fn teardown(&mut self) {
        match self {
            Self::Ferrokube(n) => n.teardown(),
            Self::Upstream(n) => n.teardown(),
        }
    }
}

async fn scenarios(
    cfg: &Config,
    pods: &Api<Pod>,
    seen: &mut PodWatch,
    node: &NodeUnderTest,
    node_name: &str,
    image: &str,
) -> Result<Run> {
    let pid = node.pid()?;
    let mut run = Run::default();
    tokio::time::sleep(SETTLE).await;
    run.idle_mib = rss_mib(pid)?;

    // Warm-up: pulls the image into the kubelet's store, so every measured pod finds it
    // cached (the "image cached").
    let warm = pod("warm-up", node_name, image)?;
    pods.create(&PostParams::default(), &warm).await?;
    seen.ready("warm-up", cfg.timeout).await?;
    delete_and_wait(pods, seen, "warm-up", cfg.timeout).await?;
    tokio::time::sleep(SETTLE).await;
    run.idle_cached_mib = rss_mib(pid)?;

    for i in 0..cfg.singles {
        let name = format!("single-{i}");
        pods.create(&PostParams::default(), &pod(&name, node_name, image)?)
            .await?;
        let created = Instant::now();
        let ready = seen.ready(&name, cfg.timeout).await?;
        run.singles_ms
            .push(ready.saturating_duration_since(created).as_secs_f64() * 1000.0);
        delete_and_wait(pods, seen, &name, cfg.timeout).await?;
    }
    run.singles_ms.sort_by(f64::total_cmp);

    let before = procstat::usage(pid).context("the kubelet exited")?;
    let node_before = node_usage(node);
    let started = Instant::now();
    let creates = (0..cfg.batch).map(|i| {
        let name = format!("batch-{i}");
        async move {
            pods.create(&PostParams::default(), &pod(&name, node_name, image)?)
                .await?;
            anyhow::Ok((name, Instant::now()))
        }
    });
    let created = futures::future::try_join_all(creates).await?;
    let mut last = started;
    for (name, at) in &created {
        let ready = seen.ready(name, cfg.timeout).await?;
        last = last.max(ready);
        run.batch_ms
            .push(ready.saturating_duration_since(*at).as_secs_f64() * 1000.0);
    }
    let after = procstat::usage(pid).context("the kubelet exited")?;
    let node_after = node_usage(node);
    run.batch_all_s = last.saturating_duration_since(started).as_secs_f64();
    run.batch_cpu = after.cpu_seconds - before.cpu_seconds;
    // Processes started during the batch (the shims) count from zero.
    let cpu = |u: &procstat::Usage| u.cpu_seconds + u.children_cpu_seconds;
    run.node_cpu = node_after
        .iter()
        .map(|(p, u)| {
            let was = node_before
                .iter()
                .find(|(b, _)| b == p)
                .map_or(0.0, |(_, b)| cpu(b));
            cpu(u) - was
        })
        .sum();
    run.batch_ms.sort_by(f64::total_cmp);
    // Let the status writes of the last pods finish before reading the loaded figure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = procstat::usage(pid).context("the kubelet exited")?;
    run.loaded_mib = loaded.rss_bytes as f64 / MIB;
    run.peak_mib = loaded.peak_rss_bytes as f64 / MIB;
    run.runtime_mib = node
        .runtime_pid()
        .and_then(procstat::usage)
        .map_or(0.0, |u| u.rss_bytes as f64 / MIB);
    run.node_loaded_mib = node_usage(node)
        .iter()
        .map(|(_, u)| u.rss_bytes as f64 / MIB)
        .sum();
    Ok(run)
}

/// The usage of each of the node's processes now.
fn node_usage(node: &NodeUnderTest) -> Vec<(u32, procstat::Usage)> {
    node.node_pids()
        .into_iter()
        .filter_map(|p| procstat::usage(p).map(|u| (p, u)))
        .collect()
}

fn rss_mib(pid: u32) -> Result<f64> {
    Ok(procstat::usage(pid)
        .context("the kubelet exited")?
        .rss_bytes as f64
        / MIB)
}

/// A pod bound to `node` whose container is Ready as soon as it runs (no probes).
fn pod(name: &str, node: &str, image: &str) -> Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": node,
            // sleep as PID 1 ignores SIGTERM; a short grace keeps deletions quick.
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}],
        },
    }))?)
}

async fn delete_and_wait(
    pods: &Api<Pod>,
    seen: &mut PodWatch,
    name: &str,
    timeout: Duration,
) -> Result<()> {
    pods.delete(name, &DeleteParams::default()).await?;
    seen.gone(name, timeout).await
}

async fn wait_node_ready(client: &kube::Client, name: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    wait::until(
        &format!("node {name} Ready"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let node = nodes
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("not registered")?;
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                Ok(())
            } else {
                Err("not Ready".to_string())
            }
        },
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.50), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v[..20], 0.99), 20.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
    }
}
