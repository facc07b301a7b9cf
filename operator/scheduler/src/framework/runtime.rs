//! One profile's framework (upstream `framework/runtime`): its plugins per extension
//! point, built from the resolved configuration, and the functions that run them.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::ResolvedProfile;
use crate::framework::interface::{ExtensionPoint, Plugin};
use crate::plugins;

/// Errors building a framework.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A plugin refused its arguments or does not exist.
    #[error("profile {profile:?}: plugin {plugin}: {message}")]
    Plugin {
        /// The profile.
        profile: String,
        /// The plugin.
        plugin: String,
        /// What was wrong.
        message: String,
    },
    /// The profile cannot schedule pods as configured.
    #[error("profile {profile:?}: {message}")]
    Profile {
        /// The profile.
        profile: String,
        /// What was wrong.
        message: String,
    },
}

/// A profile's plugins, per extension point, in configured order.
pub struct Framework {
    /// The profile's scheduler name (the `profile` metric label).
    pub profile_name: String,
    /// PreEnqueue plugins.
    pub pre_enqueue: Vec<Arc<dyn Plugin>>,
    /// The QueueSort plugin.
    pub queue_sort: Arc<dyn Plugin>,
    /// PreFilter plugins.
    pub pre_filter: Vec<Arc<dyn Plugin>>,
    /// Filter plugins.
    pub filter: Vec<Arc<dyn Plugin>>,
    /// PostFilter plugins.
    pub post_filter: Vec<Arc<dyn Plugin>>,
    /// PreScore plugins.
    pub pre_score: Vec<Arc<dyn Plugin>>,
    /// Score plugins with their weights.
    pub score: Vec<(Arc<dyn Plugin>, i64)>,
    /// Every plugin instance of the profile.
    pub all: Vec<Arc<dyn Plugin>>,
    /// Configured plugins ferrokube does not implement yet (skipped with a warning).
    pub unimplemented: Vec<String>,
    /// When DynamicResources is configured but not implemented: how many of
    /// [`pre_filter`](Self::pre_filter) run before its PreFilter would. A PreFilter
    /// rejection earlier than that leaves upstream's DynamicResources without cycle state,
    /// and its PostFilter then fails with "not found" (which users see in the message).
    pub dynamic_resources_pre_filter_at: Option<usize>,
    /// 0 = adaptive.
    pub percentage_of_nodes_to_score: i32,
    /// Threads for filtering and scoring.
    pub parallelism: usize,
}

impl Framework {
    /// Builds the framework of `profile`.
    pub fn new(profile: &ResolvedProfile, parallelism: usize) -> Result<Self, Error> {
        let mut instances: HashMap<String, Arc<dyn Plugin>> = HashMap::new();
        let mut unimplemented = Vec::new();
        for name in profile.all_plugin_names() {
            if name == plugins::DEFAULT_BINDER {
                continue;
            }
            let args = profile
                .args
                .get(&name)
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            match plugins::build(&name, &args) {
                Ok(Some(p)) => {
                    instances.insert(name, p);
                }
                Ok(None) => unimplemented.push(name),
                Err(message) => {
                    return Err(Error::Plugin {
                        profile: profile.scheduler_name.clone(),
                        plugin: name,
                        message,
                    });
                }
            }
        }
        let implements = |point: ExtensionPoint| {
            let instances = &instances;
            move |name: &str| {
                instances
                    .get(name)
                    .is_some_and(|p| p.extension_points().contains(&point))
            }
        };
        let at = |point: ExtensionPoint| -> Vec<(Arc<dyn Plugin>, i64)> {
            profile
                .plugins_at(point, implements(point))
                .into_iter()
                .filter_map(|e| instances.get(&e.name).map(|p| (p.clone(), e.weight)))
                .collect()
        };
        let only =
            |v: Vec<(Arc<dyn Plugin>, i64)>| v.into_iter().map(|(p, _)| p).collect::<Vec<_>>();
        let queue_sort = only(at(ExtensionPoint::QueueSort))
            .into_iter()
            .next()
            .ok_or_else(|| Error::Profile {
                profile: profile.scheduler_name.clone(),
                message: "no queue sort plugin is enabled".into(),
            })?;
        // The binder is not a framework plugin here; the profile must still enable it.
        let binds = profile.plugins_at(ExtensionPoint::Bind, |n| n == plugins::DEFAULT_BINDER);
        if binds.is_empty() {
            return Err(Error::Profile {
                profile: profile.scheduler_name.clone(),
                message: "at least one bind plugin is needed".into(),
            });
        }
        let dynamic_resources_pre_filter_at = unimplemented
            .iter()
            .any(|n| n == "DynamicResources")
            .then(|| {
                let implemented = implements(ExtensionPoint::PreFilter);
                profile
                    .plugins_at(ExtensionPoint::PreFilter, |n| {
                        n == "DynamicResources" || implemented(n)
                    })
                    .iter()
                    .position(|e| e.name == "DynamicResources")
            })
            .flatten();
        let mut all: Vec<Arc<dyn Plugin>> = instances.values().cloned().collect();
        all.sort_by_key(|p| p.name());
        Ok(Self {
            profile_name: profile.scheduler_name.clone(),
            pre_enqueue: only(at(ExtensionPoint::PreEnqueue)),
            queue_sort,
            pre_filter: only(at(ExtensionPoint::PreFilter)),
            filter: only(at(ExtensionPoint::Filter)),
            post_filter: only(at(ExtensionPoint::PostFilter)),
            pre_score: only(at(ExtensionPoint::PreScore)),
            score: at(ExtensionPoint::Score),
            all,
            unimplemented,
            dynamic_resources_pre_filter_at,
            percentage_of_nodes_to_score: profile.percentage_of_nodes_to_score,
            parallelism: parallelism.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_has_upstream_plugins_per_point() {
        let cfg = crate::config::finish(crate::config::KubeSchedulerConfiguration::defaulted())
            .expect("config");
        let f = Framework::new(&cfg.profiles[0], 16).expect("framework");
        let names = |v: &[Arc<dyn Plugin>]| v.iter().map(|p| p.name()).collect::<Vec<_>>();
        assert_eq!(f.queue_sort.name(), "PrioritySort");
        assert_eq!(names(&f.pre_enqueue), ["SchedulingGates"]);
        assert_eq!(
            names(&f.filter),
            [
                "NodeUnschedulable",
                "NodeName",
                "TaintToleration",
                "NodeAffinity",
                "NodePorts",
                "NodeResourcesFit",
                "VolumeBinding",
                "PodTopologySpread",
                "InterPodAffinity"
            ]
        );
        assert_eq!(names(&f.post_filter), ["DefaultPreemption"]);
        // DynamicResources' PreFilter comes after every PreFilter we implement.
        assert_eq!(f.dynamic_resources_pre_filter_at, Some(f.pre_filter.len()));
        let scores: Vec<(&str, i64)> = f.score.iter().map(|(p, w)| (p.name(), *w)).collect();
        assert_eq!(
            scores,
            [
                ("TaintToleration", 3),
                ("NodeAffinity", 2),
                ("NodeResourcesFit", 1),
                ("PodTopologySpread", 2),
                ("InterPodAffinity", 2),
                ("NodeResourcesBalancedAllocation", 1),
                ("ImageLocality", 1)
            ]
        );
        assert!(!f.unimplemented.contains(&"InterPodAffinity".to_string()));
        assert!(f.unimplemented.contains(&"DynamicResources".to_string()));
    }
}
