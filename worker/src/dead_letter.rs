//! The dead-letter topic: where bad events go, with the original key, value and headers, plus
//! headers saying where the event came from and why it was refused.
//!
//! A send failure is retried until the broker acknowledges, except two refusals that no retry
//! can change. A letter too large for the producer's `kafka.dead_letter_max_bytes` or the
//! topic's `max.message.bytes` is sent again with its value cut (halved, and at most half the
//! limit, until it fits), with headers saying so and the original size: the bad event must not
//! stall its partition. A topic the worker may not write to (an ACL) is a configuration fault:
//! the worker stops with that reason ([`crate::supervise::Fatal`]) instead of stalling silently.

use std::time::Duration;

use leafsync_core::config::Config;
use leafsync_kafka::admin::partition_count_via;
use leafsync_kafka::{AdminError, ClientConfigExt as _, WatchedContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::types::RDKafkaErrorCode;

use crate::backoff::{retry_forever, Backoff};
use crate::events::{DeadLettered, Emit, Origin, Source, Via};
use crate::metrics::Metrics;
use crate::supervise::Fatal;

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
    /// `true` when the value was cut to fit the topic's message size limit.
    pub const PAYLOAD_TRUNCATED: &str = "leafsync.payload.truncated";
    /// The size of the original value, in bytes, when it was cut.
    pub const PAYLOAD_ORIGINAL_BYTES: &str = "leafsync.payload.original_bytes";
}

/// The dead-letter topic refused a letter for good (the worker is already stopping).
#[derive(Debug, thiserror::Error)]
#[error("the dead-letter topic refused the letter: {0}")]
pub struct Undeliverable(KafkaError);

/// A refusal that no retry of the same letter can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Over the producer's or the topic's message size limit.
    TooLarge,
    /// The worker may not write to the topic.
    Unauthorized,
}

fn refusal(e: &KafkaError) -> Option<Refusal> {
    match e.rdkafka_error_code()? {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge => {
            Some(Refusal::TooLarge)
        }
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => Some(Refusal::Unauthorized),
        _ => None,
    }
}

/// How much of a value of `len` bytes to keep after a size refusal: half, and at most half the
/// producer's limit (leaving room for the key and headers). Reaches 0 in a few steps.
fn cut(len: usize, max_bytes: usize) -> usize {
    (len / 2).min(max_bytes / 2)
}

/// Producer of dead letters.
pub struct DeadLetter {
    producer: FutureProducer<WatchedContext>,
    topic: String,
    worker_id: String,
    backoff: Backoff,
    max_bytes: usize,
    fatal: Fatal,
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
    /// A producer for `kafka.dead_letter_topic`; a letter the topic refuses for good raises
    /// `fatal`.
    pub fn new(cfg: &Config, worker_id: &str, fatal: Fatal) -> Result<Self, KafkaError> {
        let max_bytes = cfg.kafka.dead_letter_max_bytes.to_string();
        let producer = cfg
            .kafka
            .client_config()
            .set("acks", "all")
            .set("message.timeout.ms", "30000")
            .set("linger.ms", "5")
            .set("message.max.bytes", &max_bytes)
            .create_with_context(WatchedContext {
                access: fatal.access_watch(),
            })?;
        Ok(Self {
            producer,
            topic: cfg.kafka.dead_letter_topic.clone(),
            worker_id: worker_id.to_owned(),
            backoff: Backoff::from_config(&cfg.worker.retry),
            max_bytes: usize::try_from(cfg.kafka.dead_letter_max_bytes).unwrap_or(usize::MAX),
            fatal,
        })
    }

    /// Confirms, before any event depends on it, that the dead-letter topic exists and this
    /// principal may describe it. Waits up to `timeout` for the broker and the topic (both may
    /// be starting too), but fails at once with the cause when Kafka refuses the credentials,
    /// the certificate or the topic (an ACL).
    pub async fn check_topic(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (producer, topic) = (self.producer.clone(), self.topic.clone());
            let found = tokio::task::spawn_blocking(move || {
                partition_count_via(producer.client(), &topic, Duration::from_secs(1))
            })
            .await?;
            if let Some(reason) = self.fatal.reason() {
                anyhow::bail!("{reason}");
            }
            let late = tokio::time::Instant::now() >= deadline;
            match found {
                // On a fresh deploy the topics Job may still be creating it.
                Ok(0) if late => anyhow::bail!(
                    "kafka.dead_letter_topic `{}` does not exist (create it with the image topics)",
                    self.topic
                ),
                Ok(0) => {}
                Ok(_) => return Ok(()),
                Err(e @ AdminError::Topic { .. }) => {
                    anyhow::bail!("kafka.dead_letter_topic `{}`: {e}", self.topic)
                }
                Err(e) if late => anyhow::bail!(
                    "kafka.dead_letter_topic `{}` unreachable for {}s: {e}",
                    self.topic,
                    timeout.as_secs()
                ),
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Produces `msg` to the dead-letter topic, retrying until the broker acknowledges it: the
    /// source offset must never move past an event that is neither written nor dead-lettered.
    /// `Err` when the topic refuses it for good: store no offset past it (the worker stops).
    pub async fn send(
        &self,
        msg: &OwnedMessage,
        kind: &str,
        reason: &str,
        metrics: &Metrics,
    ) -> Result<(), Undeliverable> {
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
        self.produce(&letter, kind, reason, metrics).await?;
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
        Ok(())
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
    ) -> Result<(), Undeliverable> {
        let mut all = vec![(header::SOURCE, Via::Backfill.as_str())];
        all.extend_from_slice(origin);
        let letter = Letter {
            key,
            payload: Some(payload),
            headers: None,
            origin: &all,
        };
        self.produce(&letter, kind, reason, metrics).await?;
        let at: Vec<String> = origin.iter().map(|(k, v)| format!("{k}={v}")).collect();
        DeadLettered {
            topic,
            at: Origin::Backfill(&at.join(" ")),
            kind,
            reason,
        }
        .emit(metrics);
        Ok(())
    }

    /// The letter's headers: the original ones, where it came from, and why it was refused.
    fn headers(&self, letter: &Letter<'_>, kind: &str, reason: &str) -> OwnedHeaders {
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
        headers
    }

    async fn produce(
        &self,
        letter: &Letter<'_>,
        kind: &str,
        reason: &str,
        metrics: &Metrics,
    ) -> Result<(), Undeliverable> {
        let headers = self.headers(letter, kind, reason);
        let payload = letter.payload.unwrap_or_default();
        // The value's length kept after a size refusal, and the headers that say so.
        let mut kept: Option<usize> = None;
        let original = payload.len().to_string();
        loop {
            let mut headers = headers.clone();
            let mut value = letter.payload;
            if let Some(n) = kept {
                value = Some(&payload[..n]);
                for (key, v) in [
                    (header::PAYLOAD_TRUNCATED, "true"),
                    (header::PAYLOAD_ORIGINAL_BYTES, original.as_str()),
                ] {
                    headers = headers.insert(Header {
                        key,
                        value: Some(v.as_bytes()),
                    });
                }
            }
            let record = || {
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.topic).headers(headers.clone());
                if let Some(k) = letter.key {
                    record = record.key(k);
                }
                if let Some(v) = value {
                    record = record.payload(v);
                }
                record
            };
            // Transient failures are retried here; a refusal for good comes back as Ok(Err).
            let sent = retry_forever(
                "dead_letter",
                self.backoff.clone(),
                metrics,
                |_| "transient",
                || async {
                    match self.producer.send(record(), Duration::from_secs(30)).await {
                        Ok(_) => Ok(Ok(())),
                        Err((e, _)) => match refusal(&e) {
                            Some(r) => Ok(Err((r, e))),
                            None => Err(e),
                        },
                    }
                },
            )
            .await;
            match sent {
                Ok(()) => return Ok(()),
                Err((Refusal::TooLarge, e)) if kept != Some(0) => {
                    let n = cut(kept.unwrap_or(payload.len()), self.max_bytes);
                    tracing::warn!(topic = %self.topic, kind, error = %e, original_bytes = payload.len(), kept_bytes = n, "dead letter too large; sending it with its value cut");
                    kept = Some(n);
                }
                Err((_, e)) => {
                    self.fatal.raise(format!(
                        "the dead-letter topic {} refuses a {kind} letter for good: {e} (check its ACLs and max.message.bytes)",
                        self.topic
                    ));
                    return Err(Undeliverable(e));
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_value_halves_stays_under_half_the_limit_and_reaches_zero() {
        assert_eq!(cut(5_000_000, 1_000_000), 500_000);
        assert_eq!(cut(600_000, 1_000_000), 300_000);
        let mut n = 5_000_000;
        let mut steps = 0;
        while n > 0 {
            n = cut(n, 1_000_000);
            steps += 1;
        }
        assert!(steps <= 21, "{steps} steps");
    }

    #[test]
    fn size_and_authorization_refusals_are_for_good_the_rest_is_retried() {
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            refusal(&e(RDKafkaErrorCode::MessageSizeTooLarge)),
            Some(Refusal::TooLarge)
        );
        assert_eq!(
            refusal(&e(RDKafkaErrorCode::MessageBatchTooLarge)),
            Some(Refusal::TooLarge)
        );
        assert_eq!(
            refusal(&e(RDKafkaErrorCode::TopicAuthorizationFailed)),
            Some(Refusal::Unauthorized)
        );
        for transient in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::BrokerTransportFailure,
        ] {
            assert_eq!(refusal(&e(transient)), None, "{transient:?}");
        }
    }
}
