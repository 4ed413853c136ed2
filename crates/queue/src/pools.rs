//! The connection pools, built in one place. The application's pool serves handlers'
//! transactions (fully durable). The queue machinery has its own pools, which commit
//! without waiting for the WAL flush: a claim or ack lost in a server crash only
//! means the job runs again, which at-least-once delivery allows, and it saves a disk
//! flush per batch. Handlers never use them, so business writes stay durable.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// What a pool is for; each has its session settings and `application_name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Handlers, the web process, the CLI.
    App,
    /// Claims, heartbeats, rescues, stats, the queue tables' maintenance.
    Queue,
    /// The acker's one connection. Custom plans, because its batches vary from one
    /// row to thousands and a generic plan (estimated for a handful) is quadratic on
    /// big ones; no nested loops, for the same reason (see `sql/ack.sql`).
    Acker,
}

impl Purpose {
    fn application_name(self) -> &'static str {
        match self {
            Purpose::App => "pulse-fleet",
            Purpose::Queue => "pulse-fleet-queue",
            Purpose::Acker => "pulse-fleet-acker",
        }
    }

    fn session_settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Purpose::App => &[],
            // No sequential scans: every statement of the machinery reads by index,
            // and a plan made from stale statistics (a job table analysed when small,
            // or never) must not turn each claim into a scan of the whole table. No
            // JIT: these are short statements, and the cost a disabled scan adds (of a
            // tiny table without a usable index) crosses `jit_above_cost`, which made
            // the rescue compile for half a second at every heartbeat.
            Purpose::Queue => &[
                ("synchronous_commit", "off"),
                ("enable_seqscan", "off"),
                ("jit", "off"),
            ],
            Purpose::Acker => &[
                ("synchronous_commit", "off"),
                ("jit", "off"),
                ("plan_cache_mode", "force_custom_plan"),
                ("enable_nestloop", "off"),
            ],
        }
    }
}

/// A pool of `max_connections` to `url` for `purpose`.
pub async fn connect(url: &str, purpose: Purpose, max_connections: u32) -> anyhow::Result<PgPool> {
    let mut options = PgConnectOptions::from_str(url)
        .context("Failed to parse the database URL (database.url / DATABASE_URL)")?
        .application_name(purpose.application_name());
    let settings = purpose.session_settings();
    if !settings.is_empty() {
        options = options.options(settings.iter().copied());
    }
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("Failed to connect to PostgreSQL (database.url / DATABASE_URL)")
}

/// The most connections a worker process's queue machinery holds, whatever its queues.
pub const MAX_QUEUE_CONNECTIONS: u32 = 10;

/// The pools of the queue machinery (never used by handlers).
#[derive(Debug, Clone)]
pub struct QueuePools {
    pub queue: PgPool,
    pub ack: PgPool,
}

impl QueuePools {
    /// Queue connections for `queues` fetchers plus heartbeat, listener and stats:
    /// two per queue, but at most [`MAX_QUEUE_CONNECTIONS`]. A claim holds its
    /// connection for a millisecond or two, so fetchers share a few well; a pool that
    /// grew with the queue count made a worker of every queue hold about 30 connections,
    /// and three such workers exhausted a default PostgreSQL (100).
    pub async fn connect(url: &str, queues: usize) -> anyhow::Result<Self> {
        let size = ((queues as u32) * 2 + 4).min(MAX_QUEUE_CONNECTIONS);
        Ok(Self {
            queue: connect(url, Purpose::Queue, size).await?,
            ack: connect(url, Purpose::Acker, 1).await?,
        })
    }
}
