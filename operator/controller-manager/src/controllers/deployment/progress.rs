//! Rollout progress (upstream's `progress.go`): the Progressing condition against
//! `progressDeadlineSeconds`, ReplicaFailure copied from ReplicaSets, and a requeue at the
//! deadline so a stuck rollout is reported without another event.

use std::time::Duration;

use ferrokube_runtime::controller::Action;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::jiff::Timestamp;

use super::sync::calculate_status;
use super::util;
use super::{DeploymentController, SyncError};

impl DeploymentController {
    /// upstream's `syncRolloutStatus`.
    pub(super) async fn sync_rollout_status(
        &self,
        old: &[ReplicaSet],
        new_rs: Option<&ReplicaSet>,
        d: &mut Deployment,
    ) -> Result<Action, SyncError> {
        let mut new_status = calculate_status(old, new_rs, d);
        if util::progress_deadline(d).is_none() {
            util::remove_condition(&mut new_status, util::PROGRESSING);
        }
        let current = util::d_status(d);
        let current_cond = util::get_condition(&current, util::PROGRESSING).cloned();
        let complete_before = new_status.replicas == new_status.updated_replicas
            && current_cond.as_ref().and_then(|c| c.reason.as_deref())
                == Some(util::NEW_RS_AVAILABLE_REASON);
        if util::progress_deadline(d).is_some() && !complete_before {
            let rs_name = new_rs.and_then(|r| r.metadata.name.clone());
            let d_name = d.metadata.name.clone().unwrap_or_default();
            let subject = |what: &str| match &rs_name {
                Some(n) => format!("ReplicaSet {n:?} {what}"),
                None => format!("Deployment {d_name:?} {what}"),
            };
            if util::deployment_complete(d, &new_status) {
                util::set_condition(
                    &mut new_status,
                    util::new_condition(
                        util::PROGRESSING,
                        "True",
                        util::NEW_RS_AVAILABLE_REASON,
                        subject("has successfully progressed."),
                    ),
                );
            } else if util::deployment_progressing(d, &new_status) {
                let mut c = util::new_condition(
                    util::PROGRESSING,
                    "True",
                    util::REPLICA_SET_UPDATED_REASON,
                    subject("is progressing."),
                );
                // Progress moves lastUpdateTime (the deadline's start), not the transition.
                if let Some(cur) = &current_cond {
                    if cur.status == "True" {
                        c.last_transition_time = cur.last_transition_time.clone();
                    }
                    util::remove_condition(&mut new_status, util::PROGRESSING);
                }
                util::set_condition(&mut new_status, c);
            } else if util::deployment_timed_out(d, &new_status, Timestamp::now()) {
                util::set_condition(
                    &mut new_status,
                    util::new_condition(
                        util::PROGRESSING,
                        "False",
                        util::TIMED_OUT_REASON,
                        subject("has timed out progressing."),
                    ),
                );
            }
        }
        match replica_failures(old, new_rs).into_iter().next() {
            Some(c) => util::set_condition(&mut new_status, c),
            None => util::remove_condition(&mut new_status, util::REPLICA_FAILURE),
        }
        let new_status = util::normalize(new_status);
        if current == new_status {
            return Ok(requeue_stuck_deployment(d, &new_status, Timestamp::now()));
        }
        d.status = Some(new_status);
        self.update_status(d).await?;
        Ok(Action::Done)
    }
}

/// upstream's `getReplicaFailures`: the new ReplicaSet's first, else any old one's.
fn replica_failures(old: &[ReplicaSet], new_rs: Option<&ReplicaSet>) -> Vec<DeploymentCondition> {
    let of = |rs: &ReplicaSet| -> Vec<DeploymentCondition> {
        rs.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .filter(|c| c.type_ == util::REPLICA_FAILURE)
            .map(util::replica_set_to_deployment_condition)
            .collect()
    };
    let from_new = new_rs.map(of).unwrap_or_default();
    if !from_new.is_empty() {
        return from_new;
    }
    old.iter().chain(new_rs).flat_map(of).collect()
}

/// upstream's `requeueStuckDeployment`: look again when the progress deadline passes.
pub(super) fn requeue_stuck_deployment(
    d: &Deployment,
    new_status: &DeploymentStatus,
    now: Timestamp,
) -> Action {
    let current = util::d_status(d);
    let (Some(deadline), Some(cond)) = (
        util::progress_deadline(d),
        util::get_condition(&current, util::PROGRESSING),
    ) else {
        return Action::Done;
    };
    if util::deployment_complete(d, new_status)
        || cond.reason.as_deref() == Some(util::TIMED_OUT_REASON)
    {
        return Action::Done;
    }
    let Some(updated) = cond.last_update_time.as_ref() else {
        return Action::Done;
    };
    let due = updated
        .0
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
            deadline,
        )))
        .unwrap_or(now);
    let after = Duration::try_from(now.duration_until(due)).unwrap_or(Duration::ZERO);
    if after < Duration::from_secs(1) {
        return Action::RequeueAfter(Duration::from_secs(1));
    }
    Action::RequeueAfter(after + Duration::from_secs(1))
}
