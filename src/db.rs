//! Connection pools and migrations.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use jobs::JobSpec;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::Settings;

/// The application's pool: handlers' transactions, fully durable.
pub async fn app_pool(settings: &Settings) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&settings.database.url)
        .context("Failed to parse database.url")?
        .application_name("pulse-fleet");
    PgPoolOptions::new()
        .max_connections(settings.database.max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("Failed to connect to PostgreSQL (database.url / DATABASE_URL)")
}

/// The queue machinery's own pool (claims, acks, heartbeats). It commits without
/// waiting for the WAL flush: a claim or ack lost in a server crash only means the
/// job runs again, which at-least-once delivery allows, and it saves a disk flush
/// per batch. Handlers never use this pool, so business writes stay durable.
pub async fn queue_pools(settings: &Settings, queues: usize) -> anyhow::Result<QueuePools> {
    Ok(QueuePools {
        queue: queue_pool(settings, queues).await?,
        ack: ack_pool(settings).await?,
    })
}

/// The pools of the queue machinery (never used by handlers).
#[derive(Debug, Clone)]
pub struct QueuePools {
    /// Claims, heartbeats, rescues, stats.
    pub queue: PgPool,
    /// The acker's connection.
    pub ack: PgPool,
}

async fn queue_pool(settings: &Settings, queues: usize) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&settings.database.url)
        .context("Failed to parse database.url")?
        .application_name("pulse-fleet-queue")
        .options([("synchronous_commit", "off")]);
    PgPoolOptions::new()
        .max_connections((queues as u32) * 2 + 4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("Failed to connect to PostgreSQL (database.url / DATABASE_URL)")
}

/// The acker's own connection. Custom plans, because its batches vary from one row
/// to thousands and a generic plan (estimated for a handful) is quadratic on big
/// ones; no nested loops, for the same reason (see `queue/sql/ack.sql`).
pub async fn ack_pool(settings: &Settings) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(&settings.database.url)
        .context("Failed to parse database.url")?
        .application_name("pulse-fleet-acker")
        .options([
            ("synchronous_commit", "off"),
            ("plan_cache_mode", "force_custom_plan"),
            ("enable_nestloop", "off"),
        ]);
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("Failed to connect to PostgreSQL (database.url / DATABASE_URL)")
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies migrations and records the job types this code runs.
pub async fn migrate(pool: &PgPool, specs: &[JobSpec]) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("Failed to apply migrations")?;
    sync_job_types(pool, specs).await
}

/// `fleet.enqueue` refuses unknown names and takes default max attempts from here.
pub async fn sync_job_types(pool: &PgPool, specs: &[JobSpec]) -> anyhow::Result<()> {
    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
    let attempts: Vec<i32> = specs.iter().map(|s| s.max_attempts).collect();
    sqlx::query(
        "INSERT INTO fleet.job_types (job_name, max_attempts)
         SELECT * FROM unnest($1::text[], $2::int[])
         ON CONFLICT (job_name) DO UPDATE
         SET max_attempts = excluded.max_attempts, updated_at = now()",
    )
    .bind(&names)
    .bind(&attempts)
    .execute(pool)
    .await
    .context("Failed to record job types")?;
    Ok(())
}
