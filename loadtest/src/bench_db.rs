//! `bench-db`: the database's raw write ceiling — the same kind of documents the worker writes,
//! sent by a tight loop of batched guarded-upsert commands, with nothing else in the way — and
//! the cost of each way of learning the outcomes ([`WriteForm`]) against each state the database
//! may already hold ([`Stored`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::TimeDelta;
use clap::ValueEnum;
use leafsync_core::document::Projection;
use leafsync_core::outcome_policy::{Chooser, OutcomePolicy};
use leafsync_core::{Config, ImageType, Store};
use mongodb::bson::RawDocumentBuf;
use serde::Serialize;

use crate::generator::{GenConfig, Generator};

/// How the timed writes learn each event's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteForm {
    /// The `$lte`-guarded command alone, no outcomes: the ceiling.
    Raw,
    /// Outcomes from the reply (`OutcomesFrom::Reply`).
    Reply,
    /// Outcomes from a read first (`OutcomesFrom::Read`).
    Read,
    /// Whichever of the two suits the recent mix (`worker.outcomes = "auto"`, the default).
    Auto,
}

/// What the database holds for each id before the clock starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stored {
    /// Nothing: every event is inserted.
    None,
    /// A version one second older: every event updates.
    Older,
    /// The same version: every event is a replay (unchanged).
    Equal,
    /// A version one second newer: every event is stale.
    Newer,
}

impl WriteForm {
    /// The worker's `worker.outcomes` that writes this way (`None`: the raw ceiling, no outcomes).
    fn policy(self) -> Option<OutcomePolicy> {
        match self {
            WriteForm::Raw => None,
            WriteForm::Reply => Some(OutcomePolicy::Reply),
            WriteForm::Read => Some(OutcomePolicy::Read),
            WriteForm::Auto => Some(OutcomePolicy::Auto),
        }
    }
}

impl Stored {
    /// The shift of the stored copy's `updated_at`, if one is stored.
    fn shift(self) -> Option<TimeDelta> {
        match self {
            Stored::None => None,
            Stored::Older => Some(TimeDelta::seconds(-1)),
            Stored::Equal => Some(TimeDelta::zero()),
            Stored::Newer => Some(TimeDelta::seconds(1)),
        }
    }
}

/// What one bench-db run does.
#[derive(Debug, Clone, Copy)]
pub struct BenchSpec {
    /// Documents to write.
    pub count: u64,
    /// Documents per command.
    pub batch: usize,
    /// How outcomes are learnt.
    pub form: WriteForm,
    /// What the database holds before.
    pub stored: Stored,
    /// Concurrent writers.
    pub concurrency: usize,
    /// Every document a potato with ids 1..=count.
    pub sequential: bool,
    /// Keep the database afterwards.
    pub keep: bool,
}

/// Result of one bench-db run.
#[derive(Debug, Serialize)]
pub struct BenchResult {
    /// Documents written.
    pub docs: u64,
    /// Documents per command.
    pub batch: usize,
    /// Wall time.
    pub seconds: f64,
    /// docs / seconds.
    pub docs_per_s: f64,
    /// How outcomes were learnt.
    pub form: WriteForm,
    /// What the database held before.
    pub stored: Stored,
    /// Concurrent writers.
    pub concurrency: usize,
}

/// Writes `count` generated events into database `database` in batches of `batch`, from
/// `concurrency` writers at once (each owning a disjoint set of ids, as partitions do).
pub async fn bench_db(
    config: &Config,
    gen: GenConfig,
    spec: BenchSpec,
    database: &str,
) -> anyhow::Result<BenchResult> {
    let BenchSpec {
        count,
        batch,
        form,
        stored,
        concurrency,
        sequential,
        keep,
    } = spec;
    let mut mongo = config.mongo.clone();
    mongo.database = database.to_owned();
    mongo.max_pool_size = mongo.max_pool_size.max(concurrency as u32);
    let store = Store::connect(&mongo, "leafsync-bench-db").await?;
    store.check_layout(&config.types.collections()).await?;
    // Documents are made before the clock starts: only the writes are timed.
    let concurrency = concurrency.max(1);
    let mut lanes: Vec<Vec<(ImageType, RawDocumentBuf)>> = vec![Vec::new(); concurrency];
    let mut before: Vec<Vec<(ImageType, RawDocumentBuf)>> = vec![Vec::new(); concurrency];
    for (i, mut g) in Generator::new(gen).take(count as usize).enumerate() {
        if sequential {
            // Every document a potato with ids 1..=count: a dense key space to read back.
            g.image_type = ImageType::Potato;
            g.event.id = leafsync_core::ImageId::new(i as i64 + 1)?;
        }
        let lane = (g.event.id.get() as usize) % concurrency;
        if let Some(shift) = stored.shift() {
            let mut copy = g.event.clone();
            copy.updated_at += shift;
            before[lane].push((g.image_type, copy.to_raw_document(&Projection::all())?));
        }
        lanes[lane].push((g.image_type, g.event.to_raw_document(&Projection::all())?));
    }
    // The stored state is written untimed, the fast way.
    write_all(&store, config, before, batch, WriteForm::Raw).await?;
    let started = Instant::now();
    let written = write_all(&store, config, lanes, batch, form).await?;
    let seconds = started.elapsed().as_secs_f64();
    if !keep {
        store.database().drop().await.ok();
    }
    Ok(BenchResult {
        docs: written,
        batch,
        seconds,
        docs_per_s: written as f64 / seconds,
        form,
        stored,
        concurrency,
    })
}

/// Every lane by its own writer, all at once; the documents written.
async fn write_all(
    store: &Store,
    config: &Config,
    lanes: Vec<Vec<(ImageType, RawDocumentBuf)>>,
    batch: usize,
    form: WriteForm,
) -> anyhow::Result<u64> {
    // One chooser for all lanes, as a worker has one for all its writers.
    let chooser = form.policy().map(|p| Arc::new(Chooser::new(p)));
    let mut tasks = Vec::new();
    for lane in lanes {
        let (store, chooser) = (store.clone(), chooser.clone());
        let types = config.types.clone();
        tasks.push(tokio::spawn(async move {
            let writer = Writer {
                store: &store,
                chooser: chooser.as_deref(),
            };
            write_lane(&writer, &types, lane, batch).await
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await??;
    }
    Ok(written)
}

/// How a lane writes.
struct Writer<'a> {
    store: &'a Store,
    /// How outcomes are learnt; `None`: not at all (the raw ceiling).
    chooser: Option<&'a Chooser>,
}

/// One writer: batches per type; duplicate ids within a batch collapse to the newest, as the
/// worker does (a command's statements must touch distinct ids).
async fn write_lane(
    w: &Writer<'_>,
    types: &leafsync_core::config::TypesConfig,
    lane: Vec<(ImageType, RawDocumentBuf)>,
    batch: usize,
) -> anyhow::Result<u64> {
    let mut pending: HashMap<ImageType, Vec<RawDocumentBuf>> = HashMap::new();
    let mut written = 0u64;
    for (t, d) in lane {
        let docs = pending.entry(t).or_default();
        let id = d.get_i64("id").ok();
        docs.retain(|x| x.get_i64("id").ok() != id);
        docs.push(d);
        if docs.len() >= batch {
            let docs = std::mem::take(docs);
            written += w.flush(&types.get(t).collection, &docs).await?;
        }
    }
    for (t, docs) in pending {
        if !docs.is_empty() {
            written += w.flush(&types.get(t).collection, &docs).await?;
        }
    }
    Ok(written)
}

impl Writer<'_> {
    async fn flush(&self, coll: &str, docs: &[RawDocumentBuf]) -> anyhow::Result<u64> {
        match self.chooser {
            None => self.store.write_batch_unclassified(coll, docs).await?,
            Some(chooser) => {
                let from = chooser.pick(coll);
                let outcomes = self.store.write_batch_with(coll, docs, from).await?;
                chooser.observe(coll, &outcomes);
            }
        }
        Ok(docs.len() as u64)
    }
}
