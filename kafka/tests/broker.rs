//! One event with headers through the real (stand-in) broker and a consumer group.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use leafsync_core::partitioner::partition_for;
use leafsync_core::{Config, ImageId};
use leafsync_kafka::admin::{delete_topics, ensure_topics, partition_count};
use leafsync_kafka::ClientConfigExt;
use leafsync_testkit::{unique, Cleanup};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test]
async fn produce_and_consume_one_event_with_headers_in_a_group() {
    let config = Config::load(None).unwrap();
    let topic = unique("kafka");
    let _cleanup = {
        let (kafka, topic) = (config.kafka.clone(), topic.clone());
        Cleanup::new(format!("topic {topic}"), move || async move {
            delete_topics(&kafka, &[&topic])
                .await
                .map_err(|e| e.to_string())
        })
    };
    ensure_topics(&config.kafka, &[&topic], 6)
        .await
        .expect("broker up (scripts/stack up)");
    ensure_topics(&config.kafka, &[&topic], 6)
        .await
        .expect("creating twice is fine");
    assert_eq!(
        partition_count(&config.kafka, &topic, Duration::from_secs(10)).unwrap(),
        6
    );

    let id = ImageId::new(2153).unwrap();
    let partition = partition_for(id, std::num::NonZeroU32::new(6).unwrap());
    let producer: FutureProducer = config.kafka.client_config().create().unwrap();
    let value = br#"{"id":2153,"updated_at":"2025-12-10T20:21:54.123Z"}"#;
    let headers = OwnedHeaders::new().insert(Header {
        key: "traceparent",
        value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    });
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key(&id.key())
                .payload(&value[..])
                .partition(partition)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(delivery.partition, partition);

    let group = unique("core-group");
    let consumer: StreamConsumer = config
        .kafka
        .client_config_with(&[("group.id", &group), ("auto.offset.reset", "earliest")])
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a message")
        .unwrap();
    assert_eq!(m.key(), Some(b"2153".as_slice()));
    assert_eq!(m.payload(), Some(&value[..]));
    assert_eq!(m.partition(), partition);
    let h = m
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "traceparent")
        .unwrap();
    assert_eq!(
        h.value,
        Some(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".as_slice())
    );
    let sc = leafsync_kafka::trace_context::extract(m.headers()).unwrap();
    assert_eq!(
        sc.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    let event = leafsync_core::ImageEvent::decode_message(m.key(), m.payload(), 1024).unwrap();
    assert_eq!(event.id, id);
    consumer
        .commit_message(&m, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
}

/// Topics are listed by the broker as soon as `ensure_topics` returns, so a producer or a
/// consumer started right after finds them (CreateTopics answers before every broker knows).
#[tokio::test]
async fn new_topics_are_in_the_metadata_when_ensure_topics_returns() {
    let config = Config::load(None).unwrap();
    let topics: Vec<String> = (0..30).map(|i| unique(&format!("fresh{i}"))).collect();
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    let _cleanup = {
        let (kafka, topics) = (config.kafka.clone(), topics.clone());
        Cleanup::new("fresh topics", move || async move {
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            delete_topics(&kafka, &refs)
                .await
                .map_err(|e| e.to_string())
        })
    };
    ensure_topics(&config.kafka, &refs, 6)
        .await
        .expect("broker up (scripts/stack up)");
    // One metadata request for all, at once: none may be missing.
    let consumer: rdkafka::consumer::BaseConsumer = config.kafka.client_config().create().unwrap();
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    let missing: Vec<&String> = topics
        .iter()
        .filter(|t| {
            !md.topics()
                .iter()
                .any(|m| &m.name() == t && m.error().is_none() && m.partitions().len() == 6)
        })
        .collect();
    assert!(missing.is_empty(), "not yet in the metadata: {missing:?}");
}
