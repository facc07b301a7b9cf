//! The controllers, one module per upstream `--controllers` name, and the registry that
//! knows every upstream name so that command lines written for kube-controller-manager
//! (kubeadm passes `--controllers=*,bootstrapsigner,tokencleaner`) are accepted as they are.

pub mod deployment;
pub mod endpoints;
pub mod endpointslice;
pub mod garbage_collector;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod podgc;
pub mod replicaset;
pub mod replicationcontroller;
pub mod resource_discovery;
pub mod root_ca_cert_publisher;
pub mod serviceaccount;
pub mod taint_eviction;

use tokio::task::JoinSet;

use crate::context::Context;
use crate::selection::Known;

/// Why a controller could not start.
#[derive(Debug, thiserror::Error)]
#[error("starting {controller}: {reason}")]
pub struct StartError {
    /// The controller's canonical name.
    pub controller: &'static str,
    /// What went wrong.
    pub reason: String,
}

/// Starts a controller: asks the context's factory for informers, spawns its tasks.
pub type StartFn = fn(&Context, &mut JoinSet<()>) -> Result<(), StartError>;

/// One upstream controller and, when ferrokube implements it, how to start it.
pub struct Descriptor {
    /// Name, aliases and default.
    pub known: Known,
    /// `None`: accepted on the command line but not implemented by ferrokube yet.
    pub start: Option<StartFn>,
}

const fn known(
    name: &'static str,
    aliases: &'static [&'static str],
    disabled_by_default: bool,
    start: Option<StartFn>,
) -> Descriptor {
    Descriptor {
        known: Known {
            name,
            aliases,
            disabled_by_default,
        },
        start,
    }
}

/// Every upstream controller (names from kube-controller-manager v1.36), in start order.
pub const ALL: &[Descriptor] = &[
    known(
        "serviceaccount-controller",
        &["serviceaccount"],
        false,
        Some(serviceaccount::start),
    ),
    known(
        "root-ca-certificate-publisher-controller",
        &["root-ca-cert-publisher"],
        false,
        Some(root_ca_cert_publisher::start),
    ),
    known(
        "serviceaccount-token-controller",
        &["serviceaccount-token"],
        false,
        None,
    ),
    known(
        "endpoints-controller",
        &["endpoint"],
        false,
        Some(endpoints::start),
    ),
    known(
        "endpointslice-controller",
        &["endpointslice"],
        false,
        Some(endpointslice::start),
    ),
    known(
        "endpointslice-mirroring-controller",
        &["endpointslicemirroring"],
        false,
        None,
    ),
    known(
        "replicationcontroller-controller",
        &["replicationcontroller"],
        false,
        Some(replicationcontroller::start),
    ),
    known(
        "pod-garbage-collector-controller",
        &["podgc"],
        false,
        Some(podgc::start),
    ),
    known("resourcequota-controller", &["resourcequota"], false, None),
    known(
        "namespace-controller",
        &["namespace"],
        false,
        Some(namespace::start),
    ),
    known(
        "garbage-collector-controller",
        &["garbagecollector"],
        false,
        Some(garbage_collector::start),
    ),
    known("daemonset-controller", &["daemonset"], false, None),
    known("job-controller", &["job"], false, None),
    known(
        "deployment-controller",
        &["deployment"],
        false,
        Some(deployment::start),
    ),
    known(
        "replicaset-controller",
        &["replicaset"],
        false,
        Some(replicaset::start),
    ),
    known(
        "horizontal-pod-autoscaler-controller",
        &["horizontalpodautoscaling"],
        false,
        None,
    ),
    known("disruption-controller", &["disruption"], false, None),
    known("statefulset-controller", &["statefulset"], false, None),
    known("cronjob-controller", &["cronjob"], false, None),
    known(
        "certificatesigningrequest-signing-controller",
        &["csrsigning"],
        false,
        None,
    ),
    known(
        "certificatesigningrequest-approving-controller",
        &["csrapproving"],
        false,
        None,
    ),
    known(
        "certificatesigningrequest-cleaner-controller",
        &["csrcleaner"],
        false,
        None,
    ),
    known("ttl-controller", &["ttl"], false, None),
    known(
        "bootstrap-signer-controller",
        &["bootstrapsigner"],
        true,
        None,
    ),
    known("token-cleaner-controller", &["tokencleaner"], true, None),
    known(
        "node-ipam-controller",
        &["nodeipam"],
        false,
        Some(node_ipam::start),
    ),
    known(
        "node-lifecycle-controller",
        &["nodelifecycle"],
        false,
        Some(node_lifecycle::start),
    ),
    known(
        "taint-eviction-controller",
        &[],
        false,
        Some(taint_eviction::start),
    ),
    known("service-lb-controller", &["service"], false, None),
    known("node-route-controller", &["route"], false, None),
    known(
        "cloud-node-lifecycle-controller",
        &["cloud-node-lifecycle"],
        false,
        None,
    ),
    known(
        "persistentvolume-binder-controller",
        &["persistentvolume-binder"],
        false,
        None,
    ),
    known(
        "persistentvolume-attach-detach-controller",
        &["attachdetach"],
        false,
        None,
    ),
    known(
        "persistentvolume-expander-controller",
        &["persistentvolume-expander"],
        false,
        None,
    ),
    known(
        "clusterrole-aggregation-controller",
        &["clusterrole-aggregation"],
        false,
        None,
    ),
    known(
        "persistentvolumeclaim-protection-controller",
        &["pvc-protection"],
        false,
        None,
    ),
    known(
        "persistentvolume-protection-controller",
        &["pv-protection"],
        false,
        None,
    ),
    known(
        "ttl-after-finished-controller",
        &["ttl-after-finished"],
        false,
        None,
    ),
    known(
        "ephemeral-volume-controller",
        &["ephemeral-volume"],
        false,
        None,
    ),
    known(
        "legacy-serviceaccount-token-cleaner-controller",
        &["legacy-service-account-token-cleaner"],
        false,
        None,
    ),
    known(
        "storageversion-garbage-collector-controller",
        &["storage-version-gc"],
        false,
        None,
    ),
    known(
        "validatingadmissionpolicy-status-controller",
        &[],
        false,
        None,
    ),
    known("service-cidr-controller", &[], false, None),
    known("storage-version-migrator-controller", &["svm"], true, None),
    known(
        "resourceclaim-controller",
        &["resource-claim-controller"],
        false,
        None,
    ),
    known("device-taint-eviction-controller", &[], true, None),
    known("podgroup-protection-controller", &[], true, None),
    known("podcertificaterequest-cleaner-controller", &[], true, None),
    known(
        "kube-apiserver-serving-clustertrustbundle-publisher-controller",
        &[],
        true,
        None,
    ),
    known("resourcepoolstatusrequest-controller", &[], true, None),
    known(
        "volumeattributesclass-protection-controller",
        &[],
        false,
        None,
    ),
    known("selinux-warning-controller", &[], true, None),
];

/// The name table `--controllers` is checked against.
pub fn known_names() -> Vec<Known> {
    ALL.iter().map(|d| d.known).collect()
}
