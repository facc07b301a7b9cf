//! `KubeSchedulerConfiguration` (`kubescheduler.config.k8s.io/v1`): decoding (strict, as
//! upstream: unknown fields are errors), defaulting and validation, with upstream's field
//! paths in the messages, and the resolution of each profile's plugin set per extension
//! point (upstream's `mergePlugins` plus multi-point expansion).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use ferrokube_runtime::flags::parse_duration;
use serde::{Deserialize, Serialize};

use crate::framework::interface::ExtensionPoint;

/// The only API version understood.
pub const API_VERSION: &str = "kubescheduler.config.k8s.io/v1";
/// The only kind understood.
pub const KIND: &str = "KubeSchedulerConfiguration";
/// The default profile's scheduler name.
pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid KubeSchedulerConfiguration document.
    #[error("decoding {path}: {message}")]
    Decode {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// Field values are invalid; one line per problem, `field.path: message`.
    #[error("invalid KubeSchedulerConfiguration: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// The configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeSchedulerConfiguration {
    /// Must be `kubescheduler.config.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// Must be `KubeSchedulerConfiguration`.
    #[serde(default)]
    pub kind: String,
    /// Threads for filtering and scoring (default 16).
    #[serde(default)]
    pub parallelism: Option<i32>,
    /// Leader election.
    #[serde(default)]
    pub leader_election: LeaderElection,
    /// The apiserver connection.
    #[serde(default)]
    pub client_connection: ClientConnection,
    /// Deprecated upstream, accepted and ignored.
    #[serde(default)]
    pub health_bind_address: Option<String>,
    /// Deprecated upstream, accepted and ignored.
    #[serde(default)]
    pub metrics_bind_address: Option<String>,
    /// Accepted and ignored (no profiling endpoints).
    #[serde(default)]
    pub enable_profiling: Option<bool>,
    /// Accepted and ignored.
    #[serde(default)]
    pub enable_contention_profiling: Option<bool>,
    /// Share of nodes to find feasible before scoring; 0 means adaptive.
    #[serde(default)]
    pub percentage_of_nodes_to_score: Option<i32>,
    /// First backoff of an unschedulable pod (default 1).
    #[serde(default)]
    pub pod_initial_backoff_seconds: Option<i64>,
    /// Longest backoff (default 10).
    #[serde(default)]
    pub pod_max_backoff_seconds: Option<i64>,
    /// Scheduling profiles, one per schedulerName.
    #[serde(default)]
    pub profiles: Vec<Profile>,
    /// Scheduler extenders (not supported: must be empty).
    #[serde(default)]
    pub extenders: Vec<serde_json::Value>,
    /// Accepted and ignored.
    #[serde(default)]
    pub delay_cache_until_active: Option<bool>,
}

/// `leaderElection`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LeaderElection {
    /// Whether to elect a leader.
    pub leader_elect: bool,
    /// Go duration (`15s`).
    pub lease_duration: String,
    /// Go duration (`10s`).
    pub renew_deadline: String,
    /// Go duration (`2s`).
    pub retry_period: String,
    /// Only `leases`.
    pub resource_lock: String,
    /// The Lease's name.
    pub resource_name: String,
    /// The Lease's namespace.
    pub resource_namespace: String,
}

impl Default for LeaderElection {
    fn default() -> Self {
        Self {
            leader_elect: true,
            lease_duration: "15s".into(),
            renew_deadline: "10s".into(),
            retry_period: "2s".into(),
            resource_lock: "leases".into(),
            resource_name: "kube-scheduler".into(),
            resource_namespace: "kube-system".into(),
        }
    }
}

/// `clientConnection`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClientConnection {
    /// Path to a kubeconfig.
    pub kubeconfig: String,
    /// Accepted; the client always speaks JSON.
    pub accept_content_types: String,
    /// Accepted; the client always speaks JSON.
    pub content_type: String,
    /// Sustained requests per second.
    pub qps: f64,
    /// Burst above qps.
    pub burst: i64,
}

impl Default for ClientConnection {
    fn default() -> Self {
        Self {
            kubeconfig: String::new(),
            accept_content_types: String::new(),
            content_type: "application/vnd.kubernetes.protobuf".into(),
            qps: 50.0,
            burst: 100,
        }
    }
}

/// One scheduling profile.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Profile {
    /// Pods with this `spec.schedulerName` use this profile.
    pub scheduler_name: String,
    /// Overrides the top-level percentage for this profile.
    pub percentage_of_nodes_to_score: Option<i32>,
    /// Plugins enabled and disabled per extension point.
    pub plugins: Option<Plugins>,
    /// Arguments per plugin.
    pub plugin_config: Vec<PluginConfig>,
}

/// Enabled and disabled plugins per extension point.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Plugins {
    /// Plugins enabled at every extension point they implement.
    pub multi_point: PluginSet,
    /// PreEnqueue.
    pub pre_enqueue: PluginSet,
    /// QueueSort.
    pub queue_sort: PluginSet,
    /// PreFilter.
    pub pre_filter: PluginSet,
    /// Filter.
    pub filter: PluginSet,
    /// PostFilter.
    pub post_filter: PluginSet,
    /// PreScore.
    pub pre_score: PluginSet,
    /// Score.
    pub score: PluginSet,
    /// Reserve.
    pub reserve: PluginSet,
    /// Permit.
    pub permit: PluginSet,
    /// PreBind.
    pub pre_bind: PluginSet,
    /// Bind.
    pub bind: PluginSet,
    /// PostBind.
    pub post_bind: PluginSet,
}

/// Plugins enabled and disabled at one extension point.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PluginSet {
    /// Added (or re-weighted) plugins, in order.
    pub enabled: Vec<PluginRef>,
    /// Removed default plugins; `*` removes them all.
    pub disabled: Vec<PluginRef>,
}

/// A plugin named in a set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PluginRef {
    /// The plugin's name.
    pub name: String,
    /// Score weight (Score and multiPoint only).
    pub weight: Option<i32>,
}

/// Arguments for one plugin.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PluginConfig {
    /// The plugin's name.
    pub name: String,
    /// Its arguments (the plugin's `*Args` type).
    pub args: Option<serde_json::Value>,
}

/// upstream's default profile, multi-point (`getDefaultPlugins` plus the plugins of
/// feature gates on by default in 1.36), with weights.
pub const DEFAULT_MULTI_POINT: &[(&str, i32)] = &[
    ("SchedulingGates", 0),
    ("PrioritySort", 0),
    ("NodeUnschedulable", 0),
    ("NodeName", 0),
    ("TaintToleration", 3),
    ("NodeAffinity", 2),
    ("NodePorts", 0),
    ("NodeResourcesFit", 1),
    ("VolumeRestrictions", 0),
    ("NodeVolumeLimits", 0),
    ("VolumeBinding", 0),
    ("VolumeZone", 0),
    ("PodTopologySpread", 2),
    ("InterPodAffinity", 2),
    // Inserted before DefaultPreemption because DynamicResourceAllocation is on by default.
    ("DynamicResources", 2),
    ("DefaultPreemption", 0),
    ("NodeResourcesBalancedAllocation", 1),
    ("ImageLocality", 1),
    ("DefaultBinder", 0),
];

/// The settings the scheduler runs with, after defaulting and validation.
#[derive(Clone, Debug)]
pub struct Config {
    /// The decoded file (defaults filled in).
    pub raw: KubeSchedulerConfiguration,
    /// Filtering/scoring threads.
    pub parallelism: usize,
    /// Lease timings.
    pub lease_duration: Duration,
    /// Lease timings.
    pub renew_deadline: Duration,
    /// Lease timings.
    pub retry_period: Duration,
    /// First backoff.
    pub pod_initial_backoff: Duration,
    /// Longest backoff.
    pub pod_max_backoff: Duration,
    /// Profiles with their resolved plugins.
    pub profiles: Vec<ResolvedProfile>,
}

/// A plugin enabled at one extension point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enabled {
    /// The plugin's name.
    pub name: String,
    /// Its score weight (1 when unset).
    pub weight: i64,
}

/// A profile with its plugins resolved per extension point.
#[derive(Clone, Debug)]
pub struct ResolvedProfile {
    /// The profile's scheduler name.
    pub scheduler_name: String,
    /// 0 = adaptive.
    pub percentage_of_nodes_to_score: i32,
    /// Multi-point plugins after merging with the defaults.
    pub multi_point: Vec<Enabled>,
    /// Per extension point: plugins enabled there explicitly (they come first and win over
    /// multi-point entries), and those disabled there.
    pub explicit: BTreeMap<&'static str, (Vec<Enabled>, HashSet<String>)>,
    /// Arguments by plugin name.
    pub args: BTreeMap<String, serde_json::Value>,
}

impl ResolvedProfile {
    /// The plugins at `point`, in order, given which of the profile's plugins implement it.
    pub fn plugins_at(
        &self,
        point: ExtensionPoint,
        implements: impl Fn(&str) -> bool,
    ) -> Vec<Enabled> {
        let key = point_key(point);
        let (explicit, disabled) = self
            .explicit
            .get(key)
            .cloned()
            .unwrap_or_else(|| (Vec::new(), HashSet::new()));
        let mut out: Vec<Enabled> = explicit;
        if disabled.contains("*") {
            return out;
        }
        for e in &self.multi_point {
            if disabled.contains(&e.name) || out.iter().any(|o| o.name == e.name) {
                continue;
            }
            if implements(&e.name) {
                out.push(e.clone());
            }
        }
        out
    }

    /// Every plugin name the profile uses anywhere.
    pub fn all_plugin_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.multi_point.iter().map(|e| e.name.clone()).collect();
        for (enabled, _) in self.explicit.values() {
            for e in enabled {
                if !names.contains(&e.name) {
                    names.push(e.name.clone());
                }
            }
        }
        names
    }
}

fn point_key(point: ExtensionPoint) -> &'static str {
    match point {
        ExtensionPoint::PreEnqueue => "preEnqueue",
        ExtensionPoint::QueueSort => "queueSort",
        ExtensionPoint::PreFilter => "preFilter",
        ExtensionPoint::Filter => "filter",
        ExtensionPoint::PostFilter => "postFilter",
        ExtensionPoint::PreScore => "preScore",
        ExtensionPoint::Score => "score",
        ExtensionPoint::Bind => "bind",
    }
}

impl KubeSchedulerConfiguration {
    /// The configuration used without `--config`: one default profile.
    pub fn defaulted() -> Self {
        Self {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            ..Self::default()
        }
    }
}

/// Reads, decodes, defaults and validates `path`.
pub fn load(path: &Path) -> Result<Config, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text).map_err(|e| match e {
        Error::Decode { message, .. } => Error::Decode {
            path: path.display().to_string(),
            message,
        },
        other => other,
    })
}

/// Decodes, defaults and validates a YAML or JSON document.
pub fn parse(text: &str) -> Result<Config, Error> {
    let decode = |message: String| Error::Decode {
        path: "<config>".into(),
        message,
    };
    // Check the type first, so a wrong document says what it is rather than listing
    // unknown fields.
    let head: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| decode(e.to_string()))?;
    let api_version = head
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let kind = head.get("kind").and_then(|v| v.as_str()).unwrap_or("");
    if kind.is_empty() {
        return Err(decode("Object 'Kind' is missing".into()));
    }
    if api_version != API_VERSION || kind != KIND {
        return Err(decode(format!(
            "no kind {kind:?} is registered for version {api_version:?} (want apiVersion {API_VERSION}, kind {KIND})"
        )));
    }
    let raw: KubeSchedulerConfiguration =
        serde_yaml::from_value(head).map_err(|e| decode(format!("strict decoding error: {e}")))?;
    finish(raw)
}

/// Defaults and validates an already decoded configuration.
pub fn finish(mut raw: KubeSchedulerConfiguration) -> Result<Config, Error> {
    let mut errs = Vec::new();
    if raw.profiles.is_empty() {
        raw.profiles.push(Profile {
            scheduler_name: DEFAULT_SCHEDULER_NAME.into(),
            ..Profile::default()
        });
    }
    let parallelism = raw.parallelism.unwrap_or(16);
    if parallelism <= 0 {
        errs.push(format!(
            "parallelism: Invalid value: {parallelism}: should be an integer value greater than zero"
        ));
    }
    let pct = raw.percentage_of_nodes_to_score.unwrap_or(0);
    if !(0..=100).contains(&pct) {
        errs.push(format!(
            "percentageOfNodesToScore: Invalid value: {pct}: not in valid range [0-100]"
        ));
    }
    let initial = raw.pod_initial_backoff_seconds.unwrap_or(1);
    let max = raw.pod_max_backoff_seconds.unwrap_or(10);
    if initial <= 0 {
        errs.push(format!(
            "podInitialBackoffSeconds: Invalid value: {initial}: must be greater than 0"
        ));
    }
    if max < initial {
        errs.push(format!(
            "podMaxBackoffSeconds: Invalid value: {max}: must be greater than or equal to PodInitialBackoffSeconds"
        ));
    }
    if !raw.extenders.is_empty() {
        errs.push(
            "extenders: Invalid value: scheduler extenders are not supported by ferrokube".into(),
        );
    }
    let cc = &raw.client_connection;
    if cc.burst < 0 {
        errs.push(format!(
            "clientConnection.burst: Invalid value: {}: must be non-negative",
            cc.burst
        ));
    }
    let le = &raw.leader_election;
    let dur = |field: &str, v: &str, errs: &mut Vec<String>| match parse_duration(v) {
        Ok(d) => d,
        Err(e) => {
            errs.push(format!("leaderElection.{field}: Invalid value: {v:?}: {e}"));
            Duration::ZERO
        }
    };
    let lease_duration = dur("leaseDuration", &le.lease_duration, &mut errs);
    let renew_deadline = dur("renewDeadline", &le.renew_deadline, &mut errs);
    let retry_period = dur("retryPeriod", &le.retry_period, &mut errs);
    if le.leader_elect {
        for (field, d) in [
            ("leaseDuration", lease_duration),
            ("renewDeadline", renew_deadline),
            ("retryPeriod", retry_period),
        ] {
            if d.is_zero() {
                errs.push(format!(
                    "leaderElection.{field}: Invalid value: must be greater than zero"
                ));
            }
        }
        if lease_duration <= renew_deadline {
            errs.push("leaderElection.leaseDuration: Invalid value: LeaseDuration must be greater than RenewDeadline".into());
        }
        // client-go's JitterFactor: the leader must be able to retry before its deadline.
        if renew_deadline.as_secs_f64() <= retry_period.as_secs_f64() * 1.2 {
            errs.push("leaderElection.renewDeadline: Invalid value: RenewDeadline must be greater than retryPeriod*JitterFactor".into());
        }
        if le.resource_lock != "leases" {
            errs.push(format!(
                "leaderElection.resourceLock: Invalid value: {:?}: resourceLock value must be \"leases\"",
                le.resource_lock
            ));
        }
        if le.resource_name.is_empty() {
            errs.push("leaderElection.resourceName: Required value".into());
        }
        if le.resource_namespace.is_empty() {
            errs.push("leaderElection.resourceNamespace: Required value".into());
        }
    }

    let mut names = HashSet::new();
    let mut profiles = Vec::new();
    for (i, p) in raw.profiles.iter().enumerate() {
        let path = format!("profiles[{i}]");
        if p.scheduler_name.is_empty() {
            errs.push(format!("{path}.schedulerName: Required value"));
        } else if !names.insert(p.scheduler_name.clone()) {
            errs.push(format!(
                "{path}.schedulerName: Duplicate value: {:?}",
                p.scheduler_name
            ));
        }
        if let Some(pp) = p.percentage_of_nodes_to_score
            && !(0..=100).contains(&pp)
        {
            errs.push(format!(
                "{path}.percentageOfNodesToScore: Invalid value: {pp}: not in valid range [0-100]"
            ));
        }
        let resolved = resolve_profile(p, pct, &path, &mut errs);
        profiles.push(resolved);
    }
    // All profiles share one queue, so they must sort it the same way.
    let sorts: Vec<Vec<Enabled>> = profiles
        .iter()
        .map(|p| {
            p.plugins_at(
                ExtensionPoint::QueueSort,
                crate::plugins::implements_queue_sort,
            )
        })
        .collect();
    for (i, s) in sorts.iter().enumerate() {
        if s.len() > 1 {
            errs.push(format!(
                "profiles[{i}].plugins.queueSort.Enabled: Invalid value: {}: only one queue sort plugin can be enabled",
                s.len()
            ));
        }
        if i > 0 && *s != sorts[0] {
            errs.push(format!(
                "profiles[{i}].plugins.queueSort: Invalid value: must be the same for all profiles"
            ));
        }
    }
    if !errs.is_empty() {
        return Err(Error::Invalid(errs));
    }
    Ok(Config {
        parallelism: usize::try_from(parallelism).unwrap_or(16),
        lease_duration,
        renew_deadline,
        retry_period,
        pod_initial_backoff: Duration::from_secs(u64::try_from(initial).unwrap_or(1)),
        pod_max_backoff: Duration::from_secs(u64::try_from(max).unwrap_or(10)),
        profiles,
        raw,
    })
}

fn enabled_of(set: &[PluginRef]) -> Vec<Enabled> {
    set.iter()
        .map(|p| Enabled {
            name: p.name.clone(),
            weight: i64::from(p.weight.filter(|w| *w != 0).unwrap_or(1)),
        })
        .collect()
}

fn resolve_profile(
    p: &Profile,
    top_pct: i32,
    path: &str,
    errs: &mut Vec<String>,
) -> ResolvedProfile {
    let plugins = p.plugins.clone().unwrap_or_default();
    // multiPoint: the defaults minus the disabled ones, re-weighted or extended by enabled.
    let mp_disabled: HashSet<String> = plugins
        .multi_point
        .disabled
        .iter()
        .map(|d| d.name.clone())
        .collect();
    let mut multi_point: Vec<Enabled> = Vec::new();
    if !mp_disabled.contains("*") {
        for (name, weight) in DEFAULT_MULTI_POINT {
            if mp_disabled.contains(*name) {
                continue;
            }
            multi_point.push(Enabled {
                name: (*name).to_string(),
                weight: i64::from((*weight).max(1)),
            });
        }
    }
    for e in enabled_of(&plugins.multi_point.enabled) {
        match multi_point.iter_mut().find(|m| m.name == e.name) {
            Some(m) => *m = e,
            None => multi_point.push(e),
        }
    }
    let mut explicit = BTreeMap::new();
    for (key, set) in [
        ("preEnqueue", &plugins.pre_enqueue),
        ("queueSort", &plugins.queue_sort),
        ("preFilter", &plugins.pre_filter),
        ("filter", &plugins.filter),
        ("postFilter", &plugins.post_filter),
        ("preScore", &plugins.pre_score),
        ("score", &plugins.score),
        ("reserve", &plugins.reserve),
        ("permit", &plugins.permit),
        ("preBind", &plugins.pre_bind),
        ("bind", &plugins.bind),
        ("postBind", &plugins.post_bind),
    ] {
        let disabled: HashSet<String> = set.disabled.iter().map(|d| d.name.clone()).collect();
        explicit.insert(key, (enabled_of(&set.enabled), disabled));
    }
    // Every named plugin must exist, and weights must not be negative.
    let sets = [
        ("multiPoint", &plugins.multi_point),
        ("preEnqueue", &plugins.pre_enqueue),
        ("queueSort", &plugins.queue_sort),
        ("preFilter", &plugins.pre_filter),
        ("filter", &plugins.filter),
        ("postFilter", &plugins.post_filter),
        ("preScore", &plugins.pre_score),
        ("score", &plugins.score),
        ("reserve", &plugins.reserve),
        ("permit", &plugins.permit),
        ("preBind", &plugins.pre_bind),
        ("bind", &plugins.bind),
        ("postBind", &plugins.post_bind),
    ];
    for (key, set) in sets {
        for (j, e) in set.enabled.iter().enumerate() {
            if !crate::plugins::is_known(&e.name) {
                errs.push(format!(
                    "{path}.plugins.{key}.enabled[{j}]: Invalid value: {:?}: plugin does not exist",
                    e.name
                ));
            }
            if let Some(w) = e.weight
                && w < 0
            {
                errs.push(format!(
                    "{path}.plugins.{key}.enabled[{j}].weight: Invalid value: {w}: must not be negative"
                ));
            }
        }
    }
    let mut args = BTreeMap::new();
    for (j, pc) in p.plugin_config.iter().enumerate() {
        let cpath = format!("{path}.pluginConfig[{j}]");
        if args.contains_key(&pc.name) {
            errs.push(format!("{cpath}: Duplicate value: {:?}", pc.name));
            continue;
        }
        if !crate::plugins::is_known(&pc.name) {
            errs.push(format!(
                "{cpath}.name: Invalid value: {:?}: plugin does not exist",
                pc.name
            ));
            continue;
        }
        let value = pc.args.clone().unwrap_or(serde_json::Value::Null);
        if let Err(e) = crate::plugins::validate_args(&pc.name, &value) {
            errs.push(format!("{cpath}.args: {e}"));
        }
        args.insert(pc.name.clone(), value);
    }
    ResolvedProfile {
        scheduler_name: p.scheduler_name.clone(),
        percentage_of_nodes_to_score: p.percentage_of_nodes_to_score.unwrap_or(top_pct),
        multi_point,
        explicit,
        args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
percentageOfNodesToScore: 40
clientConnection:
  qps: 500
  burst: 1000
leaderElection:
  leaderElect: false
profiles:
- schedulerName: ferrokube-scheduler
  plugins:
    multiPoint:
      disabled:
      - name: ImageLocality
    score:
      enabled:
      - name: NodeResourcesFit
        weight: 5
      disabled:
      - name: TaintToleration
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
        resources:
        - name: cpu
          weight: 2
        - name: memory
          weight: 1
"#;

    #[test]
    fn decodes_defaults_and_resolves_plugins() {
        let c = parse(FULL).expect("valid");
        assert_eq!(c.raw.client_connection.qps, 500.0);
        assert_eq!(c.raw.client_connection.burst, 1000);
        assert!(!c.raw.leader_election.leader_elect);
        assert_eq!(c.pod_initial_backoff, Duration::from_secs(1));
        assert_eq!(c.pod_max_backoff, Duration::from_secs(10));
        let p = &c.profiles[0];
        assert_eq!(p.scheduler_name, "ferrokube-scheduler");
        assert_eq!(p.percentage_of_nodes_to_score, 40);
        let score = p.plugins_at(ExtensionPoint::Score, |n| {
            [
                "NodeResourcesFit",
                "TaintToleration",
                "ImageLocality",
                "NodeAffinity",
            ]
            .contains(&n)
        });
        let names: Vec<(&str, i64)> = score.iter().map(|e| (e.name.as_str(), e.weight)).collect();
        assert_eq!(names, [("NodeResourcesFit", 5), ("NodeAffinity", 2)]);
        assert!(p.args.contains_key("NodeResourcesFit"));
    }

    #[test]
    fn no_file_means_the_default_profile() {
        let c = finish(KubeSchedulerConfiguration::defaulted()).expect("valid");
        assert_eq!(c.profiles.len(), 1);
        assert_eq!(c.profiles[0].scheduler_name, DEFAULT_SCHEDULER_NAME);
        assert!(c.raw.leader_election.leader_elect);
        assert_eq!(c.raw.client_connection.qps, 50.0);
        assert_eq!(c.parallelism, 16);
    }

    #[test]
    fn refuses_bad_documents_with_field_paths() {
        let err = |text: &str| parse(text).expect_err("must be refused").to_string();
        assert!(err("kind: Pod\napiVersion: v1\n").contains("no kind \"Pod\""));
        assert!(
            err("apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nbogus: 1\n")
                .contains("unknown field `bogus`")
        );
        let e = err(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\npercentageOfNodesToScore: 150\nprofiles:\n- schedulerName: a\n- schedulerName: a\n- plugins:\n    filter:\n      enabled:\n      - name: NoSuchPlugin\n",
        );
        assert!(
            e.contains("percentageOfNodesToScore: Invalid value: 150"),
            "{e}"
        );
        assert!(
            e.contains("profiles[1].schedulerName: Duplicate value"),
            "{e}"
        );
        assert!(
            e.contains("profiles[2].schedulerName: Required value"),
            "{e}"
        );
        assert!(
            e.contains("profiles[2].plugins.filter.enabled[0]: Invalid value: \"NoSuchPlugin\""),
            "{e}"
        );
        let e = err(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nprofiles:\n- schedulerName: a\n  pluginConfig:\n  - name: NodeResourcesFit\n    args:\n      scoringStrategy:\n        type: Fancy\n",
        );
        assert!(e.contains("profiles[0].pluginConfig[0].args"), "{e}");
        assert!(e.contains("Fancy"), "{e}");
    }
}
