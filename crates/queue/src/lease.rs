//! Worker identity and liveness. A worker process registers a fresh uuid at boot
//! (never a reused dyno name: a restarted process must not inherit a dead one's
//! leases), heartbeats, and rescues the jobs of workers whose heartbeat lapsed.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
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
             ON CONFLICT (id) DO UPDATE SET last_heartbeat_at = now(), stopped_at = NULL, swept_at = NULL",
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

    /// Renews the lease and reports the jobs held. Returns when the database server
    /// started, or `None` when the worker row is gone or marked stopped: others have
    /// rescued (or will rescue) its jobs.
    pub async fn heartbeat(
        &self,
        pool: &PgPool,
        held: &[i64],
    ) -> sqlx::Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar!(
            r#"UPDATE fleet.workers SET last_heartbeat_at = now(), held = $2, swept_at = NULL
             WHERE id = $1 AND stopped_at IS NULL
             RETURNING pg_postmaster_start_time() AS "server_started!""#,
            self.id,
            held,
        )
        .fetch_optional(pool)
        .await
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

/// Logs each rescued job; returns how many.
fn log_rescued<'a>(rows: impl Iterator<Item = (i64, &'a str)>) -> u64 {
    let mut n = 0;
    for (id, job_name) in rows {
        tracing::warn!(job.id = id, job.name = %job_name, "rescued job {id} from a dead worker");
        n += 1;
    }
    n
}

/// Re-queues (or kills, when out of attempts) the jobs of workers that died or
/// stopped since the last such rescue, probing their jobs worker by worker. Returns
/// how many were rescued.
pub async fn rescue_dead_workers(pool: &PgPool, lease_timeout: Duration) -> sqlx::Result<u64> {
    let rows = sqlx::query_file!("src/sql/rescue_dead.sql", lease_timeout.as_secs_f64())
        .fetch_all(pool)
        .await?;
    Ok(log_rescued(
        rows.iter().map(|r| (r.id, r.job_name.as_str())),
    ))
}

/// The full rescue ([`rescue_expired`]) runs at every heartbeat for two lease
/// timeouts after a worker starts and after the database server restarted (what it
/// alone finds, settlements and registrations lost, only a server crash loses), and
/// otherwise this often; every other heartbeat runs the worker-by-worker one
/// ([`rescue_dead_workers`]).
const FULL_RESCUE_EVERY: Duration = Duration::from_secs(300);

/// Re-queues (or kills, when out of attempts) every job no live worker holds: those
/// of dead workers, of workers whose row is gone, and those whose settlement was
/// lost. Scans every running job. Returns how many were rescued.
pub async fn rescue_expired(pool: &PgPool, lease_timeout: Duration) -> sqlx::Result<u64> {
    let rows = sqlx::query_file!("src/sql/rescue.sql", lease_timeout.as_secs_f64())
        .fetch_all(pool)
        .await?;
    Ok(log_rescued(
        rows.iter().map(|r| (r.id, r.job_name.as_str())),
    ))
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
    // When the server last heartbeated to had started; until when full rescues run at
    // every heartbeat; when the last one ran.
    let mut server_started_seen: Option<DateTime<Utc>> = None;
    let mut full_until = Instant::now();
    let mut last_full = Instant::now();
    let mut rescue: Option<tokio::task::JoinHandle<()>> = None;
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
        let server_started = match beat {
            Ok(Ok(Some(server_started))) => {
                last_ok = sent;
                holdings.lease_renewed();
                server_started
            }
            Ok(Ok(None)) => {
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
        };
        // The rescue runs beside the heartbeats, one at a time: however long it takes,
        // the next heartbeat goes out on time (a heartbeat waiting on a slow rescue
        // would make this worker give up its own lease).
        if rescue.as_ref().is_some_and(|r| !r.is_finished()) {
            continue;
        }
        // After a start or a server restart, full rescues run at every heartbeat for
        // two lease timeouts: a lost settlement is found only once its job's claim is
        // a lease timeout older than its owner's heartbeat.
        if server_started_seen != Some(server_started) {
            server_started_seen = Some(server_started);
            full_until = Instant::now() + timing.lease_timeout * 2 + timing.heartbeat_interval;
        }
        let full = Instant::now() < full_until || last_full.elapsed() >= FULL_RESCUE_EVERY;
        if full {
            last_full = Instant::now();
        }
        let (pool, lease_timeout) = (pool.clone(), timing.lease_timeout);
        rescue = Some(tokio::spawn(async move {
            let rescued = if full {
                rescue_expired(&pool, lease_timeout).await
            } else {
                rescue_dead_workers(&pool, lease_timeout).await
            };
            if let Err(error) = rescued {
                tracing::warn!(%error, full, "rescue failed");
            }
        }));
    }
}
