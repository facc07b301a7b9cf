//! The kubelet's HTTP endpoints: the plain-HTTP healthz port (`--healthz-port`, upstream's
//! 10248) and the authenticated API (`--port`, upstream's 10250) that the apiserver calls
//! for `kubectl logs`, `kubectl exec` (WebSocket or SPDY/3.1) and `kubectl attach`.
//!
//! ```text
//!   TLS (client cert verified against --client-ca-file, optional)
//!     ─▶ auth: cert user | TokenReview | anonymous ─▶ SubjectAccessReview on nodes/<sub>
//!     ─▶ /healthz  /containerLogs/{ns}/{pod}/{container}
//!        /exec|/attach/{ns}/{pod}[/{uid}]/{container}
//! ```

pub mod attach;
pub mod auth;
pub mod exec;
pub mod logs;
pub mod query;
pub mod spdy;
pub mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use ferrokube_runtime::informer::Store;
use ferrokube_runtime::metrics::Metrics;
use ferrokube_runtime::server::{self, Health};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

use crate::options::Config;
use crate::pod_workers;
use crate::runtime::{Runtime, State};

use self::auth::{Auth, Denial, UserInfo};
use self::logs::LogOptions;
use self::query::QueryError;

/// Serves `/healthz` (and `/readyz`, `/livez`, `/metrics`) on `addr` until `shutdown`.
pub async fn serve_health(
    addr: SocketAddr,
    health: Health,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    server::serve(addr, health, metrics, shutdown).await
}

/// A response body: whole, or streamed (logs).
type Body = UnsyncBoxBody<Bytes, Infallible>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()).boxed_unsync());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// What the API handlers need from the kubelet.
pub struct Api {
    /// The effective configuration (node name, root and log dirs, runc).
    pub config: Config,
    /// The pods bound to this node, from the kubelet's informer.
    pub pods: Store<Pod>,
    /// The container runtime (container states).
    pub runtime: Arc<dyn Runtime>,
    /// Authentication and authorization.
    pub auth: Auth,
    /// The health checks `/healthz` runs.
    pub health: Health,
}

/// Serves the authenticated API on `addr` with `tls` until `shutdown`. Returns the bound
/// address and the accept loop's task.
pub async fn serve_api(
    addr: SocketAddr,
    tls: rustls::ServerConfig,
    api: Arc<Api>,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::warn!(error = %e, "kubelet API accept failed");
                        continue;
                    }
                },
            };
            let (acceptor, api, shutdown) = (acceptor.clone(), api.clone(), shutdown.clone());
            tokio::spawn(async move {
                let Some(tls) =
                    ferrokube_runtime::tls::accept(&acceptor, stream, peer, "kubelet API").await
                else {
                    return;
                };
                // rustls already verified the chain against the client CA.
                let cert_user = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| auth::user_from_cert(c));
                let cert_user = Arc::new(cert_user);
                let service = hyper::service::service_fn(move |req| {
                    let (api, cert_user) = (api.clone(), cert_user.clone());
                    async move {
                        Ok::<_, Infallible>(handle(&api, cert_user.as_ref().as_ref(), req).await)
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                tokio::select! {
                    () = shutdown.cancelled() => {}
                    _ = conn => {}
                }
            });
        }
    });
    Ok((local, task))
}

/// Authenticates, authorizes, then routes one request.
async fn handle(
    api: &Arc<Api>,
    cert_user: Option<&UserInfo>,
    req: Request<Incoming>,
) -> Response<Body> {
    let user = match api.auth.authenticate(cert_user, req.headers()).await {
        Ok(u) => u,
        Err(d) => return denial(&d),
    };
    let attrs = auth::attributes(req.method(), req.uri().path());
    if let Err(d) = api.auth.authorize(&user, &attrs).await {
        tracing::info!(user = %user.name, verb = attrs.verb, path = req.uri().path(), "kubelet API request forbidden");
        return denial(&d);
    }
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET | &Method::HEAD, ["healthz", rest @ ..]) => {
            let verbose = req.uri().query().is_some_and(|q| {
                q.split('&')
                    .any(|p| p == "verbose" || p.starts_with("verbose="))
            });
            let check = rest.first().filter(|c| !c.is_empty()).copied();
            let (status, body) = api.health.report("healthz", check, verbose);
            text(status, body)
        }
        (&Method::GET, ["containerLogs", ns, pod, container]) => container_logs(
            api,
            ns,
            pod,
            container,
            req.uri().query().unwrap_or_default(),
        ),
        (
            &Method::GET | &Method::POST,
            [kind @ ("exec" | "attach"), ns, pod, container]
            | [kind @ ("exec" | "attach"), ns, pod, _, container],
        ) => {
            let kind = if *kind == "exec" {
                Session::Exec
            } else {
                Session::Attach
            };
            let (ns, pod, container) = (
                (*ns).to_string(),
                (*pod).to_string(),
                (*container).to_string(),
            );
            session(api, kind, &ns, &pod, &container, req)
        }
        _ => not_found(),
    }
}

fn denial(d: &Denial) -> Response<Body> {
    match d {
        Denial::Unauthenticated => text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        Denial::Forbidden(m) => text(StatusCode::FORBIDDEN, m.clone()),
        Denial::Error(m) => text(StatusCode::INTERNAL_SERVER_ERROR, m.clone()),
    }
}

/// The pod and one of its containers' names, or upstream's 404.
fn find_container(
    api: &Api,
    ns: &str,
    name: &str,
    container: &str,
) -> Result<Arc<Pod>, (StatusCode, String)> {
    let Some(pod) = api.pods.get(ns, name) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("pod {name:?} does not exist"),
        ));
    };
    let spec = pod.spec.as_ref();
    let known = spec.is_some_and(|s| {
        s.containers.iter().any(|c| c.name == container)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
            || s.ephemeral_containers
                .iter()
                .flatten()
                .any(|c| c.name == container)
    });
    if !known {
        return Err((
            StatusCode::NOT_FOUND,
            format!("container {container:?} not found in pod {name:?}"),
        ));
    }
    Ok(pod)
}

/// One instance of a container: its runc id, bundle and CRI log file.
struct Instance {
    id: String,
    bundle: PathBuf,
    log: PathBuf,
}

fn instance(api: &Api, pod: &Pod, container: &str, attempt: u32) -> Instance {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    Instance {
        id: pod_workers::container_id(uid, container, attempt),
        bundle: pod_workers::container_dir(&api.config.root_dir, uid, container)
            .join(attempt.to_string()),
        log: pod_workers::pod_log_dir(&api.config.pod_logs_dir, pod)
            .join(container)
            .join(format!("{attempt}.log")),
    }
}

fn container_logs(
    api: &Arc<Api>,
    ns: &str,
    name: &str,
    container: &str,
    query: &str,
) -> Response<Body> {
    let opts = match LogOptions::from_query(query, chrono::Utc::now()) {
        Ok(o) => o,
        Err(e @ QueryError::Decode) => return text(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e @ QueryError::Invalid) => {
            return text(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
        }
    };
    let pod = match find_container(api, ns, name, container) {
        Ok(p) => p,
        Err((status, message)) => return text(status, message),
    };
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let attempts = pod_workers::container_attempts(&api.config.root_dir, uid, container);
    let attempt = if opts.previous {
        match attempts.len().checked_sub(2).and_then(|i| attempts.get(i)) {
            Some(a) => *a,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "previous terminated container {container:?} in pod {name:?} not found"
                    ),
                );
            }
        }
    } else {
        match attempts.last() {
            Some(a) => *a,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "container {container:?} in pod {name:?} is waiting to start - no logs yet"
                    ),
                );
            }
        }
    };
    let inst = instance(api, &pod, container, attempt);
    if !inst.log.exists() {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {name:?} is waiting to start - no logs yet"),
        );
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let (runtime, previous) = (api.runtime.clone(), opts.previous);
    let running = move || !previous && runtime.state(&inst.id, &inst.bundle) == State::Running;
    let log = inst.log.clone();
    tokio::spawn(async move {
        if let Err(e) = logs::stream(log.clone(), opts, running, tx).await {
            tracing::warn!(log = %log.display(), error = %e, "streaming container logs");
        }
    });
    let body = StreamBody::new(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    }));
    let mut resp = Response::new(BodyExt::boxed_unsync(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// The two streaming sessions on the WebSocket protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Session {
    /// A new command in the container.
    Exec,
    /// The main process's output.
    Attach,
}

fn session(
    api: &Arc<Api>,
    kind: Session,
    ns: &str,
    name: &str,
    container: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let request = match exec::ExecRequest::from_query(req.uri().query().unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if kind == Session::Attach && (request.stdin || request.tty) {
        return text(
            StatusCode::BAD_REQUEST,
            "attaching stdin or a tty is not supported by this kubelet: the container's stdio belongs to its log shim",
        );
    }
    if kind == Session::Exec && request.command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command for the container",
        );
    }
    let pod = match find_container(api, ns, name, container) {
        Ok(p) => p,
        Err((status, message)) => return text(status, message),
    };
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let running = pod_workers::container_attempts(&api.config.root_dir, uid, container)
        .last()
        .map(|a| instance(api, &pod, container, *a))
        .filter(|i| api.runtime.state(&i.id, &i.bundle) == State::Running);
    let Some(inst) = running else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("container {container:?} in pod {name:?} is not running"),
        );
    };
    let headers = req.headers();
    let is_spdy = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("SPDY/3.1"));
    if is_spdy {
        return spdy_session(api, kind, inst, request, req);
    }
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes);
    let (true, Some(key)) = (is_websocket, key) else {
        return text(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request (WebSocket or SPDY/3.1)",
        );
    };
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let Some(protocol) = exec::negotiate(offered) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "requested protocol(s) are not supported; supports {:?}",
                exec::PROTOCOLS
            ),
        );
    };
    tracing::debug!(container = %inst.id, protocol, ?kind, "exec/attach over WebSocket");
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let target = exec::Target {
        runc: api.config.runtime_binary.clone(),
        runc_root: api.config.root_dir.join("runc"),
        container_id: inst.id.clone(),
    };
    let runtime = api.runtime.clone();
    tokio::spawn(async move {
        let ws = match on_upgrade.await {
            Ok(upgraded) => {
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "exec/attach upgrade failed");
                return;
            }
        };
        match kind {
            Session::Exec => exec::serve(ws, target, request).await,
            Session::Attach => {
                let running = move || runtime.state(&inst.id, &inst.bundle) == State::Running;
                attach::serve(ws, inst.log.clone(), running, request).await;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    resp
}

/// Exec over SPDY/3.1: the protocol from `X-Stream-Protocol-Version`, then the session.
fn spdy_session(
    api: &Arc<Api>,
    kind: Session,
    inst: Instance,
    request: exec::ExecRequest,
    mut req: Request<Incoming>,
) -> Response<Body> {
    if kind == Session::Attach {
        return text(
            StatusCode::BAD_REQUEST,
            "attach is served over WebSocket only by this kubelet",
        );
    }
    let offered: Vec<&str> = req
        .headers()
        .get_all("x-stream-protocol-version")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(protocol) = offered
        .iter()
        .find_map(|o| spdy::PROTOCOLS.iter().find(|p| *p == o).copied())
    else {
        return text(
            StatusCode::FORBIDDEN,
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {:?}",
                spdy::PROTOCOLS
            ),
        );
    };
    tracing::debug!(container = %inst.id, protocol, "exec over SPDY/3.1");
    let on_upgrade = hyper::upgrade::on(&mut req);
    let target = exec::Target {
        runc: api.config.runtime_binary.clone(),
        runc_root: api.config.root_dir.join("runc"),
        container_id: inst.id,
    };
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => spdy::serve(TokioIo::new(upgraded), target, request).await,
            Err(e) => tracing::warn!(error = %e, "spdy upgrade failed"),
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        "x-stream-protocol-version",
        HeaderValue::from_static(protocol),
    );
    resp
}
