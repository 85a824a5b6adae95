//! Bad events go to the dead-letter topic with their reason, and never block their partition.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::TestEnv;
use leafsync_core::partitioner::partition_for_key;
use leafsync_core::{ImageEvent, ImageId, ImageType};
use leafsync_loadtest::expected::Expected;
use leafsync_loadtest::generator::Generated;
use leafsync_loadtest::poison::{poison, KINDS};

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_kind_is_dead_lettered_with_headers_and_later_events_still_apply() {
    let env = TestEnv::new().await;
    let id = ImageId::new(42).unwrap();
    let max = env.config.worker.max_event_bytes;
    let poisons: Vec<_> = (0..KINDS.len() as u64)
        .map(|n| poison(n, id, max))
        .collect();
    let raw: Vec<(Vec<u8>, Option<Vec<u8>>)> = poisons
        .iter()
        .map(|(_, k, v)| (k.clone(), v.clone()))
        .collect();
    env.produce_raw(ImageType::Potato, &raw).await;
    // A valid event for the same image after all the bad ones, in the same partition.
    let good = ImageEvent::decode(
        br#"{"id":42,"updated_at":"2025-06-02T00:00:00Z","label":"healthy"}"#,
        max,
    )
    .unwrap();
    let mut expected = Expected::default();
    env.produce(
        vec![Generated {
            image_type: ImageType::Potato,
            event: good,
        }],
        &mut expected,
    )
    .await;

    let w = env.spawn_worker(
        "w1",
        &[("LEAFSYNC__WORKER__INSTANCE_ID", "dlq-test-worker")],
    );
    let r = env.wait_synced(&expected, Duration::from_secs(60)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), w.log_tail());

    let letters = env.dead_letters(KINDS.len(), Duration::from_secs(30));
    assert_eq!(letters.len(), KINDS.len(), "{}", w.log_tail());
    let kinds: HashSet<&str> = letters
        .iter()
        .map(|l| l.headers["leafsync.error.kind"].as_str())
        .collect();
    assert_eq!(kinds, KINDS.iter().copied().collect());
    let topic = &env.config.types.potato.topic;
    for l in &letters {
        let kind = l.headers["leafsync.error.kind"].as_str();
        let (_, key, value) = poisons.iter().find(|(k, _, _)| *k == kind).unwrap();
        assert_eq!(l.key.as_ref(), Some(key), "original key kept ({kind})");
        assert_eq!(&l.value, value, "original value kept ({kind})");
        assert_eq!(&l.headers["leafsync.source.topic"], topic);
        // Producers partition by key (a key_mismatch event is keyed by another id).
        assert_eq!(
            l.headers["leafsync.source.partition"],
            partition_for_key(key, std::num::NonZeroU32::new(6).unwrap()).to_string()
        );
        assert!(l.headers["leafsync.source.offset"].parse::<i64>().is_ok());
        assert!(!l.headers["leafsync.error.message"].is_empty());
        assert_eq!(l.headers["leafsync.worker.id"], "dlq-test-worker");
        assert!(chrono::DateTime::parse_from_rfc3339(&l.headers["leafsync.failed_at"]).is_ok());
    }
    let offsets: HashSet<(&str, &str)> = letters
        .iter()
        .map(|l| {
            (
                l.headers["leafsync.source.partition"].as_str(),
                l.headers["leafsync.source.offset"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        offsets.len(),
        KINDS.len(),
        "each bad event dead-lettered once"
    );
    let n = KINDS.len() as u64;
    assert_eq!(
        w.wait_events("outcome=\"dead_lettered\"", n, Duration::from_secs(10))
            .await,
        n
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_letter_over_the_dead_letter_topics_size_limit_is_sent_cut_and_later_events_apply() {
    // Events up to 1 KB are accepted; the dead-letter topic takes messages of at most 2,000
    // bytes, so a 20 KB event is refused (too_large) and its letter too large for the broker.
    let env = TestEnv::with_overrides(&[("LEAFSYNC__WORKER__MAX_EVENT_BYTES", "1024")]).await;
    env.set_topic_config(
        &env.config.kafka.dead_letter_topic,
        "max.message.bytes",
        "2000",
    )
    .await;
    let id = ImageId::new(77).unwrap();
    let big = format!(
        r#"{{"id":77,"updated_at":"2025-06-01T00:00:00Z","label":"{}"}}"#,
        "x".repeat(20_000)
    );
    env.produce_raw(
        ImageType::Tomato,
        &[(id.key().into_bytes(), Some(big.clone().into_bytes()))],
    )
    .await;
    let good = ImageEvent::decode(
        br#"{"id":77,"updated_at":"2025-06-02T00:00:00Z","label":"healthy"}"#,
        1024,
    )
    .unwrap();
    let mut expected = Expected::default();
    env.produce(
        vec![Generated {
            image_type: ImageType::Tomato,
            event: good,
        }],
        &mut expected,
    )
    .await;

    let w = env.spawn_worker("w1", &[]);
    // The event after the oversized one is written: its partition did not stall.
    let r = env.wait_synced(&expected, Duration::from_secs(60)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), w.log_tail());
    let letters = env.dead_letters(1, Duration::from_secs(30));
    assert_eq!(letters.len(), 1, "{}", w.log_tail());
    let l = &letters[0];
    assert_eq!(l.headers["leafsync.error.kind"], "too_large");
    assert_eq!(l.headers["leafsync.payload.truncated"], "true");
    assert_eq!(
        l.headers["leafsync.payload.original_bytes"],
        big.len().to_string()
    );
    let value = l.value.as_deref().unwrap_or_default();
    assert!(
        !value.is_empty() && value.len() < 2_000,
        "cut to fit: {} bytes",
        value.len()
    );
    assert!(
        big.as_bytes().starts_with(value),
        "a prefix of the original"
    );
    assert_eq!(l.key.as_deref(), Some(id.key().as_bytes()));
    assert_eq!(
        w.events_total("outcome=\"dead_lettered\"").await,
        1,
        "counted once"
    );
}
