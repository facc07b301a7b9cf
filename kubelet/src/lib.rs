//! ferrokube's kubelet: the node agent that registers a Node and runs its pods with real
//! OCI images, runc and CNI.
//!
//! ```text
//!   flags + --config ─▶ client ─▶ node_status: register Node, Lease every 10 s, status on change
//!                          │
//!                          ▼
//!   pod informer (spec.nodeName=<node>) ─▶ pod_workers (one per pod)
//!                                            ├─ images   (oci-client pull, content store, overlayfs)
//!                                            ├─ network  (netns + CNI bridge/host-local/loopback)
//!                                            ├─ volumes  (emptyDir, configMap, secret, projected)
//!                                            ├─ runtime  (OCI spec, runc under a log shim)
//!                                            └─ probes   (startup, liveness, readiness)
//!
//!   server: :10250 TLS ─▶ authn (client cert | TokenReview) ─▶ authz (SubjectAccessReview)
//!           ─▶ /healthz, /containerLogs (CRI log files), /exec (WebSocket ─▶ runc exec)
//! ```

pub mod eviction;
pub mod images;
pub mod io_error;
pub mod network;
pub mod node_status;
pub mod options;
pub mod pod_workers;
pub mod probes;
pub mod reset;
pub mod runtime;
pub mod server;
pub mod volumes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ferrokube_runtime::client::{self, ClientOptions};
use ferrokube_runtime::events::{self, Reporter};
use ferrokube_runtime::informer::{InformerFactory, Notification, Selectors};
use ferrokube_runtime::metrics::Metrics;
use ferrokube_runtime::server::{Health, Kind};
use ferrokube_runtime::shutdown;
use k8s_openapi::api::core::v1::{Node, Pod};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::network::Ipv4Cidr;
use crate::options::{Config, Flags};
use crate::runtime::Runtime;

/// Why the kubelet stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] options::ConfigError),
    /// The apiserver connection could not be set up.
    #[error(transparent)]
    Client(#[from] client::Error),
    /// The Node could not be registered.
    #[error(transparent)]
    Node(#[from] node_status::Error),
    /// A directory could not be made.
    #[error("creating {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The kubelet API's TLS could not be set up.
    #[error(transparent)]
    Tls(#[from] server::tls::Error),
    /// A server could not listen.
    #[error("listening on {addr}: {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How long running tasks get to finish after SIGTERM.
const GRACE: Duration = Duration::from_secs(5);

/// Runs the kubelet until SIGTERM/SIGINT. Pods keep running when it stops, as upstream's do.
pub async fn run(flags: Flags) -> Result<(), Error> {
    let config = Config::resolve(&flags)?;
    let shutdown = shutdown::on_signal();
    for dir in [
        config.root_dir.join("pods"),
        config.root_dir.join("runc"),
        config.pod_logs_dir.clone(),
    ] {
        std::fs::create_dir_all(&dir).map_err(|source| Error::Dir {
            path: dir.display().to_string(),
            source,
        })?;
    }
    let client = client::build(&ClientOptions {
        kubeconfig: config.kubeconfig.clone(),
        qps: config.kube_api_qps,
        burst: config.kube_api_burst,
        user_agent: Some(format!(
            "kubelet/{} (linux/{}) ferrokube/{}",
            node_status::KUBELET_VERSION,
            node_status::go_arch(),
            env!("CARGO_PKG_VERSION")
        )),
    })
    .await?;
    let shim = std::env::current_exe().map_err(|source| Error::Dir {
        path: "the kubelet's own binary".into(),
        source,
    })?;
    let runtime: Arc<dyn Runtime> = Arc::new(runtime::Runc::new(
        &config.runtime_binary,
        &config.root_dir.join("runc"),
        &shim,
    ));
    let node = node_status::register(&client, &config).await?;
    let node_uid = node.metadata.uid.clone().unwrap_or_default();
    let initial_cidr = node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.clone())
        .or(config.pod_cidr.clone())
        .and_then(|c| Ipv4Cidr::parse(&c).ok());
    let (cidr_tx, cidr_rx) = watch::channel(initial_cidr);
    let network = network::Network::new(
        &config.node_name,
        &config.cni_bin_dir,
        &config.cni_conf_dir,
        &config.root_dir,
    );
    if let Some(c) = &initial_cidr
        && let Err(e) = network.ensure_config(c)
    {
        tracing::warn!(error = %e, "writing the CNI config");
    }

    let mut tasks = JoinSet::new();
    let health = Health::new();
    health.add("syncloop", Kind::Liveness, || Ok(()));
    let metrics = Metrics::new();
    if config.healthz_port != 0 {
        let addr = SocketAddr::new(config.healthz_bind_address, config.healthz_port);
        let (bound, task) =
            server::serve_health(addr, health.clone(), metrics.clone(), shutdown.clone())
                .await
                .map_err(|source| Error::Serve { addr, source })?;
        tracing::info!(%bound, "serving /healthz");
        tasks.spawn(async move {
            let _ = task.await;
        });
    }
    let (recorder, events_task) = events::start(
        client.clone(),
        Reporter {
            controller: "kubelet".into(),
            instance: config.node_name.clone(),
        },
        shutdown.clone(),
    );
    // As upstream's kubelet: its events go through client-go's spam filter.
    let recorder = recorder.with_spam_filter(events::SpamFilter::legacy());
    tasks.spawn(async move {
        let _ = events_task.await;
    });
    tasks.spawn(node_status::run_lease(
        client.clone(),
        config.node_name.clone(),
        node_uid,
        config.node_lease_duration_seconds,
        shutdown.clone(),
    ));

    let factory = InformerFactory::new(client.clone());
    let nodes = factory.informer_with::<Node>(Selectors {
        field_selector: Some(format!("metadata.name={}", config.node_name)),
        ..Default::default()
    });
    let pods = factory.informer_with::<Pod>(Selectors {
        field_selector: Some(format!("spec.nodeName={}", config.node_name)),
        ..Default::default()
    });
    factory.start(&mut tasks, &shutdown);

    if config.api.port != 0 {
        let (cert, key) = server::tls::serving_files(
            &config.api,
            &config.node_name,
            &config.hostname,
            &[config.node_ip],
        )?;
        let tls = server::tls::server_config(&cert, &key, config.api.client_ca_file.as_deref())?;
        let api = Arc::new(server::Api {
            auth: server::auth::Auth::new(client.clone(), &config.node_name, &config.api),
            config: config.clone(),
            pods: pods.store(),
            runtime: runtime.clone(),
            health: health.clone(),
        });
        let addr = SocketAddr::new(config.api.address, config.api.port);
        let (bound, task) = server::serve_api(addr, tls, api, shutdown.clone())
            .await
            .map_err(|source| Error::Serve { addr, source })?;
        tracing::info!(%bound, "serving the kubelet API");
        tasks.spawn(async move {
            let _ = task.await;
        });
    }

    // The node's podCIDR may arrive later (node-ipam); the flag is the fallback.
    {
        let mut rx = nodes.subscribe();
        let (fallback, network, shutdown) =
            (config.pod_cidr.clone(), network.clone(), shutdown.clone());
        tasks.spawn(async move {
            loop {
                let n = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = rx.recv() => n,
                };
                let Some(n) = n else { return };
                if let Notification::Added(node) | Notification::Updated { new: node, .. } = n {
                    let cidr = node
                        .spec
                        .as_ref()
                        .and_then(|s| s.pod_cidr.clone())
                        .or(fallback.clone())
                        .and_then(|c| Ipv4Cidr::parse(&c).ok());
                    if cidr.is_some() && *cidr_tx.borrow() != cidr {
                        if let Some(c) = &cidr
                            && let Err(e) = network.ensure_config(c)
                        {
                            tracing::warn!(error = %e, "writing the CNI config");
                        }
                        let _ = cidr_tx.send(cidr);
                    }
                }
            }
        });
    }

    {
        let mut reporter =
            node_status::StatusReporter::new(client.clone(), config.clone(), runtime.version());
        let (runtime, network, cidr, shutdown) = (
            runtime.clone(),
            network.clone(),
            cidr_rx.clone(),
            shutdown.clone(),
        );
        let period = config.node_status_update_frequency;
        tasks.spawn(async move {
            loop {
                let ready = node_status::Readiness {
                    runtime_error: runtime.ready().err(),
                    network_error: if cidr.borrow().is_none() {
                        Some("network plugin not ready: no pod CIDR (Node.spec.podCIDR or --pod-cidr)".into())
                    } else {
                        network.ready().err()
                    },
                };
                if let Err(e) = reporter.sync(&ready).await {
                    tracing::warn!(error = %e, "updating node status");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
            }
        });
    }

    let kubelet = Arc::new(pod_workers::Kubelet {
        images: images::ImageStore::new(&config.root_dir, config.insecure_registries.clone()),
        config,
        client,
        recorder,
        runtime,
        network,
        pod_cidr: cidr_rx,
    });
    tasks.spawn(pod_workers::run(kubelet, pods, shutdown.clone()));
    shutdown.cancelled().await;
    shutdown::drain(tasks, GRACE).await;
    Ok(())
}
