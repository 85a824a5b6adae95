//! What a backfill shows while it runs and when it ends: a progress bar with ETA per type on a
//! terminal, a log line every few seconds otherwise (a Kubernetes Job's log), and a summary
//! table at the end.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use leafsync_core::{ImageType, Outcome, OutcomeCounts};

/// How often a log line reports progress when there is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress of every type of one backfill.
#[derive(Debug)]
pub struct Progress {
    bars: Option<MultiProgress>,
}

impl Progress {
    /// Bars when stderr is a terminal, log lines otherwise.
    pub fn new() -> Self {
        Self {
            bars: std::io::stderr().is_terminal().then(MultiProgress::new),
        }
    }

    /// Progress of type `t` reading a source of `size` units (`bytes` or documents).
    pub fn add(&self, t: ImageType, size: Option<u64>, bytes: bool) -> TypeProgress {
        let bar = self.bars.as_ref().map(|m| {
            let template = if bytes {
                "{prefix:>7} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"
            } else {
                "{prefix:>7} [{bar:30}] {human_pos}/{human_len} docs {per_sec} ETA {eta} {msg}"
            };
            let style = ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
            let b = m.add(ProgressBar::new(size.unwrap_or(0)).with_style(style));
            b.set_prefix(t.as_str());
            b
        });
        TypeProgress {
            t,
            bar,
            size,
            started: Instant::now(),
            logged: Instant::now(),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

/// Progress of one type.
#[derive(Debug)]
pub struct TypeProgress {
    t: ImageType,
    bar: Option<ProgressBar>,
    size: Option<u64>,
    started: Instant,
    logged: Instant,
}

impl TypeProgress {
    /// The source has been read up to `at` (its units); `counts` has one outcome per document.
    pub fn update(&mut self, at: u64, counts: &OutcomeCounts) {
        if let Some(b) = &self.bar {
            b.set_position(at);
            b.set_message(format!(
                "written {} dead-lettered {}",
                counts.get(Outcome::Inserted) + counts.get(Outcome::Updated),
                counts.get(Outcome::DeadLettered)
            ));
        } else if self.logged.elapsed() >= LOG_EVERY {
            self.logged = Instant::now();
            let percent = self
                .size
                .filter(|&s| s > 0)
                .map(|s| (at as f64 * 100.0 / s as f64).min(100.0));
            let read = counts.total();
            tracing::info!(
                r#type = self.t.as_str(),
                read,
                percent = percent.map(|p| format!("{p:.1}")),
                docs_per_s = (read as f64 / self.started.elapsed().as_secs_f64().max(0.001)) as u64,
                inserted = counts.get(Outcome::Inserted),
                updated = counts.get(Outcome::Updated),
                dead_lettered = counts.get(Outcome::DeadLettered),
                "backfill progress"
            );
        }
    }

    /// The type is done (or stopped).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

/// How one type's backfill ended.
#[derive(Debug, Clone)]
pub struct TypeSummary {
    /// The image type.
    pub t: ImageType,
    /// The source's name.
    pub source: String,
    /// Outcomes in this run: one per document read.
    pub counts: OutcomeCounts,
    /// Documents the pass had read before this run (when it resumed a checkpoint).
    pub resumed_after: Option<u64>,
    /// Whether the source was read to its end.
    pub finished: bool,
    /// Why it stopped early, when it failed.
    pub error: Option<String>,
    /// Time this run took.
    pub elapsed: Duration,
}

impl TypeSummary {
    /// Nothing done yet.
    pub fn new(t: ImageType, source: String) -> Self {
        Self {
            t,
            source,
            counts: OutcomeCounts::default(),
            resumed_after: None,
            finished: false,
            error: None,
            elapsed: Duration::ZERO,
        }
    }

    /// Documents per second in this run.
    pub fn docs_per_s(&self) -> f64 {
        self.counts.total() as f64 / self.elapsed.as_secs_f64().max(0.001)
    }

    fn state(&self) -> &'static str {
        match (&self.error, self.finished) {
            (Some(_), _) => "failed",
            (None, true) => "done",
            (None, false) => "stopped",
        }
    }
}

/// The table printed at the end. In a dry run the outcomes are what *would* happen.
pub fn render(summaries: &[TypeSummary], dry_run: bool) -> String {
    let mut out = String::new();
    if dry_run {
        out.push_str("dry run: nothing was written; the counts say what a real run would do\n");
    }
    let _ = writeln!(
        out,
        "{:<7} {:<8} {:>9} {:>9} {:>8} {:>9} {:>7} {:>10} {:>13} {:>8}  source",
        "type",
        "state",
        "read",
        "inserted",
        "updated",
        "unchanged",
        "stale",
        "superseded",
        "dead_lettered",
        "docs/s"
    );
    let mut total = OutcomeCounts::default();
    for s in summaries {
        total.merge(&s.counts);
        let _ = writeln!(
            out,
            "{:<7} {:<8} {:>9} {:>9} {:>8} {:>9} {:>7} {:>10} {:>13} {:>8.0}  {}{}",
            s.t.as_str(),
            s.state(),
            s.counts.total(),
            s.counts.get(Outcome::Inserted),
            s.counts.get(Outcome::Updated),
            s.counts.get(Outcome::Unchanged),
            s.counts.get(Outcome::Stale),
            s.counts.get(Outcome::Superseded),
            s.counts.get(Outcome::DeadLettered),
            s.docs_per_s(),
            s.source,
            s.resumed_after
                .map(|n| format!(" (resumed after {n} documents)"))
                .unwrap_or_default(),
        );
    }
    let _ = writeln!(
        out,
        "{:<7} {:<8} {:>9} {:>9} {:>8} {:>9} {:>7} {:>10} {:>13}",
        "total",
        "",
        total.total(),
        total.get(Outcome::Inserted),
        total.get(Outcome::Updated),
        total.get(Outcome::Unchanged),
        total.get(Outcome::Stale),
        total.get(Outcome::Superseded),
        total.get(Outcome::DeadLettered),
    );
    for s in summaries {
        if let Some(e) = &s.error {
            let _ = writeln!(out, "{}: {e}", s.t);
        }
    }
    if summaries
        .iter()
        .any(|s| s.counts.get(Outcome::DeadLettered) > 0)
        && !dry_run
    {
        out.push_str("dead-lettered documents are on the dead-letter topic with leafsync.source=backfill and their position\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_a_row_per_type_a_total_and_the_errors() {
        let mut counts = OutcomeCounts::default();
        counts.add_n(Outcome::Inserted, 7);
        counts.add_n(Outcome::DeadLettered, 2);
        let s = |t, finished, error: Option<&str>| TypeSummary {
            t,
            source: format!("jsonl:/x/{t}.jsonl"),
            counts: counts.clone(),
            resumed_after: None,
            finished,
            error: error.map(str::to_owned),
            elapsed: Duration::from_secs(1),
        };
        let text = render(
            &[
                s(ImageType::Potato, true, None),
                s(
                    ImageType::Tomato,
                    false,
                    Some("cannot read /x/tomato.jsonl"),
                ),
            ],
            false,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].starts_with("potato  done") && lines[1].contains(" 7 "),
            "{text}"
        );
        assert!(lines[2].starts_with("tomato  failed"), "{text}");
        let total: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(total, ["total", "18", "14", "0", "0", "0", "0", "4"]);
        assert!(text.contains("tomato: cannot read /x/tomato.jsonl"));
        assert!(text.contains("dead-letter topic"));
        assert!(render(&[], true).starts_with("dry run"));
    }
}
