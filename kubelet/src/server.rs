//! The kubelet's HTTP endpoints. Today: the plain-HTTP healthz port (`--healthz-port`,
//! upstream's 10248) with `/healthz` and `/metrics`. The authenticated API on 10250 (logs,
//! exec) comes later.

use std::net::SocketAddr;

use ferrokube_runtime::metrics::Metrics;
use ferrokube_runtime::server::{self, Health};
use tokio_util::sync::CancellationToken;

/// Serves `/healthz` (and `/readyz`, `/livez`, `/metrics`) on `addr` until `shutdown`.
pub async fn serve_health(
    addr: SocketAddr,
    health: Health,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    server::serve(addr, health, metrics, shutdown).await
}
