//! Coalesced reads: concurrent lookups of one image type share one `$in` query.
//!
//! Opportunistic, so an idle API adds no latency: with no query in flight, a lookup runs its own
//! query at once, alone, in its own task. Lookups that arrive while a query is in flight queue up and go out together,
//! up to `max_batch`, as the next query, as soon as the previous one returns. One query of 16–64
//! ids costs about what one single-id query does on MongoDB (docs/benchmarks.md), so under load
//! the API makes fewer, fuller round trips for the same answers.
//!
//! Each lookup keeps its own behaviour: the caller bounds its wait by its own deadline (counted
//! from its arrival), a failed query fails exactly the lookups it carried, and a query that
//! hangs is abandoned after `query_timeout` so the lane never stalls.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::Instrument;

/// Why a coalesced lookup has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError<E> {
    /// The shared query failed.
    Failed(E),
    /// The shared query took longer than the query timeout.
    TimedOut,
    /// The query's task ended without an answer (it panicked).
    Abandoned,
}

type Fetch<K, V, E> =
    dyn Fn(Vec<K>) -> Pin<Box<dyn Future<Output = Result<HashMap<K, V>, E>> + Send>> + Send + Sync;

type Answer<V, E> = Result<Option<V>, ReadError<E>>;

/// One lookup waiting for a query.
struct Waiter<K, V, E> {
    key: K,
    reply: oneshot::Sender<Answer<V, E>>,
    /// The waiting request's span, for the query span's links.
    span: tracing::Span,
}

struct Lane<K, V, E> {
    running: bool,
    waiting: Vec<Waiter<K, V, E>>,
}

struct Inner<K, V, E> {
    name: String,
    lane: Mutex<Lane<K, V, E>>,
    max_batch: usize,
    query_timeout: Duration,
    fetch: Box<Fetch<K, V, E>>,
    on_query: Box<dyn Fn(usize) + Send + Sync>,
}

/// Lookups of one kind (one image type) coalesced into batched queries.
pub struct Coalescer<K, V, E> {
    inner: Arc<Inner<K, V, E>>,
}

impl<K, V, E> std::fmt::Debug for Coalescer<K, V, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("max_batch", &self.inner.max_batch)
            .finish_non_exhaustive()
    }
}

impl<K, V, E> Coalescer<K, V, E>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    /// `fetch` answers a batch of distinct keys with the values that exist; `on_query` is told
    /// each query's size (for metrics); `name` names the queries' spans (`find potato`).
    pub fn new<F, Fut>(
        name: impl Into<String>,
        max_batch: usize,
        query_timeout: Duration,
        fetch: F,
        on_query: impl Fn(usize) + Send + Sync + 'static,
    ) -> Self
    where
        F: Fn(Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<K, V>, E>> + Send + 'static,
    {
        Self {
            inner: Arc::new(Inner {
                name: name.into(),
                lane: Mutex::new(Lane {
                    running: false,
                    waiting: Vec::new(),
                }),
                max_batch: max_batch.max(1),
                query_timeout,
                fetch: Box::new(move |keys| Box::pin(fetch(keys))),
                on_query: Box::new(on_query),
            }),
        }
    }

    /// The value of `key` (`None`: it does not exist). Waits for the query that carries it; the
    /// caller bounds the wait (dropping this future gives up the answer, not the query).
    pub async fn get(&self, key: K) -> Answer<V, E> {
        let (reply, answer) = oneshot::channel();
        let lead = {
            let mut lane = lock(&self.inner.lane);
            // Nothing in flight: this lookup's query runs right here, with no hand-off to
            // another task. Lookups that arrive meanwhile queue up for the next query.
            let idle = !std::mem::replace(&mut lane.running, true);
            if !idle {
                lane.waiting.push(Waiter {
                    key: key.clone(),
                    reply,
                    span: tracing::Span::current(),
                });
            }
            idle
        };
        if lead {
            return self.lead(key).await;
        }
        answer.await.unwrap_or(Err(ReadError::Abandoned))
    }

    /// Runs one lookup's query in the caller's task, then hands the lane over: to a driver
    /// task when lookups queued up meanwhile, else back to idle. The hand-over also happens when
    /// the caller gives up (drops this future) or the query panics.
    async fn lead(&self, key: K) -> Answer<V, E> {
        let _handover = Handover(&self.inner);
        (self.inner.on_query)(1);
        let result = tokio::time::timeout(
            self.inner.query_timeout,
            (self.inner.fetch)(vec![key.clone()]),
        )
        .await;
        match result {
            Ok(Ok(found)) => Ok(found.get(&key).cloned()),
            Ok(Err(e)) => Err(ReadError::Failed(e)),
            Err(_) => Err(ReadError::TimedOut),
        }
    }
}

/// Passes a lane led inline on to a driver task (lookups are waiting) or marks it idle.
struct Handover<'a, K, V, E>(&'a Arc<Inner<K, V, E>>)
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
    E: Clone + Send + 'static;

impl<K, V, E> Drop for Handover<'_, K, V, E>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    fn drop(&mut self) {
        let mut lane = lock(&self.0.lane);
        if lane.waiting.is_empty() {
            lane.running = false;
        } else {
            drop(lane);
            tokio::spawn(drive(self.0.clone()));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the lane idle when the driver ends abnormally (its query panicked): the lookups still
/// queued get [`ReadError::Abandoned`] (their senders drop) and the next lookup starts a new
/// driver. A driver that ends normally disarms it under the lock that saw the queue empty;
/// acting after that lock is released could clobber a lane a new lookup has already taken.
struct Abandon<'a, K, V, E> {
    lane: &'a Mutex<Lane<K, V, E>>,
    armed: bool,
}

impl<K, V, E> Drop for Abandon<'_, K, V, E> {
    fn drop(&mut self) {
        if self.armed {
            let mut lane = lock(self.lane);
            lane.running = false;
            lane.waiting.clear();
        }
    }
}

/// Runs queries until no lookup is waiting.
async fn drive<K, V, E>(inner: Arc<Inner<K, V, E>>)
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    let mut abandon = Abandon {
        lane: &inner.lane,
        armed: true,
    };
    loop {
        let batch: Vec<Waiter<K, V, E>> = {
            let mut lane = lock(&inner.lane);
            let n = lane.waiting.len().min(inner.max_batch);
            if n == 0 {
                // Set idle under the same lock that saw the queue empty, so no lookup is left
                // behind without a driver.
                lane.running = false;
                abandon.armed = false;
                return;
            }
            lane.waiting.drain(..n).collect()
        };
        let mut keys: Vec<K> = Vec::with_capacity(batch.len());
        for w in &batch {
            if !keys.contains(&w.key) {
                keys.push(w.key.clone());
            }
        }
        (inner.on_query)(keys.len());
        // The shared query's span, linked to the span of every lookup it answers.
        let span = tracing::info_span!("db.query", otel.name = %inner.name, otel.kind = "client",
            db.operation.batch.size = keys.len());
        for w in &batch {
            span.follows_from(&w.span);
        }
        let result = tokio::time::timeout(inner.query_timeout, (inner.fetch)(keys))
            .instrument(span)
            .await;
        for w in batch {
            let answer = match &result {
                Ok(Ok(found)) => Ok(found.get(&w.key).cloned()),
                Ok(Err(e)) => Err(ReadError::Failed(e.clone())),
                Err(_) => Err(ReadError::TimedOut),
            };
            // A lookup whose caller gave up has no receiver left; that is fine.
            let _ = w.reply.send(answer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Db = Arc<Mutex<HashMap<u32, String>>>;
    type Sizes = Arc<Mutex<Vec<usize>>>;

    /// A coalescer over an in-memory table whose queries take `delay`, counting queries.
    fn over(db: &Db, delay: Duration, fail: bool) -> (Coalescer<u32, String, String>, Sizes) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (db, s) = (db.clone(), sizes.clone());
        let c = Coalescer::new(
            "find t",
            8,
            Duration::from_secs(5),
            move |keys: Vec<u32>| {
                let db = db.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    if fail {
                        return Err("down".to_owned());
                    }
                    let db = lock(&db);
                    Ok(keys
                        .into_iter()
                        .filter_map(|k| Some((k, db.get(&k)?.clone())))
                        .collect())
                }
            },
            move |n| lock(&s).push(n),
        );
        (c, sizes)
    }

    fn table(n: u32) -> Db {
        Arc::new(Mutex::new((0..n).map(|k| (k, format!("v{k}"))).collect()))
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_lookup_goes_out_alone_and_at_once() {
        let db = table(10);
        let (c, sizes) = over(&db, Duration::from_millis(5), false);
        let t = tokio::time::Instant::now();
        assert_eq!(c.get(3).await, Ok(Some("v3".into())));
        assert_eq!(
            t.elapsed(),
            Duration::from_millis(5),
            "one query's time, no wait"
        );
        assert_eq!(*lock(&sizes), [1]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_lookups_share_queries_and_each_gets_its_own_answer() {
        let db = table(50);
        let (c, sizes) = over(&db, Duration::from_millis(5), false);
        let c = Arc::new(c);
        // 40 concurrent lookups: existing, missing and repeated keys.
        let keys: Vec<u32> = (0..40).map(|i| (i * 7) % 60).collect();
        let tasks: Vec<_> = keys
            .iter()
            .map(|&k| {
                let c = c.clone();
                tokio::spawn(async move { (k, c.get(k).await) })
            })
            .collect();
        for t in tasks {
            let (k, got) = t.await.unwrap();
            let want = (k < 50).then(|| format!("v{k}"));
            assert_eq!(got, Ok(want), "key {k}");
        }
        let sizes = lock(&sizes).clone();
        assert!(sizes.len() < 40, "coalesced: {sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 8), "bounded batches: {sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_query_fails_every_lookup_it_carried_and_none_hangs() {
        let db = table(10);
        let (c, _) = over(&db, Duration::from_millis(5), true);
        let c = Arc::new(c);
        let tasks: Vec<_> = (0..20)
            .map(|k| {
                let c = c.clone();
                tokio::spawn(async move { c.get(k).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Err(ReadError::Failed("down".into())));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_query_times_out_each_caller_on_its_own_deadline() {
        let db = table(10);
        let (c, _) = over(&db, Duration::from_secs(3), false);
        let c = Arc::new(c);
        // Two callers arriving 500 ms apart, each with a 1 s deadline from its own arrival.
        let first = {
            let c = c.clone();
            tokio::spawn(async move {
                let t = tokio::time::Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(1), c.get(1)).await;
                (r.is_err(), t.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t = tokio::time::Instant::now();
        let second = tokio::time::timeout(Duration::from_secs(1), c.get(2)).await;
        assert!(second.is_err(), "timed out");
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        let (timed_out, took) = first.await.unwrap();
        assert!(timed_out);
        assert_eq!(took, Duration::from_secs(1));
        // The lane recovers: after the slow query, a new lookup is answered.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(10), c.get(3)).await,
            Ok(Ok(Some("v3".into())))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_query_is_abandoned_after_the_query_timeout() {
        let c: Coalescer<u32, String, String> = Coalescer::new(
            "find t",
            8,
            Duration::from_millis(100),
            |_keys: Vec<u32>| std::future::pending(),
            |_| {},
        );
        assert_eq!(c.get(1).await, Err(ReadError::TimedOut));
    }

    #[tokio::test]
    async fn a_panicking_query_fails_its_lookup_and_the_lane_recovers() {
        let calls = Arc::new(AtomicUsize::new(0));
        let n = calls.clone();
        let c: Arc<Coalescer<u32, u32, String>> = Arc::new(Coalescer::new(
            "find t",
            8,
            Duration::from_secs(1),
            move |keys: Vec<u32>| {
                let first = n.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    assert!(!first, "the first query panics");
                    Ok(keys.into_iter().map(|k| (k, k * 2)).collect())
                }
            },
            |_| {},
        ));
        // The first lookup leads (runs its query in its own task): the panic is that task's.
        let c1 = c.clone();
        let led = tokio::spawn(async move { c1.get(1).await }).await;
        assert!(led.unwrap_err().is_panic());
        assert_eq!(c.get(2).await, Ok(Some(4)), "the lane is idle again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_gives_up_hands_the_queued_lookups_on() {
        let db = table(10);
        let (c, sizes) = over(&db, Duration::from_millis(100), false);
        let c = Arc::new(c);
        // The leader's caller gives up after 10 ms, while its query still runs; two lookups
        // queued behind it must still be answered.
        let leader = {
            let c = c.clone();
            tokio::spawn(
                async move { tokio::time::timeout(Duration::from_millis(10), c.get(1)).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let (a, b) = tokio::join!(c.get(2), c.get(3));
        assert!(leader.await.unwrap().is_err(), "the leader timed out");
        assert_eq!((a, b), (Ok(Some("v2".into())), Ok(Some("v3".into()))));
        assert_eq!(*lock(&sizes), [1, 2], "the queued two went out together");
    }
}
