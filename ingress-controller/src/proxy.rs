//! The data plane: HTTP/1.1 and HTTP/2 (h2c on the plain port, ALPN on TLS) downstream,
//! pooled upstream connections, per-request routing on the current table snapshot.
//! HTTP/1.1 connections start on [`crate::fast_path`], which hands them here (to hyper) at
//! their first request it does not take.
//!
//! A request reads the table once (`ArcSwap::load`), keeps its route (an `Arc`) for its
//! whole life and never blocks the controller; a route change therefore never touches a
//! request or connection in flight, upgraded ones (WebSocket) included.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body as _, Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use smallvec::SmallVec;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::FastMap;
use crate::annotations::{BackendProtocol, Config};
use crate::controller::Shared;
use crate::fast_path::{self, Outcome, Prefixed};
use crate::keepalive::{self, Keepalive};
use crate::routing::{Route, Target, normalize_host};
use crate::{access_log, auth, cors, ratelimit};
use ferrokube_runtime::informer::ObjectKey;

/// The error type of the bodies the proxy produces.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every request and response the proxy produces.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How many endpoints an idempotent request tries when connections are refused.
pub(crate) const MAX_TRIES: usize = 3;

// The headers the proxy sets on every request, parsed once.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// All of them: a client's own values for these are replaced, never passed on.
pub(crate) const SET_BY_PROXY: [HeaderName; 5] = [
    X_FORWARDED_FOR,
    X_REAL_IP,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    X_REQUEST_ID,
];

/// Controller-wide defaults (annotations override per Ingress).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The HTTPS port put in redirects.
    pub https_redirect_port: u16,
    /// Connect timeout to backends.
    pub connect_timeout: Duration,
    /// Time to wait for response headers.
    pub read_timeout: Duration,
    /// Largest request body (0: unlimited).
    pub body_size: u64,
    /// How endpoints are chosen unless an Ingress says otherwise.
    pub load_balance: crate::balancer::Policy,
    /// The access log's format (`--logging-format`).
    pub log_format: ferrokube_runtime::logging::Format,
}

/// Request counters, labelled like ingress-nginx's `nginx_ingress_controller_requests`.
pub type RequestCounter = Family<Vec<(String, String)>, Counter>;

/// The proxy: shared by every connection.
pub struct Proxy {
    shared: Shared,
    settings: Settings,
    requests: RequestCounter,
    /// Per-client limits; outlives table swaps.
    limiters: Arc<ratelimit::Limiters>,
}

/// What a connection knows of itself.
#[derive(Clone, Debug)]
pub(crate) struct Conn {
    pub(crate) remote: SocketAddr,
    pub(crate) tls: bool,
    /// `remote`'s IP as a header value (X-Forwarded-For, X-Real-IP), made once per
    /// connection rather than per request.
    pub(crate) client_ip: HeaderValue,
}

/// What the access log and the request counters take of a request, besides its outcome.
pub(crate) struct Logged<'a> {
    pub(crate) method: &'a str,
    pub(crate) host: &'a str,
    pub(crate) path: &'a str,
    pub(crate) request_id: &'a [u8],
}

fn full(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn redirect(status: StatusCode, location: &str) -> Response<Body> {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut r = full(status, "");
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        // Every part of a location comes from a parsed URI or a validated host, so this
        // does not happen; refuse rather than emit a broken header.
        Err(_) => full(StatusCode::BAD_REQUEST, "bad redirect target\n"),
    }
}

/// The hop-by-hop headers (RFC 9110 7.6.1), besides those a `Connection` header lists.
pub(crate) const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers (RFC 9110 7.6.1), keeping the upgrade handshake when asked.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // The common case, a message without any of them: one pass over the (few) names
    // instead of a hashed removal per hop-by-hop name. Names listed in `Connection` are
    // only removed when `Connection` itself is present, which this pass sees.
    if !keep_upgrade && !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in listed.iter().chain(HOP_BY_HOP.iter()) {
        if keep_upgrade && (h == header::UPGRADE || h == header::CONNECTION) {
            continue;
        }
        headers.remove(h);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// The incoming X-Request-ID when it is sane, else a fresh random one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(X_REQUEST_ID)
        .filter(|v| sane_request_id(v.as_bytes()))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_bytes(&new_request_id())
                .unwrap_or_else(|_| HeaderValue::from_static("-"))
        })
}

/// Whether a client's X-Request-ID is passed on as it is: short and printable.
pub(crate) fn sane_request_id(id: &[u8]) -> bool {
    id.len() <= 128 && id.iter().all(u8::is_ascii_graphic)
}

/// A fresh request id: 32 random hex digits, as nginx's `$request_id`.
pub(crate) fn new_request_id() -> [u8; 32] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = rand::random::<u128>();
    let mut id = [0u8; 32];
    for (i, d) in id.iter_mut().enumerate() {
        *d = HEX[usize::try_from((n >> (124 - 4 * i)) & 0xf).unwrap_or(0)];
    }
    id
}

/// The host a request is for: its Host header, else (HTTP/2) its URI's authority, else
/// empty. Always a valid `&str` (`to_str` succeeds), shared with the request's own buffer
/// where it can be.
fn request_host<B>(req: &Request<B>) -> HeaderValue {
    req.headers()
        .get(header::HOST)
        .filter(|h| h.to_str().is_ok())
        .cloned()
        .or_else(|| {
            req.uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        })
        .unwrap_or_else(|| HeaderValue::from_static(""))
}

/// `body` as a [`Body`], failing once it exceeds `limit` bytes (0: unlimited); one box.
fn limited<B>(body: B, limit: u64) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if limit > 0 {
        Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)).boxed_unsync()
    } else {
        body.map_err(Into::into).boxed_unsync()
    }
}

/// Whether the canary takes this request: header, then cookie, then weight.
fn wants_canary(config: &Config, headers: &HeaderMap) -> bool {
    let Some(c) = &config.canary else {
        return false;
    };
    if let Some(name) = &c.header
        && let Some(v) = headers.get(name).and_then(|v| v.to_str().ok())
    {
        match (v, c.header_value.as_deref()) {
            (v, Some(want)) if v == want => return true,
            (_, Some(_)) => {}
            ("always", None) => return true,
            ("never", None) => return false,
            _ => {}
        }
    }
    if let Some(cookie) = &c.cookie {
        for v in headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
        {
            for pair in v.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=')
                    && k == cookie
                {
                    match val {
                        "always" => return true,
                        "never" => return false,
                        _ => {}
                    }
                }
            }
        }
    }
    c.weight > 0 && rand::random_range(0..c.weight_total) < c.weight
}

/// How long an upstream connection may stay idle (nginx's `keepalive_timeout` default).
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Request counter handles a worker keeps (see [`Pools::counter`]).
const MAX_CACHED_COUNTERS: usize = 4096;
/// Idle upstream connections a worker keeps per backend address.
const UPSTREAM_MAX_IDLE: usize = 256;

/// One worker thread's upstream connections: HTTP/1.1 keep-alive connections per backend
/// address, and a pooled client per connect timeout for h2c backends. Each worker has its
/// own, so a connection's task runs on the thread that sends requests on it (see
/// [`crate::workers`]).
pub struct Pools {
    http1: Arc<Keepalive>,
    /// The fast path's upstream sockets.
    pub(crate) sockets: fast_path::Sockets,
    h2c: Mutex<HashMap<Duration, Client<HttpConnector, Body>>>,
    /// Request counters by status and Ingress (see [`Pools::counter`]).
    counters: Mutex<FastMap<u16, FastMap<ObjectKey, Counter>>>,
}

impl Default for Pools {
    fn default() -> Self {
        Self {
            http1: Arc::new(Keepalive::new(UPSTREAM_MAX_IDLE, UPSTREAM_IDLE_TIMEOUT)),
            sockets: fast_path::Sockets::new(UPSTREAM_MAX_IDLE, UPSTREAM_IDLE_TIMEOUT),
            h2c: Mutex::default(),
            counters: Mutex::default(),
        }
    }
}

impl Pools {
    /// The pooled h2c client for a connect timeout (one pool each).
    fn h2c(&self, connect_timeout: Duration) -> Client<HttpConnector, Body> {
        let mut clients = self.h2c.lock().unwrap_or_else(PoisonError::into_inner);
        clients
            .entry(connect_timeout)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(connect_timeout));
                connector.set_nodelay(true);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(UPSTREAM_IDLE_TIMEOUT)
                    .pool_max_idle_per_host(UPSTREAM_MAX_IDLE)
                    .http2_only(true)
                    .build(connector)
            })
            .clone()
    }

    /// The request counter for `ingress` and `status`. The family's own lookup builds
    /// six label strings and hashes them per request; the handles it returns share the
    /// family's counts, so each worker keeps the ones it has used.
    fn counter(&self, family: &RequestCounter, ingress: &ObjectKey, status: u16) -> Counter {
        let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = counters.get(&status).and_then(|m| m.get(ingress)) {
            return c.clone();
        }
        // Label sets of deleted Ingresses stay in the family too; this only bounds the
        // copies.
        if counters.values().map(FastMap::len).sum::<usize>() >= MAX_CACHED_COUNTERS {
            counters.clear();
        }
        let c = family
            .get_or_create(&vec![
                ("namespace".into(), ingress.namespace.clone()),
                ("ingress".into(), ingress.name.clone()),
                ("status".into(), status.to_string()),
            ])
            .clone();
        counters
            .entry(status)
            .or_default()
            .insert(ingress.clone(), c.clone());
        c
    }

    /// Sends `req` to `ep`: `path` is the request target (origin form); h2c requests get
    /// the absolute URI hyper-util's client routes on.
    async fn send(
        &self,
        ep: SocketAddr,
        path: &Uri,
        h2: bool,
        connect_timeout: Duration,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, UpstreamError> {
        if h2 {
            let uri = format!("http://{ep}{path}")
                .parse::<Uri>()
                .map_err(|_| UpstreamError::BadTarget)?;
            *req.uri_mut() = uri;
            *req.version_mut() = Version::HTTP_2;
            return match self.h2c(connect_timeout).request(req).await {
                Ok(resp) => Ok(resp.map(|b| b.map_err(BoxError::from).boxed_unsync())),
                Err(e) if e.is_connect() => Err(UpstreamError::Connect(Box::new(e))),
                Err(e) => Err(UpstreamError::Request(Box::new(e))),
            };
        }
        *req.uri_mut() = path.clone();
        *req.version_mut() = Version::HTTP_11;
        match self.http1.send(ep, connect_timeout, req).await {
            Ok(resp) => Ok(resp),
            Err(e @ keepalive::Error::Connect { .. }) => Err(UpstreamError::Connect(Box::new(e))),
            Err(e) => Err(UpstreamError::Request(Box::new(e))),
        }
    }
}

/// How sending to an upstream failed.
#[derive(Debug)]
enum UpstreamError {
    /// No connection: another endpoint may be tried.
    Connect(BoxError),
    /// The exchange failed on a connection.
    Request(BoxError),
    /// The request target does not make a URI.
    BadTarget,
}

impl Proxy {
    /// A proxy serving `shared`'s table.
    pub fn new(shared: Shared, settings: Settings, requests: RequestCounter) -> Self {
        Self {
            shared,
            settings,
            requests,
            limiters: Arc::default(),
        }
    }

    /// The routing table as of now.
    pub(crate) fn table(&self) -> arc_swap::Guard<Arc<crate::routing::Table>> {
        self.shared.table.load()
    }

    /// The controller-wide defaults.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Counts a request's response (by the Ingress that routed it, if any) and writes its
    /// access log line.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn record(
        &self,
        pools: &Pools,
        conn: &Conn,
        request: &Logged<'_>,
        status: u16,
        upstream: Option<SocketAddr>,
        ingress: Option<&ObjectKey>,
        started: Instant,
    ) {
        static UNROUTED: ObjectKey = ObjectKey {
            namespace: String::new(),
            name: String::new(),
        };
        let ingress = ingress.unwrap_or(&UNROUTED);
        pools.counter(&self.requests, ingress, status).inc();
        if access_log::enabled() {
            access_log::record(
                self.settings.log_format,
                &access_log::Entry {
                    remote: conn.remote,
                    method: request.method,
                    host: request.host,
                    path: request.path,
                    status,
                    upstream,
                    ingress_namespace: &ingress.namespace,
                    ingress_name: &ingress.name,
                    duration: started.elapsed(),
                    request_id: request.request_id,
                },
            );
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: Conn,
        pools: &Pools,
    ) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        // Shares of the request's own buffers (no copies): both outlive the request, which
        // `forward` consumes, for the access log.
        let uri = req.uri().clone();
        let path = uri.path();
        let host = request_host(&req);
        let host_str = host.to_str().unwrap_or_default();
        let id = request_id(req.headers());
        let route = self.shared.table.load().lookup(host_str, path).cloned();
        let (resp, upstream) = match &route {
            None => (full(StatusCode::NOT_FOUND, "404 page not found\n"), None),
            // Boxed: the proxy's largest state lives on the heap once, instead of being
            // copied with every move of the (then much larger) request future.
            Some(route) => Box::pin(self.forward(req, &conn, pools, &host, route, &id)).await,
        };
        let logged = Logged {
            method: method.as_str(),
            host: host_str,
            path,
            request_id: id.as_bytes(),
        };
        let ingress = route.as_ref().map(|r| &r.target.ingress);
        self.record(
            pools,
            &conn,
            &logged,
            resp.status().as_u16(),
            upstream,
            ingress,
            started,
        );
        resp
    }

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &Conn,
        pools: &Pools,
        host: &HeaderValue,
        route: &Route,
        id: &HeaderValue,
    ) -> (Response<Body>, Option<SocketAddr>) {
        let config = &route.target.config;
        if !config.allow_source.is_empty()
            && !config
                .allow_source
                .iter()
                .any(|c| c.contains(conn.remote.ip()))
        {
            return (full(StatusCode::FORBIDDEN, "403 forbidden\n"), None);
        }
        if let Some((uri, code)) = &config.permanent_redirect {
            return (redirect(*code, &uri.to_string()), None);
        }
        if route.redirects_to_https(conn.tls) {
            let name = normalize_host(host.to_str().unwrap_or_default());
            // Only a syntactically valid authority goes into the Location header.
            if name.parse::<http::uri::Authority>().is_ok() {
                let port = match self.settings.https_redirect_port {
                    443 => String::new(),
                    p => format!(":{p}"),
                };
                let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let loc = format!("https://{name}{port}{path_and_query}");
                return (redirect(StatusCode::PERMANENT_REDIRECT, &loc), None);
            }
        }
        if let Some(root) = &config.app_root
            && req.uri().path() == "/"
        {
            return (redirect(StatusCode::FOUND, root), None);
        }
        // Preflights are answered here, before limits and auth, as nginx answers them in
        // its rewrite phase: a browser never sends credentials on a preflight.
        let cors_headers = match config
            .cors
            .as_ref()
            .map(|c| c.decide(req.method(), req.headers().get(header::ORIGIN)))
        {
            Some(cors::Decision::Preflight(h)) => {
                let mut r = full(cors::PREFLIGHT_STATUS, "");
                *r.headers_mut() = h;
                return (r, None);
            }
            Some(cors::Decision::Decorate(h)) => Some(h),
            Some(cors::Decision::Pass) | None => None,
        };
        // Held until both the request body and the response body end (nginx counts a
        // request from its headers until it is finalized, uploads and streamed responses
        // included): `limit-connections` counts requests in progress.
        // `None` when no limit applies: then no body needs wrapping to carry it.
        let in_progress =
            match self
                .limiters
                .admit(&route.target.ingress, &config.limits, conn.remote.ip())
            {
                Ok(guard) => guard.map(Arc::new),
                Err(why) => {
                    tracing::debug!(remote = %conn.remote, %why, "request limited");
                    return (
                        full(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "503 service temporarily unavailable\n",
                        ),
                        None,
                    );
                }
            };
        // nginx's access phase, after the limits (preaccess): a flood of bad passwords
        // is limited before it costs bcrypt time.
        if let Some(gate) = &route.target.auth {
            match gate.clone().check(req.headers()).await {
                auth::Verdict::Allow => {}
                auth::Verdict::Challenge(v) => {
                    let mut r = full(StatusCode::UNAUTHORIZED, "401 authorization required\n");
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                    return (r, None);
                }
                auth::Verdict::Unavailable => {
                    return (
                        full(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "503 service temporarily unavailable\n",
                        ),
                        None,
                    );
                }
            }
        }

        let target: &Target = match &route.canary {
            Some(c) if wants_canary(&c.target.config, req.headers()) => &c.target,
            _ => &route.target,
        };
        let config = &target.config;
        let limit = config.body_size.unwrap_or(self.settings.body_size);
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if limit > 0 && declared.is_some_and(|n| n > limit) {
            return (
                full(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "413 request entity too large\n",
                ),
                None,
            );
        }

        let upgrade = is_upgrade(&req);
        let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let (parts, body) = req.into_parts();
        let retriable = idempotent(&parts.method) && body.is_end_stream() && !upgrade;
        // A retriable request has no body to send (each attempt sends an empty one), so
        // only the others get theirs wrapped.
        let mut body = (!retriable).then(|| match in_progress.clone() {
            Some(uploading) => limited(
                body.map_frame(move |frame| {
                    // Owning a share of the guard ties it to the request body too.
                    let _guard = &uploading;
                    frame
                }),
                limit,
            ),
            None => limited(body, limit),
        });

        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, upgrade);
        if !headers.contains_key(header::HOST) {
            headers.insert(header::HOST, host.clone());
        }
        // The client address is ours to state: a client-sent X-Forwarded-For is not trusted.
        headers.insert(X_FORWARDED_FOR, conn.client_ip.clone());
        headers.insert(X_REAL_IP, conn.client_ip.clone());
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
        );
        headers.insert(X_FORWARDED_HOST, host.clone());
        headers.insert(X_REQUEST_ID, id.clone());

        let rewritten = match config.rewrite_target.as_ref().filter(|t| **t != route.path) {
            // nginx's `rewrite <path> <target>`: the path is replaced, the query kept;
            // on a regex route `$1`, `$2` are the groups the request path matched. A target
            // equal to the rule's path rewrites nothing (ingress-nginx's `buildProxyPass`).
            Some(t) => {
                let t = match route
                    .pattern
                    .as_ref()
                    .and_then(|p| p.captures(parts.uri.path()))
                {
                    Some(caps) if t.contains('$') => crate::annotations::expand_rewrite(t, &caps),
                    _ => t.clone(),
                };
                Some(match parts.uri.query() {
                    Some(q) => format!("{t}?{q}"),
                    None => t,
                })
            }
            None => None,
        };
        let h2 = config.backend_protocol == BackendProtocol::H2c;
        let connect_timeout = config
            .connect_timeout
            .unwrap_or(self.settings.connect_timeout);
        // Unrewritten, the request's own path and query go on as they are (no re-parse).
        let target_uri = match rewritten {
            Some(t) => t.parse::<Uri>().map_err(http::Error::from),
            None => {
                let mut target = http::uri::Parts::default();
                target.path_and_query = Some(
                    parts
                        .uri
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/")),
                );
                Uri::from_parts(target).map_err(http::Error::from)
            }
        };
        let Ok(target_uri) = target_uri else {
            return (full(StatusCode::BAD_REQUEST, "400 bad request\n"), None);
        };
        // Waiting for response headers covers sending the request too (hyper streams the
        // body while waiting), so the send timeout extends the read timeout.
        let wait = config.read_timeout.unwrap_or(self.settings.read_timeout)
            + config.send_timeout.unwrap_or_default();

        let policy = config.load_balance.unwrap_or(self.settings.load_balance);
        let sticky = config
            .affinity
            .as_ref()
            .and_then(|a| a.sticky(&headers, target.upstream.endpoints()));
        let mut tried = SmallVec::<[SocketAddr; MAX_TRIES]>::new();
        let resp = loop {
            let next = match sticky {
                Some(ep) if tried.is_empty() => Some(ep),
                _ => target.upstream.pick_with(&tried, policy),
            };
            let Some(ep) = next else {
                return if tried.is_empty() {
                    (
                        full(StatusCode::SERVICE_UNAVAILABLE, "503 service unavailable\n"),
                        None,
                    )
                } else {
                    (
                        full(StatusCode::BAD_GATEWAY, "502 bad gateway\n"),
                        tried.last().copied(),
                    )
                };
            };
            tried.push(ep);
            let mut out = Request::new(if retriable {
                empty()
            } else {
                body.take().unwrap_or_else(empty)
            });
            *out.method_mut() = parts.method.clone();
            // An attempt that cannot be followed by another takes the headers; one that may
            // be (a connect failure with endpoints left to try) sends a copy.
            let may_retry =
                retriable && tried.len() < MAX_TRIES.min(target.upstream.endpoints().len());
            *out.headers_mut() = if may_retry {
                headers.clone()
            } else {
                std::mem::take(&mut headers)
            };
            // In flight until the response headers arrive: the backend's think time is
            // what least-request balancing compares.
            let _in_flight = target.upstream.start(ep);
            let sent = pools.send(ep, &target_uri, h2, connect_timeout, out);
            match tokio::time::timeout(wait, sent).await {
                Err(_) => {
                    return (
                        full(StatusCode::GATEWAY_TIMEOUT, "504 gateway timeout\n"),
                        Some(ep),
                    );
                }
                Ok(Ok(resp)) => break (resp, ep),
                Ok(Err(UpstreamError::BadTarget)) => {
                    return (full(StatusCode::BAD_REQUEST, "400 bad request\n"), None);
                }
                Ok(Err(UpstreamError::Connect(e))) => {
                    target.upstream.eject(ep);
                    tracing::debug!(upstream = %ep, error = %e, "connect failed");
                    if retriable && tried.len() < MAX_TRIES {
                        continue;
                    }
                    return (full(StatusCode::BAD_GATEWAY, "502 bad gateway\n"), Some(ep));
                }
                Ok(Err(UpstreamError::Request(e))) => {
                    tracing::debug!(upstream = %ep, error = %e, "upstream request failed");
                    // The limit error sits a few levels down (client error -> hyper error
                    // -> body error), so the whole chain is searched.
                    let too_large = std::iter::successors(
                        Some(&*e as &(dyn std::error::Error + 'static)),
                        |e| e.source(),
                    )
                    .any(|s| s.is::<http_body_util::LengthLimitError>());
                    return if too_large {
                        (
                            full(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "413 request entity too large\n",
                            ),
                            Some(ep),
                        )
                    } else {
                        (full(StatusCode::BAD_GATEWAY, "502 bad gateway\n"), Some(ep))
                    };
                }
            }
        };
        let (mut resp, ep) = resp;
        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && let Some(down) = downstream_upgrade {
            let up = hyper::upgrade::on(&mut resp);
            // An upgraded connection (WebSocket) counts against `limit-connections` for as
            // long as it is open, as nginx's `limit_conn` counts it.
            let held = in_progress.clone();
            tokio::spawn(async move {
                let _held = held;
                match (down.await, up.await) {
                    (Ok(d), Ok(u)) => {
                        let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                        let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::debug!(error = %e, "upgrade failed");
                    }
                }
            });
        }
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers, switching);
        // Like `more_set_headers`: ours replace the backend's.
        for (name, value) in cors_headers.iter().flatten() {
            rparts.headers.insert(name, value.clone());
        }
        // A new or changed endpoint: (re)stick the client to the one that answered.
        if let Some(a) = &config.affinity
            && sticky != Some(ep)
        {
            let path = if route.pattern.is_some() {
                "/"
            } else {
                route.path.as_str()
            };
            if let Some(v) = a.set_cookie(ep, path) {
                rparts.headers.append(header::SET_COOKIE, v);
            }
        }
        let body = match in_progress {
            Some(guard) => rbody
                .map_frame(move |frame| {
                    // Owning the guard ties it to the body: it drops when the body does.
                    let _guard = &guard;
                    frame
                })
                .boxed_unsync(),
            None => rbody,
        };
        (Response::from_parts(rparts, body), Some(ep))
    }
}

/// Serves `stream` with hyper for the rest of its life, starting with `read`, the bytes the
/// fast path read from it and left unhandled. The drain reaches it through `watcher`.
async fn serve_with_hyper<S>(
    stream: S,
    read: Bytes,
    proxy: Arc<Proxy>,
    pools: Arc<Pools>,
    conn: Conn,
    builder: &hyper_util::server::conn::auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let (proxy, pools, conn) = (proxy.clone(), pools.clone(), conn.clone());
        async move { Ok::<_, Infallible>(proxy.handle(req, conn, &pools).await) }
    });
    let c =
        builder.serve_connection_with_upgrades(TokioIo::new(Prefixed::new(stream, read)), service);
    let _ = watcher.watch(c.into_owned()).await;
}

/// Accepts connections on `listener` (TLS when `tls` is set) until `shutdown`, then lets
/// open connections finish for up to `grace` (idle keep-alive connections close at once,
/// HTTP/2 ones get GOAWAY). Upstream connections come from `pools`, which should belong
/// to the runtime thread this runs on.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    pools: Arc<Pools>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            remote,
            tls: tls.is_some(),
            client_ip: HeaderValue::try_from(remote.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("-")),
        };
        let (proxy, pools, builder) = (proxy.clone(), pools.clone(), builder.clone());
        let (watcher, tls, shutdown) = (graceful.watcher(), tls.clone(), shutdown.clone());
        tokio::spawn(async move {
            // The watcher is held while the fast path serves, so the drain waits for the
            // connection too; the fast path itself ends at `shutdown` between requests.
            let Some(acceptor) = tls else {
                if let Outcome::Handover(s, read) =
                    fast_path::serve(stream, &proxy, &conn, &pools, &shutdown).await
                {
                    serve_with_hyper(s, read, proxy, pools, conn, &builder, watcher).await;
                }
                return;
            };
            let Some(stream) =
                ferrokube_runtime::tls::accept(&acceptor, stream, remote, "ingress").await
            else {
                return;
            };
            // HTTP/2 by ALPN goes to hyper at once; HTTP/1.1 starts on the fast path.
            if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_with_hyper(stream, Bytes::new(), proxy, pools, conn, &builder, watcher).await;
            } else if let Outcome::Handover(s, read) =
                fast_path::serve(stream, &proxy, &conn, &pools, &shutdown).await
            {
                serve_with_hyper(s, read, proxy, pools, conn, &builder, watcher).await;
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::CanaryConfig;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        let mut up = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        strip_hop_by_hop(&mut up, true);
        assert_eq!(
            up.get(header::UPGRADE).map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
        assert_eq!(
            up.get(header::CONNECTION).map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert!(!up.contains_key("x-secret"));
    }

    #[test]
    fn request_ids() {
        let mut h = HeaderMap::new();
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert!(
            fresh.as_bytes().iter().all(u8::is_ascii_hexdigit),
            "{fresh:?}"
        );
        assert_ne!(request_id(&h), fresh);
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 32);
    }

    #[test]
    fn canary_choice() {
        let mut c = Config::default();
        assert!(!wants_canary(&c, &HeaderMap::new()));
        c.canary = Some(CanaryConfig {
            weight: 0,
            weight_total: 100,
            header: Some(HeaderName::from_static("x-canary")),
            header_value: None,
            cookie: Some("cc".into()),
        });
        let mut h = HeaderMap::new();
        assert!(!wants_canary(&c, &h));
        h.insert("x-canary", HeaderValue::from_static("always"));
        assert!(wants_canary(&c, &h));
        h.insert("x-canary", HeaderValue::from_static("never"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b; cc=always"));
        assert!(!wants_canary(&c, &h));
        h.remove("x-canary");
        assert!(wants_canary(&c, &h));
        if let Some(cc) = c.canary.as_mut() {
            cc.weight = 100;
            cc.cookie = None;
        }
        assert!(wants_canary(&c, &HeaderMap::new()));
    }
}
