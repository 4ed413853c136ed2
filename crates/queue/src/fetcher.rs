//! Claims batches of due jobs for one queue, as many as the queue has free
//! concurrency, and passes them to the queue's [`FleetBackend`](super::backend::FleetBackend).
//! Woken by NOTIFY; polls only as the fallback (and so picks up scheduled jobs and
//! retries within one poll interval of becoming due).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, watch};
use uuid::Uuid;

use super::{
    ClaimedJob,
    ack::{Ack, AckSender},
    holdings::Holdings,
    idle::{IdleLock, Park},
};

#[derive(Debug, Clone)]
pub struct FetcherConfig {
    pub queue: &'static str,
    pub worker_id: Uuid,
    pub batch_size: usize,
    pub poll_interval: Duration,
}

/// A job as `sql/claim.sql` claims it.
#[derive(Debug)]
pub struct ClaimRow {
    pub id: i64,
    pub payload: serde_json::Value,
    pub attempts: i32,
    pub max_attempts: i32,
    pub lease_token: Uuid,
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: DateTime<Utc>,
    /// `-priority`: the claim index's order.
    pub rank: i32,
}

/// Claims up to `limit` jobs of `queue` for `worker_id`, looking at the whole queue
/// (a sweep).
pub async fn claim(
    pool: &PgPool,
    queue: &str,
    limit: usize,
    worker_id: Uuid,
) -> sqlx::Result<Vec<ClaimRow>> {
    claim_from(pool, queue, limit, worker_id, None).await
}

/// A position in the claim index: (rank, run_at, id), rank = -priority.
pub type Position = (i32, DateTime<Utc>, i64);

/// Claims up to `limit` jobs of `queue` for `worker_id`, from `floor` on (from the
/// head when `None`).
pub async fn claim_from(
    pool: &PgPool,
    queue: &str,
    limit: usize,
    worker_id: Uuid,
    floor: Option<Position>,
) -> sqlx::Result<Vec<ClaimRow>> {
    let (rank, run_at, id) = match floor {
        Some((rank, run_at, id)) => (rank, Some(run_at), id),
        None => (i32::MIN, None, i64::MIN),
    };
    sqlx::query_file_as!(
        ClaimRow,
        "src/sql/claim.sql",
        queue,
        limit as i64,
        worker_id,
        rank,
        run_at,
        id
    )
    .fetch_all(pool)
    .await
}

/// Where a fetcher's claims start in the claim index.
///
/// Claimed jobs leave dead entries at the head of the index, which a claim starting
/// there visits one by one (in the heap) for as long as an old snapshot keeps vacuum
/// from removing them: claims then slow down with every job run. So claims start at
/// the oldest job the last claim took, less [`Floor::MARGIN`]; the margin keeps
/// in sight jobs whose enqueuing transaction began earlier than those claimed but
/// committed later (their `run_at` is their transaction's start). What the floor
/// can pass over (a job of a transaction longer than the margin, a job of higher
/// priority, one whose concurrency key was busy, one handed back) is claimed by the
/// next sweep: a claim from the head, at least every [`Floor::SWEEP_EVERY`], and no
/// more than 5% of the time (a sweep costs what a claim without floor costs).
#[derive(Debug)]
pub struct Floor {
    position: Option<Position>,
    last_sweep: Option<std::time::Instant>,
    sweep_every: Duration,
}

impl Default for Floor {
    fn default() -> Self {
        Self::new()
    }
}

impl Floor {
    pub const MARGIN: Duration = Duration::from_millis(250);
    pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
    /// A sweep that took this long spaces the next one by 20 times as long.
    const SWEEP_SHARE: u32 = 20;
    const SWEEP_EVERY_MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self {
            position: None,
            last_sweep: None,
            sweep_every: Self::SWEEP_EVERY,
        }
    }

    /// Where the next claim starts: `None` (the head) when a sweep is due.
    pub fn next(&self) -> Option<Position> {
        match self.last_sweep {
            Some(at) if at.elapsed() < self.sweep_every => self.position,
            _ => None,
        }
    }

    /// After a claim that started at `from` and took `elapsed`: the next floor is
    /// the oldest job claimed, less the margin; a claim that took nothing leaves it.
    pub fn claimed(&mut self, from: Option<Position>, rows: &[ClaimRow], elapsed: Duration) {
        if from.is_none() {
            self.last_sweep = Some(std::time::Instant::now());
            self.sweep_every =
                (elapsed * Self::SWEEP_SHARE).clamp(Self::SWEEP_EVERY, Self::SWEEP_EVERY_MAX);
        }
        let margin = chrono::Duration::from_std(Self::MARGIN).unwrap_or_default();
        if let Some(oldest) = rows.iter().map(|r| (r.rank, r.run_at, r.id)).min() {
            self.position = Some((oldest.0, oldest.1 - margin, i64::MIN));
        }
    }
}

/// How long after finding work a fetcher keeps claiming instead of parking.
const LINGER: Duration = Duration::from_millis(50);
/// The pause between claims while lingering, or while an enqueue keeps it from
/// parking.
const RECLAIM: Duration = Duration::from_millis(10);

/// What a fetcher shares with the rest of its worker process.
pub struct FetcherLinks {
    pub permits: Arc<Semaphore>,
    pub wake: Arc<Notify>,
    pub stop: watch::Receiver<bool>,
    pub out: mpsc::Sender<ClaimedJob>,
    pub holdings: Arc<Holdings>,
    /// Where jobs claimed too late to run (the worker stopped meanwhile) are handed back.
    pub acks: AckSender,
}

/// Runs until `stop` turns true. Dropping `out` on return tells the backend that no
/// more jobs will come.
pub async fn run(pool: PgPool, config: FetcherConfig, links: FetcherLinks) {
    let FetcherLinks {
        permits,
        wake,
        mut stop,
        out,
        holdings,
        acks,
    } = links;
    let queue = config.queue;
    let mut idle = IdleLock::new(queue, pool.connect_options());
    let mut failures = 0u32;
    let mut floor = Floor::new();
    let mut last_found: Option<std::time::Instant> = None;
    loop {
        // Wait for one free slot, then take as many more as are free, up to a batch.
        let first = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = stop.wait_for(|s| *s) => return,
        };
        if *stop.borrow() {
            return;
        }
        if !holdings.lease_ok() {
            // Our lease lapsed: others may be rescuing our jobs. Claim nothing until a
            // heartbeat goes through again.
            drop(first);
            tokio::select! {
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        let epoch = holdings.epoch();
        let mut held: Vec<OwnedSemaphorePermit> = vec![first];
        while held.len() < config.batch_size {
            match permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let from = floor.next();
        let rows = match claim_from(&pool, queue, held.len(), config.worker_id, from).await {
            Ok(rows) => {
                floor.claimed(from, &rows, started.elapsed());
                rows
            }
            Err(error) => {
                drop(held);
                idle.unpark().await;
                if error
                    .as_database_error()
                    .is_some_and(|e| e.is_unique_violation())
                {
                    // Two claimers picked the same concurrency key: one lost; claim again.
                    tracing::debug!(queue, "concurrency-key race on claim; claiming again");
                    continue;
                }
                failures = failures.saturating_add(1);
                let backoff = config.poll_interval * failures.min(10);
                tracing::warn!(queue, %error, "claim failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            }
        };
        failures = 0;
        tracing::debug!(queue, asked = held.len(), got = rows.len(), sweep = from.is_none(), elapsed = ?started.elapsed(), "claimed");
        if !rows.is_empty() {
            last_found = Some(std::time::Instant::now());
            idle.unpark().await;
            holdings.claimed(rows.iter().map(|r| r.id));
            let now = Utc::now();
            let mut jobs = rows
                .into_iter()
                .zip(held.drain(..))
                .map(|(row, permit)| ClaimedJob {
                    id: row.id,
                    job_name: queue,
                    payload: row.payload,
                    attempt: row.attempts,
                    max_attempts: row.max_attempts,
                    lease_token: row.lease_token,
                    epoch,
                    run_at: row.run_at,
                    created_at: row.created_at,
                    claimed_at: row.started_at.max(now),
                    permit: Some(permit),
                });
            while let Some(job) = jobs.next() {
                if let Err(mpsc::error::SendError(job)) = out.send(job).await {
                    // The worker stopped while this claim was in flight: give the
                    // jobs back at once, unstarted (no attempt used), rather than
                    // leaving them to a rescue that would blame a lost lease.
                    for job in std::iter::once(job).chain(jobs) {
                        acks.send(Ack::hand_back(&job));
                    }
                    return;
                }
            }
            continue;
        }
        drop(held);
        // Nothing due. Having found work within LINGER, claim again shortly rather
        // than park: under a steady load nobody is parked, so enqueues skip their
        // NOTIFY (whose commits are serialised). Otherwise park (so that enqueuers
        // NOTIFY us) and look once more before waiting: an enqueue that skipped its
        // NOTIFY has committed by now.
        let wait = if idle.is_parked() {
            config.poll_interval
        } else if last_found.is_some_and(|at| at.elapsed() < LINGER) {
            RECLAIM
        } else {
            match idle.park().await {
                Park::Parked => continue,
                Park::Busy => RECLAIM,
                Park::Unavailable => config.poll_interval,
            }
        };
        let stopping = tokio::select! {
            _ = wake.notified() => false,
            _ = tokio::time::sleep(wait) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        idle.unpark().await;
        if stopping {
            return;
        }
    }
}
