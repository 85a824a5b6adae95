//! Turning one partition's micro-batch into database writes. Pure logic, no I/O.
//!
//! A batch may hold several events of one image. Applying them one by one in partition order
//! with the stale guard (core's [`Version::replaces`]) leaves exactly the state of applying
//! only the *winner*: the last event among those with the greatest version. So each batch
//! is collapsed to one write per id; the writes touch distinct ids, commute, and can go out as
//! one unordered command. Losers are reported as *superseded* (an earlier event overwritten by
//! a later one in the same batch) or *stale* (an event older than one before it).

use std::collections::HashMap;

use leafsync_core::{ImageId, Version};

/// What happened to an event that did not win its id within the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loser {
    /// A later event of the same id in this batch replaced it.
    Superseded,
    /// An earlier event of the same id in this batch is newer.
    Stale,
}

/// The collapsed batch: indexes (into the input) of the events to write, in input order, and
/// the outcome of every other event.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collapsed {
    /// Winners, one per id, in partition order.
    pub winners: Vec<usize>,
    /// Index → why it is not written.
    pub losers: Vec<(usize, Loser)>,
}

/// Collapses the `(id, version)` of a batch's events (in partition order) to the newest event
/// per id.
pub fn collapse(versions: &[(ImageId, Version)]) -> Collapsed {
    let mut best: HashMap<ImageId, usize> = HashMap::with_capacity(versions.len());
    let mut losers = Vec::new();
    for (i, &(id, version)) in versions.iter().enumerate() {
        match best.get_mut(&id) {
            None => {
                best.insert(id, i);
            }
            Some(w) if version.replaces(versions[*w].1) => {
                losers.push((*w, Loser::Superseded));
                *w = i;
            }
            Some(_) => losers.push((i, Loser::Stale)),
        }
    }
    let mut winners: Vec<usize> = best.into_values().collect();
    winners.sort_unstable();
    losers.sort_unstable_by_key(|(i, _)| *i);
    Collapsed { winners, losers }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use leafsync_core::ImageEvent;
    use proptest::prelude::*;

    fn versions(events: &[ImageEvent]) -> Vec<(ImageId, Version)> {
        events
            .iter()
            .map(|e| (e.id, Version::of(e.updated_at)))
            .collect()
    }

    fn ev(id: i64, secs: i64, label: &str) -> ImageEvent {
        ImageEvent {
            id: ImageId::new(id).unwrap(),
            updated_at: DateTime::<Utc>::from_timestamp(secs, 0).unwrap(),
            deleted: false,
            name: None,
            url: None,
            size: None,
            width: None,
            height: None,
            label: Some(label.into()),
            user_id: None,
            created_at: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn newest_wins_and_ties_go_to_the_later_event() {
        let e = [
            ev(1, 5, "a"),
            ev(2, 1, "b"),
            ev(1, 7, "c"),
            ev(1, 6, "d"),
            ev(1, 7, "e"),
        ];
        let c = collapse(&versions(&e));
        assert_eq!(c.winners, vec![1, 4]);
        assert_eq!(
            c.losers,
            vec![
                (0, Loser::Superseded),
                (2, Loser::Superseded),
                (3, Loser::Stale)
            ]
        );
    }

    /// The stale-guarded store, applied one event at a time: the reference semantics, written
    /// out here from the rule's statement ("newest wins, later on ties") rather than through
    /// `Version::replaces`, so that the property also checks the rule's implementation.
    fn apply_one_by_one(state: &mut HashMap<i64, ImageEvent>, e: &ImageEvent) {
        match state.get(&e.id.get()) {
            Some(cur) if cur.updated_at > e.updated_at => {}
            _ => {
                state.insert(e.id.get(), e.clone());
            }
        }
    }

    proptest! {
        // Collapsing then applying equals applying every event in order, from any prior state.
        #[test]
        fn collapse_equals_one_by_one(
            prior in proptest::collection::vec((1i64..6, 0i64..8), 0..6),
            batch in proptest::collection::vec((1i64..6, 0i64..8), 0..40),
        ) {
            let mut reference = HashMap::new();
            for (n, (id, t)) in prior.iter().enumerate() {
                apply_one_by_one(&mut reference, &ev(*id, *t, &format!("p{n}")));
            }
            let mut collapsed_state = reference.clone();
            let events: Vec<ImageEvent> =
                batch.iter().enumerate().map(|(n, (id, t))| ev(*id, *t, &format!("b{n}"))).collect();
            for e in &events {
                apply_one_by_one(&mut reference, e);
            }
            let c = collapse(&versions(&events));
            prop_assert_eq!(c.winners.len() + c.losers.len(), events.len());
            for &i in &c.winners {
                apply_one_by_one(&mut collapsed_state, &events[i]);
            }
            prop_assert_eq!(reference, collapsed_state);
        }
    }
}
