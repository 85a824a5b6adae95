//! Comparing the consumer database with the expected state, document by document.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use leafsync_core::config::TypesConfig;
use leafsync_core::version::Version;
use leafsync_core::{ImageType, Store};
use mongodb::bson::Document;
use serde::Serialize;

use crate::expected::Expected;

/// What the database holds compared with what it should.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Images expected.
    pub expected: u64,
    /// Images exactly as expected.
    pub matched: u64,
    /// Expected but missing: `type/id`.
    pub lost: Vec<String>,
    /// Present with an older `updated_at` than expected.
    pub stale: Vec<String>,
    /// Same `updated_at` as expected but other content (or a newer one: a stray writer).
    pub mismatched: Vec<String>,
    /// Present but never produced.
    pub unexpected: Vec<String>,
}

impl Report {
    /// Whether the database equals the expected state.
    pub fn is_exact(&self) -> bool {
        self.lost.is_empty()
            && self.stale.is_empty()
            && self.mismatched.is_empty()
            && self.unexpected.is_empty()
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        format!(
            "expected {} matched {} lost {} stale {} mismatched {} unexpected {}",
            self.expected,
            self.matched,
            self.lost.len(),
            self.stale.len(),
            self.mismatched.len(),
            self.unexpected.len()
        )
    }
}

/// Reads every stored image and classifies it against `expected`.
pub async fn check(
    store: &Store,
    types: &TypesConfig,
    expected: &Expected,
) -> anyhow::Result<Report> {
    let mut r = Report {
        expected: expected.images.len() as u64,
        ..Report::default()
    };
    for t in ImageType::ALL {
        let projection = types.projection(t);
        let mut seen = HashSet::new();
        let mut docs: Vec<Document> = Vec::new();
        store
            .for_each(&types.get(t).collection, |d| docs.push(d))
            .await?;
        for d in docs {
            let Ok(id) = d.get_i64("id") else {
                r.unexpected.push(format!("{t}/?"));
                continue;
            };
            seen.insert(id);
            let name = format!("{t}/{id}");
            match expected.images.get(&(t, id)) {
                None => r.unexpected.push(name),
                Some(e) => {
                    let want = e.to_document(&projection);
                    if d == want {
                        r.matched += 1;
                    } else {
                        // Stale: the stored version would be replaced by the expected one and
                        // is not the same (core's one version rule).
                        let stored = d
                            .get_datetime("updated_at")
                            .ok()
                            .map(|x| Version::from_bson(*x));
                        if stored.is_some_and(|s| !s.replaces(Version::of(e.updated_at))) {
                            r.stale.push(name);
                        } else {
                            r.mismatched.push(name);
                        }
                    }
                }
            }
        }
        for (_, id) in expected
            .images
            .keys()
            .filter(|(ty, id)| *ty == t && !seen.contains(id))
        {
            r.lost.push(format!("{t}/{id}"));
        }
    }
    Ok(r)
}

/// Polls [`check`] until the database is exact or `timeout` passes; returns the last report.
pub async fn wait_until_synced(
    store: &Store,
    types: &TypesConfig,
    expected: &Expected,
    timeout: Duration,
) -> anyhow::Result<Report> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = check(store, types, expected).await?;
        if r.is_exact() || Instant::now() >= deadline {
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
