//! Helpers for integration tests against the local stack (`scripts/stack up`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is a failure with its message
#![allow(dead_code, unreachable_pub)]

use leafsync_core::config::Config;
use leafsync_core::Store;
use leafsync_testkit::{unique, Cleanup};

/// The stack's config (from `LEAFSYNC__…` env, as `scripts/stack env` prints) with a fresh
/// database, and the guard that drops that database when the test ends.
pub fn config() -> (Config, Cleanup) {
    let mut c = Config::load(None).expect("config from env");
    c.mongo.database = unique("t");
    c.mongo.startup_timeout_ms = 15_000;
    let mongo = c.mongo.clone();
    let cleanup = Cleanup::new(format!("database {}", mongo.database), move || async move {
        let store = Store::connect_lazy(&mongo, "leafsync-test-cleanup")
            .await
            .map_err(|e| e.to_string())?;
        store.database().drop().await.map_err(|e| e.to_string())
    });
    (c, cleanup)
}
