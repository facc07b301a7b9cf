//! Command-line flags, named and defaulted as kube-controller-manager's.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use ferrokube_runtime::flags::parse_duration;
use ferrokube_runtime::logging::Format;

/// kube-controller-manager's flags that ferrokube honours.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "ferrokube-controller-manager",
    version,
    about = "Runs the core Kubernetes control loops (a drop-in for kube-controller-manager)."
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

    /// Controllers to run: `*` for the default set, `foo` to add one, `-foo` to leave one out.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub controllers: Vec<String>,

    /// Run only while holding the leader Lease.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub leader_elect: bool,

    /// How long a non-renewed lease stays valid.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub leader_elect_lease_duration: Duration,

    /// How long the leader retries renewing before stepping down.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub leader_elect_renew_deadline: Duration,

    /// How often candidates try to acquire or renew.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub leader_elect_retry_period: Duration,

    /// Only `leases` is supported, as in upstream since 1.20.
    #[arg(long, default_value = "leases")]
    pub leader_elect_resource_lock: String,

    /// The Lease's name.
    #[arg(long, default_value = "kube-controller-manager")]
    pub leader_elect_resource_name: String,

    /// The Lease's namespace.
    #[arg(long, default_value = "kube-system")]
    pub leader_elect_resource_namespace: String,

    /// Address the health and metrics server listens on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind_address: IpAddr,

    /// Port of the health and metrics server (0 disables it). Served over plain HTTP.
    #[arg(long, default_value_t = 10257)]
    pub secure_port: u16,

    /// CA bundle published to every namespace as ConfigMap kube-root-ca.crt; the
    /// kubeconfig's CA when unset.
    #[arg(long)]
    pub root_ca_file: Option<PathBuf>,

    /// Informers resync every [x, 2x) of this.
    #[arg(long, default_value = "12h", value_parser = parse_duration)]
    pub min_resync_period: Duration,

    /// ReplicaSets synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_replicaset_syncs: usize,

    /// ReplicationControllers synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_rc_syncs: usize,

    /// Deployments synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_deployment_syncs: usize,

    /// Namespaces synced (deleted) at once.
    #[arg(long, default_value_t = 10)]
    pub concurrent_namespace_syncs: usize,

    /// ServiceAccounts synced at once.
    #[arg(long, default_value_t = 1)]
    pub concurrent_serviceaccount_syncs: usize,

    /// Garbage collector workers.
    #[arg(long, default_value_t = 20)]
    pub concurrent_gc_syncs: usize,

    /// Services whose EndpointSlices sync at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_service_endpoint_syncs: usize,

    /// Services whose Endpoints objects sync at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_endpoint_syncs: usize,

    /// The most endpoints one EndpointSlice holds (1-1000).
    #[arg(long, default_value_t = 100)]
    pub max_endpoints_per_slice: i32,

    /// How long pod changes are batched before a Service's Endpoints are updated.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub endpoint_updates_batch_period: Duration,

    /// How long pod changes are batched before a Service's EndpointSlices are updated.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub endpointslice_updates_batch_period: Duration,

    /// Jobs synced at once.
    #[arg(long, default_value_t = 5)]
    pub concurrent_job_syncs: usize,

    /// node-ipam: give nodes a Pod CIDR from --cluster-cidr.
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub allocate_node_cidrs: bool,

    /// node-ipam: the range Pod CIDRs are cut from (IPv4).
    #[arg(long)]
    pub cluster_cidr: Option<String>,

    /// node-ipam: the Service range, never handed to nodes when it overlaps --cluster-cidr.
    #[arg(long)]
    pub service_cluster_ip_range: Option<String>,

    /// node-ipam: prefix length of each node's Pod CIDR.
    #[arg(long, alias = "node-cidr-mask-size-ipv4", default_value_t = 24)]
    pub node_cidr_mask_size: u8,

    /// node-lifecycle: how often node health is checked.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub node_monitor_period: Duration,

    /// node-lifecycle: how long a node may go without a heartbeat before it is Unknown.
    #[arg(long, default_value = "50s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,

    /// node-lifecycle: the same for a node that never reported Ready.
    #[arg(long, default_value = "1m0s", value_parser = parse_duration)]
    pub node_startup_grace_period: Duration,

    /// node-lifecycle: nodes per second that get NoExecute taints in a healthy zone.
    #[arg(long, default_value_t = 0.1)]
    pub node_eviction_rate: f64,

    /// node-lifecycle: the same in a partially disrupted zone of a large cluster.
    #[arg(long, default_value_t = 0.01)]
    pub secondary_node_eviction_rate: f64,

    /// node-lifecycle: zones with at most this many nodes stop tainting when disrupted.
    #[arg(long, default_value_t = 50)]
    pub large_cluster_size_threshold: usize,

    /// node-lifecycle: fraction of not-ready nodes from which a zone is partially disrupted.
    #[arg(long, default_value_t = 0.55)]
    pub unhealthy_zone_threshold: f64,

    /// pod-garbage-collector: terminated pods kept before the oldest are deleted (0: keep all).
    #[arg(long, default_value_t = 12500)]
    pub terminated_pod_gc_threshold: usize,

    /// pod-garbage-collector: how often it runs (ferrokube-only; upstream fixes 20s). Pods on
    /// a vanished node are deleted after twice this.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub pod_gc_period: Duration,

    /// Use one ServiceAccount's credentials per controller (`system:serviceaccount:kube-system:<name>`).
    #[arg(long, default_value_t = false, action = ArgAction::Set, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub use_service_account_credentials: bool,

    /// klog-style verbosity (0-10).
    #[arg(short = 'v', long = "v", default_value_t = 2)]
    pub verbosity: u8,

    /// Log format.
    #[arg(long, default_value = "text")]
    pub logging_format: Format,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_defaults_and_syntax() {
        let o = Options::parse_from(["kcm"]);
        assert!(o.leader_elect);
        assert_eq!(o.controllers, vec!["*"]);
        assert_eq!(o.leader_elect_lease_duration, Duration::from_secs(15));
        assert_eq!((o.kube_api_qps, o.kube_api_burst), (20.0, 30));

        let o = Options::parse_from([
            "kcm",
            "--leader-elect=false",
            "--controllers=*,bootstrapsigner,-deployment",
            "--leader-elect-lease-duration=1m0s",
            "--v=4",
        ]);
        assert!(!o.leader_elect);
        assert_eq!(o.controllers, vec!["*", "bootstrapsigner", "-deployment"]);
        assert_eq!(o.leader_elect_lease_duration, Duration::from_secs(60));
        assert_eq!(o.verbosity, 4);
        assert!(Options::try_parse_from(["kcm", "--leader-elect-retry-period=2"]).is_err());
    }
}
