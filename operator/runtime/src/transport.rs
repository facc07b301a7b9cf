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

/// client-go's HTTP/2 health check: a PING after 30 s without a frame read
/// (`ReadIdleTimeout`), and the connection is dropped when no answer comes within 15 s
/// (`PingTimeout`), so a dead connection carrying watches is noticed and replaced.
const H2_READ_IDLE: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(15);

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

/// A client builder over the HTTP/2-capable transport for `config`.
///
/// A proxied configuration keeps kube's own stack: it knows the proxy protocols.
pub fn client_builder(config: &kube::Config) -> Result<ClientBuilder<Service>, Error> {
    if config.proxy_url.is_some() {
        return ClientBuilder::try_from(config.clone()).map_err(Error::Config);
    }
    Ok(ClientBuilder::new(
        BoxService::new(h2_service(config)?),
        config.default_namespace.clone(),
    ))
}

type Response = http::Response<Box<DynBody>>;

/// The boxed service a [`client_builder`] starts from (kube's `GenericService`).
pub type Service = BoxService<http::Request<Body>, Response, BoxError>;

/// kube's layers over a hyper client whose connector offers `h2` by ALPN.
fn h2_service(
    config: &kube::Config,
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
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
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

    // The same read/write timeouts kube sets; on HTTP/2 the keep-alive PINGs below keep a
    // healthy idle connection reading, so only a dead one trips them.
    let mut connector = hyper_timeout::TimeoutConnector::new(https);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_read_timeout(config.read_timeout);
    connector.set_write_timeout(config.write_timeout);
    connector.set_reset_reader_on_write(config.reset_reader_on_write);

    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .http2_keep_alive_interval(H2_READ_IDLE)
            .http2_keep_alive_timeout(H2_PING_TIMEOUT)
            .http2_keep_alive_while_idle(true)
            .build(connector);

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
        .service(client))
}
