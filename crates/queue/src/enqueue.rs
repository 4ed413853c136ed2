//! Enqueue from Rust, inside the caller's transaction when it passes one.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    pub idempotency_key: Option<String>,
    pub run_at: Option<DateTime<Utc>>,
    pub priority: i32,
    /// `None` takes the job type's default from `fleet.job_types`.
    pub max_attempts: Option<i32>,
    pub concurrency_key: Option<String>,
}

/// Calls `fleet.enqueue`; returns the job's id (the existing job's on a duplicate key).
pub async fn enqueue<'e>(
    executor: impl PgExecutor<'e>,
    job_name: &str,
    payload: &serde_json::Value,
    options: &EnqueueOptions,
) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT fleet.enqueue($1, $2, $3, $4, $5, $6, $7) AS "id!""#,
        job_name,
        payload,
        options.idempotency_key.as_deref(),
        options.run_at,
        options.priority,
        options.max_attempts,
        options.concurrency_key.as_deref(),
    )
    .fetch_one(executor)
    .await
}

/// Records the job types this code runs: `fleet.enqueue` refuses other names and takes
/// default max attempts from here (`pulse-fleet migrate`).
pub async fn record_job_types(
    pool: &sqlx::PgPool,
    specs: &[pulse_contract::JobSpec],
) -> sqlx::Result<()> {
    let names: Vec<&str> = specs.iter().map(|s| s.name).collect();
    let attempts: Vec<i32> = specs.iter().map(|s| s.max_attempts).collect();
    sqlx::query!(
        "INSERT INTO fleet.job_types (job_name, max_attempts)
         SELECT * FROM unnest($1::text[], $2::int[])
         ON CONFLICT (job_name) DO UPDATE
         SET max_attempts = excluded.max_attempts, updated_at = now()",
        &names as &[&str],
        &attempts,
    )
    .execute(pool)
    .await?;
    Ok(())
}
