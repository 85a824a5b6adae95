//! The worker's Prometheus metrics. Each observable event has one method that both counts and
//! logs, so logs and metrics never drift apart.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Metric handles, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Events by topic and outcome.
    pub events: IntCounterVec,
    /// Event value bytes by topic.
    pub event_bytes: IntCounterVec,
    /// Events per written batch.
    pub batch_size: HistogramVec,
    /// Duration of one batch's database write (including retries).
    pub batch_write_seconds: HistogramVec,
    /// Write acknowledged − Kafka message timestamp.
    pub e2e_latency_seconds: HistogramVec,
    /// High watermark − committed offset, per partition (what KEDA scales on).
    pub consumer_lag: IntGaugeVec,
    /// Partitions currently assigned to this worker.
    pub assigned_partitions: IntGauge,
    /// Rebalance callbacks by kind (assign, revoke).
    pub rebalances: IntCounterVec,
    /// Retries by operation and error class.
    pub retries: IntCounterVec,
    /// Dead-lettered events by topic and error kind.
    pub dead_lettered: IntCounterVec,
    /// Events whose key hashes to another partition than the one they arrived on.
    pub misrouted: IntCounterVec,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &["topic"])
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    /// Creates and registers every metric.
    #[allow(clippy::expect_used)] // fixed names and labels: a failure is a programming error
    pub fn new() -> Self {
        let r = Registry::new();
        let latency = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
        ];
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "leafsync_worker_consumer_lag",
                "High watermark minus committed offset, per partition",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        r.register(Box::new(consumer_lag.clone()))
            .expect("unique metric");
        let assigned = IntGauge::new(
            "leafsync_worker_assigned_partitions",
            "Partitions assigned to this worker",
        )
        .expect("valid metric");
        r.register(Box::new(assigned.clone()))
            .expect("unique metric");
        Self {
            events: counter(
                &r,
                "leafsync_worker_events_total",
                "Events by topic and outcome (inserted, updated, unchanged, stale, superseded, dead_lettered)",
                &["topic", "outcome"],
            ),
            event_bytes: counter(
                &r,
                "leafsync_worker_event_bytes_total",
                "Bytes of event values consumed",
                &["topic"],
            ),
            batch_size: histogram(
                &r,
                "leafsync_worker_batch_size",
                "Events per batch",
                vec![1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0],
            ),
            batch_write_seconds: histogram(
                &r,
                "leafsync_worker_batch_write_seconds",
                "Duration of one batch's database write, retries included",
                latency.clone(),
            ),
            e2e_latency_seconds: histogram(
                &r,
                "leafsync_worker_e2e_latency_seconds",
                "Database write acknowledged minus the Kafka message timestamp",
                latency,
            ),
            consumer_lag,
            assigned_partitions: assigned,
            rebalances: counter(
                &r,
                "leafsync_worker_rebalances_total",
                "Rebalance callbacks by kind",
                &["kind"],
            ),
            retries: counter(
                &r,
                "leafsync_worker_retries_total",
                "Retries of failed operations by operation and error class",
                &["op", "class"],
            ),
            dead_lettered: counter(
                &r,
                "leafsync_worker_dead_lettered_total",
                "Events sent to the dead-letter topic by source topic and error kind",
                &["topic", "kind"],
            ),
            misrouted: counter(
                &r,
                "leafsync_worker_misrouted_total",
                "Events whose key's murmur3 partition is not the partition they arrived on",
                &["topic"],
            ),
            registry: r,
        }
    }

    /// The exposition text for `/metrics`.
    pub fn render(&self) -> String {
        leafsync_core::telemetry::render_metrics(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
