//! Offsets against the real broker: a rewind moves the stored and committed offsets back, so a
//! commit that follows it (a revoke's, an auto-commit's) cannot pass the messages fetched again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use leafsync_core::Config;
use leafsync_kafka::admin::{delete_topics, ensure_topics};
use leafsync_kafka::offsets::rewind;
use leafsync_kafka::ClientConfigExt;
use leafsync_testkit::{unique, Cleanup};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// The group's committed offset of `topic`/0, read by a separate client.
fn committed(config: &Config, group: &str, topic: &str) -> Offset {
    let c: BaseConsumer = config
        .kafka
        .client_config_with(&[("group.id", group)])
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let got = c.committed_offsets(tpl, TIMEOUT).unwrap();
    got.find_partition(topic, 0).unwrap().offset()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rewind_moves_the_committed_offset_back_before_a_revoke_commits() {
    let config = Config::load(None).unwrap();
    let topic = unique("rewind");
    let group = unique("rewind-group");
    let _cleanup = {
        let (kafka, topic) = (config.kafka.clone(), topic.clone());
        Cleanup::new(format!("topic {topic}"), move || async move {
            delete_topics(&kafka, &[&topic])
                .await
                .map_err(|e| e.to_string())
        })
    };
    ensure_topics(&config.kafka, &[&topic], 1)
        .await
        .expect("broker up (scripts/stack up)");
    let producer: FutureProducer = config.kafka.client_config().create().unwrap();
    for i in 0..60 {
        let v = i.to_string();
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(&v).partition(0),
                TIMEOUT,
            )
            .await
            .unwrap();
    }

    // The worker's settings: offsets stored by the application, committed by librdkafka.
    let consumer: BaseConsumer = config
        .kafka
        .client_config_with(&[
            ("group.id", &group),
            ("enable.auto.offset.store", "false"),
            ("enable.auto.commit", "false"),
        ])
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    // Offsets 0..=50 fetched and "written"; 51 stored and committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = -1;
    while last < 50 {
        assert!(Instant::now() < deadline, "fetched up to {last} only");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            last = m.unwrap().offset();
        }
    }
    consumer.store_offset(&topic, 0, 50).unwrap();
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    assert_eq!(committed(&config, &group, &topic), Offset::Offset(51));

    // A late message at offset 10: the partition is rewound to it.
    rewind(&consumer, &topic, 0, 10, TIMEOUT).unwrap();

    // The revoke's commit, right after: it must not put 51 back.
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => panic!("commit: {e}"),
    }
    assert_eq!(
        committed(&config, &group, &topic),
        Offset::Offset(10),
        "the next owner starts at the rewound message"
    );
    // And the fetch position moved too: offset 10 comes next.
    let deadline = Instant::now() + Duration::from_secs(30);
    let next = loop {
        assert!(
            Instant::now() < deadline,
            "nothing fetched after the rewind"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            break m.unwrap().offset();
        }
    };
    assert_eq!(next, 10);
}
