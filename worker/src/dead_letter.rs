//! The dead-letter topic: where bad events go, with the original key, value and headers, plus
//! headers saying where the event came from and why it was refused.

use std::time::Duration;

use leafsync_core::config::Config;
use leafsync_kafka::ClientConfigExt as _;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::backoff::{retry_forever, Backoff};
use crate::events::{DeadLettered, Emit, Source};
use crate::metrics::Metrics;

/// Header names written on every dead-lettered message.
pub mod header {
    /// Topic the event was read from.
    pub const SOURCE_TOPIC: &str = "leafsync.source.topic";
    /// Partition it was read from.
    pub const SOURCE_PARTITION: &str = "leafsync.source.partition";
    /// Its offset there.
    pub const SOURCE_OFFSET: &str = "leafsync.source.offset";
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
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut headers = OwnedHeaders::new();
        if let Some(original) = msg.headers() {
            for h in original.iter() {
                headers = headers.insert(h);
            }
        }
        for (key, value) in [
            (header::SOURCE_TOPIC, msg.topic()),
            (header::SOURCE_PARTITION, partition.as_str()),
            (header::SOURCE_OFFSET, offset.as_str()),
            (header::ERROR_KIND, kind),
            (header::ERROR_MESSAGE, reason),
            (header::WORKER_ID, self.worker_id.as_str()),
            (header::FAILED_AT, now.as_str()),
        ] {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let record = || {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.topic).headers(headers.clone());
            if let Some(k) = msg.key() {
                record = record.key(k);
            }
            if let Some(v) = msg.payload() {
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
        DeadLettered {
            at: Source {
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
            },
            kind,
            reason,
        }
        .emit(metrics);
    }
}
