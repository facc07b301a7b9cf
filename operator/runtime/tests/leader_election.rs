//! Leader election against a real apiserver: two candidates, one leader; takeover after a
//! crash within the lease duration, at once after a clean release; Lease fields as upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrokube_runtime::leader_election::{Config, LeaderElector};
use ferrokube_tests::{ControlPlane, wait};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Short timings keep the test quick; their ratios are upstream's (15/10/2).
fn config(identity: &str) -> Config {
    let mut c = Config::new("kube-system", "ferrokube-test", identity);
    c.lease_duration = Duration::from_secs(6);
    c.renew_deadline = Duration::from_secs(4);
    c.retry_period = Duration::from_millis(800);
    c
}

/// The most leaders ever seen at once, per test process; must stay 1.
static MAX_LEADERS: AtomicUsize = AtomicUsize::new(0);

struct Candidate {
    shutdown: CancellationToken,
    leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<Result<(), ferrokube_runtime::leader_election::Error>>,
}

fn candidate(client: kube::Client, identity: &str, leaders: Arc<AtomicUsize>) -> Candidate {
    let shutdown = CancellationToken::new();
    let (tx, leading) = watch::channel(false);
    let elector = LeaderElector::new(client, config(identity)).expect("valid config");
    let s = shutdown.clone();
    let task = tokio::spawn(async move {
        elector
            .run(s, move |lost| async move {
                let now = leaders.fetch_add(1, Ordering::SeqCst) + 1;
                MAX_LEADERS.fetch_max(now, Ordering::SeqCst);
                tx.send_replace(true);
                lost.cancelled().await;
                leaders.fetch_sub(1, Ordering::SeqCst);
                tx.send_replace(false);
            })
            .await
    });
    Candidate {
        shutdown,
        leading,
        task,
    }
}

async fn lease(client: &kube::Client) -> Lease {
    Api::<Lease>::namespaced(client.clone(), "kube-system")
        .get("ferrokube-test")
        .await
        .expect("lease exists")
}

async fn wait_leading(c: &Candidate, timeout: Duration) -> Result<(), wait::Timeout> {
    let mut rx = c.leading.clone();
    wait::until("leadership", timeout, Duration::from_millis(50), || {
        let v = *rx.borrow_and_update();
        async move { if v { Ok(()) } else { Err("not leading".into()) } }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_after_crash_and_after_release() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let leaders = Arc::new(AtomicUsize::new(0));

    let a = candidate(client.clone(), "a", leaders.clone());
    wait_leading(&a, Duration::from_secs(10)).await?;
    let b = candidate(client.clone(), "b", leaders.clone());

    let l = lease(&client).await;
    let spec = l.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("a"));
    assert_eq!(spec.lease_duration_seconds, Some(6));
    assert_eq!(spec.lease_transitions, Some(0));
    assert!(spec.acquire_time.is_some() && spec.renew_time.is_some());

    // A keeps renewing: B stays a standby across several lease durations' worth of renewals.
    let first_renew = spec.renew_time.clone();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spec2 = lease(&client).await.spec.unwrap_or_default();
    assert_eq!(spec2.holder_identity.as_deref(), Some("a"));
    assert_ne!(spec2.renew_time, first_renew, "the leader renews");
    assert_eq!(
        spec2.acquire_time, spec.acquire_time,
        "renewal keeps acquireTime"
    );
    assert!(!*b.leading.borrow());

    // Crash: A's task vanishes without releasing. B must wait out the lease, then take over
    // within lease duration + a retry period (with jitter).
    a.task.abort();
    let _ = a.task.await;
    // Dropping the elector cancels the leader's work too.
    let mut rx = a.leading.clone();
    wait::until(
        "a's work to stop",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let v = *rx.borrow_and_update();
            async move {
                if v {
                    Err("a still working".into())
                } else {
                    Ok(())
                }
            }
        },
    )
    .await?;
    let crashed = std::time::Instant::now();
    wait_leading(&b, Duration::from_secs(6 + 3)).await?;
    let took = crashed.elapsed();
    assert!(
        took >= Duration::from_secs(3),
        "B must not steal a live lease ({took:?})"
    );
    let spec3 = lease(&client).await.spec.unwrap_or_default();
    assert_eq!(spec3.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec3.lease_transitions, Some(1));
    assert_ne!(spec3.acquire_time, spec.acquire_time);

    // Clean release: C waits as standby; when B stops, it releases and C takes over at once
    // (one retry period, not a lease duration).
    let c = candidate(client.clone(), "c", leaders.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!*c.leading.borrow());
    b.shutdown.cancel();
    b.task.await??;
    let released = lease(&client).await.spec.unwrap_or_default();
    assert_eq!(
        released.holder_identity.as_deref(),
        Some(""),
        "released lease has no holder"
    );
    assert_eq!(released.lease_duration_seconds, Some(1));
    let t = std::time::Instant::now();
    wait_leading(&c, Duration::from_secs(3)).await?;
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "takeover after release took {:?}",
        t.elapsed()
    );
    let spec4 = lease(&client).await.spec.unwrap_or_default();
    assert_eq!(spec4.holder_identity.as_deref(), Some("c"));
    assert_eq!(spec4.lease_transitions, Some(2));

    c.shutdown.cancel();
    c.task.await??;
    assert_eq!(MAX_LEADERS.load(Ordering::SeqCst), 1, "two leaders at once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_that_cannot_renew_steps_down() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start().await?;
    let client = cp.client().await?;
    let leaders = Arc::new(AtomicUsize::new(0));
    let a = candidate(client.clone(), "a", leaders.clone());
    wait_leading(&a, Duration::from_secs(10)).await?;

    // Without an apiserver the leader cannot renew; after the renew deadline it must stop
    // its work and report the loss rather than keep acting as leader.
    cp.stop_apiserver();
    let mut rx = a.leading.clone();
    wait::until(
        "step down",
        Duration::from_secs(4 + 3),
        Duration::from_millis(50),
        || {
            let v = *rx.borrow_and_update();
            async move {
                if v {
                    Err("still leading".into())
                } else {
                    Ok(())
                }
            }
        },
    )
    .await?;
    let res = a.task.await?;
    assert!(
        matches!(res, Err(ferrokube_runtime::leader_election::Error::Lost(_))),
        "{res:?}"
    );
    Ok(())
}

/// The control-plane components' bootstrap roles allow `get`, `create` and `update` on
/// their Lease, not `patch` (see `system::leader-locking-kube-controller-manager`): the
/// elector must acquire, renew and release with exactly those rights.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_needs_only_get_create_and_update() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let kubectl = cp.kubectl()?;
    kubectl
        .apply(
            r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: lease-no-patch
  namespace: kube-system
rules:
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: lease-no-patch
  namespace: kube-system
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: lease-no-patch
subjects:
- apiGroup: rbac.authorization.k8s.io
  kind: User
  name: elector
"#,
        )
        .await?;
    let limited = ferrokube_tests::kubeconfig::client(&cp.kubeconfig_for("elector", &[])?).await?;
    let leaders = Arc::new(AtomicUsize::new(0));
    let a = candidate(limited.clone(), "a", leaders.clone());
    wait_leading(&a, Duration::from_secs(10)).await?;
    // Renewals go through: the lease stays ours across several retry periods.
    let first = lease(&cp.client().await?).await;
    let renewed = wait::until(
        "a renewal",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let client = limited.clone();
            let before = first.spec.clone().and_then(|s| s.renew_time);
            async move {
                let l = Api::<Lease>::namespaced(client, "kube-system")
                    .get("ferrokube-test")
                    .await
                    .map_err(|e| e.to_string())?;
                let spec = l.spec.unwrap_or_default();
                if spec.renew_time != before && spec.holder_identity.as_deref() == Some("a") {
                    Ok(())
                } else {
                    Err("not renewed yet".into())
                }
            }
        },
    )
    .await;
    assert!(renewed.is_ok(), "{renewed:?}\n{}", cp.logs(20));
    // And the release on shutdown too.
    a.shutdown.cancel();
    a.task.await??;
    let released = lease(&cp.client().await?).await;
    assert_eq!(
        released.spec.and_then(|s| s.holder_identity).as_deref(),
        Some("")
    );
    Ok(())
}
