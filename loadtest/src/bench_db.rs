//! `bench-db`: the database's raw write ceiling — the same kind of documents the worker writes,
//! sent by a tight loop of batched guarded-upsert commands, with nothing else in the way.

use std::collections::HashMap;
use std::time::Instant;

use leafsync_core::document::Projection;
use leafsync_core::{Config, ImageType, Store};
use mongodb::bson::RawDocumentBuf;
use serde::Serialize;

use crate::generator::{GenConfig, Generator};

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
    /// Whether the per-event version pre-read (what the worker does) was included.
    pub classified: bool,
    /// Concurrent writers.
    pub concurrency: usize,
}

/// Writes `count` generated events into database `database` in batches of `batch`, from
/// `concurrency` writers at once (each owning a disjoint set of ids, as partitions do).
#[allow(clippy::too_many_arguments)] // one per CLI flag; a struct would only rename them
pub async fn bench_db(
    config: &Config,
    gen: GenConfig,
    count: u64,
    batch: usize,
    classified: bool,
    database: &str,
    keep: bool,
    sequential: bool,
    concurrency: usize,
) -> anyhow::Result<BenchResult> {
    let mut mongo = config.mongo.clone();
    mongo.database = database.to_owned();
    mongo.max_pool_size = mongo.max_pool_size.max(concurrency as u32);
    let store = Store::connect(&mongo, "leafsync-bench-db").await?;
    let collections = ImageType::ALL.map(|t| config.types.get(t).collection.as_str());
    store.ensure_indexes(&collections).await?;
    // Documents are made before the clock starts: only the writes are timed.
    let concurrency = concurrency.max(1);
    let mut lanes: Vec<Vec<(ImageType, RawDocumentBuf)>> = vec![Vec::new(); concurrency];
    for (i, mut g) in Generator::new(gen).take(count as usize).enumerate() {
        if sequential {
            // Every document a potato with ids 1..=count: a dense key space to read back.
            g.image_type = ImageType::Potato;
            g.event.id = leafsync_core::ImageId::new(i as i64 + 1)?;
        }
        let lane = (g.event.id.get() as usize) % concurrency;
        lanes[lane].push((g.image_type, g.event.to_raw_document(&Projection::all())?));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in lanes {
        let store = store.clone();
        let types = config.types.clone();
        tasks.push(tokio::spawn(async move {
            write_lane(&store, &types, lane, batch, classified).await
        }));
    }
    let mut written = 0;
    for t in tasks {
        written += t.await??;
    }
    let seconds = started.elapsed().as_secs_f64();
    if !keep {
        store.database().drop().await.ok();
    }
    Ok(BenchResult {
        docs: written,
        batch,
        seconds,
        docs_per_s: written as f64 / seconds,
        classified,
        concurrency,
    })
}

/// One writer: batches per type; duplicate ids within a batch collapse to the newest, as the
/// worker does (a command's statements must touch distinct ids).
async fn write_lane(
    store: &Store,
    types: &leafsync_core::config::TypesConfig,
    lane: Vec<(ImageType, RawDocumentBuf)>,
    batch: usize,
    classified: bool,
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
            written += flush(store, &types.get(t).collection, &docs, classified).await?;
        }
    }
    for (t, docs) in pending {
        if !docs.is_empty() {
            written += flush(store, &types.get(t).collection, &docs, classified).await?;
        }
    }
    Ok(written)
}

async fn flush(
    store: &Store,
    coll: &str,
    docs: &[RawDocumentBuf],
    classified: bool,
) -> anyhow::Result<u64> {
    if classified {
        store.write_batch(coll, docs).await?;
    } else {
        store.write_batch_unclassified(coll, docs).await?;
    }
    Ok(docs.len() as u64)
}
