//! Topic administration through the Kafka protocol (AdminClient), shared by the load tool,
//! the worker's replay command and the tests.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;

/// A broker operation failed.
#[derive(Debug, thiserror::Error)]
#[error("Kafka {op} failed: {message}")]
pub struct AdminError {
    /// What was being done.
    pub op: &'static str,
    /// librdkafka's message.
    pub message: String,
}

fn err(op: &'static str, e: impl std::fmt::Display) -> AdminError {
    AdminError {
        op,
        message: e.to_string(),
    }
}

/// Creates each topic with `partitions` partitions unless it exists.
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    topics: &[&str],
    partitions: i32,
) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> = cfg
        .client_config()
        .create()
        .map_err(|e| err("admin client", e))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| err("create topics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(err("create topics", format!("{topic}: {code}"))),
        }
    }
    Ok(())
}

/// How many partitions `topic` has (0 when it does not exist).
pub fn partition_count(
    cfg: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<u32, AdminError> {
    let consumer: BaseConsumer = cfg
        .client_config()
        .create()
        .map_err(|e| err("metadata client", e))?;
    partition_count_via(&consumer, topic, timeout)
}

/// [`partition_count`] through a client that already exists (blocking, up to `timeout`).
pub fn partition_count_via<X: ConsumerContext, C: Consumer<X>>(
    client: &C,
    topic: &str,
    timeout: Duration,
) -> Result<u32, AdminError> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| err("metadata", e))?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as u32))
}
