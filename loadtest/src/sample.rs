//! Sampling a running system once a second: what the broker says (produced, committed, lag)
//! and what the workers' `/metrics` say (end-to-end latency histogram).

use std::collections::BTreeMap;
use std::time::Duration;

use leafsync_core::Config;
use leafsync_kafka::offsets::positions;
use leafsync_kafka::ClientConfigExt as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::fleet::autoscale::PartitionOffsets;

/// One sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// Sum of high watermarks over the image topics (events in Kafka).
    pub produced: i64,
    /// Sum of the group's committed offsets (events synced and committed).
    pub committed: i64,
    /// produced − committed: the lag KEDA sees.
    pub lag: i64,
    /// Events/s produced since the previous sample.
    pub produced_per_s: f64,
    /// Events/s committed since the previous sample.
    pub synced_per_s: f64,
    /// End-to-end latency of events synced since the previous sample (seconds), from the
    /// workers' histogram; `None` without metrics.
    pub p50: Option<f64>,
    /// 90th percentile, same source.
    pub p90: Option<f64>,
    /// 99th percentile, same source.
    pub p99: Option<f64>,
}

/// Reads group offsets and watermarks.
pub struct OffsetProbe {
    consumer: BaseConsumer,
    tpl: TopicPartitionList,
}

impl std::fmt::Debug for OffsetProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffsetProbe")
            .field("partitions", &self.tpl.count())
            .finish_non_exhaustive()
    }
}

impl OffsetProbe {
    /// For the worker group and image topics of `config`.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = config
            .kafka
            .client_config_with(&[
                ("group.id", &config.kafka.group_id),
                ("enable.auto.commit", "false"),
            ])
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for topic in config.types.topics() {
            let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            for t in md.topics() {
                for p in t.partitions() {
                    tpl.add_partition(t.name(), p.id());
                }
            }
        }
        Ok(Self { consumer, tpl })
    }

    /// `topic/partition` of each partition, in the order of
    /// [`read_partitions`](Self::read_partitions).
    pub fn names(&self) -> Vec<String> {
        self.tpl
            .elements()
            .iter()
            .map(|e| format!("{}/{}", e.topic(), e.partition()))
            .collect()
    }

    /// Each partition's committed offset (`None` before the group's first commit) and
    /// watermarks, as KEDA's scaler reads them. Blocking.
    pub fn read_partitions(&self) -> anyhow::Result<Vec<PartitionOffsets>> {
        let committed = self
            .consumer
            .committed_offsets(self.tpl.clone(), Duration::from_secs(10))?;
        committed
            .elements()
            .iter()
            .map(|e| {
                let (earliest, latest) = self.consumer.fetch_watermarks(
                    e.topic(),
                    e.partition(),
                    Duration::from_secs(10),
                )?;
                let committed = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                Ok(PartitionOffsets {
                    committed,
                    earliest,
                    latest,
                })
            })
            .collect()
    }

    /// (sum of high watermarks, sum of committed offsets). Blocking.
    pub fn read(&self) -> anyhow::Result<(i64, i64)> {
        let committed = self
            .consumer
            .committed_offsets(self.tpl.clone(), Duration::from_secs(10))?;
        let (mut end, mut done) = (0, 0);
        for p in positions(&self.consumer, &committed, Duration::from_secs(10)) {
            let p = p?;
            end += p.end;
            done += p.committed;
        }
        Ok((end, done))
    }
}

/// Cumulative histogram buckets (upper bound → count) of `leafsync_worker_e2e_latency_seconds`,
/// summed over topics and over every metrics URL.
pub async fn latency_buckets(
    client: &reqwest::Client,
    urls: &[String],
) -> Option<BTreeMap<String, f64>> {
    let pages = scrape(client, urls).await?;
    Some(histogram(
        &pages,
        "leafsync_worker_e2e_latency_seconds",
        None,
    ))
}

/// The `/metrics` page of every URL that answers; `None` when none does.
pub async fn scrape(client: &reqwest::Client, urls: &[String]) -> Option<Vec<String>> {
    let mut pages = Vec::new();
    for url in urls {
        let Ok(r) = client.get(url).timeout(Duration::from_secs(2)).send().await else {
            continue;
        };
        if let Ok(body) = r.text().await {
            pages.push(body);
        }
    }
    (!pages.is_empty()).then_some(pages)
}

/// Cumulative buckets of histogram `metric` in `pages`, restricted to samples whose label
/// `select.0` is `select.1` (all samples when `None`), summed over the pages.
pub fn histogram(
    pages: &[String],
    metric: &str,
    select: Option<(&str, &str)>,
) -> BTreeMap<String, f64> {
    let prefix = format!("{metric}_bucket{{");
    let wanted = select.map(|(k, v)| format!("{k}=\"{v}\""));
    let mut out: BTreeMap<String, f64> = BTreeMap::new();
    for line in pages
        .iter()
        .flat_map(|p| p.lines())
        .filter(|l| l.starts_with(&prefix))
    {
        if wanted.as_ref().is_some_and(|w| !line.contains(w.as_str())) {
            continue;
        }
        let le = line.split("le=\"").nth(1).and_then(|r| r.split('"').next());
        let v = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(le), Some(v)) = (le, v) {
            *out.entry(le.to_owned()).or_default() += v;
        }
    }
    out
}

/// Buckets as (upper bound, cumulative count), ascending; `+Inf` last.
fn sorted_buckets(buckets: &BTreeMap<String, f64>) -> Vec<(f64, f64)> {
    let mut b: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(le, c)| (le.parse().unwrap_or(f64::INFINITY), *c))
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    b
}

/// The `q` quantile of a cumulative histogram (bucket bound → count), by linear interpolation
/// inside the bucket, as Prometheus' `histogram_quantile` does.
pub fn quantile(buckets: &BTreeMap<String, f64>, q: f64) -> Option<f64> {
    let b = sorted_buckets(buckets);
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut prev_le, mut prev_c) = (0.0, 0.0);
    for (le, c) in b {
        if c >= rank {
            if le.is_infinite() {
                return Some(prev_le);
            }
            let frac = if c > prev_c {
                (rank - prev_c) / (c - prev_c)
            } else {
                1.0
            };
            return Some(prev_le + (le - prev_le) * frac);
        }
        (prev_le, prev_c) = (le, c);
    }
    None
}

/// The upper bound of the highest non-empty bucket: the most a latency can have been.
pub fn max_bound(buckets: &BTreeMap<String, f64>) -> Option<f64> {
    let b = sorted_buckets(buckets);
    let total = b.last()?.1;
    b.into_iter()
        .find(|(_, c)| *c >= total && total > 0.0)
        .map(|(le, _)| le)
}

/// Per-bucket difference `now − before` (the histogram of the interval).
pub fn delta(now: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    now.iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = h(&[("0.1", 50.0), ("0.5", 90.0), ("1", 100.0), ("+Inf", 100.0)]);
        assert!((quantile(&b, 0.5).unwrap() - 0.1).abs() < 1e-9);
        assert!((quantile(&b, 0.25).unwrap() - 0.05).abs() < 1e-9);
        assert!((quantile(&b, 0.7).unwrap() - 0.3).abs() < 1e-9);
        assert!((quantile(&b, 0.99).unwrap() - 0.95).abs() < 1e-9);
        assert_eq!(quantile(&h(&[("+Inf", 0.0)]), 0.5), None);
        let d = delta(
            &b,
            &h(&[("0.1", 40.0), ("0.5", 40.0), ("1", 40.0), ("+Inf", 40.0)]),
        );
        assert_eq!(d["0.1"], 10.0);
        assert_eq!(d["+Inf"], 60.0);
    }
}
