//! A kube client with client-go's request rate limit (`--kube-api-qps`, `--kube-api-burst`).
//!
//! Every request, watches included, takes a token from one bucket per client before it is
//! sent, as client-go's `flowcontrol.NewTokenBucketRateLimiter` does. The wait happens in
//! `poll_ready`, so a request is never sent before its token is granted.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::ratelimit::TokenBucket;

/// Errors building a client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig could not be read.
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given and none could be inferred (in-cluster or `$KUBECONFIG`).
    #[error("inferring the client configuration")]
    Infer(#[source] kube::config::InferConfigError),
    /// The configuration could not be turned into a client.
    #[error("building the client")]
    Build(#[source] crate::transport::Error),
}

/// How to reach and how hard to use the apiserver.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `--kubeconfig`; in-cluster or `$KUBECONFIG` when `None`.
    pub kubeconfig: Option<PathBuf>,
    /// `--kube-api-qps`: sustained requests per second (<= 0 for unlimited).
    pub qps: f64,
    /// `--kube-api-burst`: requests allowed at once above the sustained rate.
    pub burst: u32,
    /// Sent as the User-Agent, like upstream's `kube-controller-manager/v1.36.x`.
    pub user_agent: Option<String>,
}

impl Default for ClientOptions {
    /// client-go's defaults (5 QPS, burst 10); components override these.
    fn default() -> Self {
        Self {
            kubeconfig: None,
            qps: 5.0,
            burst: 10,
            user_agent: None,
        }
    }
}

/// Builds a rate-limited client from `opts`.
pub async fn build(opts: &ClientOptions) -> Result<kube::Client, Error> {
    let config = load_config(opts).await?;
    from_config(config, opts)
}

/// Loads the connection settings `opts` point at (the kubeconfig, or in-cluster/`$KUBECONFIG`).
pub async fn load_config(opts: &ClientOptions) -> Result<kube::Config, Error> {
    match &opts.kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.clone(),
                    source,
                })
        }
        None => kube::Config::infer().await.map_err(Error::Infer),
    }
}

/// Builds a rate-limited client from loaded settings, with `opts`' limits and user agent,
/// over a connection of its own.
pub fn from_config(config: kube::Config, opts: &ClientOptions) -> Result<kube::Client, Error> {
    from_config_on(config, opts, None)
}

/// The connections that clients built from `config` can share ([`from_config_on`]), as
/// client-go's transport cache shares one per TLS configuration; `None` for a proxied
/// configuration, whose clients keep kube's own stack.
pub fn shared_connections(
    config: &kube::Config,
) -> Result<Option<crate::transport::Connections>, Error> {
    if config.proxy_url.is_some() {
        return Ok(None);
    }
    crate::transport::connections(config)
        .map(Some)
        .map_err(Error::Build)
}

/// As [`from_config`], over `connections` when given (from [`shared_connections`] for a
/// configuration with the same server and TLS settings): the client keeps its own rate
/// limit, user agent and credentials, only the connection is shared.
pub fn from_config_on(
    mut config: kube::Config,
    opts: &ClientOptions,
    connections: Option<&crate::transport::Connections>,
) -> Result<kube::Client, Error> {
    if let Some(ua) = &opts.user_agent
        && let Ok(v) = http::HeaderValue::from_str(ua)
    {
        config.headers.push((http::header::USER_AGENT, v));
    }
    // kube's default retry re-sends 429/503/504 up to 15 times with backoff growing to
    // 1000 s, so one request to an aggregated API whose backend is down (503) blocks its
    // caller for minutes, each attempt taking a QPS token. client-go does not do that;
    // controllers retry through their work queues instead.
    config.default_retry = false;
    let builder = match connections {
        Some(pool) if config.proxy_url.is_none() => {
            crate::transport::client_builder_on(&config, pool.clone())
        }
        _ => crate::transport::client_builder(&config),
    }
    .map_err(Error::Build)?;
    let bucket = TokenBucket::new(opts.qps, opts.burst);
    Ok(builder.with_layer(&RateLimitLayer { bucket }).build())
}

/// A tower layer that makes every request wait for a token from a shared bucket.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    bucket: TokenBucket,
}

impl RateLimitLayer {
    /// A layer drawing from `bucket`.
    pub fn new(bucket: TokenBucket) -> Self {
        Self { bucket }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            bucket: self.bucket.clone(),
            state: Permit::None,
        }
    }
}

/// The service [`RateLimitLayer`] produces.
pub struct RateLimited<S> {
    inner: S,
    bucket: TokenBucket,
    state: Permit,
}

/// Where the next request stands with the bucket.
enum Permit {
    /// No token reserved yet.
    None,
    /// A token is reserved; it becomes usable when the sleep ends.
    Waiting(Pin<Box<tokio::time::Sleep>>),
    /// The token is usable: the next `call` may go.
    Granted,
}

impl<S, R> Service<R> for RateLimited<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                Permit::None => {
                    let delay = self.bucket.reserve();
                    self.state = if delay.is_zero() {
                        Permit::Granted
                    } else {
                        Permit::Waiting(Box::pin(tokio::time::sleep(delay)))
                    };
                }
                Permit::Waiting(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.state = Permit::Granted;
                }
                Permit::Granted => return self.inner.poll_ready(cx),
            }
        }
    }

    fn call(&mut self, req: R) -> Self::Future {
        // The token is spent on this request; the next one reserves anew.
        self.state = Permit::None;
        self.inner.call(req)
    }
}
