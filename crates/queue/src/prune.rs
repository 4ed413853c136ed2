//! `prune`: retention. Enqueued by the scheduler (`schedules.prune`, every five
//! minutes by default). Deletes completed jobs after `retention.completed_hours` (so
//! a key dedupes for at least that long), dead and cancelled ones after
//! `retention.dead_hours` and rows of stopped workers; calls each job type's retention
//! hook (business rows it owns, such as a webhook inbox) with `retention.inbox_days`;
//! then recounts job states so the metrics cannot drift. Idempotent: deleting what is
//! already gone is a no-op. It deletes no business row itself.

use std::time::Duration;

use pulse_contract::{Attempt, Backoff, JobError, JobSpec, RetentionHook};

use crate::{JobState, settings::RetentionSettings};

pub const NAME: &str = "prune";
/// Rows per delete statement: keeps each transaction and its locks short.
const CHUNK: i64 = 10_000;

/// The prune job, calling the retention hooks of `specs` (the job types it serves).
pub fn spec(retention: RetentionSettings, specs: &[JobSpec]) -> JobSpec {
    let hooks: Vec<(&'static str, RetentionHook)> = specs
        .iter()
        .filter_map(|s| s.retention.clone().map(|hook| (s.name, hook)))
        .collect();
    let mut spec = JobSpec::typed(NAME, move |_: serde_json::Value, attempt: Attempt| {
        let (retention, hooks) = (retention.clone(), hooks.clone());
        async move { prune(&attempt, &retention, &hooks).await }
    });
    spec.max_attempts = 3;
    spec.timeout = Duration::from_secs(600);
    spec.backoff = Backoff::DEFAULT;
    spec
}

async fn prune(
    attempt: &Attempt,
    retention: &RetentionSettings,
    hooks: &[(&'static str, RetentionHook)],
) -> Result<(), JobError> {
    let pool = &attempt.pool;
    let completed =
        delete_finished(pool, &[JobState::Completed], retention.completed_hours).await?;
    let dead = delete_finished(
        pool,
        &[JobState::Dead, JobState::Cancelled],
        retention.dead_hours,
    )
    .await?;
    let workers = sqlx::query!(
        "DELETE FROM fleet.workers
         WHERE stopped_at < now() - make_interval(hours => $1)
            OR last_heartbeat_at < now() - make_interval(hours => $1)",
        retention.workers_hours as i32,
    )
    .execute(pool)
    .await?
    .rows_affected();

    let keep = Duration::from_secs(retention.inbox_days.saturating_mul(86_400));
    let mut owned = 0;
    for (job, hook) in hooks {
        let deleted = hook(pool.clone(), keep).await?;
        tracing::debug!(job, deleted, "retention hook ran");
        owned += deleted;
    }

    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    sqlx::query!("SELECT fleet.recount_jobs()")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(completed, dead, workers, owned, "pruned");
    Ok(())
}

async fn delete_finished(
    pool: &sqlx::PgPool,
    states: &[JobState],
    hours: u64,
) -> Result<u64, JobError> {
    let mut total = 0;
    loop {
        let deleted: i64 = sqlx::query_scalar!(
            r#"WITH gone AS (
                 DELETE FROM fleet.jobs WHERE id IN (
                     SELECT id FROM fleet.jobs
                     WHERE state = ANY($1::fleet.job_state[])
                       AND finished_at < now() - make_interval(hours => $2)
                     LIMIT $3)
                 RETURNING job_name, state
             ), counted AS (
                 SELECT fleet.count_moves(array_agg(job_name), array_agg(state),
                                          array_agg(NULL::fleet.job_state)) AS moved
                 FROM gone
             )
             SELECT count(*) AS "deleted!" FROM gone WHERE (SELECT moved FROM counted) >= 0"#,
            states as &[JobState],
            hours as i32,
            CHUNK,
        )
        .fetch_one(pool)
        .await?;
        if deleted == 0 {
            return Ok(total);
        }
        total += deleted as u64;
    }
}
