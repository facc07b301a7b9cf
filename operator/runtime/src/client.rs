//! A kube client with client-go's request rate limit (`--kube-api-qps`, `--kube-api-burst`).
//!
//! Every request, watches included, takes a token from one bucket per client before it is
//! sent, as client-go's `flowcontrol.NewTokenBucketRateLimiter` does. The wait happens in
//! `poll_ready`, so a request is never sent before its token is granted.
//!
//! A request that has to wait sleeps at least two token intervals (no less than
//! [`MIN_WAIT`], no more than [`MAX_WAIT`]), even when its own token falls due sooner.
//! The tokens that come due meanwhile are then there when it wakes, so the requests queued
//! behind it go at once, in the same turn of the event loop: they leave together, in one
//! write on the shared HTTP/2 connection (see `coalesce`), after one timer and one wake-up,
//! and their answers tend to come back together too. The average rate is unchanged, and no
//! request goes before its token: only a client the bucket is already holding back waits
//! this little longer. At 500 QPS a throttled request waited about 2 ms and at 20 QPS
//! 50 ms, and each cost its own timer, wake-ups and write.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

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
            // The bucket's rate never changes, so the floor is worked out once per client.
            floor: self.bucket.token_interval().map_or(MIN_WAIT, |t| {
                t.saturating_mul(GROUP_TOKENS).clamp(MIN_WAIT, MAX_WAIT)
            }),
            state: Permit::None,
            sleep: None,
        }
    }
}

/// The shortest sleep of a request the bucket makes wait (see the module docs).
pub const MIN_WAIT: Duration = Duration::from_millis(10);
/// The longest the grouping of throttled requests may hold one back past its token.
pub const MAX_WAIT: Duration = Duration::from_millis(100);
/// How many token intervals a throttled request sleeps at least.
const GROUP_TOKENS: u32 = 2;

/// The service [`RateLimitLayer`] produces.
pub struct RateLimited<S> {
    inner: S,
    bucket: TokenBucket,
    /// The shortest sleep of a throttled request: [`GROUP_TOKENS`] token intervals, within
    /// [`MIN_WAIT`]..=[`MAX_WAIT`].
    floor: Duration,
    state: Permit,
    /// The timer of the last wait, kept to be reset rather than allocated per request.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Where the next request stands with the bucket.
enum Permit {
    /// No token reserved yet.
    None,
    /// A token is reserved; it becomes usable when `sleep` ends.
    Waiting,
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
                    if delay.is_zero() {
                        self.state = Permit::Granted;
                        continue;
                    }
                    let until = tokio::time::Instant::now() + delay.max(self.floor);
                    match &mut self.sleep {
                        Some(sleep) => sleep.as_mut().reset(until),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(until))),
                    }
                    self.state = Permit::Waiting;
                }
                Permit::Waiting => {
                    if let Some(sleep) = &mut self.sleep
                        && sleep.as_mut().poll(cx).is_pending()
                    {
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

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;
    use tower::ServiceExt;

    use super::*;

    /// Records when each request was let through.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Instant>>>);

    impl Service<()> for Recorder {
        type Response = ();
        type Error = Infallible;
        type Future = std::future::Ready<Result<(), Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            self.0.lock().expect("lock").push(Instant::now());
            std::future::ready(Ok(()))
        }
    }

    /// Sends `n` requests one after another through a limiter of `qps`/`burst`; returns
    /// when each was let through, from the start.
    async fn release_times(qps: f64, burst: u32, n: usize) -> Vec<Duration> {
        let calls = Recorder::default();
        let mut svc = RateLimitLayer::new(TokenBucket::new(qps, burst)).layer(calls.clone());
        let start = Instant::now();
        for _ in 0..n {
            svc.ready()
                .await
                .expect("ready")
                .call(())
                .await
                .expect("call");
        }
        let at: Vec<Duration> = calls
            .0
            .lock()
            .expect("lock")
            .iter()
            .map(|t| *t - start)
            .collect();
        assert_eq!(at.len(), n);
        // Never ahead of the bucket: by time t at most burst + qps * t requests went.
        for (i, t) in at.iter().enumerate() {
            let allowed = f64::from(burst) + qps * t.as_secs_f64();
            assert!(
                (i + 1) as f64 <= allowed + 1e-6,
                "request {i} at {t:?} went early"
            );
        }
        // The average rate holds: the last request waits for its token plus at most one
        // grouping delay, not one per request.
        let due = Duration::from_secs_f64((n - burst as usize) as f64 / qps);
        let last = at[n - 1];
        assert!(
            last >= due && last <= due + MAX_WAIT,
            "last request at {last:?}, due {due:?}"
        );
        at
    }

    /// How many distinct instants the requests left at.
    fn instants(at: &[Duration]) -> usize {
        let mut v = at.to_vec();
        v.dedup();
        v.len()
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_requests_leave_together_and_never_early() {
        // 500 QPS: a token every 2 ms, a throttled request sleeps MIN_WAIT (10 ms), so they
        // go about five at a time.
        let at = release_times(500.0, 5, 105).await;
        assert!(
            instants(&at) <= 1 + 100 / 4,
            "{} release instants",
            instants(&at)
        );
        // 20 QPS (client-go's default): a token every 50 ms, two intervals is 100 ms, so
        // they go in pairs.
        let at = release_times(20.0, 5, 45).await;
        assert!(
            instants(&at) <= 1 + 40 / 2,
            "{} release instants",
            instants(&at)
        );
        // 2 QPS: two intervals would be a second; MAX_WAIT caps it, so each request goes
        // when its token does.
        let at = release_times(2.0, 1, 5).await;
        assert_eq!(instants(&at), 5);
    }
}
