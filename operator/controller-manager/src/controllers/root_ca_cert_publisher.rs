//! `root-ca-certificate-publisher-controller`: every namespace gets ConfigMap
//! `kube-root-ca.crt` holding the CA bundle that verifies the apiserver, so that projected
//! service account volumes can mount it.

use std::collections::BTreeMap;
use std::sync::Arc;

use ferrokube_runtime::apierrors;
use ferrokube_runtime::controller::{Action, Workers, enqueue_from};
use ferrokube_runtime::informer::{Notification, Selectors, Store};
use ferrokube_runtime::workqueue::WorkQueue;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::task::JoinSet;

use super::StartError;
use crate::context::Context;
use crate::status_writer::{StatusWriter, Target};

/// The ConfigMap's name.
pub const CONFIG_MAP: &str = "kube-root-ca.crt";
/// The key holding the PEM bundle.
pub const DATA_KEY: &str = "ca.crt";
/// The annotation explaining what the ConfigMap is for.
pub const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
/// Upstream's description text, verbatim.
pub const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.";

/// Starts the controller.
pub fn start(ctx: &Context, tasks: &mut JoinSet<()>) -> Result<(), StartError> {
    let Some(root_ca) = ctx.root_ca.clone() else {
        return Err(StartError {
            controller: "root-ca-certificate-publisher-controller",
            reason:
                "no CA bundle: pass --root-ca-file or use a kubeconfig with a certificate authority"
                    .into(),
        });
    };
    let namespaces = ctx.informers.informer::<Namespace>();
    // Only the one ConfigMap per namespace matters; don't cache every ConfigMap.
    let config_maps = ctx.informers.informer_with::<ConfigMap>(Selectors {
        field_selector: Some(format!("metadata.name={CONFIG_MAP}")),
        ..Selectors::default()
    });
    let queue: WorkQueue<String> = WorkQueue::new("root_ca_cert_publisher", &ctx.metrics);

    enqueue_from(
        tasks,
        namespaces.subscribe(),
        queue.clone(),
        ctx.shutdown.clone(),
        |n: &Notification<Namespace>| match n {
            Notification::Added(ns) => ns.metadata.name.clone().into_iter().collect(),
            Notification::Updated { new, .. }
                if new.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Active") =>
            {
                new.metadata.name.clone().into_iter().collect()
            }
            _ => vec![],
        },
    );
    enqueue_from(
        tasks,
        config_maps.subscribe(),
        queue.clone(),
        ctx.shutdown.clone(),
        |n: &Notification<ConfigMap>| match n {
            Notification::Updated { new: cm, .. } | Notification::Deleted(cm) => {
                cm.metadata.namespace.clone().into_iter().collect()
            }
            Notification::Added(_) => vec![],
        },
    );

    let sync = Sync {
        client: ctx.client.clone(),
        config_maps: config_maps.store(),
        root_ca,
        writer: StatusWriter::new(Target::Object),
    };
    let cm_store = config_maps.store();
    Workers::new("root_ca_cert_publisher", 1).spawn_when(
        tasks,
        async move { cm_store.wait_synced().await },
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
    config_maps: Store<ConfigMap>,
    root_ca: Arc<String>,
    /// Repairs of an existing ConfigMap: merge patch, else PUT.
    writer: StatusWriter,
}

impl Sync {
    fn data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(DATA_KEY.to_string(), self.root_ca.to_string())])
    }

    async fn namespace(&self, ns: &str) -> Result<Action, kube::Error> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let Some(cm) = self.config_maps.get(ns, CONFIG_MAP) else {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(CONFIG_MAP.to_string()),
                    namespace: Some(ns.to_string()),
                    annotations: Some(BTreeMap::from([(
                        DESCRIPTION_ANNOTATION.to_string(),
                        DESCRIPTION.to_string(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(self.data()),
                ..ConfigMap::default()
            };
            return match api.create(&PostParams::default(), &cm).await {
                Ok(_) => Ok(Action::Done),
                // Namespace gone or going: nothing to publish into.
                Err(e)
                    if apierrors::is_not_found(&e) || apierrors::is_namespace_terminating(&e) =>
                {
                    Ok(Action::Done)
                }
                Err(e) if apierrors::is_already_exists(&e) => Ok(Action::Done),
                Err(e) => Err(e),
            };
        };
        let described = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DESCRIPTION_ANNOTATION))
            .is_some_and(|d| !d.is_empty());
        if cm.data.as_ref() == Some(&self.data()) && described {
            return Ok(Action::Done);
        }
        // Replace `data` wholesale (upstream drops any other keys) and restore the
        // annotation; a JSON merge patch with explicit nulls for stray keys does both.
        let mut data = serde_json::Map::new();
        for key in cm.data.iter().flat_map(|d| d.keys()) {
            data.insert(key.clone(), serde_json::Value::Null);
        }
        data.insert(DATA_KEY.into(), self.root_ca.as_str().into());
        let patch = serde_json::json!({
            "metadata": {
                "annotations": { DESCRIPTION_ANNOTATION: DESCRIPTION },
                "resourceVersion": cm.metadata.resource_version,
            },
            "data": data,
            "binaryData": null,
        });
        // `system:controller:root-ca-cert-publisher` grants `create` and `update` on
        // configmaps, not `patch`: where the patch is refused, PUT the cached ConfigMap with
        // the same changes (upstream's `Update`), guarded by its resourceVersion.
        let write = self.writer.write(&api, CONFIG_MAP, &patch, || {
            let mut put = (*cm).clone();
            put.data = Some(self.data());
            put.binary_data = None;
            put.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(DESCRIPTION_ANNOTATION.into(), DESCRIPTION.into());
            put
        });
        match write.await {
            Ok(_) => Ok(Action::Done),
            Err(e) if apierrors::is_not_found(&e) => Ok(Action::Done),
            Err(e) => Err(e),
        }
    }
}
