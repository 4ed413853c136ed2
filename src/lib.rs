//! Pulse Fleet: the runtime that runs the `jobs` crate's job types on PostgreSQL.

pub mod audit;
pub mod bench;
pub mod builtin;
pub mod cli;
pub mod config;
pub mod db;
pub mod demo;
pub mod discord_sink;
pub mod paper;
pub mod queue;
pub mod scheduler;
pub mod stats;
pub mod telemetry;
pub mod web;
pub mod worker;
