//! The dead-letter topic: where bad events go, with the original key, value and headers, plus
//! headers saying where the event came from and why it was refused.

use std::time::Duration;

use leafsync_core::config::Config;
use leafsync_kafka::ClientConfigExt as _;
use rdkafka::message::{BorrowedHeaders, Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::backoff::{retry_forever, Backoff};
use crate::events::{DeadLettered, Emit, Origin, Source, Via};
use crate::metrics::Metrics;

/// Header names written on every dead-lettered message.
pub mod header {
    /// Which path read the event: `stream` (Kafka) or `backfill`.
    pub const SOURCE: &str = "leafsync.source";
    /// Topic the event was read from.
    pub const SOURCE_TOPIC: &str = "leafsync.source.topic";
    /// Partition it was read from.
    pub const SOURCE_PARTITION: &str = "leafsync.source.partition";
    /// Its offset there.
    pub const SOURCE_OFFSET: &str = "leafsync.source.offset";
    /// Backfill: the image type of the document.
    pub const SOURCE_TYPE: &str = "leafsync.source.type";
    /// Backfill from MongoDB: the source database.
    pub const SOURCE_DATABASE: &str = "leafsync.source.database";
    /// Backfill from MongoDB: the source collection.
    pub const SOURCE_COLLECTION: &str = "leafsync.source.collection";
    /// Backfill from MongoDB: the document's `_id` (hex for an ObjectId, else extended JSON).
    pub const SOURCE_DOCUMENT_ID: &str = "leafsync.source.document_id";
    /// Backfill from a JSON Lines file: its path.
    pub const SOURCE_FILE: &str = "leafsync.source.file";
    /// Backfill from a JSON Lines file: the line number (from 1).
    pub const SOURCE_LINE: &str = "leafsync.source.line";
    /// Machine-readable reason (`not_json`, `invalid_id`, `rejected_by_database`, …).
    pub const ERROR_KIND: &str = "leafsync.error.kind";
    /// Human-readable reason.
    pub const ERROR_MESSAGE: &str = "leafsync.error.message";
    /// The worker that refused it.
    pub const WORKER_ID: &str = "leafsync.worker.id";
    /// When (RFC 3339).
    pub const FAILED_AT: &str = "leafsync.failed_at";
}

/// Producer of dead letters.
pub struct DeadLetter {
    producer: FutureProducer,
    topic: String,
    worker_id: String,
    backoff: Backoff,
}

impl std::fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetter")
            .field("topic", &self.topic)
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl DeadLetter {
    /// A producer for `kafka.dead_letter_topic`.
    pub fn new(cfg: &Config, worker_id: &str) -> Result<Self, rdkafka::error::KafkaError> {
        let producer = cfg
            .kafka
            .client_config()
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5")
            .create()?;
        Ok(Self {
            producer,
            topic: cfg.kafka.dead_letter_topic.clone(),
            worker_id: worker_id.to_owned(),
            backoff: Backoff::from_config(&cfg.worker.retry),
        })
    }

    /// Produces `msg` to the dead-letter topic, retrying until the broker acknowledges it: the
    /// source offset must never move past an event that is neither written nor dead-lettered.
    pub async fn send(&self, msg: &OwnedMessage, kind: &str, reason: &str, metrics: &Metrics) {
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let origin = [
            (header::SOURCE, Via::Stream.as_str()),
            (header::SOURCE_TOPIC, msg.topic()),
            (header::SOURCE_PARTITION, partition.as_str()),
            (header::SOURCE_OFFSET, offset.as_str()),
        ];
        let letter = Letter {
            key: msg.key(),
            payload: msg.payload(),
            headers: msg.headers().map(OwnedHeaders::as_borrowed),
            origin: &origin,
        };
        self.produce(&letter, kind, reason, metrics).await;
        DeadLettered {
            topic: msg.topic(),
            at: Origin::Stream(Source {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
            }),
            kind,
            reason,
        }
        .emit(metrics);
    }

    /// Produces a backfill's bad document: its bytes, the image id as key when known, and
    /// headers saying where in the source it is (`origin`, besides `leafsync.source=backfill`).
    /// `topic` is the topic of its image type (the metric label).
    #[allow(clippy::too_many_arguments)] // one letter's parts; a struct would only rename them
    pub async fn send_backfill(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        origin: &[(&str, &str)],
        kind: &str,
        reason: &str,
        metrics: &Metrics,
    ) {
        let mut all = vec![(header::SOURCE, Via::Backfill.as_str())];
        all.extend_from_slice(origin);
        let letter = Letter {
            key,
            payload: Some(payload),
            headers: None,
            origin: &all,
        };
        self.produce(&letter, kind, reason, metrics).await;
        let at: Vec<String> = origin.iter().map(|(k, v)| format!("{k}={v}")).collect();
        DeadLettered {
            topic,
            at: Origin::Backfill(&at.join(" ")),
            kind,
            reason,
        }
        .emit(metrics);
    }

    async fn produce(&self, letter: &Letter<'_>, kind: &str, reason: &str, metrics: &Metrics) {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut headers = OwnedHeaders::new();
        if let Some(original) = letter.headers {
            for h in original.iter() {
                headers = headers.insert(h);
            }
        }
        let fixed = [
            (header::ERROR_KIND, kind),
            (header::ERROR_MESSAGE, reason),
            (header::WORKER_ID, self.worker_id.as_str()),
            (header::FAILED_AT, now.as_str()),
        ];
        for &(key, value) in letter.origin.iter().chain(&fixed) {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let record = || {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers.clone());
            if let Some(k) = letter.key {
                record = record.key(k);
            }
            if let Some(v) = letter.payload {
                record = record.payload(v);
            }
            record
        };
        retry_forever(
            "dead_letter",
            self.backoff.clone(),
            metrics,
            |_| "transient",
            || async {
                self.producer
                    .send(record(), Duration::from_secs(30))
                    .await
                    .map_err(|(e, _)| e)
            },
        )
        .await;
    }
}

/// What goes to the dead-letter topic: the original bytes and headers, plus where they came
/// from.
struct Letter<'a> {
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Option<&'a BorrowedHeaders>,
    origin: &'a [(&'a str, &'a str)],
}
