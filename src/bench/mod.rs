//! Benchmarks that print numbers (`pulse-fleet bench ...`).

pub mod peer;
pub mod queue;
