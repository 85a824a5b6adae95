//! What happened to one event: the single vocabulary of the store's replies, the worker's
//! metrics and logs (`outcome=…`), and the dead-letter path.

/// The fate of one consumed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Created.
    Inserted,
    /// Replaced an older stored version.
    Updated,
    /// The stored version has the same `updated_at`: an idempotent replay.
    Unchanged,
    /// A newer version is stored (or came earlier in the same batch); nothing was written.
    Stale,
    /// A later event of the same image in the same batch replaced it before the write.
    Superseded,
    /// Sent to the dead-letter topic.
    DeadLettered,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 6] = [
        Outcome::Inserted,
        Outcome::Updated,
        Outcome::Unchanged,
        Outcome::Stale,
        Outcome::Superseded,
        Outcome::DeadLettered,
    ];

    /// Label in metrics (`outcome="…"`), logs and span attributes.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Inserted => "inserted",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
            Outcome::Stale => "stale",
            Outcome::Superseded => "superseded",
            Outcome::DeadLettered => "dead_lettered",
        }
    }

    /// Whether the event's content is now what the database holds (or already was): the
    /// moment its end-to-end latency ends.
    pub fn is_visible(self) -> bool {
        matches!(
            self,
            Outcome::Inserted | Outcome::Updated | Outcome::Unchanged
        )
    }
}

/// The database refused one document for its own content (too large, bad field name); the
/// caller dead-letters the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Server error code.
    pub code: i32,
    /// Server message.
    pub message: String,
}

impl Rejected {
    /// The dead letter's reason (`leafsync.error.message`), the same for the stream and the
    /// backfill.
    pub fn reason(&self) -> String {
        format!(
            "MongoDB refused the document (code {}): {}",
            self.code, self.message
        )
    }
}

/// What a batched write says about one document.
pub type WriteResult = Result<Outcome, Rejected>;

/// Per-outcome counts (of a batch, a run).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OutcomeCounts([u64; Outcome::ALL.len()]);

impl OutcomeCounts {
    /// Counts one more `outcome`.
    pub fn add(&mut self, outcome: Outcome) {
        self.add_n(outcome, 1);
    }

    /// Counts `n` more `outcome`.
    pub fn add_n(&mut self, outcome: Outcome, n: u64) {
        self.0[outcome as usize] += n;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &OutcomeCounts) {
        for (o, n) in other.iter() {
            self.add_n(o, n);
        }
    }

    /// How many had `outcome`.
    pub fn get(&self, outcome: Outcome) -> u64 {
        self.0[outcome as usize]
    }

    /// All events counted.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `(outcome, count)` for every outcome, zeros included.
    pub fn iter(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL.into_iter().map(|o| (o, self.get(o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_has_its_own_counter_and_label() {
        let mut counts = OutcomeCounts::default();
        for (n, o) in Outcome::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                counts.add(o);
            }
        }
        for (n, o) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(counts.get(o), n as u64 + 1, "{o:?}");
        }
        assert_eq!(counts.total(), (1..=6).sum::<u64>());
        let labels: std::collections::HashSet<_> = Outcome::ALL.iter().map(|o| o.label()).collect();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }
}
