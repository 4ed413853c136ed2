//! A worker process: one apalis worker per queue, fed by our fetchers, plus the
//! process-wide acker, listener, heartbeat and stats flusher.
//!
//! Shutdown (SIGTERM): stop claiming; hand back claimed jobs no handler started;
//! let in-flight attempts finish for the grace period; hand back what is still
//! running (no attempt used); write pending acks; mark the worker stopped.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context;
use apalis_core::worker::builder::WorkerBuilder;
use pulse_contract::JobSpec;
use sqlx::PgPool;
use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinSet,
};

use crate::{
    ack::{AckLayer, AckSender, Acker, AttemptLogging, RetryPolicy},
    backend::FleetBackend,
    fetcher::{self, FetcherConfig, FetcherLinks},
    holdings::{AbortReason, Holdings},
    lease::{self, LeaseTiming, WorkerIdentity},
    listener,
    pools::QueuePools,
    service::JobService,
    settings::WorkerSettings,
    stats::Recorder,
};

/// One queue as a worker runs it.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    pub job: JobSpec,
    pub concurrency: usize,
}

/// A running worker; [`WorkerHandle::shutdown`] stops it gracefully.
pub struct WorkerHandle {
    pub identity: WorkerIdentity,
    stop: watch::Sender<bool>,
    workers: JoinSet<()>,
    background: JoinSet<()>,
    acks: AckSender,
    acker: tokio::task::JoinHandle<()>,
    recorder: Recorder,
    queue_pool: PgPool,
    grace: Duration,
    holdings: Arc<Holdings>,
}

/// Starts the worker. Returns once it is registered and listening.
pub async fn start(
    app_pool: PgPool,
    pools: QueuePools,
    queues: Vec<QueueSpec>,
    settings: &WorkerSettings,
) -> anyhow::Result<WorkerHandle> {
    start_with(app_pool, pools, queues, settings, Recorder::default()).await
}

/// [`start`], with the process's metrics `recorder`, which the jobs' own clients add
/// to as well: the worker flushes it with its own counters.
pub async fn start_with(
    app_pool: PgPool,
    pools: QueuePools,
    queues: Vec<QueueSpec>,
    settings: &WorkerSettings,
    recorder: Recorder,
) -> anyhow::Result<WorkerHandle> {
    anyhow::ensure!(!queues.is_empty(), "a worker needs at least one queue");
    let queue_pool = pools.queue;
    let identity = WorkerIdentity::new();
    let names: Vec<&'static str> = queues.iter().map(|q| q.job.name).collect();
    identity
        .register(&queue_pool, &names)
        .await
        .context("Failed to register the worker")?;
    tracing::info!(worker = %identity.name, queues = ?names, "worker starting");

    let holdings = Holdings::new();
    let (acks, acker) = Acker::spawn(pools.ack, recorder.clone(), holdings.clone());
    let (stop, stop_rx) = watch::channel(false);
    let mut workers = JoinSet::new();
    let mut background = JoinSet::new();
    let mut wakes = HashMap::new();

    for queue in queues {
        let name = queue.job.name;
        let permits = Arc::new(Semaphore::new(queue.concurrency));
        let wake = Arc::new(Notify::new());
        wakes.insert(name, wake.clone());
        let (tx, rx) = mpsc::channel(queue.concurrency.max(1));
        background.spawn(fetcher::run(
            queue_pool.clone(),
            FetcherConfig {
                queue: name,
                worker_id: identity.id,
                batch_size: settings.batch_size.clamp(1, queue.concurrency.max(1)),
                poll_interval: settings.poll_interval(),
            },
            FetcherLinks {
                permits,
                wake,
                stop: stop_rx.clone(),
                out: tx,
                holdings: holdings.clone(),
                acks: acks.clone(),
            },
        ));
        let layer = AckLayer::new(
            acks.clone(),
            RetryPolicy {
                backoff: queue.job.backoff,
                max_snooze: settings.max_snooze(),
            },
            holdings.clone(),
            AttemptLogging {
                worker: identity.name.as_str().into(),
                slow_after: settings.slow_attempt(),
            },
        );
        let backend = FleetBackend::new(rx, stop_rx.clone(), layer);
        let worker = WorkerBuilder::new(format!("{name}@{}", identity.name))
            .backend(backend)
            .build(JobService::new(
                queue.job.clone(),
                app_pool.clone(),
                holdings.clone(),
            ));
        workers.spawn(async move {
            if let Err(error) = worker.run().await {
                tracing::error!(queue = name, %error, "apalis worker stopped with an error");
            }
        });
    }

    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    background.spawn(listener::run(
        queue_pool.clone(),
        wakes,
        Some(ready_tx),
        stop_rx.clone(),
    ));
    background.spawn(lease::run_heartbeat(
        queue_pool.clone(),
        identity.clone(),
        names,
        LeaseTiming {
            heartbeat_interval: settings.heartbeat_interval(),
            lease_timeout: settings.lease_timeout(),
        },
        holdings.clone(),
        stop_rx.clone(),
    ));
    background.spawn(crate::maintenance::run(queue_pool.clone(), stop_rx.clone()));
    background.spawn(crate::stats::run_flusher(
        recorder.clone(),
        queue_pool.clone(),
        settings.stats_flush(),
        stop_rx,
    ));
    // Listening before we report ready, so a job enqueued right after is noticed at once.
    let _ = tokio::time::timeout(Duration::from_secs(10), ready_rx).await;

    Ok(WorkerHandle {
        identity,
        stop,
        workers,
        background,
        acks,
        acker,
        recorder,
        queue_pool,
        grace: settings.shutdown_grace(),
        holdings,
    })
}

impl WorkerHandle {
    /// Waits until every ack queued so far is written.
    pub async fn flush_acks(&self) {
        self.acks.flush().await;
    }

    /// Resolves if a queue's apalis worker ends on its own (it should not).
    pub async fn wait_for_failure(&mut self) {
        if self.workers.join_next().await.is_some() {
            tracing::error!("a queue worker ended unexpectedly");
        }
    }

    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        tracing::info!(worker = %self.identity.name, "shutting down: no new claims");
        let _ = self.stop.send(true);
        let finished = tokio::time::timeout(self.grace, async {
            while self.workers.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            // The grace period is over: abort the attempts still running. Each fails
            // (its attempt counts, so a job that always hangs past the grace period
            // ends up dead) and is settled by its apalis worker, which then ends.
            let aborted = self.holdings.abort_running(AbortReason::Shutdown);
            tracing::warn!(
                aborted,
                "grace period of {:?} over: aborted the attempts still running",
                self.grace
            );
            let settled = tokio::time::timeout(Duration::from_secs(5), async {
                while self.workers.join_next().await.is_some() {}
            })
            .await;
            if settled.is_err() {
                self.workers.abort_all();
            }
        }
        self.acks.flush().await;
        // Whatever is still leased to us was claimed and never started (a claim that
        // raced the stop): give it back without using an attempt.
        let handed = lease::hand_back_all(&self.queue_pool, self.identity.id).await?;
        if handed > 0 {
            tracing::info!(handed, "handed back jobs claimed but never started");
        }
        while self.background.join_next().await.is_some() {}
        drop(self.acks);
        let _ = self.acker.await;
        let _ = crate::stats::flush(&self.recorder, &self.queue_pool).await;
        self.identity.mark_stopped(&self.queue_pool).await?;
        tracing::info!(worker = %self.identity.name, "worker stopped");
        Ok(())
    }
}
