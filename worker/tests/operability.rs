//! What an operator relies on: replay, projection, no secrets in logs, metrics, traces.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::TestEnv;
use leafsync_core::ImageId;
use leafsync_kafka::ClientConfigExt as _;
use leafsync_loadtest::expected::Expected;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn worker_cmd(env: &TestEnv, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_leafsync-worker"))
        .args(args)
        .env("LEAFSYNC__KAFKA__GROUP_ID", &env.config.kafka.group_id)
        .env(
            "LEAFSYNC__TYPES__POTATO__TOPIC",
            &env.config.types.potato.topic,
        )
        .env(
            "LEAFSYNC__TYPES__TOMATO__TOPIC",
            &env.config.types.tomato.topic,
        )
        .env(
            "LEAFSYNC__TYPES__PEPPER__TOPIC",
            &env.config.types.pepper.topic,
        )
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_is_refused_while_workers_run_and_converges_after() {
    let env = TestEnv::new().await;
    let mut w = env.spawn_worker("w1", &[]);
    let mut expected = Expected::default();
    env.produce(env.generator(11, 100).take(3_000), &mut expected)
        .await;
    assert!(env
        .wait_synced(&expected, Duration::from_secs(60))
        .await
        .is_exact());
    tokio::time::sleep(Duration::from_secs(2)).await; // let the periodic commit happen

    let out = worker_cmd(&env, &["replay", "--to-earliest"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("active member"), "{err}");

    w.signal("-TERM");
    assert!(w
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    let (committed, end) = env.committed_and_end();
    assert_eq!(committed, end);

    let out = worker_cmd(&env, &["replay", "--to-earliest", "--dry-run"]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{plan}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plan.contains("3000 events to re-read (dry run: nothing changed)"),
        "{plan}"
    );
    assert_eq!(
        env.committed_and_end().0,
        committed,
        "dry run changes nothing"
    );

    let out = worker_cmd(&env, &["replay", "--to-datetime", "2100-01-01T00:00:00Z"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 events to re-read"));

    let out = worker_cmd(&env, &["replay", "--to-earliest", "--topic", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not one of the configured image topics"));

    let out = worker_cmd(&env, &["replay", "--to-earliest"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.committed_and_end().0, 0);

    let w2 = env.spawn_worker("w2", &[]);
    assert_eq!(
        w2.wait_events("", 3_000, Duration::from_secs(60)).await,
        3_000,
        "{}",
        w2.log_tail()
    );
    assert_eq!(
        w2.events_total("outcome=\"inserted\"").await
            + w2.events_total("outcome=\"updated\"").await,
        0
    );
    assert!(
        env.wait_synced(&expected, Duration::from_secs(5))
            .await
            .is_exact(),
        "replay converged to the same state"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn projection_keeps_only_the_allowed_fields() {
    let env =
        TestEnv::with_overrides(&[("LEAFSYNC__TYPES__POTATO__FIELDS", "[name, label]")]).await;
    let w = env.spawn_worker("w1", &[]);
    let mut expected = Expected::default();
    env.produce(env.generator(12, 50).take(1_000), &mut expected)
        .await;
    let r = env.wait_synced(&expected, Duration::from_secs(60)).await;
    assert!(r.is_exact(), "{}\n{}", r.summary(), w.log_tail());
    let (_, id) = expected
        .images
        .keys()
        .find(|(t, _)| *t == leafsync_core::ImageType::Potato)
        .unwrap();
    let d = env
        .store
        .get(
            &env.config.types.potato.collection,
            ImageId::new(*id).unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let mut keys: Vec<&str> = d.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["deleted", "id", "label", "name", "updated_at"]);
    let (_, tomato_id) = expected
        .images
        .keys()
        .find(|(t, _)| *t == leafsync_core::ImageType::Tomato)
        .expect("the generator produced tomato images");
    let t = env
        .store
        .get(
            &env.config.types.tomato.collection,
            ImageId::new(*tomato_id).unwrap(),
        )
        .await
        .unwrap()
        .expect("a produced tomato image is stored");
    assert!(t.contains_key("url"), "other types keep every field");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_the_logs() {
    let env = TestEnv::new().await;
    let uri = format!(
        "{}&authSource=admin",
        env.config
            .mongo
            .uri
            .expose()
            .replace("mongodb://", "mongodb://leaf:Sup3rS3cretPw@")
    );
    let mut w = env.spawn_worker(
        "w1",
        &[
            ("LEAFSYNC__MONGO__URI", &uri),
            ("LEAFSYNC__MONGO__STARTUP_TIMEOUT_MS", "2000"),
            (
                "LEAFSYNC__KAFKA__PROPERTIES__SASL_PASSWORD",
                "KafkaS3cretPw",
            ),
            ("RUST_LOG", "debug"),
        ],
    );
    // Whether the server accepts the credentials or not, the worker logs about them.
    w.wait_exit(Duration::from_secs(8));
    let out = Command::new(env!("CARGO_BIN_EXE_leafsync-worker"))
        .arg("print-config")
        .env("LEAFSYNC__MONGO__URI", &uri)
        .env(
            "LEAFSYNC__KAFKA__PROPERTIES__SASL_PASSWORD",
            "KafkaS3cretPw",
        )
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    // Where the values are shown, they are shown masked: a test that never saw them would pass
    // the checks below for nothing.
    assert!(printed.contains("mongodb://leaf:****@"), "{printed}");
    // (The env var's key as given: `_` becomes `.` only when the Kafka client is built.)
    assert!(printed.contains(r#"sasl_password = "****""#), "{printed}");
    assert!(
        w.log_text().contains("mongodb://leaf:****@"),
        "the worker logs which server it connects to, masked\n{}",
        w.log_text()
    );
    for text in [w.log_text(), printed.into_owned()] {
        assert!(!text.is_empty());
        assert!(
            !text.contains("Sup3rS3cretPw"),
            "Mongo password leaked:\n{text}"
        );
        assert!(
            !text.contains("KafkaS3cretPw"),
            "Kafka password leaked:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_expose_outcomes_lag_latency_and_misrouted_events() {
    let env = TestEnv::new().await;
    let w = env.spawn_worker("w1", &[("LEAFSYNC__WORKER__LAG_INTERVAL_MS", "200")]);
    w.wait_ready(Duration::from_secs(30)).await;
    let mut expected = Expected::default();
    env.produce(env.generator(13, 100).take(2_000), &mut expected)
        .await;
    // Key 42 belongs to partition 2 of 6; send it to partition 0.
    let p: FutureProducer = env.config.kafka.client_config().create().unwrap();
    let v = br#"{"id":42,"updated_at":"2030-01-01T00:00:00Z"}"#;
    p.send(
        FutureRecord::to(&env.config.types.pepper.topic)
            .key("42")
            .payload(&v[..])
            .partition(0),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    // Misrouted but valid: it is applied like any other event.
    let misrouted = leafsync_core::ImageEvent::decode(v, 1024).unwrap();
    expected.apply(leafsync_core::ImageType::Pepper, &misrouted);
    let r = env.wait_synced(&expected, Duration::from_secs(60)).await;
    assert!(r.is_exact(), "{}", r.summary());
    // Written is not yet committed: wait until the lag gauges (every 200 ms) read zero.
    let lag_sum = |m: &str| -> Option<i64> {
        let lags: Vec<i64> = m
            .lines()
            .filter(|l| l.starts_with("leafsync_worker_consumer_lag{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .collect();
        (lags.len() == 18).then(|| lags.iter().sum())
    };
    let m = w
        .wait_metrics(Duration::from_secs(30), |m| lag_sum(m) == Some(0))
        .await;
    let pepper = &env.config.types.pepper.topic;
    for needle in [
        "leafsync_worker_events_total{outcome=\"inserted\"",
        "leafsync_worker_event_bytes_total{",
        "leafsync_worker_batch_size_bucket{",
        "leafsync_worker_batch_write_seconds_bucket{",
        "leafsync_worker_e2e_latency_seconds_bucket{",
        "leafsync_worker_consumer_lag{partition=\"0\"",
        "leafsync_worker_assigned_partitions 18",
        "leafsync_worker_rebalances_total{kind=\"assign\"}",
        &format!("leafsync_worker_misrouted_total{{topic=\"{pepper}\"}} 1"),
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    assert_eq!(
        lag_sum(&m),
        Some(0),
        "caught up: high watermark − committed = 0 on all 18 partitions"
    );
    assert_eq!(w.get("/live").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_traced_event_yields_a_linked_batch_span_with_a_db_child() {
    let env = TestEnv::new().await;
    let (addr, spans) = leafsync_testkit::otlp_receiver().await;
    let endpoint = format!("http://{addr}");
    let w = env.spawn_worker("w1", &[("LEAFSYNC__TELEMETRY__OTLP_ENDPOINT", &endpoint)]);
    w.wait_ready(Duration::from_secs(30)).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let p: FutureProducer = env.config.kafka.client_config().create().unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: "traceparent",
        value: Some(format!("00-{trace_id}-00f067aa0ba902b7-01").as_bytes()),
    });
    let v = br#"{"id":7,"updated_at":"2030-01-01T00:00:00Z"}"#;
    let partition = leafsync_core::partitioner::partition_for(
        ImageId::new(7).unwrap(),
        std::num::NonZeroU32::new(6).unwrap(),
    );
    p.send(
        FutureRecord::to(&env.config.types.potato.topic)
            .key("7")
            .payload(&v[..])
            .partition(partition)
            .headers(headers),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let want: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        {
            let all = spans.lock().unwrap();
            if let Some(batch) = all
                .iter()
                .find(|s| s.links.iter().any(|l| l.trace_id == want))
            {
                assert!(batch.name.starts_with("process "), "{}", batch.name);
                let attrs: Vec<&str> = batch.attributes.iter().map(|a| a.key.as_str()).collect();
                for a in [
                    "messaging.system",
                    "messaging.destination.name",
                    "messaging.destination.partition.id",
                    "messaging.batch.message_count",
                    "leafsync.inserted",
                ] {
                    assert!(attrs.contains(&a), "{a} missing in {attrs:?}");
                }
                let child = all
                    .iter()
                    .find(|s| s.parent_span_id == batch.span_id && s.name.starts_with("update "));
                assert!(
                    child.is_some(),
                    "DB span under the batch span; spans: {:?}",
                    all.iter().map(|s| &s.name).collect::<Vec<_>>()
                );
                // The database call belongs to the batch's own trace (the producers' traces
                // are linked, not parents).
                assert_eq!(child.unwrap().trace_id, batch.trace_id);
                assert!(batch.links.iter().any(|l| l.trace_id == want));
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no linked batch span exported\n{}",
            w.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collection_of_an_older_layout_stops_the_worker_and_the_backfill_naming_it() {
    // An older leafsync kept its own unique index on `id` beside an ObjectId `_id`; this
    // version's writes, keyed by `_id`, would miss every such document and call it stale.
    let env = TestEnv::new().await;
    let collection = env.config.types.tomato.collection.clone();
    leafsync_testkit::add_legacy_id_index(
        &env.store.collection(&collection),
        leafsync_core::store::LEGACY_ID_INDEX,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tomato.jsonl");
    std::fs::write(&file, "").unwrap();
    let spec = format!("tomato={}", file.display());
    let cause = format!("collection `{collection}` has the index `id_unique`");
    let mut worker = env.spawn_worker("legacy", &[]);
    let mut backfill = env.spawn_backfill("legacy-backfill", &["--from-jsonl", &spec], &[]);
    for (what, p) in [("worker", &mut worker.process), ("backfill", &mut backfill)] {
        let status = p.wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| !s.success()),
            "{what}: {status:?}\n{}",
            p.log_tail()
        );
        assert!(p.log_text().contains(&cause), "{what}:\n{}", p.log_tail());
    }
    assert_eq!(
        env.store.count(&collection, true).await.unwrap(),
        0,
        "nothing written"
    );
}
