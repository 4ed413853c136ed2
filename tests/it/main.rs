//! Integration tests against a real PostgreSQL (a database per test). The server is
//! `DATABASE_URL` (default postgres://postgres@127.0.0.1:5432/postgres).

mod helpers;

mod alerts;
mod binance;
mod brokers;
mod chaos;
mod console;
mod enqueue;
mod failures;
mod horizon;
mod hosts;
mod lifecycle;
mod oms;
mod payments;
mod platform_intents;
mod processes;
mod readme;
mod reconcile;
mod schedule;
mod security;
mod shards;
mod tenancy;
mod venue;
mod watchers;
mod web;
