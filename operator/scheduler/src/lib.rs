//! ferrokube's scheduler: upstream kube-scheduler's queue, cache, framework and default
//! plugins on the ferrokube runtime.
//!
//! ```text
//!   --config (KubeSchedulerConfiguration v1) ─▶ profiles ─▶ one Framework per schedulerName
//!   flags ─▶ client (clientConnection qps/burst) ─▶ health + metrics server (:10259)
//!                 │
//!                 ▼
//!   leader election on Lease kube-system/kube-scheduler
//!                 │ elected
//!                 ▼
//!   informers (pods, nodes) ─▶ cache + queue ─▶ scheduling loop ─▶ pods/binding
//!   (I/O on one thread)                         (its own thread)   (I/O thread)
//!   informers (namespaces, services, RCs, RSs, StatefulSets, PDBs) ─▶ cache::Listers
//!                                           no fit ─▶ PostFilter (DefaultPreemption):
//!                                              evict victims, set nominatedNodeName
//! ```
//!
//! Modules follow upstream's layout: [`queue`], [`cache`], [`framework`],
//! [`plugins`]`::<snake_case plugin name>`, [`binder::default_binder`], [`config`].

pub mod binder;
pub mod cache;
pub mod config;
pub mod framework;
pub mod metrics;
pub mod options;
pub mod plugins;
pub mod queue;
pub mod schedule_one;
pub mod scheduler;
pub mod transform;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferrokube_runtime::client::{self, ClientOptions};
use ferrokube_runtime::informer::{InformerFactory, Selectors};
use ferrokube_runtime::leader_election::{self, LeaderElector};
use ferrokube_runtime::metrics::Metrics;
use ferrokube_runtime::server::{self, Health, Kind};
use ferrokube_runtime::shutdown;
use k8s_openapi::api::apps::v1::{ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{
    Namespace, PersistentVolume, PersistentVolumeClaim, ReplicationController, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::framework::interface::Plugin;
use crate::framework::runtime::Framework;
use crate::options::Options;
use crate::transform::{CachedNode, CachedPod};

/// Why the scheduler stopped (or never started).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file is unreadable or invalid.
    #[error("--config: {0}")]
    Config(#[from] config::Error),
    /// A profile could not be built.
    #[error("invalid profile: {0}")]
    Profile(#[from] framework::runtime::Error),
    /// The apiserver connection could not be set up.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// Leader election failed or leadership was lost.
    #[error(transparent)]
    LeaderElection(#[from] leader_election::Error),
    /// The health server could not listen.
    #[error("serving health and metrics on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How long running tasks get to finish after shutdown or loss of leadership.
const GRACE: Duration = Duration::from_secs(10);

/// Loads `--config` (or the defaults) and applies the flags that override it.
pub fn load_config(options: &Options) -> Result<Config, Error> {
    let mut cfg = match &options.config {
        Some(path) => config::load(path)?,
        None => config::finish(config::KubeSchedulerConfiguration::defaulted())?,
    };
    let le = &mut cfg.raw.leader_election;
    if let Some(v) = options.leader_elect {
        le.leader_elect = v;
    }
    if let Some(v) = &options.leader_elect_resource_name {
        le.resource_name.clone_from(v);
    }
    if let Some(v) = &options.leader_elect_resource_namespace {
        le.resource_namespace.clone_from(v);
    }
    if let Some(d) = options.leader_elect_lease_duration {
        cfg.lease_duration = d;
    }
    if let Some(d) = options.leader_elect_renew_deadline {
        cfg.renew_deadline = d;
    }
    if let Some(d) = options.leader_elect_retry_period {
        cfg.retry_period = d;
    }
    Ok(cfg)
}

/// Builds one framework per profile.
pub fn build_profiles(cfg: &Config) -> Result<HashMap<String, Arc<Framework>>, Error> {
    let mut out = HashMap::new();
    for p in &cfg.profiles {
        let fwk = Framework::new(p, cfg.parallelism)?;
        if !fwk.unimplemented.is_empty() {
            tracing::warn!(
                profile = %p.scheduler_name,
                plugins = ?fwk.unimplemented,
                "plugins not implemented by ferrokube yet; skipping them"
            );
        }
        out.insert(p.scheduler_name.clone(), Arc::new(fwk));
    }
    Ok(out)
}

/// Runs the scheduler until SIGTERM/SIGINT (or loss of leadership).
pub async fn run(options: Options) -> Result<(), Error> {
    // Everything about the configuration is checked before touching the network, so a
    // bad file fails fast with its message.
    let cfg = load_config(&options)?;
    let profiles = build_profiles(&cfg)?;
    let shutdown = shutdown::on_signal();
    let cc = &cfg.raw.client_connection;
    let kubeconfig = options
        .kubeconfig
        .clone()
        .or_else(|| (!cc.kubeconfig.is_empty()).then(|| std::path::PathBuf::from(&cc.kubeconfig)));
    let client_options = ClientOptions {
        kubeconfig,
        qps: cc.qps,
        burst: u32::try_from(cc.burst).unwrap_or(u32::MAX),
        user_agent: Some(format!("ferrokube-scheduler/{}", env!("CARGO_PKG_VERSION"))),
    };
    let client = client::build(&client_options).await?;
    // Events go through their own client, with its own QPS budget, as upstream's
    // `createClients` builds `eventClient` beside the main one: recording a pod's
    // Scheduled event never delays another pod's binding.
    let event_client = client::build(&client_options).await?;

    let metrics = Metrics::new();
    let health = Health::new();
    let mut tasks = JoinSet::new();
    if options.secure_port != 0 {
        let addr = SocketAddr::new(options.bind_address, options.secure_port);
        let (bound, task) = server::serve(addr, health.clone(), metrics.clone(), shutdown.clone())
            .await
            .map_err(|source| Error::Serve { addr, source })?;
        tracing::info!(%bound, "serving /healthz, /readyz, /livez and /metrics");
        tasks.spawn(async move {
            let _ = task.await;
        });
    }
    let le = cfg.raw.leader_election.clone();
    let leading = Arc::new(AtomicBool::new(!le.leader_elect));
    {
        let leading = leading.clone();
        let electing = le.leader_elect;
        health.add("leaderElection", Kind::Readiness, move || {
            if !electing || leading.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("not the leader".into())
            }
        });
    }
    let identity = leader_election::default_identity();
    let sched_metrics = metrics::SchedulerMetrics::register(&metrics);
    let cfg = Arc::new(cfg);

    let result = if le.leader_elect {
        let mut lc =
            leader_election::Config::new(&le.resource_namespace, &le.resource_name, &identity);
        lc.lease_duration = cfg.lease_duration;
        lc.renew_deadline = cfg.renew_deadline;
        lc.retry_period = cfg.retry_period;
        let elector = LeaderElector::new(client.clone(), lc)?;
        tracing::info!(%identity, lease = %format!("{}/{}", le.resource_namespace, le.resource_name), "attempting to acquire leader lease");
        let flag = leading.clone();
        let (client2, event_client2, identity2) =
            (client.clone(), event_client.clone(), identity.clone());
        let elected = elector
            .run(shutdown.clone(), move |lost| async move {
                flag.store(true, Ordering::SeqCst);
                let clients = Clients {
                    main: client2,
                    events: event_client2,
                };
                run_scheduler(clients, cfg, profiles, sched_metrics, identity2, lost).await;
            })
            .await;
        leading.store(false, Ordering::SeqCst);
        elected.map_err(Error::from)
    } else {
        run_scheduler(
            Clients {
                main: client,
                events: event_client,
            },
            cfg,
            profiles,
            sched_metrics,
            identity,
            shutdown.clone(),
        )
        .await;
        Ok(())
    };
    shutdown.cancel();
    shutdown::drain(tasks, GRACE).await;
    result
}

/// The scheduler's API clients (upstream `createClients`).
struct Clients {
    /// Informers, bindings, status updates and preemption.
    main: kube::Client,
    /// Events only.
    events: kube::Client,
}

/// Informers, cache, queue and the scheduling loop, until `shutdown`.
async fn run_scheduler(
    clients: Clients,
    cfg: Arc<Config>,
    profiles: HashMap<String, Arc<Framework>>,
    metrics: metrics::SchedulerMetrics,
    identity: String,
    shutdown: CancellationToken,
) {
    let Clients {
        main: client,
        events: event_client,
    } = clients;
    let mut tasks = JoinSet::new();
    // The informers keep only what the scheduler reads of pods and nodes (managedFields are
    // dropped for every type): see `transform`.
    let informers = InformerFactory::new(client.clone())
        .with_transform::<CachedPod>(transform::pod)
        .with_transform::<CachedNode>(transform::node);
    // Terminal pods hold no resources; upstream's scheduler never sees them either.
    let pods = informers.informer_with::<CachedPod>(Selectors {
        field_selector: Some("status.phase!=Succeeded,status.phase!=Failed".into()),
        ..Selectors::default()
    });
    let nodes = informers.informer::<CachedNode>();
    // What plugins read besides nodes and pods (upstream's listers): namespaces for
    // InterPodAffinity, the controllers and Services behind PodTopologySpread's default
    // selector, PodDisruptionBudgets for preemption.
    let listers = cache::Listers {
        namespaces: Some(informers.informer::<Namespace>().store()),
        services: Some(informers.informer::<Service>().store()),
        replication_controllers: Some(informers.informer::<ReplicationController>().store()),
        replica_sets: Some(informers.informer::<ReplicaSet>().store()),
        stateful_sets: Some(informers.informer::<StatefulSet>().store()),
        pdbs: Some(informers.informer::<PodDisruptionBudget>().store()),
        pvcs: Some(informers.informer::<PersistentVolumeClaim>().store()),
        pvs: Some(informers.informer::<PersistentVolume>().store()),
        storage_classes: Some(informers.informer::<StorageClass>().store()),
        ..cache::Listers::default()
    };
    // Claims, volumes and classes appearing or changing may make a pod schedulable.
    let mut storage_rx = {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        forward_changes(
            &mut tasks,
            informers.informer::<PersistentVolumeClaim>(),
            tx.clone(),
            &shutdown,
        );
        forward_changes(
            &mut tasks,
            informers.informer::<PersistentVolume>(),
            tx.clone(),
            &shutdown,
        );
        forward_changes(
            &mut tasks,
            informers.informer::<StorageClass>(),
            tx,
            &shutdown,
        );
        rx
    };
    let mut pod_rx = pods.subscribe();
    let mut node_rx = nodes.subscribe();

    // All profiles share one queue; config validation made their QueueSort equal.
    let first = profiles.values().next().cloned();
    let Some(first) = first else {
        return;
    };
    let sort = first.queue_sort.clone();
    let less: queue::LessFn =
        Arc::new(move |a, b| sort.less(&a.pod, a.timestamp, &b.pod, b.timestamp));
    let mut pre_enqueue: Vec<Arc<dyn Plugin>> = Vec::new();
    let mut all: Vec<Arc<dyn Plugin>> = Vec::new();
    for f in profiles.values() {
        for p in &f.pre_enqueue {
            if !pre_enqueue.iter().any(|q| q.name() == p.name()) {
                pre_enqueue.push(p.clone());
            }
        }
        all.extend(f.all.iter().cloned());
    }
    let queue = Arc::new(queue::SchedulingQueue::new(
        less,
        pre_enqueue,
        &all,
        cfg.pod_initial_backoff,
        cfg.pod_max_backoff,
    ));
    let recorders =
        scheduler::recorders(&event_client, &profiles, &identity, &mut tasks, &shutdown);
    let cache = Arc::new(cache::Cache::new(None));
    cache.set_listers(listers);
    let sched = Arc::new(scheduler::Scheduler::new(
        cache,
        queue.clone(),
        profiles,
        recorders,
        client,
        pods.store(),
        metrics,
        tokio::runtime::Handle::current(),
    ));
    {
        let sched = sched.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    Some(n) = node_rx.recv() => sched.on_node(n),
                    Some(n) = pod_rx.recv() => sched.on_pod(n),
                    Some(()) = storage_rx.recv() => sched.on_storage_change(),
                    else => break,
                }
            }
        });
    }
    informers.start(&mut tasks, &shutdown);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = informers.wait_for_sync() => {
            tracing::info!("caches synced; scheduling");
            tasks.spawn(sched.clone().run_flushers(shutdown.clone()));
            tasks.spawn(sched.clone().run_on_own_thread(shutdown.clone()));
        }
    }
    shutdown.cancelled().await;
    queue.close();
    tracing::info!("stopping scheduler");
    shutdown::drain(tasks, GRACE).await;
}

/// Sends `()` on `tx` for every addition or change `informer` reports (deletions cannot make
/// a pod schedulable), until `shutdown`.
fn forward_changes<K: Send + Sync + 'static>(
    tasks: &mut JoinSet<()>,
    informer: ferrokube_runtime::informer::Informer<K>,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
    shutdown: &CancellationToken,
) {
    let mut rx = informer.subscribe();
    let shutdown = shutdown.clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                n = rx.recv() => match n {
                    Some(ferrokube_runtime::informer::Notification::Deleted(_)) => {}
                    Some(_) => {
                        if tx.send(()).is_err() {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
}
