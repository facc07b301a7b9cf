//! The health and metrics endpoints every component serves.
//!
//! Paths and output follow the apiserver-style health checks upstream components use:
//! `/healthz`, `/livez` and `/readyz` answer `ok` (200) or list failing checks (500);
//! `?verbose` lists every check as `[+]name ok` / `[-]name failed: reason`; `/healthz/<name>`
//! runs one check. `/metrics` serves the Prometheus registry.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// A named check: `Ok(())` when healthy, otherwise the reason.
pub type CheckFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Which endpoints a check counts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Failing means restart me: counts for `/livez`, `/readyz` and `/healthz`.
    Liveness,
    /// Failing means don't send me work yet: counts for `/readyz` and `/healthz`.
    Readiness,
}

#[derive(Clone)]
struct Check {
    name: String,
    kind: Kind,
    run: CheckFn,
}

/// The set of health checks a component registers. Clones share the set.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<RwLock<Vec<Check>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|c| c.name.clone())
            .collect();
        f.debug_struct("Health").field("checks", &names).finish()
    }
}

impl Health {
    /// A set with only the always-passing `ping` check, as upstream has.
    pub fn new() -> Self {
        let h = Self::default();
        h.add("ping", Kind::Liveness, || Ok(()));
        h
    }

    /// Registers a check.
    pub fn add(
        &self,
        name: &str,
        kind: Kind,
        run: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.checks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Check {
                name: name.to_string(),
                kind,
                run: Arc::new(run),
            });
    }

    /// Runs the checks an endpoint counts and renders the answer.
    pub fn report(
        &self,
        endpoint: &str,
        only: Option<&str>,
        verbose: bool,
    ) -> (StatusCode, String) {
        let checks = self
            .checks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let selected: Vec<Check> = checks
            .into_iter()
            .filter(|c| endpoint != "livez" || c.kind == Kind::Liveness)
            .filter(|c| only.is_none_or(|n| n == c.name))
            .collect();
        if selected.is_empty() {
            return (StatusCode::NOT_FOUND, "404 page not found\n".to_string());
        }
        let mut body = String::new();
        let mut failed = false;
        for c in &selected {
            match (c.run)() {
                Ok(()) => {
                    let _ = writeln!(body, "[+]{} ok", c.name);
                }
                Err(reason) => {
                    failed = true;
                    if verbose {
                        let _ = writeln!(body, "[-]{} failed: {reason}", c.name);
                    } else {
                        let _ = writeln!(body, "[-]{} failed: reason withheld", c.name);
                    }
                }
            }
        }
        if failed {
            let _ = writeln!(body, "{endpoint} check failed");
            (StatusCode::INTERNAL_SERVER_ERROR, body)
        } else if verbose {
            let _ = writeln!(body, "{endpoint} check passed");
            (StatusCode::OK, body)
        } else {
            (StatusCode::OK, "ok".to_string())
        }
    }
}

/// Serves health and metrics on `addr` until `shutdown`. Returns the bound address (useful
/// with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        loop {
            let (stream, _) = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "health server accept failed");
                        continue;
                    }
                },
            };
            let (health, metrics) = (health.clone(), metrics.clone());
            let service = hyper::service::service_fn(move |req| {
                let (health, metrics) = (health.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(route(&req, &health, &metrics)) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        // Let in-flight scrapes finish, briefly.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
    });
    Ok((local, task))
}

fn route(req: &Request<Incoming>, health: &Health, metrics: &Metrics) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        );
    }
    let verbose = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "verbose" || p.starts_with("verbose="))
    });
    let path = req.uri().path().trim_end_matches('/');
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let head = parts.next().unwrap_or_default();
    let check = parts.next();
    match head {
        "healthz" | "livez" | "readyz" => {
            let (status, body) = health.report(head, check, verbose);
            text(status, body)
        }
        "metrics" if check.is_none() => {
            let mut resp = text(StatusCode::OK, metrics.encode());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let status = out[9..12].parse().expect("status");
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (status, body)
    }

    #[tokio::test]
    async fn health_endpoints_follow_upstream_format() {
        let health = Health::new();
        let leading = Arc::new(AtomicBool::new(false));
        let l = leading.clone();
        health.add("leaderElection", Kind::Readiness, move || {
            if l.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("not leading".into())
            }
        });
        let metrics = Metrics::new();
        let queue: crate::workqueue::WorkQueue<String> =
            crate::workqueue::WorkQueue::new("endpoints", &metrics);
        queue.add("default/kubernetes".into());
        let token = CancellationToken::new();
        let (addr, task) = serve(
            "127.0.0.1:0".parse().expect("addr"),
            health,
            metrics,
            token.clone(),
        )
        .await
        .expect("serve");

        assert_eq!(get(addr, "/livez").await, (200, "ok".into()));
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 500);
        assert!(
            body.contains(
                "[+]ping ok\n[-]leaderElection failed: reason withheld\nreadyz check failed"
            ),
            "{body}"
        );
        let (_, body) = get(addr, "/healthz?verbose").await;
        assert!(
            body.contains("[-]leaderElection failed: not leading"),
            "{body}"
        );

        leading.store(true, Ordering::SeqCst);
        assert_eq!(get(addr, "/readyz").await, (200, "ok".into()));
        let (status, body) = get(addr, "/healthz?verbose").await;
        assert_eq!(status, 200);
        assert!(
            body.ends_with("[+]ping ok\n[+]leaderElection ok\nhealthz check passed\n"),
            "{body}"
        );
        assert_eq!(
            get(addr, "/healthz/leaderElection").await,
            (200, "ok".into())
        );
        assert_eq!(get(addr, "/healthz/nope").await.0, 404);
        assert_eq!(get(addr, "/nope").await.0, 404);
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("workqueue_depth{name=\"endpoints\"} 1"),
            "{body}"
        );

        token.cancel();
        task.await.expect("server task");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "listener closed"
        );
    }
}
