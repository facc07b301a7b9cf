//! Shared by the Ingress controller's end-to-end tests: test backends, a controller
//! process against the real control plane, and small HTTP and kubectl helpers.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ferrokube_tests::ControlPlane;
use ferrokube_tests::process::Process;
use ferrokube_tests::wait;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const T: Duration = Duration::from_secs(30);
pub const NS: &str = "web";

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferrokube-ingress-controller"))
}

/// Requests under `/slow` that backends have started answering (they take [`SLOW`]).
pub static SLOW_STARTED: AtomicUsize = AtomicUsize::new(0);
pub const SLOW: Duration = Duration::from_millis(1500);

/// A backend answering `<name> <path> <selected request headers> len=<body bytes>`;
/// `Upgrade: echo` requests get 101 and an echo of every byte; paths under `/slow` are
/// answered after [`SLOW`].
pub async fn backend(name: &'static str) -> anyhow::Result<SocketAddr> {
    Ok(stoppable_backend(name).await?.0)
}

/// Resolves once `rx` holds `true`; never when the sender is dropped unsent (plain
/// backends drop theirs at once and serve for the whole test).
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // The borrow guard is dropped at once: it must not live across an await.
    let closed = rx.wait_for(|s| *s).await.is_err();
    if closed {
        std::future::pending::<()>().await;
    }
}

/// A backend that stops as a terminating pod's server does when its sender is sent `true`: no new connections, and each open keep-alive connection closes gracefully
/// (after the response in flight, if any).
pub async fn stoppable_backend(
    name: &'static str,
) -> anyhow::Result<(SocketAddr, tokio::sync::watch::Sender<bool>)> {
    let listener = TcpListener::bind((local_ip()?, 0)).await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let mut stop = stop_rx.clone();
            let stream = tokio::select! {
                () = stopped(&mut stop) => break,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(_) => break,
                },
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<Incoming>| async move {
                        if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                if let Ok(up) = on.await {
                                    let mut io = TokioIo::new(up);
                                    let mut buf = [0u8; 1024];
                                    while let Ok(n) = io.read(&mut buf).await {
                                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                            break;
                                        }
                                    }
                                }
                            });
                            let resp = hyper::Response::builder()
                                .status(101)
                                .header("upgrade", "echo")
                                .header("connection", "upgrade")
                                .body(Full::new(Bytes::new()))
                                .expect("response");
                            return Ok::<_, Infallible>(resp);
                        }
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let head = format!(
                            "{name} {} host={} xff={} proto={} fhost={} rid={}",
                            req.uri(),
                            h("host"),
                            h("x-forwarded-for"),
                            h("x-forwarded-proto"),
                            h("x-forwarded-host"),
                            h("x-request-id"),
                        );
                        if req.uri().path().starts_with("/slow") {
                            SLOW_STARTED.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(SLOW).await;
                        }
                        let len = match req.into_body().collect().await {
                            Ok(b) => b.to_bytes().len().to_string(),
                            Err(_) => "error".into(),
                        };
                        let body = format!("{head} len={len}");
                        Ok(hyper::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    () = stopped(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
    });
    Ok((addr, stop_tx))
}

/// This machine's address on its default route. Connecting a UDP socket sends nothing;
/// it only asks the kernel which source address it would use.
pub fn local_ip() -> anyhow::Result<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect("198.18.0.1:9")?;
    let ip = s.local_addr()?.ip();
    anyhow::ensure!(!ip.is_loopback(), "no non-loopback address on this machine");
    Ok(ip)
}

/// A response, reduced to what the tests look at.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

pub async fn request_on<S>(
    io: S,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<Resp, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b = hyper::Request::builder().uri(path).header("host", host);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let req = b.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub async fn get(port: u16, host: &str, path: &str) -> Result<Resp, String> {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    request_on(s, host, path, &[]).await
}

/// What a request through the proxy should get.
#[derive(Debug)]
pub enum Want {
    /// An answer from the test backend of this name (its body starts with the name).
    Backend(&'static str),
    /// This status from the proxy itself.
    Status(u16),
}

/// Sends each `GET host path` once (the routes are in place already) and fails naming
/// every request that got something else than wanted.
pub async fn expect_routes(port: u16, cases: &[(&str, &str, Want)]) -> anyhow::Result<()> {
    let mut misses = Vec::new();
    for (host, path, want) in cases {
        let got = get(port, host, path).await.map_err(anyhow::Error::msg)?;
        let ok = match want {
            Want::Backend(name) => got.body.starts_with(&format!("{name} ")),
            Want::Status(code) => got.status == *code,
        };
        if !ok {
            misses.push(format!(
                "{host}{path}: wanted {want:?}, got {} {:?}",
                got.status, got.body
            ));
        }
    }
    anyhow::ensure!(misses.is_empty(), "{}", misses.join("\n"));
    Ok(())
}

/// Waits until `GET host path` satisfies `pred`.
pub async fn get_until(
    port: u16,
    host: &str,
    path: &str,
    what: &str,
    pred: impl Fn(&Resp) -> bool,
) -> anyhow::Result<Resp> {
    let r = wait::until(what, T, Duration::from_millis(50), || {
        let pred = &pred;
        async move {
            let r = get(port, host, path).await?;
            if pred(&r) {
                Ok(r)
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        }
    })
    .await?;
    Ok(r)
}

pub struct Controller {
    pub process: Process,
    pub http: u16,
    pub https: u16,
}

/// A control plane with the base objects, for each name a test backend answering with that
/// name behind a Service of that name, and our controller: what most tests start from.
pub async fn serving(services: &[&'static str]) -> anyhow::Result<(ControlPlane, Controller)> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    for name in services {
        let addr = backend(name).await?;
        service(&cp, name, &[addr]).await?;
    }
    let ic = start_controller(&cp).await?;
    Ok((cp, ic))
}

pub async fn start_controller(cp: &ControlPlane) -> anyhow::Result<Controller> {
    start_controller_with(cp, &["--publish-status-address=10.1.2.3,lb.example.com"]).await
}

pub async fn start_controller_with(
    cp: &ControlPlane,
    extra: &[&str],
) -> anyhow::Result<Controller> {
    let free = ferrokube_tests::controlplane::free_port;
    let (http, https, health) = (free()?, free()?, free()?);
    let mut args = vec![
        "--bind-address=127.0.0.1".to_string(),
        format!("--http-port={http}"),
        format!("--https-port={https}"),
        format!("--https-redirect-port={https}"),
        "--healthz-host=127.0.0.1".to_string(),
        format!("--healthz-port={health}"),
        "--election-namespace=kube-system".to_string(),
        "--v=2".to_string(),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = cp.spawn_component("ingress-controller", binary(), &args)?;
    let addr = format!("127.0.0.1:{health}");
    wait::until(
        "ingress controller /readyz",
        T,
        Duration::from_millis(100),
        || {
            let addr = addr.clone();
            async move {
                match ferrokube_tests::cluster::http_status(&addr, "/readyz").await? {
                    200 => Ok(()),
                    s => Err(format!("status {s}")),
                }
            }
        },
    )
    .await?;
    Ok(Controller {
        process,
        http,
        https,
    })
}

/// A selector-less Service `name` (port `http` 80) and its EndpointSlice at `backends`.
pub async fn service(cp: &ControlPlane, name: &str, backends: &[SocketAddr]) -> anyhow::Result<()> {
    let kubectl = cp.kubectl()?;
    kubectl
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            })
            .to_string(),
        )
        .await?;
    slice(cp, name, backends).await
}

pub async fn slice(cp: &ControlPlane, name: &str, backends: &[SocketAddr]) -> anyhow::Result<()> {
    // One endpoint per backend; they share the port only when the test makes them, so
    // backends with different ports go into one slice each.
    let mut by_port: HashMap<u16, Vec<&SocketAddr>> = HashMap::new();
    for b in backends {
        by_port.entry(b.port()).or_default().push(b);
    }
    let kubectl = cp.kubectl()?;
    let existing = kubectl
        .ok([
            "get",
            "endpointslices",
            "-n",
            NS,
            "-l",
            &format!("kubernetes.io/service-name={name}"),
            "-o",
            "name",
        ])
        .await?;
    for (i, (port, addrs)) in by_port.iter().enumerate() {
        kubectl
            .apply(
                &json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-{i}"), "namespace": NS,
                        "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                    "endpoints": addrs.iter().map(|a| json!({
                        "addresses": [a.ip().to_string()], "conditions": {"ready": true}
                    })).collect::<Vec<_>>(),
                })
                .to_string(),
            )
            .await?;
    }
    for line in existing.lines() {
        let keep = (0..by_port.len())
            .any(|i| line.trim() == format!("endpointslice.discovery.k8s.io/{name}-{i}"));
        if !keep {
            kubectl.ok(["delete", "-n", NS, line.trim()]).await?;
        }
    }
    Ok(())
}

pub fn path(p: &str, t: &str, svc: &str) -> serde_json::Value {
    json!({"path": p, "pathType": t, "backend": {"service": {"name": svc, "port": {"name": "http"}}}})
}

pub async fn base(cp: &ControlPlane) -> anyhow::Result<()> {
    let kubectl = cp.kubectl()?;
    kubectl.ok(["create", "namespace", NS]).await?;
    kubectl
        .apply(
            &json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                "metadata": {"name": "ferrokube"},
                "spec": {"controller": "ferrokube.io/ingress"},
            })
            .to_string(),
        )
        .await?;
    Ok(())
}

/// Events on `ingress` as `reason: message` lines.
pub async fn events_of(cp: &ControlPlane, ingress: &str) -> Result<String, String> {
    let out = cp
        .kubectl()
        .map_err(|e| e.to_string())?
        .ok([
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            &format!("involvedObject.name={ingress}"),
            "-o",
            "jsonpath={range .items[*]}{.type} {.reason}: {.message}{\"\\n\"}{end}",
        ])
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A request body: a sized one (sent with Content-Length) or a streamed one (chunked).
pub enum Payload {
    None,
    Sized(Vec<u8>),
    Streamed(Vec<u8>),
}

/// `method path` to `host` over HTTP/1.1 on a fresh connection.
pub async fn call(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    extra: &[(&str, &str)],
    payload: Payload,
) -> Result<Resp, String> {
    use http_body_util::combinators::BoxBody;
    type B = BoxBody<Bytes, Infallible>;
    let body: B = match payload {
        Payload::None => Empty::new().boxed(),
        Payload::Sized(v) => Full::new(Bytes::from(v)).boxed(),
        Payload::Streamed(v) => {
            http_body_util::StreamBody::new(futures::stream::iter([Ok::<_, Infallible>(
                hyper::body::Frame::data(Bytes::from(v)),
            )]))
            .boxed()
        }
    };
    let io = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    let req = b.body(body).map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn location(r: &Resp) -> &str {
    r.headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// An Ingress of our class for `host` with `paths` and nginx annotations (short names).
pub fn ingress(name: &str, host: &str, paths: serde_json::Value, ann: &[(&str, &str)]) -> String {
    let annotations: serde_json::Map<String, serde_json::Value> = ann
        .iter()
        .map(|(k, v)| (format!("nginx.ingress.kubernetes.io/{k}"), json!(v)))
        .collect();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": NS, "annotations": annotations},
        "spec": {"ingressClassName": "ferrokube",
            "rules": [{"host": host, "http": {"paths": paths}}]},
    })
    .to_string()
}

/// Waits until `ingress` has an event containing each of `wanted`; returns them all.
pub async fn events_containing(
    cp: &ControlPlane,
    ingress: &str,
    wanted: &[&str],
) -> anyhow::Result<String> {
    let ev = wait::until(
        &format!("events on {ingress}: {wanted:?}"),
        T,
        Duration::from_millis(200),
        || async {
            let ev = events_of(cp, ingress).await?;
            if wanted.iter().all(|w| ev.contains(w)) {
                Ok(ev)
            } else {
                Err(ev)
            }
        },
    )
    .await?;
    Ok(ev)
}

pub fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub async fn secret(cp: &ControlPlane, name: &str, data: serde_json::Value) -> anyhow::Result<()> {
    cp.kubectl()?
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": NS},
                "type": "Opaque",
                "stringData": data,
            })
            .to_string(),
        )
        .await?;
    Ok(())
}
