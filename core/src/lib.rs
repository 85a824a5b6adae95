//! leafsync-core: the domain library every leafsync binary is built on.
//!
//! - [`image`]: image types and ids; [`event`]: the producer contract and its strict decoder;
//!   [`document`]: how an image is stored (BSON) and shown (JSON);
//! - [`partitioner`]: murmur3 partitioning, the producer contract for ordering;
//! - [`version`]: the one ordering rule (newest `updated_at` wins, the later event on ties);
//! - [`store`]: the MongoDB consumer database and its stale-safe batched write, whose replies
//!   are [`outcome`]s; [`outcome_policy`]: which of its two ways of learning them to use;
//! - [`config`], [`telemetry`], [`shutdown`], [`process`]: process plumbing, one place each
//!   ([`process`] is how every binary starts and ends).
//!
//! Kafka itself (clients, topic admin, trace-context headers) lives in `leafsync-kafka`, so the
//! API, which never talks to Kafka, does not link librdkafka.

pub mod cached_check;
pub mod config;
pub mod document;
pub mod event;
pub mod image;
pub mod outcome;
pub mod outcome_policy;
pub mod partitioner;
pub mod process;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod version;

pub use config::{Config, ConfigError};
pub use event::{DecodeError, ImageEvent};
pub use image::{ImageId, ImageType};
pub use outcome::{Outcome, OutcomeCounts, Rejected, WriteResult};
pub use store::{ErrorClass, Store, StoreError};
pub use version::Version;
