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
}

/// Claims up to `limit` jobs of `queue` for `worker_id`.
pub async fn claim(
    pool: &PgPool,
    queue: &str,
    limit: usize,
    worker_id: Uuid,
) -> sqlx::Result<Vec<ClaimRow>> {
    sqlx::query_file_as!(
        ClaimRow,
        "src/sql/claim.sql",
        queue,
        limit as i64,
        worker_id
    )
    .fetch_all(pool)
    .await
}

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
        let rows = match claim(&pool, queue, held.len(), config.worker_id).await {
            Ok(rows) => rows,
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
        tracing::debug!(queue, asked = held.len(), got = rows.len(), elapsed = ?started.elapsed(), "claimed");
        if !rows.is_empty() {
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
        // Nothing due. Park (so that enqueuers NOTIFY us) and look once more before
        // waiting: an enqueue that skipped its NOTIFY has committed by now.
        let wait = if idle.is_parked() {
            config.poll_interval
        } else {
            match idle.park().await {
                Park::Parked => continue,
                Park::Busy => Duration::from_millis(20),
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
