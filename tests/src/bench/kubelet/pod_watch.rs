//! One watch of the bench namespace's pods for the whole run: stamps the moment each pod
//! is first seen Ready and tracks which pods exist.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher::{self, watcher};
use tokio::sync::watch;
use tokio::time::Instant;

/// What one watch of the namespace's pods has seen.
#[derive(Clone, Debug, Default)]
struct Seen {
    /// When each pod's Ready condition was first seen True.
    ready: HashMap<String, Instant>,
    /// Pods that exist.
    present: HashSet<String>,
}

/// A watch of the bench namespace's pods, stamping the moment each turns Ready. One watch
/// for the whole run, so no pod's readiness is missed between a create and a wait.
pub(super) struct PodWatch {
    rx: watch::Receiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl PodWatch {
    pub(super) fn start(pods: Api<Pod>) -> Self {
        let (tx, rx) = watch::channel(Seen::default());
        let task = tokio::spawn(async move {
            let mut relist = HashSet::new();
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                tx.send_modify(|seen| match event {
                    Ok(watcher::Event::Init) => relist.clear(),
                    Ok(watcher::Event::InitApply(p)) => {
                        relist.extend(p.metadata.name.clone());
                        stamp(seen, &p, now);
                    }
                    Ok(watcher::Event::InitDone) => seen.present = std::mem::take(&mut relist),
                    Ok(watcher::Event::Apply(p)) => {
                        seen.present.extend(p.metadata.name.clone());
                        stamp(seen, &p, now);
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        if let Some(n) = &p.metadata.name {
                            seen.present.remove(n);
                        }
                    }
                    // The watcher retries by itself; a gap only delays a stamp.
                    Err(_) => {}
                });
            }
        });
        Self { rx, task }
    }

    /// When pod `name` was first seen Ready.
    pub(super) async fn ready(&mut self, name: &str, timeout: Duration) -> Result<Instant> {
        let seen = tokio::time::timeout(timeout, self.rx.wait_for(|s| s.ready.contains_key(name)))
            .await
            .with_context(|| format!("pod {name} not Ready within {timeout:?}"))??;
        seen.ready
            .get(name)
            .copied()
            .with_context(|| format!("pod {name} lost its Ready stamp"))
    }

    /// Waits until pod `name` no longer exists.
    pub(super) async fn gone(&mut self, name: &str, timeout: Duration) -> Result<()> {
        tokio::time::timeout(timeout, self.rx.wait_for(|s| !s.present.contains(name)))
            .await
            .with_context(|| format!("pod {name} not deleted within {timeout:?}"))??;
        Ok(())
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn stamp(seen: &mut Seen, pod: &Pod, now: Instant) {
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    if let (true, Some(name)) = (ready, &pod.metadata.name) {
        seen.ready.entry(name.clone()).or_insert(now);
    }
}
