//! Worker identity and liveness. A worker process registers a fresh uuid at boot
//! (never a reused dyno name: a restarted process must not inherit a dead one's
//! leases), heartbeats, and rescues the jobs of workers whose heartbeat lapsed.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

const RESCUE_SQL: &str = include_str!("sql/rescue.sql");

#[derive(Debug, Clone)]
pub struct WorkerIdentity {
    pub id: Uuid,
    /// `host:pid:short-id`, for people.
    pub name: String,
    pub host: String,
    pub pid: u32,
}

impl WorkerIdentity {
    pub fn new() -> Self {
        let id = Uuid::new_v4();
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        let pid = std::process::id();
        let short = &id.simple().to_string()[..8];
        Self {
            name: format!("{host}:{pid}:{short}"),
            id,
            host,
            pid,
        }
    }

    pub async fn register(&self, pool: &PgPool, queues: &[&str]) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO fleet.workers (id, name, host, pid, queues) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET last_heartbeat_at = now(), stopped_at = NULL",
        )
        .bind(self.id)
        .bind(&self.name)
        .bind(&self.host)
        .bind(self.pid as i32)
        .bind(queues)
        .execute(pool)
        .await?;
        Ok(())
    }

    pub async fn heartbeat(&self, pool: &PgPool, queues: &[&str]) -> sqlx::Result<()> {
        let updated = sqlx::query(
            "UPDATE fleet.workers SET last_heartbeat_at = now() WHERE id = $1 AND stopped_at IS NULL",
        )
        .bind(self.id)
        .execute(pool)
        .await?
        .rows_affected();
        if updated == 0 {
            // Pruned or marked stopped while we stalled: our old leases were rescued,
            // and any late ack of them will be refused. Carry on as a live worker.
            tracing::warn!(worker = %self.name, "worker row missing or stopped; registering again");
            self.register(pool, queues).await?;
        }
        Ok(())
    }

    pub async fn mark_stopped(&self, pool: &PgPool) -> sqlx::Result<()> {
        sqlx::query("UPDATE fleet.workers SET stopped_at = now() WHERE id = $1")
            .bind(self.id)
            .execute(pool)
            .await?;
        Ok(())
    }
}

impl Default for WorkerIdentity {
    fn default() -> Self {
        Self::new()
    }
}

/// Re-queues (or kills, when out of attempts) the jobs of dead workers. Returns how
/// many were rescued.
pub async fn rescue_expired(pool: &PgPool, lease_timeout: Duration) -> sqlx::Result<u64> {
    let rows: Vec<(i64, String)> = sqlx::query_as(RESCUE_SQL)
        .bind(lease_timeout.as_secs_f64())
        .fetch_all(pool)
        .await?;
    for (id, job_name) in &rows {
        tracing::warn!(job.id = id, job.name = %job_name, "rescued job {id} from a dead worker");
    }
    Ok(rows.len() as u64)
}

/// Gives back, without using an attempt, every job this worker still holds: what a
/// graceful shutdown does with the work its grace period did not cover.
pub async fn hand_back_all(pool: &PgPool, worker: Uuid) -> sqlx::Result<u64> {
    let rows: Vec<(i64,)> = sqlx::query_as(
        "WITH handed AS (
             UPDATE fleet.jobs SET state = 'available', attempts = attempts - 1,
                    lease_owner = NULL, run_at = now()
             WHERE lease_owner = $1 AND state = 'running'
             RETURNING id, job_name
         ), counted AS (
             INSERT INTO fleet.stat_deltas (metric, job_name, label, delta)
             SELECT 'jobs', job_name, s.label, s.sign * count(*)
             FROM handed, (VALUES ('available', 1), ('running', -1)) AS s(label, sign)
             GROUP BY job_name, s.label, s.sign
         )
         SELECT id FROM handed",
    )
    .bind(worker)
    .fetch_all(pool)
    .await?;
    Ok(rows.len() as u64)
}

/// Heartbeats and rescues until `stop`.
pub async fn run_heartbeat(
    pool: PgPool,
    identity: WorkerIdentity,
    queues: Vec<&'static str>,
    interval: Duration,
    lease_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(error) = identity.heartbeat(&pool, &queues).await {
            tracing::warn!(%error, "heartbeat failed");
            continue;
        }
        if let Err(error) = rescue_expired(&pool, lease_timeout).await {
            tracing::warn!(%error, "rescue failed");
        }
    }
}
