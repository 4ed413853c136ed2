//! Pulse Fleet's binary: the CLI, configuration, the web process, the wiring that
//! runs the `pulse-jobs` job types on the `pulse-queue` runtime, the benchmarks and
//! the demo.

pub mod bench;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod registry;
pub mod roles;
pub mod telemetry;
pub mod trading_ops;
pub mod web;
