//! Rollback through the deprecated `deprecated.deployment.rollback.to` annotation (upstream's
//! `rollback.go`). `kubectl rollout undo` itself patches the Deployment's template from the
//! chosen ReplicaSet on the client side; the controller then rolls that template out like
//! any other change.

use ferrokube_runtime::controller::Action;
use ferrokube_runtime::events::EventType;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use super::util;
use super::{DeploymentController, SyncError, api_err};

/// The revision asked for by the annotation (0: the previous one).
pub(super) fn get_rollback_to(d: &Deployment) -> Option<i64> {
    d.metadata
        .annotations
        .as_ref()?
        .get(util::DEPRECATED_ROLLBACK_TO)
        .filter(|v| !v.is_empty())?
        .parse()
        .ok()
}

impl DeploymentController {
    /// upstream's `rollback`.
    pub(super) async fn rollback(
        &self,
        d: &mut Deployment,
        rs_list: &[ReplicaSet],
    ) -> Result<Action, SyncError> {
        let (new_rs, old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, true)
            .await?;
        let mut all = old;
        all.extend(new_rs);
        let mut to = get_rollback_to(d).unwrap_or(0);
        if to == 0 {
            to = util::last_revision(&all);
            if to == 0 {
                self.event(
                    d,
                    EventType::Warning,
                    util::ROLLBACK_REVISION_NOT_FOUND,
                    "Unable to find last revision.".into(),
                );
                self.update_deployment_and_clear_rollback_to(d, false)
                    .await?;
                return Ok(Action::Done);
            }
        }
        if let Some(rs) = all.iter().find(|rs| util::rs_revision(rs) == Some(to)) {
            let template = rs
                .spec
                .as_ref()
                .and_then(|s| s.template.clone())
                .unwrap_or_default();
            let current = d
                .spec
                .as_ref()
                .map(|s| s.template.clone())
                .unwrap_or_default();
            let performed = !util::equal_ignore_hash(&current, &template);
            if performed {
                let mut t = template;
                if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                    l.remove(util::DEFAULT_DEPLOYMENT_UNIQUE_LABEL_KEY);
                }
                if let Some(spec) = d.spec.as_mut() {
                    spec.template = t;
                }
                util::set_deployment_annotations_to(d, rs);
            } else {
                let name = d.metadata.name.clone().unwrap_or_default();
                self.event(
                    d,
                    EventType::Warning,
                    util::ROLLBACK_TEMPLATE_UNCHANGED,
                    format!(
                        "The rollback revision contains the same template as current deployment {name:?}"
                    ),
                );
            }
            self.update_deployment_and_clear_rollback_to(d, performed)
                .await?;
            if performed {
                let name = d.metadata.name.clone().unwrap_or_default();
                self.event(
                    d,
                    EventType::Normal,
                    util::ROLLBACK_DONE,
                    format!("Rolled back deployment {name:?} to revision {to}"),
                );
            }
            return Ok(Action::Done);
        }
        self.event(
            d,
            EventType::Warning,
            util::ROLLBACK_REVISION_NOT_FOUND,
            "Unable to find the revision to rollback to.".into(),
        );
        self.update_deployment_and_clear_rollback_to(d, false)
            .await?;
        Ok(Action::Done)
    }

    /// Drops the rollback annotation and, after a rollback, writes the template and
    /// annotations: a merge patch that turns the cached object into the desired one,
    /// guarded by the cached resourceVersion so a Deployment edited meanwhile is not
    /// overwritten.
    async fn update_deployment_and_clear_rollback_to(
        &self,
        d: &mut Deployment,
        template_changed: bool,
    ) -> Result<(), SyncError> {
        let name = d.metadata.name.clone().unwrap_or_default();
        let Some(cached) = self
            .d_store
            .get(d.metadata.namespace.as_deref().unwrap_or_default(), &name)
        else {
            return Ok(());
        };
        if let Some(a) = d.metadata.annotations.as_mut() {
            a.remove(util::DEPRECATED_ROLLBACK_TO);
        }
        let before = serde_json::json!({
            "metadata": {"annotations": cached.metadata.annotations},
            "spec": {"template": cached.spec.as_ref().map(|s| &s.template)},
        });
        let after = serde_json::json!({
            "metadata": {"annotations": d.metadata.annotations},
            "spec": {"template": if template_changed {
                d.spec.as_ref().map(|s| &s.template)
            } else {
                cached.spec.as_ref().map(|s| &s.template)
            }},
        });
        let mut patch = merge_diff(&before, &after);
        patch["metadata"]["resourceVersion"] = serde_json::json!(cached.metadata.resource_version);
        // `system:controller:deployment-controller` allows `update`, not `patch`, on
        // deployments: where the patch is refused, PUT the cached object with the same
        // changes (upstream's `Update`), guarded by the same resourceVersion.
        self.object_writer
            .write(&self.deployments(d), &name, &patch, || {
                let mut put = (*cached).clone();
                put.metadata.annotations = d.metadata.annotations.clone();
                if template_changed
                    && let (Some(to), Some(from)) = (put.spec.as_mut(), d.spec.as_ref())
                {
                    to.template = from.template.clone();
                }
                put
            })
            .await
            .map_err(api_err(format!("rolling back deployment {name}")))?;
        Ok(())
    }
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: removed keys become null,
/// changed objects recurse, anything else is replaced.
fn merge_diff(from: &serde_json::Value, to: &serde_json::Value) -> serde_json::Value {
    use serde_json::{Map, Value};
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = Map::new();
            for k in a.keys() {
                if !b.contains_key(k) {
                    out.insert(k.clone(), Value::Null);
                }
            }
            for (k, v) in b {
                match a.get(k) {
                    Some(old) if old == v => {}
                    Some(old @ Value::Object(_)) if v.is_object() => {
                        out.insert(k.clone(), merge_diff(old, v));
                    }
                    _ => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(out)
        }
        (_, to) => to.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::merge_diff;

    #[test]
    fn merge_diff_replaces_exactly() {
        let from = serde_json::json!({"a": {"x": 1, "y": [1, 2]}, "b": 2});
        let to = serde_json::json!({"a": {"y": [3]}, "c": {"z": 1}});
        assert_eq!(
            merge_diff(&from, &to),
            serde_json::json!({"a": {"x": null, "y": [3]}, "b": null, "c": {"z": 1}})
        );
    }
}
