//! Merging the ready batches of several partitions into one write command per collection.
//!
//! At a moderate rate each partition gathers only a few events per `batch.max_wait_ms`, and one
//! command per partition batch makes many small commands: the database's command rate, not its
//! document rate, becomes the limit (docs/benchmarks.md, "Latency"). So a partition hands its
//! planned documents to its collection's writer and waits for their results, and a writer sends
//! whatever is queued when it gets one of the `worker.max_in_flight_batches` permits as one
//! command. Idle, a batch goes out alone at once; busy, the queue grows while permits are taken
//! and the commands grow with it: small batches when the queue is short, big ones when it is
//! long, with no constant to tune.
//!
//! Merging keeps every guarantee. Ids never span partitions (the key is the id), so the merged
//! statements touch distinct ids and commute in one unordered command; a batch that repeats an
//! id already in the command (a misrouted event) waits for the next one. Each partition has at
//! most one batch queued, and stores its offset only after its results come back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use leafsync_core::config::Config;
use leafsync_core::outcome_policy::Chooser;
use leafsync_core::{Store, WriteResult};
use mongodb::bson::RawDocumentBuf;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use tokio::sync::{mpsc, oneshot, Mutex, Semaphore};

use crate::backoff::{retry_forever, Backoff};
use crate::events::{Emit, WriteCommand};
use crate::metrics::Metrics;
use crate::supervise::Fatal;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
// tokio's clock, so that tests on paused time see the queueing they cause.
use tokio::time::Instant;

/// Writes documents into a collection, retrying until acknowledged (the one database write).
/// It runs inside the span of the first batch in the command; the spans of the others are
/// passed to be linked, so every batch's trace reaches the database call.
pub type WriteFn = Arc<
    dyn Fn(
            String,
            Vec<RawDocumentBuf>,
            Vec<SpanContext>,
        ) -> Pin<Box<dyn Future<Output = Vec<WriteResult>> + Send>>
        + Send
        + Sync,
>;

/// What became of one partition's batch.
#[derive(Debug, Default)]
pub struct Written {
    /// One result per document, in order.
    pub results: Vec<WriteResult>,
    /// From handing the batch over until its command started (queue and permit).
    pub queued: Duration,
    /// The command, retries included.
    pub write: Duration,
}

struct Request {
    docs: Vec<RawDocumentBuf>,
    ids: Vec<i64>,
    /// The caller's span (its batch span): the command's parent or one of its links.
    span: tracing::Span,
    at: Instant,
    reply: oneshot::Sender<Written>,
}

/// The writers, one queue per collection.
pub struct Writers {
    lanes: HashMap<String, mpsc::UnboundedSender<Request>>,
    write: WriteFn,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers")
            .field("collections", &self.lanes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Writers {
    /// Starts, for each of `collections`, as many writer tasks as `permits` has permits (so one
    /// busy collection can use them all); a command holds a permit while it runs and carries at
    /// most `max_docs` documents (or one batch, if larger). Call inside the runtime.
    /// A lane that panics stops the worker through `fatal` (it would otherwise end silently).
    pub fn start(
        collections: impl IntoIterator<Item = String>,
        permits: &Arc<Semaphore>,
        max_docs: usize,
        write: WriteFn,
        fatal: &Fatal,
    ) -> Self {
        let tasks = permits.available_permits().max(1);
        let mut lanes = HashMap::new();
        for collection in collections {
            let (tx, rx) = mpsc::unbounded_channel();
            let queue = Arc::new(Mutex::new(Queue {
                rx,
                held: VecDeque::new(),
            }));
            for _ in 0..tasks {
                fatal.spawn_on(
                    &tokio::runtime::Handle::current(),
                    format!("the {collection} writer"),
                    lane(
                        collection.clone(),
                        queue.clone(),
                        permits.clone(),
                        max_docs,
                        write.clone(),
                    ),
                );
            }
            lanes.insert(collection, tx);
        }
        Self { lanes, write }
    }

    /// Writers that write every batch directly, unmerged (a backfill: its pages are full).
    pub fn direct(write: WriteFn) -> Self {
        Self {
            lanes: HashMap::new(),
            write,
        }
    }

    /// Writes `docs` (distinct ids) into `collection`, merged with other partitions' batches
    /// that are ready at the same time.
    pub async fn write(&self, collection: &str, docs: Vec<RawDocumentBuf>) -> Written {
        if docs.is_empty() {
            return Written::default();
        }
        let at = Instant::now();
        if let Some(tx) = self.lanes.get(collection) {
            let (reply, rx) = oneshot::channel();
            let ids = docs.iter().filter_map(|d| d.get_i64("id").ok()).collect();
            match tx.send(Request {
                docs,
                ids,
                span: tracing::Span::current(),
                at,
                reply,
            }) {
                Ok(()) => match rx.await {
                    Ok(w) => return w,
                    // The writer dropped the batch without an answer: its write panicked. An
                    // empty answer would let the caller store an offset past events that were
                    // never written, so the panic goes on to the caller, as it did when the
                    // caller wrote itself: its offset stays, and the events are re-delivered.
                    Err(_) => panic!("the {collection} writer stopped without answering"),
                },
                Err(mpsc::error::SendError(r)) => return self.alone(collection, r.docs, at).await,
            }
        }
        self.alone(collection, docs, at).await
    }

    async fn alone(&self, collection: &str, docs: Vec<RawDocumentBuf>, at: Instant) -> Written {
        let queued = at.elapsed();
        let started = Instant::now();
        let results = (self.write)(collection.to_owned(), docs, Vec::new()).await;
        Written {
            results,
            queued,
            write: started.elapsed(),
        }
    }
}

struct Queue {
    rx: mpsc::UnboundedReceiver<Request>,
    /// Requests taken from the channel but left for a later command.
    held: VecDeque<Request>,
}

impl Queue {
    async fn next(&mut self) -> Option<Request> {
        match self.held.pop_front() {
            Some(r) => Some(r),
            None => self.rx.recv().await,
        }
    }

    /// `first` plus whatever else is ready, up to `max_docs` documents with distinct ids.
    fn merge(&mut self, first: Request, max_docs: usize) -> Vec<Request> {
        let mut ids: HashSet<i64> = first.ids.iter().copied().collect();
        let mut n = first.docs.len();
        let mut out = vec![first];
        let mut later = Vec::new();
        while n < max_docs {
            let Some(r) = self.held.pop_front().or_else(|| self.rx.try_recv().ok()) else {
                break;
            };
            if n + r.docs.len() > max_docs {
                later.push(r);
                break;
            }
            if r.ids.iter().any(|id| ids.contains(id)) {
                later.push(r);
                continue;
            }
            ids.extend(r.ids.iter().copied());
            n += r.docs.len();
            out.push(r);
        }
        for r in later.into_iter().rev() {
            self.held.push_front(r);
        }
        out
    }
}

/// One writer task: wait for a batch, take a permit, merge what else is ready, write, answer.
async fn lane(
    collection: String,
    queue: Arc<Mutex<Queue>>,
    permits: Arc<Semaphore>,
    max_docs: usize,
    write: WriteFn,
) {
    loop {
        // One lock scope from the first batch to the merge: a lane that released the queue
        // between the two could find it held by a lane waiting for a batch that never comes.
        // The first batch is awaited without a permit, so an idle collection holds none, and
        // what arrives while the permit is awaited goes out in the same command.
        let (requests, _permit) = {
            let mut q = queue.lock().await;
            let Some(first) = q.next().await else {
                return;
            };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            (q.merge(first, max_docs), permit)
        };
        let started = Instant::now();
        let mut docs = Vec::with_capacity(requests.iter().map(|r| r.docs.len()).sum());
        let mut replies = Vec::with_capacity(requests.len());
        let parent = requests[0].span.clone();
        let links = requests[1..]
            .iter()
            .map(|r| r.span.context().span().span_context().clone())
            .filter(SpanContext::is_valid)
            .collect();
        for r in requests {
            replies.push((r.docs.len(), started - r.at, r.reply));
            docs.extend(r.docs);
        }
        let mut results = write(collection.clone(), docs, links)
            .instrument(parent)
            .await
            .into_iter();
        let took = started.elapsed();
        for (n, queued, reply) in replies {
            // A caller that went away (an aborted task) just misses its answer.
            let _ = reply.send(Written {
                results: results.by_ref().take(n).collect(),
                queued,
                write: took,
            });
        }
    }
}

/// The one database write, for the stream's writers and for backfill alike: `docs` into a
/// collection, retried until the database acknowledges. A database outage holds the caller (a
/// partition: nothing committed past it; a backfill: no checkpoint past it) but never loses or
/// skips an event.
pub fn write_fn(store: &Store, config: &Config, metrics: &Arc<Metrics>) -> WriteFn {
    let (store, metrics) = (store.clone(), metrics.clone());
    let retry = config.worker.retry.clone();
    let chooser = Arc::new(Chooser::new(config.worker.outcomes));
    Arc::new(
        move |collection: String, docs: Vec<RawDocumentBuf>, links| {
            let (store, metrics, retry) = (store.clone(), metrics.clone(), retry.clone());
            let chooser = chooser.clone();
            Box::pin(async move {
                let from = chooser.pick(&collection);
                WriteCommand {
                    docs: docs.len(),
                    from,
                }
                .emit(&metrics);
                let database = store.database().name().to_owned();
                let results = retry_forever(
                    "database_write",
                    Backoff::from_config(&retry),
                    &metrics,
                    |e: &leafsync_core::StoreError| e.class.as_str(),
                    || {
                        let span = tracing::info_span!(
                            "mongodb.update",
                            otel.name = format!("update {collection}"),
                            otel.kind = "client",
                            db.system = "mongodb",
                            db.namespace = %database,
                            db.collection.name = %collection,
                            db.operation.name = "update",
                            db.operation.batch.size = docs.len(),
                        );
                        for l in &links {
                            span.add_link(l.clone());
                        }
                        store
                            .write_batch_with(&collection, &docs, from)
                            .instrument(span)
                    },
                )
                .await;
                chooser.observe(&collection, &results);
                results
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use leafsync_core::Outcome;
    use mongodb::bson::rawdoc;
    use tokio_util::sync::CancellationToken;

    fn fatal() -> Fatal {
        Fatal::new(CancellationToken::new())
    }

    /// A write function that records each command's ids and answers `Updated` for each, after
    /// `delay`, so that the test can see what was merged.
    fn recording(delay: Duration) -> (WriteFn, Arc<std::sync::Mutex<Vec<Vec<i64>>>>) {
        let log: Arc<std::sync::Mutex<Vec<Vec<i64>>>> = Arc::default();
        let l = log.clone();
        let f: WriteFn = Arc::new(move |_c, docs, _links| {
            let ids: Vec<i64> = docs.iter().map(|d| d.get_i64("id").unwrap()).collect();
            l.lock().unwrap().push(ids.clone());
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                ids.iter()
                    .map(|&id| {
                        if id < 0 {
                            Ok(Outcome::Inserted)
                        } else {
                            Ok(Outcome::Updated)
                        }
                    })
                    .collect()
            })
        });
        (f, log)
    }

    fn docs(ids: &[i64]) -> Vec<RawDocumentBuf> {
        ids.iter().map(|&id| rawdoc! {"id": id}).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_batch_goes_out_alone_at_once() {
        let (f, log) = recording(Duration::from_millis(5));
        let w = Writers::start(
            ["c".to_owned()],
            &Arc::new(Semaphore::new(2)),
            100,
            f,
            &fatal(),
        );
        let got = w.write("c", docs(&[1, 2])).await;
        assert_eq!(got.results.len(), 2);
        assert_eq!(got.queued, Duration::ZERO);
        assert_eq!(*log.lock().unwrap(), vec![vec![1, 2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_ready_while_the_permits_are_busy_go_out_as_one_command_each_with_its_own_answers(
    ) {
        let (f, log) = recording(Duration::from_millis(10));
        let w = Arc::new(Writers::start(
            ["c".to_owned()],
            &Arc::new(Semaphore::new(1)),
            100,
            f,
            &fatal(),
        ));
        // The first batch takes the only permit; three more arrive while it is written.
        let mut calls = Vec::new();
        for batch in [vec![1], vec![2, 3], vec![4], vec![-5, 6]] {
            let w = w.clone();
            calls.push(tokio::spawn(async move {
                (batch.clone(), w.write("c", docs(&batch)).await)
            }));
            tokio::task::yield_now().await;
        }
        for c in calls {
            let (batch, got) = c.await.unwrap();
            let want: Vec<WriteResult> = batch
                .iter()
                .map(|&id| {
                    if id < 0 {
                        Ok(Outcome::Inserted)
                    } else {
                        Ok(Outcome::Updated)
                    }
                })
                .collect();
            assert_eq!(
                got.results, want,
                "batch {batch:?} got someone else's answers"
            );
        }
        let commands = log.lock().unwrap().clone();
        assert_eq!(commands, vec![vec![1], vec![2, 3, 4, -5, 6]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_repeating_an_id_of_the_command_waits_for_the_next_and_size_is_bounded() {
        let (f, log) = recording(Duration::from_millis(10));
        let w = Arc::new(Writers::start(
            ["c".to_owned()],
            &Arc::new(Semaphore::new(1)),
            4,
            f,
            &fatal(),
        ));
        let mut calls = Vec::new();
        for batch in [vec![1], vec![2, 3], vec![3], vec![7, 8, 9], vec![10]] {
            let w = w.clone();
            calls.push(tokio::spawn(
                async move { w.write("c", docs(&batch)).await },
            ));
            tokio::task::yield_now().await;
        }
        for c in calls {
            c.await.unwrap();
        }
        let commands = log.lock().unwrap().clone();
        // [2,3] and [3] may not share a command; [7,8,9] does not fit beside [2,3], and what
        // comes after it waits its turn rather than overtake it.
        assert_eq!(
            commands,
            vec![vec![1], vec![2, 3], vec![3, 7, 8, 9], vec![10]]
        );
        for c in &commands {
            let distinct: HashSet<&i64> = c.iter().collect();
            assert_eq!(distinct.len(), c.len(), "{c:?}");
            assert!(c.len() <= 4);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_waiting_for_a_permit_is_written_when_one_frees_even_if_nothing_else_comes() {
        let (f, log) = recording(Duration::from_millis(1));
        let permits = Arc::new(Semaphore::new(2));
        let w = Arc::new(Writers::start(["c".to_owned()], &permits, 10, f, &fatal()));
        // Every permit is busy elsewhere (other collections' commands) when the batch arrives.
        let busy = permits.clone().acquire_many_owned(2).await.unwrap();
        let call = {
            let w = w.clone();
            tokio::spawn(async move { w.write("c", docs(&[1])).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        drop(busy);
        let got = tokio::time::timeout(Duration::from_secs(5), call)
            .await
            .expect("the batch was never written: no other batch came to unblock it")
            .unwrap();
        assert_eq!(got.results.len(), 1);
        assert_eq!(got.queued, Duration::from_millis(5));
        assert_eq!(*log.lock().unwrap(), vec![vec![1]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_panics_fails_its_callers_and_stops_the_worker() {
        let f: WriteFn = Arc::new(|_c, _docs, _links| Box::pin(async { panic!("driver bug") }));
        let shutdown = CancellationToken::new();
        let fatal = Fatal::new(shutdown.clone());
        let w = Arc::new(Writers::start(
            ["c".to_owned()],
            &Arc::new(Semaphore::new(1)),
            10,
            f,
            &fatal,
        ));
        let caller = tokio::spawn(async move { w.write("c", docs(&[1])).await });
        let e = caller
            .await
            .expect_err("an empty answer would let the caller store its offset");
        assert!(e.is_panic());
        // The lane is gone for good: without a fatal error the collection would stall silently.
        tokio::time::timeout(Duration::from_secs(1), shutdown.cancelled())
            .await
            .expect("the worker is told to stop");
        assert_eq!(fatal.reason(), Some("the c writer panicked: driver bug"));
    }

    #[tokio::test(start_paused = true)]
    async fn direct_writers_and_unknown_collections_write_alone() {
        let (f, log) = recording(Duration::from_millis(1));
        let w = Writers::direct(f.clone());
        assert_eq!(w.write("x", docs(&[1])).await.results.len(), 1);
        let w = Writers::start(
            ["c".to_owned()],
            &Arc::new(Semaphore::new(1)),
            10,
            f,
            &fatal(),
        );
        assert_eq!(w.write("other", docs(&[2])).await.results.len(), 1);
        assert!(w.write("c", Vec::new()).await.results.is_empty());
        assert_eq!(*log.lock().unwrap(), vec![vec![1], vec![2]]);
    }
}
