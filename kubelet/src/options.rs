//! Command-line flags and the `--config` KubeletConfiguration file, with upstream names.
//!
//! As upstream, a flag given on the command line wins over the same field in the config
//! file, which wins over the built-in default. Several kubelets share one machine by giving
//! each its own `--hostname-override`, `--root-dir`, `--pod-cidr` and ports.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use ferrokube_runtime::flags::parse_duration;
use ferrokube_runtime::logging::Format;
use serde::Deserialize;

/// kubelet flags that ferrokube honours.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ferrokube-kubelet",
    version,
    about = "The node agent: registers the Node and runs its pods (a drop-in for the kubelet)."
)]
pub struct Flags {
    /// Path to a kubeconfig; in-cluster configuration when unset.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A KubeletConfiguration file (kubelet.config.k8s.io/v1beta1); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The node's name instead of the machine's hostname.
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// Where pods' state (volumes, rootfs, network records) lives.
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub root_dir: PathBuf,
    /// The node's InternalIP address (127.0.0.1 when unset: everything stays on this machine).
    #[arg(long)]
    pub node_ip: Option<IpAddr>,
    /// The pod range used while the Node has no spec.podCIDR (set on registration).
    #[arg(long)]
    pub pod_cidr: Option<String>,
    /// Port of the plain-HTTP /healthz endpoint (0 disables it).
    #[arg(long)]
    pub healthz_port: Option<u16>,
    /// Address the /healthz endpoint listens on.
    #[arg(long)]
    pub healthz_bind_address: Option<IpAddr>,
    /// Port of the authenticated kubelet API (logs, exec); upstream's 10250.
    #[arg(long)]
    pub port: Option<u16>,
    /// Address the kubelet API listens on (default 0.0.0.0).
    #[arg(long)]
    pub address: Option<IpAddr>,
    /// Serving certificate of the kubelet API; without it one is generated under the root dir.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// Key of `--tls-cert-file`.
    #[arg(long)]
    pub tls_private_key_file: Option<PathBuf>,
    /// Where a generated serving certificate goes (default `<root-dir>/pki`).
    #[arg(long)]
    pub cert_dir: Option<PathBuf>,
    /// CA bundle that client certificates of the kubelet API must chain to.
    #[arg(long)]
    pub client_ca_file: Option<PathBuf>,
    /// Let unauthenticated requests through as `system:anonymous` (default false).
    #[arg(long)]
    pub anonymous_auth: Option<bool>,
    /// Authenticate bearer tokens with TokenReview (default true).
    #[arg(long)]
    pub authentication_token_webhook: Option<bool>,
    /// How long TokenReview answers are cached (default 2m).
    #[arg(long, value_parser = parse_duration)]
    pub authentication_token_webhook_cache_ttl: Option<Duration>,
    /// `AlwaysAllow` or `Webhook` (SubjectAccessReview; the default).
    #[arg(long)]
    pub authorization_mode: Option<String>,
    /// How long an allowed SubjectAccessReview is cached (default 5m).
    #[arg(long, value_parser = parse_duration)]
    pub authorization_webhook_cache_authorized_ttl: Option<Duration>,
    /// How long a denied SubjectAccessReview is cached (default 30s).
    #[arg(long, value_parser = parse_duration)]
    pub authorization_webhook_cache_unauthorized_ttl: Option<Duration>,
    /// Most pods this node runs.
    #[arg(long)]
    pub max_pods: Option<u32>,
    /// Extra labels for the Node (`key=value,...`) on registration.
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Taints registered with the Node (`key=value:Effect,...`).
    #[arg(long, value_delimiter = ',')]
    pub register_with_taints: Vec<String>,
    /// How often node status is computed and, when changed, posted.
    #[arg(long, value_parser = parse_duration)]
    pub node_status_update_frequency: Option<Duration>,
    /// How often running pods are fully re-synced: ConfigMap, Secret and token volumes are
    /// refreshed in place at this period.
    #[arg(long, value_parser = parse_duration)]
    pub sync_frequency: Option<Duration>,
    /// DNS server IPs written into pods' resolv.conf for dnsPolicy ClusterFirst.
    #[arg(long, value_delimiter = ',')]
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain (search paths for ClusterFirst pods).
    #[arg(long)]
    pub cluster_domain: Option<String>,
    /// Disk usage percent above which unused images are removed.
    #[arg(long)]
    pub image_gc_high_threshold: Option<u8>,
    /// Disk usage percent image garbage collection frees down to.
    #[arg(long)]
    pub image_gc_low_threshold: Option<u8>,
    /// Where container logs go (`<dir>/<ns>_<pod>_<uid>/<container>/<restart>.log`).
    #[arg(long)]
    pub pod_logs_dir: Option<PathBuf>,
    /// Directory of the CNI plugin binaries.
    #[arg(long, default_value = "/usr/lib/cni")]
    pub cni_bin_dir: PathBuf,
    /// Directory of CNI network configurations; `<root-dir>/cni/net.d` when unset.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// The OCI runtime binary.
    #[arg(long, default_value = "runc")]
    pub runtime_binary: PathBuf,
    /// Cgroup under which pod cgroups (`kubepods/pod<uid>`) are made.
    #[arg(long)]
    pub cgroup_root: Option<String>,
    /// Registries reached over plain HTTP (`host:port`), besides loopback ones.
    #[arg(long, value_delimiter = ',')]
    pub insecure_registries: Vec<String>,
    /// Hard eviction thresholds, `memory.available<100Mi,nodefs.available<10%` (upstream's
    /// defaults); any value replaces the whole set, signals left out are off.
    #[arg(long)]
    pub eviction_hard: Option<String>,
    /// Sustained requests per second to the apiserver.
    #[arg(long)]
    pub kube_api_qps: Option<f64>,
    /// Requests allowed in a burst above --kube-api-qps.
    #[arg(long)]
    pub kube_api_burst: Option<u32>,
    /// klog-style verbosity (0-10).
    #[arg(short = 'v', long = "v", default_value_t = 2)]
    pub verbosity: u8,
    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub logging_format: Format,
}

/// The subset of KubeletConfiguration (kubelet.config.k8s.io/v1beta1) read from `--config`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubeletConfiguration {
    /// Must be `KubeletConfiguration` when set.
    pub kind: Option<String>,
    /// Must be `kubelet.config.k8s.io/v1beta1` when set.
    pub api_version: Option<String>,
    /// See `--pod-cidr`.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// See `--max-pods`.
    pub max_pods: Option<u32>,
    /// See `--healthz-port`.
    pub healthz_port: Option<u16>,
    /// See `--healthz-bind-address`.
    pub healthz_bind_address: Option<IpAddr>,
    /// See `--port`.
    pub port: Option<u16>,
    /// See `--address`.
    pub address: Option<IpAddr>,
    /// See `--tls-cert-file`.
    pub tls_cert_file: Option<PathBuf>,
    /// See `--tls-private-key-file`.
    pub tls_private_key_file: Option<PathBuf>,
    /// Client authentication of the kubelet API.
    #[serde(default)]
    pub authentication: FileAuthentication,
    /// Authorization of the kubelet API.
    #[serde(default)]
    pub authorization: FileAuthorization,
    /// See `--node-status-update-frequency` (Go duration).
    pub node_status_update_frequency: Option<String>,
    /// How often status is posted even when unchanged (Go duration; default 5m).
    pub node_status_report_frequency: Option<String>,
    /// The node Lease's duration (default 40).
    pub node_lease_duration_seconds: Option<i32>,
    /// See `--pod-logs-dir`.
    pub pod_logs_dir: Option<PathBuf>,
    /// See `--image-gc-high-threshold`.
    pub image_gc_high_threshold_percent: Option<u8>,
    /// See `--image-gc-low-threshold`.
    pub image_gc_low_threshold_percent: Option<u8>,
    /// See `--sync-frequency` (Go duration).
    pub sync_frequency: Option<String>,
    /// See `--cluster-dns`.
    #[serde(rename = "clusterDNS")]
    pub cluster_dns: Option<Vec<IpAddr>>,
    /// See `--cluster-domain`.
    pub cluster_domain: Option<String>,
    /// See `--cgroup-root`.
    pub cgroup_root: Option<String>,
    /// See `--eviction-hard`: thresholds by signal (`memory.available: 100Mi`).
    pub eviction_hard: Option<std::collections::BTreeMap<String, String>>,
    /// See `--kube-api-qps`.
    #[serde(rename = "kubeAPIQPS")]
    pub kube_api_qps: Option<f64>,
    /// See `--kube-api-burst`.
    #[serde(rename = "kubeAPIBurst")]
    pub kube_api_burst: Option<u32>,
    /// See `--register-with-taints`.
    pub register_with_taints: Option<Vec<k8s_openapi::api::core::v1::Taint>>,
}

/// KubeletConfiguration `authentication`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileAuthentication {
    /// `x509.clientCAFile`.
    #[serde(default)]
    pub x509: FileX509,
    /// `webhook.enabled`, `webhook.cacheTTL`.
    #[serde(default)]
    pub webhook: FileWebhook,
    /// `anonymous.enabled`.
    #[serde(default)]
    pub anonymous: FileEnabled,
}

/// KubeletConfiguration `authentication.x509`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileX509 {
    /// See `--client-ca-file`.
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

/// KubeletConfiguration `authentication.webhook`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileWebhook {
    /// See `--authentication-token-webhook`.
    pub enabled: Option<bool>,
    /// See `--authentication-token-webhook-cache-ttl` (Go duration).
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: Option<String>,
}

/// An `enabled` switch.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct FileEnabled {
    /// On or off.
    pub enabled: Option<bool>,
}

/// KubeletConfiguration `authorization`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileAuthorization {
    /// See `--authorization-mode`.
    pub mode: Option<String>,
    /// `webhook.cacheAuthorizedTTL`, `webhook.cacheUnauthorizedTTL`.
    #[serde(default)]
    pub webhook: FileAuthzWebhook,
}

/// KubeletConfiguration `authorization.webhook`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileAuthzWebhook {
    /// Go duration.
    #[serde(rename = "cacheAuthorizedTTL")]
    pub cache_authorized_ttl: Option<String>,
    /// Go duration.
    #[serde(rename = "cacheUnauthorizedTTL")]
    pub cache_unauthorized_ttl: Option<String>,
}

/// How the kubelet API decides whether a request may proceed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthorizationMode {
    /// Every authenticated request is allowed.
    AlwaysAllow,
    /// Ask the apiserver with a SubjectAccessReview.
    Webhook,
}

/// The kubelet API's serving and auth settings.
#[derive(Clone, Debug)]
pub struct ApiServing {
    /// `--port` (0: off).
    pub port: u16,
    /// `--address`.
    pub address: IpAddr,
    /// `--tls-cert-file` and `--tls-private-key-file`, when both are given.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// Where a generated serving certificate is kept.
    pub cert_dir: PathBuf,
    /// `--client-ca-file`.
    pub client_ca_file: Option<PathBuf>,
    /// `--anonymous-auth`.
    pub anonymous: bool,
    /// `--authentication-token-webhook`.
    pub token_webhook: bool,
    /// `--authentication-token-webhook-cache-ttl`.
    pub token_cache_ttl: Duration,
    /// `--authorization-mode`.
    pub authorization_mode: AuthorizationMode,
    /// `--authorization-webhook-cache-authorized-ttl`.
    pub authorized_ttl: Duration,
    /// `--authorization-webhook-cache-unauthorized-ttl`.
    pub unauthorized_ttl: Duration,
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a KubeletConfiguration we understand.
    #[error("parsing {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A value is invalid.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The flag or field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The effective configuration: flags over the file over defaults.
#[derive(Clone, Debug)]
pub struct Config {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// The node name (lower-cased, as upstream).
    pub node_name: String,
    /// The machine's hostname (the Node's Hostname address).
    pub hostname: String,
    /// `--root-dir`.
    pub root_dir: PathBuf,
    /// The InternalIP address.
    pub node_ip: IpAddr,
    /// `--pod-cidr`.
    pub pod_cidr: Option<String>,
    /// `--healthz-port` (0: off).
    pub healthz_port: u16,
    /// `--healthz-bind-address`.
    pub healthz_bind_address: IpAddr,
    /// The authenticated API (port 10250).
    pub api: ApiServing,
    /// `--max-pods`.
    pub max_pods: u32,
    /// `--node-labels`.
    pub node_labels: Vec<(String, String)>,
    /// `--register-with-taints`.
    pub taints: Vec<k8s_openapi::api::core::v1::Taint>,
    /// `--node-status-update-frequency`.
    pub node_status_update_frequency: Duration,
    /// nodeStatusReportFrequency.
    pub node_status_report_frequency: Duration,
    /// nodeLeaseDurationSeconds.
    pub node_lease_duration_seconds: i32,
    /// `--pod-logs-dir`.
    pub pod_logs_dir: PathBuf,
    /// `--sync-frequency`.
    pub sync_frequency: Duration,
    /// `--image-gc-high-threshold`.
    pub image_gc_high_threshold: u8,
    /// `--image-gc-low-threshold`.
    pub image_gc_low_threshold: u8,
    /// `--cluster-dns`.
    pub cluster_dns: Vec<IpAddr>,
    /// `--cluster-domain`.
    pub cluster_domain: Option<String>,
    /// `--cni-bin-dir`.
    pub cni_bin_dir: PathBuf,
    /// `--cni-conf-dir`.
    pub cni_conf_dir: PathBuf,
    /// `--runtime-binary`.
    pub runtime_binary: PathBuf,
    /// `--cgroup-root`.
    pub cgroup_root: String,
    /// `--insecure-registries`.
    pub insecure_registries: Vec<String>,
    /// `--kube-api-qps`.
    pub kube_api_qps: f64,
    /// `--kube-api-burst`.
    pub kube_api_burst: u32,
    /// `--eviction-hard`.
    pub eviction_hard: crate::eviction::EvictionHard,
}

impl Config {
    /// Resolves `flags` (and the file they name) into the effective configuration.
    pub fn resolve(flags: &Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => load_file(path)?,
            None => KubeletConfiguration::default(),
        };
        let hostname = match rustix::system::uname().nodename().to_str() {
            Ok(h) => h.to_string(),
            Err(_) => "localhost".to_string(),
        };
        let node_name = flags
            .hostname_override
            .clone()
            .unwrap_or_else(|| hostname.clone())
            .trim()
            .to_lowercase();
        validate_dns_subdomain(&node_name).map_err(|reason| ConfigError::Invalid {
            field: "--hostname-override",
            reason,
        })?;
        let duration = |field: &'static str, v: &Option<String>, default: Duration| match v {
            Some(s) => parse_duration(s).map_err(|reason| ConfigError::Invalid { field, reason }),
            None => Ok(default),
        };
        let node_labels = flags
            .node_labels
            .iter()
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| ConfigError::Invalid {
                        field: "--node-labels",
                        reason: format!("{s:?} is not key=value"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut taints = file.register_with_taints.clone().unwrap_or_default();
        for t in flags.register_with_taints.iter().filter(|s| !s.is_empty()) {
            taints.push(parse_taint(t).map_err(|reason| ConfigError::Invalid {
                field: "--register-with-taints",
                reason,
            })?);
        }
        let pod_cidr = flags.pod_cidr.clone().or(file.pod_cidr.clone());
        if let Some(c) = &pod_cidr {
            crate::network::Ipv4Cidr::parse(c).map_err(|reason| ConfigError::Invalid {
                field: "--pod-cidr",
                reason,
            })?;
        }
        let eviction_hard = match (&flags.eviction_hard, &file.eviction_hard) {
            (Some(s), _) => crate::eviction::EvictionHard::parse_flag(s).map_err(|reason| {
                ConfigError::Invalid {
                    field: "--eviction-hard",
                    reason,
                }
            })?,
            (None, Some(m)) => crate::eviction::EvictionHard::from_map(m).map_err(|reason| {
                ConfigError::Invalid {
                    field: "evictionHard",
                    reason,
                }
            })?,
            (None, None) => crate::eviction::EvictionHard::default(),
        };
        let root_dir = flags.root_dir.clone();
        let api = api_serving(flags, &file, &root_dir)?;
        Ok(Self {
            api,
            kubeconfig: flags.kubeconfig.clone(),
            hostname,
            node_ip: flags
                .node_ip
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            pod_cidr,
            healthz_port: flags.healthz_port.or(file.healthz_port).unwrap_or(10248),
            healthz_bind_address: flags
                .healthz_bind_address
                .or(file.healthz_bind_address)
                .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
            max_pods: flags.max_pods.or(file.max_pods).unwrap_or(110),
            node_labels,
            taints,
            node_status_update_frequency: match flags.node_status_update_frequency {
                Some(d) => d,
                None => duration(
                    "nodeStatusUpdateFrequency",
                    &file.node_status_update_frequency,
                    Duration::from_secs(10),
                )?,
            },
            node_status_report_frequency: duration(
                "nodeStatusReportFrequency",
                &file.node_status_report_frequency,
                Duration::from_secs(300),
            )?,
            node_lease_duration_seconds: file.node_lease_duration_seconds.unwrap_or(40).max(1),
            sync_frequency: match flags.sync_frequency {
                Some(d) => d,
                None => duration(
                    "syncFrequency",
                    &file.sync_frequency,
                    Duration::from_secs(60),
                )?,
            },
            image_gc_high_threshold: flags
                .image_gc_high_threshold
                .or(file.image_gc_high_threshold_percent)
                .unwrap_or(85)
                .min(100),
            image_gc_low_threshold: flags
                .image_gc_low_threshold
                .or(file.image_gc_low_threshold_percent)
                .unwrap_or(80)
                .min(100),
            cluster_dns: if flags.cluster_dns.is_empty() {
                file.cluster_dns.clone().unwrap_or_default()
            } else {
                flags.cluster_dns.clone()
            },
            cluster_domain: flags.cluster_domain.clone().or(file.cluster_domain.clone()),
            pod_logs_dir: flags
                .pod_logs_dir
                .clone()
                .or(file.pod_logs_dir.clone())
                .unwrap_or_else(|| PathBuf::from("/var/log/pods")),
            cni_bin_dir: flags.cni_bin_dir.clone(),
            cni_conf_dir: flags
                .cni_conf_dir
                .clone()
                .unwrap_or_else(|| root_dir.join("cni/net.d")),
            runtime_binary: flags.runtime_binary.clone(),
            cgroup_root: flags
                .cgroup_root
                .clone()
                .or(file.cgroup_root.clone())
                .unwrap_or_else(|| "/".to_string()),
            insecure_registries: flags.insecure_registries.clone(),
            kube_api_qps: flags.kube_api_qps.or(file.kube_api_qps).unwrap_or(50.0),
            kube_api_burst: flags.kube_api_burst.or(file.kube_api_burst).unwrap_or(100),
            eviction_hard,
            root_dir,
            node_name,
        })
    }
}

fn api_serving(
    flags: &Flags,
    file: &KubeletConfiguration,
    root_dir: &Path,
) -> Result<ApiServing, ConfigError> {
    let duration = |field: &'static str, flag: Option<Duration>, v: &Option<String>, default| match (
        flag, v,
    ) {
        (Some(d), _) => Ok(d),
        (None, Some(s)) => {
            parse_duration(s).map_err(|reason| ConfigError::Invalid { field, reason })
        }
        (None, None) => Ok(default),
    };
    let cert = flags.tls_cert_file.clone().or(file.tls_cert_file.clone());
    let key = flags
        .tls_private_key_file
        .clone()
        .or(file.tls_private_key_file.clone());
    let tls_files = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Invalid {
                field: "--tls-cert-file",
                reason: "--tls-cert-file and --tls-private-key-file go together".into(),
            });
        }
    };
    let mode = flags
        .authorization_mode
        .clone()
        .or(file.authorization.mode.clone());
    let authorization_mode = match mode.as_deref() {
        None | Some("Webhook") => AuthorizationMode::Webhook,
        Some("AlwaysAllow") => AuthorizationMode::AlwaysAllow,
        Some(other) => {
            return Err(ConfigError::Invalid {
                field: "--authorization-mode",
                reason: format!("{other:?} is not AlwaysAllow or Webhook"),
            });
        }
    };
    let authn = &file.authentication;
    Ok(ApiServing {
        port: flags.port.or(file.port).unwrap_or(10250),
        address: flags
            .address
            .or(file.address)
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
        tls_files,
        cert_dir: flags
            .cert_dir
            .clone()
            .unwrap_or_else(|| root_dir.join("pki")),
        client_ca_file: flags
            .client_ca_file
            .clone()
            .or(authn.x509.client_ca_file.clone()),
        // v1beta1 KubeletConfiguration defaults: anonymous off, token webhook on.
        anonymous: flags
            .anonymous_auth
            .or(authn.anonymous.enabled)
            .unwrap_or(false),
        token_webhook: flags
            .authentication_token_webhook
            .or(authn.webhook.enabled)
            .unwrap_or(true),
        token_cache_ttl: duration(
            "authentication.webhook.cacheTTL",
            flags.authentication_token_webhook_cache_ttl,
            &authn.webhook.cache_ttl,
            Duration::from_secs(120),
        )?,
        authorization_mode,
        authorized_ttl: duration(
            "authorization.webhook.cacheAuthorizedTTL",
            flags.authorization_webhook_cache_authorized_ttl,
            &file.authorization.webhook.cache_authorized_ttl,
            Duration::from_secs(300),
        )?,
        unauthorized_ttl: duration(
            "authorization.webhook.cacheUnauthorizedTTL",
            flags.authorization_webhook_cache_unauthorized_ttl,
            &file.authorization.webhook.cache_unauthorized_ttl,
            Duration::from_secs(30),
        )?,
    })
}

fn load_file(path: &Path) -> Result<KubeletConfiguration, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let cfg: KubeletConfiguration =
        serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if cfg
        .kind
        .as_deref()
        .is_some_and(|k| k != "KubeletConfiguration")
    {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            reason: format!("kind {:?} is not KubeletConfiguration", cfg.kind),
        });
    }
    if cfg
        .api_version
        .as_deref()
        .is_some_and(|v| v != "kubelet.config.k8s.io/v1beta1" && v != "kubelet.config.k8s.io/v1")
    {
        return Err(ConfigError::Parse {
            path: path.to_path_buf(),
            reason: format!("unsupported apiVersion {:?}", cfg.api_version),
        });
    }
    Ok(cfg)
}

/// Checks a name the way the apiserver validates Node names (RFC 1123 subdomain).
pub fn validate_dns_subdomain(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid DNS subdomain"))
    }
}

/// Parses upstream's taint syntax: `key[=value]:Effect`.
pub fn parse_taint(s: &str) -> Result<k8s_openapi::api::core::v1::Taint, String> {
    let (kv, effect) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("taint {s:?} has no effect"))?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!("taint {s:?}: unknown effect {effect:?}"));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(format!("taint {s:?} has no key"));
    }
    Ok(k8s_openapi::api::core::v1::Taint {
        key: key.to_string(),
        value,
        effect: effect.to_string(),
        time_added: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kubelet.yaml");
        std::fs::write(
            &cfg,
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 20\nhealthzPort: 1234\npodCIDR: 198.18.7.0/24\nnodeStatusReportFrequency: 1m\n",
        )
        .unwrap();
        let flags = Flags::parse_from([
            "kubelet",
            "--config",
            cfg.to_str().unwrap(),
            "--hostname-override=Node-A",
            "--max-pods=30",
            "--register-with-taints=dedicated=x:NoSchedule",
        ]);
        let c = Config::resolve(&flags).unwrap();
        assert_eq!(c.node_name, "node-a");
        assert_eq!(c.max_pods, 30);
        assert_eq!(c.healthz_port, 1234);
        assert_eq!(c.pod_cidr.as_deref(), Some("198.18.7.0/24"));
        assert_eq!(c.node_status_report_frequency, Duration::from_secs(60));
        assert_eq!(c.node_status_update_frequency, Duration::from_secs(10));
        assert_eq!(c.taints[0].key, "dedicated");
        assert_eq!(c.cni_conf_dir, PathBuf::from("/var/lib/kubelet/cni/net.d"));
    }

    #[test]
    fn api_serving_from_file_flags_and_defaults() {
        let c = Config::resolve(&Flags::parse_from(["kubelet", "--root-dir=/r"])).unwrap();
        assert_eq!(c.api.port, 10250);
        assert_eq!(c.api.address.to_string(), "0.0.0.0");
        assert_eq!(c.api.cert_dir, PathBuf::from("/r/pki"));
        assert!(!c.api.anonymous && c.api.token_webhook);
        assert_eq!(c.api.authorization_mode, AuthorizationMode::Webhook);
        assert_eq!(c.api.authorized_ttl, Duration::from_secs(300));
        assert_eq!(c.api.unauthorized_ttl, Duration::from_secs(30));

        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("kubelet.yaml");
        std::fs::write(
            &cfg,
            "kind: KubeletConfiguration\nport: 11250\naddress: 127.0.0.1\n\
             tlsCertFile: /c.crt\ntlsPrivateKeyFile: /c.key\n\
             authentication:\n  x509: {clientCAFile: /ca.crt}\n  webhook: {enabled: false, cacheTTL: 10s}\n  anonymous: {enabled: true}\n\
             authorization:\n  mode: AlwaysAllow\n  webhook: {cacheAuthorizedTTL: 1m, cacheUnauthorizedTTL: 5s}\n",
        )
        .unwrap();
        let c = Config::resolve(&Flags::parse_from([
            "kubelet",
            "--config",
            cfg.to_str().unwrap(),
            "--port=12250",
            "--authorization-mode=Webhook",
        ]))
        .unwrap();
        assert_eq!(c.api.port, 12250);
        assert_eq!(c.api.address.to_string(), "127.0.0.1");
        assert_eq!(
            c.api.tls_files,
            Some((PathBuf::from("/c.crt"), PathBuf::from("/c.key")))
        );
        assert_eq!(c.api.client_ca_file, Some(PathBuf::from("/ca.crt")));
        assert!(c.api.anonymous && !c.api.token_webhook);
        assert_eq!(c.api.token_cache_ttl, Duration::from_secs(10));
        assert_eq!(c.api.authorization_mode, AuthorizationMode::Webhook);
        assert_eq!(c.api.authorized_ttl, Duration::from_secs(60));
        assert_eq!(c.api.unauthorized_ttl, Duration::from_secs(5));

        for bad in [
            vec!["kubelet", "--authorization-mode=RBAC"],
            vec!["kubelet", "--tls-cert-file=/only.crt"],
        ] {
            assert!(Config::resolve(&Flags::parse_from(bad)).is_err());
        }
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse_taint("a=b").is_err());
        assert!(parse_taint("a=b:Sometimes").is_err());
        assert!(validate_dns_subdomain("Node_1").is_err());
        let flags = Flags::parse_from(["kubelet", "--pod-cidr=198.18.0.0/33"]);
        assert!(Config::resolve(&flags).is_err());
    }
}
