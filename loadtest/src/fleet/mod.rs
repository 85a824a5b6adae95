//! `fleet`: the autoscaling drill. No cluster runs here, but the two halves that decide what a
//! KEDA-scaled fleet does can: KEDA's metric and the HPA's arithmetic ([`autoscale`], with the
//! settings of the shipped files, [`settings`]), and real `leafsync-worker` processes on the real
//! broker, started and stopped to match the count the HPA asks for, under a traffic profile.
//!
//! The HPA asks KEDA's metrics server for the metric at each of its syncs (every 15 s,
//! kube-controller-manager's `--horizontal-pod-autoscaler-sync-period`, podautoscaler
//! config/v1alpha1/defaults.go l.40-41), and KEDA computes it then: it caches a value only with
//! `useCachedMetrics` (keda scale_handler.go l.851-858). `pollingInterval` drives only KEDA's own
//! 0 ↔ 1 activation, which `minReplicaCount` ≥ 1 never uses. So the drill computes the metric and
//! the count once per HPA sync.
//!
//! A time scale `k` runs the model clock `k` times faster than real time: the HPA's syncs, its
//! windows and periods, and the profile all happen `k` times sooner, and the lag threshold (a
//! rate × a catch-up time; the rates stay real) is divided by `k`, so a drill `k` times shorter
//! makes the same decisions. The workers' commit interval is divided by `k` too: the lag KEDA
//! reads includes up to one commit interval of events, which would otherwise weigh `k` times
//! more against the divided threshold. The processes (start-up, drain, the kubelet's grace
//! period) stay real. Reported times are model seconds.

pub mod autoscale;
pub mod settings;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use leafsync_core::{Config, Store};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::expected::Expected;
use crate::generator::{GenConfig, Generator};
use crate::producer::EventProducer;
use crate::sample::{delta, histogram, quantile, scrape, OffsetProbe};
use crate::verify::{wait_until_synced, Report as VerifyReport};
use autoscale::{Decision, Hpa, PartitionOffsets};
use settings::Settings;

/// The HPA's sync period, seconds.
const HPA_SYNC_S: f64 = 15.0;
/// The report's series: one point per this many model seconds.
const WINDOW_S: f64 = 10.0;

/// A traffic shape, in model seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// base for 60 s, peak for 300 s, base for 600 s.
    Step,
    /// base for 60 s, peak for 10 s, base for 600 s.
    Spike,
    /// base for 60 s, four 120 s ramps from base to peak, base for 600 s.
    Sawtooth,
    /// peak (choose it near a threshold) for 600 s: does the fleet flap?
    Steady,
}

impl Profile {
    /// Events/s at model time `t`; `None` once the profile has ended.
    pub fn rate(self, t: f64, base: f64, peak: f64) -> Option<f64> {
        let (head, body, tail) = match self {
            Self::Step => (60.0, 300.0, 600.0),
            Self::Spike => (60.0, 10.0, 600.0),
            Self::Sawtooth => (60.0, 480.0, 600.0),
            Self::Steady => (0.0, 600.0, 0.0),
        };
        if t >= head + body + tail {
            return None;
        }
        if t < head || t >= head + body {
            return Some(base);
        }
        Some(match self {
            Self::Sawtooth => base + (peak - base) * (((t - head) % 120.0) / 120.0),
            _ => peak,
        })
    }

    /// When the raised load starts and ends (model seconds).
    fn peak_window(self) -> (f64, f64) {
        match self {
            Self::Step => (60.0, 360.0),
            Self::Spike => (60.0, 70.0),
            Self::Sawtooth => (60.0, 540.0),
            Self::Steady => (0.0, 600.0),
        }
    }
}

/// What to drill.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub profile: Profile,
    /// Events/s outside the peak.
    pub base: f64,
    /// Events/s at the peak.
    pub peak: f64,
    /// `k` (≥ 1): windows, periods and the lag threshold are divided by it.
    pub time_scale: f64,
    /// The deployed ScaledObject (`keda/scaledobject.yaml`).
    pub scaled_object: PathBuf,
    /// The worker Deployment (`k8s/base/worker.yaml`).
    pub deployment: PathBuf,
    /// The `leafsync-worker` binary to run.
    pub worker_bin: PathBuf,
    /// Passed to the workers as `LEAFSYNC_CONFIG`.
    pub config_file: Option<PathBuf>,
    pub gen: GenConfig,
    /// Give up verifying after this long (real time).
    pub timeout: Duration,
    /// Output directory (report.json, report.html, worker logs).
    pub out: PathBuf,
}

/// One HPA sync.
#[derive(Debug, Clone, Serialize)]
pub struct Poll {
    /// Model seconds since the start.
    pub t: f64,
    /// KEDA's metric (capped total lag).
    pub metric: i64,
    /// Uncapped total lag, for reference.
    pub lag: i64,
    pub spec_replicas: i32,
    pub status_replicas: i32,
    pub metric_replicas: i32,
    pub stabilized: i32,
    pub desired: i32,
    /// Worker processes running (started, not told to stop) once the decision was carried out.
    pub running_after: i32,
}

/// One point of the series.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub t: f64,
    pub wanted: i32,
    pub running: i32,
    pub lag: i64,
    pub produced_per_s: f64,
    /// End-to-end latency of the events written in the window, seconds.
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// A change of the count, and what the group went through until the next one.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleEvent {
    pub t: f64,
    pub from: i32,
    pub to: i32,
    /// Assignments the workers received (a rebalance gives one per member).
    pub assignments: u64,
    /// Each partition whose committed offset stood still with lag for more than 2 s (real):
    /// `topic/partition` and for how long, longest first. A partition that moves stands still from
    /// its old owner's last commit to its new owner's first.
    pub idle_partitions: Vec<(String, f64)>,
    /// The longest of those, real seconds.
    pub longest_idle_s: f64,
}

/// CPU used over the drill.
#[derive(Debug, Clone, Serialize)]
pub struct Cpu {
    pub process: String,
    pub seconds: f64,
    /// Of one core, averaged over the drill.
    pub percent: f64,
}

/// What the shipped settings did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// From the start of the peak to the first scale-up (model s).
    pub first_scale_up_s: Option<f64>,
    /// From the start of the peak until the metric was back under lagThreshold × replicas.
    pub lag_under_threshold_s: Option<f64>,
    pub peak_lag: i64,
    pub peak_replicas: i32,
    /// From the end of the peak to the first scale-down (model s).
    pub scale_in_delay_s: Option<f64>,
    /// Scale events whose direction reversed the previous one's.
    pub reversals: usize,
    pub scale_events: usize,
}

/// `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub profile: Profile,
    pub time_scale: f64,
    pub base: f64,
    pub peak: f64,
    /// The settings of the files and, applied, divided by the time scale.
    pub lag_threshold: (i64, i64),
    pub hpa_sync_s: (f64, f64),
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub summary: Summary,
    pub polls: Vec<Poll>,
    pub windows: Vec<Window>,
    pub scale_events: Vec<ScaleEvent>,
    pub cpu: Vec<Cpu>,
    /// Workers that exited on their own during the drill (replaced at once).
    pub worker_restarts: u32,
    pub verify: VerifyReport,
}

/// Runs the drill; the report is also written to `fc.out`.
pub async fn drill(
    config: &Config,
    fc: FleetConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<FleetReport> {
    let shipped = Settings::load(&fc.scaled_object, &fc.deployment)?;
    let s = shipped.time_scaled(fc.time_scale);
    let k = fc.time_scale;
    let store = Store::connect(&config.mongo, "leafsync-loadtest").await?;
    std::fs::create_dir_all(fc.out.join("workers"))?;
    let commit_ms = ((config.worker.commit_interval_ms as f64 / k).round() as u64).max(1);
    let grace = Duration::from_secs(u64::from(s.grace_period_s));
    let mut fleet = Fleet::new(&fc, grace, commit_ms);
    let cpu_start = ProcCpu::read_stack();
    // The Deployment starts at the minimum.
    fleet.scale_to(s.min_replicas)?;
    let started = Instant::now();
    let producing = tokio::spawn(produce(config.clone(), fc.clone(), started));
    let mut l = Loop::new(&s, k, started, fleet, OffsetProbe::new(config)?).await;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // After the profile the HPA goes on until the fleet is back at its minimum (the scale-in is
    // part of what the drill shows), or until the timeout.
    let mut ended: Option<Instant> = None;
    loop {
        if producing.is_finished() {
            let at = *ended.get_or_insert_with(Instant::now);
            if l.fleet.spec <= s.min_replicas || at.elapsed() > fc.timeout {
                break;
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => {
                producing.abort();
                l.fleet.stop_all().await;
                anyhow::bail!("interrupted: the drill stopped its workers and did not verify");
            }
        }
        l.step().await?;
    }
    let expected = producing.await??;
    expected.save(&fc.out.join("expected.jsonl"))?;
    let verify = tokio::select! {
        v = wait_until_synced(&store, &config.types, &expected, fc.timeout) => v?,
        () = shutdown.cancelled() => {
            l.fleet.stop_all().await;
            anyhow::bail!("interrupted while verifying: the drill stopped its workers");
        }
    };
    l.close_event().await;
    let Loop {
        mut fleet,
        polls,
        windows,
        events,
        ..
    } = l;
    let elapsed = started.elapsed().as_secs_f64();
    let mut cpu = fleet.stop_all().await;
    cpu.extend(ProcCpu::read_stack().since(&cpu_start));
    for c in &mut cpu {
        c.percent = 100.0 * c.seconds / elapsed;
    }
    let summary = summarize(&polls, fc.profile, s.trigger.lag_threshold);
    let report = FleetReport {
        profile: fc.profile,
        time_scale: k,
        base: fc.base,
        peak: fc.peak,
        lag_threshold: (shipped.trigger.lag_threshold, s.trigger.lag_threshold),
        hpa_sync_s: (HPA_SYNC_S, HPA_SYNC_S / k),
        min_replicas: s.min_replicas,
        max_replicas: s.max_replicas,
        summary,
        polls,
        windows,
        scale_events: events,
        cpu,
        worker_restarts: fleet.restarts,
        verify,
    };
    write(&fc.out, &report)?;
    Ok(report)
}

/// The control loop's state: the HPA, the fleet it sizes, and what the report collects.
struct Loop {
    k: f64,
    started: Instant,
    trigger: autoscale::KafkaTrigger,
    hpa: Hpa,
    fleet: Fleet,
    offsets: Arc<OffsetProbe>,
    names: Vec<String>,
    client: reqwest::Client,
    polls: Vec<Poll>,
    windows: Vec<Window>,
    events: Vec<ScaleEvent>,
    idle: IdleTracker,
    next_sync: Instant,
    next_window: Instant,
    /// Model time, events produced and the e2e histogram when the current window began.
    window_start: (f64, i64, BTreeMap<String, f64>),
}

impl Loop {
    async fn new(
        s: &Settings,
        k: f64,
        started: Instant,
        mut fleet: Fleet,
        offsets: OffsetProbe,
    ) -> Self {
        let client = reqwest::Client::new();
        let hist = fleet.histograms(&client).await;
        Self {
            k,
            started,
            trigger: s.trigger.clone(),
            hpa: Hpa::new(
                s.min_replicas,
                s.max_replicas,
                s.trigger.lag_threshold,
                s.up.clone(),
                s.down.clone(),
            ),
            fleet,
            names: offsets.names(),
            offsets: Arc::new(offsets),
            client,
            polls: Vec::new(),
            windows: Vec::new(),
            events: Vec::new(),
            idle: IdleTracker::default(),
            next_sync: Instant::now(),
            next_window: Instant::now() + Duration::from_secs_f64(WINDOW_S / k),
            window_start: (0.0, 0, hist),
        }
    }

    fn model_now(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * self.k
    }

    /// One tick: the offsets, the workers' exits, and the HPA's sync and the report's window when
    /// they are due.
    async fn step(&mut self) -> anyhow::Result<()> {
        let o = self.offsets.clone();
        let parts = tokio::task::spawn_blocking(move || o.read_partitions()).await??;
        let lag: i64 = parts
            .iter()
            .map(|p| p.latest - p.committed.unwrap_or(p.earliest))
            .sum();
        self.idle
            .observe(&parts, self.started.elapsed().as_secs_f64());
        self.fleet.reap()?;
        if Instant::now() >= self.next_sync {
            self.next_sync += Duration::from_secs_f64(HPA_SYNC_S / self.k);
            self.sync(&parts, lag).await?;
        }
        if Instant::now() >= self.next_window {
            self.next_window += Duration::from_secs_f64(WINDOW_S / self.k);
            self.window(&parts, lag).await;
        }
        Ok(())
    }

    /// The HPA's sync: KEDA's metric, the count, and the fleet made to match.
    async fn sync(&mut self, parts: &[PartitionOffsets], lag: i64) -> anyhow::Result<()> {
        let metric = self.trigger.total_lag(parts);
        let d: Decision = self.hpa.sync(
            self.model_now(),
            self.fleet.spec,
            self.fleet.running(),
            metric,
        );
        if d.desired != d.spec_replicas {
            self.close_event().await;
            let assignments = self.fleet.assignments(&self.client).await;
            self.events.push(ScaleEvent::open(
                d.at_s,
                d.spec_replicas,
                d.desired,
                assignments,
            ));
            tracing::info!("{d}");
        }
        self.fleet.scale_to(d.desired)?;
        self.polls.push(Poll {
            t: d.at_s,
            metric,
            lag,
            spec_replicas: d.spec_replicas,
            status_replicas: d.status_replicas,
            metric_replicas: d.metric_replicas,
            stabilized: d.stabilized,
            desired: d.desired,
            running_after: self.fleet.running(),
        });
        Ok(())
    }

    /// Ends the current window of the series.
    async fn window(&mut self, parts: &[PartitionOffsets], lag: i64) {
        let hist = self.fleet.histograms(&self.client).await;
        let produced = parts.iter().map(|p| p.latest).sum::<i64>();
        let now = self.model_now();
        let (t0, produced0, h0) = &self.window_start;
        let e2e = delta(&hist, h0);
        let produced_per_s = if *produced0 == 0 {
            0.0
        } else {
            (produced - produced0) as f64 / ((now - t0) / self.k).max(0.001)
        };
        self.windows.push(Window {
            t: now,
            wanted: self.fleet.spec,
            running: self.fleet.running(),
            lag,
            produced_per_s,
            p50: quantile(&e2e, 0.5),
            p99: quantile(&e2e, 0.99),
        });
        self.window_start = (now, produced, hist);
    }

    /// Closes the last scale event, if any: what the group went through since it.
    async fn close_event(&mut self) {
        if self.events.is_empty() {
            return;
        }
        let assignments = self.fleet.assignments(&self.client).await;
        if let Some(e) = self.events.last_mut() {
            e.close(&mut self.idle, &self.names, assignments);
        }
    }
}

/// Produces the profile's rate, paced every 64 events; returns the expected state.
async fn produce(config: Config, fc: FleetConfig, started: Instant) -> anyhow::Result<Expected> {
    let mut producer = EventProducer::new(&config)?;
    let mut generator = Generator::new(fc.gen.clone());
    let mut expected = Expected::default();
    // Events owed so far: the integral of the rate over model time, paid in real time.
    let mut owed = 0.0;
    let mut last = 0.0;
    let mut sent = 0.0;
    loop {
        let t = started.elapsed().as_secs_f64() * fc.time_scale;
        let Some(rate) = fc.profile.rate(t, fc.base, fc.peak) else {
            break;
        };
        owed += rate * (t - last) / fc.time_scale;
        last = t;
        while sent < owed {
            let g = generator.next_event();
            let topic = &config.types.get(g.image_type).topic;
            let value = g.event.to_json().to_string();
            producer
                .send(
                    topic,
                    g.event.id.key().as_bytes(),
                    Some(value.as_bytes()),
                    false,
                )
                .await?;
            expected.apply(g.image_type, &g.event);
            sent += 1.0;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    producer.flush().await;
    anyhow::ensure!(
        producer.failed == 0,
        "{} events were not produced",
        producer.failed
    );
    Ok(expected)
}

/// Worker processes, as a Deployment's pods.
struct Fleet {
    bin: PathBuf,
    /// `worker.commit_interval_ms` for the workers (divided by the time scale).
    commit_ms: u64,
    config_file: Option<PathBuf>,
    logs: PathBuf,
    grace: Duration,
    /// `spec.replicas`.
    spec: i32,
    running: Vec<WorkerProc>,
    stopping: Vec<(WorkerProc, Instant)>,
    spawned: u32,
    /// Workers that exited on their own and were replaced.
    restarts: u32,
    /// What stopped workers had counted (their last scrape): e2e buckets, assignments, CPU.
    retired_hist: BTreeMap<String, f64>,
    retired_assignments: u64,
    retired_cpu: f64,
}

struct WorkerProc {
    child: tokio::process::Child,
    pid: u32,
    metrics: String,
    last_hist: BTreeMap<String, f64>,
    last_assignments: u64,
    last_cpu: f64,
}

impl Fleet {
    fn new(fc: &FleetConfig, grace: Duration, commit_ms: u64) -> Self {
        Self {
            bin: fc.worker_bin.clone(),
            commit_ms,
            config_file: fc.config_file.clone(),
            logs: fc.out.join("workers"),
            grace,
            spec: 0,
            running: Vec::new(),
            stopping: Vec::new(),
            spawned: 0,
            restarts: 0,
            retired_hist: BTreeMap::new(),
            retired_assignments: 0,
            retired_cpu: 0.0,
        }
    }

    fn running(&self) -> i32 {
        self.running.len() as i32
    }

    /// Starts or stops workers until `n` run. Stopping takes the newest first, as a ReplicaSet
    /// scaling down prefers younger pods, and is SIGTERM, then SIGKILL after the grace period,
    /// as the kubelet does.
    fn scale_to(&mut self, n: i32) -> anyhow::Result<()> {
        self.spec = n;
        while self.running() < n {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            self.spawned += 1;
            let log =
                std::fs::File::create(self.logs.join(format!("worker-{}.log", self.spawned)))?;
            let mut cmd = tokio::process::Command::new(&self.bin);
            cmd.env("LEAFSYNC__WORKER__ADMIN_ADDR", format!("127.0.0.1:{port}"))
                .env(
                    "LEAFSYNC__WORKER__COMMIT_INTERVAL_MS",
                    self.commit_ms.to_string(),
                )
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .kill_on_drop(true);
            if let Some(c) = &self.config_file {
                cmd.env("LEAFSYNC_CONFIG", c);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", self.bin.display()))?;
            let pid = child.id().context("a started worker has a pid")?;
            self.running.push(WorkerProc {
                child,
                pid,
                metrics: format!("http://127.0.0.1:{port}/metrics"),
                last_hist: BTreeMap::new(),
                last_assignments: 0,
                last_cpu: 0.0,
            });
        }
        while self.running() > n {
            let w = self.running.pop().context("a worker to stop")?;
            signal(w.pid, "-TERM");
            self.stopping.push((w, Instant::now()));
        }
        Ok(())
    }

    /// Collects workers that exited; kills those past the grace period. A running worker that
    /// exited on its own is replaced, as a ReplicaSet replaces a failed pod.
    fn reap(&mut self) -> anyhow::Result<()> {
        let mut alive = Vec::new();
        for mut w in std::mem::take(&mut self.running) {
            match w.child.try_wait() {
                Ok(Some(status)) => {
                    tracing::warn!(pid = w.pid, %status, "a worker exited on its own; replacing it");
                    self.restarts += 1;
                    self.retire(&w);
                }
                _ => alive.push(w),
            }
        }
        self.running = alive;
        self.scale_to(self.spec)?;
        self.reap_stopping();
        Ok(())
    }

    /// Collects stopped workers that exited; kills those past the grace period.
    fn reap_stopping(&mut self) {
        let mut still = Vec::new();
        for (mut w, since) in std::mem::take(&mut self.stopping) {
            if matches!(w.child.try_wait(), Ok(Some(_))) {
                self.retire(&w);
            } else if since.elapsed() > self.grace {
                let _ = w.child.start_kill();
                self.retire(&w);
            } else {
                still.push((w, since));
            }
        }
        self.stopping = still;
    }

    fn retire(&mut self, w: &WorkerProc) {
        for (k, v) in &w.last_hist {
            *self.retired_hist.entry(k.clone()).or_default() += v;
        }
        self.retired_assignments += w.last_assignments;
        self.retired_cpu += w.last_cpu;
    }

    /// Scrapes every running worker; remembers each one's counters for when it stops.
    async fn scrape_all(&mut self, client: &reqwest::Client) {
        for w in &mut self.running {
            if let Some(pages) = scrape(client, std::slice::from_ref(&w.metrics)).await {
                w.last_hist = histogram(&pages, "leafsync_worker_e2e_latency_seconds", None);
                w.last_assignments = pages[0]
                    .lines()
                    .filter(|l| {
                        l.starts_with("leafsync_worker_rebalances_total{")
                            && l.contains("\"assign\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum::<f64>() as u64;
            }
            if let Some(c) = ProcCpu::of(w.pid) {
                w.last_cpu = c;
            }
        }
    }

    /// The e2e histogram over every worker that ever ran.
    async fn histograms(&mut self, client: &reqwest::Client) -> BTreeMap<String, f64> {
        self.scrape_all(client).await;
        let mut h = self.retired_hist.clone();
        for w in &self.running {
            for (k, v) in &w.last_hist {
                *h.entry(k.clone()).or_default() += v;
            }
        }
        h
    }

    /// Assignments over every worker that ever ran.
    async fn assignments(&mut self, client: &reqwest::Client) -> u64 {
        self.scrape_all(client).await;
        self.retired_assignments + self.running.iter().map(|w| w.last_assignments).sum::<u64>()
    }

    /// SIGTERM to all, waits for them; the workers' CPU seconds.
    async fn stop_all(&mut self) -> Vec<Cpu> {
        for w in &mut self.running {
            if let Some(c) = ProcCpu::of(w.pid) {
                w.last_cpu = c;
            }
        }
        self.scale_to(0).ok();
        let deadline = Instant::now() + self.grace;
        while !self.stopping.is_empty() && Instant::now() < deadline {
            self.reap_stopping();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.grace = Duration::ZERO;
        self.reap_stopping();
        vec![Cpu {
            process: format!("workers ({} started)", self.spawned),
            seconds: self.retired_cpu,
            percent: 0.0,
        }]
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// CPU seconds from `/proc/PID/stat` (utime + stime, at Linux's 100 ticks/s).
struct ProcCpu(Vec<(String, f64)>);

impl ProcCpu {
    fn of(pid: u32) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command (which may hold spaces) start after the last ')'.
        let rest = stat.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }

    /// This process and the stack's servers (from `LEAFSYNC_STACK_RUN_DIR`, set by
    /// `scripts/stack env`).
    fn read_stack() -> Self {
        let mut out = vec![(
            "leafsync-loadtest".to_owned(),
            Self::of(std::process::id()).unwrap_or(0.0),
        )];
        if let Ok(dir) = std::env::var("LEAFSYNC_STACK_RUN_DIR") {
            for (name, file) in [
                ("kafka broker", "kafka.pid"),
                ("mongodb stand-in", "mongo.pid"),
            ] {
                let pid = std::fs::read_to_string(Path::new(&dir).join(file)).ok();
                if let Some(c) = pid.and_then(|p| p.trim().parse().ok()).and_then(Self::of) {
                    out.push((name.to_owned(), c));
                }
            }
        }
        Self(out)
    }

    fn since(&self, start: &Self) -> Vec<Cpu> {
        self.0
            .iter()
            .map(|(name, c)| {
                let before = start.0.iter().find(|(n, _)| n == name).map_or(0.0, |x| x.1);
                Cpu {
                    process: name.clone(),
                    seconds: c - before,
                    percent: 0.0,
                }
            })
            .collect()
    }
}

/// For each partition, since when its committed offset has stood still while it had lag.
#[derive(Default)]
struct IdleTracker {
    /// (committed, since when unchanged with lag)
    state: BTreeMap<usize, (Option<i64>, f64)>,
    /// Stand-stills that ended: (partition, seconds).
    ended: Vec<(usize, f64)>,
}

impl IdleTracker {
    fn observe(&mut self, parts: &[PartitionOffsets], now: f64) {
        for (i, p) in parts.iter().enumerate() {
            let lagging = p.latest > p.committed.unwrap_or(p.earliest);
            let e = self.state.entry(i).or_insert((p.committed, now));
            if e.0 != p.committed || !lagging {
                let idle = now - e.1;
                if idle > 2.0 {
                    self.ended.push((i, idle));
                }
                *e = (p.committed, now);
            }
        }
    }
}

impl ScaleEvent {
    fn open(t: f64, from: i32, to: i32, assignments: u64) -> Self {
        Self {
            t,
            from,
            to,
            assignments,
            idle_partitions: Vec::new(),
            longest_idle_s: 0.0,
        }
    }

    /// Ends the event's period: assignments since it opened, stand-stills that ended in it.
    fn close(&mut self, idle: &mut IdleTracker, names: &[String], assignments: u64) {
        self.assignments = assignments.saturating_sub(self.assignments);
        let mut ended: Vec<(String, f64)> = std::mem::take(&mut idle.ended)
            .into_iter()
            .map(|(i, s)| (names.get(i).cloned().unwrap_or_default(), s))
            .collect();
        ended.sort_by(|a, b| b.1.total_cmp(&a.1));
        self.longest_idle_s = ended.first().map_or(0.0, |e| e.1);
        self.idle_partitions = ended;
    }
}

fn summarize(polls: &[Poll], profile: Profile, threshold: i64) -> Summary {
    let (peak_start, peak_end) = profile.peak_window();
    let first_up = polls
        .iter()
        .find(|p| p.t >= peak_start && p.desired > p.spec_replicas)
        .map(|p| p.t - peak_start);
    let under = first_up.and_then(|u| {
        polls
            .iter()
            .find(|p| {
                p.t >= peak_start + u && p.metric <= threshold * i64::from(p.spec_replicas.max(1))
            })
            .map(|p| p.t - peak_start)
    });
    let scale_in = polls
        .iter()
        .find(|p| p.t >= peak_end && p.desired < p.spec_replicas)
        .map(|p| p.t - peak_end);
    let changes: Vec<i32> = polls
        .iter()
        .filter(|p| p.desired != p.spec_replicas)
        .map(|p| (p.desired - p.spec_replicas).signum())
        .collect();
    Summary {
        first_scale_up_s: first_up,
        lag_under_threshold_s: under,
        peak_lag: polls.iter().map(|p| p.lag).max().unwrap_or(0),
        peak_replicas: polls.iter().map(|p| p.desired).max().unwrap_or(0),
        scale_in_delay_s: scale_in,
        reversals: changes.windows(2).filter(|w| w[0] != w[1]).count(),
        scale_events: changes.len(),
    }
}

/// `report.json` and `report.html` (replicas, lag and latency over model time).
fn write(dir: &Path, r: &FleetReport) -> anyhow::Result<()> {
    use plotters::style::{BLUE, GREEN, RED};
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(r)?)?;
    let pts = |f: &dyn Fn(&Window) -> Option<f64>| {
        r.windows
            .iter()
            .filter_map(|w| f(w).map(|v| (w.t, v)))
            .collect::<Vec<_>>()
    };
    let replicas = crate::report::chart(
        "Replicas",
        &[
            ("wanted", BLUE, pts(&|w| Some(f64::from(w.wanted)))),
            ("running", GREEN, pts(&|w| Some(f64::from(w.running)))),
        ],
        "workers",
    )?;
    let lag = crate::report::chart(
        "Lag and load",
        &[
            ("lag", RED, pts(&|w| Some(w.lag as f64))),
            ("produced/s", BLUE, pts(&|w| Some(w.produced_per_s))),
        ],
        "events, events/s",
    )?;
    let latency = crate::report::chart(
        "End-to-end latency per window",
        &[
            ("p50", GREEN, pts(&|w| w.p50.map(|x| x * 1000.0))),
            ("p99", RED, pts(&|w| w.p99.map(|x| x * 1000.0))),
        ],
        "ms",
    )?;
    let s = &r.summary;
    let opt = |v: Option<f64>| v.map_or_else(|| "never".to_owned(), |x| format!("{x:.0} s"));
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>leafsync fleet drill</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 12px;text-align:left}}</style></head><body>\
         <h1>leafsync fleet drill: {:?}</h1><p>Time scale {} (times below are model seconds; lagThreshold {} → {}, HPA sync {} s → {:.2} s).</p><table>\
         <tr><th>first scale-up after the step</th><td>{}</td></tr><tr><th>lag back under threshold</th><td>{}</td></tr>\
         <tr><th>peak lag / replicas</th><td>{} / {}</td></tr><tr><th>scale-in delay</th><td>{}</td></tr>\
         <tr><th>scale events / reversals</th><td>{} / {}</td></tr><tr><th>verify</th><td>{}</td></tr></table>{replicas}{lag}{latency}</body></html>",
        r.profile, r.time_scale, r.lag_threshold.0, r.lag_threshold.1, r.hpa_sync_s.0, r.hpa_sync_s.1,
        opt(s.first_scale_up_s), opt(s.lag_under_threshold_s), s.peak_lag, s.peak_replicas, opt(s.scale_in_delay_s),
        s.scale_events, s.reversals, r.verify.summary()
    );
    std::fs::write(dir.join("report.html"), html)?;
    Ok(())
}
