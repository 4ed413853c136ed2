//! Worker identity and liveness. A worker process registers a fresh uuid at boot
//! (never a reused dyno name: a restarted process must not inherit a dead one's
//! leases), heartbeats, and rescues the jobs of workers whose heartbeat lapsed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::holdings::Holdings;

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

    /// Registers (or revives) this worker. Committed durably, unlike the queue's other
    /// writes: a registration lost in a server crash would let other processes rescue
    /// a live worker's jobs while it runs them.
    pub async fn register(&self, pool: &PgPool, queues: &[&str]) -> sqlx::Result<()> {
        let mut tx = pool.begin().await?;
        sqlx::query!("SET LOCAL synchronous_commit TO on")
            .execute(&mut *tx)
            .await?;
        sqlx::query!(
            "INSERT INTO fleet.workers (id, name, host, pid, queues) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET last_heartbeat_at = now(), stopped_at = NULL",
            self.id,
            self.name,
            self.host,
            self.pid as i32,
            queues as _,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// Renews the lease and reports the jobs held. Returns false when the worker row
    /// is gone or marked stopped: others have rescued (or will rescue) its jobs.
    pub async fn heartbeat(&self, pool: &PgPool, held: &[i64]) -> sqlx::Result<bool> {
        let updated = sqlx::query!(
            "UPDATE fleet.workers SET last_heartbeat_at = now(), held = $2
             WHERE id = $1 AND stopped_at IS NULL",
            self.id,
            held,
        )
        .execute(pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    pub async fn mark_stopped(&self, pool: &PgPool) -> sqlx::Result<()> {
        sqlx::query!(
            "UPDATE fleet.workers SET stopped_at = now() WHERE id = $1",
            self.id
        )
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
    let rows = sqlx::query_file!("src/sql/rescue.sql", lease_timeout.as_secs_f64())
        .fetch_all(pool)
        .await?;
    for row in &rows {
        let (id, job_name) = (row.id, &row.job_name);
        tracing::warn!(job.id = id, job.name = %job_name, "rescued job {id} from a dead worker");
    }
    Ok(rows.len() as u64)
}

/// Gives back, without using an attempt, every job this worker still holds: what a
/// graceful shutdown does, after its in-flight attempts were settled, with the jobs it
/// claimed but never started.
pub async fn hand_back_all(pool: &PgPool, worker: Uuid) -> sqlx::Result<u64> {
    let rows = sqlx::query_scalar!(
        r#"WITH handed AS (
             UPDATE fleet.jobs SET state = 'available', attempts = attempts - 1,
                    lease_owner = NULL, run_at = now()
             WHERE lease_owner = $1 AND state = 'running'
             RETURNING id, job_name
         ), counted AS (
             SELECT fleet.count_moves(array_agg(job_name), array_agg('running'::fleet.job_state),
                                      array_agg('available'::fleet.job_state)) AS moved
             FROM handed
         )
         SELECT id AS "id!" FROM handed WHERE (SELECT moved FROM counted) >= 0"#,
        worker
    )
    .fetch_all(pool)
    .await?;
    Ok(rows.len() as u64)
}

/// Lease timing of a worker process.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    pub heartbeat_interval: Duration,
    pub lease_timeout: Duration,
}

impl LeaseTiming {
    /// How long a worker may go without a successful heartbeat before it must assume
    /// its lease is lost: one heartbeat interval short of the timeout others apply.
    /// Measured from when the last successful heartbeat was *sent*, which is no later
    /// than the time the database stamped it, so the worker always gives up first.
    pub fn give_up_after(&self) -> Duration {
        self.lease_timeout
            .saturating_sub(self.heartbeat_interval)
            .max(self.heartbeat_interval / 2)
    }
}

/// Heartbeats and rescues until `stop`, and watches the lease: when no heartbeat has
/// gone through for [`LeaseTiming::give_up_after`], every attempt is aborted unsettled
/// and nothing is claimed until a heartbeat succeeds again.
pub async fn run_heartbeat(
    pool: PgPool,
    identity: WorkerIdentity,
    queues: Vec<&'static str>,
    timing: LeaseTiming,
    holdings: Arc<Holdings>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(timing.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog =
        tokio::time::interval((timing.heartbeat_interval / 4).max(Duration::from_millis(10)));
    let mut last_ok = Instant::now();
    // The watchdog must tick while a heartbeat hangs, so every wait below races it.
    let watch = |last_ok: Instant| {
        if holdings.lease_ok() && last_ok.elapsed() > timing.give_up_after() {
            let aborted = holdings.lose_lease();
            tracing::error!(worker = %identity.name, aborted,
                "no heartbeat for {:?}: lease presumed lost, in-flight attempts aborted unsettled",
                last_ok.elapsed());
        }
    };
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = watchdog.tick() => { watch(last_ok); continue; }
            _ = stop.wait_for(|s| *s) => return,
        }
        let sent = Instant::now();
        let held = holdings.held();
        let heartbeat =
            tokio::time::timeout(timing.lease_timeout, identity.heartbeat(&pool, &held));
        tokio::pin!(heartbeat);
        let beat = loop {
            tokio::select! {
                beat = &mut heartbeat => break beat,
                _ = watchdog.tick() => watch(last_ok),
                _ = stop.wait_for(|s| *s) => return,
            }
        };
        match beat {
            Ok(Ok(true)) => {
                last_ok = sent;
                holdings.lease_renewed();
            }
            Ok(Ok(false)) => {
                // Pruned or marked stopped while we stalled: our jobs were (or will be)
                // rescued. Abort what we run, unsettled, then live on as a fresh worker.
                let aborted = holdings.lose_lease();
                tracing::warn!(worker = %identity.name, aborted,
                    "worker row missing or stopped: in-flight attempts aborted; registering again");
                match identity.register(&pool, &queues).await {
                    Ok(()) => {
                        last_ok = sent;
                        holdings.lease_renewed();
                    }
                    Err(error) => tracing::warn!(%error, "registering again failed"),
                }
                continue;
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "heartbeat failed");
                continue;
            }
            Err(_) => {
                tracing::warn!("heartbeat timed out");
                continue;
            }
        }
        if let Err(error) = rescue_expired(&pool, timing.lease_timeout).await {
            tracing::warn!(%error, "rescue failed");
        }
    }
}
