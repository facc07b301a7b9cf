//! `serviceaccount-controller`: every active namespace has a `default` ServiceAccount.
//!
//! Upstream's `ServiceAccountsController`: a namespace is synced when it appears or changes,
//! and when one of the ensured ServiceAccounts is deleted. Pods are refused by the
//! ServiceAccount admission plugin until this has run in their namespace.

use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers, enqueue_from};
use ferrokube_runtime::informer::{Notification, Store};
use ferrokube_runtime::workqueue::WorkQueue;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::task::JoinSet;

use super::StartError;
use crate::context::Context;

/// The ServiceAccounts every namespace gets (upstream's `DefaultServiceAccountsControllerOptions`).
const ENSURED: &[&str] = &["default"];

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let namespaces = ctx.informers.informer::<Namespace>();
    let accounts = ctx.informers.informer::<ServiceAccount>();
    let queue: WorkQueue<String> = WorkQueue::new("serviceaccount", &ctx.metrics);

    enqueue_from(
        tasks,
        namespaces.subscribe(),
        queue.clone(),
        ctx.shutdown.clone(),
        |n: &Notification<Namespace>| match n {
            Notification::Deleted(_) => vec![],
            n => n.object().metadata.name.clone().into_iter().collect(),
        },
    );
    enqueue_from(
        tasks,
        accounts.subscribe(),
        queue.clone(),
        ctx.shutdown.clone(),
        |n: &Notification<ServiceAccount>| match n {
            Notification::Deleted(sa)
                if ENSURED.contains(&sa.metadata.name.as_deref().unwrap_or_default()) =>
            {
                sa.metadata.namespace.clone().into_iter().collect()
            }
            _ => vec![],
        },
    );

    let sync = Sync {
        client: ctx.client.clone(),
        namespaces: namespaces.store(),
        accounts: accounts.store(),
    };
    let workers = Workers::new(
        "serviceaccount",
        ctx.options.concurrent_serviceaccount_syncs,
    );
    let (ns_store, sa_store) = (namespaces.store(), accounts.store());
    workers.spawn_when(
        tasks,
        async move {
            ns_store.wait_synced().await;
            sa_store.wait_synced().await;
        },
        queue,
        ctx.shutdown.clone(),
        move |ns: String| {
            let sync = sync.clone();
            async move { sync.namespace(&ns).await }
        },
    );
    Ok(())
}

#[derive(Clone)]
struct Sync {
    client: kube::Client,
    namespaces: Store<Namespace>,
    accounts: Store<ServiceAccount>,
}

impl Sync {
    async fn namespace(&self, ns: &str) -> Result<Action, kube::Error> {
        let Some(namespace) = self.namespaces.get("", ns) else {
            return Ok(Action::Done);
        };
        let active = namespace
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_none_or(|p| p == "Active");
        if !active {
            return Ok(Action::Done);
        }
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), ns);
        let mut failure = None;
        for name in ENSURED {
            if self.accounts.get(ns, name).is_some() {
                continue;
            }
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some((*name).to_string()),
                    namespace: Some(ns.to_string()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            match api.create(&PostParams::default(), &sa).await {
                Ok(_) => tracing::debug!(namespace = ns, name, "created service account"),
                Err(e) if apierrors::is_already_exists(&e) => {}
                Err(e) if apierrors::is_namespace_terminating(&e) => {}
                Err(e) => failure = Some(e),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(Action::Done),
        }
    }
}
