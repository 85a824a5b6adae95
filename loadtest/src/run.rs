//! `run`: flood + verify while sampling throughput, lag and latency once a second.

use anyhow::Context as _;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leafsync_core::{Config, Store};
use leafsync_kafka::ClientConfigExt as _;

use crate::flood::{flood, progress, FloodConfig};
use crate::report::{RunReport, StageLatency, WarmLatency};
use crate::sample::{
    delta, histogram, latency_buckets, max_bound, quantile, scrape, OffsetProbe, Sample,
};
use crate::verify::wait_until_synced;

/// What to run.
#[derive(Debug)]
pub struct RunConfig {
    /// The flood.
    pub flood: FloodConfig,
    /// Workers' `/metrics` URLs, for end-to-end latency.
    pub metrics_urls: Vec<String>,
    /// Give up waiting for the database after this long.
    pub timeout: Duration,
    /// Where `report.json`, `report.html` and `expected.jsonl` go.
    pub out: PathBuf,
    /// Also report the latency of what was synced after this long (zero: not at all).
    pub warmup: Duration,
    /// Drop the database once verified.
    pub drop: bool,
}

/// The worker's hot-path stages, in path order (`leafsync_worker_stage_seconds{stage}`).
const STAGES: [&str; 7] = [
    "kafka",
    "permit",
    "gather",
    "plan",
    "dead_letter",
    "write",
    "store_offset",
];
/// Key of the batch-size histogram among [`stage_histograms`]' results.
const BATCH_SIZE: &str = "batch_size";

/// Every stage's histogram and the batch-size histogram, summed over the workers (one scrape
/// of each worker).
async fn stage_histograms(
    client: &reqwest::Client,
    urls: &[String],
) -> BTreeMap<&'static str, BTreeMap<String, f64>> {
    let pages = scrape(client, urls).await.unwrap_or_default();
    let mut out: BTreeMap<_, _> = STAGES
        .iter()
        .map(|&stage| {
            let h = histogram(
                &pages,
                "leafsync_worker_stage_seconds",
                Some(("stage", stage)),
            );
            (stage, h)
        })
        .collect();
    out.insert(
        BATCH_SIZE,
        histogram(&pages, "leafsync_worker_batch_size", None),
    );
    out
}

/// Messages in the dead-letter topic (sum of its high watermarks). Blocking.
pub fn dead_letter_count(config: &Config) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let Ok(c) = config.kafka.client_config().create::<BaseConsumer>() else {
        return 0;
    };
    let topic = &config.kafka.dead_letter_topic;
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
        return 0;
    };
    md.topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| (t.name().to_owned(), p.id())))
        .filter_map(|(t, p)| c.fetch_watermarks(&t, p, Duration::from_secs(10)).ok())
        .map(|(_, high)| high)
        .sum()
}

/// Per-stage p50/p99 between two scrapes of [`stage_histograms`], and the batch size's.
fn stages_over_run(
    start: &BTreeMap<&'static str, BTreeMap<String, f64>>,
    end: &BTreeMap<&'static str, BTreeMap<String, f64>>,
) -> (Vec<StageLatency>, (Option<f64>, Option<f64>)) {
    let over_run = |name: &str| {
        let h = delta(&end[name], &start[name]);
        (quantile(&h, 0.5), quantile(&h, 0.99))
    };
    let stages = STAGES
        .iter()
        .map(|&stage| {
            let (p50, p99) = over_run(stage);
            StageLatency {
                stage: stage.to_owned(),
                p50,
                p99,
            }
        })
        .collect();
    (stages, over_run(BATCH_SIZE))
}

/// What the run watches once a second while the flood runs and the workers catch up.
struct Watch {
    probe: Arc<OffsetProbe>,
    client: reqwest::Client,
    urls: Vec<String>,
    /// Log end and committed offsets before the run.
    base: (i64, i64),
    started: Instant,
    timeout: Duration,
}

impl Watch {
    /// Samples produced, committed, lag and the latency of each second until the flood is done
    /// and everything is committed (or the timeout); returns the samples, when the flood ended
    /// and the latency histogram as it was at the first sample after `warmup`.
    async fn sample(
        &self,
        flood_task: &tokio::task::JoinHandle<anyhow::Result<crate::expected::Expected>>,
        mut prev_hist: BTreeMap<String, f64>,
        warmup: Duration,
    ) -> anyhow::Result<(Vec<Sample>, Option<f64>, Option<Warm>)> {
        let mut warm = None;
        let mut flood_seconds = None;
        let mut samples: Vec<Sample> = Vec::new();
        let (mut prev_t, mut prev_produced, mut prev_synced) = (0.0, 0, 0);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if flood_task.is_finished() && flood_seconds.is_none() {
                flood_seconds = Some(self.started.elapsed().as_secs_f64());
            }
            let p = self.probe.clone();
            let (end, done) = tokio::task::spawn_blocking(move || p.read()).await??;
            let t = self.started.elapsed().as_secs_f64();
            let (produced, synced) = (end - self.base.0, done - self.base.1);
            let hist = latency_buckets(&self.client, &self.urls).await;
            let interval = hist.as_ref().map(|h| delta(h, &prev_hist));
            let dt = (t - prev_t).max(0.001);
            samples.push(Sample {
                t,
                produced,
                committed: synced,
                lag: end - done,
                produced_per_s: (produced - prev_produced) as f64 / dt,
                synced_per_s: (synced - prev_synced) as f64 / dt,
                p50: interval.as_ref().and_then(|h| quantile(h, 0.5)),
                p90: interval.as_ref().and_then(|h| quantile(h, 0.9)),
                p99: interval.as_ref().and_then(|h| quantile(h, 0.99)),
            });
            (prev_t, prev_produced, prev_synced) = (t, produced, synced);
            if let Some(h) = hist {
                if warm.is_none() && !warmup.is_zero() && t >= warmup.as_secs_f64() {
                    warm = Some(Warm {
                        after_s: t,
                        hist: h.clone(),
                    });
                }
                prev_hist = h;
            }
            if (flood_seconds.is_some() && end == done) || self.started.elapsed() > self.timeout {
                return Ok((samples, flood_seconds, warm));
            }
        }
    }
}

/// p50, p90, p99 and the slowest bucket's bound of a latency histogram.
fn latency_summary(h: &BTreeMap<String, f64>) -> [Option<f64>; 4] {
    [
        quantile(h, 0.5),
        quantile(h, 0.9),
        quantile(h, 0.99),
        max_bound(h),
    ]
}

/// The workers' latency histogram once the warm-up was over.
struct Warm {
    after_s: f64,
    hist: BTreeMap<String, f64>,
}

/// Runs the load and writes the report; returns it.
pub async fn run(config: &Config, rc: RunConfig) -> anyhow::Result<RunReport> {
    let store = Store::connect(&config.mongo, "leafsync-loadtest").await?;
    let probe = Arc::new(OffsetProbe::new(config)?);
    let dlq_before = {
        let c = config.clone();
        tokio::task::spawn_blocking(move || dead_letter_count(&c)).await?
    };
    let p = probe.clone();
    let (base_end, base_done) = tokio::task::spawn_blocking(move || p.read()).await??;
    let client = reqwest::Client::new();
    let hist_start = latency_buckets(&client, &rc.metrics_urls)
        .await
        .unwrap_or_default();
    let stages_start = stage_histograms(&client, &rc.metrics_urls).await;

    let started = Instant::now();
    let fc = rc.flood.clone();
    let cfg = config.clone();
    let flood_task = tokio::spawn(async move { flood(&cfg, &fc, progress(fc.count)).await });
    let watch = Watch {
        probe,
        client: client.clone(),
        urls: rc.metrics_urls.clone(),
        base: (base_end, base_done),
        started,
        timeout: rc.timeout,
    };
    let (samples, flood_seconds, warm) = watch
        .sample(&flood_task, hist_start.clone(), rc.warmup)
        .await?;
    let expected = flood_task.await??;
    std::fs::create_dir_all(&rc.out)?;
    expected.save(&rc.out.join("expected.jsonl"))?;
    let remaining = rc
        .timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(5));
    let verify = wait_until_synced(&store, &config.types, &expected, remaining).await?;
    let seconds_to_synced = started.elapsed().as_secs_f64();
    if rc.drop {
        store
            .database()
            .drop()
            .await
            .context("dropping the database after the run")?;
    }
    let hist_end = latency_buckets(&client, &rc.metrics_urls)
        .await
        .unwrap_or_default();
    let overall = delta(&hist_end, &hist_start);
    // Events synced after the warm-up: what a long-running producer and worker see, without
    // the first second of fresh connections and topics (docs/benchmarks.md, "Warm-up").
    let after_warmup = warm.map(|w| {
        let [p50, p90, p99, max_bound] = latency_summary(&delta(&hist_end, &w.hist));
        WarmLatency {
            after_s: w.after_s,
            p50,
            p90,
            p99,
            max_bound,
        }
    });
    let [latency_p50, latency_p90, latency_p99, latency_max_bound] = latency_summary(&overall);
    let dlq_after = {
        let c = config.clone();
        tokio::task::spawn_blocking(move || dead_letter_count(&c)).await?
    };
    let flood_seconds = flood_seconds.unwrap_or(seconds_to_synced);
    let stages_end = stage_histograms(&client, &rc.metrics_urls).await;
    let (stages, batch_size) = stages_over_run(&stages_start, &stages_end);
    let report = RunReport {
        events: expected.produced,
        poison: expected.poison,
        seconds_to_synced,
        flood_seconds,
        produced_per_s: expected.produced as f64 / flood_seconds.max(0.001),
        synced_per_s: expected.produced as f64 / seconds_to_synced.max(0.001),
        max_lag: samples.iter().map(|s| s.lag).max().unwrap_or(0),
        latency_p50,
        latency_p90,
        latency_p99,
        latency_max_bound,
        after_warmup,
        dead_lettered: dlq_after - dlq_before,
        stages,
        batch_size,
        verify,
        samples,
    };
    crate::report::write(&rc.out, &report)?;
    Ok(report)
}
