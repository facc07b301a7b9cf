//! Differential check against upstream kube-scheduler: generated small cluster scenarios
//! (nodes with zones, disks, taints and capacity; existing bound pods with labels, host
//! ports and anti-affinity; one pending pod using fit, taints, node affinity, host ports,
//! inter-pod (anti-)affinity and topology spread), each run against both schedulers in the
//! same control plane.
//!
//! ```text
//!   per scenario: copy "a" (pending pod for kube-scheduler) and copy "b" (for ours), each
//!   its own namespace and nodes, labelled scenario=<copy>; pending pods select their copy
//!   with a nodeSelector both schedulers honour. All nodes exist before any pending pod,
//!   so "0/N nodes" counts the same cluster for both.
//!
//!   unschedulable in both  -> the FailedScheduling message is byte-for-byte the same
//!                             (it carries the per-reason count of every infeasible node)
//!   bound in both          -> each choice is feasible for ours (in-process evaluation on
//!                             the scenario's objects read back from the apiserver); when
//!                             ours scores a unique best node, both chose it; when the
//!                             choices differ, a copy "c" pinned (other nodes cordoned) to
//!                             our choice must bind under kube-scheduler too
//!   anything else          -> failure
//! ```

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrokube_scheduler::cache::Snapshot;
use ferrokube_scheduler::framework::types::{NodeInfo, PodInfo};
use ferrokube_scheduler::schedule_one::{ScheduleError, evaluate};
use ferrokube_tests::{ControlPlane, wait};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const SCENARIOS: usize = 60;
const ZONE: &str = "topology.kubernetes.io/zone";

/// A small deterministic generator (xorshift64*), so a failing scenario can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

#[derive(Clone, Debug)]
struct NodeGen {
    cpu: &'static str,
    memory: &'static str,
    zone: usize,
    disk: &'static str,
    taint: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct ExistingGen {
    node: usize,
    cpu: &'static str,
    app: &'static str,
    host_port: bool,
    /// Required anti-affinity to (app, topologyKey).
    anti: Option<(&'static str, &'static str)>,
}

#[derive(Clone, Debug)]
struct Scenario {
    nodes: Vec<NodeGen>,
    existing: Vec<ExistingGen>,
    app: &'static str,
    /// Extra pod spec fields of the pending pod (affinity, spread, tolerations, ports).
    spec: Value,
}

fn term(app: &str, key: &str) -> Value {
    json!({"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key})
}

fn generate(rng: &mut Rng) -> Scenario {
    let n = 2 + rng.below(3);
    let nodes: Vec<NodeGen> = (0..n)
        .map(|_| NodeGen {
            cpu: rng.pick(&["1", "2", "4"]),
            memory: rng.pick(&["2Gi", "4Gi"]),
            zone: rng.below(2),
            disk: rng.pick(&["ssd", "hdd"]),
            taint: rng
                .chance(20)
                .then(|| rng.pick(&["NoSchedule", "PreferNoSchedule"])),
        })
        .collect();
    let existing = (0..rng.below(5))
        .map(|_| ExistingGen {
            node: rng.below(n),
            cpu: rng.pick(&["250m", "500m", "1"]),
            app: rng.pick(&["a", "b"]),
            host_port: rng.chance(15),
            anti: rng.chance(15).then(|| {
                (
                    rng.pick(&["a", "b"]),
                    rng.pick(&[ZONE, "kubernetes.io/hostname"]),
                )
            }),
        })
        .collect();
    let app = rng.pick(&["a", "b"]);
    let key = |rng: &mut Rng| rng.pick(&[ZONE, "kubernetes.io/hostname"]);
    let mut spec = serde_json::Map::new();
    let mut affinity = serde_json::Map::new();
    if rng.chance(50) {
        spec.insert(
            "tolerations".into(),
            json!([{"key": "dedicated", "operator": "Equal", "value": "x"}]),
        );
    }
    let mut node_affinity = serde_json::Map::new();
    if rng.chance(20) {
        node_affinity.insert(
            "requiredDuringSchedulingIgnoredDuringExecution".into(),
            json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}]}),
        );
    }
    if rng.chance(20) {
        node_affinity.insert("preferredDuringSchedulingIgnoredDuringExecution".into(), json!([
            {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]));
    }
    if !node_affinity.is_empty() {
        affinity.insert("nodeAffinity".into(), Value::Object(node_affinity));
    }
    let mut pod_affinity = serde_json::Map::new();
    if rng.chance(15) {
        pod_affinity.insert(
            "requiredDuringSchedulingIgnoredDuringExecution".into(),
            json!([term("a", key(rng))]),
        );
    }
    if rng.chance(15) {
        pod_affinity.insert(
            "preferredDuringSchedulingIgnoredDuringExecution".into(),
            json!([{"weight": 1 + rng.below(100), "podAffinityTerm": term(rng.pick(&["a", "b"]), key(rng))}]),
        );
    }
    if !pod_affinity.is_empty() {
        affinity.insert("podAffinity".into(), Value::Object(pod_affinity));
    }
    let mut anti = serde_json::Map::new();
    if rng.chance(20) {
        anti.insert(
            "requiredDuringSchedulingIgnoredDuringExecution".into(),
            json!([term(rng.pick(&["a", "b"]), key(rng))]),
        );
    }
    if rng.chance(15) {
        anti.insert(
            "preferredDuringSchedulingIgnoredDuringExecution".into(),
            json!([{"weight": 1 + rng.below(100), "podAffinityTerm": term(rng.pick(&["a", "b"]), key(rng))}]),
        );
    }
    if !anti.is_empty() {
        affinity.insert("podAntiAffinity".into(), Value::Object(anti));
    }
    if !affinity.is_empty() {
        spec.insert("affinity".into(), Value::Object(affinity));
    }
    if rng.chance(35) {
        let action = rng.pick(&["DoNotSchedule", "ScheduleAnyway"]);
        let mut c = json!({"maxSkew": 1 + rng.below(2), "topologyKey": key(rng),
            "whenUnsatisfiable": action, "labelSelector": {"matchLabels": {"app": app}}});
        if action == "DoNotSchedule" && rng.chance(20) {
            c["minDomains"] = json!(3);
        }
        if rng.chance(20) {
            c["nodeTaintsPolicy"] = json!("Honor");
        }
        spec.insert("topologySpreadConstraints".into(), json!([c]));
    }
    let mut containers = json!([{"name": "c", "image": "registry.invalid/pause:3.10",
        "resources": {"requests": {"cpu": rng.pick(&["100m", "500m", "1", "2", "3"])}}}]);
    if rng.chance(15) {
        containers[0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
    }
    spec.insert("containers".into(), containers);
    Scenario {
        nodes,
        existing,
        app,
        spec: Value::Object(spec),
    }
}

/// The objects of one copy of a scenario: its namespace `tag`, nodes `<tag>-n<j>`.
fn node_object(tag: &str, j: usize, n: &NodeGen, cordoned: bool) -> (Value, Value, Value) {
    let name = format!("{tag}-n{j}");
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "scenario": tag,
            ZONE: format!("{tag}-z{}", n.zone), "disk": n.disk}},
        "spec": {"unschedulable": cordoned},
    });
    let resources = json!({"cpu": n.cpu, "memory": n.memory, "pods": "110"});
    let status = json!({"status": {"capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "differential",
            "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    // Replaces the not-ready taint the admission plugin added on create.
    let taints = match n.taint {
        Some(effect) => {
            json!({"spec": {"taints": [{"key": "dedicated", "value": "x", "effect": effect}]}})
        }
        None => json!({"spec": {"taints": null}}),
    };
    (node, status, taints)
}

fn existing_pod(tag: &str, i: usize, e: &ExistingGen) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("e{i}"), "namespace": tag, "labels": {"app": e.app}},
        "spec": {"nodeName": format!("{tag}-n{}", e.node), "containers": [{"name": "c",
            "image": "registry.invalid/pause:3.10", "resources": {"requests": {"cpu": e.cpu}}}]}});
    if e.host_port {
        p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 80, "hostPort": 8080}]);
    }
    if let Some((app, key)) = e.anti {
        p["spec"]["affinity"] = json!({"podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [term(app, key)]}});
    }
    p
}

fn pending_pod(tag: &str, s: &Scenario, scheduler: &str) -> Value {
    let mut spec = s.spec.clone();
    spec["schedulerName"] = json!(scheduler);
    spec["nodeSelector"] = json!({"scenario": tag});
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "pending", "namespace": tag, "labels": {"app": s.app, "role": "pending"}},
        "spec": spec})
}

/// Creates a copy of the scenario: namespace, ServiceAccount, nodes (cordoned except
/// `open`, when given), existing pods.
async fn create_copy(
    client: &kube::Client,
    tag: &str,
    s: &Scenario,
    open: Option<usize>,
) -> anyhow::Result<()> {
    let pp = PostParams::default();
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": tag}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&pp, &ns)
        .await?;
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    Api::<ServiceAccount>::namespaced(client.clone(), tag)
        .create(&pp, &sa)
        .await?;
    let nodes: Api<Node> = Api::all(client.clone());
    for (j, n) in s.nodes.iter().enumerate() {
        let (node, status, taints) = node_object(tag, j, n, open.is_some_and(|o| o != j));
        let name = format!("{tag}-n{j}");
        nodes.create(&pp, &serde_json::from_value(node)?).await?;
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&taints))
            .await?;
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), tag);
    for (i, e) in s.existing.iter().enumerate() {
        pods.create(&pp, &serde_json::from_value(existing_pod(tag, i, e))?)
            .await?;
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    /// Bound to node index j of the copy.
    Bound(usize),
    /// PodScheduled=False/Unschedulable with this message.
    Unschedulable(String),
}

/// Waits until every pending pod in `tags` is bound or reported Unschedulable.
async fn outcomes(
    client: &kube::Client,
    tags: &[String],
) -> anyhow::Result<BTreeMap<String, Outcome>> {
    let pods: Api<Pod> = Api::all(client.clone());
    let out = wait::until(
        "all pending pods decided",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || async {
            let list = pods
                .list(&ListParams::default().labels("role=pending"))
                .await
                .map_err(|e| e.to_string())?;
            let mut out = BTreeMap::new();
            for p in list.items {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let node = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                if let Some(j) = node.rsplit_once("-n").and_then(|(_, j)| j.parse().ok()) {
                    out.insert(ns, Outcome::Bound(j));
                    continue;
                }
                let cond = p
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
                if let Some(c) = cond
                    && c.reason.as_deref() == Some("Unschedulable")
                {
                    out.insert(
                        ns,
                        Outcome::Unschedulable(c.message.clone().unwrap_or_default()),
                    );
                }
            }
            let missing: Vec<&String> = tags.iter().filter(|t| !out.contains_key(*t)).collect();
            if missing.is_empty() {
                Ok(out)
            } else {
                Err(format!("undecided: {missing:?}"))
            }
        },
    )
    .await?;
    Ok(out)
}

/// Ours, in process, on the objects of copy `tag` as the apiserver holds them: each
/// feasible node index with its total score, or the FitError message.
async fn evaluate_ours(
    client: &kube::Client,
    tag: &str,
    pending: &Pod,
) -> anyhow::Result<Result<Vec<(usize, i64)>, String>> {
    let cfg = ferrokube_scheduler::config::finish(
        ferrokube_scheduler::config::KubeSchedulerConfiguration::defaulted(),
    )?;
    let fwk = ferrokube_scheduler::framework::runtime::Framework::new(&cfg.profiles[0], 1)?;
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&format!("scenario={tag}")))
        .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), tag)
        .list(&ListParams::default())
        .await?;
    let mut infos: Vec<NodeInfo> = Vec::new();
    let mut names: Vec<String> = nodes
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    names.sort();
    for name in &names {
        let Some(node) = nodes
            .items
            .iter()
            .find(|n| n.metadata.name.as_ref() == Some(name))
        else {
            continue;
        };
        let mut info = NodeInfo::new(name);
        info.set_node(Arc::new(node.clone()));
        for p in &pods.items {
            let on = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if on == Some(name.as_str())
                && p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("role"))
                    .is_none()
            {
                info.add_pod(Arc::new(PodInfo::new(Arc::new(p.clone()))));
            }
        }
        infos.push(info);
    }
    let snap = Snapshot::from_nodes(infos);
    let mut pod = pending.clone();
    if let Some(s) = pod.spec.as_mut() {
        s.node_name = None;
    }
    let index = |name: &str| {
        name.rsplit_once("-n")
            .and_then(|(_, j)| j.parse::<usize>().ok())
    };
    Ok(match evaluate(&fwk, &snap, &PodInfo::new(Arc::new(pod))) {
        Ok(scores) => Ok(scores
            .iter()
            .filter_map(|s| index(&s.name).map(|j| (j, s.score)))
            .collect()),
        Err(ScheduleError::Fit(e)) => Err(e.message()),
        Err(e) => Err(format!("{e:?}")),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_scenarios_match_upstream_kube_scheduler() -> anyhow::Result<()> {
    let started = Instant::now();
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let mut rng = Rng(0x5EED_F00D_u64
        ^ std::env::var("DIFF_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0));
    let scenarios: Vec<Scenario> = (0..SCENARIOS).map(|_| generate(&mut rng)).collect();

    // Both copies of every scenario exist before any pending pod.
    let copies: Vec<(String, usize)> = (0..SCENARIOS)
        .flat_map(|i| [(format!("d{i}a"), i), (format!("d{i}b"), i)])
        .collect();
    let created: Vec<anyhow::Result<()>> = futures::stream::iter(copies.iter())
        .map(|(tag, i)| create_copy(&client, tag, &scenarios[*i], None))
        .buffer_unordered(16)
        .collect()
        .await;
    for r in created {
        r?;
    }

    let upstream_bin = ferrokube_tests::upstream::binary("kube-scheduler")?;
    let upstream_port = ferrokube_tests::controlplane::free_port()?;
    let mut upstream = cp.spawn_component(
        "kube-scheduler",
        &upstream_bin,
        &[
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            &format!("--secure-port={upstream_port}"),
            "--v=2",
        ],
    )?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("ferrokube-scheduler.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nleaderElection:\n  leaderElect: false\nprofiles:\n- schedulerName: ferrokube-scheduler\n",
    )?;
    let config_flag = format!("--config={}", config.display());
    let result = async {
        let _ours = common::start(&cp, "ferrokube-scheduler", &[&config_flag]).await?;
        let pp = PostParams::default();
        for (tag, i) in &copies {
            let scheduler = if tag.ends_with('a') { "default-scheduler" } else { "ferrokube-scheduler" };
            let pod: Pod = serde_json::from_value(pending_pod(tag, &scenarios[*i], scheduler))?;
            Api::<Pod>::namespaced(client.clone(), tag).create(&pp, &pod).await?;
        }
        let tags: Vec<String> = copies.iter().map(|(t, _)| t.clone()).collect();
        let results = outcomes(&client, &tags).await?;

        let mut failures = Vec::new();
        let mut pins = Vec::new();
        let (mut unschedulable, mut bound, mut unique) = (0, 0, 0);
        for (i, s) in scenarios.iter().enumerate() {
            let (a, b) = (format!("d{i}a"), format!("d{i}b"));
            let (up, ours) = (&results[&a], &results[&b]);
            match (up, ours) {
                (Outcome::Unschedulable(m1), Outcome::Unschedulable(m2)) => {
                    unschedulable += 1;
                    if m1 != m2 {
                        failures.push(format!("scenario {i}: messages differ\n  upstream: {m1}\n  ours:     {m2}\n  {s:?}"));
                    }
                }
                (Outcome::Bound(ju), Outcome::Bound(jo)) => {
                    bound += 1;
                    let pending = Api::<Pod>::namespaced(client.clone(), &b).get("pending").await?;
                    match evaluate_ours(&client, &b, &pending).await? {
                        Ok(scores) => {
                            for (who, j) in [("upstream", ju), ("ours", jo)] {
                                if !scores.iter().any(|(k, _)| k == j) {
                                    failures.push(format!("scenario {i}: {who} chose n{j}, infeasible for ours {scores:?}\n  {s:?}"));
                                }
                            }
                            let max = scores.iter().map(|(_, v)| *v).max().unwrap_or(0);
                            let best: Vec<usize> = scores.iter().filter(|(_, v)| *v == max).map(|(k, _)| *k).collect();
                            if let [only] = best.as_slice() {
                                unique += 1;
                                if ju != only || jo != only {
                                    failures.push(format!("scenario {i}: unique best n{only} (scores {scores:?}), upstream n{ju}, ours n{jo}\n  {s:?}"));
                                }
                            }
                        }
                        Err(msg) => failures.push(format!("scenario {i}: ours in process finds nothing: {msg}")),
                    }
                    if ju != jo {
                        pins.push((i, *jo));
                    }
                }
                _ => failures.push(format!("scenario {i}: upstream {up:?}, ours {ours:?}\n  {s:?}")),
            }
        }

        // Our choice, pinned by cordoning every other node, must bind under upstream too.
        let pinned: Vec<(String, usize, usize)> = pins.iter().map(|(i, j)| (format!("d{i}c"), *i, *j)).collect();
        for (tag, i, j) in &pinned {
            create_copy(&client, tag, &scenarios[*i], Some(*j)).await?;
        }
        for (tag, i, _) in &pinned {
            let pod: Pod = serde_json::from_value(pending_pod(tag, &scenarios[*i], "default-scheduler"))?;
            Api::<Pod>::namespaced(client.clone(), tag).create(&pp, &pod).await?;
        }
        let tags: Vec<String> = pinned.iter().map(|(t, _, _)| t.clone()).collect();
        let pinned_results = outcomes(&client, &tags).await?;
        for (tag, i, j) in &pinned {
            if pinned_results[tag] != Outcome::Bound(*j) {
                failures.push(format!("scenario {i}: ours chose n{j}, upstream finds it infeasible: {:?}\n  {:?}", pinned_results[tag], scenarios[*i]));
            }
        }
        eprintln!(
            "differential: {SCENARIOS} scenarios, {unschedulable} unschedulable (messages compared), {bound} bound ({unique} with a unique best node, {} choices differed and were cross-checked), {:?}",
            pinned.len(),
            started.elapsed()
        );
        assert!(unschedulable >= 5 && bound >= 5, "generator too one-sided: {unschedulable} unschedulable, {bound} bound");
        if !failures.is_empty() {
            anyhow::bail!("{} of {SCENARIOS} scenarios differ:\n{}", failures.len(), failures.join("\n"));
        }
        anyhow::Ok(())
    }
    .await;
    upstream.stop(Duration::from_secs(5));
    if result.is_err() {
        eprintln!("{}", cp.logs(40));
    }
    result
}
