//! `/total` stays fast as collections grow: counts are served from a per-(type, include_deleted)
//! cache refreshed at most every `api.total_cache_ttl_ms` (the staleness bound), and only one
//! request refreshes an entry while the others wait for its answer (single flight).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leafsync_core::ImageType;
use tokio::sync::Mutex;

type Slot = Arc<Mutex<Option<(Instant, u64)>>>;

/// Cached counts.
pub struct TotalCache {
    ttl: Duration,
    slots: HashMap<(ImageType, bool), Slot>,
}

impl TotalCache {
    /// A cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        let slots = ImageType::ALL
            .into_iter()
            .flat_map(|t| [(t, false), (t, true)])
            .map(|k| (k, Arc::new(Mutex::new(None))))
            .collect();
        Self { ttl, slots }
    }

    /// The count for `key`, fetched with `fetch` when the cached one is older than the TTL.
    pub async fn get<F, Fut, E>(&self, key: (ImageType, bool), fetch: F) -> Result<u64, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, E>>,
    {
        let Some(slot) = self.slots.get(&key) else {
            return fetch().await;
        };
        // Holding the slot's lock while fetching is what makes concurrent misses share one query.
        let mut entry = slot.lock().await;
        if let Some((at, n)) = *entry {
            if at.elapsed() < self.ttl {
                return Ok(n);
            }
        }
        let n = fetch().await?;
        *entry = Some((Instant::now(), n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch_and_entries_expire() {
        let cache = Arc::new(TotalCache::new(Duration::from_millis(200)));
        let calls = Arc::new(AtomicU32::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls) = (cache.clone(), calls.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get((ImageType::Potato, false), || async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok::<_, ()>(7)
                    })
                    .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Other key: own entry.
        let n = cache
            .get((ImageType::Potato, true), || async { Ok::<_, ()>(9) })
            .await;
        assert_eq!(n, Ok(9));
        tokio::time::sleep(Duration::from_millis(250)).await;
        let n = cache
            .get((ImageType::Potato, false), || async { Ok::<_, ()>(8) })
            .await;
        assert_eq!(n, Ok(8), "expired entries are refreshed");
        // A failed refresh is not cached.
        let cache = TotalCache::new(Duration::from_secs(60));
        assert_eq!(
            cache
                .get((ImageType::Tomato, false), || async {
                    Err::<u64, _>("down")
                })
                .await,
            Err("down")
        );
        assert_eq!(
            cache
                .get((ImageType::Tomato, false), || async { Ok::<_, &str>(3) })
                .await,
            Ok(3)
        );
    }
}
