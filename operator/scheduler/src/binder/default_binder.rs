//! DefaultBinder: binds a pod by creating its `pods/binding` subresource, as upstream.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;

use crate::framework::types::PodInfo;

/// The plugin name.
pub const NAME: &str = "DefaultBinder";

/// Errors binding.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The apiserver refused or could not be reached.
    #[error("binding {pod} to {node}: {source}")]
    Api {
        /// `namespace/name`.
        pod: String,
        /// The node.
        node: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Binds pods through `pods/binding`.
#[derive(Clone)]
pub struct DefaultBinder {
    client: kube::Client,
}

impl DefaultBinder {
    /// A binder writing through `client`.
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// Binds `pod` to `node`. The UID precondition makes the apiserver refuse the binding
    /// if the pod was deleted and recreated under the same name meanwhile.
    pub async fn bind(&self, pod: &PodInfo, node: &str) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.namespace());
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {
                "name": pod.name(),
                "namespace": pod.namespace(),
                "uid": pod.pod.metadata.uid,
            },
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        api.create_subresource::<serde_json::Value, serde_json::Value>(
            "binding",
            pod.name(),
            &PostParams::default(),
            &body,
        )
        .await
        .map(|_| ())
        .map_err(|source| Error::Api {
            pod: pod.key.clone(),
            node: node.to_string(),
            source,
        })
    }
}
