//! Verification through the HTTP API instead of MongoDB: every expected image by id, and the
//! API's `/total` counts.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use leafsync_core::document::document_to_json;
use leafsync_core::{Config, ImageType};

use crate::expected::Expected;
use crate::verify::Report;

/// Compares every expected image with what `GET {base}/image-plant/{type}/{id}` returns, then
/// waits (bounded) until `/total` agrees with the expected counts.
pub async fn check(
    config: &Config,
    base: &str,
    expected: &Expected,
    timeout: Duration,
) -> anyhow::Result<(Report, Vec<String>)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = base.trim_end_matches('/');
    let results: Vec<(String, Result<Option<bool>, String>)> = stream::iter(expected.images.iter())
        .map(|((t, id), e)| {
            let client = client.clone();
            let want = document_to_json(&e.to_document(&config.types.projection(*t)));
            let url = format!("{base}/image-plant/{t}/{id}");
            async move {
                let r = match client.get(&url).send().await {
                    Ok(r) if r.status() == 404 => Ok(None),
                    Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                        Ok(got) => Ok(Some(got == want)),
                        Err(e) => Err(e.to_string()),
                    },
                    Ok(r) => Err(format!("HTTP {}", r.status())),
                    Err(e) => Err(e.to_string()),
                };
                (format!("{t}/{id}"), r)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut report = Report {
        expected: expected.images.len() as u64,
        ..Report::default()
    };
    for (name, r) in results {
        match r {
            Ok(Some(true)) => report.matched += 1,
            Ok(Some(false)) => report.mismatched.push(name),
            Ok(None) => report.lost.push(name),
            Err(e) => anyhow::bail!("{name}: {e}"),
        }
    }
    let mut total_problems = Vec::new();
    let deadline = Instant::now() + timeout;
    loop {
        total_problems.clear();
        for t in ImageType::ALL {
            for include_deleted in [false, true] {
                let want = expected.count(t, include_deleted);
                let url = format!("{base}/image-plant/{t}/total?include_deleted={include_deleted}");
                let got: u64 = client.get(&url).send().await?.json().await?;
                if got != want {
                    total_problems.push(format!("{url}: {got}, expected {want}"));
                }
            }
        }
        if total_problems.is_empty() || Instant::now() >= deadline {
            return Ok((report, total_problems));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
