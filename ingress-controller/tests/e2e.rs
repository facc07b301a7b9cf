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

/// A backend answering `<name> <path> <selected request headers>`; `Upgrade: echo`
/// requests get 101 and an echo of every byte.
async fn backend(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((local_ip()?, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
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
                        let body = format!(
                            "{name} {} host={} xff={} proto={} fhost={} rid={}",
                            req.uri(),
                            h("host"),
                            h("x-forwarded-for"),
                            h("x-forwarded-proto"),
                            h("x-forwarded-host"),
                            h("x-request-id"),
                        );
                        Ok(hyper::Response::new(Full::new(Bytes::from(body))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(addr)
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
    _process: Process,
    http: u16,
    https: u16,
}

async fn start_controller(cp: &ControlPlane) -> anyhow::Result<Controller> {
    let free = ferrokube_tests::controlplane::free_port;
    let (http, https, health) = (free()?, free()?, free()?);
    let args = [
        "--bind-address=127.0.0.1".to_string(),
        format!("--http-port={http}"),
        format!("--https-port={https}"),
        format!("--https-redirect-port={https}"),
        "--healthz-host=127.0.0.1".to_string(),
        format!("--healthz-port={health}"),
        "--publish-status-address=10.1.2.3,lb.example.com".to_string(),
        "--election-namespace=kube-system".to_string(),
        "--v=2".to_string(),
    ];
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
        _process: process,
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
