//! The worker's observable events (the habit of Vector's `internal_events`): one small struct
//! per thing that happens, whose [`Emit::emit`] both logs it and counts it, so the logs and the
//! metrics cannot drift apart. The hot path builds these and emits them; it holds no metrics
//! or logging code of its own.

use std::time::Duration;

use leafsync_core::store::OutcomesFrom;
use leafsync_core::{ImageId, Outcome, OutcomeCounts};

use crate::metrics::Metrics;

/// Per-event warnings (a dead letter, a misrouted event) are rate-limited in the log, as Vector's
/// `internal_log_rate_limit` does: a poison flood would otherwise write one line per event. The
/// counters still count every event; the log keeps the first [`LogLimit::PER_WINDOW`] of each
/// kind per window, then says how many it left out.
#[derive(Debug)]
pub struct LogLimit {
    what: &'static str,
    state: std::sync::Mutex<(Option<std::time::Instant>, u32, u64)>,
}

impl LogLimit {
    /// Lines of one kind logged per window.
    pub const PER_WINDOW: u32 = 10;
    /// The window.
    pub const WINDOW: Duration = Duration::from_secs(10);

    /// A limit for the lines about `what` (e.g. "dead letters").
    pub const fn new(what: &'static str) -> Self {
        Self {
            what,
            state: std::sync::Mutex::new((None, 0, 0)),
        }
    }

    /// Whether to log one more line now; logs the count left out of the window that ended.
    pub fn allow(&self) -> bool {
        self.allow_at(std::time::Instant::now())
    }

    fn allow_at(&self, now: std::time::Instant) -> bool {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, logged, suppressed) = &mut *s;
        if start.is_none_or(|t| now.duration_since(t) >= Self::WINDOW) {
            if *suppressed > 0 {
                tracing::warn!(
                    suppressed = *suppressed,
                    "{} more {} not logged in the last {} s (the metrics count every one)",
                    *suppressed,
                    self.what,
                    Self::WINDOW.as_secs()
                );
            }
            (*start, *logged, *suppressed) = (Some(now), 0, 0);
        }
        if *logged < Self::PER_WINDOW {
            *logged += 1;
            true
        } else {
            *suppressed += 1;
            false
        }
    }
}

static DEAD_LETTER_LOG: LogLimit = LogLimit::new("dead letters");
static MISROUTED_LOG: LogLimit = LogLimit::new("misrouted events");

/// Something the worker reports.
pub trait Emit {
    /// Logs and counts it.
    fn emit(self, metrics: &Metrics);
}

/// Which path brought an event (the `source` label of the event counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The Kafka stream.
    Stream,
    /// A backfill from a source database or file.
    Backfill,
}

impl Via {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Stream => "stream",
            Via::Backfill => "backfill",
        }
    }
}

/// Where in Kafka an event came from.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A batch of one partition was gathered and is about to be planned and written.
#[derive(Debug)]
pub struct BatchReceived<'a> {
    /// Stream or backfill.
    pub via: Via,
    /// Source topic (for a backfill: the topic of the documents' image type).
    pub topic: &'a str,
    /// Events in the batch.
    pub len: usize,
    /// Bytes of their values.
    pub bytes: u64,
}

impl Emit for BatchReceived<'_> {
    fn emit(self, m: &Metrics) {
        m.event_bytes
            .with_label_values(&[self.topic, self.via.as_str()])
            .inc_by(self.bytes);
        m.batch_size
            .with_label_values(&[self.topic])
            .observe(self.len as f64);
    }
}

/// An event whose key hashes to another partition than the one it arrived on (a producer bug:
/// per-image order is then not guaranteed). It is still applied.
#[derive(Debug)]
pub struct Misrouted<'a> {
    /// Where it arrived.
    pub at: Source<'a>,
    /// Its key.
    pub key: &'a [u8],
}

impl Emit for Misrouted<'_> {
    fn emit(self, m: &Metrics) {
        m.misrouted.with_label_values(&[self.at.topic]).inc();
        if !MISROUTED_LOG.allow() {
            return;
        }
        tracing::warn!(topic = self.at.topic, partition = self.at.partition, offset = self.at.offset,
            key = %String::from_utf8_lossy(self.key),
            "misrouted event: its key hashes to another partition (producer bug; per-image ordering is not guaranteed)");
    }
}

/// The final outcome of one event (debug log only: the batch summary counts them).
#[derive(Debug)]
pub struct EventSettled<'a> {
    /// Where it came from.
    pub at: Source<'a>,
    /// Its image, when it decoded.
    pub id: Option<ImageId>,
    /// What happened.
    pub outcome: Outcome,
}

impl Emit for EventSettled<'_> {
    fn emit(self, _: &Metrics) {
        tracing::debug!(
            topic = self.at.topic,
            partition = self.at.partition,
            offset = self.at.offset,
            image_id = self.id.map(ImageId::get),
            outcome = self.outcome.label(),
            "event"
        );
    }
}

/// An event's content became visible in the database (or already was): its end-to-end latency
/// from the Kafka message timestamp ends here.
#[derive(Debug)]
pub struct EventVisible<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Database acknowledgement − message timestamp.
    pub latency: Duration,
}

impl Emit for EventVisible<'_> {
    fn emit(self, m: &Metrics) {
        m.e2e_latency_seconds
            .with_label_values(&[self.topic])
            .observe(self.latency.as_secs_f64());
    }
}

/// A batch is written (or dead-lettered) whole and its offset may move.
#[derive(Debug)]
pub struct BatchSettled<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// First and last offset of the batch.
    pub offsets: (i64, i64),
    /// Outcome counts.
    pub counts: &'a OutcomeCounts,
    /// From the batch's start to now (writes and retries included).
    pub elapsed: Duration,
}

impl Emit for BatchSettled<'_> {
    fn emit(self, m: &Metrics) {
        count_outcomes(m, Via::Stream, self.topic, self.counts);
        m.batch_write_seconds
            .with_label_values(&[self.topic])
            .observe(self.elapsed.as_secs_f64());
        let c = self.counts;
        tracing::info!(
            topic = self.topic,
            partition = self.partition,
            first_offset = self.offsets.0,
            last_offset = self.offsets.1,
            batch_len = c.total(),
            inserted = c.get(Outcome::Inserted),
            updated = c.get(Outcome::Updated),
            unchanged = c.get(Outcome::Unchanged),
            stale = c.get(Outcome::Stale),
            superseded = c.get(Outcome::Superseded),
            dead_lettered = c.get(Outcome::DeadLettered),
            elapsed_ms = self.elapsed.as_millis() as u64,
            "batch done"
        );
    }
}

/// A backfill page is written (or dead-lettered) whole; its checkpoint is saved next.
#[derive(Debug)]
pub struct BackfillPageSettled<'a> {
    /// The topic of the page's image type (the metric label).
    pub topic: &'a str,
    /// Outcome counts.
    pub counts: &'a OutcomeCounts,
}

impl Emit for BackfillPageSettled<'_> {
    fn emit(self, m: &Metrics) {
        count_outcomes(m, Via::Backfill, self.topic, self.counts);
        let c = self.counts;
        tracing::debug!(
            topic = self.topic,
            source = "backfill",
            len = c.total(),
            inserted = c.get(Outcome::Inserted),
            updated = c.get(Outcome::Updated),
            unchanged = c.get(Outcome::Unchanged),
            stale = c.get(Outcome::Stale),
            superseded = c.get(Outcome::Superseded),
            dead_lettered = c.get(Outcome::DeadLettered),
            "backfill page done"
        );
    }
}

/// A write command goes to the database (the stream's writers merge several partitions' batches
/// into one; a backfill sends one page).
#[derive(Debug)]
pub struct WriteCommand {
    /// Documents in it.
    pub docs: usize,
    /// How its outcomes are learnt (`worker.outcomes`).
    pub from: OutcomesFrom,
}

impl Emit for WriteCommand {
    fn emit(self, m: &Metrics) {
        let outcomes = match self.from {
            OutcomesFrom::Reply => "reply",
            OutcomesFrom::Read => "read",
        };
        m.write_command_docs
            .with_label_values(&[outcomes])
            .observe(self.docs as f64);
    }
}

/// Adds a batch's outcomes to the event counters.
fn count_outcomes(m: &Metrics, via: Via, topic: &str, counts: &OutcomeCounts) {
    for (outcome, n) in counts.iter().filter(|(_, n)| *n > 0) {
        m.events
            .with_label_values(&[topic, outcome.label(), via.as_str()])
            .inc_by(n);
    }
}

/// Where a dead-lettered event came from.
#[derive(Debug)]
pub enum Origin<'a> {
    /// A Kafka message.
    Stream(Source<'a>),
    /// A backfill's document: its position in the source, as `key=value` pairs.
    Backfill(&'a str),
}

/// An event went to the dead-letter topic.
#[derive(Debug)]
pub struct DeadLettered<'a> {
    /// The topic label: the source topic, or for a backfill the topic of its image type.
    pub topic: &'a str,
    /// Where it came from.
    pub at: Origin<'a>,
    /// Machine-readable reason.
    pub kind: &'a str,
    /// Human-readable reason.
    pub reason: &'a str,
}

impl Emit for DeadLettered<'_> {
    fn emit(self, m: &Metrics) {
        m.dead_lettered
            .with_label_values(&[self.topic, self.kind])
            .inc();
        if !DEAD_LETTER_LOG.allow() {
            return;
        }
        match self.at {
            Origin::Stream(at) => tracing::warn!(
                topic = at.topic,
                partition = at.partition,
                offset = at.offset,
                kind = self.kind,
                reason = self.reason,
                outcome = "dead_lettered",
                "event dead-lettered"
            ),
            Origin::Backfill(position) => tracing::warn!(
                topic = self.topic,
                source = "backfill",
                position,
                kind = self.kind,
                reason = self.reason,
                outcome = "dead_lettered",
                "document dead-lettered"
            ),
        }
    }
}

/// An operation failed and will be retried after `delay`.
#[derive(Debug)]
pub struct RetryScheduled<'a> {
    /// What failed (`database_write`, `dead_letter`, `rewind`, `backfill_checkpoint`).
    pub op: &'a str,
    /// `transient` or `permanent`.
    pub class: &'a str,
    /// Why.
    pub error: &'a str,
    /// Retries so far.
    pub attempt: u32,
    /// Wait before the next try.
    pub delay: Duration,
}

impl Emit for RetryScheduled<'_> {
    fn emit(self, m: &Metrics) {
        m.retries.with_label_values(&[self.op, self.class]).inc();
        tracing::warn!(op = self.op, class = self.class, error = %self.error, attempt = self.attempt,
            delay_ms = self.delay.as_millis() as u64, "operation failed; retrying (offsets held)");
    }
}

/// The stored offset could not be updated (the partition was probably revoked meanwhile).
#[derive(Debug)]
pub struct OffsetNotStored<'a> {
    /// Where.
    pub at: Source<'a>,
    /// Why.
    pub error: &'a str,
}

impl Emit for OffsetNotStored<'_> {
    fn emit(self, _: &Metrics) {
        tracing::warn!(topic = self.at.topic, partition = self.at.partition, offset = self.at.offset, error = %self.error,
            "cannot store offset (partition no longer assigned?); the batch will be redelivered and replayed idempotently");
    }
}

/// A message of this partition reached the task after a later one: the task rewinds the
/// partition to it so that events are applied in order.
#[derive(Debug)]
pub struct Rewound<'a> {
    /// The late message's position.
    pub at: Source<'a>,
    /// The highest offset the task had already taken.
    pub seen: i64,
}

impl Emit for Rewound<'_> {
    fn emit(self, m: &Metrics) {
        m.rewinds.with_label_values(&[self.at.topic]).inc();
        tracing::warn!(
            topic = self.at.topic,
            partition = self.at.partition,
            offset = self.at.offset,
            seen = self.seen,
            "late message for this partition; rewinding to it so events stay in order"
        );
    }
}

/// The lag of one partition (or of all, `None`) could not be measured; the gauge keeps its
/// last good value.
#[derive(Debug)]
pub struct LagMeasurementFailed<'a> {
    /// The partition, when the failure was its own.
    pub partition: Option<(&'a str, i32)>,
    /// Why.
    pub error: &'a str,
}

impl Emit for LagMeasurementFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.lag_errors.inc();
        let (topic, partition) = self.partition.unzip();
        tracing::debug!(topic, partition, error = %self.error, "cannot measure consumer lag; keeping the last value");
    }
}

/// A rebalance callback ran.
#[derive(Debug)]
pub enum Rebalanced<'a> {
    /// Partitions were assigned to this worker (their tasks start now).
    Assigned(&'a [String]),
    /// Partitions are being taken away (their tasks drain, then offsets are committed).
    Revoked(&'a [String]),
}

impl Emit for Rebalanced<'_> {
    fn emit(self, m: &Metrics) {
        match self {
            Rebalanced::Assigned(partitions) => {
                m.rebalances.with_label_values(&["assign"]).inc();
                tracing::info!(?partitions, "partitions assigned");
            }
            Rebalanced::Revoked(partitions) => {
                m.rebalances.with_label_values(&["revoke"]).inc();
                tracing::info!(?partitions, "partitions revoked; draining them");
            }
        }
    }
}

/// Where one batch's time went, stage by stage (the parts of its events' end-to-end latency
/// that the worker can see).
#[derive(Debug, Default, Clone)]
pub struct BatchTimed {
    /// The first message's Kafka timestamp to its receipt by the task: producer linger, broker,
    /// fetch wait and librdkafka's queue (`None` without a timestamp).
    pub kafka: Option<Duration>,
    /// Queued at the collection's writer: waiting for a permit (`worker.max_in_flight_batches`)
    /// and for the command it is merged into to start.
    pub permit: Duration,
    /// Gathering the rest of the batch after its first message (before it is handed to the
    /// writer, so no permit is held meanwhile).
    pub gather: Duration,
    /// Decoding, checking and collapsing (the pure plan).
    pub plan: Duration,
    /// Producing dead letters.
    pub dead_letter: Duration,
    /// The database write, retries included.
    pub write: Duration,
    /// Storing the offset.
    pub store_offset: Duration,
}

impl Emit for &BatchTimed {
    fn emit(self, m: &Metrics) {
        let stages = [
            ("permit", Some(self.permit)),
            ("gather", Some(self.gather)),
            ("plan", Some(self.plan)),
            ("dead_letter", Some(self.dead_letter)),
            ("write", Some(self.write)),
            ("store_offset", Some(self.store_offset)),
            ("kafka", self.kafka),
        ];
        for (stage, d) in stages {
            if let Some(d) = d {
                m.stage_seconds
                    .with_label_values(&[stage])
                    .observe(d.as_secs_f64());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_the_first_lines_of_a_window_then_starts_again() {
        let limit = LogLimit::new("things");
        let t0 = std::time::Instant::now();
        let allowed = (0..25).filter(|_| limit.allow_at(t0)).count();
        assert_eq!(allowed, LogLimit::PER_WINDOW as usize);
        assert_eq!(limit.state.lock().unwrap().2, 15, "15 left out");
        // A new window: allowed again, and the count starts over.
        assert!(limit.allow_at(t0 + LogLimit::WINDOW));
        assert_eq!(limit.state.lock().unwrap().2, 0);
    }

    fn events(m: &Metrics, topic: &str, outcome: &str, via: Via) -> u64 {
        m.events
            .with_label_values(&[topic, outcome, via.as_str()])
            .get()
    }

    #[test]
    fn stream_and_backfill_outcomes_are_counted_under_their_own_source_label() {
        let m = Metrics::new();
        let mut counts = OutcomeCounts::default();
        counts.add_n(Outcome::Inserted, 3);
        counts.add_n(Outcome::Stale, 2);
        let before = (
            events(&m, "potato", "inserted", Via::Stream),
            events(&m, "potato", "inserted", Via::Backfill),
        );
        BackfillPageSettled {
            topic: "potato",
            counts: &counts,
        }
        .emit(&m);
        assert_eq!(
            events(&m, "potato", "inserted", Via::Backfill),
            before.1 + 3
        );
        assert_eq!(events(&m, "potato", "stale", Via::Backfill), 2);
        assert_eq!(events(&m, "potato", "inserted", Via::Stream), before.0);
        BatchSettled {
            topic: "potato",
            partition: 0,
            offsets: (0, 4),
            counts: &counts,
            elapsed: Duration::from_millis(1),
        }
        .emit(&m);
        assert_eq!(events(&m, "potato", "inserted", Via::Stream), before.0 + 3);
        assert_eq!(
            events(&m, "potato", "inserted", Via::Backfill),
            before.1 + 3
        );
        BatchReceived {
            via: Via::Backfill,
            topic: "potato",
            len: 5,
            bytes: 700,
        }
        .emit(&m);
        let bytes = |via: Via| {
            m.event_bytes
                .with_label_values(&["potato", via.as_str()])
                .get()
        };
        assert_eq!((bytes(Via::Backfill), bytes(Via::Stream)), (700, 0));
        let text = m.render();
        assert!(
            text.contains(r#"leafsync_worker_events_total{outcome="inserted",source="backfill",topic="potato"} 3"#),
            "{text}"
        );
    }
}
