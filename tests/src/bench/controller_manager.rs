//! The controller-manager benchmark: how long until every Pod of an N-replica Deployment
//! exists, and until all are gone after scaling to zero; CPU seconds and peak RSS of the
//! controller-manager meanwhile. Each peer runs against its own fresh control plane, with the
//! same flags and client QPS.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ObjectMeta, PartialObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Figure, Peer};
use crate::{ControlPlane, procstat, upstream, wait};

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Replicas of the Deployment.
    pub replicas: usize,
    /// Client QPS/burst settings to compare at.
    pub limits: Vec<(f64, u32)>,
    /// Our controller-manager binary.
    pub ferrokube_bin: PathBuf,
    /// How long one phase may take before the run is abandoned.
    pub timeout: Duration,
}

/// One peer's figures at one setting.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    create: f64,
    delete: f64,
    cpu: f64,
    rss_mib: f64,
}

const NAMESPACE: &str = "bench";

/// Runs every setting for both peers and returns the figures.
pub async fn run(cfg: &Config) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    for &(qps, burst) in &cfg.limits {
        let up = one(cfg, Peer::Upstream, qps, burst).await?;
        let ours = one(cfg, Peer::Ferrokube, qps, burst).await?;
        let setting = format!("{} replicas, qps {qps}/{burst}", cfg.replicas);
        for (what, unit, u, f) in [
            ("time until all pods exist", "s", up.create, ours.create),
            (
                "time until all pods are gone after scale to 0",
                "s",
                up.delete,
                ours.delete,
            ),
            ("CPU", "cpu-s", up.cpu, ours.cpu),
            ("peak RSS", "MiB", up.rss_mib, ours.rss_mib),
        ] {
            let fig = Figure {
                what: format!("controller-manager {what} ({setting})"),
                unit,
                upstream: u,
                ferrokube: f,
            };
            println!("{fig}");
            figures.push(fig);
        }
    }
    Ok(figures)
}

async fn one(cfg: &Config, peer: Peer, qps: f64, burst: u32) -> Result<Run> {
    let cp = ControlPlane::start().await?;
    let bin = match peer {
        Peer::Upstream => upstream::binary("kube-controller-manager")?,
        Peer::Ferrokube => cfg.ferrokube_bin.clone(),
    };
    let qps_flag = format!("--kube-api-qps={qps}");
    let burst_flag = format!("--kube-api-burst={burst}");
    let process = cp.spawn_component(
        &format!("{peer}-controller-manager"),
        &bin,
        &[
            "--controllers=serviceaccount,replicaset,deployment",
            "--leader-elect=false",
            "--secure-port=0",
            &qps_flag,
            &burst_flag,
        ],
    )?;
    let pid = process.pid();
    let client = cp.client().await?;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(NAMESPACE.into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await?;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    wait::until(
        "the namespace's default ServiceAccount",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            match accounts.get_opt("default").await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => Err("not yet".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await?;

    // Count the namespace's pods from a watch, as cheaply as the apiserver allows.
    let pods: Api<PartialObjectMeta<Pod>> = Api::namespaced(client.clone(), NAMESPACE);
    let (count_tx, mut count) = watch::channel(0usize);
    let counter = tokio::spawn(async move {
        let mut names = std::collections::HashSet::new();
        // A re-list replaces the set when it is complete.
        let mut relist = std::collections::HashSet::new();
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init) => relist.clear(),
                Ok(watcher::Event::InitApply(m)) => {
                    relist.extend(m.metadata.name);
                }
                Ok(watcher::Event::InitDone) => names = std::mem::take(&mut relist),
                Ok(watcher::Event::Apply(m)) => {
                    names.extend(m.metadata.name);
                }
                Ok(watcher::Event::Delete(m)) => {
                    if let Some(n) = m.metadata.name {
                        names.remove(&n);
                    }
                }
                Err(_) => continue,
            }
            let _ = count_tx.send(names.len());
        }
    });

    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), NAMESPACE);
    let deployment: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": { "name": "bench", "namespace": NAMESPACE },
            "spec": {
                "replicas": cfg.replicas,
                "selector": { "matchLabels": { "app": "bench" } },
                "template": {
                    "metadata": { "labels": { "app": "bench" } },
                    "spec": {
                        "terminationGracePeriodSeconds": 0,
                        "containers": [{ "name": "c", "image": "registry.invalid/pause:1" }]
                    }
                }
            }
        }))?;
    let before = procstat::usage(pid).unwrap_or_default();
    let started = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let n = cfg.replicas;
    tokio::time::timeout(cfg.timeout, count.wait_for(|c| *c >= n))
        .await
        .with_context(|| {
            format!(
                "{peer}: {n} pods did not appear within {:?}\n{}",
                cfg.timeout,
                cp.logs(20)
            )
        })??;
    let create = started.elapsed().as_secs_f64();

    let started = Instant::now();
    deployments
        .patch(
            "bench",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "spec": { "replicas": 0 } })),
        )
        .await?;
    tokio::time::timeout(cfg.timeout, count.wait_for(|c| *c == 0))
        .await
        .with_context(|| {
            format!(
                "{peer}: pods were not deleted within {:?}\n{}",
                cfg.timeout,
                cp.logs(20)
            )
        })??;
    let delete = started.elapsed().as_secs_f64();
    let after = procstat::usage(pid).unwrap_or_default();
    counter.abort();
    drop(process);
    Ok(Run {
        create,
        delete,
        cpu: after.cpu_seconds - before.cpu_seconds,
        rss_mib: after.peak_rss_bytes as f64 / (1024.0 * 1024.0),
    })
}
