//! Benchmarks that print numbers (`pulse-fleet bench ...`).

pub mod queue;
