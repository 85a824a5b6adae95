//! Capped exponential backoff with full jitter, for retrying transient failures forever.

use std::time::Duration;

use rand::Rng;

/// Delays for successive retries: random in [0, min(max, initial·2ⁿ)].
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

    /// How many retries so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay (before jitter).
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay; jitter spreads retries of many workers after a shared outage.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<u128> = (0..8)
            .map(|_| {
                let c = b.ceiling().as_millis();
                let d = b.next_delay().as_millis();
                assert!(d <= c && d >= c / 2, "{d} not in [{}, {c}]", c / 2);
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
}
