//! What operators do to jobs, as data: listing, showing, retrying, cancelling,
//! counting, pausing. The CLI and the dashboard render what these return. Every change
//! keeps the state counts of `fleet.stats` in step (through `fleet.stat_deltas`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::JobState;

/// Which jobs [`list`] returns, newest first.
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: Option<String>,
    pub state: Option<JobState>,
    pub limit: i64,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            name: None,
            state: None,
            limit: 50,
        }
    }
}

/// One job as a list shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobSummary {
    pub id: i64,
    pub job_name: String,
    pub state: JobState,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

pub async fn list(pool: &PgPool, filter: &Filter) -> sqlx::Result<Vec<JobSummary>> {
    sqlx::query_as!(
        JobSummary,
        r#"SELECT id, job_name, state AS "state: JobState", attempts, max_attempts, run_at,
                  created_at, errors -> -1 ->> 'error' AS last_error
           FROM fleet.jobs
           WHERE ($1::text IS NULL OR job_name = $1)
             AND ($2::fleet.job_state IS NULL OR state = $2)
           ORDER BY id DESC LIMIT $3"#,
        filter.name,
        filter.state as Option<JobState>,
        filter.limit,
    )
    .fetch_all(pool)
    .await
}

/// The whole row of job `id`, as JSON.
pub async fn show(pool: &PgPool, id: i64) -> sqlx::Result<Option<serde_json::Value>> {
    sqlx::query_scalar!(
        r#"SELECT to_jsonb(j) AS "job!" FROM fleet.jobs j WHERE id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// Jobs named by id, or selected by name and state.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Vec<i64>,
    /// Instead of ids: every job of this name (in `state`, or the action's default).
    pub name: Option<String>,
    /// Instead of ids: every job in this state.
    pub state: Option<JobState>,
}

impl Selection {
    pub fn ids(ids: Vec<i64>) -> Self {
        Self {
            ids,
            ..Default::default()
        }
    }
}

/// Why an operator's action was refused before anything changed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("only jobs that are {allowed} can become {to}")]
    WrongState { allowed: String, to: JobState },
    #[error("name jobs by id, or select them with a name or a state")]
    EmptySelection,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Dead or cancelled jobs run again with all their attempts. Returns how many.
pub async fn retry(pool: &PgPool, selection: &Selection) -> Result<i64, AdminError> {
    let from = [JobState::Dead, JobState::Cancelled];
    move_jobs(pool, selection, &from, JobState::Dead, JobState::Available).await
}

/// Jobs not yet finished (and dead ones) are cancelled. Returns how many. A running
/// attempt goes on, but its ack is refused (the row is no longer `running`), so it
/// changes nothing in the queue.
pub async fn cancel(pool: &PgPool, selection: &Selection) -> Result<i64, AdminError> {
    let from = [JobState::Available, JobState::Running, JobState::Dead];
    move_jobs(
        pool,
        selection,
        &from,
        JobState::Available,
        JobState::Cancelled,
    )
    .await
}

/// An operator's move of the selected jobs that are in one of `from` to `to`:
/// `available` means a fresh set of attempts, due now; anything else finishes the job.
async fn move_jobs(
    pool: &PgPool,
    selection: &Selection,
    from: &[JobState],
    default: JobState,
    to: JobState,
) -> Result<i64, AdminError> {
    let state = check(selection, from, default, to)?;
    Ok(sqlx::query_scalar!(
        r#"WITH old AS (
             SELECT id, job_name, state FROM fleet.jobs
             WHERE state = ANY($1)
               AND (CASE WHEN cardinality($2::bigint[]) > 0 THEN id = ANY($2) ELSE
                    ($3::text IS NULL OR job_name = $3) AND state = $4 END)
             FOR UPDATE
         ), changed AS (
             UPDATE fleet.jobs j
             SET state = $5::fleet.job_state,
                 attempts = CASE WHEN $5::fleet.job_state = 'available' THEN 0 ELSE j.attempts END,
                 run_at = CASE WHEN $5::fleet.job_state = 'available' THEN now() ELSE j.run_at END,
                 finished_at = CASE WHEN $5::fleet.job_state = 'available' THEN NULL ELSE now() END,
                 lease_owner = NULL
             FROM old WHERE j.id = old.id
             RETURNING j.id, old.job_name, old.state AS was, j.state AS now
         ), counted AS (
             SELECT fleet.count_moves(array_agg(job_name), array_agg(was), array_agg(now)) AS moved
             FROM changed
         )
         SELECT count(*) AS "moved!" FROM changed WHERE (SELECT moved FROM counted) >= 0"#,
        from as &[JobState],
        &selection.ids,
        selection.name,
        state as JobState,
        to as JobState,
    )
    .fetch_one(pool)
    .await?)
}

/// The state a name-only selection means, once the selection is known to be allowed.
fn check(
    selection: &Selection,
    from: &[JobState],
    default: JobState,
    to: JobState,
) -> Result<JobState, AdminError> {
    let state = selection.state.unwrap_or(default);
    if !from.contains(&state) {
        let allowed: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
        return Err(AdminError::WrongState {
            allowed: allowed.join(" or "),
            to,
        });
    }
    if selection.ids.is_empty() && selection.name.is_none() && selection.state.is_none() {
        return Err(AdminError::EmptySelection);
    }
    Ok(state)
}

/// How many jobs of a name are in a state.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StateCount {
    pub job_name: String,
    pub state: JobState,
    pub count: i64,
}

/// Counts by job name and state from `fleet.stats` plus pending deltas (no scan of
/// the job table).
pub async fn state_counts(pool: &PgPool) -> sqlx::Result<Vec<StateCount>> {
    sqlx::query_as!(
        StateCount,
        r#"SELECT job_name AS "job_name!", label::fleet.job_state AS "state!: JobState",
                  sum(v)::bigint AS "count!"
           FROM (
               SELECT job_name, label, value AS v FROM fleet.stats WHERE metric = 'jobs'
               UNION ALL
               SELECT job_name, label, delta FROM fleet.stat_deltas WHERE metric = 'jobs'
           ) s GROUP BY job_name, label ORDER BY job_name, label"#,
    )
    .fetch_all(pool)
    .await
}

/// Stops claiming from a queue (running jobs finish; new ones wait).
pub async fn pause(pool: &PgPool, queue: &str) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO fleet.paused_queues (job_name) VALUES ($1) ON CONFLICT DO NOTHING",
        queue,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Claims from a paused queue again, waking its idle workers. False if it was not
/// paused.
pub async fn resume(pool: &PgPool, queue: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let resumed = sqlx::query!("DELETE FROM fleet.paused_queues WHERE job_name = $1", queue,)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query!("SELECT pg_notify($1, $2)", crate::NOTIFY_CHANNEL, queue,)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(resumed > 0)
}

/// Worker processes whose heartbeat is younger than `lease_timeout`, oldest first.
pub async fn live_workers(
    pool: &PgPool,
    lease_timeout: std::time::Duration,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        "SELECT name FROM fleet.workers
         WHERE stopped_at IS NULL AND last_heartbeat_at > now() - make_interval(secs => $1)
         ORDER BY started_at",
        lease_timeout.as_secs_f64(),
    )
    .fetch_all(pool)
    .await
}

/// The queues some live worker process runs (heartbeat younger than `lease_timeout`).
pub async fn live_queues(
    pool: &PgPool,
    lease_timeout: std::time::Duration,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"SELECT DISTINCT q AS "queue!" FROM fleet.workers, unnest(queues) AS q
           WHERE stopped_at IS NULL AND last_heartbeat_at > now() - make_interval(secs => $1)
           ORDER BY 1"#,
        lease_timeout.as_secs_f64(),
    )
    .fetch_all(pool)
    .await
}

/// Seconds the job at the head of each queue has been due (0 when none is due): one
/// probe of the claim index per queue.
pub async fn queue_lags(pool: &PgPool, names: &[String]) -> sqlx::Result<Vec<(String, f64)>> {
    let lags = sqlx::query!(
        r#"SELECT q.name AS "name!", coalesce(extract(epoch FROM now() - head.run_at)::float8, 0) AS "lag!"
         FROM unnest($1::text[]) AS q(name)
         LEFT JOIN LATERAL (
             SELECT j.run_at FROM fleet.jobs j
             WHERE j.job_name = q.name AND j.state = 'available' AND j.run_at <= now()
             ORDER BY j.priority DESC, j.run_at, j.id LIMIT 1
         ) head ON true
         ORDER BY q.name"#,
        names,
    )
    .fetch_all(pool)
    .await?;
    Ok(lags.into_iter().map(|l| (l.name, l.lag)).collect())
}

/// A schedule's last enqueued tick.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleTick {
    pub name: String,
    pub job_name: String,
    pub last_tick_at: Option<DateTime<Utc>>,
}

pub async fn schedule_ticks(pool: &PgPool) -> sqlx::Result<Vec<ScheduleTick>> {
    sqlx::query_as!(
        ScheduleTick,
        "SELECT name, job_name, last_tick_at FROM fleet.schedules ORDER BY name"
    )
    .fetch_all(pool)
    .await
}

/// One value of `fleet.stats`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Stat {
    pub metric: String,
    pub job_name: String,
    pub label: String,
    pub value: f64,
}

/// Folds pending deltas into `fleet.stats`, then reads it whole (a few rows per job
/// type and metric: never the job table).
pub async fn stats(pool: &PgPool) -> sqlx::Result<Vec<Stat>> {
    sqlx::query_scalar!("SELECT fleet.roll_up_stats()")
        .fetch_one(pool)
        .await?;
    sqlx::query_as!(
        Stat,
        "SELECT metric, job_name, label, value FROM fleet.stats"
    )
    .fetch_all(pool)
    .await
}
