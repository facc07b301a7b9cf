//! ferrokube's controller runtime: what every ferrokube binary runs on.
//!
//! It fills the gaps kube-runtime leaves for Kubernetes-style components:
//!
//! - [`informer`]: shared informers, one watch and cache per resource type per process;
//!   [`resource_as!`] lets a slim cached type stand for its API type;
//! - [`workqueue`]: client-go's work queue (de-duplication, no concurrent syncs of a key,
//!   per-key exponential backoff and an overall rate limit) and [`controller`] workers on it;
//! - [`leader_election`]: coordination.k8s.io/v1 Lease election with upstream semantics;
//! - [`events`]: an events.k8s.io/v1 recorder that aggregates repeats into series;
//! - [`client`]: a kube client with `--kube-api-qps` / `--kube-api-burst` limits;
//! - [`server`] and [`metrics`]: `/healthz`, `/readyz`, `/livez` and Prometheus `/metrics`;
//! - [`logging`]: klog-style `-v` levels on tracing, text or JSON;
//! - [`shutdown`]: SIGTERM/SIGINT turned into one cancellation every task watches;
//! - [`tls`]: the server side of a TLS handshake, with a deadline;
//! - [`process`]: a binary's start: memory settings, then the runtime its `main` runs on.

pub mod apierrors;
pub mod cached;
pub mod client;
mod coalesce;
pub mod controller;
pub mod events;
pub mod flags;
pub mod informer;
pub mod leader_election;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod ratelimit;
pub mod server;
pub mod shutdown;
pub mod taints;
pub mod tls;
pub mod transport;
pub mod workqueue;
