//! Two nodes on one machine, hostNetwork, and start-up figures: created-to-Ready latency
//! of single pods (image cached) and of a batch, with the kubelet's RSS idle and loaded.
//! Figures are printed as `kubelet figure: ...` lines (the batch size is
//! `FERROKUBE_KUBELET_BATCH`, 30 by default; the benchmark uses 100).

mod common;

use std::time::{Duration, Instant};

use ferrokube_tests::ControlPlane;
use ferrokube_tests::images::ImageBuilder;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

const NS: &str = "default";

fn pod(name: &str, node: &str, image: &str, host_network: bool) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "nodeName": node,
            "hostNetwork": host_network,
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": false,
            "containers": [{"name": "c", "image": image, "command": ["sleep", "3600"]}],
        },
    }))?)
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's IP once it is Ready.
fn ready_ip(p: &Pod) -> Result<String, String> {
    if !ready(p) {
        return Err("not ready".into());
    }
    p.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .ok_or_else(|| "no ip".into())
}

fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` size field in KiB (`VmRSS:`, `RssAnon:`).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_host_network_and_startup_figures() -> anyhow::Result<()> {
    let stack = common::stack(NS, "node-a", "198.18.44.0/24")
        .image("bb", "1", ImageBuilder::busybox()?)
        .start()
        .await?;
    let mut b = common::start(&stack.cp, "node-b", "198.18.45.0/24").await?;
    let image = format!("{}/bb:1", stack.registry.addr);
    let result = scenarios(&stack.cp, &image, &stack.kubelet, &b).await;
    // Node b keeps running while the pods are deleted, so its pods stop through it.
    let result = stack.finish(result).await;
    b.teardown();
    result
}

async fn scenarios(
    cp: &ControlPlane,
    image: &str,
    a: &common::Kubelet,
    b: &common::Kubelet,
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(cp.client().await?, NS);
    let t = Duration::from_secs(90);
    // One pod per node (pulls the image on each) plus a hostNetwork pod.
    for (name, node, host) in [
        ("on-a", "node-a", false),
        ("on-b", "node-b", false),
        ("host", "node-a", true),
    ] {
        api.create(&PostParams::default(), &pod(name, node, image, host)?)
            .await?;
    }
    let ip_a = common::pod_until(cp, NS, "on-a", "on-a Ready", t, ready_ip).await?;
    let ip_b = common::pod_until(cp, NS, "on-b", "on-b Ready", t, ready_ip).await?;
    let ip_h = common::pod_until(cp, NS, "host", "host Ready", t, ready_ip).await?;
    assert!(ip_a.starts_with("198.18.44."), "{ip_a}");
    assert!(ip_b.starts_with("198.18.45."), "{ip_b}");
    assert_eq!(ip_h, "127.0.0.1");
    // Both pod IPs answer from the host (ping through busybox on the host is not assumed:
    // the bridges' gateway addresses prove the routes).
    for (bridge, gw) in [
        (
            ferrokube_kubelet::network::bridge_name("node-a"),
            "198.18.44.1",
        ),
        (
            ferrokube_kubelet::network::bridge_name("node-b"),
            "198.18.45.1",
        ),
    ] {
        let out = std::process::Command::new("ip")
            .args(["-4", "addr", "show", &bridge])
            .output()?;
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(gw),
            "bridge {bridge} lacks {gw}"
        );
    }

    let idle_a = rss_kib(a.process.as_ref().map_or(0, |p| p.pid()));
    // Single pods, image cached: created -> Ready as seen by a client polling every 20 ms.
    let mut singles = Vec::new();
    for i in 0..10 {
        let name = format!("single-{i}");
        let began = Instant::now();
        api.create(&PostParams::default(), &pod(&name, "node-a", image, false)?)
            .await?;
        ferrokube_tests::wait::until(
            &format!("{name} Ready"),
            t,
            Duration::from_millis(20),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let p = api.get(&name).await.map_err(|e| e.to_string())?;
                    if ready(&p) {
                        Ok(())
                    } else {
                        Err("not ready".into())
                    }
                }
            },
        )
        .await?;
        singles.push(began.elapsed());
    }
    singles.sort();
    println!(
        "kubelet figure: single pod created->Ready p50={}ms p99={}ms (n={}, image cached)",
        percentile(&singles, 0.5).as_millis(),
        percentile(&singles, 0.99).as_millis(),
        singles.len()
    );

    let n: usize = std::env::var("FERROKUBE_KUBELET_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let began = Instant::now();
    for i in 0..n {
        api.create(
            &PostParams::default(),
            &pod(&format!("batch-{i}"), "node-b", image, false)?,
        )
        .await?;
    }
    ferrokube_tests::wait::until(
        "batch Ready",
        Duration::from_secs(300),
        Duration::from_millis(100),
        || {
            let api = api.clone();
            async move {
                let pods = api
                    .list(&Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let done = pods
                    .items
                    .iter()
                    .filter(|p| {
                        p.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with("batch-"))
                            && ready(p)
                    })
                    .count();
                if done == n {
                    Ok(())
                } else {
                    Err(format!("{done}/{n} ready"))
                }
            }
        },
    )
    .await?;
    let batch = began.elapsed();
    let loaded_b = rss_kib(b.process.as_ref().map_or(0, |p| p.pid()));
    println!(
        "kubelet figure: batch of {n} pods on one node all Ready in {:.2}s",
        batch.as_secs_f64()
    );
    println!(
        "kubelet figure: kubelet RSS idle {} MiB, with {n}+ pods {} MiB",
        idle_a / 1024,
        loaded_b / 1024
    );
    // What each running container costs beside its own processes: its shim.
    let shim_arg = ferrokube_kubelet::runtime::SHIM_ARG.as_bytes();
    let shims: Vec<u64> = std::fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(shim_arg.len()).any(|w| w == shim_arg))
        })
        .map(|pid| status_kib(pid, "RssAnon:"))
        .collect();
    if !shims.is_empty() {
        println!(
            "kubelet figure: per-container shim private (RssAnon) memory mean {} KiB over {} containers (no runc stays resident)",
            shims.iter().sum::<u64>() / shims.len() as u64,
            shims.len()
        );
    }
    Ok(())
}
