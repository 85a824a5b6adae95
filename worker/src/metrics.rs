//! The worker's Prometheus metrics. Counters and histograms of things that happen are touched
//! only by the structs in [`crate::events`], which count and log in one place, so logs and
//! metrics never drift apart; the gauges of current state (assigned partitions, lag) are set
//! where that state changes ([`crate::consumer`], [`crate::lag`]).
#![allow(clippy::expect_used)] // fixed metric names and labels: a failure is a programming error

use std::collections::HashSet;

use prometheus::core::Collector;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Metric handles, registered in their own registry.
pub struct Metrics {
    registry: Registry,
    /// Events by topic, outcome and source (`stream`, `backfill`).
    pub events: IntCounterVec,
    /// Event value bytes by topic and source.
    pub event_bytes: IntCounterVec,
    /// Events per written batch.
    pub batch_size: HistogramVec,
    /// Duration of one batch's database write (including retries).
    pub batch_write_seconds: HistogramVec,
    /// Write acknowledged − Kafka message timestamp.
    pub e2e_latency_seconds: HistogramVec,
    /// Time a batch spends in each stage of the hot path (`stage` label; see `events::BatchTimed`).
    pub stage_seconds: HistogramVec,
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
    /// Partition rewinds after a message arrived out of order.
    pub rewinds: IntCounterVec,
    /// Failed lag measurements (the gauge keeps its last value).
    pub lag_errors: IntCounter,
    /// Documents per write command (several partitions' batches merged).
    pub write_command_docs: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> HistogramVec {
    histogram_by(r, name, help, buckets, "topic")
}

fn histogram_by(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
    label: &str,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &[label])
        .expect("valid metric");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

/// Registers `m` and hands it back.
fn registered<M: Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

/// 1 ms to 60 s in 1-2-5 steps: a backlog of seconds must not hide in a top bucket.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Events per batch, up to beyond the largest `batch.max_events` anyone should set.
const BATCH_SIZE_BUCKETS: [f64; 10] = [
    1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            events: counter(
                &r,
                "leafsync_worker_events_total",
                "Events by topic, outcome (inserted, updated, unchanged, stale, superseded, \
                 dead_lettered) and source (stream, or backfill for documents a backfill read)",
                &["topic", "outcome", "source"],
            ),
            event_bytes: counter(
                &r,
                "leafsync_worker_event_bytes_total",
                "Bytes of event values consumed, by topic and source (stream, backfill)",
                &["topic", "source"],
            ),
            batch_size: histogram(
                &r,
                "leafsync_worker_batch_size",
                "Events per batch",
                BATCH_SIZE_BUCKETS.to_vec(),
            ),
            batch_write_seconds: histogram(
                &r,
                "leafsync_worker_batch_write_seconds",
                "Duration of one batch's database write, retries included",
                LATENCY_BUCKETS.to_vec(),
            ),
            e2e_latency_seconds: histogram(
                &r,
                "leafsync_worker_e2e_latency_seconds",
                "Database write acknowledged minus the Kafka message timestamp",
                LATENCY_BUCKETS.to_vec(),
            ),
            stage_seconds: histogram_by(
                &r,
                "leafsync_worker_stage_seconds",
                "Time a batch spends per hot-path stage: kafka (first message's timestamp to its \
                 receipt), gather, plan, dead_letter, permit (queued at its collection's writer), \
                 write (the merged command), store_offset",
                LATENCY_BUCKETS.to_vec(),
                "stage",
            ),
            consumer_lag: registered(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "leafsync_worker_consumer_lag",
                        "High watermark minus committed offset, per partition",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid metric"),
            ),
            assigned_partitions: registered(
                &r,
                IntGauge::new(
                    "leafsync_worker_assigned_partitions",
                    "Partitions assigned to this worker",
                )
                .expect("valid metric"),
            ),
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
            rewinds: counter(
                &r,
                "leafsync_worker_rewinds_total",
                "Partition rewinds after a message reached its task out of order",
                &["topic"],
            ),
            lag_errors: registered(
                &r,
                IntCounter::new(
                    "leafsync_worker_lag_errors_total",
                    "Failed consumer-lag measurements; the gauge keeps its last good value",
                )
                .expect("valid metric"),
            ),
            write_command_docs: histogram_by(
                &r,
                "leafsync_worker_write_command_docs",
                "Documents per database write command (the writers merge the ready batches of \
                 several partitions), by how its outcomes were learnt (outcomes=reply|read, \
                 worker.outcomes)",
                BATCH_SIZE_BUCKETS.to_vec(),
                "outcomes",
            ),
            registry: r,
        }
    }

    /// The `(topic, partition)` label sets the lag gauge currently shows.
    pub fn lag_partitions(&self) -> HashSet<(String, i32)> {
        let mut out = HashSet::new();
        for family in self.consumer_lag.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                };
                if let (Some(t), Some(p)) = (label("topic"), label("partition")) {
                    if let Ok(p) = p.parse() {
                        out.insert((t, p));
                    }
                }
            }
        }
        out
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
