//! leafsync-worker: the consumer job. Stateless processes in one consumer group keep the
//! consumer database equal to the newest state of every image.
//!
//! Where things happen: [`consumer`] (group membership, partition ownership, commit on revoke
//! and shutdown), [`input`] (a partition's messages, in order), [`plan`] (a batch decoded,
//! checked and collapsed: pure), [`batch`] (the collapse to the newest event per id),
//! [`partition`] (one task per partition: gather, plan, settle: write, dead-letter, store the
//! offset), [`writer`] (the one database write, and the per-collection writers that merge
//! ready batches into one command), [`dead_letter`] (bad events), [`supervise`] (what stops
//! the worker instead of stalling it), [`events`] (what is logged and counted), [`lag`] (the
//! lag gauges), [`admin`] (`/live`, `/ready`, `/metrics`), [`replay`] (resetting the group's
//! offsets), [`backfill`] (loading existing images through the same write path).

pub mod admin;
pub mod backfill;
pub mod backoff;
pub mod batch;
pub mod consumer;
pub mod dead_letter;
pub mod events;
pub mod health;
pub mod input;
pub mod lag;
pub mod metrics;
pub mod partition;
pub mod plan;
pub mod replay;
pub mod supervise;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use leafsync_core::{Config, Store};
use tokio_util::sync::CancellationToken;

/// Process-wide state shared by the consumer callbacks, the partition tasks and the admin port.
#[derive(Debug)]
pub struct Shared {
    /// Effective configuration.
    pub config: Config,
    /// The consumer database.
    pub store: Store,
    /// Producer of dead letters.
    pub dead_letter: dead_letter::DeadLetter,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// Liveness and readiness.
    pub health: health::Health,
    /// This worker's id in logs, dead-letter headers and the group.
    pub worker_id: String,
    /// The per-collection writers that merge ready batches into one command.
    pub writers: writer::Writers,
    /// Partition counts of the consumed topics (for spotting misrouted events).
    pub partition_counts: partition::PartitionCounts,
    /// Stops the worker with an error when a task panics or a dead letter cannot be written.
    pub fatal: supervise::Fatal,
}

/// How long start-up waits for the broker to answer (a worker may start before Kafka).
pub const KAFKA_START_TIMEOUT: Duration = Duration::from_secs(60);

/// This worker's id: the configured instance id, or host name and process id.
pub fn worker_id(config: &Config) -> String {
    config.worker.instance_id.clone().unwrap_or_else(|| {
        let host =
            hostname::get().map_or_else(|_| "worker".into(), |h| h.to_string_lossy().into_owned());
        format!("{host}-{}", std::process::id())
    })
}

/// Connects to MongoDB (bounded by the start-up timeout), checks the collections' layout, starts the admin
/// port, then syncs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let worker_id = worker_id(&config);
    let store = Store::connect(&config.mongo, "leafsync-worker").await?;
    store
        .check_layout(&config.types.collections())
        .await
        .context("cannot use the consumer database's collections")?;
    let fatal = supervise::Fatal::new(shutdown.clone());
    let dead_letter = dead_letter::DeadLetter::new(&config, &worker_id, fatal.clone())
        .context("cannot create the dead-letter producer")?;
    dead_letter.check_topic(KAFKA_START_TIMEOUT).await?;
    let admin_addr = config.worker.admin_addr;
    let metrics = Arc::new(metrics::Metrics::new());
    // At most `worker.max_in_flight_batches` commands at once, each of at most one full batch:
    // small batches merge, full ones (a backlog) go out as they are. Merging up to four batches
    // gave the same throughput and cost ~12 MiB more at peak (docs/benchmarks.md, "Latency").
    let permits = Arc::new(tokio::sync::Semaphore::new(
        config.worker.max_in_flight_batches,
    ));
    let writers = writer::Writers::start(
        config.types.collections().map(str::to_owned),
        &permits,
        config.worker.batch.max_events,
        writer::write_fn(&store, &config, &metrics),
        &fatal,
    );
    let shared = Arc::new(Shared {
        config,
        store,
        dead_letter,
        metrics,
        health: health::Health::default(),
        worker_id,
        writers,
        partition_counts: partition::PartitionCounts::default(),
        fatal: fatal.clone(),
    });
    let (addr, admin) = admin::start(admin_addr, shared.clone(), shutdown.clone())
        .await
        .with_context(|| format!("cannot listen on worker.admin_addr {admin_addr}"))?;
    tracing::info!(%addr, "admin port: /live /ready /metrics");
    let store = shared.store.clone();
    let result = consumer::run(shared, shutdown.clone()).await;
    shutdown.cancel();
    let _ = admin.await;
    store.shutdown().await;
    result?;
    match fatal.reason() {
        Some(reason) => anyhow::bail!("stopped after a fatal error: {reason}"),
        None => Ok(()),
    }
}
