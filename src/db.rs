//! The application's pool and migrations.

use pulse_contract::JobSpec;
use pulse_queue::pools::{self, Purpose, QueuePools};
use sqlx::PgPool;

use crate::config::Settings;

/// The application's pool: handlers' transactions, fully durable.
pub async fn app_pool(settings: &Settings) -> anyhow::Result<PgPool> {
    pools::connect(
        &settings.database.url,
        Purpose::App,
        settings.database.max_connections,
    )
    .await
}

/// The queue machinery's pools for a worker of `queues` queues.
pub async fn queue_pools(settings: &Settings, queues: usize) -> anyhow::Result<QueuePools> {
    QueuePools::connect(&settings.database.url, queues).await
}

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Applies migrations and records the job types this code runs.
pub async fn migrate(pool: &PgPool, specs: &[JobSpec]) -> anyhow::Result<()> {
    use anyhow::Context;
    MIGRATOR
        .run(pool)
        .await
        .context("Failed to apply migrations")?;
    pulse_queue::enqueue::record_job_types(pool, specs)
        .await
        .context("Failed to record job types")
}
