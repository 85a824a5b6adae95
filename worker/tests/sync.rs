//! The worker keeps the database equal to the newest state of every image.

mod common;

use std::time::Duration;

use common::TestEnv;
use leafsync_loadtest::expected::Expected;

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
