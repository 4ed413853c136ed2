//! What operators do to jobs. Every change keeps the state counts of `fleet.stats`
//! in step (through `fleet.stat_deltas`).

use chrono::{DateTime, Utc};
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use sqlx::PgPool;

#[derive(Debug, Clone, Default, Args)]
pub struct Filter {
    /// Only this job name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only this state (available, running, completed, dead, cancelled).
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
}

#[derive(Debug, Clone, Default, Args)]
pub struct Selection {
    /// Job ids.
    pub ids: Vec<i64>,
    /// Instead of ids: every job of this name (with --state).
    #[arg(long)]
    pub name: Option<String>,
    /// Instead of ids: every job in this state (default: dead for retry, available for cancel).
    #[arg(long)]
    pub state: Option<String>,
}

const STATES: [&str; 5] = ["available", "running", "completed", "dead", "cancelled"];

fn check_state(state: &Option<String>) -> anyhow::Result<()> {
    if let Some(s) = state {
        anyhow::ensure!(
            STATES.contains(&s.as_str()),
            "unknown state `{s}`; one of {}",
            STATES.join(", ")
        );
    }
    Ok(())
}

type ListRow = (
    i64,
    String,
    String,
    i32,
    i32,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<String>,
);

pub async fn list(pool: &PgPool, filter: &Filter) -> anyhow::Result<String> {
    check_state(&filter.state)?;
    let rows: Vec<ListRow> = sqlx::query_as(
        "SELECT id, job_name, state::text, attempts, max_attempts, run_at, created_at,
                errors -> -1 ->> 'error'
         FROM fleet.jobs
         WHERE ($1::text IS NULL OR job_name = $1)
           AND ($2::text IS NULL OR state = $2::fleet.job_state)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(&filter.name)
    .bind(&filter.state)
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "id",
        "job",
        "state",
        "attempts",
        "run at",
        "created",
        "last error",
    ]);
    for (id, name, state, attempts, max, run_at, created, error) in rows {
        let mut error = error.unwrap_or_default();
        if error.chars().count() > 60 {
            error = error.chars().take(57).collect::<String>() + "...";
        }
        table.add_row([
            id.to_string(),
            name,
            state,
            format!("{attempts}/{max}"),
            run_at.format("%F %T").to_string(),
            created.format("%F %T").to_string(),
            error,
        ]);
    }
    Ok(table.to_string())
}

pub async fn show(pool: &PgPool, id: i64) -> anyhow::Result<String> {
    let row: Option<serde_json::Value> =
        sqlx::query_scalar("SELECT to_jsonb(j) FROM fleet.jobs j WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?;
    let row = row.ok_or_else(|| anyhow::anyhow!("no job {id}"))?;
    Ok(serde_json::to_string_pretty(&row)?)
}

/// Dead or cancelled jobs (by id, or by name/state) run again with all their attempts.
pub async fn retry(pool: &PgPool, selection: &Selection) -> anyhow::Result<String> {
    let n = transition(
        pool,
        selection,
        Transition {
            from: &["dead", "cancelled"],
            default_state: "dead",
            set: "state = 'available', attempts = 0, run_at = now(), finished_at = NULL, lease_owner = NULL",
            to: "available",
        },
    )
    .await?;
    Ok(format!("{n} job(s) queued again"))
}

/// Jobs not yet finished are cancelled. A running attempt goes on, but its ack is
/// refused (the row is no longer `running`), so it changes nothing in the queue.
pub async fn cancel(pool: &PgPool, selection: &Selection) -> anyhow::Result<String> {
    let n = transition(
        pool,
        selection,
        Transition {
            from: &["available", "running", "dead"],
            default_state: "available",
            set: "state = 'cancelled', finished_at = now(), lease_owner = NULL",
            to: "cancelled",
        },
    )
    .await?;
    Ok(format!("{n} job(s) cancelled"))
}

/// An operator's move of jobs from some states to one.
struct Transition {
    from: &'static [&'static str],
    /// Which jobs `--name` alone selects.
    default_state: &'static str,
    set: &'static str,
    to: &'static str,
}

impl Selection {
    pub fn ids(ids: Vec<i64>) -> Self {
        Self {
            ids,
            ..Default::default()
        }
    }
}

async fn transition(
    pool: &PgPool,
    selection: &Selection,
    transition: Transition,
) -> anyhow::Result<i64> {
    check_state(&selection.state)?;
    let state_filter = selection
        .state
        .clone()
        .unwrap_or_else(|| transition.default_state.into());
    anyhow::ensure!(
        transition.from.contains(&state_filter.as_str()),
        "only jobs that are {} can become {}",
        transition.from.join(" or "),
        transition.to
    );
    anyhow::ensure!(
        !selection.ids.is_empty() || selection.name.is_some() || selection.state.is_some(),
        "name jobs by id, or select them with --name/--state"
    );
    let (from, set, to) = (transition.from, transition.set, transition.to);
    let by_ids = !selection.ids.is_empty();
    let sql = format!(
        "WITH old AS (
             SELECT id, job_name, state FROM fleet.jobs
             WHERE state = ANY($1::fleet.job_state[])
               AND (CASE WHEN $2 THEN id = ANY($3) ELSE
                    ($4::text IS NULL OR job_name = $4) AND state = $5::fleet.job_state END)
             FOR UPDATE
         ), changed AS (
             UPDATE fleet.jobs j SET {set} FROM old WHERE j.id = old.id
             RETURNING j.id, old.job_name, old.state::text AS was
         ), counted AS (
             INSERT INTO fleet.stat_deltas (metric, job_name, label, delta)
             SELECT 'jobs', job_name, was, -count(*) FROM changed GROUP BY job_name, was
             UNION ALL
             SELECT 'jobs', job_name, $6, count(*) FROM changed GROUP BY job_name
         )
         SELECT count(*) FROM changed"
    );
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .bind(by_ids)
        .bind(&selection.ids)
        .bind(&selection.name)
        .bind(state_filter)
        .bind(to)
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// Counts by job name and state from `fleet.stats` plus pending deltas.
pub async fn state_counts(pool: &PgPool) -> sqlx::Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "SELECT job_name, label, sum(v)::bigint FROM (
             SELECT job_name, label, value AS v FROM fleet.stats WHERE metric = 'jobs'
             UNION ALL
             SELECT job_name, label, delta FROM fleet.stat_deltas WHERE metric = 'jobs'
         ) s GROUP BY job_name, label ORDER BY job_name, label",
    )
    .fetch_all(pool)
    .await
}

pub async fn stats(pool: &PgPool) -> anyhow::Result<String> {
    let counts = state_counts(pool).await?;
    let mut names: Vec<String> = counts.iter().map(|c| c.0.clone()).collect();
    names.dedup();
    let mut table = Table::new();
    let mut header = vec!["job".to_string()];
    header.extend(STATES.iter().map(|s| s.to_string()));
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    for name in names {
        let mut row = vec![name.clone()];
        for state in STATES {
            let n = counts
                .iter()
                .find(|c| c.0 == name && c.1 == state)
                .map(|c| c.2)
                .unwrap_or(0);
            row.push(n.to_string());
        }
        table.add_row(row);
    }
    Ok(table.to_string())
}

/// Stops claiming from a queue (running jobs finish; new ones wait).
pub async fn pause(pool: &PgPool, queue: &str) -> anyhow::Result<String> {
    sqlx::query("INSERT INTO fleet.paused_queues (job_name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(queue)
        .execute(pool)
        .await?;
    Ok(format!("queue {queue} paused"))
}

/// Claims from a paused queue again, waking its idle workers.
pub async fn resume(pool: &PgPool, queue: &str) -> anyhow::Result<String> {
    let mut tx = pool.begin().await?;
    let resumed = sqlx::query("DELETE FROM fleet.paused_queues WHERE job_name = $1")
        .bind(queue)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("SELECT pg_notify('fleet_jobs', $1)")
        .bind(queue)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(if resumed == 0 {
        format!("queue {queue} was not paused")
    } else {
        format!("queue {queue} resumed")
    })
}
