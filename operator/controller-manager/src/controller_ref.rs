//! Upstream's `ControllerRefManager` (`pkg/controller/controller_ref_manager.go`): a
//! controller claims the objects its selector matches.
//!
//! - An object it controls that still matches is kept.
//! - An object it controls that no longer matches is released (its controller reference
//!   removed), unless the controller is being deleted.
//! - An orphan that matches is adopted (a controller reference added), unless the
//!   controller or the orphan is being deleted. Before the first adoption of a sync the
//!   controller is re-read from the apiserver (not the cache), so that a controller deleted
//!   a moment ago never adopts anything (upstream #42639).
//!
//! Both writes are strategic merge patches on `metadata.ownerReferences` (merged by uid)
//! that also carry the object's uid, so they fail instead of touching a namesake that
//! replaced the object.

use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use crate::controller_utils::controller_of;
use ferrokube_runtime::apierrors;

/// Why claiming failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The controller could not be re-read before adopting.
    #[error("re-reading {kind} {namespace}/{name} before adoption: {source}")]
    Recheck {
        /// The controller's kind.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
    /// The controller is gone or being deleted; it must not adopt.
    #[error("{0}")]
    CannotAdopt(String),
    /// A patch failed.
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Patch {
        /// `adopting` or `releasing`.
        action: &'static str,
        /// The object's kind.
        kind: String,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// What can be claimed (and can claim): namespaced API objects.
pub trait Claimable:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Claimable for K where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// The controller doing the claiming.
#[derive(Clone, Debug)]
pub struct Owner {
    /// `apps/v1`.
    pub api_version: String,
    /// `ReplicaSet`, `Deployment`, ...
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// Whether the cached controller has a deletionTimestamp.
    pub deleting: bool,
}

impl Owner {
    /// The owner of `obj` as a controller of kind `K`.
    pub fn of<K: Resource<DynamicType = ()>>(obj: &K) -> Self {
        let meta = obj.meta();
        Self {
            api_version: K::api_version(&()).into_owned(),
            kind: K::kind(&()).into_owned(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
        }
    }

    /// `metav1.NewControllerRef`: controller and blockOwnerDeletion set.
    pub fn controller_ref(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version.clone(),
            kind: self.kind.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

/// A fresh read of the controller, to confirm it may still adopt (`RecheckDeletionTimestamp`).
pub type Recheck = Box<
    dyn Fn() -> futures::future::BoxFuture<'static, Result<RecheckResult, kube::Error>>
        + Send
        + Sync,
>;

/// What the fresh read found.
#[derive(Clone, Debug)]
pub struct RecheckResult {
    /// The live object's uid.
    pub uid: String,
    /// Whether it has a deletionTimestamp (and when).
    pub deletion_timestamp: Option<String>,
}

/// A recheck that GETs the controller `K` named in `owner`.
pub fn recheck_by_get<K>(client: Client, owner: &Owner) -> Recheck
where
    K: Claimable,
{
    let (ns, name) = (owner.namespace.clone(), owner.name.clone());
    Box::new(move || {
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        let name = name.clone();
        Box::pin(async move {
            let fresh = api.get(&name).await?;
            Ok(RecheckResult {
                uid: fresh.meta().uid.clone().unwrap_or_default(),
                deletion_timestamp: fresh
                    .meta()
                    .deletion_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string()),
            })
        })
    })
}

/// Claims objects of type `K` for one sync of one controller.
pub struct ControllerRefManager {
    client: Client,
    owner: Owner,
    selector: Selector,
    recheck: Recheck,
    /// The recheck runs at most once per sync, and only if something is to be adopted.
    can_adopt: OnceCell<Result<(), String>>,
}

impl ControllerRefManager {
    /// A manager for `owner`, matching with `selector`.
    pub fn new(client: Client, owner: Owner, selector: Selector, recheck: Recheck) -> Self {
        Self {
            client,
            owner,
            selector,
            recheck,
            can_adopt: OnceCell::new(),
        }
    }

    /// Claims `objs`: returns those the owner now controls. Objects that failed to be
    /// adopted or released are left out, and the first error is returned after trying
    /// all of them (upstream aggregates them).
    pub async fn claim<K>(&self, objs: Vec<Arc<K>>) -> (Vec<Arc<K>>, Option<ClaimError>)
    where
        K: Claimable,
    {
        let mut claimed = Vec::new();
        let mut first_error = None;
        for obj in objs {
            match self.claim_one(&*obj).await {
                Ok(true) => claimed.push(obj),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "claiming failed");
                    first_error.get_or_insert(e);
                }
            }
        }
        (claimed, first_error)
    }

    /// Whether the selector matches `obj`'s labels.
    pub fn matches<K: Resource>(&self, obj: &K) -> bool {
        let empty = Default::default();
        self.selector
            .matches(obj.meta().labels.as_ref().unwrap_or(&empty))
    }

    async fn claim_one<K>(&self, obj: &K) -> Result<bool, ClaimError>
    where
        K: Claimable,
    {
        let meta = obj.meta();
        if let Some(cref) = controller_of(meta) {
            if cref.uid != self.owner.uid {
                // Controlled by someone else.
                return Ok(false);
            }
            if self.matches(obj) {
                return Ok(true);
            }
            // Ours but no longer selected: release, unless we're being deleted (the
            // garbage collector then deals with it).
            if self.owner.deleting {
                return Ok(false);
            }
            return match self.release(obj).await {
                Ok(()) => Ok(false),
                // Gone, or no longer ours (uid precondition or ref already removed).
                Err(ClaimError::Patch { source, .. })
                    if apierrors::is_not_found(&source) || apierrors::is_invalid(&source) =>
                {
                    Ok(false)
                }
                Err(e) => Err(e),
            };
        }
        // An orphan.
        if self.owner.deleting || !self.matches(obj) || meta.deletion_timestamp.is_some() {
            return Ok(false);
        }
        if !self.owner.namespace.is_empty()
            && meta.namespace.as_deref().unwrap_or_default() != self.owner.namespace
        {
            return Ok(false);
        }
        match self.adopt(obj).await {
            Ok(()) => Ok(true),
            Err(ClaimError::Patch { source, .. }) if apierrors::is_not_found(&source) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn check_can_adopt(&self) -> Result<(), ClaimError> {
        let o = &self.owner;
        let verdict = self
            .can_adopt
            .get_or_try_init(|| async {
                let fresh = (self.recheck)()
                    .await
                    .map_err(|source| ClaimError::Recheck {
                        kind: o.kind.clone(),
                        namespace: o.namespace.clone(),
                        name: o.name.clone(),
                        source,
                    })?;
                Ok::<_, ClaimError>(if fresh.uid != o.uid {
                    Err(format!(
                        "original {} {}/{} is gone: got uid {}, wanted {}",
                        o.kind, o.namespace, o.name, fresh.uid, o.uid
                    ))
                } else if let Some(at) = fresh.deletion_timestamp {
                    Err(format!(
                        "{}/{} has just been deleted at {}",
                        o.namespace, o.name, at
                    ))
                } else {
                    Ok(())
                })
            })
            .await?;
        verdict.clone().map_err(ClaimError::CannotAdopt)
    }

    async fn adopt<K>(&self, obj: &K) -> Result<(), ClaimError>
    where
        K: Claimable,
    {
        self.check_can_adopt().await?;
        let patch = serde_json::json!({
            "metadata": {
                "ownerReferences": [self.owner.controller_ref()],
                "uid": obj.meta().uid,
            }
        });
        tracing::debug!(owner = %self.owner.name, object = ?obj.meta().name, "adopting");
        self.patch(obj, "adopting", &patch).await
    }

    async fn release<K>(&self, obj: &K) -> Result<(), ClaimError>
    where
        K: Claimable,
    {
        let patch = serde_json::json!({
            "metadata": {
                "ownerReferences": [{"$patch": "delete", "uid": self.owner.uid}],
                "uid": obj.meta().uid,
            }
        });
        tracing::debug!(owner = %self.owner.name, object = ?obj.meta().name, "releasing");
        self.patch(obj, "releasing", &patch).await
    }

    async fn patch<K>(
        &self,
        obj: &K,
        action: &'static str,
        patch: &serde_json::Value,
    ) -> Result<(), ClaimError>
    where
        K: Claimable,
    {
        let meta = obj.meta();
        let ns = meta.namespace.clone().unwrap_or_default();
        let name = meta.name.clone().unwrap_or_default();
        let api: Api<K> = Api::namespaced(self.client.clone(), &ns);
        api.patch(&name, &PatchParams::default(), &Patch::Strategic(patch))
            .await
            .map(|_| ())
            .map_err(|source| ClaimError::Patch {
                action,
                kind: K::kind(&()).into_owned(),
                namespace: ns,
                name,
                source,
            })
    }
}
