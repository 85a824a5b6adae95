//! Group membership and partition ownership (the pattern of Vector's Kafka source): one loop
//! serves the consumer's main queue only so that its callbacks run; on *assign* a queue is split
//! per partition and its task started before the callback returns; on *revoke* those tasks
//! finish their batch within the drain deadline, then offsets are committed synchronously.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use leafsync_core::config::{ms, Config};
use leafsync_kafka::{AccessWatch, ClientConfigExt as _};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::TopicPartitionList;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::events::{Emit, Rebalanced};
use crate::input::Input;
use crate::partition::PartitionTask;
use crate::Shared;

/// The worker's consumer type.
pub type LeafConsumer = StreamConsumer<WorkerContext>;

struct PartitionHandle {
    topic: String,
    partition: i32,
    stop: CancellationToken,
    join: JoinHandle<()>,
    stragglers: mpsc::UnboundedSender<OwnedMessage>,
}

/// Callbacks of the consumer, and the partition tasks they own.
pub struct WorkerContext {
    shared: Arc<Shared>,
    consumer: OnceLock<Weak<LeafConsumer>>,
    rt: Handle,
    tasks: Mutex<HashMap<(String, i32), PartitionHandle>>,
    /// Set once shutdown has drained and committed: the rebalance that closing the consumer
    /// runs (an unassign of everything) is then expected and has nothing left to do.
    closing: AtomicBool,
    access: AccessWatch,
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("partitions", &self.tasks().len())
            .field("closing", &self.closing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl WorkerContext {
    fn new(shared: Arc<Shared>, rt: Handle) -> Self {
        Self {
            access: shared.fatal.access_watch(),
            shared,
            consumer: OnceLock::new(),
            rt,
            tasks: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), PartitionHandle>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn start_partition(&self, consumer: &Arc<LeafConsumer>, topic: &str, partition: i32) {
        // A partition left assigned without a task would have its messages dropped until the
        // next rebalance: stop instead, and let the restart rejoin.
        let fatal = &self.shared.fatal;
        let Some(image_type) = self.shared.config.types.by_topic(topic) else {
            fatal.raise(format!(
                "assigned {topic}/{partition}, a topic that is not configured"
            ));
            return;
        };
        let Some(queue) = consumer.split_partition_queue(topic, partition) else {
            fatal.raise(format!("cannot split the queue of {topic}/{partition}"));
            return;
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let task = PartitionTask {
            topic: topic.to_owned(),
            partition,
            image_type,
            input: Input::new(rx, queue),
            consumer: consumer.clone(),
            shared: self.shared.clone(),
            stop: stop.clone(),
        };
        let join = fatal.spawn_on(
            &self.rt,
            format!("the partition task of {topic}/{partition}"),
            task.run(),
        );
        let handle = PartitionHandle {
            topic: topic.to_owned(),
            partition,
            stop,
            join,
            stragglers: tx,
        };
        if let Some(old) = self.tasks().insert((topic.to_owned(), partition), handle) {
            // Never two tasks for one partition: the old one must not store offsets anymore.
            old.stop.cancel();
            old.join.abort();
        }
        self.shared.metrics.assigned_partitions.inc();
    }

    /// Removes the tasks of `tpl`'s partitions (all of them when `None`).
    fn take(&self, tpl: Option<&TopicPartitionList>) -> Vec<PartitionHandle> {
        let mut tasks = self.tasks();
        let keys: Vec<(String, i32)> = match tpl {
            None => tasks.keys().cloned().collect(),
            Some(tpl) => tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect(),
        };
        let taken: Vec<PartitionHandle> = keys.iter().filter_map(|k| tasks.remove(k)).collect();
        self.shared
            .metrics
            .assigned_partitions
            .sub(taken.len() as i64);
        taken
    }

    /// A message the main queue returned: hand it to its partition's task, in order.
    fn route_straggler(&self, msg: OwnedMessage) {
        let key = (msg.topic().to_owned(), msg.partition());
        match self.tasks().get(&key) {
            Some(h) => {
                if h.stragglers.send(msg).is_err() {
                    tracing::warn!(topic = %key.0, partition = key.1, "partition task gone; message will be redelivered");
                }
            }
            None => {
                tracing::warn!(topic = %key.0, partition = key.1, "message for an unowned partition; it will be redelivered to its owner")
            }
        }
    }

    fn drain_blocking(&self, handles: Vec<PartitionHandle>) {
        if handles.is_empty() {
            return;
        }
        let deadline = ms(self.shared.config.worker.drain_timeout_ms);
        // Callbacks run inside the consumer's poll, on a runtime worker thread; `run` checked
        // that the runtime is multi-threaded, which `block_in_place` requires.
        tokio::task::block_in_place(|| self.rt.block_on(drain(handles, deadline)));
    }
}

/// Stops `handles`' tasks, lets each finish its batch until `deadline`, aborts the rest (their
/// uncommitted events are redelivered to the next owner and replayed idempotently).
async fn drain(handles: Vec<PartitionHandle>, deadline: Duration) {
    for h in &handles {
        h.stop.cancel();
    }
    let until = tokio::time::Instant::now() + deadline;
    for mut h in handles {
        if tokio::time::timeout_at(until, &mut h.join).await.is_err() {
            tracing::warn!(topic = %h.topic, partition = h.partition, "batch not finished within worker.drain_timeout_ms; its events will be redelivered");
            h.join.abort();
        }
    }
}

fn commit(consumer: &impl Consumer<WorkerContext>, why: &str) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!(why, "offsets committed"),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(why, error = %e, "offset commit failed; the events after the last commit will be redelivered")
        }
    }
}

impl ClientContext for WorkerContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "Kafka client error (librdkafka keeps retrying)");
        self.access.observe(&error, reason);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(_) if self.closing.load(Ordering::Relaxed) => {
                tracing::debug!("consumer closing: final unassign");
            }
            Rebalance::Revoke(tpl) => {
                Rebalanced::Revoked(&names(tpl)).emit(&self.shared.metrics);
                let handles = self.take(Some(tpl));
                self.drain_blocking(handles);
                if !base.assignment_lost() {
                    commit(base, "revoke");
                }
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _base: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        // Any assignment, even an empty one (a member with nothing to own), means joined.
        self.shared.health.set_joined();
        if tpl.count() == 0 {
            // Cooperative rebalances that give this worker nothing new end with an empty assign.
            return;
        }
        let Some(consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            // Only possible while the consumer is being dropped, i.e. after shutdown.
            tracing::debug!("assignment while the consumer is closing; ignored");
            return;
        };
        Rebalanced::Assigned(&names(tpl)).emit(&self.shared.metrics);
        for e in tpl.elements() {
            self.start_partition(&consumer, e.topic(), e.partition());
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(partitions = offsets.count(), "offsets committed"),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; will retry at the next commit")
            }
        }
    }
}

/// `topic/partition` of each element, for logs.
fn names(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}", e.topic(), e.partition()))
        .collect()
}

fn consumer_config(cfg: &Config, worker_id: &str) -> rdkafka::ClientConfig {
    let session = cfg.kafka.session_timeout_ms.to_string();
    let heartbeat = cfg.kafka.heartbeat_interval_ms.to_string();
    let commit = cfg.worker.commit_interval_ms.to_string();
    let queued = cfg.worker.queued_max_kbytes.to_string();
    let queued_min = cfg.worker.batch.max_events.to_string();
    let fetch = (cfg.worker.fetch_max_kbytes * 1024).to_string();
    let fetch_wait = cfg.worker.fetch_wait_max_ms.to_string();
    let fetch_per_partition = (cfg.worker.fetch_max_kbytes * 512).to_string();
    let mut c = cfg.kafka.client_config_with(&[
        ("group.id", &cfg.kafka.group_id),
        ("client.id", worker_id),
        ("auto.offset.reset", "earliest"),
        ("partition.assignment.strategy", "cooperative-sticky"),
        ("session.timeout.ms", &session),
        ("heartbeat.interval.ms", &heartbeat),
        // Offsets are stored by the partition tasks after the write, and committed by
        // librdkafka every commit interval (and synchronously on revoke and shutdown).
        ("enable.auto.commit", "true"),
        ("enable.auto.offset.store", "false"),
        ("auto.commit.interval.ms", &commit),
        ("queued.max.messages.kbytes", &queued),
        // librdkafka's defaults pre-fetch up to 100k messages per partition and 50 MB per fetch:
        // on a backlog that is most of the worker's memory. A few batches ahead is enough.
        ("queued.min.messages", &queued_min),
        // One fetch response is the unit of prefetch: it lands whole in a partition's queue
        // (buffers plus a librdkafka op per message) whatever the limits above say, so it bounds
        // the worker's memory (docs/benchmarks.md). A record batch larger than this still comes
        // through whole (KIP-74); librdkafka requires message.max.bytes ≤ fetch.max.bytes.
        ("fetch.max.bytes", &fetch),
        ("message.max.bytes", &fetch),
        ("fetch.message.max.bytes", &fetch_per_partition),
        ("fetch.wait.max.ms", &fetch_wait),
        ("enable.partition.eof", "false"),
    ]);
    if let Some(id) = &cfg.worker.instance_id {
        c.set("group.instance.id", id);
    }
    c
}

/// Joins the group and syncs until `shutdown`; then drains, commits and leaves.
pub async fn run(shared: Arc<Shared>, shutdown: CancellationToken) -> anyhow::Result<()> {
    // The revoke callback drains partition tasks with `block_in_place`, which panics on a
    // current-thread runtime.
    anyhow::ensure!(
        Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread,
        "the worker needs a multi-thread tokio runtime (its revoke callback blocks in place)"
    );
    let cfg = &shared.config;
    let ctx = WorkerContext::new(shared.clone(), Handle::current());
    let consumer: Arc<LeafConsumer> =
        Arc::new(consumer_config(cfg, &shared.worker_id).create_with_context(ctx)?);
    let _ = consumer.context().consumer.set(Arc::downgrade(&consumer));
    let topics = cfg.types.topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(group = %cfg.kafka.group_id, topics = ?topics, worker_id = %shared.worker_id, "joining consumer group");

    let lag = tokio::spawn(crate::lag::report(consumer.clone(), shared.clone()));
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            m = consumer.recv() => match m {
                Ok(msg) => consumer.context().route_straggler(msg.detach()),
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consumer error; retrying");
                    consumer.context().access.observe_queued(&e);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    tracing::info!("shutting down: finishing in-flight batches");
    lag.abort();
    // The lag task holds a reference to the consumer: wait until it is gone, so that the drop
    // below is the last one and the consumer closes here, before "worker stopped".
    let _ = lag.await;
    let handles = consumer.context().take(None);
    drain(handles, ms(cfg.worker.drain_timeout_ms)).await;
    commit(consumer.as_ref(), "shutdown");
    consumer.context().closing.store(true, Ordering::Relaxed);
    // Dropping the last reference closes the consumer, which leaves the group (unless static
    // membership is configured, which keeps the assignment for a restart).
    tokio::task::spawn_blocking(move || drop(consumer)).await?;
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_size_comes_from_config_and_properties_still_override() {
        let cfg = Config::load_with_overrides(
            "[worker]\nfetch_max_kbytes = 256\n[kafka.properties]\n\"fetch.wait.max.ms\" = 50\n",
        )
        .unwrap();
        let c = consumer_config(&cfg, "w-1");
        assert_eq!(c.get("fetch.max.bytes"), Some("262144"));
        assert_eq!(c.get("message.max.bytes"), Some("262144"));
        assert_eq!(c.get("fetch.message.max.bytes"), Some("131072"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("50"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("client.id"), Some("w-1"));
    }
}
