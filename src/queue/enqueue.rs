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
    sqlx::query_scalar("SELECT fleet.enqueue($1, $2, $3, $4, $5, $6, $7)")
        .bind(job_name)
        .bind(payload)
        .bind(options.idempotency_key.as_deref())
        .bind(options.run_at)
        .bind(options.priority)
        .bind(options.max_attempts)
        .bind(options.concurrency_key.as_deref())
        .fetch_one(executor)
        .await
}
