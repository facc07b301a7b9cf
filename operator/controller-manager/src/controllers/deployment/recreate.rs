//! The Recreate strategy (upstream's `recreate.go`): all old pods go before any new one
//! starts.

use ferrokube_runtime::controller::Action;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};

use super::util::{self, d_replicas, rs_replicas};
use super::{DeploymentController, SyncError};

impl DeploymentController {
    /// upstream's `rolloutRecreate`.
    pub(super) async fn rollout_recreate(
        &self,
        d: &mut Deployment,
        rs_list: &[ReplicaSet],
    ) -> Result<Action, SyncError> {
        let (mut new_rs, mut old) = self
            .get_all_replica_sets_and_sync_revision(d, rs_list, false)
            .await?;
        let mut scaled_down = false;
        for rs in &mut old {
            if rs_replicas(rs) == 0 {
                continue;
            }
            let (scaled, updated) = self.scale_replica_set(rs, 0, d, false).await?;
            if scaled {
                *rs = updated;
                scaled_down = true;
            }
        }
        if scaled_down {
            return self.sync_rollout_status(&old, new_rs.as_ref(), d).await;
        }
        // Wait until every old pod is gone (pod deletions requeue us).
        if self.old_pods_running(new_rs.as_ref(), &old, d, rs_list) {
            return self.sync_rollout_status(&old, new_rs.as_ref(), d).await;
        }
        if new_rs.is_none() {
            let (n, o) = self
                .get_all_replica_sets_and_sync_revision(d, rs_list, true)
                .await?;
            new_rs = n;
            old = o;
        }
        if let Some(rs) = new_rs.as_ref() {
            self.scale_replica_set(rs, d_replicas(d), d, false).await?;
        }
        if util::deployment_complete(d, &util::d_status(d)) {
            self.cleanup_deployment(&old, d).await?;
        }
        self.sync_rollout_status(&old, new_rs.as_ref(), d).await
    }

    /// upstream's `oldPodsRunning`: old ReplicaSets still report pods, or pods of theirs
    /// that have not finished are still in the cache.
    fn old_pods_running(
        &self,
        new_rs: Option<&ReplicaSet>,
        old: &[ReplicaSet],
        d: &Deployment,
        rs_list: &[ReplicaSet],
    ) -> bool {
        if old.iter().map(util::rs_actual).sum::<i32>() > 0 {
            return true;
        }
        let new_uid = new_rs.and_then(|r| r.metadata.uid.clone());
        self.pod_map(d, rs_list).iter().any(|(uid, pods)| {
            Some(uid) != new_uid.as_ref()
                && pods.iter().any(|p| {
                    !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Failed" | "Succeeded")
                    )
                })
        })
    }
}
