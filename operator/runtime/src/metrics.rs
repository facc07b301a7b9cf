//! Prometheus metrics: one registry per process, served on `/metrics`.
//!
//! Metric names follow upstream so existing dashboards keep working; the work queue family
//! (`workqueue_depth`, `workqueue_adds_total`, ...) is registered here once and shared by all
//! queues, told apart by the `name` label exactly as client-go's workqueue metrics provider
//! does.

use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// The process's metrics registry. Clones share it.
#[derive(Clone, Default)]
pub struct Metrics {
    registry: Arc<RwLock<Registry>>,
    workqueue: Arc<OnceLock<WorkqueueMetrics>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `metric` under `name` (without the `_total` suffix for counters; the
    /// encoder adds it) with `help` text.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// The shared work queue metric families, registered on first use.
    pub fn workqueue(&self) -> WorkqueueMetrics {
        self.workqueue
            .get_or_init(|| {
                let m = WorkqueueMetrics::default();
                self.register(
                    "workqueue_depth",
                    "Current depth of workqueue",
                    m.depth.clone(),
                );
                self.register(
                    "workqueue_adds",
                    "Total number of adds handled by workqueue",
                    m.adds.clone(),
                );
                self.register(
                    "workqueue_queue_duration_seconds",
                    "How long in seconds an item stays in workqueue before being requested.",
                    m.queue_duration.clone(),
                );
                self.register(
                    "workqueue_work_duration_seconds",
                    "How long in seconds processing an item from workqueue takes.",
                    m.work_duration.clone(),
                );
                self.register(
                    "workqueue_retries",
                    "Total number of retries handled by workqueue",
                    m.retries.clone(),
                );
                self.register(
                    "workqueue_unfinished_work_seconds",
                    "How many seconds of work has done that is in progress and hasn't been observed by work_duration.",
                    m.unfinished_work.clone(),
                );
                self.register(
                    "workqueue_longest_running_processor_seconds",
                    "How many seconds has the longest running processor for workqueue been running.",
                    m.longest_running.clone(),
                );
                m
            })
            .clone()
    }

    /// The registry in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// The label every work queue metric carries.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// The queue's (controller's) name.
    pub name: String,
}

fn duration_histogram() -> Histogram {
    // client-go: prometheus.ExponentialBuckets(10e-9, 10, 10).
    Histogram::new(exponential_buckets(10e-9, 10.0, 10))
}

type HistogramFamily = Family<QueueLabel, Histogram, fn() -> Histogram>;

/// The work queue metric families.
#[derive(Clone, Debug)]
pub struct WorkqueueMetrics {
    pub(crate) depth: Family<QueueLabel, Gauge>,
    pub(crate) adds: Family<QueueLabel, Counter>,
    pub(crate) queue_duration: HistogramFamily,
    pub(crate) work_duration: HistogramFamily,
    pub(crate) retries: Family<QueueLabel, Counter>,
    pub(crate) unfinished_work: Family<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub(crate) longest_running: Family<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

impl Default for WorkqueueMetrics {
    fn default() -> Self {
        Self {
            depth: Family::default(),
            adds: Family::default(),
            queue_duration: Family::new_with_constructor(duration_histogram),
            work_duration: Family::new_with_constructor(duration_histogram),
            retries: Family::default(),
            unfinished_work: Family::default(),
            longest_running: Family::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workqueue_families_use_upstream_names() {
        let metrics = Metrics::new();
        let wq = metrics.workqueue();
        let label = QueueLabel {
            name: "deployment".into(),
        };
        wq.depth.get_or_create(&label).set(3);
        wq.adds.get_or_create(&label).inc();
        wq.retries.get_or_create(&label).inc();
        wq.queue_duration.get_or_create(&label).observe(0.01);
        let text = metrics.encode();
        for line in [
            "workqueue_depth{name=\"deployment\"} 3",
            "workqueue_adds_total{name=\"deployment\"} 1",
            "workqueue_retries_total{name=\"deployment\"} 1",
            "workqueue_queue_duration_seconds_count{name=\"deployment\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // A second call hands out the same families instead of registering twice.
        metrics.workqueue().depth.get_or_create(&label).inc();
        assert!(
            metrics
                .encode()
                .contains("workqueue_depth{name=\"deployment\"} 4")
        );
    }
}
