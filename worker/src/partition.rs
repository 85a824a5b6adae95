//! One task per assigned partition: gather a micro-batch from the partition's [`Input`], turn
//! it into a [`Plan`] (pure), then *settle* it: dead-letter the refused events, write the rest
//! in one stale-guarded command, dead-letter what the database refused, and only then store the
//! offset. Events of one partition are handled strictly in order; partitions run in parallel.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leafsync_core::config::ms;
use leafsync_core::{ImageType, Outcome, OutcomeCounts};
use leafsync_kafka::admin::partition_count_via;
use leafsync_kafka::{offsets, trace_context};
use mongodb::bson::RawDocumentBuf;
use rdkafka::consumer::stream_consumer::StreamPartitionQueue;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Message, OwnedMessage};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::backoff::{retry_forever, Backoff};
use crate::consumer::{LeafConsumer, WorkerContext};
use crate::dead_letter::Undeliverable;
use crate::events::{
    BatchReceived, BatchSettled, BatchTimed, Emit, EventSettled, EventVisible, Misrouted,
    OffsetNotStored, Rewound, Source, Via,
};
use crate::input::{Input, Next};
use crate::plan::{plan, Consumed, Plan, Rules, Write};
use crate::Shared;

/// Partition counts of the consumed topics, shared by the partition tasks: one metadata
/// request per topic instead of one per partition (each is a blocking call, and a burst of them
/// at assignment would start a thread apiece). Entries expire so an added partition is noticed.
#[derive(Debug, Default)]
pub struct PartitionCounts(std::sync::Mutex<HashMap<String, Arc<CountSlot>>>);

/// One topic's cached count; its lock is held across the request, so the tasks of that topic
/// wait for one answer while other topics go on.
type CountSlot = tokio::sync::Mutex<Option<(Instant, Option<NonZeroU32>)>>;

impl PartitionCounts {
    const TTL: Duration = Duration::from_secs(60);

    async fn get(&self, consumer: &Arc<LeafConsumer>, topic: &str) -> Option<NonZeroU32> {
        let slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(topic.to_owned())
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some((at, n)) = *cached {
            if at.elapsed() < Self::TTL {
                return n;
            }
        }
        let (c, t) = (consumer.clone(), topic.to_owned());
        let n = tokio::task::spawn_blocking(move || {
            partition_count_via(c.client(), &t, Duration::from_secs(5)).ok()
        })
        .await
        .ok()
        .flatten()
        .and_then(NonZeroU32::new);
        *cached = Some((Instant::now(), n));
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
    /// The partition's messages, in order (split queue plus stragglers).
    pub input: Input<OwnedMessage, StreamPartitionQueue<WorkerContext>>,
    /// For storing offsets and rewinding.
    pub consumer: Arc<LeafConsumer>,
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// Cancelled on revoke and shutdown: finish the batch in hand, then stop.
    pub stop: CancellationToken,
}

impl std::fmt::Debug for PartitionTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionTask")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .finish_non_exhaustive()
    }
}

/// The time from a Kafka message timestamp to `now` (both ms since the epoch); zero if the
/// producer's clock is ahead.
fn since(timestamp_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis((now_ms - timestamp_ms).max(0).unsigned_abs())
}

/// A batch that could not be settled: a fatal error was raised, and no offset is stored.
#[derive(Debug)]
struct Unsettled;

impl From<Undeliverable> for Unsettled {
    fn from(_: Undeliverable) -> Self {
        Self
    }
}

/// What [`PartitionTask::gather`] ends with.
enum Gathered {
    /// A batch, and the time it took.
    Batch(Vec<OwnedMessage>, BatchTimed),
    /// A message arrived out of order; the batch in hand was dropped (not written, its offset
    /// not stored). Rewind the partition to this offset.
    Rewind { to: i64, seen: i64 },
    /// Stopped with nothing in hand.
    Stopped,
}

impl PartitionTask {
    /// Runs until stopped. Returns after the batch in hand is fully handled.
    pub async fn run(mut self) {
        tracing::info!(topic = %self.topic, partition = self.partition, "partition task started");
        let partitions_in_topic = self.partition_count().await;
        let types = &self.shared.config.types;
        let projection = types.projection(self.image_type);
        let collection = types.get(self.image_type).collection.clone();
        loop {
            match self.gather().await {
                Gathered::Batch(batch, mut timed) => {
                    let rules = Rules {
                        partition: self.partition,
                        partitions_in_topic,
                        projection: &projection,
                        max_event_bytes: self.shared.config.worker.max_event_bytes,
                        keyed: true,
                    };
                    let settled = self.process(&batch, &collection, &rules, &mut timed).await;
                    timed.emit(&self.shared.metrics);
                    if settled.is_err() {
                        // A fatal error was raised and the worker is stopping: nothing after
                        // this batch may be stored either.
                        break;
                    }
                }
                Gathered::Rewind { to, seen } => self.rewind(to, seen).await,
                Gathered::Stopped => break,
            }
            if self.stop.is_cancelled() {
                break;
            }
        }
        tracing::info!(topic = %self.topic, partition = self.partition, "partition task stopped");
    }

    /// The topic's partition count, for spotting misrouted events (`None` if unknown).
    async fn partition_count(&self) -> Option<NonZeroU32> {
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

    /// The next message in order, or the offset to rewind to.
    async fn next(&mut self) -> Result<OwnedMessage, (i64, i64)> {
        match self.input.next().await {
            Next::InOrder(m) => Ok(m),
            Next::Late { message, seen } => Err((message.offset(), seen)),
        }
    }

    /// Up to `batch.max_events` messages, or what arrived within `batch.max_wait_ms` of the
    /// first one. (The write then queues at its collection's writer, [`crate::writer`].)
    async fn gather(&mut self) -> Gathered {
        let stop = self.stop.clone();
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => return Gathered::Stopped,
            m = self.next() => m,
        };
        let first = match first {
            Ok(m) => m,
            Err((to, seen)) => return Gathered::Rewind { to, seen },
        };
        let received = Instant::now();
        let mut timed = BatchTimed {
            kafka: first
                .timestamp()
                .to_millis()
                .map(|ts| since(ts, chrono::Utc::now().timestamp_millis())),
            ..BatchTimed::default()
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
                m = self.next() => match m {
                    Ok(m) => batch.push(m),
                    Err((to, seen)) => return Gathered::Rewind { to, seen },
                },
            }
        }
        timed.gather = received.elapsed();
        Gathered::Batch(batch, timed)
    }

    /// Moves the partition back to `to` (retrying until librdkafka accepts): its stored and
    /// committed offsets first, then its fetch position, so the late message and everything
    /// after it come again, in order, and no commit can pass them meanwhile
    /// ([`leafsync_kafka::offsets::rewind`]).
    async fn rewind(&mut self, to: i64, seen: i64) {
        Rewound {
            at: self.source(to),
            seen,
        }
        .emit(&self.shared.metrics);
        let backoff = Backoff::from_config(&self.shared.config.worker.retry);
        retry_forever(
            "rewind",
            backoff,
            &self.shared.metrics,
            |_| "transient",
            || {
                let (c, topic, partition) =
                    (self.consumer.clone(), self.topic.clone(), self.partition);
                async move {
                    tokio::task::spawn_blocking(move || {
                        offsets::rewind(c.as_ref(), &topic, partition, to, Duration::from_secs(5))
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| e.to_string())?
                }
            },
        )
        .await;
        self.input.rewound();
    }

    fn source(&self, offset: i64) -> Source<'_> {
        Source {
            topic: &self.topic,
            partition: self.partition,
            offset,
        }
    }

    /// Plans the batch, then settles the plan, inside the batch's span.
    async fn process(
        &self,
        batch: &[OwnedMessage],
        collection: &str,
        rules: &Rules<'_>,
        timed: &mut BatchTimed,
    ) -> Result<(), Unsettled> {
        let started = Instant::now();
        self.shared
            .health
            .set_busy(&self.topic, self.partition, true);
        let span = self.batch_span(batch);
        let consumed: Vec<Consumed<'_>> = batch
            .iter()
            .map(|m| Consumed {
                offset: m.offset(),
                key: m.key(),
                payload: m.payload(),
            })
            .collect();
        let planning = Instant::now();
        let plan = plan(&consumed, rules);
        timed.plan = planning.elapsed();
        drop(consumed);
        let counts = self
            .settle(batch, plan, collection, timed)
            .instrument(span.clone())
            .await?;
        for (outcome, n) in counts.iter() {
            span.record(format!("leafsync.{}", outcome.label()).as_str(), n);
        }
        BatchSettled {
            topic: &self.topic,
            partition: self.partition,
            offsets: (
                batch.first().map_or(0, Message::offset),
                batch.last().map_or(0, Message::offset),
            ),
            counts: &counts,
            elapsed: started.elapsed(),
        }
        .emit(&self.shared.metrics);
        self.shared
            .health
            .set_busy(&self.topic, self.partition, false);
        Ok(())
    }

    /// Carries out `plan`: dead letters, the write, dead letters for what the database refused,
    /// outcomes, and finally the stored offset. Returns the outcome counts, or `Unsettled` (the
    /// offset not stored) when a fatal error stops the worker.
    async fn settle(
        &self,
        batch: &[OwnedMessage],
        plan: Plan,
        collection: &str,
        timed: &mut BatchTimed,
    ) -> Result<OutcomeCounts, Unsettled> {
        let m = &self.shared.metrics;
        let mut counts = OutcomeCounts::default();
        BatchReceived {
            via: Via::Stream,
            topic: &self.topic,
            len: batch.len(),
            bytes: plan.bytes,
        }
        .emit(m);
        for &i in &plan.misrouted {
            Misrouted {
                at: self.source(batch[i].offset()),
                key: batch[i].key().unwrap_or_default(),
            }
            .emit(m);
        }
        let started = Instant::now();
        for r in &plan.refusals {
            self.shared
                .dead_letter
                .send(&batch[r.msg], r.kind, &r.reason, m)
                .await?;
            self.settled(&mut counts, &batch[r.msg], None, Outcome::DeadLettered);
        }
        timed.dead_letter = started.elapsed();
        self.write_and_record(batch, plan.writes, collection, &mut counts, timed)
            .await?;
        for &(i, id, outcome) in &plan.skipped {
            self.settled(&mut counts, &batch[i], Some(id), outcome);
        }
        // Every event of the batch is now written or dead-lettered: only now may the offset move.
        let started = Instant::now();
        if let Some(last) = plan.store_offset {
            if let Err(e) = self
                .consumer
                .store_offset(&self.topic, self.partition, last)
            {
                OffsetNotStored {
                    at: self.source(last),
                    error: &e.to_string(),
                }
                .emit(m);
            }
        }
        timed.store_offset = started.elapsed();
        Ok(counts)
    }

    /// Writes the plan's documents, dead-letters what the database refused, and records each
    /// event's outcome and, once visible, its end-to-end latency.
    async fn write_and_record(
        &self,
        batch: &[OwnedMessage],
        writes: Vec<Write>,
        collection: &str,
        counts: &mut OutcomeCounts,
        timed: &mut BatchTimed,
    ) -> Result<(), Unsettled> {
        let m = &self.shared.metrics;
        let (index, docs): (Vec<_>, Vec<RawDocumentBuf>) =
            writes.into_iter().map(|w| ((w.msg, w.id), w.doc)).unzip();
        let written = self.shared.writers.write(collection, docs).await;
        (timed.permit, timed.write) = (written.queued, written.write);
        let results = written.results;
        if results.len() != index.len() {
            // One result per document is the writer's contract; zipping a short answer would
            // settle (and store the offset past) events that were never written.
            self.shared.fatal.raise(format!(
                "the {collection} write answered {} results for {} documents",
                results.len(),
                index.len()
            ));
            return Err(Unsettled);
        }
        let acked_ms = chrono::Utc::now().timestamp_millis();
        for (&(i, id), result) in index.iter().zip(results) {
            let msg = &batch[i];
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(rejected) => {
                    let reason = rejected.reason();
                    self.shared
                        .dead_letter
                        .send(msg, "rejected_by_database", &reason, m)
                        .await?;
                    Outcome::DeadLettered
                }
            };
            if let (true, Some(ts)) = (outcome.is_visible(), msg.timestamp().to_millis()) {
                EventVisible {
                    topic: &self.topic,
                    latency: since(ts, acked_ms),
                }
                .emit(m);
            }
            self.settled(counts, msg, Some(id), outcome);
        }
        Ok(())
    }

    fn settled(
        &self,
        counts: &mut OutcomeCounts,
        msg: &OwnedMessage,
        id: Option<leafsync_core::ImageId>,
        outcome: Outcome,
    ) {
        counts.add(outcome);
        EventSettled {
            at: self.source(msg.offset()),
            id,
            outcome,
        }
        .emit(&self.shared.metrics);
    }

    /// The batch's span: a consumer span linked to each message's producer trace.
    fn batch_span(&self, batch: &[OwnedMessage]) -> tracing::Span {
        let topic = self.topic.as_str();
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
        for msg in batch {
            if let Some(sc) = trace_context::extract(msg.headers().map(|h| h.as_borrowed())) {
                span.add_link(sc);
            }
        }
        span
    }
}
