//! The worker's own CPU cost per event, as a figure that machine noise does not move: run the
//! pure hot path (decode → projection → collapse → BSON → the `update` command's bytes →
//! outcome bookkeeping) over a fixed batch of 500 events `ROUNDS` times. Counted with
//! `scripts/bench-cpu`, which runs this under `valgrind --tool=callgrind` for two round counts
//! and divides the difference in instructions by the extra events (so set-up is not counted).
//!
//!   cargo run --release -p leafsync-worker --example hot_path_cost -- ROUNDS
#![allow(clippy::unwrap_used, clippy::expect_used)] // a measuring tool: a panic is its failure

use std::hint::black_box;

use chrono::{DateTime, Utc};
use leafsync_core::document::Projection;
use leafsync_core::store::{update_command, Guard, Statement};
use leafsync_core::{Outcome, OutcomeCounts};
use leafsync_loadtest::generator::{GenConfig, Generator};
use leafsync_worker::plan::{plan, Consumed, Rules};

/// Events per batch: the default `worker.batch.max_events`.
const BATCH: usize = 500;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map_or(1, |a| a.parse().expect("ROUNDS is a number"));
    // A fixed, realistic batch: the load tool's generator, 100 ids (so some collapse), seed 7.
    let start: DateTime<Utc> = DateTime::from_timestamp(1_760_000_000, 0).unwrap();
    let events: Vec<(Vec<u8>, Vec<u8>)> = Generator::new(GenConfig {
        seed: 7,
        ids_per_type: 100,
        delete_ratio: 0.05,
        start,
    })
    .take(BATCH)
    .map(|g| {
        (
            g.event.id.key().into_bytes(),
            g.event.to_json().to_string().into_bytes(),
        )
    })
    .collect();
    let batch: Vec<Consumed<'_>> = events
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Consumed {
            offset: i as i64,
            key: Some(k),
            payload: Some(v),
        })
        .collect();
    let projection = Projection::all();
    let rules = Rules {
        partition: 0,
        partitions_in_topic: None,
        projection: &projection,
        max_event_bytes: 524_288,
        keyed: true,
    };
    let mut total = OutcomeCounts::default();
    for _ in 0..rounds {
        let p = plan(black_box(&batch), &rules);
        let command = update_command(
            "potato",
            Statement::Replace(Guard::Older),
            p.writes.iter().map(|w| w.doc.as_ref()),
        );
        black_box(command.as_bytes().len());
        for _ in &p.writes {
            total.add(Outcome::Updated);
        }
        for (_, _, outcome) in &p.skipped {
            total.add(*outcome);
        }
    }
    println!("{} events in {rounds} rounds", total.total());
}
