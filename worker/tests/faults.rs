//! Server faults, each on a private stack so other tests are undisturbed: a database outage, a
//! broker restart and a broker kill -9 (Apache Kafka, recovering its log from disk), and a
//! SIGTERM mid-flood.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::time::{Duration, Instant};

use common::{PrivateStack, TestEnv};
use leafsync_loadtest::expected::Expected;

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_mid_flood_loses_nothing_and_dead_letters_nothing() {
    let stack = PrivateStack::start();
    let env = TestEnv::on(&stack).await;
    let w = env.spawn_worker("w1", &[]);
    w.wait_ready(Duration::from_secs(30)).await;
    let mut expected = Expected::default();
    let events: Vec<_> = env.generator(5, 300).take(12_000).collect();
    env.produce(events[..4_000].to_vec(), &mut expected).await;
    // The outage hits a worker that is busy with the flood.
    assert!(w.wait_events("", 1, Duration::from_secs(30)).await > 0);

    stack.stack("stop-mongo");
    let down = Instant::now();
    env.produce(events[4_000..8_000].to_vec(), &mut expected)
        .await;
    let mut saw_not_ready = false;
    while down.elapsed() < Duration::from_secs(10) {
        saw_not_ready |= matches!(w.get("/ready").await, Some((503, _)));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stack.stack("start-mongo");
    env.produce(events[8_000..].to_vec(), &mut expected).await;

    let r = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), w.log_tail());
    assert!(saw_not_ready, "/ready reports the outage");
    assert_eq!(w.events_total("outcome=\"dead_lettered\"").await, 0);
    assert!(env.dead_letters(1, Duration::from_secs(2)).is_empty());
    let (_, metrics) = w.get("/metrics").await.unwrap();
    assert!(
        metrics
            .contains("leafsync_worker_retries_total{class=\"transient\",op=\"database_write\"}"),
        "retries are counted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_mid_flood_workers_reconnect_and_lose_nothing() {
    broker_outage_mid_flood(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_kill9_mid_flood_recovers_its_log_and_loses_nothing() {
    broker_outage_mid_flood(true).await;
}

/// Stops the broker while a worker is busy (a clean shutdown, or kill -9: no flush, the broker
/// recovers its log segments and the committed offsets from disk), restarts it, produces the rest,
/// and asserts the exact state.
async fn broker_outage_mid_flood(kill9: bool) {
    let stack = PrivateStack::start();
    let env = TestEnv::on(&stack).await;
    let w = env.spawn_worker("w1", &[]);
    w.wait_ready(Duration::from_secs(30)).await;
    let mut expected = Expected::default();
    let events: Vec<_> = env.generator(6, 200).take(6_000).collect();
    env.produce(events[..3_000].to_vec(), &mut expected).await;
    // Something is committed before the fault, so its survival can be checked.
    let deadline = Instant::now() + Duration::from_secs(30);
    let committed_before = loop {
        let (c, _) = env.committed_and_end();
        if c > 0 || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        committed_before > 0,
        "the worker committed before the fault"
    );
    if kill9 {
        stack.kill9("kafka");
    } else {
        stack.stack("stop-kafka");
    }
    // The outage itself: long enough for the worker's connections to fail and retry.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.stack("start-kafka");
    // What the group had committed survived the restart (offsets live in the broker's log).
    let (committed_after, _) = env.committed_and_end();
    assert!(
        committed_after >= committed_before,
        "committed offsets survive: {committed_before} before, {committed_after} after"
    );
    env.produce(events[3_000..].to_vec(), &mut expected).await;
    let r = env.wait_synced(&expected, Duration::from_secs(180)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), w.log_tail());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_flood_drains_commits_and_exits_cleanly() {
    let env = TestEnv::new().await;
    let mut expected = Expected::default();
    let events: Vec<_> = env.generator(7, 300).take(30_000).collect();
    // A backlog first, so the signal lands while the worker is busy with it.
    env.produce(events[..20_000].to_vec(), &mut expected).await;
    let mut w = env.spawn_worker("w1", &[]);
    w.wait_events("", 2_000, Duration::from_secs(30)).await;
    let t = Instant::now();
    w.signal("-TERM");
    let status = w.wait_exit(Duration::from_secs(15)).expect("exits");
    let took = t.elapsed();
    assert!(
        status.success(),
        "exit 0 after drain: {status:?}\n{}",
        w.log_tail()
    );
    // worker.drain_timeout_ms is 5 s in tests; closing the consumer takes a moment more.
    assert!(took < Duration::from_secs(7), "exited in {took:?}");

    let (committed, end) = env.committed_and_end();
    assert!(
        committed > 0 && committed < end,
        "stopped mid-backlog: committed {committed} of {end}"
    );
    // Exactly what it wrote is committed, partition by partition: its own log against Kafka's
    // view of the group (the broker's consumer-group tool).
    let written = w.last_written();
    let view = common::kafka_group_view(
        &env.config.kafka.bootstrap_servers,
        &env.config.kafka.group_id,
    );
    assert!(!written.is_empty());
    for (p, last) in &written {
        assert_eq!(
            view.get(p).and_then(|r| r.committed),
            Some(last + 1),
            "{p:?}: wrote up to {last}; Kafka's view: {view:?}"
        );
    }
    env.produce(events[20_000..].to_vec(), &mut expected).await;
    let w2 = env.spawn_worker("w2", &[]);
    let r = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(r.is_exact(), "{}", r.summary());
    // The restart settles at least everything left uncommitted. (More only when it rewinds a
    // partition at start, which re-takes what it had already taken: counted, not lost.)
    let left = (30_000 - committed) as u64;
    assert!(w2.wait_events("", left, Duration::from_secs(30)).await >= left);
    println!(
        "sigterm after {took:?}: committed {committed} of {end}; the restart settled {} for {left} left, with {} rewinds",
        w2.events_total("").await,
        w2.metric_total("leafsync_worker_rewinds_total", "").await
    );
}
