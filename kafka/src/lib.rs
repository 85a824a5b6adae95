//! leafsync-kafka: what leafsync's Kafka-facing binaries (worker, load tool) share.
//!
//! - [`access`]: refused credentials and untrusted certificates, made fatal and clear;
//! - [`client`]: an rdkafka client config from leafsync's `[kafka]` settings;
//! - [`admin`]: topic creation and partition counts through the Kafka protocol;
//! - [`offsets`]: committed offsets against high watermarks, i.e. consumer lag;
//! - [`trace_context`]: W3C trace context in message headers.

pub mod access;
pub mod admin;
pub mod client;
pub mod offsets;
pub mod trace_context;

pub use access::{AccessWatch, WatchedContext};
pub use admin::AdminError;
pub use client::ClientConfigExt;
