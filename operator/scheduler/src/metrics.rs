//! The scheduler's metrics, with upstream's names and labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use ferrokube_runtime::metrics::Metrics;

use crate::queue::Pending;

/// `result` and `profile` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `scheduled`, `unschedulable` or `error`.
    pub result: String,
    /// The profile (scheduler name).
    pub profile: String,
}

/// The `queue` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `active`, `backoff`, `unschedulable` or `gated`.
    pub queue: String,
}

type HistogramFamily = Family<ResultLabels, Histogram, fn() -> Histogram>;

fn attempt_buckets() -> Histogram {
    // upstream: ExponentialBuckets(0.001, 2, 15).
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The scheduler's metric families.
#[derive(Clone)]
pub struct SchedulerMetrics {
    schedule_attempts: Family<ResultLabels, Counter>,
    attempt_duration: HistogramFamily,
    pending_pods: Family<QueueLabels, Gauge>,
}

/// How an attempt ended, as the `result` label says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// Bound (or at least assumed and sent to binding).
    Scheduled,
    /// No node fits.
    Unschedulable,
    /// Something failed.
    Error,
}

impl AttemptResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Unschedulable => "unschedulable",
            Self::Error => "error",
        }
    }
}

impl SchedulerMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &Metrics) -> Self {
        let m = Self {
            schedule_attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(attempt_buckets),
            pending_pods: Family::default(),
        };
        registry.register(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
            m.schedule_attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            m.attempt_duration.clone(),
        );
        registry.register(
            "scheduler_pending_pods",
            "Number of pending pods, by the queue type. 'active' means number of pods in activeQ; 'backoff' means number of pods in backoffQ; 'unschedulable' means number of pods in unschedulablePods that the scheduler attempted to schedule and failed; 'gated' is the number of unschedulable pods that the scheduler never attempted to schedule because they are gated.",
            m.pending_pods.clone(),
        );
        m
    }

    /// Records one attempt.
    pub fn observe_attempt(&self, result: AttemptResult, profile: &str, seconds: f64) {
        let labels = ResultLabels {
            result: result.as_str().into(),
            profile: profile.into(),
        };
        self.schedule_attempts.get_or_create(&labels).inc();
        self.attempt_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    /// Publishes the queue lengths.
    pub fn set_pending(&self, p: Pending) {
        for (queue, n) in [
            ("active", p.active),
            ("backoff", p.backoff),
            ("unschedulable", p.unschedulable),
            ("gated", p.gated),
        ] {
            self.pending_pods
                .get_or_create(&QueueLabels {
                    queue: queue.into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_names() {
        let registry = Metrics::new();
        let m = SchedulerMetrics::register(&registry);
        m.observe_attempt(AttemptResult::Scheduled, "default-scheduler", 0.01);
        m.set_pending(Pending {
            active: 2,
            ..Pending::default()
        });
        let text = registry.encode();
        for line in [
            "scheduler_schedule_attempts_total{result=\"scheduled\",profile=\"default-scheduler\"} 1",
            "scheduler_scheduling_attempt_duration_seconds_count{result=\"scheduled\",profile=\"default-scheduler\"} 1",
            "scheduler_pending_pods{queue=\"active\"} 2",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
