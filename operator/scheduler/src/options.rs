//! Command-line flags, named and defaulted as kube-scheduler's.
//!
//! As upstream, the scheduler's settings come from `--config`; the flags that exist both
//! ways (`--kubeconfig`, `--leader-elect*`) override the file only when given explicitly.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use ferrokube_runtime::flags::parse_duration;
use ferrokube_runtime::logging;

/// kube-scheduler's flags that ferrokube honours.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ferrokube-scheduler",
    version,
    about = "Assigns pods to nodes (a drop-in for kube-scheduler)."
)]
pub struct Options {
    /// Path to a KubeSchedulerConfiguration (kubescheduler.config.k8s.io/v1) file.
    #[arg(long)]
    pub config: Option<PathBuf>,

    /// Path to a kubeconfig; overrides clientConnection.kubeconfig.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,

    /// Run only while holding the leader Lease; overrides leaderElection.leaderElect.
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub leader_elect: Option<bool>,

    /// Overrides leaderElection.leaseDuration.
    #[arg(long, value_parser = parse_duration)]
    pub leader_elect_lease_duration: Option<Duration>,

    /// Overrides leaderElection.renewDeadline.
    #[arg(long, value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Option<Duration>,

    /// Overrides leaderElection.retryPeriod.
    #[arg(long, value_parser = parse_duration)]
    pub leader_elect_retry_period: Option<Duration>,

    /// Overrides leaderElection.resourceName.
    #[arg(long)]
    pub leader_elect_resource_name: Option<String>,

    /// Overrides leaderElection.resourceNamespace.
    #[arg(long)]
    pub leader_elect_resource_namespace: Option<String>,

    /// Address the health and metrics server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Port of the health and metrics server (0 disables it). Served over plain HTTP.
    #[arg(long, default_value_t = 10259)]
    pub secure_port: u16,

    /// klog-style verbosity (0-10).
    #[arg(short = 'v', long = "v", default_value_t = 2)]
    pub verbosity: u8,

    /// Log format: text or json.
    #[arg(long, default_value = "text")]
    pub logging_format: logging::Format,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_defaults_and_syntax() {
        let o = Options::parse_from(["ks"]);
        assert_eq!(o.secure_port, 10259);
        assert_eq!(o.leader_elect, None);
        let o = Options::parse_from([
            "ks",
            "--config=/etc/ks.yaml",
            "--leader-elect=false",
            "--leader-elect-lease-duration=30s",
            "--v=4",
            "--logging-format=json",
        ]);
        assert_eq!(o.leader_elect, Some(false));
        assert_eq!(o.leader_elect_lease_duration, Some(Duration::from_secs(30)));
        assert_eq!(o.logging_format, logging::Format::Json);
        assert!(Options::try_parse_from(["ks", "--logging-format=xml"]).is_err());
    }
}
