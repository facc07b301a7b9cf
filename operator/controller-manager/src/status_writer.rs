//! Writes that fall back from a merge patch to an update (PUT) when RBAC refuses the
//! patch — a documented exception to the project's "patch, don't PUT" rule.
//!
//! Under `--use-service-account-credentials` (kubeadm's default) each controller acts as
//! `system:serviceaccount:kube-system:<name>`, bound to upstream's bootstrap
//! `system:controller:<name>` ClusterRole. Those roles were written for upstream's
//! controllers, which call `UpdateStatus` / `Update`, so several grant only `update`:
//! `deployments/status`, `replicasets/status`, `replicationcontrollers/status`,
//! `namespaces/status`, `configmaps` for `root-ca-cert-publisher`, `deployments` itself
//! for `deployment-controller`. A merge patch there is Forbidden.
//!
//! ```text
//!   write(patch, object)
//!     ├─ patching allowed (so far) ─▶ merge patch ─▶ ok ─────────────▶ done
//!     │                                  └─ Forbidden ─▶ remember, fall through
//!     └─ PUT object (cached resourceVersion) ─▶ ok / Conflict (retried by the caller)
//! ```
//!
//! A patch is still tried first: it writes only the fields we own and never conflicts,
//! and with the manager's own (admin) credentials it is always allowed. The PUT is what
//! upstream does: the object carries the resourceVersion it was computed from, so a stale
//! cache gets a Conflict (the sync is retried once the cache catches up) instead of
//! overwriting someone else's change; for `/status` the apiserver keeps spec from its own
//! copy. The refusal is remembered for the writer's lifetime (one controller's), so every
//! later write goes straight to the PUT instead of paying for a refused request each time
//! — RBAC roles don't change under a running controller in practice, and if one is
//! widened the PUT keeps working.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ferrokube_runtime::apierrors;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// What a [`StatusWriter`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The `/status` subresource (`patch_status`, else `replace_status`).
    Status,
    /// The object itself (`patch`, else `replace`), for the roles that grant only `update`
    /// on the main resource.
    Object,
}

/// A merge patch that becomes a PUT once the apiserver has refused a patch as Forbidden.
/// Cheap to clone; clones share what was learnt.
#[derive(Clone, Debug)]
pub struct StatusWriter {
    target: Target,
    update_only: Arc<AtomicBool>,
}

impl Default for StatusWriter {
    fn default() -> Self {
        Self::new(Target::Status)
    }
}

impl StatusWriter {
    /// A writer for `target`, starting with patches.
    pub fn new(target: Target) -> Self {
        Self {
            target,
            update_only: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a patch was refused and writes now go by PUT.
    pub fn update_only(&self) -> bool {
        self.update_only.load(Ordering::Relaxed)
    }

    /// Writes `patch` (a JSON merge patch) to object `name`; if patching is forbidden,
    /// writes `object()` with a PUT instead. `object` must give the whole object as it
    /// should be after the write, with the resourceVersion it was computed from (for
    /// [`Target::Status`]: the cached object with the new status). It is called only when
    /// the PUT path is taken. Returns the object as the apiserver stored it.
    pub async fn write<K, F>(
        &self,
        api: &Api<K>,
        name: &str,
        patch: &serde_json::Value,
        object: F,
    ) -> Result<K, kube::Error>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
        F: FnOnce() -> K,
    {
        if !self.update_only() {
            let params = PatchParams::default();
            let patch = Patch::Merge(patch);
            let result = match self.target {
                Target::Status => api.patch_status(name, &params, &patch).await,
                Target::Object => api.patch(name, &params, &patch).await,
            };
            match result {
                Err(e) if apierrors::is_forbidden(&e) => {
                    // The status wording is what operators (and the e2e tests) look for.
                    let what = match self.target {
                        Target::Status => {
                            "patching status is forbidden; writing status with update from now on"
                        }
                        Target::Object => {
                            "patching is forbidden; writing the object with update from now on"
                        }
                    };
                    tracing::info!(kind = %K::kind(&()), error = %message(&e), "{what}");
                    self.update_only.store(true, Ordering::Relaxed);
                }
                other => return other,
            }
        }
        let object = object();
        let params = PostParams::default();
        match self.target {
            Target::Status => api.replace_status(name, &params, &object).await,
            Target::Object => api.replace(name, &params, &object).await,
        }
    }
}

/// The apiserver's message for an API error, the error's text otherwise.
fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    }
}
