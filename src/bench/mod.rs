//! Benchmarks that print numbers (`pulse-fleet bench ...`).

pub mod intents;
pub mod peer;
pub mod queue;
