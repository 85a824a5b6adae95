//! One task per assigned partition: gather a micro-batch, decode, dead-letter the bad events,
//! write the rest in one stale-guarded command, and only then store the offset. Events of one
//! partition are handled strictly in order; partitions run in parallel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use leafsync_core::config::ms;
use leafsync_core::document::Projection;
use leafsync_core::partitioner::partition_for_key;
use leafsync_core::{trace_context, ImageEvent, ImageType, WriteOutcome};
use mongodb::bson::Document;
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

/// Per-batch outcome counts, for the summary line and metrics.
#[derive(Debug, Default)]
struct Counts {
    inserted: u64,
    updated: u64,
    unchanged: u64,
    stale: u64,
    superseded: u64,
    dead_lettered: u64,
}

impl Counts {
    fn add(&mut self, outcome: &str) {
        match outcome {
            "inserted" => self.inserted += 1,
            "updated" => self.updated += 1,
            "unchanged" => self.unchanged += 1,
            "stale" => self.stale += 1,
            "superseded" => self.superseded += 1,
            _ => self.dead_lettered += 1,
        }
    }

    fn pairs(&self) -> [(&'static str, u64); 6] {
        [
            ("inserted", self.inserted),
            ("updated", self.updated),
            ("unchanged", self.unchanged),
            ("stale", self.stale),
            ("superseded", self.superseded),
            ("dead_lettered", self.dead_lettered),
        ]
    }
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
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let n = tokio::task::spawn_blocking(move || {
            let md = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(5))
                .ok()?;
            let n = md.topics().first()?.partitions().len() as u32;
            (n > 0).then_some(n)
        })
        .await
        .ok()
        .flatten();
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

        let mut good: Vec<(usize, ImageEvent)> = Vec::with_capacity(batch.len());
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
            match ImageEvent::decode_message(
                msg.key(),
                msg.payload(),
                shared.config.worker.max_event_bytes,
            ) {
                Ok(e) => good.push((i, e)),
                Err(err) => {
                    shared
                        .dead_letter
                        .send(msg, err.kind(), &err.to_string(), m)
                        .await;
                    counts.add("dead_lettered");
                }
            }
        }

        let refs: Vec<&ImageEvent> = good.iter().map(|(_, e)| e).collect();
        let collapsed = collapse(&refs);
        let docs: Vec<Document> = collapsed
            .winners
            .iter()
            .map(|&w| refs[w].to_document(projection))
            .collect();
        let outcomes = if docs.is_empty() {
            Vec::new()
        } else {
            self.write(collection, &docs).instrument(span.clone()).await
        };
        let acked_ms = chrono::Utc::now().timestamp_millis();

        for (&w, outcome) in collapsed.winners.iter().zip(&outcomes) {
            let (i, event) = &good[w];
            let msg = &batch[*i];
            let label = match outcome {
                WriteOutcome::Rejected { code, message } => {
                    let reason = format!("MongoDB refused the document (code {code}): {message}");
                    shared
                        .dead_letter
                        .send(msg, "rejected_by_database", &reason, m)
                        .await;
                    "dead_lettered"
                }
                o => {
                    if let Some(ts) = msg.timestamp().to_millis() {
                        let secs = (acked_ms - ts).max(0) as f64 / 1000.0;
                        m.e2e_latency_seconds
                            .with_label_values(&[topic])
                            .observe(secs);
                    }
                    o.as_str()
                }
            };
            counts.add(label);
            tracing::debug!(
                topic,
                partition = self.partition,
                offset = msg.offset(),
                image_id = event.id.get(),
                outcome = label,
                "event"
            );
        }
        for &(l, loser) in &collapsed.losers {
            let label = match loser {
                Loser::Superseded => "superseded",
                Loser::Stale => "stale",
            };
            counts.add(label);
            let (i, event) = &good[l];
            tracing::debug!(
                topic,
                partition = self.partition,
                offset = batch[*i].offset(),
                image_id = event.id.get(),
                outcome = label,
                "event"
            );
        }

        for (outcome, n) in counts.pairs() {
            if n > 0 {
                m.events.with_label_values(&[topic, outcome]).inc_by(n);
            }
            span.record(format!("leafsync.{outcome}").as_str(), n);
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
            inserted = counts.inserted,
            updated = counts.updated,
            unchanged = counts.unchanged,
            stale = counts.stale,
            superseded = counts.superseded,
            dead_lettered = counts.dead_lettered,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
    }

    /// Writes with retries until the database acknowledges: a database outage holds this
    /// partition (nothing committed past it) but never loses or skips an event.
    async fn write(&self, collection: &str, docs: &[Document]) -> Vec<WriteOutcome> {
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
