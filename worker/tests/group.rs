//! Several workers in one group, scaling and crashes: no loss, exact final state.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::time::Duration;

use common::TestEnv;
use leafsync_loadtest::expected::Expected;

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_share_the_partitions() {
    let env = TestEnv::new().await;
    let workers: Vec<_> = (0..3)
        .map(|i| env.spawn_worker(&format!("w{i}"), &[]))
        .collect();
    for w in &workers {
        w.wait_ready(Duration::from_secs(30)).await;
    }
    let mut expected = Expected::default();
    env.produce(env.generator(2, 300).take(15_000), &mut expected)
        .await;
    let r = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(r.is_exact(), "{}", r.summary());
    let mut busy = 0;
    let mut sum = 0;
    for w in &workers {
        let n = w.events_total("").await;
        sum += n;
        busy += usize::from(n > 0);
    }
    assert!(busy >= 2, "partitions were spread over the group");
    assert!(sum >= 15_000, "each event processed at least once ({sum})");
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_one_to_three_to_one_during_a_flood() {
    let env = TestEnv::new().await;
    let w0 = env.spawn_worker("w0", &[]);
    w0.wait_ready(Duration::from_secs(30)).await;
    let mut expected = Expected::default();
    let mut events = env
        .generator(3, 300)
        .take(24_000)
        .collect::<Vec<_>>()
        .into_iter();
    let mut next = |n: usize| events.by_ref().take(n).collect::<Vec<_>>();

    env.produce_paced(next(6_000), 3, Duration::from_millis(300), &mut expected)
        .await;
    let mut w1 = env.spawn_worker("w1", &[]);
    let mut w2 = env.spawn_worker("w2", &[]);
    env.produce_paced(next(10_000), 5, Duration::from_millis(400), &mut expected)
        .await;
    w1.signal("-TERM");
    w2.signal("-TERM");
    env.produce_paced(next(8_000), 4, Duration::from_millis(300), &mut expected)
        .await;
    assert!(
        w1.wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success()),
        "{}",
        w1.log_tail()
    );
    assert!(
        w2.wait_exit(Duration::from_secs(15))
            .is_some_and(|s| s.success()),
        "{}",
        w2.log_tail()
    );

    let r = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), w0.log_tail());
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_flood_loses_nothing() {
    let env = TestEnv::new().await;
    let mut expected = Expected::default();
    let events: Vec<_> = env.generator(4, 300).take(20_000).collect();
    let survivor = env.spawn_worker("survivor", &[]);
    survivor.wait_ready(Duration::from_secs(30)).await;
    for (round, chunk) in events.chunks(5_000).enumerate() {
        let mut victim = env.spawn_worker(&format!("victim-{round}"), &[]);
        victim.wait_ready(Duration::from_secs(30)).await;
        env.produce_paced(chunk.to_vec(), 5, Duration::from_millis(300), &mut expected)
            .await;
        // Killed only once it owns partitions and has written: a victim killed before that
        // would prove nothing.
        let wrote = victim.wait_events("", 1, Duration::from_secs(30)).await;
        assert!(
            wrote > 0,
            "victim {round} never wrote\n{}",
            victim.log_tail()
        );
        victim.kill9();
    }
    let r = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), survivor.log_tail());
}
