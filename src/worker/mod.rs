//! A worker process: one apalis worker per queue, fed by our fetchers, plus the
//! process-wide acker, listener, heartbeat and stats flusher.
//!
//! Shutdown (SIGTERM): stop claiming; hand back claimed jobs no handler started;
//! let in-flight attempts finish for the grace period; hand back what is still
//! running (no attempt used); write pending acks; mark the worker stopped.

mod registry;
mod service;

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context;
use apalis_core::worker::builder::WorkerBuilder;
use jobs::JobSpec;
use sqlx::PgPool;
use tokio::{
    sync::{Notify, Semaphore, mpsc, watch},
    task::JoinSet,
};

pub use registry::{all_specs, effective_spec};
pub use service::JobService;

use crate::{
    config::WorkerSettings,
    db::QueuePools,
    queue::{
        ack::{AckLayer, AckSender, Acker, RetryPolicy},
        backend::FleetBackend,
        fetcher::{self, FetcherConfig},
        lease::{self, WorkerIdentity},
        listener,
    },
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
}

/// Starts the worker. Returns once it is registered and listening.
pub async fn start(
    app_pool: PgPool,
    pools: QueuePools,
    queues: Vec<QueueSpec>,
    settings: &WorkerSettings,
    services: jobs::Services,
) -> anyhow::Result<WorkerHandle> {
    anyhow::ensure!(!queues.is_empty(), "a worker needs at least one queue");
    let services = Arc::new(services);
    let queue_pool = pools.queue;
    let identity = WorkerIdentity::new();
    let names: Vec<&'static str> = queues.iter().map(|q| q.job.name).collect();
    identity
        .register(&queue_pool, &names)
        .await
        .context("Failed to register the worker")?;
    tracing::info!(worker = %identity.name, queues = ?names, "worker starting");

    let recorder = Recorder::default();
    let (acks, acker) = Acker::spawn(pools.ack, recorder.clone());
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
            permits,
            wake,
            stop_rx.clone(),
            tx,
        ));
        let layer = AckLayer::new(
            acks.clone(),
            RetryPolicy {
                backoff: queue.job.backoff,
            },
        );
        let backend = FleetBackend::new(rx, stop_rx.clone(), layer);
        let worker = WorkerBuilder::new(format!("{name}@{}", identity.name))
            .backend(backend)
            .build(JobService::new(
                queue.job.clone(),
                app_pool.clone(),
                services.clone(),
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
        settings.heartbeat_interval(),
        settings.lease_timeout(),
        stop_rx.clone(),
    ));
    background.spawn(recorder.clone().run_flusher(
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
        self.acks.flush().await;
        if finished.is_err() {
            self.workers.abort_all();
            let handed = lease::hand_back_all(&self.queue_pool, self.identity.id).await?;
            tracing::warn!(
                handed,
                "grace period of {:?} over: handed back the jobs still running",
                self.grace
            );
        }
        while self.background.join_next().await.is_some() {}
        drop(self.acks);
        let _ = self.acker.await;
        let _ = self.recorder.flush(&self.queue_pool).await;
        self.identity.mark_stopped(&self.queue_pool).await?;
        tracing::info!(worker = %self.identity.name, "worker stopped");
        Ok(())
    }
}

/// The queues a worker runs: `filter` (job names) or every registered job type.
pub fn select_queues(
    specs: &[JobSpec],
    filter: Option<&[String]>,
    concurrency_override: Option<usize>,
    settings: &crate::config::Settings,
) -> anyhow::Result<Vec<QueueSpec>> {
    if let Some(filter) = filter {
        for name in filter {
            anyhow::ensure!(
                specs.iter().any(|s| s.name == name),
                "unknown queue `{name}`; known: {}",
                specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            );
        }
    }
    Ok(specs
        .iter()
        .filter(|s| filter.is_none_or(|f| f.iter().any(|n| n == s.name)))
        .map(|s| QueueSpec {
            job: s.clone(),
            concurrency: concurrency_override
                .or(settings.job(s.name).concurrency)
                .unwrap_or(settings.worker.concurrency)
                .max(1),
        })
        .collect())
}
