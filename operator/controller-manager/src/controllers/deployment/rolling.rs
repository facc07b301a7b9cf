//! The RollingUpdate strategy (upstream's `rolling.go`): scale the new ReplicaSet up within
//! maxSurge, the old ones down within maxUnavailable, one step per sync.

use ferrokube_runtime::controller::Action;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use super::util::{self, d_replicas, rs_available, rs_replicas};
use super::{DeploymentController, SyncError};

impl DeploymentController {
    /// upstream's `rolloutRolling`.
    pub(super) async fn rollout_rolling(
        &self,
        d: &mut Deployment,
        rs_list: &[ReplicaSet],
    ) -> Result<Action, SyncError> {
        let (new_rs, old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, true)
            .await?;
        let Some(new_rs) = new_rs else {
            return Err(SyncError::Invalid("no new replica set".into()));
        };
        let mut all = old.clone();
        all.push(new_rs.clone());

        if self.reconcile_new_replica_set(&all, &new_rs, d).await? {
            // Scaled up; the ReplicaSet update brings us back for the next step.
            return self.sync_rollout_status(&old, Some(&new_rs), d).await;
        }
        if self
            .reconcile_old_replica_sets(&all, util::active(&old), &new_rs, d)
            .await?
        {
            return self.sync_rollout_status(&old, Some(&new_rs), d).await;
        }
        if util::deployment_complete(d, &util::d_status(d)) {
            self.cleanup_deployment(&old, d).await?;
        }
        self.sync_rollout_status(&old, Some(&new_rs), d).await
    }

    /// upstream's `reconcileNewReplicaSet`.
    async fn reconcile_new_replica_set(
        &self,
        all: &[ReplicaSet],
        new_rs: &ReplicaSet,
        d: &Deployment,
    ) -> Result<bool, SyncError> {
        let want = d_replicas(d);
        if rs_replicas(new_rs) == want {
            return Ok(false);
        }
        if rs_replicas(new_rs) > want {
            return Ok(self.scale_replica_set(new_rs, want, d, false).await?.0);
        }
        let count = util::new_rs_new_replicas(d, all, new_rs).map_err(SyncError::Invalid)?;
        Ok(self.scale_replica_set(new_rs, count, d, false).await?.0)
    }

    /// upstream's `reconcileOldReplicaSets`: first drop unhealthy old replicas, then scale
    /// old ReplicaSets down as far as availability allows.
    async fn reconcile_old_replica_sets(
        &self,
        all: &[ReplicaSet],
        old: Vec<ReplicaSet>,
        new_rs: &ReplicaSet,
        d: &Deployment,
    ) -> Result<bool, SyncError> {
        let old_pods: i32 = old.iter().map(rs_replicas).sum();
        if old_pods == 0 {
            return Ok(false);
        }
        let all_pods: i32 = all.iter().map(rs_replicas).sum();
        let min_available = d_replicas(d) - util::max_unavailable(d);
        let new_unavailable = rs_replicas(new_rs) - rs_available(new_rs);
        let max_scaled_down = all_pods - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return Ok(false);
        }
        // Errors here are retried on the next sync, as upstream does (it returns no error).
        let (old, cleaned) = match self
            .cleanup_unhealthy_replicas(old, d, max_scaled_down)
            .await
        {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cleaning up unhealthy replicas");
                return Ok(false);
            }
        };
        let mut all: Vec<ReplicaSet> = old.clone();
        all.push(new_rs.clone());
        let scaled = match self.scale_down_old_replica_sets(&all, old, d).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "scaling down old replica sets");
                return Ok(false);
            }
        };
        Ok(cleaned + scaled > 0)
    }

    /// upstream's `cleanupUnhealthyReplicas`: old replicas that are not available go first.
    async fn cleanup_unhealthy_replicas(
        &self,
        mut old: Vec<ReplicaSet>,
        d: &Deployment,
        max_cleanup: i32,
    ) -> Result<(Vec<ReplicaSet>, i32), SyncError> {
        old.sort_by(util::by_creation);
        let mut total = 0;
        for rs in &mut old {
            if total >= max_cleanup {
                break;
            }
            let (replicas, available) = (rs_replicas(rs), rs_available(rs));
            if replicas == 0 || replicas == available {
                continue;
            }
            let down = (max_cleanup - total).min(replicas - available);
            let (_, updated) = self
                .scale_replica_set(rs, replicas - down, d, false)
                .await?;
            total += down;
            *rs = updated;
        }
        Ok((old, total))
    }

    /// upstream's `scaleDownOldReplicaSetsForRollingUpdate`.
    async fn scale_down_old_replica_sets(
        &self,
        all: &[ReplicaSet],
        mut old: Vec<ReplicaSet>,
        d: &Deployment,
    ) -> Result<i32, SyncError> {
        let min_available = d_replicas(d) - util::max_unavailable(d);
        let available: i32 = all.iter().map(rs_available).sum();
        if available <= min_available {
            return Ok(0);
        }
        old.sort_by(util::by_creation);
        let target = available - min_available;
        let mut total = 0;
        for rs in &old {
            if total >= target {
                break;
            }
            let replicas = rs_replicas(rs);
            if replicas == 0 {
                continue;
            }
            let down = replicas.min(target - total);
            self.scale_replica_set(rs, replicas - down, d, false)
                .await?;
            total += down;
        }
        Ok(total)
    }
}
