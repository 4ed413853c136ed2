//! The innermost apalis service: runs one attempt of a job. The handler runs in its
//! own tokio task, so a panic is caught as that task's error and the worker goes on;
//! a timeout aborts the task, and so do shutdown and a lost lease (through
//! [`Holdings`]).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use apalis_core::task::Task;
use pulse_contract::{Attempt, JobSpec};
use sqlx::PgPool;
use tower_service::Service;

use crate::{
    ClaimedJob,
    ack::AttemptFailure,
    holdings::{AbortReason, Holdings},
};

#[derive(Clone)]
pub struct JobService {
    spec: JobSpec,
    pool: PgPool,
    holdings: Arc<Holdings>,
}

impl JobService {
    pub fn new(spec: JobSpec, pool: PgPool, holdings: Arc<Holdings>) -> Self {
        Self {
            spec,
            pool,
            holdings,
        }
    }
}

/// Aborts the handler task if the attempt's future is dropped (its apalis worker was
/// aborted): no handler runs on, detached, after the worker let go of it.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Service<Task<ClaimedJob>> for JobService {
    type Response = ();
    type Error = AttemptFailure;
    type Future = Pin<Box<dyn Future<Output = Result<(), AttemptFailure>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, task: Task<ClaimedJob>) -> Self::Future {
        let (job, _) = task.take();
        if job.epoch != self.holdings.epoch() {
            // Claimed under a lease since lost: others may be running it already.
            return Box::pin(std::future::ready(Err(AttemptFailure::LeaseLost)));
        }
        let attempt = Attempt {
            pool: self.pool.clone(),
            job_id: job.id,
            job_name: job.job_name,
            attempt: job.attempt,
            attempt_id: job.lease_token,
            max_attempts: job.max_attempts,
            enqueued_at: job.created_at,
        };
        let timeout = self.spec.timeout;
        let id = job.id;
        // The handler's own lines carry the attempt's span (see `AckService`), when
        // its level is logged at all.
        let run = (self.spec.handler)(job.payload, attempt);
        let span = tracing::Span::current();
        let mut handle = if span.is_disabled() {
            tokio::spawn(run)
        } else {
            tokio::spawn(tracing::Instrument::instrument(run, span))
        };
        let guard = AbortOnDrop(handle.abort_handle());
        let aborted = self.holdings.started(id, handle.abort_handle());
        let holdings = self.holdings.clone();
        Box::pin(async move {
            let outcome = tokio::time::timeout(timeout, &mut handle).await;
            holdings.finished(id);
            drop(guard);
            match outcome {
                Err(_) => Err(AttemptFailure::Timeout(timeout)),
                Ok(Err(join_error)) if join_error.is_cancelled() => Err(match aborted.get() {
                    Some(AbortReason::Shutdown) => {
                        AttemptFailure::Aborted("the shutdown grace period ran out")
                    }
                    Some(AbortReason::LeaseLost) => AttemptFailure::LeaseLost,
                    None => AttemptFailure::Aborted("the attempt was cancelled"),
                }),
                Ok(Err(join_error)) => Err(AttemptFailure::Panic(panic_message(join_error))),
                Ok(Ok(result)) => result.map_err(AttemptFailure::Job),
            }
        })
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    if !error.is_panic() {
        return "the attempt was cancelled".into();
    }
    crate::ack::panic_text(&*error.into_panic())
}
