//! The event recorder and the rate-limited client against a real apiserver.

use std::time::{Duration, Instant};

use ferrokube_runtime::client::{self, ClientOptions};
use ferrokube_runtime::events::{self, EventType, Reporter};
use ferrokube_tests::ControlPlane;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_events_become_one_series() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), "default")
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("noisy".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let shutdown = CancellationToken::new();
    let (recorder, sink) = events::start(
        client.clone(),
        Reporter {
            controller: "test-controller".into(),
            instance: "test-controller-1".into(),
        },
        shutdown.clone(),
    );
    let regarding = events::reference(&cm);
    for _ in 0..5 {
        recorder.publish(
            regarding.clone(),
            EventType::Warning,
            "FailedThing",
            "Doing",
            "it failed",
        );
    }
    recorder.publish(
        regarding.clone(),
        EventType::Normal,
        "DidThing",
        "Doing",
        "it worked",
    );
    // Shutting down flushes pending events and the last series counts.
    shutdown.cancel();
    sink.await?;

    let evs = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await?;
    let failed: Vec<&Event> = evs
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedThing"))
        .collect();
    assert_eq!(failed.len(), 1, "repeats aggregate into one Event");
    let e = failed[0];
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(5));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.reporting_controller.as_deref(), Some("test-controller"));
    assert_eq!(
        e.regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("noisy")
    );
    assert_eq!(
        evs.items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("DidThing"))
            .count(),
        1
    );

    // Users see them the usual way.
    let described = cp.kubectl()?.ok(["describe", "configmap", "noisy"]).await?;
    assert!(
        described.contains("FailedThing") && described.contains("it failed"),
        "{described}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_respects_qps_and_burst() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let opts = ClientOptions {
        kubeconfig: Some(cp.kubeconfig_path().to_path_buf()),
        qps: 10.0,
        burst: 5,
        user_agent: Some("ferrokube-test/v0".into()),
    };
    let limited = client::build(&opts).await?;
    let api: Api<ConfigMap> = Api::namespaced(limited, "default");
    let start = Instant::now();
    for _ in 0..25 {
        api.list(&ListParams::default().limit(1)).await?;
    }
    let took = start.elapsed();
    // 5 requests ride the burst; the other 20 wait for tokens at 10/s: at least ~2 s.
    assert!(
        took >= Duration::from_millis(1900),
        "25 requests at 10 qps/5 burst took {took:?}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");

    let unlimited = client::build(&ClientOptions { qps: 0.0, ..opts }).await?;
    let api: Api<ConfigMap> = Api::namespaced(unlimited, "default");
    let start = Instant::now();
    for _ in 0..25 {
        api.list(&ListParams::default().limit(1)).await?;
    }
    assert!(
        start.elapsed() < took,
        "unlimited must be faster than limited"
    );
    Ok(())
}

#[tokio::test]
async fn client_reports_an_unreadable_kubeconfig() {
    let opts = ClientOptions {
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
        ..ClientOptions::default()
    };
    let Err(err) = client::build(&opts).await else {
        panic!("building a client from a missing kubeconfig must fail");
    };
    assert!(err.to_string().contains("/nonexistent/kubeconfig"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_multiplexes_over_http2() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = client::build(&ClientOptions {
        kubeconfig: Some(cp.kubeconfig_path().to_path_buf()),
        qps: 0.0,
        ..ClientOptions::default()
    })
    .await?;
    // The apiserver offers h2 by ALPN; kube's own stack would answer HTTP/1.1 here.
    let req = http::Request::get("/version").body(kube::client::Body::from(Vec::new()))?;
    let res = client.send(req).await?;
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert!(res.status().is_success(), "{}", res.status());

    // Many requests at once, as a scheduler's bindings, all answered over that transport.
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let lp = ListParams::default().limit(1);
    let lists = (0..100).map(|_| api.list(&lp));
    for r in futures::future::join_all(lists).await {
        r?;
    }
    Ok(())
}
