//! Producing events the way the platform's producer must: key = decimal id, partition = the
//! core murmur3 partitioner (explicit, so the contract is what gets tested), and a W3C
//! `traceparent` header when tracing is on.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use leafsync_core::config::Config;
use leafsync_core::partitioner::partition_for_key;
use leafsync_core::ImageType;
use leafsync_kafka::admin::partition_count;
use leafsync_kafka::{trace_context, AccessWatch, ClientConfigExt as _, WatchedContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// A keyed, explicitly partitioned producer with bounded in-flight messages.
pub struct EventProducer {
    producer: FutureProducer<WatchedContext>,
    partitions: HashMap<String, NonZeroU32>,
    in_flight: FuturesUnordered<DeliveryFuture>,
    /// Messages the broker refused (after librdkafka's own retries).
    pub failed: u64,
}

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProducer")
            .field("partitions", &self.partitions)
            .field("in_flight", &self.in_flight.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

const MAX_IN_FLIGHT: usize = 20_000;

impl EventProducer {
    /// Connects and learns the partition count of every image topic.
    pub fn new(cfg: &Config) -> anyhow::Result<Self> {
        let producer = cfg
            .kafka
            .client_config_with(&[
                ("acks", "all"),
                ("linger.ms", "5"),
                ("batch.num.messages", "10000"),
                ("queue.buffering.max.messages", "200000"),
                ("compression.type", "none"),
            ])
            .create_with_context(WatchedContext {
                access: AccessWatch::exiting("leafsync-loadtest"),
            })?;
        let mut partitions = HashMap::new();
        for t in ImageType::ALL {
            let topic = &cfg.types.get(t).topic;
            let n = NonZeroU32::new(partition_count(&cfg.kafka, topic, Duration::from_secs(10))?)
                .ok_or_else(|| {
                anyhow::anyhow!("topic {topic} does not exist (scripts/stack up creates it)")
            })?;
            partitions.insert(topic.clone(), n);
        }
        Ok(Self {
            producer,
            partitions,
            in_flight: FuturesUnordered::new(),
            failed: 0,
        })
    }

    /// Queues one message to `topic`, partitioned by its key. Waits when too many are in flight.
    pub async fn send(
        &mut self,
        topic: &str,
        key: &[u8],
        value: Option<&[u8]>,
        trace: bool,
    ) -> anyhow::Result<()> {
        let n = *self
            .partitions
            .get(topic)
            .ok_or_else(|| anyhow::anyhow!("unknown topic {topic}"))?;
        let partition = partition_for_key(key, n);
        let headers = if trace {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            trace_context::inject(&tracing::Span::current().context(), OwnedHeaders::new())
        } else {
            OwnedHeaders::new()
        };
        while self.in_flight.len() >= MAX_IN_FLIGHT {
            self.settle_one().await;
        }
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic)
                .key(key)
                .partition(partition)
                .headers(headers.clone());
            if let Some(v) = value {
                record = record.payload(v);
            }
            match self.producer.send_result(record) {
                Ok(f) => {
                    self.in_flight.push(f);
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    if self.in_flight.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    } else {
                        self.settle_one().await;
                    }
                }
                Err((e, _)) => return Err(e.into()),
            }
        }
    }

    async fn settle_one(&mut self) {
        match self.in_flight.next().await {
            Some(Ok(Ok(_))) | None => {}
            Some(Ok(Err((e, _)))) => {
                self.failed += 1;
                tracing::warn!(error = %e, "produce failed");
            }
            Some(Err(_)) => self.failed += 1,
        }
    }

    /// Waits until every queued message is acknowledged or failed.
    pub async fn flush(&mut self) {
        while !self.in_flight.is_empty() {
            self.settle_one().await;
        }
    }
}
