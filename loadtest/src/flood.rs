//! `flood`: produce generated events (plus optional poison) at a target rate or as fast as
//! possible, and record the expected final state.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use leafsync_core::{Config, ImageId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::Instrument;

use crate::expected::Expected;
use crate::generator::{GenConfig, Generator};
use crate::poison::poison;
use crate::producer::EventProducer;

/// What to produce.
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// Generator settings.
    pub gen: GenConfig,
    /// Stop after this many valid events…
    pub count: Option<u64>,
    /// …or after this long.
    pub duration: Option<Duration>,
    /// Events per second; 0 = as fast as possible.
    pub rate: u64,
    /// Fraction of extra poison events.
    pub poison_ratio: f64,
    /// Add a `traceparent` header per event.
    pub trace: bool,
}

/// Produces until the count or duration is reached; returns the expected state.
pub async fn flood(
    config: &Config,
    f: &FloodConfig,
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<Expected> {
    anyhow::ensure!(
        f.count.is_some() || f.duration.is_some(),
        "give --count or --duration"
    );
    let mut producer = EventProducer::new(config)?;
    let mut generator = Generator::new(f.gen.clone());
    let mut rng = ChaCha8Rng::seed_from_u64(f.gen.seed ^ 0x5eed);
    let mut expected = Expected::default();
    let started = Instant::now();
    let mut n: u64 = 0;
    loop {
        if f.count.is_some_and(|c| n >= c) || f.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        if f.rate > 0 && n.is_multiple_of(64) {
            let due = started + Duration::from_secs_f64(n as f64 / f.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                tokio::time::sleep(wait).await;
            }
        }
        let g = generator.next_event();
        let topic = &config.types.get(g.image_type).topic;
        let value = g.event.to_json().to_string();
        let span = tracing::info_span!("leafsync.produce", otel.name = format!("send {topic}"), otel.kind = "producer",
            messaging.system = "kafka", messaging.destination.name = %topic, image_id = g.event.id.get());
        producer
            .send(
                topic,
                g.event.id.key().as_bytes(),
                Some(value.as_bytes()),
                f.trace,
            )
            .instrument(span)
            .await?;
        expected.apply(g.image_type, &g.event);
        n += 1;
        if f.poison_ratio > 0.0 && rng.random_bool(f.poison_ratio.clamp(0.0, 1.0)) {
            let id = ImageId::new(rng.random_range(1..=f.gen.ids_per_type.max(1)))?;
            let (_, key, value) = poison(expected.poison, id, config.worker.max_event_bytes);
            producer.send(topic, &key, value.as_deref(), false).await?;
            expected.poison += 1;
        }
        if n.is_multiple_of(1000) {
            on_progress(n);
        }
    }
    producer.flush().await;
    on_progress(n);
    anyhow::ensure!(
        producer.failed == 0,
        "{} messages were not acknowledged by the broker",
        producer.failed
    );
    Ok(expected)
}

/// A progress reporter: a bar on a terminal, a line every few seconds otherwise.
pub fn progress(total: Option<u64>) -> impl FnMut(u64) {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = match total {
            Some(t) => indicatif::ProgressBar::new(t),
            None => indicatif::ProgressBar::new_spinner(),
        };
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} events {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b
    });
    let started = Instant::now();
    let mut last_line = Instant::now();
    move |n| match &bar {
        Some(b) => {
            b.set_position(n);
            if total.is_some_and(|t| n >= t) {
                b.finish();
            }
        }
        None => {
            if last_line.elapsed() >= Duration::from_secs(2) || total.is_some_and(|t| n >= t) {
                last_line = Instant::now();
                let rate = n as f64 / started.elapsed().as_secs_f64().max(0.001);
                eprintln!("flood: {n} events produced, {rate:.0}/s");
            }
        }
    }
}
