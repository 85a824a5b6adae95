//! `report.json` and a self-contained `report.html` with charts (SVG drawn by plotters) of
//! throughput, lag and latency over time.

use std::path::Path;

use plotters::prelude::*;
use serde::Serialize;

use crate::sample::Sample;
use crate::verify::Report as VerifyReport;

/// What a `run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Valid events produced.
    pub events: u64,
    /// Poison events produced.
    pub poison: u64,
    /// Seconds from the first produce to the database holding the expected state.
    pub seconds_to_synced: f64,
    /// Seconds the flood took.
    pub flood_seconds: f64,
    /// events / flood_seconds.
    pub produced_per_s: f64,
    /// events / seconds_to_synced.
    pub synced_per_s: f64,
    /// Largest lag seen.
    pub max_lag: i64,
    /// End-to-end latency percentiles over the run (seconds), from the workers' histogram.
    pub latency_p50: Option<f64>,
    /// 90th percentile.
    pub latency_p90: Option<f64>,
    /// 99th percentile.
    pub latency_p99: Option<f64>,
    /// Upper bound of the slowest histogram bucket hit.
    pub latency_max_bound: Option<f64>,
    /// The same over the events synced after the warm-up (`run --warmup`), if one was asked.
    pub after_warmup: Option<WarmLatency>,
    /// Dead letters counted on the dead-letter topic during the run.
    pub dead_lettered: i64,
    /// Per hot-path stage of the workers (`leafsync_worker_stage_seconds`), p50 and p99 over the
    /// run, seconds: where the end-to-end latency goes.
    pub stages: Vec<StageLatency>,
    /// Events per written batch over the run: p50 and p99.
    pub batch_size: (Option<f64>, Option<f64>),
    /// The final comparison.
    pub verify: VerifyReport,
    /// Once-a-second samples.
    pub samples: Vec<Sample>,
}

/// End-to-end latency over the events synced after the warm-up, seconds.
#[derive(Debug, Clone, Serialize)]
pub struct WarmLatency {
    /// When the warm-up ended (the first once-a-second sample after it), seconds into the run.
    pub after_s: f64,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Upper bound of the slowest histogram bucket hit.
    pub max_bound: Option<f64>,
}

/// One stage's latency over a run.
#[derive(Debug, Clone, Serialize)]
pub struct StageLatency {
    /// Stage name (`kafka`, `permit`, `gather`, `plan`, `dead_letter`, `write`, `store_offset`).
    pub stage: String,
    /// Median, seconds.
    pub p50: Option<f64>,
    /// 99th percentile, seconds.
    pub p99: Option<f64>,
}

/// One line of a chart: its legend, colour and (seconds, value) points.
pub(crate) type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

pub(crate) fn chart(title: &str, series: &[Series<'_>], y_label: &str) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 300)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.0))
            .fold(1.0, f64::max);
        let y_max = series
            .iter()
            .flat_map(|s| s.2.iter().map(|p| p.1))
            .fold(1.0, f64::max)
            * 1.1;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        c.configure_mesh()
            .x_desc("seconds")
            .y_desc(y_label)
            .draw()?;
        for (name, color, points) in series {
            let color = *color;
            c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// Writes `report.json` and `report.html` into `dir`.
pub fn write(dir: &Path, r: &RunReport) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    let pts = |f: fn(&Sample) -> Option<f64>| {
        r.samples
            .iter()
            .filter_map(|s| f(s).map(|v| (s.t, v)))
            .collect::<Vec<_>>()
    };
    let throughput = chart(
        "Throughput",
        &[
            ("produced/s", BLUE, pts(|s| Some(s.produced_per_s))),
            ("synced/s", GREEN, pts(|s| Some(s.synced_per_s))),
        ],
        "events/s",
    )?;
    let lag = chart(
        "Consumer lag",
        &[("lag", RED, pts(|s| Some(s.lag as f64)))],
        "events",
    )?;
    let latency = chart(
        "End-to-end latency (Kafka timestamp → database ack)",
        &[
            ("p50", GREEN, pts(|s| s.p50.map(|x| x * 1000.0))),
            ("p90", BLUE, pts(|s| s.p90.map(|x| x * 1000.0))),
            ("p99", RED, pts(|s| s.p99.map(|x| x * 1000.0))),
        ],
        "ms",
    )?;
    let fmt =
        |v: Option<f64>| v.map_or_else(|| "n/a".to_owned(), |x| format!("{:.1} ms", x * 1000.0));
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>leafsync load test</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 12px;text-align:left}}</style></head><body>\
         <h1>leafsync load test</h1><table>\
         <tr><th>events</th><td>{}</td></tr><tr><th>poison</th><td>{}</td></tr>\
         <tr><th>produced/s</th><td>{:.0}</td></tr><tr><th>synced/s (to exact state)</th><td>{:.0}</td></tr>\
         <tr><th>max lag</th><td>{}</td></tr><tr><th>latency p50 / p90 / p99 / max≤</th><td>{} / {} / {} / {}</td></tr>\
         <tr><th>verify</th><td>{}</td></tr></table>{throughput}{lag}{latency}</body></html>",
        r.events, r.poison, r.produced_per_s, r.synced_per_s, r.max_lag,
        fmt(r.latency_p50), fmt(r.latency_p90), fmt(r.latency_p99), fmt(r.latency_max_bound), r.verify.summary()
    );
    std::fs::write(dir.join("report.html"), html)?;
    Ok(())
}
