//! The HTTP transport under every client: TLS with ALPN `h2` then `http/1.1`, so against
//! a kube-apiserver all requests and watches of one client multiplex on one HTTP/2
//! connection, as client-go's do. kube's default stack speaks HTTP/1.1 only, where each
//! concurrent request needs its own connection and TLS handshake (a scheduler binding 64
//! pods at once holds 64 connections).
//!
//! The layers above the connection are kube's own (base URI, authentication, extra
//! headers), so kubeconfig handling is unchanged; only the connector and the pool differ.

use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use tower::util::BoxService;
use tower::{BoxError, ServiceBuilder};

use crate::coalesce;

/// client-go's HTTP/2 health check: a PING after 30 s without a frame read
/// (`ReadIdleTimeout`), and the connection is dropped when no answer comes within 15 s
/// (`PingTimeout`), so a dead connection carrying watches is noticed and replaced.
const H2_READ_IDLE: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(15);

/// client-go's dialer `KeepAlive`: TCP keep-alive probes on an idle connection.
const TCP_KEEPALIVE: Duration = Duration::from_secs(30);

/// Errors building the transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// kube rejected part of the configuration (TLS material, auth, headers).
    #[error("configuring the transport")]
    Config(#[source] kube::Error),
    /// `tls-server-name` is not a valid DNS name or IP address.
    #[error("invalid tls-server-name {0:?}")]
    ServerName(String),
}

/// A client builder over the HTTP/2-capable transport for `config`, with a connection of
/// its own.
///
/// A proxied configuration keeps kube's own stack: it knows the proxy protocols.
pub fn client_builder(config: &kube::Config) -> Result<ClientBuilder<Service>, Error> {
    if config.proxy_url.is_some() {
        return ClientBuilder::try_from(config.clone()).map_err(Error::Config);
    }
    client_builder_on(config, connections(config)?)
}

/// A client builder whose requests go over `pool`, which other clients may share: client-go
/// caches its transports by TLS configuration, so every client of a process built from one
/// kubeconfig (a controller-manager's shared informers and each controller's client, each
/// with its own user agent and rate limit) multiplexes on one HTTP/2 connection. On one
/// connection a watch event and the response to a create often arrive in the same read,
/// where separate connections each wake the process and cost a read of their own.
///
/// `pool` must come from [`connections`] for a configuration with the same TLS settings
/// (server, CA, client certificate) as `config`; authentication and headers are `config`'s.
pub fn client_builder_on(
    config: &kube::Config,
    pool: Connections,
) -> Result<ClientBuilder<Service>, Error> {
    Ok(ClientBuilder::new(
        BoxService::new(h2_service(config, pool)?),
        config.default_namespace.clone(),
    ))
}

type Response = http::Response<Box<DynBody>>;

/// The boxed service a [`client_builder`] starts from (kube's `GenericService`).
pub type Service = BoxService<http::Request<Body>, Response, BoxError>;

/// A pool of connections to the apiserver (with HTTP/2, one connection carrying every
/// request). Cheap to clone; clones share the connections.
pub type Connections = hyper_util::client::legacy::Client<
    coalesce::Connector<
        hyper_timeout::TimeoutConnector<hyper_rustls::HttpsConnector<HttpConnector>>,
    >,
    Body,
>;

/// A hyper client whose connector offers `h2` by ALPN, for `config`'s server and TLS
/// settings. Not for proxied configurations (see [`client_builder`]).
pub fn connections(config: &kube::Config) -> Result<Connections, Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_keepalive(Some(TCP_KEEPALIVE));
    http.set_connect_timeout(config.connect_timeout);

    let tls = config.rustls_client_config().map_err(Error::Config)?;
    let mut https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    if let Some(name) = &config.tls_server_name {
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .map_err(|_| Error::ServerName(name.clone()))?;
        https = https
            .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(server_name));
    }
    let https = https.enable_all_versions().wrap_connector(http);

    // Connecting, TLS handshake included, is bounded by kube's connect timeout. Reads and
    // writes are not, as in client-go: a dead HTTP/2 connection is found by the keep-alive
    // PINGs below, a dead HTTP/1.1 one by TCP keep-alive (client-go's dialer probes every
    // 30 s). kube's own read/write timeouts re-armed a timer on every read that found the
    // socket empty, once per wake-up of the connection. Above TLS, the writes of one turn
    // of the event loop are coalesced (see `coalesce`).
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);

    Ok(
        hyper_util::client::legacy::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(H2_READ_IDLE)
            .http2_keep_alive_timeout(H2_PING_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .build(coalesce::Connector(connector)),
    )
}

/// kube's layers over `pool`.
fn h2_service(
    config: &kube::Config,
    pool: Connections,
) -> Result<
    impl tower::Service<
        http::Request<Body>,
        Response = Response,
        Error = BoxError,
        Future = impl Send + 'static,
    > + Send
    + 'static,
    Error,
> {
    Ok(ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(Error::Config)?)
        .layer(config.extra_headers_layer().map_err(Error::Config)?)
        .map_err(BoxError::from)
        .map_response(|res: http::Response<hyper::body::Incoming>| {
            res.map(|body| {
                Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>
            })
        })
        .service(pool))
}
