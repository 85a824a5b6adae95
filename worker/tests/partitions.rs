//! Network partitions, drilled in network namespaces (testkit's `NetNs`): one worker in a
//! namespace of its own reaches the broker and the database over a veth, another worker runs
//! outside, and a steady load runs throughout. Each drill cuts one path (a blackhole route in the
//! namespace: the peer goes silent) or slows both, and ends with the exact state: nothing lost,
//! nothing stale. They need root for `ip netns`; anywhere else each one skips, saying why.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NetNs, PrivateStack, TestEnv, Worker, PARTITIONS};
use leafsync_core::config::Config;
use leafsync_kafka::ClientConfigExt as _;
use leafsync_loadtest::expected::Expected;
use leafsync_loadtest::producer::EventProducer;
use leafsync_testkit::{Process, Server};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// One drill at a time: each runs a broker and a database of its own, and its timings (session
/// timeouts) should not compete with another drill's for the machine's cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Events per second of the steady load.
const RATE: usize = 300;
/// Partitions of the three topics together.
const ALL_PARTITIONS: i64 = 3 * PARTITIONS as i64;
const ASSIGNED: &str = "leafsync_worker_assigned_partitions";
const DB_RETRIES: &str = "leafsync_worker_retries_total";

/// A namespace, a stack listening on its host end, and a test env on that stack (dropped in
/// this order: the env's clean-up needs the stack, the stack's addresses the namespace).
struct Drill {
    env: TestEnv,
    _stack: PrivateStack,
    _slow: Option<Process>,
    ns: NetNs,
}

impl Drill {
    /// `None` (and a line saying why) where network namespaces are not permitted. `slow`
    /// (`(delay_ms, loss)`), when given, makes the link slow and lossy first, and where that
    /// cannot be done the drill also skips.
    async fn setup(drill: &str, slow: Option<(u32, f64)>) -> Option<Self> {
        let ns = match NetNs::create() {
            Ok(ns) => ns,
            Err(why) => {
                println!("SKIPPED {drill}: network namespaces are not permitted here: {why}");
                return None;
            }
        };
        let slow = match slow.map(|(delay, loss)| ns.slow(delay, loss)).transpose() {
            Ok(slow) => slow,
            Err(why) => {
                println!("SKIPPED {drill}: a slow, lossy link cannot be made here: {why}");
                return None;
            }
        };
        let stack = PrivateStack::start_at(ns.kafka_ip, ns.mongo_ip);
        let env = TestEnv::on(&stack).await;
        Some(Self {
            env,
            _stack: stack,
            _slow: slow,
            ns,
        })
    }
}

/// Produces [`RATE`] events/s in 100 ms ticks until `stop`; returns what the database must then
/// hold. Few ids, so each is updated several times a second: a late write of an old version is
/// then stale, not merely unchanged.
async fn steady_load(env: &TestEnv, seed: u64, stop: &AtomicBool) -> Expected {
    let mut expected = Expected::default();
    let mut p = EventProducer::new(&env.config).expect("producer");
    let mut events = env.generator(seed, 30);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        for g in events.by_ref().take(RATE / 10) {
            let topic = &env.config.types.get(g.image_type).topic;
            let value = g.event.to_json().to_string();
            p.send(
                topic,
                g.event.id.key().as_bytes(),
                Some(value.as_bytes()),
                false,
            )
            .await
            .unwrap();
            expected.apply(g.image_type, &g.event);
        }
    }
    p.flush().await;
    assert_eq!(p.failed, 0, "produce failures");
    expected
}

/// Polls `probe` every 100 ms until it holds or `timeout` passes; panics then, with `what`.
async fn until<F, Fut>(what: &str, timeout: Duration, probe: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while !probe().await {
        assert!(t.elapsed() < timeout, "not within {timeout:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.elapsed()
}

/// The group's committed offset of every partition, sampled every 250 ms on a thread of its own
/// (Kafka's OffsetFetch, through the coordinator): every time one moved backwards is a commit
/// the group should have refused.
struct OffsetWatch {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Watched>,
}

#[derive(Debug, Default)]
struct Watched {
    samples: u32,
    last: BTreeMap<(String, i32), i64>,
    backwards: Vec<String>,
}

impl OffsetWatch {
    fn start(config: &Config) -> Self {
        let consumer: BaseConsumer = config
            .kafka
            .client_config_with(&[
                ("group.id", &config.kafka.group_id),
                ("enable.auto.commit", "false"),
            ])
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for t in config.types.topics() {
            for p in 0..PARTITIONS {
                tpl.add_partition(&t, p);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut w = Watched::default();
            while !s.load(Ordering::Relaxed) {
                // A sample the coordinator could not answer (it may be moving the group) is
                // skipped; the next one sees the same offsets.
                let Ok(list) = consumer.committed_offsets(tpl.clone(), Duration::from_secs(5))
                else {
                    continue;
                };
                w.samples += 1;
                for e in list.elements() {
                    let Offset::Offset(o) = e.offset() else {
                        continue;
                    };
                    let key = (e.topic().to_owned(), e.partition());
                    match w.last.insert(key.clone(), o) {
                        Some(prev) if o < prev => {
                            w.backwards.push(format!("{key:?}: {prev} → {o}"));
                        }
                        _ => {}
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            w
        });
        Self { stop, thread }
    }

    fn finish(self) -> Watched {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The end of every drill: the load stopped, the database holds exactly what was produced, and no
/// committed offset ever went back.
async fn assert_exact(d: &Drill, expected: &Expected, watch: OffsetWatch, workers: &[&Worker]) {
    let r = d.env.wait_synced(expected, Duration::from_secs(180)).await;
    let logs: Vec<String> = workers.iter().map(|w| w.log_tail()).collect();
    assert!(r.is_exact(), "{}\n{}", r.summary(), logs.join("\n---\n"));
    let w = watch.finish();
    assert!(
        w.samples >= 10 && w.last.len() as i64 == ALL_PARTITIONS,
        "the offset watch saw the group: {} samples, {} partitions",
        w.samples,
        w.last.len()
    );
    assert!(
        w.backwards.is_empty(),
        "committed offsets moved backwards: {:?}",
        w.backwards
    );
}

async fn assigned(w: &Worker) -> i64 {
    w.gauge(ASSIGNED).await
}

/// Mean seconds of a worker's batch writes so far.
async fn mean_write(w: &Worker) -> f64 {
    const H: &str = "leafsync_worker_batch_write_seconds";
    w.metric_sum(&format!("{H}_sum"), "").await / w.metric_sum(&format!("{H}_count"), "").await
}

/// (a) The worker in the namespace loses the broker (not the database) for longer than its
/// session. Its partitions move to the other worker. A batch it still holds is written after the
/// other worker's newer versions, and refused as stale; it does not commit, and the group's
/// offsets never go back. When the network heals it rejoins and takes partitions again.
///
/// To hold a batch across the cut, the database is cut first (the batch waits on its write), then
/// the broker; the database comes back once the other worker has taken over and written newer
/// versions, while the broker stays cut.
#[tokio::test(flavor = "multi_thread")]
async fn cut_from_the_broker_its_partitions_move_and_its_late_batch_is_refused_as_stale() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(d) = Drill::setup("broker cut", None).await else {
        return;
    };
    // A long session and a drain just below it (the config requires drain < session): the held
    // batch must outlive the revoke until the database returns.
    let inside = d.env.spawn_worker_in(
        &d.ns,
        "inside",
        &[
            ("LEAFSYNC__KAFKA__SESSION_TIMEOUT_MS", "20000"),
            ("LEAFSYNC__WORKER__DRAIN_TIMEOUT_MS", "19000"),
        ],
    );
    inside.wait_ready(Duration::from_secs(60)).await;
    let outside = d.env.spawn_worker("outside", &[]);
    outside.wait_ready(Duration::from_secs(60)).await;
    let watch = OffsetWatch::start(&d.env.config);
    let stop = AtomicBool::new(false);

    let drill = async {
        until(
            "both own partitions and write",
            Duration::from_secs(60),
            || async {
                assigned(&inside).await > 0
                    && assigned(&outside).await > 0
                    && inside.events_total("").await > 0
            },
        )
        .await;
        // 1. The database first: the batch in hand waits on its write.
        let retries = inside.metric_total(DB_RETRIES, "database_write").await;
        d.ns.cut(Server::Mongo);
        until(
            "the inside worker retries a held batch",
            Duration::from_secs(60),
            || async { inside.metric_total(DB_RETRIES, "database_write").await > retries },
        )
        .await;
        // 2. Then the broker, for longer than its session.
        d.ns.cut(Server::Kafka);
        let moved = until(
            "the outside worker owns every partition",
            Duration::from_secs(90),
            || async { assigned(&outside).await == ALL_PARTITIONS },
        )
        .await;
        // The outside worker writes newer versions of the inside worker's events.
        let written = outside.events_total("").await;
        until(
            "the outside worker writes the moved partitions",
            Duration::from_secs(60),
            || async { outside.events_total("").await >= written + RATE as u64 },
        )
        .await;
        // 3. The database returns, the broker stays cut: the held batch is written now, and
        // refused as stale.
        let stale = inside.events_total("outcome=\"stale\"").await;
        d.ns.heal(Server::Mongo);
        until(
            "the held batch is refused as stale",
            Duration::from_secs(60),
            || async { inside.events_total("outcome=\"stale\"").await > stale },
        )
        .await;
        // It found out on its own that it lost its partitions: librdkafka's session check
        // (rdkafka_cgrp.c:5985, "revoking assignment and rejoining group", lost = true), and
        // the revoke of a lost assignment does not commit (consumer.rs, pre_rebalance).
        until(
            "the inside worker revokes its lost partitions",
            Duration::from_secs(60),
            || async {
                inside
                    .log_text()
                    .contains("Consumer group session timed out")
                    && assigned(&inside).await == 0
            },
        )
        .await;
        // 4. The network heals: it rejoins and takes partitions again.
        d.ns.heal(Server::Kafka);
        let back = until(
            "the inside worker owns partitions again",
            Duration::from_secs(90),
            || async { assigned(&inside).await > 0 },
        )
        .await;
        let n = inside.events_total("").await;
        until(
            "the inside worker writes again",
            Duration::from_secs(60),
            || async { inside.events_total("").await > n },
        )
        .await;
        println!(
            "broker cut: partitions moved {moved:?} after the cut; rejoined {back:?} after the heal; {} stale refused inside",
            inside.events_total("outcome=\"stale\"").await
        );
        stop.store(true, Ordering::Relaxed);
    };
    let (expected, ()) = tokio::join!(steady_load(&d.env, 21, &stop), drill);
    assert_exact(&d, &expected, watch, &[&inside, &outside]).await;
    assert_eq!(inside.events_total("outcome=\"dead_lettered\"").await, 0);
}

/// (b) The worker in the namespace loses the database (not the broker). It holds: its partitions
/// stay its own past the session timeout, `/ready` answers 503 while `/live` stays 200, nothing
/// is dead-lettered; when the database returns it resumes.
#[tokio::test(flavor = "multi_thread")]
async fn cut_from_the_database_it_holds_then_resumes() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(d) = Drill::setup("database cut", None).await else {
        return;
    };
    let inside = d.env.spawn_worker_in(&d.ns, "inside", &[]);
    inside.wait_ready(Duration::from_secs(60)).await;
    let outside = d.env.spawn_worker("outside", &[]);
    outside.wait_ready(Duration::from_secs(60)).await;
    let watch = OffsetWatch::start(&d.env.config);
    let stop = AtomicBool::new(false);

    let drill = async {
        until(
            "both own partitions and write",
            Duration::from_secs(60),
            || async {
                assigned(&inside).await > 0
                    && assigned(&outside).await > 0
                    && inside.events_total("").await > 0
            },
        )
        .await;
        let owned = assigned(&inside).await;
        d.ns.cut(Server::Mongo);
        let unready = until("/ready answers 503", Duration::from_secs(60), || async {
            matches!(inside.get("/ready").await, Some((503, _)))
        })
        .await;
        // Held for 15 s, past the session timeout (10 s in tests): membership does not depend on
        // the database, and a worker that cannot write must not give its partitions away.
        let held = Instant::now();
        while held.elapsed() < Duration::from_secs(15) {
            assert_eq!(inside.get("/live").await.map(|(s, _)| s), Some(200));
            assert_eq!(assigned(&inside).await, owned, "it keeps its partitions");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        assert!(matches!(inside.get("/ready").await, Some((503, _))));
        let n = inside.events_total("").await;
        d.ns.heal(Server::Mongo);
        let resumed = until("it writes again", Duration::from_secs(120), || async {
            inside.events_total("").await > n
        })
        .await;
        let ready = until("/ready answers 200", Duration::from_secs(30), || async {
            matches!(inside.get("/ready").await, Some((200, _)))
        })
        .await;
        println!(
            "database cut: /ready 503 after {unready:?}; writing again {resumed:?} after the heal, /ready 200 {ready:?} later"
        );
        stop.store(true, Ordering::Relaxed);
    };
    let (expected, ()) = tokio::join!(steady_load(&d.env, 22, &stop), drill);
    assert_exact(&d, &expected, watch, &[&inside, &outside]).await;
    assert_eq!(inside.events_total("outcome=\"dead_lettered\"").await, 0);
    assert!(d.env.dead_letters(1, Duration::from_secs(2)).is_empty());
}

/// (c) A slow, lossy network (200 ms delay and 1% loss each way, as `tc netem delay 200ms loss 1%`
/// on both ends; see `NetNs::slow`) between the namespace and both servers: the worker inside
/// joins, keeps its partitions and keeps writing, and the state is exact.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_lossy_network_keeps_it_writing_and_exact() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(d) = Drill::setup("slow, lossy network", Some((200, 0.01))).await else {
        return;
    };
    let inside = d.env.spawn_worker_in(&d.ns, "inside", &[]);
    inside.wait_ready(Duration::from_secs(120)).await;
    let outside = d.env.spawn_worker("outside", &[]);
    outside.wait_ready(Duration::from_secs(60)).await;
    let watch = OffsetWatch::start(&d.env.config);
    let stop = AtomicBool::new(false);

    let drill = async {
        until("both own partitions", Duration::from_secs(120), || async {
            assigned(&inside).await > 0 && assigned(&outside).await > 0
        })
        .await;
        let n = inside.events_total("").await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(assigned(&inside).await > 0, "it keeps partitions");
        let wrote = inside.events_total("").await - n;
        assert!(wrote > 0, "it keeps writing");
        // The link is slow indeed: a write takes at least the round trip (2 × 200 ms) inside,
        // and far less outside.
        let (slow, fast) = (mean_write(&inside).await, mean_write(&outside).await);
        assert!(
            slow >= 0.4 && fast < 0.2,
            "mean batch write: {slow:.3} s inside, {fast:.3} s outside"
        );
        println!(
            "slow, lossy network: the inside worker wrote {wrote} events in 30 s; mean batch write {slow:.3} s inside, {fast:.3} s outside"
        );
        stop.store(true, Ordering::Relaxed);
    };
    let (expected, ()) = tokio::join!(steady_load(&d.env, 23, &stop), drill);
    assert_exact(&d, &expected, watch, &[&inside, &outside]).await;
}
