//! Process shutdown: SIGTERM and SIGINT become one [`CancellationToken`] that every
//! long-lived task watches, and [`drain`] waits for those tasks with a grace period.

use std::time::Duration;

use tokio::task::JoinSet;
pub use tokio_util::sync::CancellationToken;

/// Returns a token cancelled on the first SIGTERM or SIGINT.
///
/// Must be called inside a tokio runtime. A second signal is not special-cased: the grace
/// period given to [`drain`] bounds how long shutdown can take.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown signal received");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without signal handlers the process can still be stopped by SIGKILL; keep running.
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            std::future::pending::<()>().await;
        }
    }
}

/// Waits for every task in `tasks` to finish, up to `grace`; aborts the rest.
/// Returns how many tasks had to be aborted.
pub async fn drain(mut tasks: JoinSet<()>, grace: Duration) -> usize {
    let finished = tokio::time::timeout(grace, async {
        while let Some(res) = tasks.join_next().await {
            if let Err(e) = res
                && e.is_panic()
            {
                tracing::error!(error = %e, "task panicked");
            }
        }
    })
    .await;
    if finished.is_ok() {
        return 0;
    }
    let left = tasks.len();
    tracing::warn!(left, ?grace, "grace period over; aborting remaining tasks");
    tasks.abort_all();
    left
}
