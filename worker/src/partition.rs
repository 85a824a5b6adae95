//! One task per assigned partition: gather a micro-batch, decode, dead-letter the bad events,
//! write the rest in one stale-guarded command, and only then store the offset. Events of one
//! partition are handled strictly in order; partitions run in parallel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leafsync_core::config::ms;
use leafsync_core::document::Projection;
use leafsync_core::kafka_admin::partition_count_via;
use leafsync_core::partitioner::partition_for_key;
use leafsync_core::{trace_context, ImageEvent, ImageId, ImageType, WriteOutcome};
use mongodb::bson::RawDocumentBuf;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::backoff::Backoff;
use crate::batch::{collapse, Loser};
use crate::consumer::{LeafConsumer, WorkerContext};
use crate::Shared;

/// Partition counts of the consumed topics, shared by the partition tasks: one metadata
/// request per topic instead of one per partition (each is a blocking call, and a burst of them
/// at assignment would start a thread apiece). Entries expire so an added partition is noticed.
#[derive(Default)]
pub struct PartitionCounts(tokio::sync::Mutex<HashMap<String, (Instant, Option<u32>)>>);

impl PartitionCounts {
    const TTL: Duration = Duration::from_secs(60);

    async fn get(&self, consumer: &Arc<LeafConsumer>, topic: &str) -> Option<u32> {
        // Held across the request on purpose: tasks of the same topic wait for one answer.
        let mut cache = self.0.lock().await;
        if let Some((at, n)) = cache.get(topic) {
            if at.elapsed() < Self::TTL {
                return *n;
            }
        }
        let (c, t) = (consumer.clone(), topic.to_owned());
        let n = tokio::task::spawn_blocking(move || {
            partition_count_via(c.as_ref(), &t, Duration::from_secs(5)).ok()
        })
        .await
        .ok()
        .flatten()
        .filter(|&n| n > 0);
        cache.insert(topic.to_owned(), (Instant::now(), n));
        n
    }
}

/// Everything one partition task needs.
pub struct PartitionTask {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// The image type of the topic.
    pub image_type: ImageType,
    /// The partition's own message queue, split from the consumer.
    pub queue: StreamPartitionQueue<WorkerContext>,
    /// Messages of this partition that reached the main queue before the split.
    pub stragglers: mpsc::UnboundedReceiver<OwnedMessage>,
    /// For storing offsets.
    pub consumer: Arc<LeafConsumer>,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Cancelled on revoke and shutdown: finish the batch in hand, then stop.
    pub stop: CancellationToken,
}

/// What happened to one event of a batch; each has a counter and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Inserted,
    Updated,
    Unchanged,
    Stale,
    Superseded,
    DeadLettered,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Inserted,
        Outcome::Updated,
        Outcome::Unchanged,
        Outcome::Stale,
        Outcome::Superseded,
        Outcome::DeadLettered,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Inserted => "inserted",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale => "stale",
            Outcome::Superseded => "superseded",
            Outcome::DeadLettered => "dead_lettered",
        }
    }
}

/// Per-batch outcome counts, for the summary line and metrics.
#[derive(Debug, Default)]
struct Counts([u64; Outcome::ALL.len()]);

impl Counts {
    fn add(&mut self, outcome: Outcome) {
        self.0[outcome as usize] += 1;
    }

    fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome as usize]
    }
}

/// A decoded event of the batch, held as raw BSON until written: the smallest form, and the
/// one that goes on the wire.
struct Decoded {
    /// Index of its message in the batch.
    msg: usize,
    id: ImageId,
    updated_at: DateTime<Utc>,
    /// Moved out (leaving an empty buffer) when the event wins its id.
    doc: RawDocumentBuf,
}

impl PartitionTask {
    /// Runs until stopped. Returns after the batch in hand is fully handled.
    pub async fn run(mut self) {
        tracing::info!(topic = %self.topic, partition = self.partition, "partition task started");
        let partitions_in_topic = self.partition_count().await;
        let projection = self.shared.config.types.projection(self.image_type);
        let collection = self
            .shared
            .config
            .types
            .get(self.image_type)
            .collection
            .clone();
        while let Some((batch, _permit)) = self.gather().await {
            // The permit is released when this iteration ends, after the write.
            self.process(batch, &collection, &projection, partitions_in_topic)
                .await;
            if self.stop.is_cancelled() {
                break;
            }
        }
        tracing::info!(topic = %self.topic, partition = self.partition, "partition task stopped");
    }

    /// The topic's partition count, for spotting misrouted events (`None` if unknown).
    async fn partition_count(&self) -> Option<u32> {
        let n = self
            .shared
            .partition_counts
            .get(&self.consumer, &self.topic)
            .await;
        if n.is_none() {
            tracing::warn!(topic = %self.topic, "partition count unknown; misrouted events won't be counted");
        }
        n
    }

    async fn next(&mut self) -> OwnedMessage {
        if let Ok(m) = self.stragglers.try_recv() {
            return m;
        }
        loop {
            match self.queue.recv().await {
                Ok(m) => return m.detach(),
                Err(e) => {
                    tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, "partition consume error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// Up to `batch.max_events` messages, or what arrived within `batch.max_wait_ms` of the
    /// first one, with the in-flight permit to hold until written. `None` when stopped with
    /// nothing in hand.
    async fn gather(&mut self) -> Option<(Vec<OwnedMessage>, Option<OwnedSemaphorePermit>)> {
        let stop = self.stop.clone();
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return None,
            m = self.next() => m,
        };
        // Only partitions holding a permit gather a full batch; the rest wait with their events
        // still queued in librdkafka, which bounds the worker's memory.
        let permit = tokio::select! {
            biased;
            // Stopping: handle the one event in hand without waiting for a permit.
            () = stop.cancelled() => return Some((vec![first], None)),
            p = self.shared.in_flight.clone().acquire_owned() => p.ok(),
        };
        let max = self.shared.config.worker.batch.max_events;
        let deadline =
            tokio::time::Instant::now() + ms(self.shared.config.worker.batch.max_wait_ms);
        let mut batch = Vec::with_capacity(max.min(1024));
        batch.push(first);
        while batch.len() < max {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                () = tokio::time::sleep_until(deadline) => break,
                m = self.next() => batch.push(m),
            }
        }
        Some((batch, permit))
    }

    async fn process(
        &self,
        batch: Vec<OwnedMessage>,
        collection: &str,
        projection: &Projection,
        partitions_in_topic: Option<u32>,
    ) {
        let shared = &self.shared;
        let m = &shared.metrics;
        let topic = self.topic.as_str();
        let started = Instant::now();
        shared.health.set_busy(topic, self.partition, true);
        let mut counts = Counts::default();

        let span = tracing::info_span!(
            "leafsync.batch",
            otel.name = format!("process {topic}"),
            otel.kind = "consumer",
            messaging.system = "kafka",
            messaging.operation.type = "process",
            messaging.destination.name = topic,
            messaging.destination.partition.id = self.partition,
            messaging.kafka.offset.first = batch.first().map_or(0, Message::offset),
            messaging.kafka.offset.last = batch.last().map_or(0, Message::offset),
            messaging.batch.message_count = batch.len(),
            leafsync.inserted = tracing::field::Empty,
            leafsync.updated = tracing::field::Empty,
            leafsync.unchanged = tracing::field::Empty,
            leafsync.stale = tracing::field::Empty,
            leafsync.superseded = tracing::field::Empty,
            leafsync.dead_lettered = tracing::field::Empty,
        );

        let mut good: Vec<Decoded> = Vec::with_capacity(batch.len());
        for (i, msg) in batch.iter().enumerate() {
            let bytes = msg.payload().map_or(0, <[u8]>::len) as u64;
            m.event_bytes.with_label_values(&[topic]).inc_by(bytes);
            if let (Some(key), Some(n)) = (msg.key(), partitions_in_topic) {
                if partition_for_key(key, n) != self.partition {
                    m.misrouted.with_label_values(&[topic]).inc();
                    tracing::warn!(topic, partition = self.partition, offset = msg.offset(),
                        key = %String::from_utf8_lossy(key), "misrouted event: its key hashes to another partition (producer bug; per-image ordering is not guaranteed)");
                }
            }
            if let Some(sc) = trace_context::extract(msg.headers().map(|h| h.as_borrowed())) {
                span.add_link(sc);
            }
            let decoded = ImageEvent::decode_message(
                msg.key(),
                msg.payload(),
                shared.config.worker.max_event_bytes,
            )
            .map_err(|e| (e.kind(), e.to_string()))
            .and_then(|e| match e.to_raw_document(projection) {
                Ok(doc) => Ok(Decoded {
                    msg: i,
                    id: e.id,
                    updated_at: e.updated_at,
                    doc,
                }),
                // The decoder refuses what BSON cannot hold; this is the backstop.
                Err(err) => Err(("unstorable", format!("cannot encode as BSON: {err}"))),
            });
            match decoded {
                Ok(d) => good.push(d),
                Err((kind, reason)) => {
                    shared.dead_letter.send(msg, kind, &reason, m).await;
                    counts.add(Outcome::DeadLettered);
                }
            }
        }

        let versions: Vec<(ImageId, DateTime<Utc>)> =
            good.iter().map(|d| (d.id, d.updated_at)).collect();
        let collapsed = collapse(&versions);
        // Winners are distinct indexes, so each document is moved out exactly once; the losers'
        // documents are dropped now rather than held through the write.
        let docs: Vec<RawDocumentBuf> = collapsed
            .winners
            .iter()
            .map(|&w| std::mem::take(&mut good[w].doc))
            .collect();
        for &(l, _) in &collapsed.losers {
            drop(std::mem::take(&mut good[l].doc));
        }
        let outcomes = if docs.is_empty() {
            Vec::new()
        } else {
            self.write(collection, &docs).instrument(span.clone()).await
        };
        let acked_ms = chrono::Utc::now().timestamp_millis();

        for (&w, written) in collapsed.winners.iter().zip(&outcomes) {
            let d = &good[w];
            let msg = &batch[d.msg];
            let outcome = match written {
                WriteOutcome::Rejected { code, message } => {
                    let reason = format!("MongoDB refused the document (code {code}): {message}");
                    shared
                        .dead_letter
                        .send(msg, "rejected_by_database", &reason, m)
                        .await;
                    Outcome::DeadLettered
                }
                WriteOutcome::Inserted => Outcome::Inserted,
                WriteOutcome::Updated => Outcome::Updated,
                WriteOutcome::Unchanged => Outcome::Unchanged,
                WriteOutcome::Stale => Outcome::Stale,
            };
            if outcome != Outcome::DeadLettered {
                if let Some(ts) = msg.timestamp().to_millis() {
                    let secs = (acked_ms - ts).max(0) as f64 / 1000.0;
                    m.e2e_latency_seconds
                        .with_label_values(&[topic])
                        .observe(secs);
                }
            }
            counts.add(outcome);
            self.log_event(msg.offset(), d.id, outcome);
        }
        for &(l, loser) in &collapsed.losers {
            let outcome = match loser {
                Loser::Superseded => Outcome::Superseded,
                Loser::Stale => Outcome::Stale,
            };
            counts.add(outcome);
            let d = &good[l];
            self.log_event(batch[d.msg].offset(), d.id, outcome);
        }

        for outcome in Outcome::ALL {
            let n = counts.get(outcome);
            if n > 0 {
                m.events
                    .with_label_values(&[topic, outcome.label()])
                    .inc_by(n);
            }
            span.record(format!("leafsync.{}", outcome.label()).as_str(), n);
        }
        m.batch_size
            .with_label_values(&[topic])
            .observe(batch.len() as f64);
        m.batch_write_seconds
            .with_label_values(&[topic])
            .observe(started.elapsed().as_secs_f64());

        // Every event of the batch is now written or dead-lettered: only now may the offset move.
        if let Some(last) = batch.last() {
            if let Err(e) = self
                .consumer
                .store_offset(topic, self.partition, last.offset())
            {
                tracing::warn!(topic, partition = self.partition, error = %e, "cannot store offset (partition no longer assigned?); the batch will be redelivered and replayed idempotently");
            }
        }
        shared.health.set_busy(topic, self.partition, false);
        tracing::info!(
            topic,
            partition = self.partition,
            first_offset = batch.first().map_or(0, Message::offset),
            last_offset = batch.last().map_or(0, Message::offset),
            batch_len = batch.len(),
            inserted = counts.get(Outcome::Inserted),
            updated = counts.get(Outcome::Updated),
            unchanged = counts.get(Outcome::Unchanged),
            stale = counts.get(Outcome::Stale),
            superseded = counts.get(Outcome::Superseded),
            dead_lettered = counts.get(Outcome::DeadLettered),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
    }

    fn log_event(&self, offset: i64, id: ImageId, outcome: Outcome) {
        tracing::debug!(
            topic = %self.topic,
            partition = self.partition,
            offset,
            image_id = id.get(),
            outcome = outcome.label(),
            "event"
        );
    }

    /// Writes with retries until the database acknowledges: a database outage holds this
    /// partition (nothing committed past it) but never loses or skips an event.
    async fn write(&self, collection: &str, docs: &[RawDocumentBuf]) -> Vec<WriteOutcome> {
        let retry = &self.shared.config.worker.retry;
        let mut backoff = Backoff::new(ms(retry.initial_backoff_ms), ms(retry.max_backoff_ms));
        loop {
            let span = tracing::info_span!(
                "mongodb.update",
                otel.name = format!("update {collection}"),
                otel.kind = "client",
                db.system = "mongodb",
                db.namespace = %self.shared.config.mongo.database,
                db.collection.name = collection,
                db.operation.name = "update",
                db.operation.batch.size = docs.len(),
            );
            match self
                .shared
                .store
                .write_batch(collection, docs)
                .instrument(span)
                .await
            {
                Ok(outcomes) => return outcomes,
                Err(e) => {
                    self.shared
                        .metrics
                        .retries
                        .with_label_values(&["database_write", e.class.as_str()])
                        .inc();
                    tracing::warn!(topic = %self.topic, partition = self.partition, error = %e, attempt = backoff.attempts(),
                        "database write failed; retrying (offsets held)");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_counter_and_label() {
        let mut counts = Counts::default();
        for (n, o) in Outcome::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                counts.add(o);
            }
        }
        for (n, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(counts.get(o), n as u64 + 1, "{o:?}");
        }
        let labels: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
