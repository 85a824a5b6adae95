//! The worker's view of the group checked against Apache Kafka's own: its lag gauge against
//! Kafka's consumer-group tool (`ConsumerGroupCommand`, the broker's own code, not librdkafka's).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{kafka_group_view, PrivateStack, TestEnv, Worker};
use leafsync_loadtest::expected::Expected;

/// `(topic, partition) → lag` as Kafka's consumer-group tool reports it (`None`: `-`, no
/// committed offset).
fn kafka_lag(bootstrap: &str, group: &str) -> BTreeMap<(String, i32), Option<i64>> {
    kafka_group_view(bootstrap, group)
        .into_iter()
        .map(|(k, row)| (k, row.lag))
        .collect()
}

/// `(topic, partition) → lag` from the worker's `leafsync_worker_consumer_lag` gauges.
async fn worker_lag(w: &Worker) -> BTreeMap<(String, i32), i64> {
    let (_, body) = w.get("/metrics").await.expect("worker answers");
    body.lines()
        .filter(|l| l.starts_with("leafsync_worker_consumer_lag{"))
        .map(|l| {
            let label = |name: &str| {
                let start = l.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
                l[start..].split('"').next().unwrap().to_owned()
            };
            let value = l.rsplit(' ').next().unwrap().parse().unwrap();
            ((label("topic"), label("partition").parse().unwrap()), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_lag_gauge_agrees_with_kafkas_consumer_group_tool() {
    let stack = PrivateStack::start();
    let env = TestEnv::on(&stack).await;
    let group = env.config.kafka.group_id.clone();
    let lag_interval = Duration::from_millis(500);
    let w = env.spawn_worker("w1", &[("LEAFSYNC__WORKER__LAG_INTERVAL_MS", "500")]);
    w.wait_ready(Duration::from_secs(30)).await;
    let mut expected = Expected::default();
    let events: Vec<_> = env.generator(51, 300).take(9_000).collect();
    // Phase 1: everything synced and committed, so every partition has a committed offset.
    env.produce(events[..3_000].to_vec(), &mut expected).await;
    let r = env.wait_synced(&expected, Duration::from_secs(60)).await;
    assert!(r.is_exact(), "{}", r.summary());

    // Phase 2: the database goes away, so the worker holds: nothing more is committed while
    // 6,000 more events arrive. The lag is then non-zero and still.
    stack.stack("stop-mongo");
    env.produce(events[3_000..].to_vec(), &mut expected).await;
    // Two lag periods after the last event, both views must show the same still lag.
    tokio::time::sleep(lag_interval * 4).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (theirs, ours) = loop {
        let theirs = kafka_lag(&stack.kafka, &group);
        let ours = worker_lag(&w).await;
        let same =
            theirs.len() == ours.len() && theirs.iter().all(|(k, v)| *v == ours.get(k).copied());
        if same || Instant::now() > deadline {
            break (theirs, ours);
        }
        tokio::time::sleep(lag_interval).await;
    };
    assert_eq!(
        theirs.len(),
        18,
        "every partition has a committed offset: {theirs:?}"
    );
    let total: i64 = theirs.values().map(|v| v.unwrap()).sum();
    assert_eq!(total, 6_000, "the held events are the lag: {theirs:?}");
    let ours_as_theirs: BTreeMap<_, _> = ours.into_iter().map(|(k, v)| (k, Some(v))).collect();
    assert_eq!(ours_as_theirs, theirs, "the worker's gauge is Kafka's lag");

    // And after the outage both fall to zero.
    stack.stack("start-mongo");
    let r = env.wait_synced(&expected, Duration::from_secs(120)).await;
    assert!(r.is_exact(), "{}", r.summary());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let zero = kafka_lag(&stack.kafka, &group)
            .values()
            .all(|v| *v == Some(0))
            && worker_lag(&w).await.values().all(|v| *v == 0);
        if zero {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag never reached 0 in both views"
        );
        tokio::time::sleep(lag_interval).await;
    }
}
