//! `leafsync-loadtest`: flood the topics, verify the consumer database, report throughput and
//! latency, measure the database's raw ceiling.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use leafsync_core::{process, Config, Store};
use leafsync_loadtest::expected::Expected;
use leafsync_loadtest::flood::{flood, progress, FloodConfig};
use leafsync_loadtest::generator::GenConfig;
use leafsync_loadtest::report::RunReport;
use leafsync_loadtest::run::{dead_letter_count, run, RunConfig};
use leafsync_loadtest::staleness::{mutate_source, MutateConfig};
use leafsync_loadtest::verify::{wait_until_synced, Report};
use leafsync_loadtest::{bench_db, seed, via_api};

#[derive(Parser)]
#[command(version, about = "Load generator and verifier for leafsync")]
struct Cli {
    /// TOML config file (also LEAFSYNC_CONFIG); env vars LEAFSYNC__SECTION__KEY override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct FloodArgs {
    /// Number of valid events to produce.
    #[arg(long, conflicts_with = "duration")]
    count: Option<u64>,
    /// Produce for this many seconds instead.
    #[arg(long)]
    duration: Option<u64>,
    /// Target events per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Ids per image type; the first event of an id creates it, the rest update or delete it.
    #[arg(long, default_value_t = 10_000)]
    ids_per_type: i64,
    /// Of the events on an existing id, the fraction that soft-deletes it.
    #[arg(long, default_value_t = 0.05)]
    delete_ratio: f64,
    /// RNG seed: the same seed gives the same events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fraction of extra bad events (each kind in turn) that must be dead-lettered.
    #[arg(long, default_value_t = 0.0)]
    poison_ratio: f64,
    /// Add a W3C traceparent header per event (spans go to telemetry.otlp_endpoint).
    #[arg(long)]
    trace: bool,
    /// updated_at of the first event (RFC 3339; default: now).
    #[arg(long)]
    start: Option<DateTime<Utc>>,
}

impl FloodArgs {
    fn to_config(&self) -> FloodConfig {
        FloodConfig {
            gen: GenConfig {
                seed: self.seed,
                ids_per_type: self.ids_per_type,
                delete_ratio: self.delete_ratio,
                start: self.start.unwrap_or_else(Utc::now),
            },
            count: self.count,
            duration: self.duration.map(Duration::from_secs),
            rate: self.rate,
            poison_ratio: self.poison_ratio,
            trace: self.trace,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Produce events and write the expected final state.
    Flood {
        #[command(flatten)]
        args: FloodArgs,
        /// Where to write the expected state.
        #[arg(long, default_value = "expected.jsonl")]
        expected: PathBuf,
    },
    /// Wait until the database holds exactly the expected state; exit 1 on lost or stale.
    Verify {
        /// Expected state written by `flood`.
        #[arg(long, default_value = "expected.jsonl")]
        expected: PathBuf,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Check through the HTTP API at this base URL instead of MongoDB (also checks /total).
        #[arg(long)]
        via_api: Option<String>,
    },
    /// Flood and verify while sampling throughput, lag and latency; write report.json/html.
    Run {
        #[command(flatten)]
        args: FloodArgs,
        /// Workers' /metrics URLs (for end-to-end latency); repeat for several workers.
        #[arg(
            long = "worker-metrics",
            default_value = "http://127.0.0.1:9464/metrics"
        )]
        worker_metrics: Vec<String>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Output directory.
        #[arg(long, default_value = "reports/latest")]
        out: PathBuf,
        /// Also report the latency of the events synced after this many seconds (0: not): a
        /// steady state without the first second of fresh connections and topics.
        #[arg(long, default_value_t = 0)]
        warmup: u64,
        /// Drop the database once verified: the MongoDB stand-in's cost per write grows with the
        /// collections it holds, so a benchmark that leaves its database behind slows the next.
        #[arg(long)]
        drop: bool,
    },
    /// Fill a backfill source with the current state of N images (a database on the configured
    /// MongoDB server and/or JSON Lines files) and write the expected state.
    SeedSource {
        /// Distinct images to create, over all types.
        #[arg(long, default_value_t = 100_000)]
        images: usize,
        /// Ids per image type (default: half of --images, so many images have several versions).
        #[arg(long)]
        ids_per_type: Option<i64>,
        /// Of the versions after an image's first, the fraction that soft-deletes it.
        #[arg(long, default_value_t = 0.05)]
        delete_ratio: f64,
        /// RNG seed: the same seed gives the same images.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// updated_at of the first version (RFC 3339; default: a day ago, so that the whole
        /// history, 1 ms per version, is in the past and a change made now is newer).
        #[arg(long)]
        start: Option<DateTime<Utc>>,
        /// Insert into this database (collections named like the consumer's).
        #[arg(long, required_unless_present = "jsonl_dir")]
        database: Option<String>,
        /// Write `{type}.jsonl` files into this directory.
        #[arg(long)]
        jsonl_dir: Option<PathBuf>,
        /// Where to write the expected state.
        #[arg(long, default_value = "expected.jsonl")]
        expected: PathBuf,
    },
    /// Change images of a backfill source at a steady rate (a producer database in use) and
    /// measure how long each change takes to become visible in the consumer database.
    MutateSource {
        /// The source database (collections named like the consumer's).
        #[arg(long)]
        database: String,
        /// Changes per second.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Seconds to change images for.
        #[arg(long, default_value_t = 300)]
        duration: u64,
        /// Seconds to keep watching after the last change.
        #[arg(long, default_value_t = 180)]
        grace: u64,
        /// RNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// The autoscaling drill: KEDA's metric and the HPA's count, computed from the shipped
    /// ScaledObject and Deployment every HPA sync, carried out with real worker processes under a
    /// traffic profile; verifies, and writes report.json/html.
    Fleet {
        /// Traffic shape.
        #[arg(long, value_enum, default_value = "step")]
        profile: leafsync_loadtest::fleet::Profile,
        /// Events/s outside the peak.
        #[arg(long, default_value_t = 500.0)]
        base: f64,
        /// Events/s at the peak (for `steady`, the one rate).
        #[arg(long, default_value_t = 5000.0)]
        peak: f64,
        /// Run the model clock this many times faster: windows, periods, the lag threshold and the
        /// workers' commit interval shrink by it (a shorter drill with the same decisions); the
        /// report prints it.
        #[arg(long, default_value_t = 1.0)]
        time_scale: f64,
        /// The ScaledObject as deployed.
        #[arg(long, default_value = "keda/scaledobject.yaml")]
        scaled_object: PathBuf,
        /// The worker Deployment as deployed.
        #[arg(long, default_value = "k8s/base/worker.yaml")]
        deployment: PathBuf,
        /// The worker binary (default: leafsync-worker beside this one).
        #[arg(long)]
        worker_bin: Option<PathBuf>,
        /// Ids per image type.
        #[arg(long, default_value_t = 1000)]
        ids_per_type: i64,
        /// RNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up verifying after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Output directory.
        #[arg(long, default_value = "reports/fleet")]
        out: PathBuf,
    },
    /// Measure the database's raw write ceiling with batched guarded upserts.
    BenchDb {
        /// Documents to write.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// Documents per command (repeat to sweep).
        #[arg(long = "batch", default_value = "500")]
        batches: Vec<usize>,
        /// How the writes learn each event's outcome: `raw` (not at all: the ceiling), `reply`,
        /// `read` (a read first) or `auto` (the worker's default); see `worker.outcomes`. Repeat
        /// to compare.
        #[arg(long = "write", value_enum, default_value = "raw")]
        forms: Vec<bench_db::WriteForm>,
        /// What the database holds before the clock starts: `none` (inserts), `older`
        /// (updates), `equal` (replays), `newer` (stale events).
        #[arg(long, value_enum, default_value = "none")]
        stored: bench_db::Stored,
        /// RNG seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write into this database (default: a fresh one, dropped afterwards).
        #[arg(long)]
        database: Option<String>,
        /// Keep the written documents (e.g. to benchmark the API on them).
        #[arg(long)]
        keep: bool,
        /// Write potato documents with ids 1..=count (a dense key space for read benchmarks).
        #[arg(long)]
        sequential: bool,
        /// Concurrent writers (the worker writes up to worker.max_in_flight_batches at once).
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
}

fn print_report(r: &Report, dead_lettered: Option<(i64, u64)>) {
    println!("{}", r.summary());
    for (what, list) in [
        ("lost", &r.lost),
        ("stale", &r.stale),
        ("mismatched", &r.mismatched),
        ("unexpected", &r.unexpected),
    ] {
        if !list.is_empty() {
            println!(
                "  {what}: {}{}",
                list.iter().take(10).cloned().collect::<Vec<_>>().join(", "),
                if list.len() > 10 { ", …" } else { "" }
            );
        }
    }
    if let Some((got, want)) = dead_lettered {
        println!("dead-letter topic: {got} messages (poison sent in this run: {want})");
    }
}

/// Width of the run summary's labels (the longest is `  stage store_offset p50/p99`).
const W: usize = 30;

/// The `run` summary on stdout: throughput, lag, latency and its stages, batch sizes, the
/// verification, and where the report is.
fn print_run_summary(r: &RunReport, out: &std::path::Path) {
    let ms = |v: Option<f64>| v.map_or_else(|| "n/a".into(), |x| format!("{:.1} ms", x * 1000.0));
    println!("{:<W$}{}", "events", r.events);
    println!(
        "{:<W$}{} / {}",
        "poison / dead-lettered", r.poison, r.dead_lettered
    );
    println!(
        "{:<W$}{:.0}/s over {:.1} s",
        "produced", r.produced_per_s, r.flood_seconds
    );
    if r.verify.is_exact() {
        println!(
            "{:<W$}{:.0}/s ({:.1} s to exact state)",
            "synced", r.synced_per_s, r.seconds_to_synced
        );
    } else {
        println!(
            "{:<W$}{:.0}/s (NOT exact after {:.1} s, see below)",
            "synced", r.synced_per_s, r.seconds_to_synced
        );
    }
    println!("{:<W$}{}", "max lag", r.max_lag);
    let latency = |label: &str, [p50, p90, p99, max]: [Option<f64>; 4]| {
        println!(
            "{label:<W$}{} / {} / {} / ≤{}",
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max)
        );
    };
    latency(
        "latency p50/p90/p99/max",
        [
            r.latency_p50,
            r.latency_p90,
            r.latency_p99,
            r.latency_max_bound,
        ],
    );
    if let Some(w) = &r.after_warmup {
        latency(
            &format!("  after {:.0} s warm-up", w.after_s),
            [w.p50, w.p90, w.p99, w.max_bound],
        );
    }
    for st in &r.stages {
        println!(
            "{:<W$}{} / {}",
            format!("  stage {} p50/p99", st.stage),
            ms(st.p50),
            ms(st.p99)
        );
    }
    let n = |v: Option<f64>| v.map_or_else(|| "n/a".into(), |x| format!("{x:.0}"));
    println!(
        "{:<W$}{} / {}",
        "batch size p50/p99",
        n(r.batch_size.0),
        n(r.batch_size.1)
    );
    print_report(&r.verify, None);
    println!(
        "report: {}/report.html ({}/report.json)",
        out.display(),
        out.display()
    );
}

async fn main_async(
    config: Config,
    config_file: Option<PathBuf>,
    command: Command,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<bool> {
    match command {
        Command::Fleet {
            profile,
            base,
            peak,
            time_scale,
            scaled_object,
            deployment,
            worker_bin,
            ids_per_type,
            seed,
            timeout,
            out,
        } => {
            anyhow::ensure!(time_scale >= 1.0, "--time-scale must be at least 1");
            let worker_bin = match worker_bin {
                Some(b) => b,
                None => std::env::current_exe()?.with_file_name("leafsync-worker"),
            };
            let fc = leafsync_loadtest::fleet::FleetConfig {
                profile,
                base,
                peak,
                time_scale,
                scaled_object,
                deployment,
                worker_bin,
                config_file: config_file
                    .or_else(|| std::env::var_os("LEAFSYNC_CONFIG").map(PathBuf::from)),
                gen: GenConfig {
                    seed,
                    ids_per_type,
                    delete_ratio: 0.05,
                    start: Utc::now(),
                },
                timeout: Duration::from_secs(timeout),
                out: out.clone(),
            };
            let r = leafsync_loadtest::fleet::drill(&config, fc, shutdown).await?;
            let s = &r.summary;
            let secs =
                |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |x| format!("{x:.0} s"));
            println!(
                "fleet drill {:?}, time scale {} (model seconds below)",
                r.profile, r.time_scale
            );
            println!(
                "  first scale-up after the step  {}",
                secs(s.first_scale_up_s)
            );
            println!(
                "  lag back under threshold       {}",
                secs(s.lag_under_threshold_s)
            );
            println!(
                "  peak lag / replicas            {} / {}",
                s.peak_lag, s.peak_replicas
            );
            println!(
                "  scale-in delay                 {}",
                secs(s.scale_in_delay_s)
            );
            println!(
                "  scale events / reversals       {} / {}",
                s.scale_events, s.reversals
            );
            for c in &r.cpu {
                println!(
                    "  cpu {:<28} {:.1} s ({:.0}% of a core)",
                    c.process, c.seconds, c.percent
                );
            }
            print_report(&r.verify, None);
            println!(
                "report: {}/report.html ({}/report.json)",
                out.display(),
                out.display()
            );
            Ok(r.verify.is_exact())
        }
        Command::Flood { args, expected } => {
            let fc = args.to_config();
            let x = flood(&config, &fc, progress(fc.count)).await?;
            x.save(&expected)?;
            println!(
                "produced {} events and {} poison; expected state of {} images in {}",
                x.produced,
                x.poison,
                x.images.len(),
                expected.display()
            );
            Ok(true)
        }
        Command::Verify {
            expected,
            timeout,
            via_api,
        } => {
            let x = Expected::load(&expected)?;
            let timeout = Duration::from_secs(timeout);
            match via_api {
                Some(base) => {
                    let (r, totals) = via_api::check(&config, &base, &x, timeout).await?;
                    let c = config.clone();
                    let dlq = tokio::task::spawn_blocking(move || dead_letter_count(&c)).await?;
                    print_report(&r, Some((dlq, x.poison)));
                    for t in &totals {
                        println!("  /total mismatch: {t}");
                    }
                    Ok(r.is_exact() && totals.is_empty() && dlq >= x.poison as i64)
                }
                None => {
                    let store = Store::connect(&config.mongo, "leafsync-loadtest").await?;
                    let r = wait_until_synced(&store, &config.types, &x, timeout).await?;
                    let c = config.clone();
                    let dlq = tokio::task::spawn_blocking(move || dead_letter_count(&c)).await?;
                    print_report(&r, Some((dlq, x.poison)));
                    // The topic may also hold earlier runs' dead letters, so fewer is what fails.
                    Ok(r.is_exact() && dlq >= x.poison as i64)
                }
            }
        }
        Command::Run {
            args,
            worker_metrics,
            timeout,
            out,
            warmup,
            drop,
        } => {
            let rc = RunConfig {
                flood: args.to_config(),
                metrics_urls: worker_metrics,
                timeout: Duration::from_secs(timeout),
                out: out.clone(),
                warmup: Duration::from_secs(warmup),
                drop,
            };
            let r = run(&config, rc).await?;
            print_run_summary(&r, &out);
            Ok(r.verify.is_exact() && r.dead_lettered >= r.poison as i64)
        }
        Command::SeedSource {
            images,
            ids_per_type,
            delete_ratio,
            seed,
            start,
            database,
            jsonl_dir,
            expected,
        } => {
            let gen = GenConfig {
                seed,
                ids_per_type: ids_per_type.unwrap_or((images as i64 / 2).max(1)),
                delete_ratio,
                start: start.unwrap_or_else(|| Utc::now() - chrono::TimeDelta::days(1)),
            };
            seed_source(&config, gen, images, database, jsonl_dir, &expected).await
        }
        Command::MutateSource {
            database,
            rate,
            duration,
            grace,
            seed,
        } => {
            let cfg = MutateConfig {
                source_database: database,
                rate,
                duration: Duration::from_secs(duration),
                grace: Duration::from_secs(grace),
                seed,
            };
            let s = mutate_source(&config, &cfg).await?;
            println!(
                "changes {} seen {} unseen {}; change → visible: p50 {:.1} s, p90 {:.1} s, p99 {:.1} s, mean {:.1} s, max {:.1} s",
                s.changes, s.seen, s.unseen, s.p50, s.p90, s.p99, s.mean, s.max
            );
            Ok(s.unseen == 0)
        }
        Command::BenchDb {
            count,
            batches,
            forms,
            stored,
            seed,
            database,
            keep,
            sequential,
            concurrency,
        } => {
            let spec = |batch, form| bench_db::BenchSpec {
                count,
                batch,
                form,
                stored,
                concurrency,
                sequential,
                keep,
            };
            for batch in batches {
                for &form in &forms {
                    bench_db_once(&config, seed, spec(batch, form), database.clone()).await?;
                }
            }
            Ok(true)
        }
    }
}

/// `seed-source`: writes `images` images of `gen`'s history into a source database and/or JSON
/// Lines files, and their expected state into `expected`.
async fn seed_source(
    config: &Config,
    gen: GenConfig,
    images: usize,
    database: Option<String>,
    jsonl_dir: Option<PathBuf>,
    expected: &std::path::Path,
) -> anyhow::Result<bool> {
    let ids_per_type = gen.ids_per_type;
    anyhow::ensure!(
        ids_per_type.saturating_mul(3) >= images as i64,
        "--images {images} cannot be reached with --ids-per-type {ids_per_type} (3 types)"
    );
    let x = seed::images(gen, images);
    if let Some(db) = &database {
        let cfg = leafsync_core::config::MongoConfig {
            database: db.clone(),
            ..config.mongo.clone()
        };
        let source = Store::connect(&cfg, "leafsync-loadtest").await?;
        seed::to_database(&source, |t| config.types.get(t).collection.clone(), &x).await?;
        println!("database {db}: {} images", x.images.len());
    }
    if let Some(dir) = &jsonl_dir {
        for (t, path) in seed::to_json_lines(dir, &x)? {
            println!("{t}: {}", path.display());
        }
    }
    x.save(expected)?;
    println!(
        "{} images from {} versions; expected state in {}",
        x.images.len(),
        x.produced,
        expected.display()
    );
    Ok(true)
}

/// One `bench-db` run: `spec` into `database` (default: a fresh one), its rate on stdout.
async fn bench_db_once(
    config: &Config,
    seed: u64,
    spec: bench_db::BenchSpec,
    database: Option<String>,
) -> anyhow::Result<()> {
    let gen = GenConfig {
        seed,
        ids_per_type: spec.count as i64,
        delete_ratio: 0.0,
        start: Utc::now(),
    };
    let db = database.unwrap_or_else(|| format!("leafsync_bench_{}", std::process::id()));
    let r = bench_db::bench_db(config, gen, spec, &db).await?;
    println!(
        "bench-db batch={:<6} concurrency={} docs={:<8} {:>8.0} docs/s  ({:.2} s, write={:?}, stored={:?})",
        r.batch, r.concurrency, r.docs, r.docs_per_s, r.seconds, r.form, r.stored
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match process::load_config("leafsync-loadtest", cli.config.as_deref()) {
        Ok(c) => c,
        Err(code) => return code,
    };
    process::run("leafsync-loadtest", config, |config, token| async move {
        main_async(config, cli.config, cli.command, token)
            .await
            .map_err(|e| format!("{e:#}").into())
    })
}
