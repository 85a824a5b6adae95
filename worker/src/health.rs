//! What `/live` and `/ready` report: group membership, the database, and whether any partition
//! task has been stuck on one batch for too long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use leafsync_core::cached_check::CachedCheck;

/// Shared liveness/readiness state.
pub struct Health {
    joined: AtomicBool,
    busy: Mutex<HashMap<(String, i32), Instant>>,
    /// The database's last answer, reused for a second so probes don't hammer it.
    pub database: CachedCheck,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("joined", &self.joined())
            .finish_non_exhaustive()
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            joined: AtomicBool::default(),
            busy: Mutex::default(),
            database: CachedCheck::new(Duration::from_secs(1)),
        }
    }
}

impl Health {
    /// The worker received its first assignment: it is a member of the group.
    pub fn set_joined(&self) {
        self.joined.store(true, Ordering::Relaxed);
    }

    /// Whether the worker has joined its group.
    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    /// A partition task started (`true`) or finished (`false`) a batch.
    pub fn set_busy(&self, topic: &str, partition: i32, busy: bool) {
        let mut map = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if busy {
            map.insert((topic.to_owned(), partition), Instant::now());
        } else {
            map.remove(&(topic.to_owned(), partition));
        }
    }

    /// Partitions busy on one batch for longer than `bound`, as `topic/partition`.
    pub fn stuck(&self, bound: Duration) -> Vec<String> {
        let map = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = map
            .iter()
            .filter(|(_, since)| since.elapsed() > bound)
            .map(|((t, p), _)| format!("{t}/{p}"))
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_partitions_are_reported_until_they_finish() {
        let h = Health::default();
        h.set_busy("potato", 3, true);
        assert!(h.stuck(Duration::from_secs(60)).is_empty());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(h.stuck(Duration::from_millis(10)), ["potato/3"]);
        h.set_busy("potato", 3, false);
        assert!(h.stuck(Duration::from_millis(10)).is_empty());
    }
}
