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
