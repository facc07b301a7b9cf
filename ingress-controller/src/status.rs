//! `status.loadBalancer` of the Ingresses we serve: the addresses of
//! `--publish-status-address`, else of the `--publish-service` Service. Only the leader
//! writes, with merge patches on the status subresource touching nothing else.

use std::net::IpAddr;
use std::sync::Arc;

use ferrokube_runtime::informer::{ObjectKey, Store};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::{Ingress, IngressLoadBalancerIngress};
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where the addresses come from.
#[derive(Clone)]
pub struct Source {
    /// `--publish-status-address`.
    pub addresses: Vec<String>,
    /// `--publish-service` and the Service cache.
    pub service: Option<(ObjectKey, Store<Service>)>,
}

fn entry(addr: &str) -> IngressLoadBalancerIngress {
    if addr.parse::<IpAddr>().is_ok() {
        IngressLoadBalancerIngress {
            ip: Some(addr.to_string()),
            ..Default::default()
        }
    } else {
        IngressLoadBalancerIngress {
            hostname: Some(addr.to_string()),
            ..Default::default()
        }
    }
}

impl Source {
    /// The status entries to publish now, sorted.
    pub fn desired(&self) -> Vec<IngressLoadBalancerIngress> {
        let mut addrs: Vec<String> = self
            .addresses
            .iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty()
            && let Some((key, store)) = &self.service
            && let Some(svc) = store.get_key(key)
        {
            let lb: Vec<String> = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .collect();
            let spec = svc.spec.clone().unwrap_or_default();
            addrs = if !lb.is_empty() {
                lb
            } else if let Some(ext) = spec.external_ips.filter(|e| !e.is_empty()) {
                ext
            } else {
                spec.cluster_ip
                    .into_iter()
                    .filter(|ip| ip != "None")
                    .collect()
            };
        }
        addrs.sort();
        addrs.dedup();
        addrs.iter().map(|a| entry(a)).collect()
    }
}

fn current(ing: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    let mut v: Vec<IngressLoadBalancerIngress> = ing
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.clone())
        .unwrap_or_default();
    v.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    v
}

/// Keeps the status of our Ingresses at `source`'s addresses until `stop`. Runs again on
/// every compile (a changed Ingress list) and every few seconds (a changed Service).
pub async fn run(
    client: kube::Client,
    source: Source,
    mut ours: watch::Receiver<Vec<Arc<Ingress>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        let desired = source.desired();
        let list = ours.borrow_and_update().clone();
        for ing in list {
            if current(&ing) == desired {
                continue;
            }
            let key = ObjectKey::of(&*ing);
            let api: Api<Ingress> = Api::namespaced(client.clone(), &key.namespace);
            let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": desired}}});
            match api
                .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => tracing::info!(ingress = %key, "updated status"),
                Err(e) => tracing::warn!(ingress = %key, error = %e, "updating status failed"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = ours.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_flags() {
        let s = Source {
            addresses: vec!["lb.example.com".into(), " 10.0.0.1".into()],
            service: None,
        };
        let d = s.desired();
        assert_eq!(d[0].ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(d[1].hostname.as_deref(), Some("lb.example.com"));
    }
}
