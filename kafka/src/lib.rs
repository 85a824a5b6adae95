//! leafsync-kafka: what leafsync's Kafka-facing binaries (worker, load tool) share.
//!
//! - [`client`]: an rdkafka client config from leafsync's `[kafka]` settings;
//! - [`admin`]: topic creation and partition counts through the Kafka protocol;
//! - [`offsets`]: committed offsets against high watermarks, i.e. consumer lag;
//! - [`trace_context`]: W3C trace context in message headers.

pub mod admin;
pub mod client;
pub mod offsets;
pub mod trace_context;

pub use admin::AdminError;
pub use client::ClientConfigExt;
