//! `leafsync-worker replay`: move the group's committed offsets back (to the earliest offset or
//! to a point in time) so the workers re-read and re-apply events. Writes are stale-safe, so a
//! replay converges to the same state. Refuses while the group has active members, because
//! running workers would overwrite the reset with their own commits.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use leafsync_core::Config;
use leafsync_kafka::{AccessWatch, ClientConfigExt as _, WatchedContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Where to move the offsets.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The earliest retained offset.
    Earliest,
    /// The first offset whose message timestamp is at or after this time.
    At(DateTime<Utc>),
}

/// One partition's change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Committed offset now (`None`: nothing committed).
    pub current: Option<i64>,
    /// Offset after the reset.
    pub new: i64,
    /// Events the workers will re-read (high watermark − new).
    pub to_reread: i64,
}

/// Why a replay cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Workers are running.
    #[error("consumer group {group:?} has {members} active member(s) ({ids}); stop the workers first (e.g. scale the Deployment and the KEDA ScaledObject to 0), then replay")]
    GroupActive {
        /// The group.
        group: String,
        /// How many members.
        members: usize,
        /// Their client ids.
        ids: String,
    },
    /// A topic given with `--topic` is not configured.
    #[error("topic {0:?} is not one of the configured image topics ({1})")]
    UnknownTopic(String, String),
    /// Kafka said no.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Computes the plan and, unless `dry_run`, commits it. Blocking (run it off the runtime).
pub fn replay(
    config: &Config,
    target: Target,
    topics: &[String],
    dry_run: bool,
) -> Result<Vec<Move>, ReplayError> {
    let topics = chosen_topics(config, topics)?;
    let group = &config.kafka.group_id;
    let consumer: BaseConsumer<WatchedContext> = config
        .kafka
        .client_config_with(&[("group.id", group), ("enable.auto.commit", "false")])
        .create_with_context(WatchedContext {
            access: AccessWatch::exiting("leafsync-worker replay"),
        })?;
    wait_for_broker(&consumer)?;
    refuse_if_active(&consumer, group)?;
    let all = partitions(&consumer, &topics)?;
    let committed = consumer.committed_offsets(all.clone(), TIMEOUT)?;
    let targets = match target {
        Target::Earliest => None,
        Target::At(t) => Some(offsets_at(&consumer, &all, t)?),
    };
    let mut plan = Vec::new();
    let mut commit = TopicPartitionList::new();
    for e in all.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), TIMEOUT)?;
        let offset_in = |list: &TopicPartitionList| match list
            .find_partition(e.topic(), e.partition())
            .map(|x| x.offset())
        {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        let new = match &targets {
            None => low,
            // No message at or after the time: nothing to re-read.
            Some(t) => offset_in(t).unwrap_or(high),
        };
        commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(new))?;
        plan.push(Move {
            topic: e.topic().to_owned(),
            partition: e.partition(),
            current: offset_in(&committed),
            new,
            to_reread: high - new,
        });
    }
    if !dry_run {
        consumer.commit(&commit, CommitMode::Sync)?;
    }
    Ok(plan)
}

/// `topics`, checked against the configured image topics; all of them when empty.
fn chosen_topics(config: &Config, topics: &[String]) -> Result<Vec<String>, ReplayError> {
    let configured = config.types.topics();
    if let Some(t) = topics.iter().find(|t| !configured.contains(t)) {
        return Err(ReplayError::UnknownTopic(t.clone(), configured.join(", ")));
    }
    Ok(if topics.is_empty() {
        configured
    } else {
        topics.to_vec()
    })
}

/// Waits (up to [`TIMEOUT`]) until the broker answers, polling meanwhile: a refused password or
/// certificate reaches this consumer only through `poll`, and the access watch then stops the
/// command with the cause instead of a bare timeout seconds later.
fn wait_for_broker(consumer: &BaseConsumer<WatchedContext>) -> Result<(), ReplayError> {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            consumer.context().access.observe_queued(&e);
        }
        match consumer.fetch_metadata(None, Duration::from_millis(500)) {
            Ok(_) => return Ok(()),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => {}
        }
    }
}

/// Running workers would overwrite the reset with their own commits.
fn refuse_if_active(
    consumer: &BaseConsumer<WatchedContext>,
    group: &str,
) -> Result<(), ReplayError> {
    let groups = consumer.fetch_group_list(Some(group), TIMEOUT)?;
    match groups
        .groups()
        .iter()
        .find(|g| g.name() == group && !g.members().is_empty())
    {
        Some(g) => {
            let ids: Vec<&str> = g.members().iter().map(|m| m.client_id()).collect();
            Err(ReplayError::GroupActive {
                group: group.to_owned(),
                members: ids.len(),
                ids: ids.join(", "),
            })
        }
        None => Ok(()),
    }
}

/// Every partition of `topics`.
fn partitions(
    consumer: &BaseConsumer<WatchedContext>,
    topics: &[String],
) -> Result<TopicPartitionList, ReplayError> {
    let mut all = TopicPartitionList::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        for t in md.topics() {
            for p in t.partitions() {
                all.add_partition(t.name(), p.id());
            }
        }
    }
    Ok(all)
}

/// The first offset at or after `t` in each partition of `all`.
fn offsets_at(
    consumer: &BaseConsumer<WatchedContext>,
    all: &TopicPartitionList,
    t: DateTime<Utc>,
) -> Result<TopicPartitionList, ReplayError> {
    let mut q = TopicPartitionList::new();
    for e in all.elements() {
        q.add_partition_offset(
            e.topic(),
            e.partition(),
            Offset::Offset(t.timestamp_millis()),
        )?;
    }
    Ok(consumer.offsets_for_times(q, TIMEOUT)?)
}

/// The plan as a table.
pub fn render(plan: &[Move], group: &str, dry_run: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} offsets of group {group:?}:",
        if dry_run { "Would reset" } else { "Reset" }
    );
    let _ = writeln!(
        s,
        "{:<24} {:>9} {:>12} {:>12} {:>12}",
        "topic", "partition", "current", "new", "to re-read"
    );
    for m in plan {
        let cur = m.current.map_or_else(|| "-".to_owned(), |c| c.to_string());
        let _ = writeln!(
            s,
            "{:<24} {:>9} {:>12} {:>12} {:>12}",
            m.topic, m.partition, cur, m.new, m.to_reread
        );
    }
    let total: i64 = plan.iter().map(|m| m.to_reread).sum();
    let _ = writeln!(
        s,
        "{total} events to re-read{}",
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    s
}
