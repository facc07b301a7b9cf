//! The Ingress controller end to end against a real apiserver, driven by stock kubectl.
//!
//! There is no kubelet: backends are small HTTP servers this test starts on this machine,
//! and Services without selectors get hand-made EndpointSlices pointing at them. The
//! apiserver refuses loopback addresses in EndpointSlices, so backends listen on the
//! machine's own non-loopback address (traffic to it still never leaves the machine).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferrokube_tests::ControlPlane;
use ferrokube_tests::process::Process;
use ferrokube_tests::wait;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(30);
const NS: &str = "web";

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ferrokube-ingress-controller"))
}

/// Requests under `/slow` that backends have started answering (they take [`SLOW`]).
static SLOW_STARTED: AtomicUsize = AtomicUsize::new(0);
const SLOW: Duration = Duration::from_millis(1500);

/// A backend answering `<name> <path> <selected request headers> len=<body bytes>`;
/// `Upgrade: echo` requests get 101 and an echo of every byte; paths under `/slow` are
/// answered after [`SLOW`].
async fn backend(name: &'static str) -> anyhow::Result<SocketAddr> {
    Ok(stoppable_backend(name).await?.0)
}

/// Resolves once `rx` holds `true`; never when the sender is dropped unsent (plain
/// backends drop theirs at once and serve for the whole test).
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // The borrow guard is dropped at once: it must not live across an await.
    let closed = rx.wait_for(|s| *s).await.is_err();
    if closed {
        std::future::pending::<()>().await;
    }
}

/// A backend that stops as a terminating pod's server does when its sender is sent `true`: no new connections, and each open keep-alive connection closes gracefully
/// (after the response in flight, if any).
async fn stoppable_backend(
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
fn local_ip() -> anyhow::Result<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect("198.18.0.1:9")?;
    let ip = s.local_addr()?.ip();
    anyhow::ensure!(!ip.is_loopback(), "no non-loopback address on this machine");
    Ok(ip)
}

/// A response, reduced to what the tests look at.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: String,
}

async fn request_on<S>(
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

async fn get(port: u16, host: &str, path: &str) -> Result<Resp, String> {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    request_on(s, host, path, &[]).await
}

/// Waits until `GET host path` satisfies `pred`.
async fn get_until(
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

struct Controller {
    process: Process,
    http: u16,
    https: u16,
}

async fn start_controller(cp: &ControlPlane) -> anyhow::Result<Controller> {
    start_controller_with(cp, &["--publish-status-address=10.1.2.3,lb.example.com"]).await
}

async fn start_controller_with(cp: &ControlPlane, extra: &[&str]) -> anyhow::Result<Controller> {
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
async fn service(cp: &ControlPlane, name: &str, backends: &[SocketAddr]) -> anyhow::Result<()> {
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

async fn slice(cp: &ControlPlane, name: &str, backends: &[SocketAddr]) -> anyhow::Result<()> {
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

fn path(p: &str, t: &str, svc: &str) -> serde_json::Value {
    json!({"path": p, "pathType": t, "backend": {"service": {"name": svc, "port": {"name": "http"}}}})
}

async fn base(cp: &ControlPlane) -> anyhow::Result<()> {
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
async fn events_of(cp: &ControlPlane, ingress: &str) -> Result<String, String> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_hosts_paths_default_backend_class_and_status() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let (a, b, d) = (
        backend("a").await?,
        backend("b").await?,
        backend("d").await?,
    );
    service(&cp, "a", &[a]).await?;
    service(&cp, "b", &[b]).await?;
    service(&cp, "d", &[d]).await?;
    let ic = start_controller(&cp).await?;
    let kubectl = cp.kubectl()?;
    kubectl
        .apply(
            &json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "main", "namespace": NS},
                "spec": {
                    "ingressClassName": "ferrokube",
                    "rules": [
                        {"host": "foo.example.com", "http": {"paths": [
                            path("/", "Prefix", "a"),
                            path("/api", "Prefix", "b"),
                            path("/exact", "Exact", "b"),
                        ]}},
                        {"host": "*.wild.example.com", "http": {"paths": [path("/", "Prefix", "b")]}},
                    ],
                },
            })
            .to_string(),
        )
        .await?;
    let p = ic.http;
    let r = get_until(p, "foo.example.com", "/api/x?q=1", "route to b", |r| {
        r.body.starts_with("b ")
    })
    .await?;
    assert!(r.body.contains("/api/x?q=1"), "{}", r.body);
    assert!(r.body.contains("host=foo.example.com"), "{}", r.body);
    assert!(r.body.contains("xff=127.0.0.1"), "{}", r.body);
    assert!(r.body.contains("proto=http "), "{}", r.body);
    assert!(r.body.contains("fhost=foo.example.com"), "{}", r.body);
    assert!(!r.body.contains("rid=-"), "{}", r.body);
    // Element-wise prefixes, Exact, host precedence, wildcard one label deep.
    assert!(
        get(p, "foo.example.com", "/apix")
            .await
            .map_err(anyhow::Error::msg)?
            .body
            .starts_with("a ")
    );
    assert!(
        get(p, "FOO.example.com:80", "/api")
            .await
            .map_err(anyhow::Error::msg)?
            .body
            .starts_with("b ")
    );
    assert!(
        get(p, "foo.example.com", "/exact")
            .await
            .map_err(anyhow::Error::msg)?
            .body
            .starts_with("b ")
    );
    assert!(
        get(p, "foo.example.com", "/exact/x")
            .await
            .map_err(anyhow::Error::msg)?
            .body
            .starts_with("a ")
    );
    assert!(
        get(p, "x.wild.example.com", "/")
            .await
            .map_err(anyhow::Error::msg)?
            .body
            .starts_with("b ")
    );
    assert_eq!(
        get(p, "y.x.wild.example.com", "/")
            .await
            .map_err(anyhow::Error::msg)?
            .status,
        404
    );
    assert_eq!(
        get(p, "other.example.com", "/")
            .await
            .map_err(anyhow::Error::msg)?
            .status,
        404
    );

    // Not ours: another controller's class, and no class while our class is not default.
    kubectl
        .apply(
            &json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "theirs", "namespace": NS},
                "spec": {"ingressClassName": "nginx", "rules": [
                    {"host": "theirs.example.com", "http": {"paths": [path("/", "Prefix", "a")]}}]},
            })
            .to_string(),
        )
        .await?;
    // The legacy annotation, and the default backend.
    kubectl
        .apply(
            &json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "legacy", "namespace": NS,
                    "annotations": {"kubernetes.io/ingress.class": "ferrokube"}},
                "spec": {
                    "defaultBackend": {"service": {"name": "d", "port": {"number": 80}}},
                    "rules": [{"host": "legacy.example.com", "http": {"paths": [path("/", "Prefix", "b")]}}],
                },
            })
            .to_string(),
        )
        .await?;
    get_until(p, "legacy.example.com", "/", "legacy class", |r| {
        r.body.starts_with("b ")
    })
    .await?;
    get_until(p, "other.example.com", "/", "default backend", |r| {
        r.body.starts_with("d ")
    })
    .await?;
    // A known host whose paths do not match also falls to the default backend.
    let r = get(p, "x.wild.example.com", "/")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with("b "), "{}", r.body);
    assert!(
        get(p, "theirs.example.com", "/")
            .await
            .map_err(anyhow::Error::msg)?
            .body
            .starts_with("d ")
    );

    // Status: ours get the published addresses, theirs is left alone.
    let out = wait::until("status written", T, Duration::from_millis(200), || async {
        let out = cp
            .kubectl()
            .map_err(|e| e.to_string())?
            .ok(["get", "ingress", "-n", NS, "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.loadBalancer.ingress[*].ip},{.status.loadBalancer.ingress[*].hostname};{end}"])
            .await
            .map_err(|e| e.to_string())?;
        if out.contains("main=10.1.2.3,lb.example.com") && out.contains("legacy=10.1.2.3,lb.example.com") {
            Ok(out)
        } else {
            Err(out)
        }
    })
    .await?;
    assert!(out.contains("theirs=,;"), "{out}");
    Ok(())
}

fn cert(host: &str) -> anyhow::Result<(String, String, Vec<u8>)> {
    let key = rcgen::KeyPair::generate()?;
    let c = rcgen::CertificateParams::new(vec![host.to_string()])?.self_signed(&key)?;
    Ok((c.pem(), key.serialize_pem(), c.der().to_vec()))
}

/// Accepts any certificate: the test checks which one was served by comparing bytes.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// GET over TLS with SNI `host`; returns the response and the served certificate.
async fn get_tls(port: u16, host: &str, path: &str) -> Result<(Resp, Vec<u8>), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let served = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let r = request_on(tls, host, path, &[]).await?;
    Ok((r, served))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_redirect_upgrades_invalid_ingress_and_endpoint_removal() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let (a1, a2, b) = (
        backend("a1").await?,
        backend("a2").await?,
        backend("b").await?,
    );
    service(&cp, "a", &[a1, a2]).await?;
    service(&cp, "b", &[b]).await?;
    let (ca, ka, der_a) = cert("a.example.com")?;
    let (cb, kb, der_b) = cert("b.example.com")?;
    let kubectl = cp.kubectl()?;
    for (name, c, k) in [("a-tls", &ca, &ka), ("b-tls", &cb, &kb)] {
        let dir = tempfile::tempdir()?;
        let (cf, kf) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cf, c)?;
        std::fs::write(&kf, k)?;
        kubectl
            .ok([
                "create",
                "secret",
                "tls",
                name,
                "-n",
                NS,
                &format!("--cert={}", cf.display()),
                &format!("--key={}", kf.display()),
            ])
            .await?;
    }
    let ic = start_controller(&cp).await?;
    for (name, host, secret, svc) in [
        ("a", "a.example.com", "a-tls", "a"),
        ("b", "b.example.com", "b-tls", "b"),
    ] {
        kubectl
            .apply(
                &json!({
                    "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                    "metadata": {"name": name, "namespace": NS},
                    "spec": {
                        "ingressClassName": "ferrokube",
                        "tls": [{"hosts": [host], "secretName": secret}],
                        "rules": [{"host": host, "http": {"paths": [path("/", "Prefix", svc)]}}],
                    },
                })
                .to_string(),
            )
            .await?;
    }

    // SNI picks each Ingress's certificate (once its Secret's watch delivered it);
    // unknown names get the default one.
    let tls_until = |host: &'static str, der: Vec<u8>| {
        let https = ic.https;
        async move {
            wait::until(
                &format!("TLS for {host}"),
                T,
                Duration::from_millis(100),
                || {
                    let der = der.clone();
                    async move {
                        let (r, served) = get_tls(https, host, "/x").await?;
                        if served == der && r.status == 200 {
                            Ok(r)
                        } else {
                            Err(format!("{} {}", r.status, r.body))
                        }
                    }
                },
            )
            .await
        }
    };
    let r = tls_until("a.example.com", der_a.clone()).await?;
    assert!(r.body.starts_with("a"), "{}", r.body);
    assert!(r.body.contains("proto=https"), "{}", r.body);
    let r = tls_until("b.example.com", der_b.clone()).await?;
    assert!(r.body.starts_with("b "), "{}", r.body);
    let (_, served) = get_tls(ic.https, "c.example.com", "/")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(served != der_a && served != der_b && !served.is_empty());

    // Plain HTTP to a TLS host: 308 to HTTPS, path and query kept.
    let r = get(ic.http, "a.example.com", "/p?q=1")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 308);
    assert_eq!(
        r.headers.get("location").and_then(|v| v.to_str().ok()),
        Some(format!("https://a.example.com:{}/p?q=1", ic.https).as_str())
    );

    // An upgrade (WebSocket-style) passes through and stays open across route changes.
    let tcp = TcpStream::connect(("127.0.0.1", ic.https)).await?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let mut ws = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("b.example.com")?,
            tcp,
        )
        .await?;
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: b.example.com\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        ws.read_exact(&mut byte).await.context("reading 101")?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // An invalid Ingress (resource backend) and a bad annotation are reported by Warning
    // Events while every other route keeps serving.
    kubectl
        .apply(
            &json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "metadata": {"name": "bad", "namespace": NS, "annotations": {
                    "nginx.ingress.kubernetes.io/proxy-body-size": "lots",
                    "nginx.ingress.kubernetes.io/configuration-snippet": "return 200;",
                }},
                "spec": {"ingressClassName": "ferrokube", "rules": [
                    {"host": "bad.example.com", "http": {"paths": [
                        {"path": "/", "pathType": "Prefix", "backend": {"resource": {"apiGroup": "example.com", "kind": "Bucket", "name": "x"}}},
                        path("/ok", "Prefix", "b"),
                    ]}}]},
            })
            .to_string(),
        )
        .await?;
    let ev = wait::until(
        "warning events on bad",
        T,
        Duration::from_millis(200),
        || async {
            let ev = events_of(&cp, "bad").await?;
            if ev.contains("InvalidBackend")
                && ev.contains("InvalidAnnotation")
                && ev.contains("UnsupportedAnnotation")
            {
                Ok(ev)
            } else {
                Err(ev)
            }
        },
    )
    .await?;
    assert!(
        ev.contains("Warning InvalidAnnotation: nginx.ingress.kubernetes.io/proxy-body-size"),
        "{ev}"
    );
    assert!(
        ev.contains("nginx.ingress.kubernetes.io/configuration-snippet"),
        "{ev}"
    );
    let r = get(ic.http, "bad.example.com", "/ok/1")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with("b "), "{}", r.body);
    assert_eq!(
        get(ic.http, "bad.example.com", "/")
            .await
            .map_err(anyhow::Error::msg)?
            .status,
        404
    );
    let (r, _) = get_tls(ic.https, "a.example.com", "/")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with('a'), "{}", r.body);

    // Both endpoints of `a` serve; after one slice update only the remaining one does.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let (r, _) = get_tls(ic.https, "a.example.com", "/")
            .await
            .map_err(anyhow::Error::msg)?;
        seen.insert(r.body.split(' ').next().unwrap_or_default().to_string());
    }
    assert_eq!(
        seen.iter().map(String::as_str).collect::<Vec<_>>(),
        vec!["a1", "a2"]
    );
    let removed_at = Instant::now();
    slice(&cp, "a", &[a1]).await?;
    wait::until("a2 removed", T, Duration::from_millis(20), || async {
        for _ in 0..6 {
            let (r, _) = get_tls(ic.https, "a.example.com", "/").await?;
            if !r.body.starts_with("a1 ") {
                return Err(r.body);
            }
        }
        Ok(())
    })
    .await?;
    let propagation = removed_at.elapsed();
    eprintln!("endpoint removal propagated in {propagation:?} (kubectl apply/delete included)");

    // The upgraded connection survived all of the above.
    ws.write_all(b"still here").await?;
    let mut buf = [0u8; 10];
    ws.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"still here");
    Ok(())
}

/// A request body: a sized one (sent with Content-Length) or a streamed one (chunked).
enum Payload {
    None,
    Sized(Vec<u8>),
    Streamed(Vec<u8>),
}

/// `method path` to `host` over HTTP/1.1 on a fresh connection.
async fn call(
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

fn location(r: &Resp) -> &str {
    r.headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// An Ingress of our class for `host` with `paths` and nginx annotations (short names).
fn ingress(name: &str, host: &str, paths: serde_json::Value, ann: &[(&str, &str)]) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_canary_rewrite_redirects_body_size_and_allowlist() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let (a, b) = (backend("a").await?, backend("b").await?);
    service(&cp, "a", &[a]).await?;
    service(&cp, "b", &[b]).await?;
    let ic = start_controller(&cp).await?;
    let kubectl = cp.kubectl()?;
    let root = json!([path("/", "Prefix", "a")]);
    let to_b = json!([path("/", "Prefix", "b")]);
    for manifest in [
        ingress("main", "canary.example", root.clone(), &[]),
        ingress(
            "canary-header",
            "canary.example",
            to_b.clone(),
            &[("canary", "true"), ("canary-by-header", "X-Canary")],
        ),
        ingress("weighted", "weight.example", root.clone(), &[]),
        ingress(
            "canary-weight",
            "weight.example",
            to_b.clone(),
            &[("canary", "true"), ("canary-weight", "100")],
        ),
        ingress(
            "rewrite",
            "rewrite.example",
            json!([path("/api", "Prefix", "a")]),
            &[
                ("rewrite-target", "/v2/"),
                ("load-balance", "least_request"),
            ],
        ),
        ingress(
            "approot",
            "root.example",
            root.clone(),
            &[("app-root", "/app")],
        ),
        ingress(
            "moved",
            "moved.example",
            root.clone(),
            &[("permanent-redirect", "https://new.example/landing")],
        ),
        ingress(
            "small",
            "small.example",
            root.clone(),
            &[("proxy-body-size", "1k")],
        ),
        ingress(
            "deny",
            "deny.example",
            root.clone(),
            &[("allowlist-source-range", "10.0.0.0/8, 192.168.0.0/16")],
        ),
        ingress(
            "allow",
            "allow.example",
            root.clone(),
            &[("allowlist-source-range", "10.0.0.0/8,127.0.0.1/32")],
        ),
    ] {
        kubectl.apply(&manifest).await?;
    }
    let p = ic.http;
    // The last one applied being served means the table holds all of them.
    get_until(p, "allow.example", "/", "allowlist admits loopback", |r| {
        r.status == 200 && r.body.starts_with("a ")
    })
    .await?;

    // Canary by header: `always` takes the canary, `never` and no header the primary.
    let r = call(
        p,
        "GET",
        "canary.example",
        "/",
        &[("x-canary", "always")],
        Payload::None,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with("b "), "{}", r.body);
    for h in [&[("x-canary", "never")][..], &[]] {
        let r = call(p, "GET", "canary.example", "/", h, Payload::None)
            .await
            .map_err(anyhow::Error::msg)?;
        assert!(r.body.starts_with("a "), "{h:?}: {}", r.body);
    }
    // Canary by weight: 100 takes everything; after a change to 0, nothing.
    for _ in 0..10 {
        let r = get(p, "weight.example", "/")
            .await
            .map_err(anyhow::Error::msg)?;
        assert!(r.body.starts_with("b "), "{}", r.body);
    }
    kubectl
        .apply(&ingress(
            "canary-weight",
            "weight.example",
            to_b.clone(),
            &[("canary", "true"), ("canary-weight", "0")],
        ))
        .await?;
    get_until(p, "weight.example", "/", "canary weight 0", |r| {
        r.body.starts_with("a ")
    })
    .await?;
    for _ in 0..10 {
        let r = get(p, "weight.example", "/")
            .await
            .map_err(anyhow::Error::msg)?;
        assert!(r.body.starts_with("a "), "{}", r.body);
    }
    // And a split weight splits (50 of 100: both sides seen in 60 tries, overwhelmingly).
    kubectl
        .apply(&ingress(
            "canary-weight",
            "weight.example",
            to_b.clone(),
            &[("canary", "true"), ("canary-weight", "50")],
        ))
        .await?;
    get_until(p, "weight.example", "/", "canary weight 50", |r| {
        r.body.starts_with("b ")
    })
    .await?;
    let mut sides = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let r = get(p, "weight.example", "/")
            .await
            .map_err(anyhow::Error::msg)?;
        sides.insert(r.body.chars().next().unwrap_or('-'));
    }
    assert_eq!(sides.into_iter().collect::<String>(), "ab");

    // rewrite-target replaces the path, keeps the query.
    let r = get(p, "rewrite.example", "/api/users?id=7")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with("a /v2/?id=7 "), "{}", r.body);

    // app-root: `/` redirects (302), anything else is proxied.
    let r = get(p, "root.example", "/")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!((r.status, location(&r)), (302, "/app"));
    let r = get(p, "root.example", "/app/x")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with("a /app/x "), "{}", r.body);

    // permanent-redirect: 301 to the URL, for every path.
    let r = get(p, "moved.example", "/any?x=1")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(
        (r.status, location(&r)),
        (301, "https://new.example/landing")
    );

    // proxy-body-size: a declared length over the limit is refused before the backend is
    // asked; a streamed body over it is cut off; one under it passes.
    let r = call(
        p,
        "POST",
        "small.example",
        "/upload",
        &[],
        Payload::Sized(vec![b'x'; 2048]),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 413, "{}", r.body);
    let r = call(
        p,
        "POST",
        "small.example",
        "/upload",
        &[],
        Payload::Streamed(vec![b'x'; 4096]),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 413, "{}", r.body);
    let r = call(
        p,
        "POST",
        "small.example",
        "/upload",
        &[],
        Payload::Sized(vec![b'x'; 512]),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert!(
        r.body.starts_with("a /upload ") && r.body.ends_with("len=512"),
        "{}",
        r.body
    );

    // allowlist-source-range: loopback is outside the first list, inside the second.
    let r = get(p, "deny.example", "/")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 403);
    Ok(())
}

/// An address on this machine where nothing listens (bound, then closed).
fn dead_address() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind((local_ip()?, 0))?;
    Ok(l.local_addr()?)
}

fn tls_client(alpn: &[&[u8]]) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// GET over HTTP/2 on `io`; the response and the version it came back in.
async fn get_h2<S>(io: S, authority: &str, path: &str) -> anyhow::Result<(Resp, http::Version)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(format!("https://{authority}{path}"))
        .body(Empty::<Bytes>::new())?;
    let resp = send.send_request(req).await?;
    let (status, version, headers) = (
        resp.status().as_u16(),
        resp.version(),
        resp.headers().clone(),
    );
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((
        Resp {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        },
        version,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_h2_publish_service_and_graceful_drain() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let live = backend("live").await?;
    let dead = dead_address()?;
    service(&cp, "r", &[live, dead]).await?;
    service(&cp, "only-dead", &[dead]).await?;
    let kubectl = cp.kubectl()?;
    // The Service whose address goes into Ingress status.
    kubectl
        .apply(
            &json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "pub", "namespace": NS},
                "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80}]},
            })
            .to_string(),
        )
        .await?;
    kubectl
        .ok([
            "patch",
            "service",
            "pub",
            "-n",
            NS,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"loadBalancer":{"ingress":[{"ip":"203.0.113.7"},{"hostname":"lb.pub.example"}]}}}"#,
        ])
        .await?;
    let ic = start_controller_with(&cp, &[&format!("--publish-service={NS}/pub")]).await?;
    kubectl
        .apply(&ingress(
            "retry",
            "retry.example",
            json!([path("/", "Prefix", "r")]),
            &[],
        ))
        .await?;
    kubectl
        .apply(&ingress(
            "dead",
            "dead.example",
            json!([path("/", "Prefix", "only-dead")]),
            &[],
        ))
        .await?;
    let p = ic.http;
    get_until(p, "retry.example", "/", "route", |r| r.status == 200).await?;

    // Half the picks land on the dead endpoint; an idempotent request is retried on the
    // live one, so every request succeeds.
    for i in 0..12 {
        let r = get(p, "retry.example", &format!("/{i}"))
            .await
            .map_err(anyhow::Error::msg)?;
        assert!(
            r.status == 200 && r.body.starts_with("live "),
            "{i}: {} {}",
            r.status,
            r.body
        );
    }
    // A body-carrying POST is not replayed, and nothing answers: 502.
    let r = call(
        p,
        "POST",
        "dead.example",
        "/",
        &[],
        Payload::Sized(b"x".to_vec()),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 502);

    // HTTP/2 downstream: h2c with prior knowledge on the plain port, ALPN h2 on TLS.
    let tcp = TcpStream::connect(("127.0.0.1", p)).await?;
    let (r, v) = get_h2(tcp, "retry.example", "/h2c").await?;
    assert_eq!((r.status, v), (200, http::Version::HTTP_2));
    assert!(r.body.starts_with("live /h2c "), "{}", r.body);
    let tcp = TcpStream::connect(("127.0.0.1", ic.https)).await?;
    let tls = tls_client(&[b"h2"])?
        .connect(
            rustls::pki_types::ServerName::try_from("retry.example")?,
            tcp,
        )
        .await?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (r, v) = get_h2(tls, "retry.example", "/h2?x=1").await?;
    assert_eq!((r.status, v), (200, http::Version::HTTP_2));
    assert!(
        r.body.starts_with("live /h2?x=1 ") && r.body.contains("proto=https"),
        "{}",
        r.body
    );

    // --publish-service: the Service's load-balancer addresses become the Ingress status.
    wait::until("status from the publish service", T, Duration::from_millis(200), || async {
        let out = cp
            .kubectl()
            .map_err(|e| e.to_string())?
            .ok(["get", "ingress", "retry", "-n", NS, "-o", "jsonpath={.status.loadBalancer.ingress[*].ip},{.status.loadBalancer.ingress[*].hostname}"])
            .await
            .map_err(|e| e.to_string())?;
        if out == "203.0.113.7,lb.pub.example" { Ok(()) } else { Err(out) }
    })
    .await?;

    // Graceful drain: a request in flight when SIGTERM arrives still completes; new
    // connections are refused meanwhile; the process exits 0.
    let before = SLOW_STARTED.load(Ordering::SeqCst);
    let slow = tokio::spawn(async move { get(p, "retry.example", "/slow").await });
    wait::until(
        "slow request in flight",
        T,
        Duration::from_millis(10),
        || async {
            if SLOW_STARTED.load(Ordering::SeqCst) > before {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await?;
    let mut process = ic.process;
    let stopped =
        tokio::task::spawn_blocking(move || process.stop_with_status(Duration::from_secs(20)));
    wait::until("listener closed", T, Duration::from_millis(10), || async {
        match TcpStream::connect(("127.0.0.1", p)).await {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".to_string()),
        }
    })
    .await?;
    let r = slow.await?.map_err(anyhow::Error::msg)?;
    assert!(
        r.status == 200 && r.body.starts_with("live /slow "),
        "{} {}",
        r.status,
        r.body
    );
    let status = stopped.await?;
    assert!(status.is_some_and(|s| s.success()), "exit: {status:?}");
    Ok(())
}

/// Steady load: `workers` keep-alive connections sending GETs until `stop`; every answer
/// that is not a backend's 200 counts as a failure.
#[derive(Default)]
struct Load {
    ok: AtomicUsize,
    failed: std::sync::Mutex<Vec<String>>,
    /// Requests answered, by backend name.
    by_backend: std::sync::Mutex<HashMap<String, usize>>,
}

impl Load {
    fn start(
        port: u16,
        host: &'static str,
        workers: usize,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> (Arc<Self>, tokio::task::JoinSet<()>) {
        let load = Arc::new(Self::default());
        let mut set = tokio::task::JoinSet::new();
        for w in 0..workers {
            let (load, stop) = (load.clone(), stop.clone());
            set.spawn(async move {
                let mut i = 0u64;
                'conn: while !*stop.borrow() {
                    let Ok(io) = TcpStream::connect(("127.0.0.1", port)).await else {
                        load.fail(format!("worker {w}: connect failed"));
                        continue;
                    };
                    let Ok((mut send, conn)) =
                        hyper::client::conn::http1::handshake(TokioIo::new(io)).await
                    else {
                        load.fail(format!("worker {w}: handshake failed"));
                        continue;
                    };
                    tokio::spawn(conn);
                    while !*stop.borrow() {
                        i += 1;
                        let req = hyper::Request::builder()
                            .uri(format!("/load/{w}/{i}"))
                            .header("host", host)
                            .body(Empty::<Bytes>::new());
                        let Ok(req) = req else { continue 'conn };
                        let resp = match send.send_request(req).await {
                            Ok(r) => r,
                            Err(e) => {
                                load.fail(format!("worker {w} request {i}: {e}"));
                                continue 'conn;
                            }
                        };
                        let status = resp.status();
                        let body = match resp.into_body().collect().await {
                            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
                            Err(e) => {
                                load.fail(format!("worker {w} request {i}: body: {e}"));
                                continue 'conn;
                            }
                        };
                        if status != 200 {
                            load.fail(format!("worker {w} request {i}: {status} {body}"));
                            continue;
                        }
                        load.ok.fetch_add(1, Ordering::SeqCst);
                        let name = body.split(' ').next().unwrap_or_default().to_string();
                        *load
                            .by_backend
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .entry(name)
                            .or_default() += 1;
                    }
                }
            });
        }
        (load, set)
    }

    fn fail(&self, what: String) {
        self.failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(what);
    }

    fn served_by(&self, name: &str) -> usize {
        self.by_backend
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .copied()
            .unwrap_or(0)
    }
}

/// Waits until the load reaches `name`, then until it has not for `quiet` requests on end.
async fn until_served_by(load: &Load, name: &str) -> anyhow::Result<()> {
    wait::until(
        &format!("load reaches {name}"),
        T,
        Duration::from_millis(20),
        || async {
            if load.served_by(name) > 0 {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await?;
    Ok(())
}

async fn until_not_served_by(load: &Load, name: &str) -> anyhow::Result<()> {
    let mut last = (load.served_by(name), load.ok.load(Ordering::SeqCst));
    wait::until(
        &format!("load leaves {name}"),
        T,
        Duration::from_millis(100),
        || {
            let now = (load.served_by(name), load.ok.load(Ordering::SeqCst));
            // 200 requests in a row that did not go to `name`.
            let done = now.0 == last.0 && now.1 >= last.1 + 200;
            if now.0 != last.0 {
                last = now;
            }
            async move {
                if done {
                    Ok(())
                } else {
                    Err(format!("{now:?}"))
                }
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_while_endpoints_and_routes_change() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let (b1, stop1) = stoppable_backend("z1").await?;
    let (b2, stop2) = stoppable_backend("z2").await?;
    let (b3, _stop3) = stoppable_backend("z3").await?;
    service(&cp, "z", &[b1]).await?;
    let ic = start_controller(&cp).await?;
    let kubectl = cp.kubectl()?;
    let route = |i: usize| {
        // Each change adds a path and moves a timeout: a new table every time.
        let mut paths = vec![path("/", "Prefix", "z")];
        if i > 0 {
            paths.push(path(&format!("/v{i}"), "Prefix", "z"));
        }
        ingress(
            "z",
            "z.example",
            json!(paths),
            &[("proxy-read-timeout", &(30 + i % 7).to_string())],
        )
    };
    kubectl.apply(&route(0)).await?;
    get_until(ic.http, "z.example", "/", "route", |r| r.status == 200).await?;

    // An upgraded connection, open through everything below.
    let mut ws = TcpStream::connect(("127.0.0.1", ic.http)).await?;
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: z.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        ws.read_exact(&mut byte).await.context("reading 101")?;
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut echo = async |msg: &str| -> anyhow::Result<()> {
        ws.write_all(msg.as_bytes()).await?;
        let mut buf = vec![0u8; msg.len()];
        ws.read_exact(&mut buf).await?;
        anyhow::ensure!(buf == msg.as_bytes(), "echo mismatch");
        Ok(())
    };
    echo("hello").await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (load, workers) = Load::start(ic.http, "z.example", 4, stop_rx);
    until_served_by(&load, "z1").await?;

    // A rolling update: a new endpoint joins, then the old one leaves the slice (readiness
    // off, preStop) and only afterwards stops serving.
    slice(&cp, "z", &[b1, b2]).await?;
    until_served_by(&load, "z2").await?;
    slice(&cp, "z", &[b2]).await?;
    until_not_served_by(&load, "z1").await?;
    stop1.send_replace(true);
    slice(&cp, "z", &[b2, b3]).await?;
    until_served_by(&load, "z3").await?;
    slice(&cp, "z", &[b3]).await?;
    until_not_served_by(&load, "z2").await?;
    stop2.send_replace(true);

    // 100 route changes under load; the upgraded connection stays open through them.
    for i in 1..=100 {
        kubectl.apply(&route(i)).await?;
        if i % 10 == 0 {
            let p = format!("/v{i}");
            get_until(ic.http, "z.example", &p, "route change", |r| {
                r.status == 200 && r.body.contains(&format!(" /v{i} "))
            })
            .await?;
            echo(&format!("after change {i}")).await?;
        }
    }
    stop_tx.send_replace(true);
    workers.join_all().await;
    let failed = load
        .failed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let ok = load.ok.load(Ordering::SeqCst);
    eprintln!("steady load: {ok} requests, {} failed", failed.len());
    assert!(
        failed.is_empty(),
        "{} failed of {}: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(ok > 500, "only {ok} requests");
    echo("the end").await?;
    Ok(())
}

/// Waits until `ingress` has an event containing each of `wanted`; returns them all.
async fn events_containing(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_regex_paths_rewrite_captures_and_invalid_regex() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let (a, b) = (backend("a").await?, backend("b").await?);
    service(&cp, "a", &[a]).await?;
    service(&cp, "b", &[b]).await?;
    let ic = start_controller(&cp).await?;
    let kubectl = cp.kubectl()?;
    let p = ic.http;
    kubectl
        .apply(&ingress(
            "regex",
            "regex.example",
            json!([
                path("/something(/|$)(.*)", "ImplementationSpecific", "a"),
                path("/items/[0-9]+", "ImplementationSpecific", "b"),
            ]),
            &[("use-regex", "true"), ("rewrite-target", "/$2")],
        ))
        .await?;
    // Case-insensitive, anchored at the start, the groups feed the rewrite, the query stays.
    let r = get_until(
        p,
        "regex.example",
        "/SOMETHING/new/x?q=1",
        "regex route",
        |r| r.status == 200,
    )
    .await?;
    assert!(r.body.starts_with("a /new/x?q=1 "), "{}", r.body);
    let r = get(p, "regex.example", "/something")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with("a / "), "{}", r.body);
    // No group 2 in that path: `$2` is empty.
    let r = get(p, "regex.example", "/items/42")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with("b / "), "{}", r.body);
    let r = get(p, "regex.example", "/x/something/y")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 404, "{}", r.body);

    // A second Ingress on the same host without use-regex: its paths are regexes too.
    // Its invalid path is skipped with a Warning; its valid one and the others serve.
    kubectl
        .apply(&ingress(
            "regex-other",
            "regex.example",
            json!([
                path("/(unclosed", "ImplementationSpecific", "b"),
                path("/ok.*", "ImplementationSpecific", "b"),
            ]),
            &[],
        ))
        .await?;
    let ev = events_containing(&cp, "regex-other", &["InvalidPath"]).await?;
    assert!(ev.contains("Warning InvalidPath"), "{ev}");
    assert!(ev.contains("/(unclosed"), "{ev}");
    let r = get_until(p, "regex.example", "/OKAY", "second Ingress's regex", |r| {
        r.status == 200
    })
    .await?;
    assert!(r.body.starts_with("b /OKAY "), "{}", r.body);
    let r = get(p, "regex.example", "/something/still")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with("a /still "), "{}", r.body);
    // Hosts without regex keep element-wise prefixes.
    kubectl
        .apply(&ingress(
            "plain",
            "plain.example",
            json!([path("/ok", "Prefix", "a")]),
            &[],
        ))
        .await?;
    get_until(p, "plain.example", "/ok/x", "plain prefix", |r| {
        r.status == 200
    })
    .await?;
    let r = get(p, "plain.example", "/okay")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 404, "{}", r.body);
    Ok(())
}

fn header<'a>(r: &'a Resp, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_response_headers() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let a = backend("a").await?;
    service(&cp, "a", &[a]).await?;
    let ic = start_controller(&cp).await?;
    let kubectl = cp.kubectl()?;
    let p = ic.http;
    let root = json!([path("/", "Prefix", "a")]);
    kubectl
        .apply(&ingress(
            "cors-default",
            "any.example",
            root.clone(),
            &[("enable-cors", "true")],
        ))
        .await?;
    kubectl
        .apply(&ingress(
            "cors-listed",
            "listed.example",
            root.clone(),
            &[
                ("enable-cors", "true"),
                (
                    "cors-allow-origin",
                    "https://app.example.com, https://*.partner.example",
                ),
                ("cors-allow-methods", "GET, POST"),
                ("cors-allow-headers", "X-Custom, Content-Type"),
                ("cors-expose-headers", "X-Total"),
                ("cors-allow-credentials", "false"),
                ("cors-max-age", "600"),
            ],
        ))
        .await?;
    kubectl
        .apply(&ingress(
            "cors-bad",
            "bad.example",
            root.clone(),
            &[
                ("enable-cors", "true"),
                ("cors-allow-origin", "not an origin"),
            ],
        ))
        .await?;
    get_until(p, "bad.example", "/", "routes", |r| r.status == 200).await?;
    get_until(p, "listed.example", "/", "routes", |r| r.status == 200).await?;

    // Defaults: every origin, ingress-nginx's default methods, headers and max age.
    let r = call(
        p,
        "OPTIONS",
        "any.example",
        "/api",
        &[
            ("origin", "https://whoever.example"),
            ("access-control-request-method", "PUT"),
        ],
        Payload::None,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(header(&r, "access-control-allow-origin"), "*");
    assert_eq!(
        header(&r, "access-control-allow-methods"),
        "GET, PUT, POST, DELETE, PATCH, OPTIONS"
    );
    assert_eq!(header(&r, "access-control-allow-credentials"), "true");
    assert_eq!(header(&r, "access-control-max-age"), "1728000");
    assert!(
        header(&r, "access-control-allow-headers").contains("authorization"),
        "{:?}",
        r.headers
    );
    let r = get(p, "any.example", "/x")
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(r.body.starts_with("a /x "), "{}", r.body);
    assert_eq!(header(&r, "access-control-allow-origin"), "*");

    // A listed origin and a wildcard subdomain get their origin echoed; others nothing.
    for origin in ["https://app.example.com", "https://eu.partner.example"] {
        let r = call(
            p,
            "OPTIONS",
            "listed.example",
            "/",
            &[("origin", origin)],
            Payload::None,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        assert_eq!(r.status, 204, "{origin}: {}", r.body);
        assert_eq!(header(&r, "access-control-allow-origin"), origin);
        assert_eq!(header(&r, "access-control-allow-methods"), "GET, POST");
        assert_eq!(
            header(&r, "access-control-allow-headers"),
            "x-custom, content-type"
        );
        assert_eq!(header(&r, "access-control-max-age"), "600");
        assert_eq!(header(&r, "access-control-allow-credentials"), "-");
        let r = call(
            p,
            "GET",
            "listed.example",
            "/data",
            &[("origin", origin)],
            Payload::None,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        assert!(r.body.starts_with("a /data "), "{}", r.body);
        assert_eq!(header(&r, "access-control-allow-origin"), origin);
        assert_eq!(header(&r, "access-control-expose-headers"), "X-Total");
    }
    for origin in [
        "https://evil.example",
        "https://a.b.partner.example",
        "https://app.example.com.evil.example",
    ] {
        let r = call(
            p,
            "GET",
            "listed.example",
            "/data",
            &[("origin", origin)],
            Payload::None,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        assert_eq!(header(&r, "access-control-allow-origin"), "-", "{origin}");
        // Not an allowed preflight: it goes to the backend like any request.
        let r = call(
            p,
            "OPTIONS",
            "listed.example",
            "/data",
            &[("origin", origin)],
            Payload::None,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        assert!(r.body.starts_with("a /data "), "{origin}: {}", r.body);
    }

    // A bad origin list is reported; the Ingress keeps serving with the default (`*`).
    let ev = events_containing(&cp, "cors-bad", &["InvalidAnnotation"]).await?;
    assert!(ev.contains("cors-allow-origin"), "{ev}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_and_connection_limits_per_client() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let a = backend("a").await?;
    service(&cp, "a", &[a]).await?;
    let ic = start_controller(&cp).await?;
    let kubectl = cp.kubectl()?;
    let p = ic.http;
    let root = json!([path("/", "Prefix", "a")]);
    for manifest in [
        ingress(
            "rps",
            "rps.example",
            root.clone(),
            &[("limit-rps", "1"), ("limit-burst-multiplier", "2")],
        ),
        ingress(
            "exempt",
            "exempt.example",
            root.clone(),
            &[("limit-rps", "1"), ("limit-whitelist", "127.0.0.0/8")],
        ),
        ingress(
            "conns",
            "conns.example",
            root.clone(),
            &[("limit-connections", "1")],
        ),
        ingress(
            "bad-rps",
            "badrps.example",
            root.clone(),
            &[("limit-rps", "ten")],
        ),
    ] {
        kubectl.apply(&manifest).await?;
    }
    // A bad value is reported and ignored: that Ingress serves, unlimited.
    let ev = events_containing(&cp, "bad-rps", &["InvalidAnnotation"]).await?;
    assert!(ev.contains("limit-rps"), "{ev}");
    for _ in 0..10 {
        get_until(p, "badrps.example", "/", "bad-rps serves", |r| {
            r.status == 200
        })
        .await?;
    }
    get_until(p, "exempt.example", "/", "routes", |r| r.status == 200).await?;
    get_until(p, "conns.example", "/", "routes", |r| r.status == 200).await?;

    // 1 rps, burst 2: three at once (nginx's burst + 1), then 503 until a token refills.
    // The route may not be in the table yet: wait for the first 200 (which takes a token).
    let started = Instant::now();
    get_until(p, "rps.example", "/", "rps route", |r| r.status == 200).await?;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = get(p, "rps.example", "/")
            .await
            .map_err(anyhow::Error::msg)?;
        statuses.push(r.status);
    }
    // One token per second of test time may have come back meanwhile.
    let refilled = usize::try_from(started.elapsed().as_secs()).unwrap_or(usize::MAX);
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!(
        (2..=2 + refilled).contains(&ok) && statuses.contains(&503),
        "{statuses:?} after {:?}",
        started.elapsed()
    );
    // Whitelisted clients are never limited.
    for _ in 0..10 {
        let r = get(p, "exempt.example", "/")
            .await
            .map_err(anyhow::Error::msg)?;
        assert_eq!(r.status, 200, "{}", r.body);
    }

    // limit-connections 1: a request whose body is still coming holds the slot.
    let mut held = TcpStream::connect(("127.0.0.1", p)).await?;
    held.write_all(
        b"POST /upload HTTP/1.1\r\nhost: conns.example\r\ncontent-length: 10\r\n\r\nhalf",
    )
    .await?;
    get_until(p, "conns.example", "/", "second request refused", |r| {
        r.status == 503
    })
    .await?;
    drop(held);
    get_until(p, "conns.example", "/", "slot freed", |r| r.status == 200).await?;
    Ok(())
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

async fn secret(cp: &ControlPlane, name: &str, data: serde_json::Value) -> anyhow::Result<()> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_secrets_fails_closed_and_follows_secret_changes() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let a = backend("a").await?;
    service(&cp, "a", &[a]).await?;
    let ic = start_controller(&cp).await?;
    let kubectl = cp.kubectl()?;
    let p = ic.http;
    let bcrypt = bcrypt::hash("b-pass", 4)?.replacen("$2b$", "$2y$", 1);
    secret(
        &cp,
        "users",
        json!({"auth": format!(
            "sha:{{SHA}}t6h1/B6iKLkGEEG3zsS9PFKrPOM=\napr:$apr1$x$12YdXEY0/hH4rDNkmZupO0\nbc:{bcrypt}\n"
        )}),
    )
    .await?;
    secret(
        &cp,
        "user-map",
        json!({"sha": "{SHA}t6h1/B6iKLkGEEG3zsS9PFKrPOM="}),
    )
    .await?;
    let root = json!([path("/", "Prefix", "a")]);
    for manifest in [
        ingress(
            "private",
            "private.example",
            root.clone(),
            &[
                ("auth-type", "basic"),
                ("auth-secret", "users"),
                ("auth-realm", "Staff only"),
            ],
        ),
        ingress(
            "mapped",
            "mapped.example",
            root.clone(),
            &[
                ("auth-type", "basic"),
                ("auth-secret", "web/user-map"),
                ("auth-secret-type", "auth-map"),
            ],
        ),
        ingress(
            "nosecret",
            "nosecret.example",
            root.clone(),
            &[("auth-type", "basic"), ("auth-secret", "later")],
        ),
        ingress("public", "public.example", root.clone(), &[]),
    ] {
        kubectl.apply(&manifest).await?;
    }
    get_until(p, "public.example", "/", "routes", |r| r.status == 200).await?;

    // No or wrong credentials: 401 with the realm; right ones for each hash format: 200.
    let r = get_until(p, "private.example", "/", "challenge", |r| r.status == 401).await?;
    assert_eq!(header(&r, "www-authenticate"), "Basic realm=\"Staff only\"");
    let call_as = |host: &'static str, auth: String| async move {
        call(
            p,
            "GET",
            host,
            "/x",
            &[("authorization", &auth)],
            Payload::None,
        )
        .await
        .map_err(anyhow::Error::msg)
    };
    for (user, pw) in [("sha", "letmein"), ("apr", "secret"), ("bc", "b-pass")] {
        let r = call_as("private.example", basic(user, pw)).await?;
        assert_eq!(r.status, 200, "{user}: {}", r.body);
        assert!(r.body.starts_with("a /x "), "{}", r.body);
        let r = call_as("private.example", basic(user, "wrong")).await?;
        assert_eq!(r.status, 401, "{user}");
    }
    let r = call_as("private.example", basic("nobody", "letmein")).await?;
    assert_eq!(r.status, 401);
    let r = call_as("mapped.example", basic("sha", "letmein")).await?;
    assert_eq!(r.status, 200, "{}", r.body);

    // A missing Secret: Warning, 503 even with credentials (closed, never open), and the
    // other routes keep serving.
    let ev = events_containing(&cp, "nosecret", &["AuthSecretNotFound"]).await?;
    assert!(ev.contains("Warning AuthSecretNotFound"), "{ev}");
    let r = call_as("nosecret.example", basic("sha", "letmein")).await?;
    assert_eq!(r.status, 503, "{}", r.body);
    let r = get(p, "public.example", "/")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 200);
    // The Secret appears: the route opens to its users.
    secret(
        &cp,
        "later",
        json!({"auth": "sha:{SHA}t6h1/B6iKLkGEEG3zsS9PFKrPOM="}),
    )
    .await?;
    wait::until(
        "secret picked up",
        T,
        Duration::from_millis(100),
        || async {
            let r = call_as("nosecret.example", basic("sha", "letmein"))
                .await
                .map_err(|e| e.to_string())?;
            if r.status == 200 {
                Ok(())
            } else {
                Err(r.status.to_string())
            }
        },
    )
    .await?;

    // A changed Secret takes effect: the old password stops working.
    secret(
        &cp,
        "users",
        json!({"auth": "apr:$apr1$saltsalt$11QAx5Oiaores.cTy1Ple.\n"}),
    )
    .await?;
    wait::until("secret change", T, Duration::from_millis(100), || async {
        let r = call_as("private.example", basic("sha", "letmein"))
            .await
            .map_err(|e| e.to_string())?;
        if r.status == 401 {
            Ok(())
        } else {
            Err(r.status.to_string())
        }
    })
    .await?;
    let r = call_as("private.example", basic("apr", "p@ss word")).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    // An unusable Secret: Warning and closed.
    secret(&cp, "users", json!({"auth": "apr:plaintext\n"})).await?;
    events_containing(&cp, "private", &["InvalidAuthSecret"]).await?;
    let r = call_as("private.example", basic("apr", "p@ss word")).await?;
    assert_eq!(r.status, 503, "{}", r.body);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_affinity_sticks_while_the_endpoint_is_ready() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    base(&cp).await?;
    let (s1, s2) = (backend("s1").await?, backend("s2").await?);
    service(&cp, "sticky", &[s1, s2]).await?;
    let ic = start_controller(&cp).await?;
    let p = ic.http;
    cp.kubectl()?
        .apply(&ingress(
            "sticky",
            "sticky.example",
            json!([path("/app", "Prefix", "sticky")]),
            &[("affinity", "cookie"), ("session-cookie-max-age", "3600")],
        ))
        .await?;
    let first = get_until(p, "sticky.example", "/app", "route", |r| r.status == 200).await?;
    let set = header(&first, "set-cookie").to_string();
    assert!(set.starts_with("INGRESSCOOKIE="), "{set}");
    assert!(set.contains("; Path=/app; Max-Age=3600; HttpOnly"), "{set}");
    let cookie = set.split(';').next().unwrap_or_default().to_string();
    let name = |r: &Resp| r.body.split(' ').next().unwrap_or_default().to_string();
    let stuck = name(&first);
    // Round robin would alternate; the cookie keeps every request on one endpoint, and
    // no new cookie is set while it holds.
    for _ in 0..8 {
        let r = call(
            p,
            "GET",
            "sticky.example",
            "/app/x",
            &[("cookie", &cookie)],
            Payload::None,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        assert_eq!(name(&r), stuck, "{}", r.body);
        assert_eq!(header(&r, "set-cookie"), "-");
    }
    // The endpoint leaves the ready set: the client moves and gets a new cookie.
    let (keep, other) = if stuck == "s1" {
        (s2, "s2")
    } else {
        (s1, "s1")
    };
    slice(&cp, "sticky", &[keep]).await?;
    let r = wait::until(
        "moved off the gone endpoint",
        T,
        Duration::from_millis(50),
        || {
            let cookie = cookie.clone();
            async move {
                let r = call(
                    p,
                    "GET",
                    "sticky.example",
                    "/app",
                    &[("cookie", &cookie)],
                    Payload::None,
                )
                .await?;
                if r.body.starts_with(other) {
                    Ok(r)
                } else {
                    Err(r.body)
                }
            }
        },
    )
    .await?;
    let new = header(&r, "set-cookie");
    assert!(
        new.starts_with("INGRESSCOOKIE=") && !new.starts_with(&cookie),
        "{new}"
    );
    Ok(())
}
