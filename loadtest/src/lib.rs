//! leafsync-loadtest: plays the platform's producer side to size deployments and prove the
//! system correct under load: [`generator`] (deterministic realistic events), [`poison`] (bad
//! events), [`producer`] (the producer contract), [`expected`] (the final state the database
//! must reach), [`verify`] and [`via_api`] (the comparison), [`flood`], [`run`], [`sample`],
//! [`report`] and [`bench_db`] (the commands), [`seed`] and [`staleness`] (a backfill source, at rest and in use).

pub mod bench_db;
pub mod expected;
pub mod fleet;
pub mod flood;
pub mod generator;
pub mod poison;
pub mod producer;
pub mod report;
pub mod run;
pub mod sample;
pub mod seed;
pub mod staleness;
pub mod verify;
pub mod via_api;
