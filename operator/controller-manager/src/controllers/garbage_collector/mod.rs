//! `garbage-collector-controller`: deletes objects whose owners are gone, and carries out
//! foreground and orphan deletion.
//!
//! Upstream's `GarbageCollector` and `GraphBuilder`, on ferrokube's shared informers:
//!
//! ```text
//!   discovery (every 30 s) ─▶ one dynamic informer ("monitor") per resource that
//!        supports list, watch and delete (CRDs added later are picked up)
//!                 │ Added / Updated / Deleted
//!                 ▼
//!   graph builder (one task) ─ uid -> node graph, virtual owners, absent-owner cache
//!        │ attempt to delete (uid)                │ attempt to orphan (uid)
//!        ▼                                        ▼
//!   workers: live GET of item and owners,    workers: strip the owner's references
//!   delete with uid preconditions, remove    from dependents, then remove the `orphan`
//!   `foregroundDeletion` when unblocked      finalizer
//!        │ owner verified absent
//!        └──▶ virtual delete event back into the graph builder
//! ```

mod collector;
pub mod graph;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ferrokube_runtime::informer::{InformerFactory, Notification, Selectors, Store};
use ferrokube_runtime::workqueue::WorkQueue;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;

/// What a monitor caches: an object's metadata only (owners, finalizers, deletion state).
type Meta = PartialObjectMeta<DynamicObject>;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use self::collector::Collector;
use self::graph::{EventType, Graph, GraphEvent};
use super::StartError;
use super::resource_discovery::{self, Discovered, DiscoveredResource};
use crate::context::Context;

/// How often discovery runs to pick up new and removed resources (upstream: 30 s).
const RESOURCE_SYNC_PERIOD: Duration = Duration::from_secs(30);

/// Resources never monitored (upstream's `DefaultIgnoredResources`): events are many,
/// short-lived and never owners.
const IGNORED: &[(&str, &str)] = &[("", "events"), ("events.k8s.io", "events")];

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let recorder = ctx.recorder("garbage-collector-controller", tasks);
    let (graph_tx, graph_rx) = mpsc::unbounded_channel();
    let collector = Arc::new(Collector {
        client: ctx.client.clone(),
        graph: Mutex::new(Graph::default()),
        mapper: RwLock::new(Arc::new(Discovered::default())),
        attempt_to_delete: WorkQueue::new("garbage_collector_attempt_to_delete", &ctx.metrics),
        attempt_to_orphan: WorkQueue::new("garbage_collector_attempt_to_orphan", &ctx.metrics),
        graph_changes: graph_tx.clone(),
        recorder,
    });

    tasks.spawn(run_graph_builder(
        collector.clone(),
        graph_rx,
        ctx.shutdown.clone(),
    ));
    tasks.spawn(run(
        collector,
        ctx.informers.clone(),
        graph_tx,
        ctx.options.concurrent_gc_syncs,
        ctx.shutdown.clone(),
    ));
    Ok(())
}

/// Applies graph changes one at a time (upstream's `runProcessGraphChanges`).
async fn run_graph_builder(
    collector: Arc<Collector>,
    mut rx: mpsc::UnboundedReceiver<GraphEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            e = rx.recv() => e,
        };
        let Some(event) = event else { return };
        let effects = collector
            .graph
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .process(&event);
        collector.apply(effects);
    }
}

/// One monitored resource: its cache and the task feeding the graph from it.
struct Monitor {
    store: Store<Meta>,
    forwarder: AbortHandle,
}

/// Discovers resources, keeps monitors in line with them, and runs the workers once the
/// first set of monitors has synced.
async fn run(
    collector: Arc<Collector>,
    informers: Arc<InformerFactory>,
    graph_tx: mpsc::UnboundedSender<GraphEvent>,
    workers: usize,
    shutdown: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    let mut monitors: HashMap<(String, String, String), Monitor> = HashMap::new();
    let mut workers_started = false;
    let mut ticker = tokio::time::interval(RESOURCE_SYNC_PERIOD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let discovered = match resource_discovery::discover(&collector.client).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "garbage collector: discovery failed; retrying");
                continue;
            }
        };
        if let Some(msg) = discovered.failure_message() {
            // Monitors of the failing groups are kept (upstream keeps synced ones).
            tracing::info!(error = %msg, "garbage collector: failed to discover some groups");
        }
        let deletable: Vec<&DiscoveredResource> = discovered
            .preferred
            .iter()
            .filter(|r| r.supports_all(&["delete", "list", "watch"]))
            .filter(|r| {
                !IGNORED
                    .iter()
                    .any(|(g, p)| r.resource.group == *g && r.resource.plural == *p)
            })
            .collect();
        let mut added = Vec::new();
        for r in &deletable {
            let key = gvr_key(r);
            if monitors.contains_key(&key) {
                continue;
            }
            let informer = informers.dynamic_metadata(&r.resource, Selectors::default());
            let forwarder = tasks.spawn(forward(
                r.resource.api_version.clone(),
                r.resource.kind.clone(),
                informer.subscribe(),
                graph_tx.clone(),
                shutdown.clone(),
            ));
            monitors.insert(
                key.clone(),
                Monitor {
                    store: informer.store(),
                    forwarder,
                },
            );
            added.push(format!("{}/{}", r.resource.api_version, r.resource.plural));
        }
        // A resource that went away (CRD deleted) stops feeding the graph; one whose group
        // failed discovery is kept, as upstream does.
        let removed: Vec<(String, String, String)> = monitors
            .keys()
            .filter(|k| !deletable.iter().any(|r| gvr_key(r) == **k))
            .filter(|(g, v, _)| {
                let gv = if g.is_empty() {
                    v.clone()
                } else {
                    format!("{g}/{v}")
                };
                !discovered.failed.contains_key(&gv)
            })
            .cloned()
            .collect();
        for k in &removed {
            if let Some(m) = monitors.remove(k) {
                m.forwarder.abort();
            }
        }
        *collector
            .mapper
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(discovered);
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(
                ?added,
                removed = removed.len(),
                "garbage collector: syncing monitors"
            );
            informers.start(&mut tasks, &shutdown);
            let stores: Vec<Store<Meta>> = monitors.values().map(|m| m.store.clone()).collect();
            let synced = tokio::time::timeout(RESOURCE_SYNC_PERIOD, async {
                for s in &stores {
                    s.wait_synced().await;
                }
            });
            tokio::select! {
                () = shutdown.cancelled() => break,
                r = synced => if r.is_err() {
                    tracing::warn!("garbage collector: timed out waiting for monitors to sync; proceeding");
                },
            }
        }
        if !workers_started {
            tracing::info!(
                "garbage collector: all resource monitors have synced; proceeding to collect garbage"
            );
            collector.spawn_workers(&mut tasks, workers, &shutdown);
            workers_started = true;
        }
        // Reap finished tasks so the set does not grow with aborted forwarders.
        while tasks.try_join_next().is_some() {}
    }
    collector.attempt_to_delete.shut_down();
    collector.attempt_to_orphan.shut_down();
    while tasks.join_next().await.is_some() {}
}

fn gvr_key(r: &DiscoveredResource) -> (String, String, String) {
    (
        r.resource.group.clone(),
        r.resource.version.clone(),
        r.resource.plural.clone(),
    )
}

/// Turns one monitor's notifications into graph events.
async fn forward(
    api_version: String,
    kind: String,
    mut rx: mpsc::UnboundedReceiver<Notification<Meta>>,
    tx: mpsc::UnboundedSender<GraphEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let n = tokio::select! {
            () = shutdown.cancelled() => return,
            n = rx.recv() => n,
        };
        let Some(n) = n else { return };
        let (event_type, meta, old) = match n {
            Notification::Added(o) => (EventType::Add, o.metadata.clone(), None),
            // A periodic resync re-delivers the same object: nothing changed.
            Notification::Updated { old, new } if Arc::ptr_eq(&old, &new) => continue,
            Notification::Updated { old, new } => (
                EventType::Update,
                new.metadata.clone(),
                Some(old.metadata.clone()),
            ),
            Notification::Deleted(o) => (EventType::Delete, o.metadata.clone(), None),
        };
        let event = GraphEvent {
            event_type,
            virtual_: false,
            api_version: api_version.clone(),
            kind: kind.clone(),
            meta,
            old,
        };
        if tx.send(event).is_err() {
            return;
        }
    }
}
