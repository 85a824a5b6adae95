//! How a write learns each event's outcome: `worker.outcomes` and, for `auto`, the choice per
//! collection between the two ways [`Store::write_batch_with`](crate::Store::write_batch_with)
//! knows (see the `store` module docs).
//!
//! Asking the reply costs one round trip for an event that is new or newer than what is stored,
//! but a replay or a stale event is refused once and sent again. Reading first costs a read
//! every time, but a stale event is never sent and a replay is one statement. So the cheaper way
//! follows the share of recent events whose stored version was equal or newer: low in a live
//! stream, high when history is replayed or a periodic backfill re-reads unchanged images
//! (`leafsync-loadtest bench-db --stored`, docs/benchmarks.md "Outcomes").

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::outcome::{Outcome, WriteResult};
use crate::store::OutcomesFrom;

/// `worker.outcomes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutcomePolicy {
    /// Per collection, whichever way suits the recent mix (the default).
    Auto,
    /// Always from the reply.
    Reply,
    /// Always from a read first.
    Read,
}

/// Past this share of equal-or-newer stored versions, reading first is cheaper: each such event
/// costs the reply way a refused statement and a second command.
const READ_ABOVE: f64 = 0.5;
/// Weight of the newest command in the running share: a handful of commands decide a switch,
/// one odd command does not.
const WEIGHT: f64 = 0.25;

/// Picks [`OutcomesFrom`] per collection under an [`OutcomePolicy`].
#[derive(Debug)]
pub struct Chooser {
    policy: OutcomePolicy,
    /// Running share of written events that met an equal or newer stored version.
    replayed: Mutex<HashMap<String, f64>>,
}

impl Chooser {
    /// A chooser that has seen nothing yet (`auto` starts from the reply: a live stream).
    pub fn new(policy: OutcomePolicy) -> Self {
        Self {
            policy,
            replayed: Mutex::new(HashMap::new()),
        }
    }

    /// The way to use for the next command to `collection`.
    pub fn pick(&self, collection: &str) -> OutcomesFrom {
        match self.policy {
            OutcomePolicy::Reply => OutcomesFrom::Reply,
            OutcomePolicy::Read => OutcomesFrom::Read,
            OutcomePolicy::Auto => {
                let share = self.lock().get(collection).copied().unwrap_or(0.0);
                if share > READ_ABOVE {
                    OutcomesFrom::Read
                } else {
                    OutcomesFrom::Reply
                }
            }
        }
    }

    /// Learns from a command's outcomes (either way labels them the same).
    pub fn observe(&self, collection: &str, outcomes: &[WriteResult]) {
        if self.policy != OutcomePolicy::Auto {
            return;
        }
        let (mut replayed, mut labelled) = (0u32, 0u32);
        for o in outcomes.iter().flatten() {
            labelled += 1;
            replayed += u32::from(matches!(o, Outcome::Unchanged | Outcome::Stale));
        }
        if labelled == 0 {
            return;
        }
        let share = f64::from(replayed) / f64::from(labelled);
        let mut map = self.lock();
        let running = map.entry(collection.to_owned()).or_insert(0.0);
        *running += WEIGHT * (share - *running);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, f64>> {
        // A panic elsewhere cannot leave a share half-written (one f64 store).
        self.replayed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Rejected;

    fn command(inserted: usize, unchanged: usize, stale: usize) -> Vec<WriteResult> {
        std::iter::repeat_n(Ok(Outcome::Inserted), inserted)
            .chain(std::iter::repeat_n(Ok(Outcome::Unchanged), unchanged))
            .chain(std::iter::repeat_n(Ok(Outcome::Stale), stale))
            .collect()
    }

    #[test]
    fn auto_starts_from_the_reply_and_follows_the_mix_per_collection() {
        let c = Chooser::new(OutcomePolicy::Auto);
        assert_eq!(c.pick("potato"), OutcomesFrom::Reply);
        // One command of replays among new events does not switch…
        c.observe("potato", &command(0, 400, 100));
        assert_eq!(c.pick("potato"), OutcomesFrom::Reply);
        // …a run of them does, and only for that collection.
        for _ in 0..3 {
            c.observe("potato", &command(10, 300, 190));
        }
        assert_eq!(c.pick("potato"), OutcomesFrom::Read);
        assert_eq!(c.pick("tomato"), OutcomesFrom::Reply);
        // Back to new events: back to the reply.
        for _ in 0..4 {
            c.observe("potato", &command(500, 0, 0));
        }
        assert_eq!(c.pick("potato"), OutcomesFrom::Reply);
    }

    #[test]
    fn rejected_documents_and_empty_commands_teach_nothing() {
        let c = Chooser::new(OutcomePolicy::Auto);
        for _ in 0..4 {
            c.observe("potato", &command(0, 10, 0));
        }
        assert_eq!(c.pick("potato"), OutcomesFrom::Read);
        let rejected = Err(Rejected {
            code: 10334,
            message: "too large".into(),
        });
        for _ in 0..10 {
            c.observe("potato", &[]);
            c.observe("potato", std::slice::from_ref(&rejected));
        }
        assert_eq!(c.pick("potato"), OutcomesFrom::Read);
    }

    #[test]
    fn fixed_policies_never_switch() {
        for (policy, way) in [
            (OutcomePolicy::Reply, OutcomesFrom::Reply),
            (OutcomePolicy::Read, OutcomesFrom::Read),
        ] {
            let c = Chooser::new(policy);
            for _ in 0..10 {
                c.observe("potato", &command(0, 0, 500));
                c.observe("potato", &command(500, 0, 0));
                c.observe("potato", &command(0, 500, 0));
            }
            assert_eq!(c.pick("potato"), way, "{policy:?}");
        }
    }
}
