//! Topic administration through the Kafka protocol (AdminClient), shared by the load tool,
//! the worker's replay command and the tests.

use std::time::{Duration, Instant};

use leafsync_core::config::KafkaConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication, TopicResult};
use rdkafka::client::{Client, ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::{AsyncRuntime, DefaultRuntime};

use crate::client::ClientConfigExt;

/// A broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The client could not be created or the request failed.
    #[error("Kafka {op} failed: {source}")]
    Client {
        /// What was being done.
        op: &'static str,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The broker refused an operation on a topic.
    #[error("Kafka {op} refused for topic {topic}: {code}")]
    Topic {
        /// What was being done.
        op: &'static str,
        /// The topic.
        topic: String,
        /// The broker's error code.
        code: RDKafkaErrorCode,
    },
}

impl AdminError {
    fn client(op: &'static str) -> impl FnOnce(KafkaError) -> Self {
        move |source| Self::Client { op, source }
    }
}

/// An admin client for `cfg` and the options every request here uses.
fn admin(
    cfg: &KafkaConfig,
) -> Result<(AdminClient<DefaultClientContext>, AdminOptions), AdminError> {
    let client = cfg
        .client_config()
        .create()
        .map_err(AdminError::client("admin client"))?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    Ok((client, opts))
}

/// The first per-topic refusal other than `fine` (e.g. "already exists" when creating).
fn refusals(
    op: &'static str,
    results: Vec<TopicResult>,
    fine: RDKafkaErrorCode,
) -> Result<(), AdminError> {
    for r in results {
        match r {
            Err((topic, code)) if code != fine => {
                return Err(AdminError::Topic { op, topic, code });
            }
            _ => {}
        }
    }
    Ok(())
}

/// How long [`ensure_topics`] waits for new topics to show in the broker's metadata.
const NEW_TOPIC_VISIBLE_WITHIN: Duration = Duration::from_secs(10);

/// Creates each topic with `partitions` partitions unless it exists, and returns once the
/// broker's metadata lists every one of them.
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    topics: &[&str],
    partitions: i32,
) -> Result<(), AdminError> {
    let (admin, opts) = admin(cfg)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(AdminError::client("create topics"))?;
    refusals(
        "create topic",
        results,
        RDKafkaErrorCode::TopicAlreadyExists,
    )?;
    // CreateTopics answers once the controller has the topics; a broker learns of them a moment
    // later, and a metadata request before that says "unknown topic" ("It may take several
    // seconds after CreateTopicsResult returns success for all the brokers to become aware that
    // the topics have been created": the `createTopics` javadoc of Kafka's `Admin`). A producer
    // started right after would refuse the topic, so wait until it is listed.
    let deadline = Instant::now() + NEW_TOPIC_VISIBLE_WITHIN;
    for topic in topics {
        while partition_count_via(admin.inner(), topic, Duration::from_secs(2))? == 0 {
            if Instant::now() >= deadline {
                return Err(AdminError::Topic {
                    op: "create topic (not in the broker's metadata in time)",
                    topic: (*topic).to_owned(),
                    code: RDKafkaErrorCode::UnknownTopicOrPartition,
                });
            }
            DefaultRuntime::delay_for(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Deletes topics; ones that do not exist are not an error (for test clean-up).
pub async fn delete_topics(cfg: &KafkaConfig, topics: &[&str]) -> Result<(), AdminError> {
    let (admin, opts) = admin(cfg)?;
    let results = admin
        .delete_topics(topics, &opts)
        .await
        .map_err(AdminError::client("delete topics"))?;
    refusals(
        "delete topic",
        results,
        RDKafkaErrorCode::UnknownTopicOrPartition,
    )
}

/// How many partitions `topic` has (0 when it does not exist; an error when the broker refuses
/// to describe it, e.g. no `Describe` ACL, which Kafka does not disguise as "unknown").
pub fn partition_count(
    cfg: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<u32, AdminError> {
    let consumer: BaseConsumer = cfg
        .client_config()
        .create()
        .map_err(AdminError::client("metadata client"))?;
    partition_count_via(consumer.client(), topic, timeout)
}

/// [`partition_count`] through a client that already exists (blocking, up to `timeout`).
pub fn partition_count_via<X: ClientContext>(
    client: &Client<X>,
    topic: &str,
    timeout: Duration,
) -> Result<u32, AdminError> {
    let md = client
        .fetch_metadata(Some(topic), timeout)
        .map_err(AdminError::client("metadata"))?;
    let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
        return Ok(0);
    };
    match t.error().map(RDKafkaErrorCode::from) {
        None => Ok(t.partitions().len() as u32),
        Some(RDKafkaErrorCode::UnknownTopicOrPartition) => Ok(0),
        Some(code) => Err(AdminError::Topic {
            op: "describe",
            topic: topic.to_owned(),
            code,
        }),
    }
}
