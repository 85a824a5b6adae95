//! `/total` stays fast as collections grow. Counting a large collection takes seconds (2–3 s
//! for 1,000,000 documents on the stand-in server), longer than a request may wait, so counts
//! are refreshed in the background and served from a per-(type, include_deleted) cache:
//!
//! - fresh (younger than `api.total_cache_ttl_ms`): answered at once;
//! - stale, but younger than TTL + a grace of 10 s: answered at once with the last count, and one
//!   background refresh starts (single flight: concurrent requests never start a second count);
//! - older (e.g. the database has been down for a while), or TTL 0 (exact counts asked for):
//!   the request waits for the refresh, and gets a 503 if the database does not answer in time;
//! - none yet: the request waits for the refresh (within its own timeout). A timed-out request
//!   does not cancel the refresh, so the next one finds the count.
//!
//! Staleness bound: a served count is at most TTL + 10 s old (in steady state, TTL + the duration
//! of one count).
//!
//! Requests alone would let a count expire whenever none came for TTL + 10 s, and the next
//! request would wait for a multi-second count and time out. So [`TotalCache::keep_warm`] also
//! refreshes, once expired, each count that was asked for in the last [`KEEP_WARM_FOR`]; a count
//! nobody asks for costs the database nothing after that.

/// How long past its TTL a count may still be served while a refresh runs.
pub const STALE_GRACE: Duration = Duration::from_secs(10);
/// How long after its last request a count is still refreshed on a timer.
pub const KEEP_WARM_FOR: Duration = Duration::from_secs(300);

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leafsync_core::{ImageType, StoreError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
// Tokio's clock, so the tests can run on paused time instead of racing real sleeps.
use tokio::time::Instant;

type Outcome = Option<Result<u64, StoreError>>;

struct Slot {
    value: Option<(Instant, u64)>,
    refreshing: Option<watch::Receiver<Outcome>>,
    /// When a request last asked for this count.
    asked: Option<Instant>,
}

impl Slot {
    /// Starts one background count (the caller checked none is running); its result lands in
    /// the slot and on the returned channel.
    fn refresh<Fut>(&mut self, slot: &Arc<Mutex<Slot>>, fut: Fut) -> watch::Receiver<Outcome>
    where
        Fut: Future<Output = Result<u64, StoreError>> + Send + 'static,
    {
        let (tx, rx) = watch::channel(None);
        self.refreshing = Some(rx.clone());
        let slot = slot.clone();
        tokio::spawn(async move {
            let result = fut.await;
            let mut s = lock(&slot);
            if let Ok(n) = &result {
                s.value = Some((Instant::now(), *n));
            }
            s.refreshing = None;
            let _ = tx.send(Some(result));
        });
        rx
    }
}

fn lock(slot: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    // Every update of a slot is a few plain stores: a panic cannot leave it half-written.
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// Cached counts.
pub struct TotalCache {
    ttl: Duration,
    grace: Duration,
    slots: HashMap<(ImageType, bool), Arc<Mutex<Slot>>>,
}

impl std::fmt::Debug for TotalCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TotalCache")
            .field("ttl", &self.ttl)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}

impl TotalCache {
    /// A cache whose entries are fresh for `ttl`, served stale for [`STALE_GRACE`] more.
    pub fn new(ttl: Duration) -> Self {
        Self::with_grace(ttl, STALE_GRACE)
    }

    /// Like [`new`](Self::new) with another grace period.
    pub fn with_grace(ttl: Duration, grace: Duration) -> Self {
        let slots = ImageType::ALL
            .into_iter()
            .flat_map(|t| [(t, false), (t, true)])
            .map(|k| {
                (
                    k,
                    Arc::new(Mutex::new(Slot {
                        value: None,
                        refreshing: None,
                        asked: None,
                    })),
                )
            })
            .collect();
        // TTL 0 asks for exact counts: never serve a stale one.
        let grace = if ttl.is_zero() { Duration::ZERO } else { grace };
        Self { ttl, grace, slots }
    }

    /// The count for `key`; `fetch` makes a new count when one is needed.
    pub async fn get<F, Fut>(&self, key: (ImageType, bool), fetch: F) -> Result<u64, StoreError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, StoreError>> + Send + 'static,
    {
        let Some(slot) = self.slots.get(&key) else {
            return fetch().await;
        };
        let (stale, mut rx) = {
            let mut s = lock(slot);
            s.asked = Some(Instant::now());
            if let Some((at, n)) = s.value {
                if at.elapsed() < self.ttl {
                    return Ok(n);
                }
            }
            let rx = match &s.refreshing {
                Some(rx) => rx.clone(),
                None => s.refresh(slot, fetch()),
            };
            let limit = self.ttl + self.grace;
            let stale = s
                .value
                .filter(|(at, _)| at.elapsed() < limit)
                .map(|(_, n)| n);
            (stale, rx)
        };
        if let Some(n) = stale {
            return Ok(n);
        }
        loop {
            if let Some(result) = rx.borrow_and_update().clone() {
                return result;
            }
            if rx.changed().await.is_err() {
                // The refresh task ended without a result (it panicked); the next request
                // starts a new one.
                lock(slot).refreshing = None;
                return Err(StoreError::abandoned(
                    "count",
                    "the count refresh ended without a result",
                ));
            }
        }
    }
}

impl TotalCache {
    /// Until `shutdown`, every half TTL: refreshes each expired count asked for in the last
    /// [`KEEP_WARM_FOR`], with `fetch(key)`, in the background. Does nothing with TTL 0 (every
    /// request counts anyway).
    pub async fn keep_warm<F, Fut>(&self, fetch: F, shutdown: CancellationToken)
    where
        F: Fn((ImageType, bool)) -> Fut,
        Fut: Future<Output = Result<u64, StoreError>> + Send + 'static,
    {
        if self.ttl.is_zero() {
            return;
        }
        // Half a TTL, so an expired count is at most half a TTL older than it need be.
        let mut tick = tokio::time::interval(self.ttl / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for (&key, slot) in &self.slots {
                let mut s = lock(slot);
                let wanted = s.asked.is_some_and(|at| at.elapsed() < KEEP_WARM_FOR);
                let expired = s.value.is_none_or(|(at, _)| at.elapsed() >= self.ttl);
                if wanted && expired && s.refreshing.is_none() {
                    s.refresh(slot, fetch(key));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_one_fetch_then_stale_values_are_served_while_refreshing() {
        let cache = Arc::new(TotalCache::new(Duration::from_millis(100)));
        let calls = Arc::new(AtomicU32::new(0));
        let fetch = |n: u64, calls: Arc<AtomicU32>| {
            move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(n)
            }
        };
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache.get((ImageType::Potato, false), fetch(7, calls)).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 7);
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one count for 20 concurrent misses"
        );

        // Fresh: served from the cache, no fetch.
        assert_eq!(
            cache
                .get((ImageType::Potato, false), fetch(8, calls.clone()))
                .await
                .unwrap(),
            7
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        // Stale: the old value at once, a refresh in the background, the new value after it.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let t = Instant::now();
        assert_eq!(
            cache
                .get((ImageType::Potato, false), fetch(8, calls.clone()))
                .await
                .unwrap(),
            7
        );
        assert!(
            t.elapsed() < Duration::from_millis(50),
            "stale answers do not wait for the 50 ms count"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            cache
                .get((ImageType::Potato, false), fetch(9, calls.clone()))
                .await
                .unwrap(),
            8
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_grace_period_or_with_ttl_zero_requests_wait_for_a_real_count() {
        let cache = TotalCache::with_grace(Duration::from_millis(20), Duration::from_millis(20));
        assert_eq!(
            cache
                .get((ImageType::Potato, true), || async { Ok(5) })
                .await
                .unwrap(),
            5
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Too old to serve: the failing refresh's error comes back (the API answers 503).
        assert!(cache
            .get((ImageType::Potato, true), || async { Err(down()) })
            .await
            .is_err());

        let exact = TotalCache::new(Duration::ZERO);
        assert_eq!(
            exact
                .get((ImageType::Potato, true), || async { Ok(1) })
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            exact
                .get((ImageType::Potato, true), || async { Ok(2) })
                .await
                .unwrap(),
            2
        );
        assert!(exact
            .get((ImageType::Potato, true), || async { Err(down()) })
            .await
            .is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn asked_counts_are_kept_fresh_without_requests_and_unasked_ones_are_left_alone() {
        let cache = Arc::new(TotalCache::with_grace(
            Duration::from_millis(100),
            Duration::from_millis(100),
        ));
        let counts = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let keeper = {
            let (cache, counts, shutdown) = (cache.clone(), counts.clone(), shutdown.clone());
            tokio::spawn(async move {
                let fetch = |_key| {
                    let counts = counts.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        Ok(u64::from(counts.fetch_add(1, Ordering::SeqCst)) + 100)
                    }
                };
                cache.keep_warm(fetch, shutdown).await;
            })
        };
        let key = (ImageType::Potato, false);
        assert_eq!(cache.get(key, || async { Ok(1) }).await.unwrap(), 1);

        // Far past TTL + grace with no request: still answered at once, with a recent count,
        // never calling the request's own (failing) fetch.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        let n = cache.get(key, || async { Err(down()) }).await.unwrap();
        assert!(n >= 108, "refreshed again and again: {n}");
        assert!(
            started.elapsed() < Duration::from_millis(30),
            "did not wait for a count"
        );
        // About one count per 150 ms (expiry at 100 ms, checked every 50 ms, 30 ms to count)
        // for the one key asked; six keys would be six times as many.
        let asked_once = counts.load(Ordering::SeqCst);
        assert!(
            (8..=25).contains(&asked_once),
            "one key, about every TTL: {asked_once}"
        );

        // Nobody asks any more: the counting stops after KEEP_WARM_FOR.
        tokio::time::sleep(KEEP_WARM_FOR + Duration::from_secs(1)).await;
        let idle = counts.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            counts.load(Ordering::SeqCst),
            idle,
            "no counts nobody asked for"
        );

        shutdown.cancel();
        keeper.await.unwrap();
    }

    fn down() -> StoreError {
        StoreError::abandoned("count", "down")
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_out_request_does_not_cancel_the_refresh_and_errors_are_not_cached() {
        let cache = Arc::new(TotalCache::new(Duration::from_secs(60)));
        let slow = || async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Ok(42)
        };
        let r = tokio::time::timeout(
            Duration::from_millis(20),
            cache.get((ImageType::Tomato, true), slow),
        )
        .await;
        assert!(r.is_err(), "the request timed out");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let never = || async { Err(down()) };
        assert_eq!(
            cache.get((ImageType::Tomato, true), never).await.unwrap(),
            42,
            "the refresh finished anyway"
        );

        let e = cache
            .get((ImageType::Pepper, false), || async { Err(down()) })
            .await;
        assert!(e.is_err());
        assert_eq!(
            cache
                .get((ImageType::Pepper, false), || async { Ok(3) })
                .await
                .unwrap(),
            3,
            "errors are not cached"
        );
    }
}
