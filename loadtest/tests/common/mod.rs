//! Shared by the load tool's integration tests: an isolated slice of the shared stack and the
//! workspace's other binaries.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use leafsync_core::{Config, Store};
use leafsync_kafka::admin::{delete_topics, ensure_topics};
use leafsync_testkit::{env_to_toml, unique, Cleanup};

/// Another binary of the workspace (`cargo test --workspace` builds them all into one directory).
pub fn sibling(bin: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_leafsync-loadtest")).with_file_name(bin);
    assert!(
        p.exists(),
        "{} not built (run cargo test --workspace)",
        p.display()
    );
    p
}

/// A test's own topics (6 partitions each), group, dead-letter topic and database on the shared
/// stack, removed when dropped.
pub struct Isolated {
    pub name: String,
    /// The `LEAFSYNC__…` variables that point a process at them.
    pub env: Vec<(String, String)>,
    pub config: Config,
    _cleanup: Cleanup,
}

impl Isolated {
    pub async fn new() -> Self {
        let name = unique("lt");
        let mut env: Vec<(String, String)> = ["potato", "tomato", "pepper"]
            .iter()
            .map(|t| {
                (
                    format!("LEAFSYNC__TYPES__{}__TOPIC", t.to_uppercase()),
                    format!("{name}.{t}"),
                )
            })
            .collect();
        env.extend([
            (
                "LEAFSYNC__KAFKA__DEAD_LETTER_TOPIC".into(),
                format!("{name}.dlq"),
            ),
            (
                "LEAFSYNC__KAFKA__GROUP_ID".into(),
                format!("{name}.workers"),
            ),
            ("LEAFSYNC__MONGO__DATABASE".into(), name.clone()),
        ]);
        let config = Config::load_with_overrides(&env_to_toml(&env)).unwrap();
        let mut topics = config.types.topics();
        topics.push(config.kafka.dead_letter_topic.clone());
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        ensure_topics(&config.kafka, &refs, 6).await.unwrap();
        let c = config.clone();
        let _cleanup = Cleanup::new(format!("database {name}"), move || async move {
            let store = Store::connect_lazy(&c.mongo, "lt-cleanup")
                .await
                .map_err(|e| e.to_string())?;
            store.database().drop().await.map_err(|e| e.to_string())?;
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            delete_topics(&c.kafka, &refs)
                .await
                .map_err(|e| e.to_string())
        });
        Self {
            name,
            env,
            config,
            _cleanup,
        }
    }
}
