//! ferrokube's Ingress controller: networking.k8s.io/v1 Ingresses served by an in-process
//! reverse proxy, configured through typed values only.
//!
//! ```text
//!   informers (Ingress, IngressClass, Service, EndpointSlice) + one watch per referenced
//!   Secret (TLS certificates, basic-auth users)
//!        │ any change
//!        ▼
//!   controller::compile ──▶ routing::Table + tls::CertStore  (immutable, swapped atomically)
//!                                  │ load() per request / handshake
//!                                  ▼
//!   HTTP :80 / HTTPS :443 ─┬─▶ fast_path: GET/HEAD keep-alive on a route that only
//!                          │   proxies (own HTTP/1.1 codec) ──▶ balancer ──▶ pooled sockets
//!                          └─▶ proxy (hyper; everything else, for the rest of the
//!                              connection): redirects, CORS, limits, auth ──▶ balancer
//!                              (cookie affinity) ──▶ pooled upstream connections
//!
//!   status (leader only) ──▶ Ingress status.loadBalancer
//! ```
//!
//! There is no configuration file and no reload: a route change is one pointer swap, so no
//! connection is ever dropped by it.

pub mod access_log;
pub mod affinity;
pub mod annotations;
pub mod auth;
pub mod balancer;
pub mod class;
pub mod controller;
pub mod cors;
mod fast_path;
pub mod keepalive;
pub mod options;
pub mod proxy;
pub mod ratelimit;
pub mod routing;
pub mod status;
pub mod tls;
pub mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use ferrokube_runtime::client::{self, ClientOptions};
use ferrokube_runtime::events::{self, Reporter};
use ferrokube_runtime::informer::{InformerFactory, ObjectKey};
use ferrokube_runtime::leader_election::{self, LeaderElector};
use ferrokube_runtime::metrics::Metrics;
use ferrokube_runtime::server::{self, Health, Kind};
use ferrokube_runtime::shutdown;
use tokio::task::JoinSet;

use crate::class::Selection;
use crate::controller::{Controller, Shared};
use crate::options::Options;
use crate::proxy::{Proxy, RequestCounter, Settings};

/// The map the request path looks things up in (routes by host and path, idle upstream
/// connections, request counters). std's default SipHash costs more than the lookup
/// itself for these short keys; foldhash is seeded per map, and the keys that come from
/// requests are only looked up, never inserted, so they cannot grow a bucket.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The name events are reported under.
pub const COMPONENT: &str = "ferrokube-ingress-controller";

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value was refused.
    #[error("invalid flags: {0}")]
    Flags(String),
    /// The apiserver connection could not be set up.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// Leader election failed.
    #[error(transparent)]
    LeaderElection(#[from] leader_election::Error),
    /// A listener could not be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] tls::Error),
    /// The proxy's worker threads could not be started.
    #[error("starting proxy workers: {0}")]
    Workers(#[source] std::io::Error),
}

fn object_key(flag: &str, value: &str) -> Result<ObjectKey, Error> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectKey::new(ns, name))
        }
        _ => Err(Error::Flags(format!(
            "--{flag}={value:?}: want namespace/name"
        ))),
    }
}

/// Runs until SIGTERM/SIGINT, then drains connections for `--shutdown-grace-period`.
pub async fn run(options: Options) -> Result<(), Error> {
    let default_secret = options
        .default_ssl_certificate
        .as_deref()
        .map(|v| object_key("default-ssl-certificate", v))
        .transpose()?;
    let publish_service = options
        .publish_service
        .as_deref()
        .map(|v| object_key("publish-service", v))
        .transpose()?;
    let body_size = {
        let (c, w) = annotations::parse(
            &[(
                format!("{}proxy-body-size", annotations::PREFIX),
                options.proxy_body_size.clone(),
            )]
            .into(),
        );
        match (c.body_size, w.first()) {
            (Some(s), None) => s,
            _ => {
                return Err(Error::Flags(format!(
                    "--proxy-body-size={:?}: want a size like 1m",
                    options.proxy_body_size
                )));
            }
        }
    };

    let shutdown = shutdown::on_signal();
    let client = client::build(&ClientOptions {
        kubeconfig: options.kubeconfig.clone(),
        qps: options.kube_api_qps,
        burst: options.kube_api_burst,
        user_agent: Some(format!("{COMPONENT}/{}", env!("CARGO_PKG_VERSION"))),
    })
    .await?;

    let metrics = Metrics::new();
    let requests = RequestCounter::default();
    metrics.register(
        "ferrokube_ingress_controller_requests",
        "Requests served, by Ingress and status code",
        requests.clone(),
    );
    let health = Health::new();
    let ready = Arc::new(AtomicBool::new(false));
    {
        let ready = ready.clone();
        health.add("routes", Kind::Readiness, move || {
            if ready.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("routing table not built yet".into())
            }
        });
    }
    let mut tasks = JoinSet::new();
    // Listeners stop accepting on the signal; the rest of the process (informers, status)
    // keeps running until connections have drained, so routes stay current meanwhile.
    let stop_rest = tokio_util::sync::CancellationToken::new();
    if options.healthz_port != 0 {
        let addr = SocketAddr::new(options.healthz_host, options.healthz_port);
        let (bound, task) = server::serve(addr, health.clone(), metrics.clone(), stop_rest.clone())
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        tracing::info!(%bound, "serving /healthz, /readyz, /livez and /metrics");
        tasks.spawn(async move {
            let _ = task.await;
        });
    }

    let fallback_cert = tls::self_signed()?;
    let shared = Shared {
        table: Arc::new(ArcSwap::from_pointee(routing::Table::default())),
        certs: Arc::new(ArcSwap::from_pointee(tls::CertStore::new(
            fallback_cert.clone(),
        ))),
        ready: ready.clone(),
    };
    let informers = Arc::new(InformerFactory::new(client.clone()));
    let (recorder, events_task) = events::start(
        client.clone(),
        Reporter {
            controller: COMPONENT.to_string(),
            instance: leader_election::default_identity(),
        },
        stop_rest.clone(),
    );
    let (ours_tx, ours_rx) = tokio::sync::watch::channel(Vec::new());
    let controller = Controller {
        selection: Selection {
            controller: options.controller_class.clone(),
            legacy_class: options.ingress_class.clone(),
            without_class: options.watch_ingress_without_class,
        },
        client: client.clone(),
        recorder,
        shared: shared.clone(),
        ours: ours_tx,
        default_secret,
        fallback_cert,
    };
    let watched = controller::Informers::new(&informers);
    let services = watched.services();
    tasks.spawn(controller.run(watched, stop_rest.clone()));
    informers.start(&mut tasks, &stop_rest);
    tasks.spawn(async move {
        let _ = events_task.await;
    });

    if options.update_status {
        let source = status::Source {
            addresses: options.publish_status_address.clone(),
            service: publish_service.map(|k| (k, services)),
        };
        let (client, stop) = (client.clone(), stop_rest.clone());
        if options.leader_elect {
            let identity = leader_election::default_identity();
            let elector = LeaderElector::new(
                client.clone(),
                leader_election::Config::new(
                    &options.election_namespace,
                    &options.election_id,
                    &identity,
                ),
            )?;
            tasks.spawn(async move {
                let r = elector
                    .run(stop, move |leading| {
                        status::run(client, source, ours_rx, leading)
                    })
                    .await;
                if let Err(e) = r {
                    // Only status writes depend on the lease; traffic keeps flowing.
                    tracing::error!(error = %e, "leader election for status updates ended");
                }
            });
        } else {
            tasks.spawn(status::run(client, source, ours_rx, stop));
        }
    }

    let proxy = Arc::new(Proxy::new(
        shared.clone(),
        Settings {
            https_redirect_port: options.https_redirect_port,
            connect_timeout: options.proxy_connect_timeout,
            read_timeout: options.proxy_read_timeout,
            body_size,
            load_balance: options.load_balance,
            log_format: options.logging_format,
        },
        requests,
    ));
    let http_addr = SocketAddr::new(options.bind_address, options.http_port);
    let https_addr = SocketAddr::new(options.bind_address, options.https_port);
    let workers = workers::count(options.worker_threads);
    let listen =
        |addr| workers::bind(addr, workers).map_err(|source| Error::Listen { addr, source });
    let listeners = listen(http_addr)?
        .into_iter()
        .zip(listen(https_addr)?)
        .map(|(http, https)| workers::Listeners { http, https })
        .collect();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(shared.certs.clone())?));
    tracing::info!(http = %http_addr, https = %https_addr, workers, "proxy listening");
    let grace = options.shutdown_grace_period;
    let drained =
        workers::start(listeners, &acceptor, &proxy, &shutdown, grace).map_err(Error::Workers)?;

    shutdown.cancelled().await;
    tracing::info!(?grace, "draining connections");
    ready.store(false, Ordering::SeqCst);
    drained.await;
    stop_rest.cancel();
    shutdown::drain(tasks, Duration::from_secs(5)).await;
    Ok(())
}
