//! The ferrokube test harness: a real etcd + kube-apiserver on demand, stock kubectl, and
//! the local cluster built from them.
//!
//! Nothing here fakes Kubernetes. [`ControlPlane::start`] runs the upstream binaries that
//! `hack/provision.sh` builds from the Go modules; tests talk to them through kube-rs and
//! through [`Kubectl`], as users do.

pub mod bench;
pub mod cluster;
pub mod controlplane;
pub mod images;
pub mod kubeconfig;
pub mod kubectl;
pub mod kwok;
pub mod node;
pub mod pki;
pub mod process;
pub mod procstat;
pub mod registry;
pub mod upstream;
pub mod wait;

pub use controlplane::ControlPlane;
pub use kubectl::Kubectl;
