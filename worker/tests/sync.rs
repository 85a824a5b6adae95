//! The worker keeps the database equal to the newest state of every image.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::time::Duration;

use common::{start_time, TestEnv, Worker};
use leafsync_core::{ImageEvent, ImageType};
use leafsync_loadtest::expected::Expected;
use leafsync_loadtest::generator::{GenConfig, Generated, Generator};

#[tokio::test(flavor = "multi_thread")]
async fn one_worker_syncs_many_updates_over_three_topics() {
    let env = TestEnv::new().await;
    let worker = env.spawn_worker("w1", &[]);
    worker.wait_ready(Duration::from_secs(30)).await;
    let mut expected = Expected::default();
    env.produce(env.generator(1, 400).take(20_000), &mut expected)
        .await;
    let report = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(
        report.is_exact(),
        "{}\n{}",
        report.summary(),
        worker.log_tail()
    );
    assert_eq!(report.matched, expected.images.len() as u64);
    let processed = worker.events_total("").await;
    assert_eq!(processed, 20_000, "every event is counted exactly once");
}

#[tokio::test(flavor = "multi_thread")]
async fn events_larger_than_a_fetch_response_still_arrive_in_order() {
    // The consumer fetches 128 KiB at a time to bound its memory; a valid event several times
    // that size must still come through (a broker returns an oversized first batch whole), and
    // the events around it in its partition must keep their order.
    let env = TestEnv::new().await;
    let max = env.config.worker.max_event_bytes;
    let big_note = "x".repeat(400 * 1024);
    assert!(big_note.len() < max && big_note.len() > 128 * 1024);
    let event = |ts: &str, extra: &str| {
        let json = format!(r#"{{"id":77,"updated_at":"{ts}","label":"v","note":"{extra}"}}"#);
        Generated {
            image_type: ImageType::Tomato,
            event: ImageEvent::decode(json.as_bytes(), max).unwrap(),
        }
    };
    let mut expected = Expected::default();
    let mut events = vec![event("2025-01-01T00:00:01Z", "small")];
    events.push(event("2025-01-01T00:00:02Z", &big_note));
    events.extend(env.generator(3, 50).take(2_000));
    events.push(event("2025-01-01T00:00:03Z", &big_note[..300 * 1024]));
    env.produce(events, &mut expected).await;

    let worker = env.spawn_worker("w1", &[]);
    let report = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(
        report.is_exact(),
        "{}\n{}",
        report.summary(),
        worker.log_tail()
    );
    assert_eq!(worker.events_total("").await, 2_003);
}

/// Write commands so far whose outcomes were learnt `way` ("reply" or "read").
async fn commands(worker: &Worker, way: &str) -> u64 {
    let filter = format!("outcomes=\"{way}\"");
    worker
        .metric_total("leafsync_worker_write_command_docs_count", &filter)
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_history_is_written_reading_first_and_new_events_from_the_reply() {
    // `worker.outcomes = "auto"` (the default): a live stream learns outcomes from the write's
    // reply; a history sent again (what `leafsync-worker replay` causes) is all replays and stale
    // events, cheaper with a read first; and back. Whichever way, nothing new is written by the
    // replay and the state stays exact.
    let env = TestEnv::new().await;
    let worker = env.spawn_worker("w1", &[]);
    worker.wait_ready(Duration::from_secs(30)).await;
    let mut expected = Expected::default();
    let history: Vec<Generated> = env.generator(5, 300).take(6_000).collect();
    env.produce(history.clone(), &mut expected).await;
    let report = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(report.is_exact(), "{}", report.summary());
    assert_eq!(
        worker.wait_events("", 6_000, Duration::from_secs(30)).await,
        6_000
    );
    assert!(
        commands(&worker, "reply").await > 0,
        "a live stream asks the reply"
    );

    let reads_before = commands(&worker, "read").await;
    let written_before = worker.events_total("outcome=\"inserted\"").await
        + worker.events_total("outcome=\"updated\"").await;
    env.produce(history, &mut expected).await;
    assert_eq!(
        worker
            .wait_events("", 12_000, Duration::from_secs(120))
            .await,
        12_000
    );
    let written_after = worker.events_total("outcome=\"inserted\"").await
        + worker.events_total("outcome=\"updated\"").await;
    assert_eq!(written_after, written_before, "a replay writes nothing new");
    assert!(
        commands(&worker, "read").await > reads_before,
        "a replay switches to reading first\n{}",
        worker.log_tail()
    );

    let replies_before = commands(&worker, "reply").await;
    let newer = Generator::new(GenConfig {
        seed: 6,
        ids_per_type: 300,
        delete_ratio: 0.1,
        start: start_time() + chrono::TimeDelta::days(1),
    });
    env.produce(newer.take(6_000), &mut expected).await;
    let report = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(report.is_exact(), "{}", report.summary());
    assert!(
        commands(&worker, "reply").await > replies_before,
        "new events switch back to the reply"
    );
}
