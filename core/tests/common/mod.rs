//! Helpers for integration tests against the local stack (`scripts/stack up`).
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};

use leafsync_core::config::Config;

/// A name no other test (or earlier run) uses: tests share one stack but never data.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}-{}-{nanos:x}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The stack's config (from `LEAFSYNC__…` env, as `scripts/stack env` prints) with a fresh
/// database.
pub fn config() -> Config {
    let mut c = Config::load(None).expect("config from env");
    c.mongo.database = unique("t").replace('-', "_");
    c.mongo.startup_timeout_ms = 15_000;
    c
}
