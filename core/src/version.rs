//! The one ordering rule of leafsync: **the newest `updated_at` wins, and on a tie the later
//! event wins** (a replay of the same version rewrites it, harmlessly). The worker's batch
//! collapse, the store's outcome labels and the load tool's expected state all call
//! [`Version::replaces`]; the store's write guard (`updated_at: {$lte: new}`) is the same rule
//! as a MongoDB filter, and `core/tests/store.rs` checks it against this function.

use chrono::{DateTime, Utc};

/// An image version: its `updated_at` at the precision the database keeps (milliseconds), so
/// that the rule gives the same answer in memory as in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(i64);

impl Version {
    /// The version of an event stamped `updated_at`.
    pub fn of(updated_at: DateTime<Utc>) -> Self {
        Self(updated_at.timestamp_millis())
    }

    /// The version of a stored document's `updated_at`.
    pub fn from_bson(updated_at: mongodb::bson::DateTime) -> Self {
        Self(updated_at.timestamp_millis())
    }

    /// Whether an event of this version, coming after one of version `current` (stored, or
    /// earlier in the same partition), replaces it.
    pub fn replaces(self, current: Version) -> bool {
        self >= current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: i64) -> Version {
        Version::of(DateTime::from_timestamp_millis(ms).unwrap())
    }

    #[test]
    fn newer_and_equal_replace_older_does_not() {
        assert!(v(2).replaces(v(1)));
        assert!(v(2).replaces(v(2)), "ties go to the later event");
        assert!(!v(1).replaces(v(2)));
    }

    #[test]
    fn compares_at_the_database_precision() {
        let a = DateTime::from_timestamp(10, 1_000_000).unwrap(); // 10.001 s
        let b = DateTime::from_timestamp(10, 1_900_000).unwrap(); // 10.0019 s: same ms
        assert_eq!(Version::of(a), Version::of(b));
        assert!(Version::of(a).replaces(Version::of(b)));
        assert_eq!(
            Version::from_bson(mongodb::bson::DateTime::from_millis(10_001)),
            Version::of(a)
        );
    }
}
