//! Configuration, loaded once at start-up: embedded defaults (`leafsync.example.toml`) → an
//! optional TOML file → `LEAFSYNC__SECTION__KEY` environment variables. Unknown keys and bad
//! values are errors that name the key, so a typo never silently runs with a default.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize, Serializer};

use crate::document::Projection;
use crate::image::ImageType;

/// The embedded defaults: the documented example file itself, so the two cannot drift.
pub const DEFAULTS: &str = include_str!("../../leafsync.example.toml");
/// Environment variable naming a config file.
pub const CONFIG_ENV: &str = "LEAFSYNC_CONFIG";
/// Prefix of per-key environment variables (`LEAFSYNC__KAFKA__BOOTSTRAP_SERVERS`).
pub const ENV_PREFIX: &str = "LEAFSYNC__";

/// Why the configuration cannot be used. Start-up stops with this message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named on the command line or in `$LEAFSYNC_CONFIG` does not exist.
    #[error("invalid configuration: config file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    /// A source could not be read or a key has the wrong type or is unknown.
    #[error("invalid configuration: {message}")]
    Load {
        /// Every problem, each naming its key and where the value came from.
        message: String,
        /// figment's error (the first of them, with the rest chained inside).
        #[source]
        source: Box<figment::Error>,
    },
    /// A value parsed but makes no sense.
    #[error("invalid configuration: key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `worker.batch.max_events`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `key` must not be blank.
fn nonempty(key: &str, v: &str) -> Result<(), ConfigError> {
    if v.trim().is_empty() {
        Err(invalid(key, "must not be empty"))
    } else {
        Ok(())
    }
}

/// `key` must be above 0.
fn positive(key: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(())
    }
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// One figment error as `key `a.b` (from …): what is wrong`, naming the env var when it came
/// from one, because that is what the operator has to change.
fn describe(e: &figment::Error) -> String {
    use figment::error::Kind;
    let mut path: Vec<String> = e.path.iter().map(|p| p.to_lowercase()).collect();
    let what = match &e.kind {
        Kind::UnknownField(field, expected) => {
            if path.last() != Some(&field.to_lowercase()) {
                path.push(field.to_lowercase());
            }
            format!("unknown key; expected one of: {}", expected.join(", "))
        }
        kind => kind.to_string(),
    };
    let from = match &e.metadata {
        Some(m) if m.name.contains("environment") => {
            format!(
                " (from env var {ENV_PREFIX}{})",
                path.join("__").to_uppercase()
            )
        }
        Some(m) => match &m.source {
            Some(src) => format!(" (from {src})"),
            None => format!(" (from {})", m.name),
        },
        None => String::new(),
    };
    if path.is_empty() {
        format!("{what}{from}")
    } else {
        format!("key `{}`{from}: {what}", path.join("."))
    }
}

/// A string that is never printed as it is.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The real value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value with its secret part masked: a URI keeps everything but its password.
    pub fn masked(&self) -> String {
        mask_uri_password(&self.0).unwrap_or_else(|| "****".to_owned())
    }
}

/// `scheme://user:pass@host…` → `scheme://user:****@host…`; `None` when `s` is no such URI.
fn mask_uri_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let at = rest.find('@');
    let slash = rest.find('/').unwrap_or(rest.len());
    match at {
        Some(at) if at < slash => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            Some(format!("{scheme}://{user}:****{}", &rest[at..]))
        }
        _ => Some(s.to_owned()),
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// Whole configuration of every leafsync binary (each reads the sections it needs).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Kafka connection and consumer group.
    pub kafka: KafkaConfig,
    /// MongoDB connection.
    pub mongo: MongoConfig,
    /// Per image type: topic, collection, projection.
    pub types: TypesConfig,
    /// The worker.
    pub worker: WorkerConfig,
    /// The HTTP API.
    pub api: ApiConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
}

/// Kafka connection and consumer group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Consumer group of the workers.
    pub group_id: String,
    /// Topic receiving bad events.
    pub dead_letter_topic: String,
    /// Largest dead letter the producer sends (its `message.max.bytes`); a larger one is sent
    /// with its value truncated.
    pub dead_letter_max_bytes: u64,
    /// Group session timeout.
    pub session_timeout_ms: u64,
    /// How often a member heartbeats; also how soon it learns that a rebalance started.
    pub heartbeat_interval_ms: u64,
    /// librdkafka properties passed through as they are.
    #[serde(default)]
    pub properties: KafkaProperties,
}

/// librdkafka properties; values of keys that look secret are masked when printed.
/// Numbers and booleans are accepted as well as strings: an env var like
/// `LEAFSYNC__KAFKA__PROPERTIES__FETCH_MAX_BYTES=262144` arrives as a number.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct KafkaProperties(
    #[serde(deserialize_with = "scalar_strings")] pub BTreeMap<String, String>,
);

fn scalar_strings<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        String(String),
        Int(i64),
        Float(f64),
        Bool(bool),
        Other(serde::de::IgnoredAny),
    }
    BTreeMap::<String, Scalar>::deserialize(d)?
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::String(s) => s,
                Scalar::Int(i) => i.to_string(),
                Scalar::Float(f) => f.to_string(),
                Scalar::Bool(b) => b.to_string(),
                // A TOML table here is usually an unquoted dotted key: `fetch.max.bytes = 1`.
                Scalar::Other(_) => {
                    return Err(serde::de::Error::custom(format!(
                        "property `{k}` must be a string, number or boolean \
                         (quote dotted names in TOML: \"{k}.…\" = …)"
                    )))
                }
            };
            Ok((k, v))
        })
        .collect()
}

impl KafkaProperties {
    fn is_secret(key: &str) -> bool {
        let key = key.replace('_', ".");
        [
            "password",
            "secret",
            "sasl.jaas.config",
            "sasl.oauthbearer.config",
            "key.pem",
        ]
        .iter()
        .any(|s| key.contains(s))
    }

    fn masked(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = if Self::is_secret(k) {
                    "****"
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.masked().fmt(f)
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.masked().serialize(s)
    }
}

impl KafkaConfig {
    /// The librdkafka properties of a client: `defaults`, then the connection settings, then the
    /// pass-through properties (which may override a default). `leafsync-kafka` turns them into
    /// a client; core stays free of librdkafka so that the API does not link it.
    pub fn client_properties(&self, defaults: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut c: BTreeMap<String, String> = defaults
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        c.insert("bootstrap.servers".into(), self.bootstrap_servers.clone());
        for (k, v) in &self.properties.0 {
            // Env vars cannot carry dots portably, so `SASL_PASSWORD` means `sasl.password`
            // (librdkafka property names have no underscores).
            c.insert(k.replace('_', "."), v.clone());
        }
        c
    }
}

/// MongoDB connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    /// Connection string.
    pub uri: Secret,
    /// Database holding one collection per image type.
    pub database: String,
    /// How long start-up waits for a first answer.
    pub startup_timeout_ms: u64,
    /// Per-operation server selection and connect timeout.
    pub connect_timeout_ms: u64,
    /// Connection pool size.
    pub max_pool_size: u32,
}

/// Per image type settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TypesConfig {
    /// Potato images.
    pub potato: TypeConfig,
    /// Tomato images.
    pub tomato: TypeConfig,
    /// Pepper images.
    pub pepper: TypeConfig,
}

/// Topic, collection and projection of one image type.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TypeConfig {
    /// Kafka topic carrying this type's events.
    pub topic: String,
    /// MongoDB collection holding this type's images.
    pub collection: String,
    /// Allow-list of fields stored; `None` keeps all.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

impl TypesConfig {
    /// Settings of image type `t`.
    pub fn get(&self, t: ImageType) -> &TypeConfig {
        match t {
            ImageType::Potato => &self.potato,
            ImageType::Tomato => &self.tomato,
            ImageType::Pepper => &self.pepper,
        }
    }

    /// The image type whose events arrive on `topic`.
    pub fn by_topic(&self, topic: &str) -> Option<ImageType> {
        ImageType::ALL
            .into_iter()
            .find(|t| self.get(*t).topic == topic)
    }

    /// Every configured topic, in [`ImageType::ALL`] order.
    pub fn topics(&self) -> Vec<String> {
        ImageType::ALL.map(|t| self.get(t).topic.clone()).to_vec()
    }

    /// Every configured collection, in [`ImageType::ALL`] order.
    pub fn collections(&self) -> [&str; 3] {
        ImageType::ALL.map(|t| self.get(t).collection.as_str())
    }

    /// The projection for type `t`.
    pub fn projection(&self, t: ImageType) -> Projection {
        self.get(t)
            .fields
            .as_ref()
            .map_or_else(Projection::all, |f| Projection::only(f.iter().cloned()))
    }
}

/// The worker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Static membership id (`group.instance.id`).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Largest accepted event value.
    pub max_event_bytes: usize,
    /// Offset commit period.
    pub commit_interval_ms: u64,
    /// Deadline for in-flight work on revoke and shutdown.
    pub drain_timeout_ms: u64,
    /// Admin HTTP address.
    pub admin_addr: SocketAddr,
    /// A batch busy longer than this makes `/live` fail.
    pub stuck_after_ms: u64,
    /// librdkafka pre-fetch bound per partition, KiB.
    pub queued_max_kbytes: u64,
    /// Size of one fetch response, KiB: the unit of pre-fetch, so the main driver of memory.
    pub fetch_max_kbytes: u64,
    /// Longest a fetch request waits at the broker for data (librdkafka `fetch.wait.max.ms`).
    pub fetch_wait_max_ms: u64,
    /// Write commands at the same time (each merges the batches of several partitions).
    pub max_in_flight_batches: usize,
    /// How a write learns each event's outcome: from its reply, a read first, or per collection
    /// whichever suits the recent mix.
    pub outcomes: crate::outcome_policy::OutcomePolicy,
    /// How often the consumer-lag gauges are refreshed.
    pub lag_interval_ms: u64,
    /// Micro-batching.
    pub batch: BatchConfig,
    /// Retry of transient failures.
    pub retry: RetryConfig,
}

/// Micro-batching of one partition's events.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events per batch.
    pub max_events: usize,
    /// Longest wait for a batch to fill.
    pub max_wait_ms: u64,
}

/// Capped exponential backoff.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// First delay.
    pub initial_backoff_ms: u64,
    /// Largest delay.
    pub max_backoff_ms: u64,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address.
    pub bind: SocketAddr,
    /// Bound on every request.
    pub request_timeout_ms: u64,
    /// Staleness bound of `/total`.
    pub total_cache_ttl_ms: u64,
    /// Cache of the `/ready` ping.
    pub ready_cache_ms: u64,
    /// Merge concurrent by-id reads of one type into one `$in` query.
    pub coalesce_reads: bool,
    /// Most ids in one coalesced query.
    pub max_read_batch: usize,
    /// Data requests served at once; more are shed with 503.
    pub max_concurrent_requests: usize,
    /// Longest path and query (414 past it).
    pub max_uri_bytes: usize,
    /// Most header bytes (431 past it).
    pub max_header_bytes: usize,
    /// Time a client has to send its request head.
    pub header_read_timeout_ms: u64,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs and traces.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Log output format.
    pub log_format: LogFormat,
    /// `tracing` EnvFilter directive.
    pub log_filter: String,
    /// OTLP/HTTP collector endpoint; no export when unset.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
    /// Sampling ratio for traces that start here.
    pub sample_ratio: f64,
}

/// Milliseconds → `Duration`, for the `*_ms` keys.
pub fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

impl Config {
    /// Loads from defaults, `path` (or `$LEAFSYNC_CONFIG`), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
        Self::from_figment(Self::figment(path.as_deref())?)
    }

    /// The layered sources, before extraction; `path` must exist when given.
    pub fn figment(path: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut f = Figment::from(Toml::string(DEFAULTS));
        if let Some(p) = path {
            if !p.is_file() {
                return Err(ConfigError::MissingFile(p.to_path_buf()));
            }
            f = f.merge(Toml::file(p));
        }
        Ok(f.merge(Env::prefixed(ENV_PREFIX).split("__")))
    }

    /// Extracts and validates.
    pub fn from_figment(f: Figment) -> Result<Self, ConfigError> {
        let c: Config = f.extract().map_err(|e| ConfigError::Load {
            message: e
                .clone()
                .into_iter()
                .map(|e| describe(&e))
                .collect::<Vec<_>>()
                .join("; "),
            source: Box::new(e),
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Loads from defaults and the environment, then applies `toml` (e.g. `a.b = 1` lines) on
    /// top: for tests and tools that adjust a few keys of the process's config.
    pub fn load_with_overrides(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Self::figment(None)?.merge(Toml::string(toml)))
    }

    /// Parses a whole TOML document on top of the defaults (no environment): for tools and tests
    /// that check a config file, e.g. the Kubernetes ConfigMap.
    pub fn from_toml_str(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULTS)).merge(Toml::string(toml)))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_kafka()?;
        self.validate_mongo()?;
        self.validate_types()?;
        self.validate_worker()?;
        self.validate_api_and_telemetry()
    }

    fn validate_kafka(&self) -> Result<(), ConfigError> {
        nonempty("kafka.bootstrap_servers", &self.kafka.bootstrap_servers)?;
        nonempty("kafka.group_id", &self.kafka.group_id)?;
        nonempty("kafka.dead_letter_topic", &self.kafka.dead_letter_topic)?;
        // librdkafka's own bounds for message.max.bytes.
        if !(1_000..=1_000_000_000).contains(&self.kafka.dead_letter_max_bytes) {
            return Err(invalid(
                "kafka.dead_letter_max_bytes",
                "must be between 1000 and 1000000000",
            ));
        }
        positive("kafka.session_timeout_ms", self.kafka.session_timeout_ms)?;
        positive(
            "kafka.heartbeat_interval_ms",
            self.kafka.heartbeat_interval_ms,
        )?;
        if self.kafka.heartbeat_interval_ms * 3 > self.kafka.session_timeout_ms {
            return Err(invalid(
                "kafka.heartbeat_interval_ms",
                format!(
                    "must be at most a third of kafka.session_timeout_ms ({}), or one lost \
                     heartbeat would evict the member",
                    self.kafka.session_timeout_ms
                ),
            ));
        }
        Ok(())
    }

    fn validate_mongo(&self) -> Result<(), ConfigError> {
        let uri = self.mongo.uri.expose();
        if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
            return Err(invalid(
                "mongo.uri",
                "must start with mongodb:// or mongodb+srv://",
            ));
        }
        nonempty("mongo.database", &self.mongo.database)?;
        positive("mongo.startup_timeout_ms", self.mongo.startup_timeout_ms)?;
        positive("mongo.connect_timeout_ms", self.mongo.connect_timeout_ms)?;
        positive("mongo.max_pool_size", self.mongo.max_pool_size.into())?;
        Ok(())
    }

    /// Each type has a topic and a collection of its own (and no topic is the dead-letter one).
    fn validate_types(&self) -> Result<(), ConfigError> {
        let mut topics = Vec::new();
        let mut collections = Vec::new();
        for t in ImageType::ALL {
            let tc = self.types.get(t);
            nonempty(&format!("types.{t}.topic"), &tc.topic)?;
            nonempty(&format!("types.{t}.collection"), &tc.collection)?;
            if topics.contains(&&tc.topic) || tc.topic == self.kafka.dead_letter_topic {
                return Err(invalid(
                    &format!("types.{t}.topic"),
                    format!("topic {:?} is used twice", tc.topic),
                ));
            }
            if collections.contains(&&tc.collection) {
                return Err(invalid(
                    &format!("types.{t}.collection"),
                    format!("collection {:?} is used twice", tc.collection),
                ));
            }
            topics.push(&tc.topic);
            collections.push(&tc.collection);
        }
        Ok(())
    }

    fn validate_worker(&self) -> Result<(), ConfigError> {
        let w = &self.worker;
        if w.instance_id
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return Err(invalid("worker.instance_id", "must not be empty when set"));
        }
        positive("worker.max_event_bytes", w.max_event_bytes as u64)?;
        positive("worker.commit_interval_ms", w.commit_interval_ms)?;
        positive("worker.drain_timeout_ms", w.drain_timeout_ms)?;
        if w.drain_timeout_ms >= self.kafka.session_timeout_ms {
            return Err(invalid(
                "worker.drain_timeout_ms",
                format!(
                    "must be below kafka.session_timeout_ms ({})",
                    self.kafka.session_timeout_ms
                ),
            ));
        }
        positive("worker.stuck_after_ms", w.stuck_after_ms)?;
        positive("worker.lag_interval_ms", w.lag_interval_ms)?;
        positive("worker.queued_max_kbytes", w.queued_max_kbytes)?;
        if w.fetch_wait_max_ms > 300_000 {
            return Err(invalid(
                "worker.fetch_wait_max_ms",
                "must be at most 300000 (librdkafka's limit)",
            ));
        }
        if !(1..=65_536).contains(&w.fetch_max_kbytes) {
            return Err(invalid(
                "worker.fetch_max_kbytes",
                "must be from 1 to 65536",
            ));
        }
        positive(
            "worker.max_in_flight_batches",
            w.max_in_flight_batches as u64,
        )?;
        if !(1..=100_000).contains(&w.batch.max_events) {
            return Err(invalid(
                "worker.batch.max_events",
                "must be from 1 to 100000",
            ));
        }
        positive(
            "worker.retry.initial_backoff_ms",
            w.retry.initial_backoff_ms,
        )?;
        if w.retry.max_backoff_ms < w.retry.initial_backoff_ms {
            return Err(invalid(
                "worker.retry.max_backoff_ms",
                "must be at least worker.retry.initial_backoff_ms",
            ));
        }
        Ok(())
    }

    fn validate_api_and_telemetry(&self) -> Result<(), ConfigError> {
        positive("api.request_timeout_ms", self.api.request_timeout_ms)?;
        positive("api.max_read_batch", self.api.max_read_batch as u64)?;
        positive(
            "api.max_concurrent_requests",
            self.api.max_concurrent_requests as u64,
        )?;
        positive("api.max_uri_bytes", self.api.max_uri_bytes as u64)?;
        positive("api.max_header_bytes", self.api.max_header_bytes as u64)?;
        positive(
            "api.header_read_timeout_ms",
            self.api.header_read_timeout_ms,
        )?;
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            return Err(invalid("telemetry.sample_ratio", "must be from 0.0 to 1.0"));
        }
        if let Some(e) = &self.telemetry.otlp_endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    "telemetry.otlp_endpoint",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, secrets masked: safe to log or print.
    pub fn redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; that is figment's API.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn load_in_jail(jail: &mut Jail, file: Option<&str>) -> Result<Config, ConfigError> {
        let path = file.map(|body| {
            jail.create_file("leafsync.toml", body).unwrap();
            PathBuf::from("leafsync.toml")
        });
        Config::from_figment(Config::figment(path.as_deref())?)
    }

    #[test]
    fn defaults_are_the_documented_example() {
        Jail::expect_with(|jail| {
            let c = load_in_jail(jail, None).unwrap();
            assert_eq!(c.kafka.bootstrap_servers, "127.0.0.1:9092");
            assert_eq!(c.kafka.group_id, "leafsync-worker");
            assert_eq!(c.kafka.dead_letter_topic, "leafsync.dlq");
            assert_eq!(c.worker.batch.max_events, 500);
            assert_eq!(c.types.topics(), ["potato", "tomato", "pepper"]);
            assert_eq!(c.types.get(ImageType::Tomato).collection, "tomato");
            assert_eq!(c.types.by_topic("pepper"), Some(ImageType::Pepper));
            assert_eq!(c.worker.instance_id, None);
            assert_eq!(c.telemetry.otlp_endpoint, None);
            Ok(())
        });
    }

    #[test]
    fn file_then_env_override_defaults() {
        Jail::expect_with(|jail| {
            jail.set_env("LEAFSYNC__KAFKA__BOOTSTRAP_SERVERS", "broker:29092");
            jail.set_env("LEAFSYNC__WORKER__BATCH__MAX_EVENTS", "1000");
            jail.set_env("LEAFSYNC__TYPES__POTATO__FIELDS", "[name, url]");
            let c = load_in_jail(
                jail,
                Some("[kafka]\nbootstrap_servers = \"file:9092\"\ngroup_id = \"g2\"\n[types.tomato]\ntopic = \"images.tomato\"\n"),
            )
            .unwrap();
            assert_eq!(c.kafka.bootstrap_servers, "broker:29092");
            assert_eq!(c.kafka.group_id, "g2");
            assert_eq!(c.worker.batch.max_events, 1000);
            assert_eq!(c.types.tomato.topic, "images.tomato");
            assert_eq!(c.types.tomato.collection, "tomato");
            assert_eq!(
                c.types.potato.fields,
                Some(vec!["name".into(), "url".into()])
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        Jail::expect_with(|jail| {
            let e = load_in_jail(jail, Some("[kafka]\nbootstrap_server = \"x\"\n")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("key `kafka.bootstrap_server`"), "{msg}");
            assert!(
                msg.contains("unknown key; expected one of: bootstrap_servers"),
                "{msg}"
            );
            assert!(msg.contains("leafsync.toml"), "{msg}");

            jail.set_env("LEAFSYNC__WORKER__BACTH__MAX_EVENTS", "3");
            let msg = load_in_jail(jail, None).unwrap_err().to_string();
            assert!(msg.contains("key `worker.bacth`"), "{msg}");
            assert!(msg.contains("env var LEAFSYNC__WORKER__BACTH"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_errors_naming_the_key() {
        Jail::expect_with(|jail| {
            jail.set_env("LEAFSYNC__WORKER__BATCH__MAX_EVENTS", "lots");
            let msg = load_in_jail(jail, None).unwrap_err().to_string();
            assert_eq!(
                msg,
                "invalid configuration: key `worker.batch.max_events` (from env var \
                 LEAFSYNC__WORKER__BATCH__MAX_EVENTS): invalid type: found string \"lots\", \
                 expected usize"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("LEAFSYNC__WORKER__BATCH__MAX_EVENTS", "0");
            let msg = load_in_jail(jail, None).unwrap_err().to_string();
            assert_eq!(
                msg,
                "invalid configuration: key `worker.batch.max_events`: must be from 1 to 100000"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("LEAFSYNC__MONGO__URI", "postgres://x");
            let msg = load_in_jail(jail, None).unwrap_err().to_string();
            assert!(msg.contains("`mongo.uri`"), "{msg}");
            jail.set_env("LEAFSYNC__MONGO__URI", "mongodb://x");
            jail.set_env("LEAFSYNC__TYPES__PEPPER__TOPIC", "potato");
            let msg = load_in_jail(jail, None).unwrap_err().to_string();
            assert!(msg.contains("`types.pepper.topic`"), "{msg}");
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("LEAFSYNC__WORKER__FETCH_MAX_KBYTES", "0");
            let msg = load_in_jail(jail, None).unwrap_err().to_string();
            assert_eq!(
                msg,
                "invalid configuration: key `worker.fetch_max_kbytes`: must be from 1 to 65536"
            );
            Ok(())
        });
        Jail::expect_with(|jail| {
            jail.set_env("LEAFSYNC__WORKER__DRAIN_TIMEOUT_MS", "60000");
            let msg = load_in_jail(jail, None).unwrap_err().to_string();
            assert!(msg.contains("`worker.drain_timeout_ms`"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn kafka_properties_take_strings_numbers_and_booleans() {
        Jail::expect_with(|jail| {
            jail.set_env("LEAFSYNC__KAFKA__PROPERTIES__FETCH_MAX_BYTES", "262144");
            jail.set_env("LEAFSYNC__KAFKA__PROPERTIES__CHECK_CRCS", "true");
            let c = load_in_jail(
                jail,
                Some("[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\"socket.timeout.ms\" = 30000\n"),
            )
            .unwrap();
            let rd = c.kafka.client_properties(&[("check.crcs", "false")]);
            let get = |k: &str| rd.get(k).map(String::as_str);
            assert_eq!(get("fetch.max.bytes"), Some("262144"));
            assert_eq!(
                get("check.crcs"),
                Some("true"),
                "properties override defaults"
            );
            assert_eq!(get("security.protocol"), Some("ssl"));
            assert_eq!(get("socket.timeout.ms"), Some("30000"));

            let msg = load_in_jail(jail, Some("[kafka.properties]\nfetch.max.bytes = 1\n"))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("key `kafka.properties`"), "{msg}");
            assert!(
                msg.contains("property `fetch` must be a string, number or boolean"),
                "{msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/leafsync.toml"))).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/leafsync.toml"));
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        Jail::expect_with(|jail| {
            jail.set_env(
                "LEAFSYNC__MONGO__URI",
                "mongodb://app:hunter2@db:27017/?authSource=admin",
            );
            jail.set_env("LEAFSYNC__KAFKA__PROPERTIES__SASL_PASSWORD", "kafkapass");
            jail.set_env("LEAFSYNC__KAFKA__PROPERTIES__SASL_USERNAME", "leaf");
            let c = load_in_jail(jail, None).unwrap();
            assert_eq!(
                c.mongo.uri.expose(),
                "mongodb://app:hunter2@db:27017/?authSource=admin"
            );
            for shown in [c.redacted_toml(), format!("{c:?}")] {
                assert!(!shown.contains("hunter2"), "{shown}");
                assert!(!shown.contains("kafkapass"), "{shown}");
                assert!(
                    shown.contains("mongodb://app:****@db:27017/?authSource=admin"),
                    "{shown}"
                );
            }
            assert!(c.redacted_toml().contains("leaf"));
            let rd = c.kafka.client_properties(&[]);
            assert_eq!(rd["sasl.password"], "kafkapass");
            assert_eq!(rd["sasl.username"], "leaf");
            Ok(())
        });
    }

    #[test]
    fn uri_masking() {
        assert_eq!(Secret::new("mongodb://h:1/x").masked(), "mongodb://h:1/x");
        assert_eq!(
            Secret::new("mongodb://u:p@h/x").masked(),
            "mongodb://u:****@h/x"
        );
        assert_eq!(
            Secret::new("mongodb://u@h/x").masked(),
            "mongodb://u:****@h/x"
        );
        assert_eq!(Secret::new("plain-token").masked(), "****");
    }

    #[test]
    fn a_heartbeat_slower_than_a_third_of_the_session_is_refused() {
        let e = Config::from_toml_str(
            "[kafka]\nsession_timeout_ms = 30000\nheartbeat_interval_ms = 10001\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("key `kafka.heartbeat_interval_ms`"), "{e}");
        assert!(
            e.contains("a third of kafka.session_timeout_ms (30000)"),
            "{e}"
        );
        Config::from_toml_str(
            "[kafka]\nsession_timeout_ms = 30000\nheartbeat_interval_ms = 10000\n",
        )
        .unwrap();
    }

    #[test]
    fn example_file_round_trips_through_from_toml_str() {
        let c = Config::from_toml_str("[worker]\ninstance_id = \"w-0\"\n").unwrap();
        assert_eq!(c.worker.instance_id.as_deref(), Some("w-0"));
        let again = Config::from_toml_str(&c.redacted_toml()).unwrap();
        assert_eq!(again.worker.instance_id.as_deref(), Some("w-0"));
    }
}
