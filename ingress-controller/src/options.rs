//! Command-line flags, named as ingress-nginx's controller flags where one exists.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use ferrokube_runtime::flags::parse_duration;
use ferrokube_runtime::logging;

/// The controller's flags.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ferrokube-ingress-controller",
    version,
    about = "Serves networking.k8s.io/v1 Ingresses of its class with an in-process HTTP/HTTPS proxy."
)]
pub struct Options {
    /// Path to a kubeconfig; in-cluster configuration when unset.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Sustained requests per second to the apiserver.
    #[arg(long, default_value_t = 20.0)]
    pub kube_api_qps: f64,

    /// Requests allowed in a burst above --kube-api-qps.
    #[arg(long, default_value_t = 30)]
    pub kube_api_burst: u32,

    /// `spec.controller` of the IngressClasses this controller serves.
    #[arg(long, default_value = "ferrokube.io/ingress")]
    pub controller_class: String,

    /// Value of the legacy `kubernetes.io/ingress.class` annotation this controller serves
    /// (besides the names of its IngressClasses).
    #[arg(long, default_value = "ferrokube")]
    pub ingress_class: String,

    /// Also serve Ingresses that name no class at all.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub watch_ingress_without_class: bool,

    /// Address the proxy listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Port for plain HTTP.
    #[arg(long, default_value_t = 80)]
    pub http_port: u16,

    /// Port for HTTPS.
    #[arg(long, default_value_t = 443)]
    pub https_port: u16,

    /// The HTTPS port clients see, used in HTTP->HTTPS redirects (differs from
    /// --https-port behind a port mapping).
    #[arg(long, default_value_t = 443)]
    pub https_redirect_port: u16,

    /// Address of the health and metrics server.
    #[arg(long, default_value = "0.0.0.0")]
    pub healthz_host: IpAddr,

    /// Port of the health and metrics server (0 disables it).
    #[arg(long, default_value_t = 10254)]
    pub healthz_port: u16,

    /// `namespace/name` of a kubernetes.io/tls Secret served when no Ingress certificate
    /// matches the SNI name; a self-signed certificate when unset.
    #[arg(long)]
    pub default_ssl_certificate: Option<String>,

    /// Addresses (IPs or host names) written to the status of every served Ingress.
    #[arg(long, value_delimiter = ',')]
    pub publish_status_address: Vec<String>,

    /// `namespace/name` of the Service whose addresses are written to Ingress status
    /// (load balancer ingress, else external IPs, else cluster IP).
    #[arg(long)]
    pub publish_service: Option<String>,

    /// Write `status.loadBalancer` of served Ingresses.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub update_status: bool,

    /// Write status only while holding the leader Lease (one writer among replicas).
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub leader_elect: bool,

    /// Name of the leader Lease.
    #[arg(long, default_value = "ferrokube-ingress-controller-leader")]
    pub election_id: String,

    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub election_namespace: String,

    /// How long open connections get to finish after SIGTERM.
    #[arg(long, default_value = "10s", value_parser = seconds_or_duration)]
    pub shutdown_grace_period: Duration,

    /// Default connect timeout to backends (annotation proxy-connect-timeout overrides).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub proxy_connect_timeout: Duration,

    /// Default time to wait for a backend's response headers (proxy-read-timeout).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub proxy_read_timeout: Duration,

    /// Default largest request body, nginx syntax (`1m`, `0` for unlimited).
    #[arg(long, default_value = "1m")]
    pub proxy_body_size: String,

    /// How endpoints are chosen: round_robin, or least_request (power of two choices on
    /// requests in flight; `ewma` is accepted as its ingress-nginx name). The annotation
    /// `load-balance` overrides per Ingress.
    #[arg(long, default_value = "round_robin", value_parser = load_balance)]
    pub load_balance: crate::balancer::Policy,

    /// Proxy worker threads, each with its own listening sockets and upstream connections
    /// (ingress-nginx's `worker-processes`); 0 is one per CPU.
    #[arg(long, default_value_t = 0)]
    pub worker_threads: usize,

    /// klog-style verbosity (0-10).
    #[arg(short = 'v', long = "v", default_value_t = 2)]
    pub verbosity: u8,

    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub logging_format: logging::Format,
}

fn load_balance(s: &str) -> Result<crate::balancer::Policy, String> {
    crate::balancer::Policy::parse(s)
        .ok_or_else(|| format!("{s:?}: want round_robin, least_request or ewma"))
}

/// ingress-nginx takes whole seconds; Go durations are accepted too.
fn seconds_or_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(n) => Ok(Duration::from_secs(n)),
        Err(_) => parse_duration(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_syntax() {
        let o = Options::parse_from(["ic"]);
        assert_eq!(
            (o.http_port, o.https_port, o.healthz_port),
            (80, 443, 10254)
        );
        assert_eq!(o.controller_class, "ferrokube.io/ingress");
        assert!(o.update_status && o.leader_elect && !o.watch_ingress_without_class);
        let o = Options::parse_from([
            "ic",
            "--publish-status-address=10.0.0.1,lb.example.com",
            "--shutdown-grace-period=30",
            "--leader-elect=false",
            "--watch-ingress-without-class",
        ]);
        assert_eq!(o.publish_status_address, vec!["10.0.0.1", "lb.example.com"]);
        assert_eq!(o.shutdown_grace_period, Duration::from_secs(30));
        assert!(!o.leader_elect && o.watch_ingress_without_class);
        assert!(Options::try_parse_from(["ic", "--shutdown-grace-period=soon"]).is_err());
    }
}
