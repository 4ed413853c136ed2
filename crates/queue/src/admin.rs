//! What operators do to jobs, as data: listing, showing, retrying, cancelling,
//! counting, pausing. The CLI and the console render what these return. Every change
//! keeps the state counts of `fleet.stats` in step (through `fleet.stat_deltas`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::JobState;

/// Which jobs [`list`] returns, newest first. Every filter is served by an index, so a
/// page costs a page's worth of index whatever the table holds: job type and state by
/// `jobs_browse` (one probe per type and state, merged), tenant by `jobs_tenant`, key
/// by the idempotency index.
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: Option<String>,
    pub state: Option<JobState>,
    /// The `tenant_id` the payload names.
    pub tenant: Option<String>,
    /// The idempotency key, exactly.
    pub key: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only ids below this one (the next page).
    pub before_id: Option<i64>,
    pub limit: i64,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            name: None,
            state: None,
            tenant: None,
            key: None,
            created_after: None,
            created_before: None,
            before_id: None,
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
    pub tenant: Option<String>,
    pub idempotency_key: Option<String>,
}

pub async fn list(pool: &PgPool, filter: &Filter) -> sqlx::Result<Vec<JobSummary>> {
    const COLUMNS: &str = "j.id, j.job_name, j.state, j.attempts, j.max_attempts, j.run_at, \
         j.created_at, j.errors -> -1 ->> 'error' AS last_error, \
         j.payload ->> 'tenant_id' AS tenant, j.idempotency_key";
    let limit = filter.limit.clamp(1, 1000);
    // Age bounds become id bounds (every index of the table ends with the id).
    let since = |at: Option<DateTime<Utc>>| async move {
        match at {
            Some(at) => sqlx::query_scalar!(r#"SELECT fleet.first_job_id_since($1) AS "id!""#, at)
                .fetch_one(pool)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let (from_id, until_id) = (
        since(filter.created_after).await?,
        since(filter.created_before).await?,
    );
    let until_id = match (until_id, filter.before_id) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut q = sqlx::QueryBuilder::<sqlx::Postgres>::new("");
    // The conditions every path shares (after a WHERE of its own).
    let common = |q: &mut sqlx::QueryBuilder<sqlx::Postgres>| {
        if let Some(key) = &filter.key {
            q.push(" AND j.idempotency_key = ").push_bind(key.clone());
        }
        if let Some(id) = from_id {
            q.push(" AND j.id >= ").push_bind(id);
        }
        if let Some(id) = until_id {
            q.push(" AND j.id < ").push_bind(id);
        }
    };
    if let Some(tenant) = &filter.tenant {
        // One range of the tenant index, newest first.
        q.push(format!("SELECT {COLUMNS} FROM fleet.jobs j WHERE j.payload ? 'tenant_id' AND j.payload ->> 'tenant_id' = "))
            .push_bind(tenant.clone());
        if let Some(name) = &filter.name {
            q.push(" AND j.job_name = ").push_bind(name.clone());
        }
        if let Some(state) = filter.state {
            q.push(" AND j.state = ").push_bind(state);
        }
        common(&mut q);
    } else if filter.name.is_none() && filter.state.is_none() && filter.key.is_none() {
        // Everything, newest first: the primary key backwards.
        q.push(format!("SELECT {COLUMNS} FROM fleet.jobs j WHERE true"));
        common(&mut q);
    } else {
        // One probe of `jobs_browse` (or of the key index) per job type and state, each
        // newest first and cut at the page size, merged; running jobs (which that index
        // leaves out) through `jobs_leased`.
        let states: Vec<JobState> = match filter.state {
            Some(state) => vec![state],
            None => JobState::ALL.to_vec(),
        };
        let settled: Vec<JobState> = states
            .iter()
            .copied()
            .filter(|s| *s != JobState::Running)
            .collect();
        let mut branches = 0;
        q.push("SELECT * FROM (");
        if !settled.is_empty() {
            q.push("(SELECT j.* FROM (SELECT job_name FROM fleet.job_types");
            if let Some(name) = &filter.name {
                q.push(" WHERE job_name = ").push_bind(name.clone());
            }
            q.push(") t CROSS JOIN unnest(").push_bind(settled);
            // The literal `<> 'running'` lets the planner use the partial index.
            q.push(format!(
                "::fleet.job_state[]) AS s(state) CROSS JOIN LATERAL (SELECT {COLUMNS} FROM fleet.jobs j \
                 WHERE j.job_name = t.job_name AND j.state = s.state AND j.state <> 'running'"
            ));
            common(&mut q);
            q.push(" ORDER BY j.id DESC LIMIT ")
                .push_bind(limit)
                .push(") j)");
            branches += 1;
        }
        if states.contains(&JobState::Running) {
            if branches > 0 {
                q.push(" UNION ALL ");
            }
            q.push(format!(
                "(SELECT {COLUMNS} FROM fleet.jobs j \
                 WHERE j.lease_owner IS NOT NULL AND j.state = 'running'"
            ));
            if let Some(name) = &filter.name {
                q.push(" AND j.job_name = ").push_bind(name.clone());
            }
            common(&mut q);
            q.push(" ORDER BY j.id DESC LIMIT ")
                .push_bind(limit)
                .push(")");
        }
        q.push(") merged");
    }
    q.push(" ORDER BY id DESC LIMIT ").push_bind(limit);
    q.build_query_as::<JobSummary>().fetch_all(pool).await
}

/// One job with everything the console's job page shows.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobDetail {
    pub id: i64,
    pub job_name: String,
    pub state: JobState,
    pub payload: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub concurrency_key: Option<String>,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The worker holding it now (running jobs).
    pub held_by: Option<String>,
    /// One object per failed or abandoned attempt: attempt, at, kind, error, worker,
    /// run_ms.
    pub errors: serde_json::Value,
}

pub async fn job(pool: &PgPool, id: i64) -> sqlx::Result<Option<JobDetail>> {
    sqlx::query_as!(
        JobDetail,
        r#"SELECT j.id, j.job_name, j.state AS "state: JobState", j.payload, j.idempotency_key,
                  j.concurrency_key, j.priority, j.attempts, j.max_attempts, j.run_at, j.created_at,
                  j.started_at, j.finished_at, w.name AS "held_by?", j.errors
           FROM fleet.jobs j LEFT JOIN fleet.workers w ON w.id = j.lease_owner
           WHERE j.id = $1"#,
        id,
    )
    .fetch_optional(pool)
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
/// Audited as `actor`'s action in the same transaction.
pub async fn retry(pool: &PgPool, selection: &Selection, actor: &str) -> Result<i64, AdminError> {
    let from = [JobState::Dead, JobState::Cancelled];
    let moved = move_jobs(
        pool,
        selection,
        &from,
        JobState::Dead,
        JobState::Available,
        actor,
        "retry",
    )
    .await?;
    Ok(moved)
}

/// Jobs not yet finished (and dead ones) are cancelled. Returns how many. A running
/// attempt goes on, but its ack is refused (the row is no longer `running`), so it
/// changes nothing in the queue.
pub async fn cancel(pool: &PgPool, selection: &Selection, actor: &str) -> Result<i64, AdminError> {
    let from = [JobState::Available, JobState::Running, JobState::Dead];
    move_jobs(
        pool,
        selection,
        &from,
        JobState::Available,
        JobState::Cancelled,
        actor,
        "cancel",
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
    actor: &str,
    action: &str,
) -> Result<i64, AdminError> {
    let state = check(selection, from, default, to)?;
    let mut tx = pool.begin().await?;
    let moved = sqlx::query_scalar!(
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
    .fetch_one(&mut *tx)
    .await?;
    let target = if selection.ids.is_empty() {
        serde_json::json!({"name": selection.name, "state": state})
    } else {
        serde_json::json!({"ids": selection.ids})
    };
    audit(&mut tx, actor, action, &target, moved).await?;
    tx.commit().await?;
    Ok(moved)
}

/// Records an operator's action, in the transaction that makes it.
async fn audit(
    tx: &mut sqlx::PgConnection,
    actor: &str,
    action: &str,
    target: &serde_json::Value,
    affected: i64,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO fleet.operator_actions (actor, action, target, affected) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        target,
        affected,
    )
    .execute(tx)
    .await?;
    Ok(())
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

/// Stops claiming from a queue (running jobs finish; new ones wait). False if it was
/// paused already. Audited.
pub async fn pause(pool: &PgPool, queue: &str, actor: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let paused = sqlx::query!(
        "INSERT INTO fleet.paused_queues (job_name) VALUES ($1) ON CONFLICT DO NOTHING",
        queue,
    )
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    audit(
        &mut tx,
        actor,
        "pause",
        &serde_json::json!({"queue": queue}),
        paused,
    )
    .await?;
    tx.commit().await?;
    Ok(paused > 0)
}

/// Claims from a paused queue again, waking its idle workers. False if it was not
/// paused. Audited.
pub async fn resume(pool: &PgPool, queue: &str, actor: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let resumed = sqlx::query!("DELETE FROM fleet.paused_queues WHERE job_name = $1", queue,)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
    sqlx::query!("SELECT pg_notify($1, $2)", crate::NOTIFY_CHANNEL, queue,)
        .execute(&mut *tx)
        .await?;
    audit(
        &mut tx,
        actor,
        "resume",
        &serde_json::json!({"queue": queue}),
        resumed,
    )
    .await?;
    tx.commit().await?;
    Ok(resumed > 0)
}

/// The paused queues, with when.
pub async fn paused_queues(pool: &PgPool) -> sqlx::Result<Vec<(String, DateTime<Utc>)>> {
    let rows =
        sqlx::query!("SELECT job_name, paused_at FROM fleet.paused_queues ORDER BY job_name")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.job_name, r.paused_at))
        .collect())
}

/// One operator's action, as the audit log shows it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperatorAction {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: serde_json::Value,
    pub affected: i64,
}

/// The newest operators' actions.
pub async fn operator_actions(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<OperatorAction>> {
    sqlx::query_as!(
        OperatorAction,
        "SELECT id, at, actor, action, target, affected FROM fleet.operator_actions
         ORDER BY id DESC LIMIT $1",
        limit,
    )
    .fetch_all(pool)
    .await
}

/// Completed and dead jobs per minute of the last `minutes`, per job type, oldest
/// first, every minute present (0 where nothing finished). Folds pending deltas first.
pub async fn throughput(
    pool: &PgPool,
    minutes: i32,
) -> sqlx::Result<std::collections::BTreeMap<String, Vec<(f64, f64)>>> {
    sqlx::query_scalar!("SELECT fleet.roll_up_stats()")
        .fetch_one(pool)
        .await?;
    let rows = sqlx::query!(
        r#"SELECT t.job_name AS "job_name!", coalesce(x.completed, 0) AS "completed!", coalesce(x.dead, 0) AS "dead!"
           FROM fleet.job_types t
           CROSS JOIN generate_series(date_trunc('minute', now()) - make_interval(mins => $1 - 1),
                                      date_trunc('minute', now()), interval '1 minute') AS m(minute)
           LEFT JOIN fleet.throughput x ON x.job_name = t.job_name AND x.minute = m.minute
           ORDER BY t.job_name, m.minute"#,
        minutes,
    )
    .fetch_all(pool)
    .await?;
    let mut series = std::collections::BTreeMap::<String, Vec<(f64, f64)>>::new();
    for r in rows {
        series
            .entry(r.job_name)
            .or_default()
            .push((r.completed, r.dead));
    }
    Ok(series)
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
             ORDER BY -(j.priority::int), j.run_at, j.id LIMIT 1
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
