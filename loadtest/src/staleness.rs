//! `mutate-source`: a producer database in use. Changes images of a backfill source at a steady
//! rate (each change a new version stamped now) and measures how long each change takes to
//! become visible in the consumer database: the staleness a periodic backfill leaves, to set
//! beside the stream's end-to-end latency (`run`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leafsync_core::document::Projection;
use leafsync_core::{Config, ImageId, ImageType, Store, Version};
use mongodb::bson::doc;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::generator::{GenConfig, Generator};

/// What to change and for how long.
#[derive(Debug, Clone)]
pub struct MutateConfig {
    /// The source database (collections named like the consumer's).
    pub source_database: String,
    /// Changes per second.
    pub rate: u64,
    /// How long to change images.
    pub duration: Duration,
    /// How long to keep watching after the last change.
    pub grace: Duration,
    /// RNG seed.
    pub seed: u64,
}

/// Visibility delays of the changes.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Staleness {
    /// Changes made.
    pub changes: u64,
    /// Changes seen in the consumer database (by a version at or after theirs); a change to
    /// an image whose earlier change is still unseen is seen with it.
    pub seen: u64,
    /// Changes not seen before the grace period ended.
    pub unseen: u64,
    /// Seconds from change to visible, percentiles.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Mean.
    pub mean: f64,
    /// Largest.
    pub max: f64,
}

/// A change waiting to be seen: the version it wrote and when.
type Pending = HashMap<(ImageType, i64), (Version, Instant)>;

/// Changes images for `cfg.duration`, then waits up to `cfg.grace` for the rest to be seen.
pub async fn mutate_source(config: &Config, cfg: &MutateConfig) -> anyhow::Result<Staleness> {
    let source = Store::connect(
        &leafsync_core::config::MongoConfig {
            database: cfg.source_database.clone(),
            ..config.mongo.clone()
        },
        "leafsync-loadtest-mutate",
    )
    .await?;
    let consumer = Store::connect(&config.mongo, "leafsync-loadtest-watch").await?;
    let mut ids: Vec<(ImageType, i64)> = Vec::new();
    for t in ImageType::ALL {
        source
            .for_each(&config.types.get(t).collection, |d| {
                if let Ok(id) = d.get_i64("id") {
                    ids.push((t, id));
                }
            })
            .await?;
    }
    anyhow::ensure!(!ids.is_empty(), "{} holds no images", cfg.source_database);
    let pending: Arc<Mutex<Pending>> = Arc::default();
    let delays: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let watcher = tokio::spawn(watch(
        consumer,
        config.types.clone(),
        pending.clone(),
        delays.clone(),
        stop.clone(),
    ));
    let changes = change(&source, config, cfg, &ids, &pending).await?;
    let deadline = Instant::now() + cfg.grace;
    while Instant::now() < deadline && !lock(&pending).is_empty() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.notify_one();
    watcher.await??;
    let unseen = lock(&pending).len() as u64;
    let mut d = lock(&delays).clone();
    d.sort_by(f64::total_cmp);
    let q = |p: f64| {
        d.get(((d.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok(Staleness {
        changes,
        seen: d.len() as u64,
        unseen,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        mean: d.iter().sum::<f64>() / d.len().max(1) as f64,
        max: d.last().copied().unwrap_or(f64::NAN),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes `cfg.rate` new versions per second of random images; returns how many.
async fn change(
    source: &Store,
    config: &Config,
    cfg: &MutateConfig,
    ids: &[(ImageType, i64)],
    pending: &Mutex<Pending>,
) -> anyhow::Result<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    // Realistic field values from the generator; id and version are the change's own.
    let mut shapes = Generator::new(GenConfig {
        seed: cfg.seed,
        ids_per_type: 1,
        delete_ratio: 0.05,
        start: Utc::now(),
    });
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < cfg.duration {
        let due = started + Duration::from_secs_f64(n as f64 / cfg.rate.max(1) as f64);
        tokio::time::sleep_until(due.into()).await;
        let (t, id) = ids[rng.random_range(0..ids.len())];
        let mut e = shapes.next_event().event;
        e.id = ImageId::new(id)?;
        let now = Utc::now();
        e.updated_at = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        e.created_at = None;
        let at = Instant::now();
        source
            .collection(&config.types.get(t).collection)
            .replace_one(doc! {"id": id}, e.to_document(&Projection::all()))
            .await?;
        lock(pending)
            .entry((t, id))
            .or_insert((Version::of(e.updated_at), at));
        n += 1;
    }
    Ok(n)
}

/// Polls the consumer database for the pending changes every 200 ms.
async fn watch(
    consumer: Store,
    types: leafsync_core::config::TypesConfig,
    pending: Arc<Mutex<Pending>>,
    delays: Arc<Mutex<Vec<f64>>>,
    stop: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    loop {
        for t in ImageType::ALL {
            let wanted: Vec<ImageId> = lock(&pending)
                .keys()
                .filter(|(ty, _)| *ty == t)
                .filter_map(|(_, id)| ImageId::new(*id).ok())
                .collect();
            for chunk in wanted.chunks(1000) {
                let stored = consumer.get_many(&types.get(t).collection, chunk).await?;
                let now = Instant::now();
                let mut p = lock(&pending);
                for (id, d) in stored {
                    let Ok(at) = d.get_datetime("updated_at") else {
                        continue;
                    };
                    let key = (t, id.get());
                    if let Some(&(v, changed)) = p.get(&key) {
                        if Version::from_bson(*at).replaces(v) {
                            p.remove(&key);
                            lock(&delays).push((now - changed).as_secs_f64());
                        }
                    }
                }
            }
        }
        tokio::select! {
            () = stop.notified() => return Ok(()),
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}
