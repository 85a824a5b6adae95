//! Shared helpers for the worker's integration tests: real worker processes against the real
//! (stand-in) Kafka and MongoDB servers started by `scripts/stack`.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leafsync_core::config::Config;
use leafsync_core::{ImageType, Store};
use leafsync_kafka::admin::{delete_topics, ensure_topics};
use leafsync_kafka::ClientConfigExt as _;
use leafsync_loadtest::expected::Expected;
use leafsync_loadtest::generator::{GenConfig, Generated, Generator};
use leafsync_loadtest::producer::EventProducer;
use leafsync_loadtest::sample::OffsetProbe;
use leafsync_loadtest::verify::{self, Report};
use leafsync_testkit::{http_get, wait_for_status, Process};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

pub const PARTITIONS: i32 = 6;

pub use leafsync_testkit::{env_to_toml, free_port, unique, Cleanup, NetNs, PrivateStack};

/// Drops the test's database and deletes its topics (the stack may be a private one that is
/// already gone: then there is nothing to clean).
fn cleanup(config: &Config, topics: Vec<String>) -> Cleanup {
    let config = config.clone();
    Cleanup::new(
        format!("database {}", config.mongo.database),
        move || async move {
            let store = Store::connect_lazy(&config.mongo, "leafsync-test-cleanup")
                .await
                .map_err(|e| e.to_string())?;
            let db = store.database().drop().await.map_err(|e| e.to_string());
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let t = delete_topics(&config.kafka, &refs)
                .await
                .map_err(|e| e.to_string());
            db.and(t)
        },
    )
}

/// One test's isolated slice of a stack: its own topics, group, dead-letter topic, database.
pub struct TestEnv {
    pub config: Config,
    pub store: Store,
    pub name: String,
    overrides: Vec<(String, String)>,
    /// Drops the database and deletes the topics when the test ends.
    _cleanup: Cleanup,
}

impl TestEnv {
    pub async fn new() -> Self {
        Self::with_servers(None, &[]).await
    }

    /// With extra `LEAFSYNC__…` settings for this process and its workers.
    pub async fn with_overrides(extra: &[(&str, &str)]) -> Self {
        Self::with_servers(None, extra).await
    }

    /// On a private stack instead of the shared one.
    pub async fn on(stack: &PrivateStack) -> Self {
        Self::with_servers(Some((stack.kafka.clone(), stack.mongo_uri.clone())), &[]).await
    }

    async fn with_servers(servers: Option<(String, String)>, extra: &[(&str, &str)]) -> Self {
        let name = unique("t");
        let mut overrides = vec![
            (
                "LEAFSYNC__KAFKA__GROUP_ID".to_owned(),
                format!("{name}.workers"),
            ),
            (
                "LEAFSYNC__KAFKA__DEAD_LETTER_TOPIC".to_owned(),
                format!("{name}.dlq"),
            ),
            ("LEAFSYNC__MONGO__DATABASE".to_owned(), name.clone()),
            (
                "LEAFSYNC__WORKER__DRAIN_TIMEOUT_MS".to_owned(),
                "5000".to_owned(),
            ),
            (
                "LEAFSYNC__KAFKA__SESSION_TIMEOUT_MS".to_owned(),
                "10000".to_owned(),
            ),
            (
                "LEAFSYNC__WORKER__RETRY__MAX_BACKOFF_MS".to_owned(),
                "1000".to_owned(),
            ),
        ];
        for t in ImageType::ALL {
            overrides.push((
                format!("LEAFSYNC__TYPES__{}__TOPIC", t.as_str().to_uppercase()),
                format!("{name}.{t}"),
            ));
        }
        overrides.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        if let Some((kafka, mongo)) = servers {
            overrides.push(("LEAFSYNC__KAFKA__BOOTSTRAP_SERVERS".to_owned(), kafka));
            overrides.push(("LEAFSYNC__MONGO__URI".to_owned(), mongo));
        }
        // The same overrides as TOML dotted keys, for this process's own view of the config.
        let toml = env_to_toml(&overrides);
        let config = Config::load_with_overrides(&toml).expect("test config");
        let mut topics = config.types.topics();
        topics.push(config.kafka.dead_letter_topic.clone());
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        ensure_topics(&config.kafka, &refs, PARTITIONS)
            .await
            .expect("topics (is the stack up?)");
        let store = Store::connect(&config.mongo, "leafsync-test")
            .await
            .expect("MongoDB up");
        let _cleanup = cleanup(&config, topics);
        Self {
            config,
            store,
            name,
            overrides,
            _cleanup,
        }
    }

    /// The environment of a child process: this env's settings, JSON logs, then `extra` (which
    /// wins over both).
    pub fn process_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.overrides.clone();
        env.push(("LEAFSYNC__TELEMETRY__LOG_FORMAT".into(), "json".into()));
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// Starts a worker process with this env's settings plus `extra` env vars.
    pub fn spawn_worker(&self, label: &str, extra: &[(&str, &str)]) -> Worker {
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let env = self.worker_env(admin, extra);
        let process = Process::spawn(
            Path::new(env!("CARGO_BIN_EXE_leafsync-worker")),
            &[],
            &env,
            &format!("{}-{label}", self.name),
        );
        Worker { process, admin }
    }

    /// Starts a worker inside `ns`, its admin port on the namespace's address.
    pub fn spawn_worker_in(&self, ns: &NetNs, label: &str, extra: &[(&str, &str)]) -> Worker {
        let admin = SocketAddr::from((ns.inner_ip, free_port()));
        let env = self.worker_env(admin, extra);
        let process = ns.spawn(
            Path::new(env!("CARGO_BIN_EXE_leafsync-worker")),
            &[],
            &env,
            &format!("{}-{label}", self.name),
        );
        Worker { process, admin }
    }

    fn worker_env(&self, admin: SocketAddr, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env = self.process_env(&[("LEAFSYNC__WORKER__ADMIN_ADDR", &admin.to_string())]);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    }

    /// Starts `leafsync-worker backfill ARGS` with this env's settings plus `extra` env vars.
    pub fn spawn_backfill(&self, label: &str, args: &[&str], extra: &[(&str, &str)]) -> Process {
        let env = self.process_env(extra);
        let mut argv = vec!["backfill"];
        argv.extend_from_slice(args);
        Process::spawn(
            Path::new(env!("CARGO_BIN_EXE_leafsync-worker")),
            &argv,
            &env,
            &format!("{}-{label}", self.name),
        )
    }

    /// Runs a backfill to its end (panics after `timeout`) and returns its summary's totals.
    pub fn backfill(&self, label: &str, args: &[&str], timeout: Duration) -> Totals {
        let mut p = self.spawn_backfill(label, args, &[]);
        let status = p.wait_exit(timeout);
        assert!(
            status.is_some_and(|s| s.success()),
            "backfill {args:?} ended with {status:?}\n{}",
            p.log_tail()
        );
        Totals::parse(&p.log_text())
    }

    /// A database on the test's MongoDB server to seed as a backfill source; dropped with the
    /// returned guard.
    pub async fn source_database(&self) -> (Store, Cleanup) {
        let mut cfg = self.config.mongo.clone();
        cfg.database = format!("{}_src", self.name);
        let store = Store::connect(&cfg, "leafsync-test-source").await.unwrap();
        let s = store.clone();
        let cleanup = Cleanup::new(format!("database {}", cfg.database), move || async move {
            s.database().drop().await.map_err(|e| e.to_string())
        });
        (store, cleanup)
    }

    pub fn generator(&self, seed: u64, ids_per_type: i64) -> Generator {
        Generator::new(GenConfig {
            seed,
            ids_per_type,
            delete_ratio: 0.1,
            start: start_time(),
        })
    }

    /// Produces `events` with the producer contract and folds them into `expected`.
    pub async fn produce(
        &self,
        events: impl IntoIterator<Item = Generated>,
        expected: &mut Expected,
    ) {
        let mut p = EventProducer::new(&self.config).expect("producer");
        for g in events {
            let topic = &self.config.types.get(g.image_type).topic;
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
        p.flush().await;
        assert_eq!(p.failed, 0, "produce failures");
    }

    /// Produces `events` in `chunks` with a pause between, so faults can hit mid-flood; folds
    /// them into `expected`.
    pub async fn produce_paced(
        &self,
        events: Vec<Generated>,
        chunks: usize,
        pause: Duration,
        expected: &mut Expected,
    ) {
        let size = events.len().div_ceil(chunks.max(1));
        for chunk in events.chunks(size.max(1)) {
            self.produce(chunk.to_vec(), expected).await;
            tokio::time::sleep(pause).await;
        }
    }

    /// Sum over partitions of the group's committed offsets and of the high watermarks. Retries
    /// for up to 60 s: a broker just restarted answers NOT_COORDINATOR (and COORDINATOR_LOAD_IN_
    /// PROGRESS) until it has reloaded `__consumer_offsets`, which is its normal start-up, not a
    /// failure of what the test checks.
    pub fn committed_and_end(&self) -> (i64, i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match OffsetProbe::new(&self.config).and_then(|p| p.read()) {
                Ok((end, committed)) => return (committed, end),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("offsets not readable yet ({e:#}); retrying");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("offsets unreadable for 60 s: {e:#}"),
            }
        }
    }

    /// Produces raw key/value pairs to `t`'s topic.
    pub async fn produce_raw(&self, t: ImageType, msgs: &[(Vec<u8>, Option<Vec<u8>>)]) {
        let mut p = EventProducer::new(&self.config).expect("producer");
        for (k, v) in msgs {
            p.send(&self.config.types.get(t).topic, k, v.as_deref(), false)
                .await
                .unwrap();
        }
        p.flush().await;
        assert_eq!(p.failed, 0);
    }

    pub async fn wait_synced(&self, expected: &Expected, timeout: Duration) -> Report {
        verify::wait_until_synced(&self.store, &self.config.types, expected, timeout)
            .await
            .unwrap()
    }

    /// Sets a topic-level config on the broker (e.g. `max.message.bytes` of the dead-letter
    /// topic), through Kafka's AlterConfigs.
    pub async fn set_topic_config(&self, topic: &str, key: &str, value: &str) {
        use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> =
            self.config.kafka.client_config().create().unwrap();
        let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
        let results = admin
            .alter_configs(&[change], &AdminOptions::new())
            .await
            .unwrap();
        for r in results {
            r.unwrap_or_else(|e| panic!("alter {topic} {key}={value}: {e:?}"));
        }
    }

    /// Every message of the dead-letter topic, waiting until `n` arrived or `timeout`.
    pub fn dead_letters(&self, n: usize, timeout: Duration) -> Vec<DeadLetter> {
        let c: BaseConsumer = self
            .config
            .kafka
            .client_config_with(&[
                ("group.id", &unique("dlq-reader")),
                ("auto.offset.reset", "earliest"),
                ("enable.auto.commit", "false"),
            ])
            .create()
            .unwrap();
        c.subscribe(&[&self.config.kafka.dead_letter_topic])
            .unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_owned(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(DeadLetter {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        out
    }
}

/// The `total` row of a backfill's summary table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub read: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub stale: u64,
    pub superseded: u64,
    pub dead_lettered: u64,
}

impl Totals {
    /// Finds the last `total` row in a backfill's output.
    pub fn parse(output: &str) -> Self {
        let row = output
            .lines()
            .rev()
            .find(|l| l.starts_with("total "))
            .unwrap_or_else(|| panic!("no summary table in:\n{output}"));
        let n: Vec<u64> = row
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(n.len(), 7, "{row}");
        Self {
            read: n[0],
            inserted: n[1],
            updated: n[2],
            unchanged: n[3],
            stale: n[4],
            superseded: n[5],
            dead_lettered: n[6],
        }
    }

    /// Documents that changed the database.
    pub fn written(&self) -> u64 {
        self.inserted + self.updated
    }
}

pub fn start_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_760_000_000, 0).unwrap()
}

#[derive(Debug)]
pub struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// One partition's row of Kafka's `ConsumerGroupCommand --describe` (`None`: `-`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRow {
    pub committed: Option<i64>,
    pub lag: Option<i64>,
}

/// The group's committed offset and lag per `(topic, partition)`, as Apache Kafka's own
/// consumer-group tool reports them: the broker's view, not librdkafka's.
pub fn kafka_group_view(bootstrap: &str, group: &str) -> BTreeMap<(String, i32), GroupRow> {
    let out = leafsync_testkit::kafka_tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &[
            "--bootstrap-server",
            bootstrap,
            "--describe",
            "--group",
            group,
        ],
    );
    // Columns: GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
    out.lines()
        .map(str::split_whitespace)
        .map(Iterator::collect::<Vec<_>>)
        .filter(|cols| cols.len() >= 6 && cols[0] == group)
        .map(|cols| {
            let row = GroupRow {
                committed: cols[3].parse().ok(),
                lag: cols[5].parse().ok(),
            };
            ((cols[1].to_owned(), cols[2].parse().unwrap()), row)
        })
        .collect()
}

/// A running worker process; killed when dropped.
pub struct Worker {
    pub process: Process,
    pub admin: SocketAddr,
}

impl std::ops::Deref for Worker {
    type Target = Process;
    fn deref(&self) -> &Process {
        &self.process
    }
}

impl std::ops::DerefMut for Worker {
    fn deref_mut(&mut self) -> &mut Process {
        &mut self.process
    }
}

impl Worker {
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.admin, path).await
    }

    /// Per `(topic, partition)`, the last offset of the last batch the worker settled, from its
    /// "batch done" log lines in order: what its stored offset covers (after a rewind that is
    /// the re-read batch, not the highest offset ever taken).
    pub fn last_written(&self) -> BTreeMap<(String, i32), i64> {
        let mut out = BTreeMap::new();
        for v in self
            .log_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "batch done")
        {
            let key = (
                v["topic"].as_str().unwrap().to_owned(),
                v["partition"].as_i64().unwrap() as i32,
            );
            out.insert(key, v["last_offset"].as_i64().unwrap());
        }
        out
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        wait_for_status(self.admin, "/ready", 200, timeout, || self.log_tail()).await;
    }

    /// Polls [`events_total`](Self::events_total) until it reaches `at_least` or `timeout`
    /// passes; returns the last value (the caller asserts on it).
    pub async fn wait_events(&self, filter: &str, at_least: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            // Not answering yet (still starting) counts as nothing counted.
            let n = self
                .try_metric_total("leafsync_worker_events_total", filter)
                .await
                .unwrap_or(0);
            if n >= at_least || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Polls `/metrics` until `check` accepts it or `timeout` passes; returns the last body.
    pub async fn wait_metrics(&self, timeout: Duration, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self
                .get("/metrics")
                .await
                .map(|(_, b)| b)
                .unwrap_or_default();
            if check(&body) || Instant::now() >= deadline {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sum of `leafsync_worker_events_total` samples whose labels contain `filter`.
    pub async fn events_total(&self, filter: &str) -> u64 {
        self.metric_total("leafsync_worker_events_total", filter)
            .await
    }

    /// Sum of the samples of `metric` (a full sample name, e.g. `…_count`) whose labels contain
    /// `filter`.
    /// Panics when `/metrics` does not answer: a dead worker must not read as "0 dead-lettered".
    pub async fn metric_total(&self, metric: &str, filter: &str) -> u64 {
        self.try_metric_total(metric, filter)
            .await
            .unwrap_or_else(|| {
                panic!(
                    "the worker's /metrics does not answer (did it exit?)\n{}",
                    self.log_tail()
                )
            })
    }

    /// The value of a metric without labels (a gauge such as
    /// `leafsync_worker_assigned_partitions`). Panics when `/metrics` does not answer.
    pub async fn gauge(&self, metric: &str) -> i64 {
        let (status, body) = self.get("/metrics").await.unwrap_or_else(|| {
            panic!("the worker's /metrics does not answer\n{}", self.log_tail())
        });
        assert_eq!(status, 200, "/metrics");
        let prefix = format!("{metric} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {metric} in /metrics")) as i64
    }

    /// [`metric_total`](Self::metric_total), or `None` when `/metrics` does not answer 200.
    pub async fn try_metric_total(&self, metric: &str, filter: &str) -> Option<u64> {
        Some(self.try_metric_sum(metric, filter).await? as u64)
    }

    /// Like [`metric_total`](Self::metric_total), unrounded (a histogram's `_sum` in seconds).
    pub async fn metric_sum(&self, metric: &str, filter: &str) -> f64 {
        self.try_metric_sum(metric, filter)
            .await
            .unwrap_or_else(|| panic!("the worker's /metrics does not answer\n{}", self.log_tail()))
    }

    async fn try_metric_sum(&self, metric: &str, filter: &str) -> Option<f64> {
        let (status, body) = self.get("/metrics").await?;
        if status != 200 {
            return None;
        }
        let prefix = format!("{metric}{{");
        Some(
            body.lines()
                .filter(|l| l.starts_with(&prefix) && l.contains(filter))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>(),
        )
    }
}
