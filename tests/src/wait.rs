//! Waiting for a condition with a deadline: the only way the harness and tests wait.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// A condition did not come true in time.
#[derive(Debug, thiserror::Error)]
#[error("timed out after {timeout:?} waiting for {what}{last}")]
pub struct Timeout {
    /// What was awaited.
    pub what: String,
    /// How long we waited.
    pub timeout: Duration,
    /// The last observation, to make the failure readable.
    pub last: String,
}

/// Polls `check` every `interval` until it returns `Ok(value)`, or fails with the last
/// `Err` description after `timeout`.
pub async fn until<T, F, Fut>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: F,
) -> Result<T, Timeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(Timeout {
                what: what.to_string(),
                timeout,
                last: if last.is_empty() {
                    String::new()
                } else {
                    format!(" (last: {last})")
                },
            });
        }
        tokio::time::sleep(interval).await;
    }
}
