//! leafsync-core: the domain library every leafsync binary is built on.
//!
//! - [`image`]: image types and ids; [`event`]: the producer contract and its strict decoder;
//!   [`document`]: how an image is stored (BSON) and shown (JSON);
//! - [`partitioner`]: murmur3 partitioning, the producer contract for ordering;
//! - [`store`]: the MongoDB consumer database and its stale-safe batched write;
//! - [`config`], [`telemetry`], [`trace_context`], [`shutdown`], [`process`]: process plumbing, one
//!   place each ([`process`] is how every binary starts and ends).

pub mod cached_check;
pub mod config;
pub mod document;
pub mod event;
pub mod image;
pub mod kafka_admin;
pub mod partitioner;
pub mod process;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod trace_context;

pub use config::{Config, ConfigError};
pub use event::{DecodeError, ImageEvent};
pub use image::{ImageId, ImageType};
pub use store::{ErrorClass, Store, StoreError, WriteOutcome};
