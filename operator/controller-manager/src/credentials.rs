//! `--use-service-account-credentials`: each controller talks to the apiserver as its own
//! ServiceAccount in kube-system (`system:serviceaccount:kube-system:<name>`), so RBAC's
//! bootstrap `system:controller:<name>` roles limit what each one can do — upstream's
//! `SAControllerClientBuilder`.
//!
//! Tokens come from the TokenRequest API and are written to files that the kube client
//! re-reads every minute; a refresher task replaces each token at 80% of its lifetime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferrokube_runtime::apierrors;
use ferrokube_runtime::client::{self, ClientOptions};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The namespace of the controllers' ServiceAccounts.
pub const NAMESPACE: &str = "kube-system";
/// Requested token lifetime (upstream asks for one hour).
const TOKEN_LIFETIME: i64 = 3600;

/// Failures setting up a controller's credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ServiceAccount or its token could not be obtained.
    #[error("credentials for {account}: {source}")]
    Api {
        /// The ServiceAccount.
        account: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The token file could not be written.
    #[error("writing token for {account} to {path}: {source}")]
    Io {
        /// The ServiceAccount.
        account: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The client could not be built.
    #[error(transparent)]
    Client(#[from] client::Error),
}

/// The user name upstream's controller uses for its client (and so its ServiceAccount).
pub fn client_name(controller: &str) -> &'static str {
    match controller {
        "serviceaccount-controller" => "service-account-controller",
        "root-ca-certificate-publisher-controller" => "root-ca-cert-publisher",
        "replicaset-controller" => "replicaset-controller",
        "deployment-controller" => "deployment-controller",
        "replicationcontroller-controller" => "replication-controller",
        "namespace-controller" => "namespace-controller",
        "garbage-collector-controller" => "generic-garbage-collector",
        "endpointslice-controller" => "endpointslice-controller",
        "endpoints-controller" => "endpoint-controller",
        "endpointslice-mirroring-controller" => "endpointslicemirroring-controller",
        "node-ipam-controller" | "node-lifecycle-controller" | "taint-eviction-controller" => {
            "node-controller"
        }
        "pod-garbage-collector-controller" => "pod-garbage-collector",
        "daemonset-controller" => "daemon-set-controller",
        "statefulset-controller" => "statefulset-controller",
        "job-controller" => "job-controller",
        "cronjob-controller" => "cronjob-controller",
        "ttl-after-finished-controller" => "ttl-after-finished-controller",
        "disruption-controller" => "disruption-controller",
        "resourcequota-controller" => "resourcequota-controller",
        "ttl-controller" => "ttl-controller",
        "clusterrole-aggregation-controller" => "clusterrole-aggregation-controller",
        // Controllers without a dedicated upstream identity share the generic one.
        _ => "generic-garbage-collector",
    }
}

/// Where each controller's client comes from.
pub enum ControllerClients {
    /// The manager's own credentials; still one client (and QPS budget) per controller, as
    /// upstream's `SimpleControllerClientBuilder` gives.
    Shared {
        /// The loaded connection settings.
        config: kube::Config,
        /// QPS, burst and user agent.
        options: ClientOptions,
        /// The connection every client shares (`None` for a proxied configuration).
        connections: Option<Box<ferrokube_runtime::transport::Connections>>,
    },
    /// One ServiceAccount per controller.
    ServiceAccounts(ServiceAccountCredentials),
}

impl ControllerClients {
    /// A client for the controller whose upstream client name is `name`.
    pub async fn client(
        &self,
        name: &str,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Result<kube::Client, Error> {
        match self {
            Self::Shared {
                config,
                options,
                connections,
            } => {
                let mut options = options.clone();
                options.user_agent = options.user_agent.map(|ua| format!("{ua}/{name}"));
                Ok(client::from_config_on(
                    config.clone(),
                    &options,
                    connections.as_deref(),
                )?)
            }
            Self::ServiceAccounts(creds) => creds.client(name, tasks, shutdown).await,
        }
    }
}

/// Hands out per-controller clients authenticated as ServiceAccounts.
pub struct ServiceAccountCredentials {
    admin: kube::Client,
    base: kube::Config,
    options: ClientOptions,
    dir: PathBuf,
}

impl ServiceAccountCredentials {
    /// `admin` creates the ServiceAccounts and requests tokens; `base` gives the server and
    /// CA; token files go to `dir`.
    pub fn new(
        admin: kube::Client,
        base: kube::Config,
        options: ClientOptions,
        dir: &Path,
    ) -> Self {
        Self {
            admin,
            base,
            options,
            dir: dir.to_path_buf(),
        }
    }

    /// A client authenticated as `account`, kept fresh by a task in `tasks`.
    pub async fn client(
        &self,
        account: &str,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Result<kube::Client, Error> {
        let api_err = |source| Error::Api {
            account: account.to_string(),
            source,
        };
        let accounts: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), NAMESPACE);
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(account.to_string()),
                namespace: Some(NAMESPACE.to_string()),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        match accounts.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(e) if apierrors::is_already_exists(&e) => {}
            Err(e) => return Err(api_err(e)),
        }
        let path = self.dir.join(format!("{account}.token"));
        let lifetime = refresh(&accounts, account, &path).await?;

        let mut config = self.base.clone();
        config.auth_info = kube::config::AuthInfo {
            token_file: Some(path.display().to_string()),
            ..kube::config::AuthInfo::default()
        };
        let client = client::from_config(config, &self.options)?;

        let account = account.to_string();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut next = lifetime.mul_f64(0.8);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(next) => {}
                }
                next = match refresh(&accounts, &account, &path).await {
                    Ok(lifetime) => lifetime.mul_f64(0.8),
                    Err(e) => {
                        tracing::warn!(%account, error = %e, "refreshing token failed; retrying");
                        Duration::from_secs(10)
                    }
                };
            }
        });
        Ok(client)
    }
}

/// Requests a fresh token for `account` and writes it to `path`; returns its lifetime.
async fn refresh(
    accounts: &Api<ServiceAccount>,
    account: &str,
    path: &Path,
) -> Result<Duration, Error> {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(TOKEN_LIFETIME),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    let granted = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .map_err(|source| Error::Api {
            account: account.to_string(),
            source,
        })?;
    let status = granted.status.unwrap_or_default();
    let io = |source| Error::Io {
        account: account.to_string(),
        path: path.to_path_buf(),
        source,
    };
    // Written beside and renamed over, so a reader never sees half a token.
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(status.token.unwrap_or_default().as_bytes())
            .map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    // Refresh no more often than once a minute, even if the apiserver shortened the token.
    let remaining = status
        .expiration_timestamp
        .and_then(|t| {
            Duration::try_from(t.0.duration_since(k8s_openapi::jiff::Timestamp::now())).ok()
        })
        .unwrap_or(Duration::from_secs(60));
    Ok(remaining.max(Duration::from_secs(60)))
}
