//! `leafsync-worker backfill`: load the images that already exist (in the producer database, a
//! restored dump, or JSON Lines files) into the consumer database, in batches, while the
//! workers stream.
//!
//! Every document goes through the stream's own path: the decoder, the projection, the
//! collapse ([`crate::plan`]) and the stale-guarded write ([`crate::writer::write_fn`]), so the
//! newest `updated_at` wins whichever path brought it, an older copy never overwrites a newer
//! streamed version, and a re-run writes nothing new. Bad documents go to the dead-letter topic
//! with their source position. Progress is saved per page in a checkpoint collection
//! ([`checkpoint`]), so a stopped run resumes; pages are read ahead while the previous one is
//! written, and `--rate` paces the reads.

pub mod args;
pub mod checkpoint;
pub mod progress;
pub mod source;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use leafsync_core::config::{Config, Secret};
use leafsync_core::{ImageType, Outcome, OutcomeCounts, Store, StoreError};
use mongodb::bson::RawDocumentBuf;
use tokio_util::sync::CancellationToken;

use crate::backoff::{retry_forever, retry_transient, Backoff};
use crate::dead_letter::Undeliverable;
use crate::events::{BackfillPageSettled, BatchReceived, Emit, Via};
use crate::plan::{plan, Consumed, Plan, Rules};
use crate::Shared;
use checkpoint::{Checkpoint, Checkpoints, Held, LeaseError};
use progress::{Progress, TypeSummary};
use source::{JsonLinesSource, Location, MongoSource, Record, Source, SourceError};

/// Where one image type's documents come from.
#[derive(Debug, Clone)]
pub enum SourceSpec {
    /// A collection of a MongoDB database.
    Mongo {
        /// Connection string of the source server.
        uri: Secret,
        /// The source database.
        database: String,
        /// The collection holding this type.
        collection: String,
    },
    /// A JSON Lines file.
    JsonLines(PathBuf),
}

/// What to backfill and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// The types to load and where each comes from.
    pub sources: Vec<(ImageType, SourceSpec)>,
    /// Documents per page (one read, one write command).
    pub batch: usize,
    /// Documents per second over all types; `None`: as fast as the databases go.
    pub rate: Option<f64>,
    /// Read, decode and predict each outcome, but write nothing (no documents, dead letters, checkpoints).
    pub dry_run: bool,
    /// Forget saved checkpoints and start from the beginning.
    pub restart: bool,
    /// Take a checkpoint's lease even while another run holds it.
    pub take_over: bool,
    /// The checkpoint collection in the consumer database.
    pub checkpoint_collection: String,
    /// Serve `/live`, `/ready`, `/metrics` here while running (a Job's metrics).
    pub admin_addr: Option<SocketAddr>,
}

/// How a backfill ended.
#[derive(Debug)]
pub struct Report {
    /// One row per type.
    pub types: Vec<TypeSummary>,
    /// Stopped by a signal before the end (progress is saved; run again to resume).
    pub interrupted: bool,
}

impl Report {
    /// Whether every type was read to its end without error.
    pub fn is_complete(&self) -> bool {
        self.types.iter().all(|t| t.finished && t.error.is_none())
    }
}

/// Spaces pages so that all types together read at most `rate` documents per second.
#[derive(Debug)]
struct Pacer {
    rate: Option<f64>,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Self {
        Self {
            rate: rate.filter(|r| *r > 0.0),
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for the turn of a page of `n` documents.
    async fn wait(&self, n: usize) {
        let Some(rate) = self.rate else { return };
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + Duration::from_secs_f64(n as f64 / rate);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Everything the per-type loops share.
struct Ctx<'a> {
    shared: &'a Shared,
    opts: &'a Options,
    checkpoints: Checkpoints,
    pacer: Pacer,
    progress: Progress,
    shutdown: &'a CancellationToken,
    /// Source database clients by (URI, database).
    source_clients: tokio::sync::Mutex<HashMap<(String, String), Store>>,
}

/// Runs the backfill of every configured type, concurrently, until done or `shutdown`.
pub async fn run(
    config: Config,
    opts: Options,
    shutdown: CancellationToken,
) -> anyhow::Result<Report> {
    anyhow::ensure!(
        !opts.sources.is_empty(),
        "nothing to backfill: no source given"
    );
    anyhow::ensure!(opts.batch > 0, "--batch must be at least 1");
    let shared = connect(config, &opts, &shutdown).await?;
    // Nothing to join: ready as soon as the database answers.
    shared.health.set_joined();
    let admin_stop = shutdown.child_token();
    let admin = match opts.admin_addr {
        Some(addr) => {
            let (addr, handle) = crate::admin::start(addr, shared.clone(), admin_stop.clone())
                .await
                .with_context(|| format!("cannot listen on --admin-addr {addr}"))?;
            tracing::info!(%addr, "admin port: /live /ready /metrics");
            Some(handle)
        }
        None => None,
    };
    let ctx = Ctx {
        shared: &shared,
        opts: &opts,
        // This run's name on the checkpoints' leases: the worker id plus a random part, so a
        // restarted process (same host and pid) is another run.
        checkpoints: Checkpoints::new(
            shared.store.clone(),
            &opts.checkpoint_collection,
            &format!("{}-{:08x}", shared.worker_id, rand::random::<u32>()),
        ),
        pacer: Pacer::new(opts.rate),
        progress: Progress::new(),
        shutdown: &shutdown,
        source_clients: tokio::sync::Mutex::default(),
    };
    let types = futures::future::join_all(
        opts.sources
            .iter()
            .map(|(t, spec)| backfill_spec(&ctx, *t, spec)),
    )
    .await;
    admin_stop.cancel();
    if let Some(a) = admin {
        let _ = a.await;
    }
    for source in ctx.source_clients.into_inner().into_values() {
        source.shutdown().await;
    }
    shared.store.shutdown().await;
    if let Some(reason) = shared.fatal.reason() {
        anyhow::bail!("backfill stopped after a fatal error: {reason}");
    }
    Ok(Report {
        types,
        interrupted: shutdown.is_cancelled(),
    })
}

/// Connects to the consumer database (creating its indexes unless a dry run) and the
/// dead-letter topic: the state a backfill shares with the stream's write path.
async fn connect(
    config: Config,
    opts: &Options,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<Shared>> {
    let worker_id = format!("{}-backfill", crate::worker_id(&config));
    let store = Store::connect(&config.mongo, "leafsync-backfill").await?;
    let collections: Vec<&str> = opts
        .sources
        .iter()
        .map(|(t, _)| config.types.get(*t).collection.as_str())
        .collect();
    if !opts.dry_run {
        store
            .check_layout(&collections)
            .await
            .context("cannot use the consumer database's collections")?;
    }
    let fatal = crate::supervise::Fatal::new(shutdown.clone());
    let dead_letter = crate::dead_letter::DeadLetter::new(&config, &worker_id, fatal.clone())
        .context("cannot create the dead-letter producer")?;
    dead_letter.check_topic(crate::KAFKA_START_TIMEOUT).await?;
    let metrics = Arc::new(crate::metrics::Metrics::new());
    // Pages are full batches already: each is written on its own.
    let writers =
        crate::writer::Writers::direct(crate::writer::write_fn(&store, &config, &metrics));
    Ok(Arc::new(Shared {
        writers,
        config,
        store,
        dead_letter,
        metrics,
        health: crate::health::Health::default(),
        worker_id,
        partition_counts: crate::partition::PartitionCounts::default(),
        fatal,
    }))
}

/// After the last page: records a finished pass, and gives the checkpoint's lease back.
async fn end_pass(
    ctx: &Ctx<'_>,
    t: ImageType,
    key: &str,
    pass: &mut Checkpoint,
    summary: &mut TypeSummary,
) {
    if summary.finished {
        pass.finished = true;
        if let Err(held) = save(ctx, t, key, pass).await {
            summary.error = Some(held.to_string());
        }
    }
    if !ctx.opts.dry_run {
        if let Err(e) = ctx.checkpoints.release(key).await {
            tracing::warn!(r#type = t.as_str(), error = %e, "cannot release the checkpoint's lease; it expires by itself");
        }
    }
}

/// Opens the source of one type and backfills it.
async fn backfill_spec(ctx: &Ctx<'_>, t: ImageType, spec: &SourceSpec) -> TypeSummary {
    match spec {
        SourceSpec::Mongo {
            uri,
            database,
            collection,
        } => match source_store(ctx, uri, database).await {
            Ok(s) => backfill(ctx, t, MongoSource::new(s, collection)).await,
            Err(e) => failed(t, format!("mongodb:{database}.{collection}"), &e),
        },
        SourceSpec::JsonLines(path) => {
            let max = ctx.shared.config.worker.max_event_bytes;
            backfill(ctx, t, JsonLinesSource::new(path.clone(), max)).await
        }
    }
}

/// The client of a source database: one per server and database, however many types read it
/// (the producer database gets one connection pool, not one per type).
async fn source_store(ctx: &Ctx<'_>, uri: &Secret, database: &str) -> Result<Store, StoreError> {
    // Held across the connect on purpose: the other types wait for this one client.
    let mut clients = ctx.source_clients.lock().await;
    let key = (uri.expose().to_owned(), database.to_owned());
    if let Some(s) = clients.get(&key) {
        return Ok(s.clone());
    }
    let cfg = leafsync_core::config::MongoConfig {
        uri: uri.clone(),
        database: database.to_owned(),
        ..ctx.shared.config.mongo.clone()
    };
    let store = Store::connect(&cfg, "leafsync-backfill-source").await?;
    clients.insert(key, store.clone());
    Ok(store)
}

fn failed(t: ImageType, source: String, e: &dyn std::fmt::Display) -> TypeSummary {
    tracing::error!(r#type = t.as_str(), %source, error = %e, "backfill failed");
    TypeSummary {
        error: Some(e.to_string()),
        ..TypeSummary::new(t, source)
    }
}

/// One type: resume or start the pass, then page through the source until its end, a
/// permanent error, or shutdown.
async fn backfill<S: Source>(ctx: &Ctx<'_>, t: ImageType, mut source: S) -> TypeSummary {
    let started = Instant::now();
    let location = source.location();
    let name = location.to_string();
    let key = Checkpoints::key(t, &name);
    let mut summary = TypeSummary::new(t, name.clone());
    let mut pass = match start(ctx, t, &key, &mut source).await {
        Ok(cp) => cp,
        Err(e) => return failed(t, name, &e),
    };
    let before = pass.counts.total();
    summary.resumed_after = (before > 0).then_some(before);
    let size = source.size().await.ok().flatten();
    let mut bar = ctx.progress.add(t, size, source.bytes_read().is_some());
    let projection = ctx.shared.config.types.projection(t);
    let rules = Rules {
        partition: 0,
        partitions_in_topic: None,
        projection: &projection,
        max_event_bytes: ctx.shared.config.worker.max_event_bytes,
        keyed: false,
    };
    tracing::info!(r#type = t.as_str(), source = %name, resumed_after = summary.resumed_after, dry_run = ctx.opts.dry_run, "backfill started");
    let mut page = read_page(ctx, &mut source).await;
    loop {
        let records = match page {
            Ok(Some(r)) if !r.is_empty() => r,
            Ok(Some(_)) => {
                summary.finished = true;
                break;
            }
            Ok(None) => break, // shut down while reading
            Err(e) => {
                summary.error = Some(e.to_string());
                break;
            }
        };
        let position = source.position();
        let bytes_read = source.bytes_read();
        let planned = prepare(&rules, &location, records);
        // Read the next page while this one is written; on shutdown, finish this one only.
        let (settled, next) = if ctx.shutdown.is_cancelled() {
            (settle(ctx, t, planned).await, Ok(None))
        } else {
            tokio::join!(settle(ctx, t, planned), read_page(ctx, &mut source))
        };
        // A dead letter refused for good: no checkpoint past the page (the run is stopping).
        let Ok(counts) = settled else {
            summary.error = Some("a dead letter was refused for good; see the log".to_owned());
            break;
        };
        page = next;
        summary.counts.merge(&counts);
        pass.counts.merge(&counts);
        pass.position = position;
        if let Err(held) = save(ctx, t, &key, &pass).await {
            summary.error = Some(held.to_string());
            break;
        }
        bar.update(bytes_read.unwrap_or(pass.counts.total()), &pass.counts);
    }
    end_pass(ctx, t, &key, &mut pass, &mut summary).await;
    bar.finish();
    summary.elapsed = started.elapsed();
    tracing::info!(
        r#type = t.as_str(),
        source = %name,
        read = summary.counts.total(),
        finished = summary.finished,
        error = summary.error,
        "backfill ended"
    );
    summary
}

/// The pass to continue: an unfinished checkpoint (unless `--restart`), or a new one.
async fn start<S: Source>(
    ctx: &Ctx<'_>,
    t: ImageType,
    key: &str,
    source: &mut S,
) -> Result<Checkpoint, anyhow::Error> {
    if ctx.opts.dry_run {
        // A dry run writes no checkpoint, so it needs no lease.
        let saved = ctx.checkpoints.load(key).await?;
        return resume(t, source, saved.filter(|_| !ctx.opts.restart)).await;
    }
    ctx.checkpoints.acquire(key, ctx.opts.take_over).await?;
    if ctx.opts.restart {
        save(ctx, t, key, &Checkpoint::default()).await?;
        return Ok(Checkpoint::default());
    }
    let saved = ctx.checkpoints.load(key).await?;
    resume(t, source, saved).await
}

/// Positions `source` after `saved`, unless there is none or its pass had finished.
async fn resume<S: Source>(
    t: ImageType,
    source: &mut S,
    saved: Option<Checkpoint>,
) -> Result<Checkpoint, anyhow::Error> {
    match saved {
        Some(cp) if !cp.finished => {
            source.resume(&cp.position).await?;
            tracing::info!(
                r#type = t.as_str(),
                read = cp.counts.total(),
                "resuming from the checkpoint"
            );
            Ok(cp)
        }
        _ => Ok(Checkpoint::default()),
    }
}

/// The next page, paced and retried while the source's errors are transient; `Ok(None)` if
/// shut down meanwhile.
async fn read_page<S: Source>(
    ctx: &Ctx<'_>,
    source: &mut S,
) -> Result<Option<Vec<Record>>, SourceError> {
    // Each retry needs the source anew; a lock lends it to one attempt at a time.
    let source = tokio::sync::Mutex::new(source);
    let read = async {
        ctx.pacer.wait(ctx.opts.batch).await;
        retry_transient(
            "backfill_read",
            Backoff::from_config(&ctx.shared.config.worker.retry),
            &ctx.shared.metrics,
            SourceError::is_transient,
            || async { source.lock().await.next_page(ctx.opts.batch).await },
        )
        .await
    };
    tokio::select! {
        biased;
        () = ctx.shutdown.cancelled() => Ok(None),
        r = read => r.map(Some),
    }
}

/// A page planned: the records, the plan, and where the records are (for dead letters).
struct Planned<'a> {
    records: Vec<Record>,
    plan: Plan,
    location: &'a Location,
}

fn prepare<'a>(rules: &Rules<'_>, location: &'a Location, records: Vec<Record>) -> Planned<'a> {
    let consumed: Vec<Consumed<'_>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| Consumed {
            offset: i64::try_from(i).unwrap_or(i64::MAX),
            key: None,
            payload: Some(&r.payload),
        })
        .collect();
    let plan = plan(&consumed, rules);
    Planned {
        records,
        plan,
        location,
    }
}

/// Dead-letters the refused, writes (or in a dry run, classifies) the rest, and counts.
async fn settle(
    ctx: &Ctx<'_>,
    t: ImageType,
    mut p: Planned<'_>,
) -> Result<OutcomeCounts, Undeliverable> {
    let shared = ctx.shared;
    let m = &shared.metrics;
    let topic = &shared.config.types.get(t).topic;
    let collection = &shared.config.types.get(t).collection;
    let mut counts = OutcomeCounts::default();
    BatchReceived {
        via: Via::Backfill,
        topic,
        len: p.records.len(),
        bytes: p.plan.bytes,
    }
    .emit(m);
    for r in &p.plan.refusals {
        dead_letter(ctx, t, &p, r.msg, r.kind, &r.reason).await?;
        counts.add(Outcome::DeadLettered);
    }
    for &(_, _, outcome) in &p.plan.skipped {
        counts.add(outcome);
    }
    let (index, docs): (Vec<usize>, Vec<RawDocumentBuf>) = std::mem::take(&mut p.plan.writes)
        .into_iter()
        .map(|w| (w.msg, w.doc))
        .unzip();
    let results = if ctx.opts.dry_run {
        predict(ctx, collection, &docs).await
    } else {
        shared.writers.write(collection, docs).await.results
    };
    for (&i, result) in index.iter().zip(results) {
        match result {
            Ok(outcome) => counts.add(outcome),
            Err(rejected) => {
                dead_letter(ctx, t, &p, i, "rejected_by_database", &rejected.reason()).await?;
                counts.add(Outcome::DeadLettered);
            }
        }
    }
    BackfillPageSettled {
        topic,
        counts: &counts,
    }
    .emit(m);
    Ok(counts)
}

/// A dry run's answer for `docs`: what a write would do now.
async fn predict(
    ctx: &Ctx<'_>,
    collection: &str,
    docs: &[RawDocumentBuf],
) -> Vec<leafsync_core::WriteResult> {
    if docs.is_empty() {
        return Vec::new();
    }
    let outcomes = retry_forever(
        "database_read",
        Backoff::from_config(&ctx.shared.config.worker.retry),
        &ctx.shared.metrics,
        |e: &StoreError| e.class.as_str(),
        || ctx.shared.store.predict(collection, docs),
    )
    .await;
    outcomes.into_iter().map(Ok).collect()
}

async fn dead_letter(
    ctx: &Ctx<'_>,
    t: ImageType,
    p: &Planned<'_>,
    i: usize,
    kind: &str,
    reason: &str,
) -> Result<(), Undeliverable> {
    if ctx.opts.dry_run {
        tracing::info!(
            r#type = t.as_str(),
            kind,
            reason,
            "dry run: would dead-letter a document"
        );
        return Ok(());
    }
    let r = &p.records[i];
    let mut headers = vec![(
        crate::dead_letter::header::SOURCE_TYPE,
        t.as_str().to_owned(),
    )];
    headers.extend(p.location.headers(&r.at));
    let origin: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ctx.shared
        .dead_letter
        .send_backfill(
            &ctx.shared.config.types.get(t).topic,
            r.key.as_deref().map(str::as_bytes),
            &r.payload,
            &origin,
            kind,
            reason,
            &ctx.shared.metrics,
        )
        .await
}

/// Saves the pass's checkpoint (not in a dry run), retrying until the database takes it: the
/// page is written, and a lost checkpoint would only make a resumed run redo it.
/// Saves the checkpoint (retrying database failures) and renews this run's lease; `Err` when
/// another run took the lease meanwhile.
async fn save(ctx: &Ctx<'_>, t: ImageType, key: &str, pass: &Checkpoint) -> Result<(), Held> {
    if ctx.opts.dry_run {
        return Ok(());
    }
    retry_forever(
        "backfill_checkpoint",
        Backoff::from_config(&ctx.shared.config.worker.retry),
        &ctx.shared.metrics,
        |e: &StoreError| e.class.as_str(),
        || async {
            match ctx.checkpoints.save(key, t, pass).await {
                Ok(()) => Ok(Ok(())),
                Err(LeaseError::Held(h)) => Ok(Err(h)),
                Err(LeaseError::Store(e)) => Err(e),
            }
        },
    )
    .await
}
