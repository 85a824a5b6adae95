//! leafsync-loadtest: plays the platform's producer side to size deployments and prove the
//! system correct under load: [`generator`] (deterministic realistic events), [`poison`] (bad
//! events), [`producer`] (the producer contract), [`expected`] (the final state the database
//! must reach), [`verify`] (the comparison).

pub mod expected;
pub mod generator;
pub mod poison;
pub mod producer;
pub mod verify;
