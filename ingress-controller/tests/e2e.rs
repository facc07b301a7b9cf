//! The Ingress controller end to end against a real apiserver, driven by stock kubectl.
//!
//! There is no kubelet: backends are small HTTP servers this test starts on this machine,
//! and Services without selectors get hand-made EndpointSlices pointing at them. The
//! apiserver refuses loopback addresses in EndpointSlices, so backends listen on the
//! machine's own non-loopback address (traffic to it still never leaves the machine).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferrokube_tests::ControlPlane;
use ferrokube_tests::wait;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_hosts_paths_default_backend_class_and_status() -> anyhow::Result<()> {
    let (cp, ic) = serving(&["a", "b", "d"]).await?;
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
    // The access log has the request, with the Ingress that routed it and the endpoint.
    let s = TcpStream::connect(("127.0.0.1", p)).await?;
    let r = request_on(
        s,
        "foo.example.com",
        "/api/logged",
        &[("x-request-id", "e2e-access-1")],
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 200);
    let log = ic.process.log_path().to_path_buf();
    let line = wait::until(
        "access log line",
        Duration::from_secs(10),
        Duration::from_millis(50),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
                text.lines()
                    .find(|l| l.contains("request_id=\"e2e-access-1\""))
                    .map(str::to_string)
                    .ok_or_else(|| "not logged yet".to_string())
            }
        },
    )
    .await?;
    for field in [
        " INFO access: request remote=127.0.0.1:",
        " method=GET host=foo.example.com path=/api/logged status=200 upstream=",
        &format!(" ingress={NS}/main duration_ms="),
    ] {
        assert!(line.contains(field), "{field:?} not in {line:?}");
    }
    assert!(!line.contains("upstream= "), "no endpoint in {line:?}");
    // Element-wise prefixes, Exact, host precedence, wildcard one label deep.
    expect_routes(
        p,
        &[
            ("foo.example.com", "/apix", Want::Backend("a")),
            ("FOO.example.com:80", "/api", Want::Backend("b")),
            ("foo.example.com", "/exact", Want::Backend("b")),
            ("foo.example.com", "/exact/x", Want::Backend("a")),
            ("x.wild.example.com", "/", Want::Backend("b")),
            ("y.x.wild.example.com", "/", Want::Status(404)),
            ("other.example.com", "/", Want::Status(404)),
        ],
    )
    .await?;

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
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_canary_rewrite_redirects_body_size_and_allowlist() -> anyhow::Result<()> {
    let (cp, ic) = serving(&["a", "b"]).await?;
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
