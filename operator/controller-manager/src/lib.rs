//! ferrokube's controller-manager: upstream's control loops on the ferrokube runtime.
//!
//! ```text
//!   flags ─▶ client (QPS/burst) ─▶ health + metrics server
//!                 │
//!                 ▼
//!   leader election on Lease kube-system/kube-controller-manager
//!                 │ elected
//!                 ▼
//!   shared informers ──▶ controllers (one module each, upstream names) ──▶ apiserver
//! ```
//!
//! Losing the lease ends the process with an error, as upstream does, so a restarted
//! process starts from fresh caches instead of acting on stale leadership.

pub mod context;
pub mod controller_ref;
pub mod controller_utils;
pub mod controllers;
pub mod credentials;
pub mod expectations;
pub mod node_util;
pub mod options;
pub mod selection;
pub mod status_writer;
pub mod transform;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use ferrokube_runtime::client::{self, ClientOptions};
use ferrokube_runtime::informer::InformerFactory;
use ferrokube_runtime::leader_election::{self, LeaderElector};
use ferrokube_runtime::metrics::Metrics;
use ferrokube_runtime::server::{self, Health, Kind};
use ferrokube_runtime::shutdown;
use tokio::task::JoinSet;

use crate::context::Context;
use crate::options::Options;

/// Why the controller-manager stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value was refused.
    #[error("invalid flags: {0}")]
    Flags(String),
    /// The apiserver connection could not be set up.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// Leader election failed or leadership was lost.
    #[error(transparent)]
    LeaderElection(#[from] leader_election::Error),
    /// The health server could not listen.
    #[error("serving health and metrics on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory for per-controller tokens could not be made.
    #[error("creating token directory {path}: {source}")]
    TokenDir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The root CA file could not be read.
    #[error("reading --root-ca-file {path}: {source}")]
    RootCa {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A controller could not start.
    #[error(transparent)]
    Start(#[from] controllers::StartError),
    /// A controller's own credentials could not be set up.
    #[error(transparent)]
    Credentials(#[from] credentials::Error),
}

/// How long running controllers get to finish after shutdown or loss of leadership.
const GRACE: Duration = Duration::from_secs(10);

/// The controllers `flags` turn on, after checking every name.
pub fn enabled_controllers(
    flags: &[String],
) -> Result<Vec<&'static controllers::Descriptor>, Error> {
    let known = controllers::known_names();
    let normalized = selection::normalize(&known, flags).map_err(|unknown| {
        Error::Flags(
            unknown
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    Ok(controllers::ALL
        .iter()
        .filter(|d| selection::is_enabled(&d.known, &normalized))
        .collect())
}

/// Runs the controller-manager until SIGTERM/SIGINT (or loss of leadership).
pub async fn run(options: Options) -> Result<(), Error> {
    validate(&options)?;
    let enabled = enabled_controllers(&options.controllers)?;
    let shutdown = shutdown::on_signal();
    let client_options = ClientOptions {
        kubeconfig: options.kubeconfig.clone(),
        qps: options.kube_api_qps,
        burst: options.kube_api_burst,
        user_agent: Some(format!(
            "ferrokube-controller-manager/{}",
            env!("CARGO_PKG_VERSION")
        )),
    };
    let config = client::load_config(&client_options).await?;
    let root_ca = root_ca(&options, &config)?;
    // One HTTP/2 connection for the manager's clients, as client-go's transport cache gives
    // upstream's (each client still has its own QPS budget and user agent).
    let connections = client::shared_connections(&config)?;
    let client = client::from_config_on(config.clone(), &client_options, connections.as_ref())?;
    // The informers list and watch through a client (and QPS budget) of their own, as
    // upstream's "shared-informers" client: at start-up the garbage collector's monitors
    // alone list and watch dozens of resources, and sharing one budget with leader
    // election or a controller delays both.
    let informer_client = {
        let mut options = client_options.clone();
        options.user_agent = options
            .user_agent
            .map(|ua| format!("{ua}/shared-informers"));
        client::from_config_on(config.clone(), &options, connections.as_ref())?
    };
    let token_dir = std::env::temp_dir().join(format!(
        "ferrokube-controller-manager-{}",
        std::process::id()
    ));
    let credentials = if options.use_service_account_credentials {
        create_private_dir(&token_dir).map_err(|source| Error::TokenDir {
            path: token_dir.display().to_string(),
            source,
        })?;
        credentials::ControllerClients::ServiceAccounts(
            credentials::ServiceAccountCredentials::new(
                client.clone(),
                config,
                client_options.clone(),
                &token_dir,
            ),
        )
    } else {
        credentials::ControllerClients::Shared {
            config,
            options: client_options.clone(),
            connections: connections.map(Box::new),
        }
    };
    let credentials = Arc::new(credentials);

    let metrics = Metrics::new();
    let health = Health::new();
    let mut tasks = JoinSet::new();
    if options.secure_port != 0 {
        let addr = SocketAddr::new(options.bind_address, options.secure_port);
        let (bound, task) = server::serve(addr, health.clone(), metrics.clone(), shutdown.clone())
            .await
            .map_err(|source| Error::Serve { addr, source })?;
        tracing::info!(%bound, "serving /healthz, /readyz, /livez and /metrics");
        tasks.spawn(async move {
            let _ = task.await;
        });
    }

    let identity = leader_election::default_identity();
    let options = Arc::new(options);
    let leading = Arc::new(AtomicBool::new(!options.leader_elect));
    {
        let leading = leading.clone();
        let electing = options.leader_elect;
        health.add("leaderElection", Kind::Readiness, move || {
            if !electing || leading.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("not the leader".into())
            }
        });
    }
    let ctx = Context {
        client: client.clone(),
        informers: Arc::new(
            InformerFactory::new(informer_client)
                .with_resync(resync_period(options.min_resync_period)),
        ),
        metrics,
        options: options.clone(),
        shutdown: shutdown.clone(),
        root_ca,
        identity: identity.clone(),
    };

    let result = if options.leader_elect {
        let mut config = leader_election::Config::new(
            &options.leader_elect_resource_namespace,
            &options.leader_elect_resource_name,
            &identity,
        );
        config.lease_duration = options.leader_elect_lease_duration;
        config.renew_deadline = options.leader_elect_renew_deadline;
        config.retry_period = options.leader_elect_retry_period;
        let elector = LeaderElector::new(client, config)?;
        tracing::info!(%identity, "attempting to acquire leader lease");
        let outcome = std::sync::Arc::new(std::sync::Mutex::new(Ok(())));
        let result_slot = outcome.clone();
        let flag = leading.clone();
        let elected = elector
            .run(shutdown.clone(), move |lost| async move {
                flag.store(true, Ordering::SeqCst);
                let ctx = Context {
                    shutdown: lost,
                    ..ctx
                };
                let r = run_controllers(ctx, enabled, credentials).await;
                if let Ok(mut slot) = result_slot.lock() {
                    *slot = r;
                }
            })
            .await;
        leading.store(false, Ordering::SeqCst);
        let ran = outcome
            .lock()
            .map(|mut r| std::mem::replace(&mut *r, Ok(())))
            .unwrap_or(Ok(()));
        elected.map_err(Error::from).and(ran)
    } else {
        run_controllers(ctx, enabled, credentials).await
    };
    shutdown.cancel();
    shutdown::drain(tasks, GRACE).await;
    if token_dir.exists() {
        let _ = std::fs::remove_dir_all(&token_dir);
    }
    result
}

/// Starts the enabled controllers and their informers, then waits for `ctx.shutdown`.
async fn run_controllers(
    ctx: Context,
    enabled: Vec<&'static controllers::Descriptor>,
    credentials: Arc<credentials::ControllerClients>,
) -> Result<(), Error> {
    let mut tasks = JoinSet::new();
    for d in enabled {
        match d.start {
            Some(start) => {
                // Informers share the manager's own client (upstream's "shared-informers");
                // each controller writes through a client of its own, with its own QPS
                // budget and, when asked, its own ServiceAccount.
                let own = Context {
                    client: credentials
                        .client(
                            credentials::client_name(d.known.name),
                            &mut tasks,
                            &ctx.shutdown,
                        )
                        .await?,
                    ..ctx.clone()
                };
                start(&own, &mut tasks)?;
                tracing::info!(controller = d.known.name, "started controller");
            }
            None => tracing::warn!(
                controller = d.known.name,
                "controller is not implemented by ferrokube yet; skipping"
            ),
        }
    }
    ctx.informers.start(&mut tasks, &ctx.shutdown);
    ctx.shutdown.cancelled().await;
    tracing::info!("stopping controllers");
    shutdown::drain(tasks, GRACE).await;
    Ok(())
}

fn validate(options: &Options) -> Result<(), Error> {
    if options.leader_elect_resource_lock != "leases" {
        return Err(Error::Flags(format!(
            "--leader-elect-resource-lock={:?}: only \"leases\" is supported",
            options.leader_elect_resource_lock
        )));
    }
    Ok(())
}

/// Makes `dir` readable by this user only (it holds tokens).
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// client-go's `ResyncPeriod`: a random period in [min, 2*min) so that informers of
/// several processes don't resync in lockstep.
fn resync_period(min: Duration) -> Duration {
    min.mul_f64(1.0 + rand::random::<f64>())
}

/// The CA bundle to publish: `--root-ca-file`, or the CA the client trusts.
fn root_ca(options: &Options, config: &kube::Config) -> Result<Option<Arc<String>>, Error> {
    if let Some(path) = &options.root_ca_file {
        let pem = std::fs::read_to_string(path).map_err(|source| Error::RootCa {
            path: path.display().to_string(),
            source,
        })?;
        return Ok(Some(Arc::new(pem)));
    }
    Ok(config.root_cert.as_ref().map(|ders| {
        let mut pem = String::new();
        for der in ders {
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            for line in b64.as_bytes().chunks(64) {
                pem.push_str(&String::from_utf8_lossy(line));
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        }
        Arc::new(pem)
    }))
}
