//! A yes/no health check whose answer is cached for a while, so readiness probes from every
//! kubelet and load balancer do not each ping the database.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// The last answer of a check and when it was taken.
#[derive(Debug)]
pub struct CachedCheck {
    ttl: Duration,
    last: Mutex<Option<(Instant, bool)>>,
}

impl CachedCheck {
    /// Answers are reused for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            last: Mutex::new(None),
        }
    }

    /// The cached answer, or a new one from `check` when the cached one is older than the TTL.
    /// Concurrent callers wait for one check instead of starting several.
    pub async fn get<F, Fut>(&self, check: F) -> bool
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = bool>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < self.ttl {
                return ok;
            }
        }
        let ok = check().await;
        *last = Some((Instant::now(), ok));
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_are_cached_for_the_ttl() {
        let c = CachedCheck::new(Duration::from_secs(60));
        assert!(c.get(|| async { true }).await);
        // Cached: the failing check is not even called.
        assert!(c.get(|| async { false }).await);
        let fresh = CachedCheck::new(Duration::ZERO);
        assert!(fresh.get(|| async { true }).await);
        assert!(!fresh.get(|| async { false }).await);
    }
}
