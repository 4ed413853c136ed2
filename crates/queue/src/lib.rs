//! The queue runtime: our own PostgreSQL storage for apalis 1.0 (the stock
//! apalis-postgres storage fails the contract in ways `shared/notes/apalis-1.0.md`
//! lists: no SQL enqueue, no durable backoff, orphaned leases, per-row triple writes),
//! the worker that runs `JobSpec`s on it, the scheduler and the operators' API. It
//! knows the `fleet` schema and the job contract (`pulse-contract`), and no job type,
//! business table or vendor.
//!
//! - [`worker`]: a worker process's queues, acker, listener, heartbeat and shutdown;
//!   [`service`] runs one attempt.
//! - [`enqueue`]: the one way in from Rust (it calls `fleet.enqueue`).
//! - [`fetcher`]: claims batches under a lease for one queue and hands them to
//!   [`backend::FleetBackend`], the apalis `Backend` a worker polls.
//! - [`ack`]: the backend's middleware classifies each attempt's outcome, and the
//!   [`ack::Acker`] settles outcomes in batches, fenced by the lease token.
//! - [`lease`]: worker identity, heartbeats and the rescue of dead workers' jobs.
//! - [`holdings`]: what a process holds (claimed jobs, handler tasks) and whether
//!   its lease still lets it hold them.
//! - [`listener`]: LISTEN `fleet_jobs`, waking the fetcher of the named queue.
//! - [`idle`]: parked fetchers hold an advisory lock so enqueue NOTIFYs only then.
//! - [`maintenance`]: the queue vacuums and analyses its own tables.
//! - [`admin`]: what operators do to jobs (list, show, retry, cancel, stats): rows,
//!   which the CLI and the console render.
//! - [`scheduler`]: cron ticks become jobs. [`prune`]: the runtime's retention job.
//! - [`stats`]: in-process counters flushed to `fleet.stat_deltas`.
//! - [`pools`]: the connection pools. [`settings`]: the runtime's configuration.

pub mod ack;
pub mod admin;
pub mod backend;
pub mod enqueue;
pub mod fetcher;
pub mod holdings;
pub mod idle;
pub mod lease;
pub mod listener;
pub mod maintenance;
pub mod pools;
pub mod prune;
pub mod scheduler;
pub mod service;
pub mod settings;
pub mod shards;
mod state;
pub mod stats;
pub mod worker;

use chrono::{DateTime, Utc};
pub use state::JobState;
use tokio::sync::OwnedSemaphorePermit;

/// NOTIFY channel of `fleet.enqueue`; the payload is the job name.
pub const NOTIFY_CHANNEL: &str = "fleet_jobs";

/// A job claimed by this process: the apalis task's arguments.
#[derive(Debug)]
pub struct ClaimedJob {
    pub id: i64,
    pub job_name: &'static str,
    pub payload: serde_json::Value,
    /// This attempt, 1-based.
    pub attempt: i32,
    pub max_attempts: i32,
    /// The fencing token the ack must present: random per claim, so it never repeats,
    /// even when a claim is lost in a database crash.
    pub lease_token: uuid::Uuid,
    /// The process's lease epoch at claim time: a job claimed under a lease since
    /// lost never starts (see [`holdings`]).
    pub epoch: u64,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub claimed_at: DateTime<Utc>,
    /// One unit of the queue's concurrency, released when the attempt is settled.
    pub(crate) permit: Option<OwnedSemaphorePermit>,
}
