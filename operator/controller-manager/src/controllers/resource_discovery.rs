//! API discovery that survives broken groups: client-go's `ServerPreferredResources`.
//!
//! `kube::Discovery::run` gives up on the first group that fails, but an aggregated API
//! whose backend is down (503 on `/apis/<group>/<version>`) must not stop the
//! namespace controller from deleting everything else, nor the garbage collector from
//! watching the rest of the cluster. So every group-version is asked separately and its
//! failure is recorded next to what did resolve, as client-go's `ErrGroupDiscoveryFailed`.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::Client;
use kube::core::ApiResource;

/// How many group-versions are asked at once.
const PARALLEL: usize = 8;

/// One resource the apiserver serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredResource {
    /// Group, version, kind and plural.
    pub resource: ApiResource,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// The verbs it supports (`list`, `watch`, `delete`, `deletecollection`, ...).
    pub verbs: Vec<String>,
}

impl DiscoveredResource {
    /// Whether every one of `verbs` is supported (client-go's `SupportsAllVerbs`).
    pub fn supports_all(&self, verbs: &[&str]) -> bool {
        verbs.iter().all(|v| self.verbs.iter().any(|s| s == v))
    }

    /// `resource.group` (`pods.` for the core group), as upstream prints a GroupResource.
    pub fn group_resource(&self) -> String {
        format!("{}.{}", self.resource.plural, self.resource.group)
    }
}

/// What discovery found, and which group-versions failed.
#[derive(Clone, Debug, Default)]
pub struct Discovered {
    /// Preferred resources: for every (group, resource) the preferred version's entry, or
    /// the first other version that serves it.
    pub preferred: Vec<DiscoveredResource>,
    /// Every resource in every served version (for mapping owner references whose
    /// apiVersion is not the preferred one).
    pub all: Vec<DiscoveredResource>,
    /// Group-versions that could not be discovered, with the error.
    pub failed: BTreeMap<String, String>,
}

impl Discovered {
    /// client-go's `ErrGroupDiscoveryFailed.Error()`, or `None` when nothing failed.
    pub fn failure_message(&self) -> Option<String> {
        if self.failed.is_empty() {
            return None;
        }
        let groups: Vec<String> = self
            .failed
            .iter()
            .map(|(gv, e)| format!("{gv}: {e}"))
            .collect();
        Some(format!(
            "unable to retrieve the complete list of server APIs: {}",
            groups.join(", ")
        ))
    }

    /// The resource serving `api_version`/`kind`; another version of the same group and
    /// kind when that version is not served (the apiserver converts between them).
    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<&DiscoveredResource> {
        let group = api_version
            .rsplit_once('/')
            .map_or("", |(group, _version)| group);
        self.all
            .iter()
            .filter(|r| r.resource.kind == kind && !r.resource.plural.contains('/'))
            .find(|r| r.resource.api_version == api_version)
            .or_else(|| {
                self.preferred
                    .iter()
                    .find(|r| r.resource.kind == kind && r.resource.group == group)
            })
    }
}

/// One group-version's (group index, group, version) and what asking for it gave.
type GvResult = (
    (usize, String, String),
    Result<APIResourceList, kube::Error>,
);

/// Why discovery failed as a whole (the root lists could not be read).
#[derive(Debug, thiserror::Error)]
#[error("discovering server API groups: {0}")]
pub struct DiscoveryError(#[from] pub kube::Error);

/// Asks the apiserver for every group-version and its resources.
pub async fn discover(client: &Client) -> Result<Discovered, DiscoveryError> {
    // (group, preferred version first then the others)
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    let core = client.list_core_api_versions().await?;
    groups.push((String::new(), core.versions));
    let apis = client.list_api_groups().await?;
    for g in apis.groups {
        let preferred = g.preferred_version.as_ref().map(|p| p.version.clone());
        let mut versions: Vec<String> = g.versions.iter().map(|v| v.version.clone()).collect();
        if let Some(p) = preferred
            && let Some(i) = versions.iter().position(|v| *v == p)
        {
            let v = versions.remove(i);
            versions.insert(0, v);
        }
        groups.push((g.name, versions));
    }

    let gvs: Vec<(usize, String, String)> = groups
        .iter()
        .enumerate()
        .flat_map(|(i, (group, versions))| {
            versions.iter().map(move |v| (i, group.clone(), v.clone()))
        })
        .collect();
    let results: Vec<GvResult> = futures::stream::iter(gvs)
        .map(|(i, group, version)| async move {
            let r = if group.is_empty() {
                client.list_core_api_resources(&version).await
            } else {
                client
                    .list_api_group_resources(&format!("{group}/{version}"))
                    .await
            };
            ((i, group, version), r)
        })
        .buffered(PARALLEL)
        .collect()
        .await;

    let mut out = Discovered::default();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    // `buffered` keeps the input order, so each group's preferred version comes first.
    for ((_, group, version), result) in results {
        let gv = if group.is_empty() {
            version.clone()
        } else {
            format!("{group}/{version}")
        };
        let list = match result {
            Ok(list) => list,
            Err(e) => {
                out.failed.insert(gv, error_text(&e));
                continue;
            }
        };
        for r in parse_list(&group, &version, &list) {
            if !r.resource.plural.contains('/')
                && seen.insert((r.resource.group.clone(), r.resource.plural.clone()))
            {
                out.preferred.push(r.clone());
            }
            out.all.push(r);
        }
    }
    Ok(out)
}

/// The resources of one APIResourceList (subresources included, named `pods/status`).
pub fn parse_list(group: &str, version: &str, list: &APIResourceList) -> Vec<DiscoveredResource> {
    list.resources
        .iter()
        .map(|r| {
            // A resource may live in another group-version than its list (rare, but
            // allowed by the discovery format).
            let g = r.group.clone().unwrap_or_else(|| group.to_string());
            let v = r.version.clone().unwrap_or_else(|| version.to_string());
            let api_version = if g.is_empty() {
                v.clone()
            } else {
                format!("{g}/{v}")
            };
            DiscoveredResource {
                resource: ApiResource {
                    group: g,
                    version: v,
                    api_version,
                    kind: r.kind.clone(),
                    plural: r.name.clone(),
                },
                namespaced: r.namespaced,
                verbs: r.verbs.clone(),
            }
        })
        .collect()
}

/// The apiserver's message for API errors (what upstream puts in conditions), the
/// error's text otherwise.
pub fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => s.message.clone(),
        e => e.to_string(),
    }
}

/// 405 MethodNotAllowed: the resource does not support the verb.
pub fn is_method_not_supported(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 405 || s.reason == "MethodNotAllowed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResource;

    fn res(name: &str, kind: &str, namespaced: bool, verbs: &[&str]) -> APIResource {
        APIResource {
            name: name.into(),
            kind: kind.into(),
            namespaced,
            verbs: verbs.iter().map(ToString::to_string).collect(),
            ..APIResource::default()
        }
    }

    #[test]
    fn parses_lists_and_resolves_kinds() {
        let list = APIResourceList {
            group_version: "apps/v1".into(),
            resources: vec![
                res(
                    "deployments",
                    "Deployment",
                    true,
                    &["list", "watch", "delete"],
                ),
                res("deployments/status", "Deployment", true, &["get", "patch"]),
            ],
        };
        let parsed = parse_list("apps", "v1", &list);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].resource.api_version, "apps/v1");
        assert!(parsed[0].supports_all(&["list", "delete"]));
        assert!(!parsed[1].supports_all(&["list"]));
        assert_eq!(parsed[0].group_resource(), "deployments.apps");
        let d = Discovered {
            preferred: vec![parsed[0].clone()],
            all: parsed,
            failed: BTreeMap::new(),
        };
        let r = d
            .resolve("apps/v1", "Deployment")
            .map(|r| &r.resource.plural);
        assert_eq!(r.map(String::as_str), Some("deployments"));
        // An unserved version of a served group and kind maps to the served one.
        assert!(d.resolve("apps/v1beta2", "Deployment").is_some());
        assert!(d.resolve("v1", "Deployment").is_none());
        assert!(d.failure_message().is_none());
    }

    #[test]
    fn failure_message_is_client_gos() {
        let mut d = Discovered::default();
        d.failed.insert(
            "metrics.example.com/v1".into(),
            "service unavailable".into(),
        );
        assert_eq!(
            d.failure_message().as_deref(),
            Some(
                "unable to retrieve the complete list of server APIs: metrics.example.com/v1: service unavailable"
            )
        );
    }
}
