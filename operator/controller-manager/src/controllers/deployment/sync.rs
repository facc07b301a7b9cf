//! Scaling, the new ReplicaSet, history cleanup and status (upstream's `sync.go`).

use std::collections::BTreeMap;

use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::Action;
use ferrokube_runtime::events::EventType;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};

use super::util::{self, d_replicas, rs_replicas};
use super::{DeploymentController, SyncError, api_err, compute_hash};
use crate::controller_ref::Owner;
use crate::controller_utils::controller_of;

impl DeploymentController {
    /// Only the status, for a Deployment being deleted (`syncStatusOnly`).
    pub(super) async fn sync_status_only(
        &self,
        d: &mut Deployment,
        rs_list: &[ReplicaSet],
    ) -> Result<Action, SyncError> {
        let (new_rs, old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, false)
            .await?;
        self.sync_deployment_status(d, &old, new_rs.as_ref())
            .await?;
        Ok(Action::Done)
    }

    /// Scaling without a rollout: paused Deployments and scaling events (`sync`).
    pub(super) async fn sync(
        &self,
        d: &mut Deployment,
        rs_list: &[ReplicaSet],
    ) -> Result<Action, SyncError> {
        let (new_rs, old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, false)
            .await?;
        self.scale(d, new_rs.as_ref(), &old).await?;
        // A paused Deployment cleans up history now: it will not complete a rollout soon.
        if util::paused(d) && super::rollback::get_rollback_to(d).is_none() {
            self.cleanup_deployment(&old, d).await?;
        }
        // Sizes just changed; the status is computed from the ReplicaSets as now cached,
        // and the ReplicaSet updates will bring us back.
        self.sync_deployment_status(d, &old, new_rs.as_ref())
            .await?;
        Ok(Action::Done)
    }

    /// Progressing=Unknown with DeploymentPaused / DeploymentResumed (`checkPausedConditions`).
    pub(super) async fn check_paused_conditions(
        &self,
        d: &mut Deployment,
    ) -> Result<(), SyncError> {
        if util::progress_deadline(d).is_none() {
            return Ok(());
        }
        let mut status = util::d_status(d);
        let cond = util::get_condition(&status, util::PROGRESSING).cloned();
        if cond.as_ref().and_then(|c| c.reason.as_deref()) == Some(util::TIMED_OUT_REASON) {
            // A timed-out rollout stays timed out until a new one starts.
            return Ok(());
        }
        let paused_exists =
            cond.as_ref().and_then(|c| c.reason.as_deref()) == Some(util::PAUSED_DEPLOY_REASON);
        let c = if util::paused(d) && !paused_exists {
            util::new_condition(
                util::PROGRESSING,
                "Unknown",
                util::PAUSED_DEPLOY_REASON,
                "Deployment is paused".into(),
            )
        } else if !util::paused(d) && paused_exists {
            util::new_condition(
                util::PROGRESSING,
                "Unknown",
                util::RESUMED_DEPLOY_REASON,
                "Deployment is resumed".into(),
            )
        } else {
            return Ok(());
        };
        util::set_condition(&mut status, c);
        d.status = Some(status);
        self.update_status(d).await
    }

    /// The new ReplicaSet (created when asked and missing) and all the old ones
    /// (`getAllReplicaSetsAndSyncRevision`).
    pub(super) async fn get_all_replica_sets_and_sync_revision(
        &self,
        d: &mut Deployment,
        rs_list: &[ReplicaSet],
        create: bool,
    ) -> Result<(Option<ReplicaSet>, Vec<ReplicaSet>), SyncError> {
        let old = util::find_old_replica_sets(d, rs_list);
        let new_rs = self.get_new_replica_set(d, rs_list, &old, create).await?;
        Ok((new_rs, old))
    }

    /// upstream's `getNewReplicaSet`.
    async fn get_new_replica_set(
        &self,
        d: &mut Deployment,
        rs_list: &[ReplicaSet],
        old: &[ReplicaSet],
        create: bool,
    ) -> Result<Option<ReplicaSet>, SyncError> {
        let new_revision = (util::max_revision(old) + 1).to_string();
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let min_ready = d.spec.as_ref().and_then(|s| s.min_ready_seconds);
        if let Some(existing) = util::find_new_replica_set(d, rs_list) {
            let mut copy = existing.clone();
            let annotations_updated = util::set_new_replica_set_annotations(
                d,
                &mut copy,
                &new_revision,
                true,
                util::MAX_REV_HISTORY_LENGTH_IN_CHARS,
            );
            let rs_min_ready = copy.spec.as_ref().and_then(|s| s.min_ready_seconds);
            if annotations_updated || rs_min_ready.unwrap_or(0) != min_ready.unwrap_or(0) {
                let name = copy.metadata.name.clone().unwrap_or_default();
                let patch = serde_json::json!({
                    "metadata": {
                        "resourceVersion": copy.metadata.resource_version,
                        "annotations": copy.metadata.annotations,
                    },
                    "spec": { "minReadySeconds": min_ready.unwrap_or(0) },
                });
                let updated = self
                    .replica_sets(&ns)
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map_err(api_err(format!("updating replica set {name}")))?;
                return Ok(Some(updated));
            }
            let rs_rev = copy
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(util::REVISION_ANNOTATION))
                .cloned()
                .unwrap_or_default();
            let mut needs_update = util::set_deployment_revision(d, &rs_rev);
            let mut status = util::d_status(d);
            if util::progress_deadline(d).is_some()
                && util::get_condition(&status, util::PROGRESSING).is_none()
            {
                let name = copy.metadata.name.clone().unwrap_or_default();
                util::set_condition(
                    &mut status,
                    util::new_condition(
                        util::PROGRESSING,
                        "True",
                        util::FOUND_NEW_RS_REASON,
                        format!("Found new replica set {name:?}"),
                    ),
                );
                needs_update = true;
            }
            d.status = Some(status);
            if needs_update {
                self.update_status(d).await?;
            }
            return Ok(Some(copy));
        }
        if !create {
            return Ok(None);
        }

        // A new ReplicaSet named after the template's hash.
        let spec = d.spec.clone().unwrap_or_default();
        let mut status = util::d_status(d);
        let hash = compute_hash(&spec.template, status.collision_count);
        let mut template = spec.template.clone();
        let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
        meta.labels.get_or_insert_with(BTreeMap::new).insert(
            util::DEFAULT_DEPLOYMENT_UNIQUE_LABEL_KEY.into(),
            hash.clone(),
        );
        let labels = meta.labels.clone();
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(
                util::DEFAULT_DEPLOYMENT_UNIQUE_LABEL_KEY.into(),
                hash.clone(),
            );
        let name = util::replica_set_name(d.metadata.name.as_deref().unwrap_or_default(), &hash);
        let mut new_rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                owner_references: Some(vec![Owner::of(&*d).controller_ref()]),
                labels,
                ..ObjectMeta::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(0),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let mut all: Vec<ReplicaSet> = old.to_vec();
        all.push(new_rs.clone());
        let count = util::new_rs_new_replicas(d, &all, &new_rs).map_err(SyncError::Invalid)?;
        if let Some(s) = new_rs.spec.as_mut() {
            s.replicas = Some(count);
        }
        util::set_new_replica_set_annotations(
            d,
            &mut new_rs,
            &new_revision,
            false,
            util::MAX_REV_HISTORY_LENGTH_IN_CHARS,
        );
        let mut already_exists = false;
        let created = match self
            .replica_sets(&ns)
            .create(&PostParams::default(), &new_rs)
            .await
        {
            Ok(rs) => rs,
            Err(e) if apierrors::is_already_exists(&e) => {
                already_exists = true;
                let Some(rs) = self.rs_store.get(&ns, &name) else {
                    return Err(SyncError::Api {
                        what: format!("creating replica set {name}"),
                        source: e,
                    });
                };
                let ours = controller_of(&rs.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                let same = rs
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| util::equal_ignore_hash(&spec.template, t));
                if ours && same {
                    // Our own creation, not yet in the cache when we looked.
                    (*rs).clone()
                } else {
                    // A hash collision: count it so the next hash differs.
                    let pre = status.collision_count.unwrap_or(0);
                    status.collision_count = Some(pre + 1);
                    d.status = Some(status);
                    self.update_status(d).await?;
                    tracing::info!(deployment = ?d.metadata.name, collision_count = pre + 1, "found a hash collision");
                    return Err(SyncError::Api {
                        what: format!("creating replica set {name}"),
                        source: e,
                    });
                }
            }
            Err(e) if apierrors::is_namespace_terminating(&e) => {
                return Err(SyncError::Api {
                    what: format!("creating replica set {name}"),
                    source: e,
                });
            }
            Err(e) => {
                let msg = format!(
                    "Failed to create new replica set {name:?}: {}",
                    super::super::replicaset::error_message(&e)
                );
                if util::progress_deadline(d).is_some() {
                    util::set_condition(
                        &mut status,
                        util::new_condition(
                            util::PROGRESSING,
                            "False",
                            util::FAILED_RS_CREATE_REASON,
                            msg.clone(),
                        ),
                    );
                    d.status = Some(status);
                    // Best effort: the error below is what gets retried.
                    let _ = self.update_status(d).await;
                }
                self.event(d, EventType::Warning, util::FAILED_RS_CREATE_REASON, msg);
                return Err(SyncError::Api {
                    what: format!("creating replica set {name}"),
                    source: e,
                });
            }
        };
        if !already_exists && count > 0 {
            self.event(
                d,
                EventType::Normal,
                "ScalingReplicaSet",
                format!("Scaled up replica set {name} from 0 to {count}"),
            );
        }
        let mut needs_update = util::set_deployment_revision(d, &new_revision);
        let mut status = util::d_status(d);
        if !already_exists && util::progress_deadline(d).is_some() {
            util::set_condition(
                &mut status,
                util::new_condition(
                    util::PROGRESSING,
                    "True",
                    util::NEW_REPLICA_SET_REASON,
                    format!("Created new replica set {name:?}"),
                ),
            );
            needs_update = true;
        }
        d.status = Some(status);
        if needs_update {
            self.update_status(d).await?;
        }
        Ok(Some(created))
    }

    /// Proportional scaling across ReplicaSets when the Deployment's size changes mid-
    /// rollout (`scale`).
    pub(super) async fn scale(
        &self,
        d: &Deployment,
        new_rs: Option<&ReplicaSet>,
        old: &[ReplicaSet],
    ) -> Result<(), SyncError> {
        let want = d_replicas(d);
        if let Some(rs) = util::find_active_or_latest(new_rs, old) {
            if rs_replicas(&rs) == want {
                return Ok(());
            }
            self.scale_replica_set(&rs, want, d, false).await?;
            return Ok(());
        }
        if util::is_saturated(d, new_rs) {
            for rs in util::active(old) {
                self.scale_replica_set(&rs, 0, d, false).await?;
            }
            return Ok(());
        }
        if !util::is_rolling_update(d) {
            return Ok(());
        }
        let mut all: Vec<ReplicaSet> = old.to_vec();
        all.extend(new_rs.cloned());
        let mut all = util::active(&all);
        let current: i32 = all.iter().map(rs_replicas).sum();
        let allowed = if want > 0 {
            want + util::max_surge(d)
        } else {
            0
        };
        let to_add = allowed - current;
        match to_add.cmp(&0) {
            std::cmp::Ordering::Greater => all.sort_by(util::by_size_newer),
            std::cmp::Ordering::Less => all.sort_by(util::by_size_older),
            std::cmp::Ordering::Equal => {}
        }
        let mut added = 0;
        let mut sizes: Vec<i32> = Vec::with_capacity(all.len());
        for rs in &all {
            if to_add == 0 {
                sizes.push(rs_replicas(rs));
            } else {
                let p = util::replica_set_proportion(rs, d, to_add, added);
                sizes.push(rs_replicas(rs) + p);
                added += p;
            }
        }
        for (i, rs) in all.iter().enumerate() {
            let mut size = sizes[i];
            if i == 0 && to_add != 0 {
                // The biggest ReplicaSet takes what rounding left over.
                size = (size + to_add - added).max(0);
            }
            self.scale_replica_set(rs, size, d, true).await?;
        }
        Ok(())
    }

    /// Deletes old ReplicaSets beyond `revisionHistoryLimit` (`cleanupDeployment`).
    pub(super) async fn cleanup_deployment(
        &self,
        old: &[ReplicaSet],
        d: &Deployment,
    ) -> Result<(), SyncError> {
        let Some(limit) = util::revision_history_limit(d) else {
            return Ok(());
        };
        let mut cleanable: Vec<&ReplicaSet> = old
            .iter()
            .filter(|rs| rs.metadata.deletion_timestamp.is_none())
            .collect();
        let diff = i64::try_from(cleanable.len()).unwrap_or(i64::MAX) - i64::from(limit);
        if diff <= 0 {
            return Ok(());
        }
        cleanable.sort_by(|a, b| util::by_revision(a, b));
        for rs in cleanable
            .into_iter()
            .take(usize::try_from(diff).unwrap_or(usize::MAX))
        {
            let status = rs.status.clone().unwrap_or_default();
            // Only empty ReplicaSets whose controller caught up with their spec.
            if status.replicas != 0
                || rs_replicas(rs) != 0
                || rs.metadata.generation.unwrap_or(0) > status.observed_generation.unwrap_or(0)
            {
                continue;
            }
            let name = rs.metadata.name.clone().unwrap_or_default();
            tracing::debug!(replicaset = %name, "trying to cleanup replica set for deployment");
            match self
                .replica_sets(rs.metadata.namespace.as_deref().unwrap_or_default())
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => {}
                Err(e) if apierrors::is_not_found(&e) => {}
                Err(e) => {
                    return Err(SyncError::Api {
                        what: format!("deleting replica set {name}"),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes the status when it changed (`syncDeploymentStatus`).
    pub(super) async fn sync_deployment_status(
        &self,
        d: &mut Deployment,
        old: &[ReplicaSet],
        new_rs: Option<&ReplicaSet>,
    ) -> Result<(), SyncError> {
        let new_status = calculate_status(old, new_rs, d);
        if util::d_status(d) == new_status {
            return Ok(());
        }
        d.status = Some(new_status);
        self.update_status(d).await
    }

    /// Whether the Deployment's size changed since the active ReplicaSets were last scaled
    /// (`isScalingEvent`).
    pub(super) async fn is_scaling_event(
        &self,
        d: &mut Deployment,
        rs_list: &[ReplicaSet],
    ) -> Result<bool, SyncError> {
        let (new_rs, old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, false)
            .await?;
        let mut all = old;
        all.extend(new_rs);
        Ok(util::active(&all).iter().any(|rs| {
            util::desired_replicas_annotation(rs).is_some_and(|desired| desired != d_replicas(d))
        }))
    }
}

/// upstream's `calculateStatus`: counts summed over the ReplicaSets, and the Available
/// condition.
pub(super) fn calculate_status(
    old: &[ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    d: &Deployment,
) -> DeploymentStatus {
    let mut all: Vec<&ReplicaSet> = old.iter().collect();
    all.extend(new_rs);
    let available: i32 = all.iter().map(|rs| util::rs_available(rs)).sum();
    let total: i32 = all.iter().map(|rs| rs_replicas(rs)).sum();
    let current = util::d_status(d);
    let mut status = DeploymentStatus {
        observed_generation: Some(d.metadata.generation.unwrap_or(0)),
        replicas: Some(all.iter().map(|rs| util::rs_actual(rs)).sum()),
        updated_replicas: Some(new_rs.map_or(0, util::rs_actual)),
        ready_replicas: Some(all.iter().map(|rs| util::rs_ready(rs)).sum()),
        available_replicas: Some(available),
        unavailable_replicas: Some((total - available).max(0)),
        collision_count: current.collision_count,
        terminating_replicas: terminating_replicas(&all),
        conditions: current.conditions.clone(),
    };
    if available >= d_replicas(d) - util::max_unavailable(d) {
        util::set_condition(
            &mut status,
            util::new_condition(
                util::AVAILABLE,
                "True",
                util::MINIMUM_REPLICAS_AVAILABLE,
                "Deployment has minimum availability.".into(),
            ),
        );
    } else {
        util::set_condition(
            &mut status,
            util::new_condition(
                util::AVAILABLE,
                "False",
                util::MINIMUM_REPLICAS_UNAVAILABLE,
                "Deployment does not have minimum availability.".into(),
            ),
        );
    }
    util::normalize(status)
}

/// `GetTerminatingReplicaCountForReplicaSets`: unknown (None) when any ReplicaSet that its
/// controller has seen does not report it.
fn terminating_replicas(all: &[&ReplicaSet]) -> Option<i32> {
    let mut sum = 0;
    for rs in all {
        let s = rs.status.clone().unwrap_or_default();
        match s.terminating_replicas {
            Some(n) => sum += n,
            None if s.observed_generation.unwrap_or(0) == 0 => {}
            None => return None,
        }
    }
    Some(sum)
}
