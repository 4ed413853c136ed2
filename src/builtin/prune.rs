//! `prune`: retention. Enqueued by the scheduler (`schedules.prune`, every five
//! minutes by default). Deletes completed jobs after `retention.completed_hours` (so
//! a key dedupes for at least that long), dead and cancelled ones after
//! `retention.dead_hours`, rows of stopped workers, and processed webhook inbox rows
//! after `retention.inbox_days`; then recounts job states so
//! the metrics cannot drift. Idempotent: deleting what is already gone is a no-op.

use std::time::Duration;

use jobs::{Backoff, JobContext, JobError, JobSpec};

use crate::config::RetentionSettings;

pub const NAME: &str = "prune";
/// Rows per delete statement: keeps each transaction and its locks short.
const CHUNK: i64 = 10_000;

pub fn spec(retention: RetentionSettings) -> JobSpec {
    JobSpec {
        name: NAME,
        max_attempts: 3,
        timeout: Duration::from_secs(600),
        backoff: Backoff::DEFAULT,
        handler: std::sync::Arc::new(move |_payload, ctx| {
            let retention = retention.clone();
            Box::pin(async move { prune(&ctx, &retention).await })
        }),
    }
}

async fn prune(ctx: &JobContext, retention: &RetentionSettings) -> Result<(), JobError> {
    let completed = delete_finished(ctx, &["completed"], retention.completed_hours).await?;
    let dead = delete_finished(ctx, &["dead", "cancelled"], retention.dead_hours).await?;
    let workers = sqlx::query(
        "DELETE FROM fleet.workers
         WHERE stopped_at < now() - make_interval(hours => $1)
            OR last_heartbeat_at < now() - make_interval(hours => $1)",
    )
    .bind(retention.workers_hours as i32)
    .execute(&ctx.pool)
    .await?
    .rows_affected();

    let inbox = sqlx::query(
        "DELETE FROM billing.stripe_events
         WHERE processed_at < now() - make_interval(days => $1)",
    )
    .bind(retention.inbox_days as i32)
    .execute(&ctx.pool)
    .await?
    .rows_affected()
        + sqlx::query(
            "DELETE FROM watcher_events WHERE received_at < now() - make_interval(days => $1)",
        )
        .bind(retention.inbox_days as i32)
        .execute(&ctx.pool)
        .await?
        .rows_affected();

    let mut tx = ctx.pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT fleet.recount_jobs()")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(completed, dead, workers, inbox, "pruned");
    Ok(())
}

async fn delete_finished(ctx: &JobContext, states: &[&str], hours: u64) -> Result<u64, JobError> {
    let mut total = 0;
    loop {
        let deleted: i64 = sqlx::query_scalar(
            "WITH gone AS (
                 DELETE FROM fleet.jobs WHERE id IN (
                     SELECT id FROM fleet.jobs
                     WHERE state = ANY($1::fleet.job_state[])
                       AND finished_at < now() - make_interval(hours => $2)
                     LIMIT $3)
                 RETURNING job_name, state
             ), counted AS (
                 INSERT INTO fleet.stat_deltas (metric, job_name, label, delta)
                 SELECT 'jobs', job_name, state::text, -count(*) FROM gone GROUP BY job_name, state
             )
             SELECT count(*) FROM gone",
        )
        .bind(states)
        .bind(hours as i32)
        .bind(CHUNK)
        .fetch_one(&ctx.pool)
        .await?;
        if deleted == 0 {
            return Ok(total);
        }
        total += deleted as u64;
    }
}
