//! The pure half of processing a batch: consumed messages in, what to do with them out. No
//! I/O, so every decision about a batch (what is written, what is dead-lettered and why, what
//! a later event of the same image supersedes, where the offset moves) is unit-tested here
//! without Kafka or MongoDB. The effectful half, which carries a plan out, is
//! [`crate::partition`]'s `settle`.

use std::num::NonZeroU32;

use leafsync_core::document::Projection;
use leafsync_core::partitioner::partition_for_key;
use leafsync_core::{ImageEvent, ImageId, Outcome, Version};
use mongodb::bson::RawDocumentBuf;

use crate::batch::{collapse, Loser};

/// One consumed message, as the plan sees it.
#[derive(Debug, Clone, Copy)]
pub struct Consumed<'a> {
    /// Offset in its partition.
    pub offset: i64,
    /// Message key.
    pub key: Option<&'a [u8]>,
    /// Message value.
    pub payload: Option<&'a [u8]>,
}

/// What the plan needs to know about the partition and the image type.
#[derive(Debug, Clone, Copy)]
pub struct Rules<'a> {
    /// The partition the batch came from.
    pub partition: i32,
    /// Partitions in the topic, when known (for spotting misrouted events).
    pub partitions_in_topic: Option<NonZeroU32>,
    /// Which fields of the type are stored.
    pub projection: &'a Projection,
    /// Largest accepted event value.
    pub max_event_bytes: usize,
    /// Whether every message carries the image id as its key and must match it (Kafka); a
    /// backfill's documents have no key.
    pub keyed: bool,
}

/// A document to write: the newest event of its image in the batch.
#[derive(Debug)]
pub struct Write {
    /// Index of its message in the batch.
    pub msg: usize,
    /// The image.
    pub id: ImageId,
    /// The stored form.
    pub doc: RawDocumentBuf,
}

/// An event refused before any write, with the reason for the dead-letter headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Index of its message in the batch.
    pub msg: usize,
    /// Machine-readable reason (`not_json`, `key_mismatch`, …).
    pub kind: &'static str,
    /// Human-readable reason.
    pub reason: String,
}

/// What to do with a batch.
#[derive(Debug, Default)]
pub struct Plan {
    /// One write per image, in partition order; distinct ids, so they commute.
    pub writes: Vec<Write>,
    /// Events to dead-letter, in partition order.
    pub refusals: Vec<Refusal>,
    /// Events settled without a write: `(message index, image, Superseded | Stale)`.
    pub skipped: Vec<(usize, ImageId, Outcome)>,
    /// Messages whose key hashes to another partition (still applied).
    pub misrouted: Vec<usize>,
    /// Bytes of all values.
    pub bytes: u64,
    /// The offset to store once the writes and dead letters are done: the batch's last.
    pub store_offset: Option<i64>,
}

/// Decodes, checks and collapses a batch (in partition order) into a [`Plan`].
pub fn plan(batch: &[Consumed<'_>], rules: &Rules<'_>) -> Plan {
    let mut p = Plan {
        store_offset: batch.last().map(|m| m.offset),
        ..Plan::default()
    };
    let mut decoded: Vec<Write> = Vec::with_capacity(batch.len());
    let mut versions: Vec<(ImageId, Version)> = Vec::with_capacity(batch.len());
    for (i, m) in batch.iter().enumerate() {
        p.bytes += m.payload.map_or(0, <[u8]>::len) as u64;
        if let (Some(key), Some(n)) = (m.key, rules.partitions_in_topic) {
            if partition_for_key(key, n) != rules.partition {
                p.misrouted.push(i);
            }
        }
        match decode(m, rules) {
            Ok((event, doc)) => {
                versions.push((event.id, Version::of(event.updated_at)));
                decoded.push(Write {
                    msg: i,
                    id: event.id,
                    doc,
                });
            }
            Err((kind, reason)) => p.refusals.push(Refusal {
                msg: i,
                kind,
                reason,
            }),
        }
    }
    let collapsed = collapse(&versions);
    for &(l, loser) in &collapsed.losers {
        let outcome = match loser {
            Loser::Superseded => Outcome::Superseded,
            Loser::Stale => Outcome::Stale,
        };
        p.skipped.push((decoded[l].msg, decoded[l].id, outcome));
    }
    // Winners are distinct indexes in ascending order; the losers' documents are dropped here
    // rather than held through the write.
    let mut winners = collapsed.winners.into_iter().peekable();
    p.writes = decoded
        .into_iter()
        .enumerate()
        .filter_map(|(i, w)| winners.next_if_eq(&i).map(|_| w))
        .collect();
    p
}

fn decode(
    m: &Consumed<'_>,
    rules: &Rules<'_>,
) -> Result<(ImageEvent, RawDocumentBuf), (&'static str, String)> {
    let event = if rules.keyed {
        ImageEvent::decode_message(m.key, m.payload, rules.max_event_bytes)
    } else {
        // Unkeyed (backfill) documents still cannot be empty.
        ImageEvent::decode(m.payload.unwrap_or_default(), rules.max_event_bytes)
    }
    .map_err(|e| (e.kind(), e.to_string()))?;
    // The decoder refuses what BSON cannot hold; this is the backstop.
    let doc = event
        .to_raw_document(rules.projection)
        .map_err(|e| ("unstorable", format!("cannot encode as BSON: {e}")))?;
    Ok((event, doc))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use proptest::prelude::*;

    fn rules(projection: &Projection) -> Rules<'_> {
        Rules {
            partition: 0,
            partitions_in_topic: None,
            projection,
            max_event_bytes: 4096,
            keyed: true,
        }
    }

    fn json(id: i64, ms: i64, label: &str) -> Vec<u8> {
        let t = chrono::DateTime::from_timestamp_millis(1_760_000_000_000 + ms).unwrap();
        format!(
            r#"{{"id":{id},"updated_at":"{}","label":"{label}"}}"#,
            t.to_rfc3339()
        )
        .into_bytes()
    }

    /// A generated message: a valid event, or one of the bad kinds.
    #[derive(Debug, Clone)]
    enum Msg {
        Event { id: i64, ms: i64 },
        NotJson,
        Tombstone,
        WrongKey { id: i64 },
    }

    fn msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            8 => (1i64..6, 0i64..6).prop_map(|(id, ms)| Msg::Event { id, ms }),
            1 => Just(Msg::NotJson),
            1 => Just(Msg::Tombstone),
            1 => (1i64..6).prop_map(|id| Msg::WrongKey { id }),
        ]
    }

    /// Key and value bytes of message `n` of a batch (labels make every event distinct).
    fn bytes(m: &Msg, n: usize) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        match m {
            Msg::Event { id, ms } => (
                Some(id.to_string().into_bytes()),
                Some(json(*id, *ms, &format!("e{n}"))),
            ),
            Msg::NotJson => (Some(b"1".to_vec()), Some(b"{not json".to_vec())),
            Msg::Tombstone => (Some(b"1".to_vec()), None),
            Msg::WrongKey { id } => (Some(b"999".to_vec()), Some(json(*id, 0, "k"))),
        }
    }

    /// Stored state: id → (updated_at ms, label).
    type State = HashMap<i64, (i64, String)>;

    /// Applies one version to `state` through the stale guard, written out from the rule's
    /// statement (newest wins, the later one on ties) rather than through `Version::replaces`.
    fn guarded(state: &mut State, id: i64, ms: i64, label: String) {
        if state.get(&id).is_none_or(|(cur, _)| ms >= *cur) {
            state.insert(id, (ms, label));
        }
    }

    /// The decoder's kind for a bad message; `None` for a valid event.
    fn refused_as(m: &Msg) -> Option<&'static str> {
        match m {
            Msg::Event { .. } => None,
            Msg::NotJson => Some("not_json"),
            Msg::Tombstone => Some("tombstone"),
            Msg::WrongKey { .. } => Some("key_mismatch"),
        }
    }

    /// `state` after the plan's writes went through the stale guard.
    fn apply_writes(mut state: State, p: &Plan) -> State {
        for w in &p.writes {
            let d = w.doc.to_document().unwrap();
            let ms = d.get_datetime("updated_at").unwrap().timestamp_millis() - 1_760_000_000_000;
            guarded(
                &mut state,
                w.id.get(),
                ms,
                d.get_str("label").unwrap().to_owned(),
            );
        }
        state
    }

    proptest! {
        // The plan of any batch, applied through the stale guard, equals applying its events
        // one by one in partition order; every message is accounted for exactly once; the bad
        // ones are refused with their decoder's kind; the offset is the batch's last.
        #[test]
        fn the_plan_equals_applying_events_one_by_one(
            prior in proptest::collection::vec((1i64..6, 0i64..6), 0..5),
            msgs in proptest::collection::vec(msg(), 0..30),
        ) {
            let mut before: State = HashMap::new();
            for (id, ms) in &prior {
                guarded(&mut before, *id, *ms, "prior".into());
            }
            let mut reference = before.clone();
            for (n, m) in msgs.iter().enumerate() {
                if let Msg::Event { id, ms } = m {
                    guarded(&mut reference, *id, *ms, format!("e{n}"));
                }
            }
            let raw: Vec<_> = msgs.iter().enumerate().map(|(n, m)| bytes(m, n)).collect();
            let batch: Vec<Consumed<'_>> = raw
                .iter()
                .enumerate()
                .map(|(n, (k, v))| Consumed { offset: 100 + n as i64, key: k.as_deref(), payload: v.as_deref() })
                .collect();

            let projection = Projection::all();
            let p = plan(&batch, &rules(&projection));
            prop_assert_eq!(&apply_writes(before, &p), &reference);

            let refused: Vec<usize> = p.refusals.iter().map(|r| r.msg).collect();
            let bad: Vec<usize> = (0..msgs.len()).filter(|&n| refused_as(&msgs[n]).is_some()).collect();
            prop_assert_eq!(&refused, &bad);
            for r in &p.refusals {
                prop_assert_eq!(Some(r.kind), refused_as(&msgs[r.msg]));
                prop_assert!(!r.reason.is_empty());
            }
            let mut seen: Vec<usize> = p.writes.iter().map(|w| w.msg)
                .chain(refused)
                .chain(p.skipped.iter().map(|s| s.0))
                .collect();
            seen.sort_unstable();
            prop_assert_eq!(seen, (0..msgs.len()).collect::<Vec<_>>());
            let ids: std::collections::HashSet<i64> = p.writes.iter().map(|w| w.id.get()).collect();
            prop_assert_eq!(ids.len(), p.writes.len(), "one write per id");
            prop_assert_eq!(p.store_offset, batch.last().map(|m| m.offset));
        }
    }

    #[test]
    fn misrouted_keys_are_flagged_and_still_written() {
        let projection = Projection::all();
        let six = NonZeroU32::new(6).unwrap();
        // Key 42 hashes to partition 2 of 6 (core's reference vector).
        let (v42, v43) = (json(42, 0, "a"), json(43, 0, "b"));
        let k43 = partition_for_key(b"43", six);
        let batch = [
            Consumed {
                offset: 0,
                key: Some(b"42"),
                payload: Some(&v42),
            },
            Consumed {
                offset: 1,
                key: Some(b"43"),
                payload: Some(&v43),
            },
        ];
        let r = Rules {
            partition: 2,
            partitions_in_topic: Some(six),
            ..rules(&projection)
        };
        let p = plan(&batch, &r);
        assert_eq!(p.misrouted, if k43 == 2 { vec![] } else { vec![1] });
        assert_eq!(p.writes.len(), 2);
        assert_eq!(p.bytes, (v42.len() + v43.len()) as u64);
        let unknown = plan(
            &batch,
            &Rules {
                partition: 5,
                ..rules(&projection)
            },
        );
        assert!(
            unknown.misrouted.is_empty(),
            "no partition count, no verdict"
        );
    }

    #[test]
    fn unkeyed_documents_decode_without_a_key_and_keyed_ones_need_it() {
        let projection = Projection::all();
        let v = json(7, 0, "a");
        let batch = [Consumed {
            offset: 0,
            key: None,
            payload: Some(&v),
        }];
        let unkeyed = plan(
            &batch,
            &Rules {
                keyed: false,
                ..rules(&projection)
            },
        );
        assert_eq!(unkeyed.writes.len(), 1);
        assert!(unkeyed.refusals.is_empty());
        let keyed = plan(&batch, &rules(&projection));
        assert_eq!(keyed.refusals[0].kind, "key_mismatch");
    }

    #[test]
    fn an_empty_batch_stores_nothing() {
        let projection = Projection::all();
        let p = plan(&[], &rules(&projection));
        assert!(p.writes.is_empty() && p.refusals.is_empty() && p.skipped.is_empty());
        assert_eq!(p.store_offset, None);
    }
}
