//! The queue keeps its own tables vacuumed and analysed, whatever autovacuum does.
//!
//! Every claim and ack leaves a dead row version; a queue table needs vacuum far
//! more often than autovacuum's defaults give (and some servers run without it: this
//! machine's PostgreSQL has `autovacuum = off`). Without statistics the planner also
//! misjudges the table as it grows: measured, a soak whose job table was never
//! analysed claimed by sequential scan, 22,000 of them, and fell behind within
//! minutes. So one worker process at a time (a session advisory lock) looks every
//! [`CHECK_EVERY`] at the statistics of the queue's tables and runs
//! `VACUUM (ANALYZE)` on those with [`DEAD_ROWS`] dead rows, or `ANALYZE` on those
//! changed by [`CHANGED_ROWS`] since their last analysis.
//!
//! Each check also folds `fleet.stat_deltas` into `fleet.stats` (`fleet.roll_up_stats`):
//! readers of the metrics fold them too, but a fleet nobody scrapes must not pile
//! deltas up (measured: a 30-minute soak left 2.6 million rows, 171 MB, beside 1.5
//! million jobs).
//!
//! A vacuum cannot remove what an older snapshot may still see: while a transaction
//! older than the last vacuum holds the xmin horizon, another vacuum would scan the
//! table and indexes for nothing, and an analysis would mislead the planner, so both
//! wait (the claim's floor keeps claims cheap meanwhile, `fetcher.rs`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, PgPool};
use tokio::sync::watch;

pub const CHECK_EVERY: Duration = Duration::from_secs(10);
pub const DEAD_ROWS: i64 = 20_000;
pub const CHANGED_ROWS: i64 = 50_000;

/// The tables the runtime churns.
const TABLES: &[&str] = &[
    "fleet.jobs",
    "fleet.workers",
    "fleet.stat_deltas",
    "fleet.stats",
    "fleet.throughput",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Vacuum,
    Analyze,
}

/// What one check decided for one table.
#[derive(Debug, Clone)]
pub struct Maintained {
    pub table: String,
    pub action: Action,
    pub elapsed: Duration,
}

/// One check: vacuums or analyses the runtime's tables that need it, unless another
/// process is at it. Returns what it did.
pub async fn check(conn: &mut PgConnection) -> sqlx::Result<Vec<Maintained>> {
    let locked: bool = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_lock(hashtext('fleet'), hashtext('maintenance')) AS "locked!""#
    )
    .fetch_one(&mut *conn)
    .await?;
    if !locked {
        return Ok(Vec::new());
    }
    let result = check_locked(conn).await;
    sqlx::query_scalar!("SELECT pg_advisory_unlock(hashtext('fleet'), hashtext('maintenance'))")
        .fetch_one(&mut *conn)
        .await?;
    result
}

async fn check_locked(conn: &mut PgConnection) -> sqlx::Result<Vec<Maintained>> {
    sqlx::query_scalar!("SELECT fleet.roll_up_stats()")
        .fetch_one(&mut *conn)
        .await?;
    let tables: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
    let stats = sqlx::query!(
        r#"SELECT s.schemaname || '.' || s.relname AS "table!", s.n_dead_tup AS "dead!",
                  s.n_mod_since_analyze AS "changed!",
                  greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
                  (SELECT min(a.xact_start) FROM pg_stat_activity a
                   WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL)
                     AND a.datname = current_database()
                     AND a.pid <> pg_backend_pid()) AS oldest_xact
           FROM pg_stat_user_tables s
           WHERE s.schemaname || '.' || s.relname = ANY($1)"#,
        &tables,
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut done = Vec::new();
    for row in stats {
        let action = decide(row.dead, row.changed, row.last_vacuum, row.oldest_xact);
        let Some(action) = action else { continue };
        let sql = match action {
            Action::Vacuum => format!("VACUUM (ANALYZE) {}", row.table),
            Action::Analyze => format!("ANALYZE {}", row.table),
        };
        let started = std::time::Instant::now();
        conn.execute(AssertSqlSafe(sql)).await?;
        done.push(Maintained {
            table: row.table,
            action,
            elapsed: started.elapsed(),
        });
    }
    Ok(done)
}

/// Vacuum a table with enough dead rows, or analyse one changed enough since its
/// last analysis; neither while a transaction older than its last vacuum holds the
/// horizon. A vacuum would remove nothing then; an analysis would sample a table of
/// dead versions and tell the planner that almost nothing is available, and the
/// plans it then picks (another index's range, then a sort) walk every dead entry.
/// Measured: a soak's claims stalled for seconds after each analysis under a held
/// horizon, and ran at 15 ms p99 between them.
pub fn decide(
    dead: i64,
    changed: i64,
    last_vacuum: Option<DateTime<Utc>>,
    oldest_xact: Option<DateTime<Utc>>,
) -> Option<Action> {
    let horizon_held = match (oldest_xact, last_vacuum) {
        (Some(oldest), Some(vacuumed)) => oldest < vacuumed,
        _ => false,
    };
    if horizon_held {
        None
    } else if dead >= DEAD_ROWS {
        Some(Action::Vacuum)
    } else if changed >= CHANGED_ROWS {
        Some(Action::Analyze)
    } else {
        None
    }
}

/// Checks every [`CHECK_EVERY`] until `stop`, on a connection of its own (VACUUM runs
/// outside any transaction and may take a while).
pub async fn run(pool: PgPool, mut stop: watch::Receiver<bool>) {
    let mut conn: Option<PgConnection> = None;
    let mut refused = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if conn.is_none() {
            match PgConnection::connect_with(&pool.connect_options()).await {
                Ok(c) => conn = Some(c),
                Err(error) => {
                    tracing::warn!(%error, "maintenance: no connection");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match check(c).await {
            Ok(done) => {
                for m in done {
                    tracing::info!(table = %m.table, action = ?m.action, elapsed = ?m.elapsed, "queue table maintained");
                }
            }
            Err(error) => {
                // A role that may not vacuum (not the tables' owner) says so once.
                if !refused {
                    tracing::warn!(%error, "maintenance failed (autovacuum is then all the queue's tables get)");
                }
                refused = true;
                conn = None;
            }
        }
    }
}
