//! Where a consumer group stands in each partition against where the log ends: the lag that
//! the worker exports and KEDA scales on, and that the load tool samples.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

/// One partition's committed offset and high watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset the group will read: its committed offset, or the log start when it has
    /// none (so a group that never committed counts the whole retained log as lag).
    pub committed: i64,
    /// High watermark: the offset the next produced message will get.
    pub end: i64,
}

impl Position {
    /// Messages not yet committed by the group.
    pub fn lag(&self) -> i64 {
        (self.end - self.committed).max(0)
    }
}

/// The position of every partition in `committed` (as returned by `committed`/
/// `committed_offsets`), each on its own so one failed watermark request spoils only its own
/// partition. Blocking: one request per partition, each up to `timeout`.
pub fn positions<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    committed: &TopicPartitionList,
    timeout: Duration,
) -> Vec<KafkaResult<Position>> {
    committed
        .elements()
        .iter()
        .map(|e| {
            let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
            Ok(Position {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                committed: match e.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                },
                end: high,
            })
        })
        .collect()
}

/// Moves a partition back to `to`, so that the message at `to` and everything after it are
/// fetched again: first the stored offset, then the group's committed offset (synchronously),
/// and only then the fetch position.
///
/// A seek alone is not enough. librdkafka's seek resets the fetch position but keeps the stored
/// offset (librdkafka 2.12.1 `rdkafka_partition.c` ~1891), and it commits a stored offset only
/// when it is above the committed one (`rdkafka_offset.c` ~596). A revoke or an auto-commit after
/// a bare seek would therefore commit the offset stored before it, past the messages about to be
/// fetched again. Storing goes through `rd_kafka_offsets_store`, which stores the offset as given
/// even when lower (`rdkafka_offset.c` ~676), and an explicit commit sets the committed offset
/// whatever it was (`rdkafka_cgrp.c` ~3841). Blocking.
pub fn rewind<X: ConsumerContext, C: Consumer<X>>(
    consumer: &C,
    topic: &str,
    partition: i32,
    to: i64,
    timeout: Duration,
) -> KafkaResult<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(to))?;
    consumer.store_offsets(&tpl)?;
    consumer.commit(&tpl, CommitMode::Sync)?;
    consumer.seek(topic, partition, Offset::Offset(to), timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_never_negative() {
        let p = |committed, end| Position {
            topic: "t".into(),
            partition: 0,
            committed,
            end,
        };
        assert_eq!(p(10, 25).lag(), 15);
        assert_eq!(p(25, 25).lag(), 0);
        // A committed offset past a truncated log end (e.g. a recreated topic).
        assert_eq!(p(30, 25).lag(), 0);
    }
}
