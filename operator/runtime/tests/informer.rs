//! Shared informers against a real apiserver: caches converge, subscribers see the
//! differences, and both survive an apiserver restart during which objects changed.

use std::collections::BTreeMap;
use std::time::Duration;

use ferrokube_runtime::informer::{InformerFactory, Notification, Selectors};
use ferrokube_tests::{ControlPlane, wait};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

fn cm(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("app".into(), "informer-test".into())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([("v".into(), value.into())])),
        ..Default::default()
    }
}

/// Everything the subscriber has seen so far, as `(kind, name, value)`.
fn drain(rx: &mut UnboundedReceiver<Notification<ConfigMap>>) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    while let Ok(n) = rx.try_recv() {
        let kind = match &n {
            Notification::Added(_) => "added",
            Notification::Updated { .. } => "updated",
            Notification::Deleted(_) => "deleted",
        };
        let o = n.object();
        let v = o
            .data
            .as_ref()
            .and_then(|d| d.get("v"))
            .cloned()
            .unwrap_or_default();
        out.push((
            kind.to_string(),
            o.metadata.name.clone().unwrap_or_default(),
            v,
        ));
    }
    out
}

fn value_in(store: &ferrokube_runtime::informer::Store<ConfigMap>, name: &str) -> Option<String> {
    store
        .get("default", name)
        .and_then(|c| c.data.as_ref().and_then(|d| d.get("v").cloned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_converge_across_an_apiserver_restart() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    api.create(&pp, &cm("keep", "1")).await?;
    api.create(&pp, &cm("change", "1")).await?;
    api.create(&pp, &cm("remove", "1")).await?;

    let factory = InformerFactory::new(client.clone());
    let selected = Selectors {
        namespace: Some("default".into()),
        label_selector: Some("app=informer-test".into()),
        ..Default::default()
    };
    let informer = factory.informer_with::<ConfigMap>(selected.clone());
    // Asking twice for the same type and selectors shares one watch and cache.
    let again = factory.informer_with::<ConfigMap>(selected);
    let mut first = informer.subscribe();
    let mut tasks = JoinSet::new();
    let shutdown = CancellationToken::new();
    factory.start(&mut tasks, &shutdown);
    tokio::time::timeout(Duration::from_secs(10), factory.wait_for_sync()).await?;
    let store = again.store();
    assert_eq!(store.len(), 3);
    let mut seen = drain(&mut first);
    seen.sort();
    assert_eq!(
        seen.iter().filter(|s| s.0 == "added").count(),
        3,
        "{seen:?}"
    );

    // Live changes arrive as Updated/Deleted with the right objects.
    api.patch(
        "keep",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await?;
    wait::until(
        "live update",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let v = value_in(&store, "keep");
            async move {
                if v.as_deref() == Some("2") {
                    Ok(())
                } else {
                    Err(format!("{v:?}"))
                }
            }
        },
    )
    .await?;
    let live = drain(&mut first);
    assert_eq!(live, vec![("updated".into(), "keep".into(), "2".into())]);

    // A late subscriber gets the cache replayed as Added.
    let mut late = informer.subscribe();
    assert_eq!(drain(&mut late).len(), 3);

    // The apiserver goes away; objects change through another apiserver on the same etcd
    // meanwhile; the first one comes back.
    cp.stop_apiserver();
    let other = cp.second_apiserver().await?;
    let other_api: Api<ConfigMap> = Api::namespaced(other.client.clone(), "default");
    other_api
        .patch(
            "change",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
        )
        .await?;
    other_api.delete("remove", &DeleteParams::default()).await?;
    other_api.create(&pp, &cm("new", "1")).await?;
    other.stop();
    cp.start_apiserver().await?;

    wait::until(
        "convergence after restart",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let state = (
                value_in(&store, "change"),
                store.get("default", "remove").is_some(),
                value_in(&store, "new"),
            );
            async move {
                if state == (Some("2".into()), false, Some("1".into())) {
                    Ok(())
                } else {
                    Err(format!("{state:?}"))
                }
            }
        },
    )
    .await?;
    assert_eq!(store.len(), 3);
    let mut after: Vec<_> = drain(&mut first);
    after.sort();
    assert_eq!(
        after,
        vec![
            ("added".into(), "new".into(), "1".into()),
            ("deleted".into(), "remove".into(), "1".into()),
            ("updated".into(), "change".into(), "2".into()),
        ],
        "subscribers see exactly the differences"
    );
    // Both subscribers saw the same stream.
    let mut late_after = drain(&mut late);
    late_after.sort();
    assert_eq!(late_after, after);

    // And the informer keeps watching after recovery.
    api.patch(
        "new",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "3"}})),
    )
    .await?;
    wait::until(
        "update after restart",
        Duration::from_secs(10),
        Duration::from_millis(20),
        || {
            let v = value_in(&store, "new");
            async move {
                if v.as_deref() == Some("3") {
                    Ok(())
                } else {
                    Err(format!("{v:?}"))
                }
            }
        },
    )
    .await?;

    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resync_redelivers_cached_objects() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &cm("one", "1"))
        .await?;
    let factory = InformerFactory::new(client).with_resync(Duration::from_millis(300));
    let informer = factory.informer_with::<ConfigMap>(Selectors {
        label_selector: Some("app=informer-test".into()),
        ..Default::default()
    });
    let mut rx = informer.subscribe();
    let mut tasks = JoinSet::new();
    let shutdown = CancellationToken::new();
    factory.start(&mut tasks, &shutdown);
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?;
    assert!(matches!(first, Some(Notification::Added(_))));
    let next = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await?;
    match next {
        Some(Notification::Updated { old, new }) => assert!(std::sync::Arc::ptr_eq(&old, &new)),
        other => panic!("expected a resync update, got {other:?}"),
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informers_cache_objects_without_managed_fields() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let api = Api::<ConfigMap>::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("listed", "1"))
        .await?;
    let selected = Selectors {
        label_selector: Some("app=informer-test".into()),
        ..Default::default()
    };
    let factory = InformerFactory::new(client);
    let store = factory.informer_with::<ConfigMap>(selected).store();
    let mut tasks = JoinSet::new();
    let shutdown = CancellationToken::new();
    factory.start(&mut tasks, &shutdown);
    tokio::time::timeout(Duration::from_secs(10), factory.wait_for_sync()).await?;
    // Objects from the watch, not only the list, are trimmed.
    api.create(&PostParams::default(), &cm("watched", "1"))
        .await?;
    for name in ["listed", "watched"] {
        wait::until(
            "the cache holds the object",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || {
                let found = store.get("default", name).is_some();
                async move {
                    if found {
                        Ok(())
                    } else {
                        Err(format!("{name} not cached yet"))
                    }
                }
            },
        )
        .await?;
        // The apiserver recorded a manager for the create; the cached copy leaves it out.
        let stored = api.get(name).await?;
        assert!(
            stored
                .metadata
                .managed_fields
                .is_some_and(|m| !m.is_empty()),
            "{name}"
        );
        let cached = store
            .get("default", name)
            .and_then(|c| c.metadata.managed_fields.clone());
        assert!(cached.is_none(), "{name}");
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
