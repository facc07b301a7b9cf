//! Shared set-up for the kubelet's end-to-end tests. The kubelet harness itself (start,
//! restart, teardown) is `ferrokube_tests::node`, shared with other crates' tests; here it
//! runs the binary cargo built for this crate's test run.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use ferrokube_tests::{ControlPlane, wait};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

/// The binary under test, built by cargo for this test run.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferrokube-kubelet"))
}

// Each test binary uses its own subset.
#[allow(unused_imports)]
pub use ferrokube_tests::node::{
    EVICTION_HARD, Kubelet, Stack, StackBuilder, can_run_pods, prepare_namespace,
};

/// A [`Stack`] whose node runs this crate's kubelet.
pub fn stack(ns: &str, node: &str, cidr: &str) -> StackBuilder {
    Stack::builder(ns, node, cidr).kubelet_binary(binary())
}

/// Starts this crate's kubelet for node `name` with pod range `cidr` and waits for /healthz.
pub async fn start(cp: &ControlPlane, name: &str, cidr: &str) -> anyhow::Result<Kubelet> {
    start_with(cp, name, cidr, &[EVICTION_HARD]).await
}

/// [`start`] with `extra` flags instead of the default eviction thresholds.
pub async fn start_with(
    cp: &ControlPlane,
    name: &str,
    cidr: &str,
    extra: &[&str],
) -> anyhow::Result<Kubelet> {
    ferrokube_tests::node::start_binary(cp, binary(), name, cidr, extra).await
}

/// Waits until pod `ns/name` satisfies `check` (which says what it saw otherwise).
pub async fn pod_until<T>(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    check: impl Fn(&Pod) -> Result<T, String>,
) -> anyhow::Result<T> {
    let api: Api<Pod> = Api::namespaced(cp.client().await?, ns);
    let check = &check;
    let out = wait::until(what, timeout, Duration::from_millis(200), || {
        let api = api.clone();
        async move {
            let pod = api
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("pod not found")?;
            check(&pod).map_err(|e| {
                format!(
                    "{e}; status: {}",
                    serde_json::to_string(&pod.status).unwrap_or_default()
                )
            })
        }
    })
    .await?;
    Ok(out)
}

/// The waiting reason of the pod's first container, if waiting.
pub fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

/// `GET path` on `addr`, retried while the server is not listening yet (a container counts
/// as running before its process has bound its port, as upstream).
pub async fn http_get_until(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let out = wait::until(
        &format!("GET {addr}{path}"),
        Duration::from_secs(20),
        Duration::from_millis(100),
        || async move { ferrokube_tests::cluster::http_get(addr, path).await },
    )
    .await?;
    Ok(out)
}
