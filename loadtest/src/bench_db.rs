//! `bench-db`: the database's raw write ceiling — the same kind of documents the worker writes,
//! sent by a tight loop of batched guarded-upsert commands, with nothing else in the way.

use std::collections::HashMap;
use std::time::Instant;

use leafsync_core::document::Projection;
use leafsync_core::{Config, ImageType, Store};
use mongodb::bson::Document;
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
}

/// Writes `count` generated events into a fresh database `database` in batches of `batch`.
pub async fn bench_db(
    config: &Config,
    gen: GenConfig,
    count: u64,
    batch: usize,
    classified: bool,
    database: &str,
) -> anyhow::Result<BenchResult> {
    let mut mongo = config.mongo.clone();
    mongo.database = database.to_owned();
    let store = Store::connect(&mongo, "leafsync-bench-db").await?;
    let collections = ImageType::ALL.map(|t| config.types.get(t).collection.as_str());
    store.ensure_indexes(&collections).await?;
    // Group by type like the worker's partitions do; collapse duplicate ids within a batch as
    // the worker does (a command's statements must touch distinct ids).
    let mut pending: HashMap<ImageType, Vec<Document>> = HashMap::new();
    let mut written = 0u64;
    let started = Instant::now();
    for g in Generator::new(gen).take(count as usize) {
        let docs = pending.entry(g.image_type).or_default();
        docs.retain(|d| d.get_i64("id").ok() != Some(g.event.id.get()));
        docs.push(g.event.to_document(&Projection::all()));
        if docs.len() >= batch {
            let docs = std::mem::take(docs);
            written += flush(&store, config, g.image_type, &docs, classified).await?;
        }
    }
    for (t, docs) in pending {
        if !docs.is_empty() {
            written += flush(&store, config, t, &docs, classified).await?;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    store.database().drop().await.ok();
    Ok(BenchResult {
        docs: written,
        batch,
        seconds,
        docs_per_s: written as f64 / seconds,
        classified,
    })
}

async fn flush(
    store: &Store,
    config: &Config,
    t: ImageType,
    docs: &[Document],
    classified: bool,
) -> anyhow::Result<u64> {
    let coll = &config.types.get(t).collection;
    if classified {
        store.write_batch(coll, docs).await?;
    } else {
        store.write_batch_unclassified(coll, docs).await?;
    }
    Ok(docs.len() as u64)
}
