//! Retrying transient failures forever, with capped exponential backoff and full jitter.
//!
//! Full jitter (a delay drawn from `[0, ceiling]`) spreads the retries of many workers after a
//! shared outage best: AWS's "Exponential Backoff And Jitter" analysis found it finishes the
//! contended work soonest, where "equal jitter" (`[ceiling/2, ceiling]`) keeps retries bunched.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use leafsync_core::config::{ms, RetryConfig};
use rand::Rng;

use crate::events::{Emit, RetryScheduled};
use crate::metrics::Metrics;

/// Delays for successive retries: random in `[0, min(max, initial·2ⁿ)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `initial`, never waits longer than `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The backoff `worker.retry` configures.
    pub fn from_config(retry: &RetryConfig) -> Self {
        Self::new(ms(retry.initial_backoff_ms), ms(retry.max_backoff_ms))
    }

    /// How many retries so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay (before jitter).
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=ms))
    }
}

/// Runs `op` until it succeeds, emitting a [`RetryScheduled`] (labelled `what` and the class
/// `class_of` gives the error) before each wait. For work that must never be skipped: a write
/// whose offset is held until it lands, a dead letter that must reach its topic.
pub async fn retry_forever<T, E: Display, F, Fut>(
    what: &str,
    backoff: Backoff,
    metrics: &Metrics,
    class_of: impl Fn(&E) -> &'static str,
    op: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let never_give_up = |_: E| None::<Infallible>;
    match retry(what, backoff, metrics, class_of, never_give_up, op).await {
        Ok(v) => v,
        Err(never) => match never {},
    }
}

/// Runs `op` until it succeeds or fails with an error that is not transient (then returns
/// it). For reads that cannot go on after a permanent failure, like a backfill's source file
/// that does not exist.
pub async fn retry_transient<T, E: Display, F, Fut>(
    what: &str,
    backoff: Backoff,
    metrics: &Metrics,
    is_transient: impl Fn(&E) -> bool,
    op: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let give_up = |e: E| if is_transient(&e) { None } else { Some(e) };
    retry(what, backoff, metrics, |_| "transient", give_up, op).await
}

/// The one retry loop: `give_up` turns an error into the final one, or lets it be retried.
async fn retry<T, E: Display, G, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    metrics: &Metrics,
    class_of: impl Fn(&E) -> &'static str,
    give_up: impl Fn(E) -> Option<G>,
    mut op: F,
) -> Result<T, G>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    loop {
        let e = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let (class, error) = (class_of(&e), e.to_string());
        if let Some(g) = give_up(e) {
            return Err(g);
        }
        let delay = backoff.next_delay();
        RetryScheduled {
            op: what,
            class,
            error: &error,
            attempt: backoff.attempts(),
            delay,
        }
        .emit(metrics);
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_with_full_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<u128> = (0..8)
            .map(|_| {
                let c = b.ceiling().as_millis();
                let d = b.next_delay().as_millis();
                assert!(d <= c, "{d} not in [0, {c}]");
                c
            })
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.attempts(), 8);
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(2));
    }

    #[test]
    fn jitter_spans_the_whole_range_down_to_zero() {
        // Equal jitter would never go below half the ceiling; full jitter does, often.
        let mut low = 0;
        for _ in 0..1_000 {
            let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_secs(1));
            if b.next_delay() < Duration::from_millis(250) {
                low += 1;
            }
        }
        // Expected 250 of 1,000; the chance of fewer than 150 is below 1e-15.
        assert!(
            low > 150,
            "only {low} of 1000 delays below a quarter of the ceiling"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_counts_each_retry() {
        let metrics = Metrics::new();
        let mut calls = 0;
        let v = retry_forever(
            "database_write",
            Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
            &metrics,
            |_: &String| "transient",
            || {
                calls += 1;
                let n = calls;
                async move {
                    if n < 4 {
                        Err(format!("fail {n}"))
                    } else {
                        Ok(n)
                    }
                }
            },
        )
        .await;
        assert_eq!(v, 4);
        assert_eq!(
            metrics
                .retries
                .with_label_values(&["database_write", "transient"])
                .get(),
            3
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_transient_retries_transient_errors_and_returns_the_first_permanent_one() {
        let metrics = Metrics::new();
        let mut calls = 0;
        let r: Result<u32, String> = retry_transient(
            "backfill_read",
            Backoff::new(Duration::from_millis(10), Duration::from_millis(50)),
            &metrics,
            |e: &String| e.starts_with("transient"),
            || {
                calls += 1;
                let n = calls;
                async move {
                    match n {
                        1 | 2 => Err(format!("transient {n}")),
                        _ => Err(format!("permanent {n}")),
                    }
                }
            },
        )
        .await;
        assert_eq!(r, Err("permanent 3".to_owned()));
        let retries = metrics
            .retries
            .with_label_values(&["backfill_read", "transient"]);
        assert_eq!(retries.get(), 2, "the permanent error is not retried");
    }
}
