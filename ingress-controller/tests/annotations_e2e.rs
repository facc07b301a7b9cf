//! The ingress-nginx annotations that need more than a header or a redirect, end to end
//! against a real apiserver: regex paths, CORS, per-client limits, basic auth from
//! Secrets and cookie affinity, bad values included (a Warning event, other routes keep
//! serving). Backends, EndpointSlices and the controller process come from `support`.

mod support;

use std::time::{Duration, Instant};

use ferrokube_tests::ControlPlane;
use ferrokube_tests::wait;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_regex_paths_rewrite_captures_and_invalid_regex() -> anyhow::Result<()> {
    let (cp, ic) = serving(&["a", "b"]).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_response_headers() -> anyhow::Result<()> {
    let (cp, ic) = serving(&["a"]).await?;
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
    let (cp, ic) = serving(&["a"]).await?;
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
    // One token per second of test time may have come back meanwhile; tokens refill
    // continuously, so 1.9 s can bring two back.
    let refilled = started.elapsed().as_secs_f64().ceil() as usize;
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
    // An upgraded connection holds its slot for as long as it is open.
    let mut ws = TcpStream::connect(("127.0.0.1", p)).await?;
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nhost: conns.example\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
    )
    .await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tokio::time::timeout(T, ws.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let r = get(p, "conns.example", "/")
        .await
        .map_err(anyhow::Error::msg)?;
    assert_eq!(r.status, 503, "{}", r.body);
    drop(ws);
    get_until(p, "conns.example", "/", "upgrade slot freed", |r| {
        r.status == 200
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_secrets_fails_closed_and_follows_secret_changes() -> anyhow::Result<()> {
    let (cp, ic) = serving(&["a"]).await?;
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
        ingress(
            "digest",
            "digest.example",
            root.clone(),
            &[("auth-type", "digest"), ("auth-secret", "users")],
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
    // An auth setting we cannot honour fails closed too.
    let ev = events_containing(&cp, "digest", &["InvalidAnnotation"]).await?;
    assert!(ev.contains("answer 503"), "{ev}");
    let r = call_as("digest.example", basic("sha", "letmein")).await?;
    assert_eq!(r.status, 503, "{}", r.body);
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
