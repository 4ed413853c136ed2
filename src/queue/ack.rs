//! Settling attempts. [`AckLayer`] is the backend's apalis middleware: it sees each
//! attempt's result, classifies it (completed, retry with backoff, snooze, dead) and
//! queues an [`Ack`]. The [`Acker`] writes queued acks in batches, one statement per
//! batch, each fenced by the lease token it was claimed with.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::{error::BoxDynError, task::Task};
use chrono::{DateTime, Utc};
use jobs::{Backoff, JobError};
use rand::Rng;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tower_layer::Layer;
use tower_service::Service;

use super::ClaimedJob;
use crate::stats::Recorder;

const ACK_SQL: &str = include_str!("sql/ack.sql");
/// Rows per ack statement; larger batches are split.
const MAX_ACK_BATCH: usize = 5000;

/// Why an attempt failed, as the runtime sees it.
#[derive(Debug, thiserror::Error)]
pub enum AttemptFailure {
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("panicked: {0}")]
    Panic(String),
}

impl AttemptFailure {
    fn kind(&self) -> &'static str {
        match self {
            Self::Job(e) => e.kind(),
            Self::Timeout(_) => "timeout",
            Self::Panic(_) => "panic",
        }
    }
}

/// The state an attempt leaves its job in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    Completed,
    /// Back to `available` (a retry, a snooze or a hand-back).
    Available,
    Dead,
}

impl Settle {
    fn as_str(self) -> &'static str {
        match self {
            Settle::Completed => "completed",
            Settle::Available => "available",
            Settle::Dead => "dead",
        }
    }
}

/// One settled attempt, waiting to be written.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: i64,
    pub lease_token: i32,
    pub job_name: &'static str,
    pub settle: Settle,
    pub run_at: Option<DateTime<Utc>>,
    /// 1 when the attempt must not count (snooze, hand-back).
    pub refund: i32,
    pub error: Option<serde_json::Value>,
    /// What the metrics call this outcome: completed, retried, snoozed, dead, handed_back.
    pub outcome: &'static str,
    pub wait_secs: Option<f64>,
    pub run_secs: Option<f64>,
}

impl Ack {
    /// A claimed job given back unstarted (shutdown): no attempt used.
    pub fn hand_back(job: &ClaimedJob) -> Self {
        Self {
            id: job.id,
            lease_token: job.lease_token,
            job_name: job.job_name,
            settle: Settle::Available,
            run_at: Some(Utc::now()),
            refund: 1,
            error: None,
            outcome: "handed_back",
            wait_secs: None,
            run_secs: None,
        }
    }
}

/// The retry policy of one queue, as configured.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub backoff: Backoff,
}

/// What an attempt's result means for its job.
pub fn classify(
    lease: &LeaseInfo,
    result: &Result<(), &BoxDynError>,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    unit: f64,
) -> (
    Settle,
    Option<DateTime<Utc>>,
    i32,
    Option<serde_json::Value>,
    &'static str,
) {
    let error = match result {
        Ok(()) => return (Settle::Completed, None, 0, None, "completed"),
        Err(error) => error,
    };
    let (kind, message, failure) = match error.downcast_ref::<AttemptFailure>() {
        Some(failure) => (failure.kind(), failure.to_string(), Some(failure)),
        None => ("retryable", error.to_string(), None),
    };
    if let Some(AttemptFailure::Job(JobError::Snooze(wait))) = failure {
        let until = now + chrono::Duration::from_std(*wait).unwrap_or_default();
        return (Settle::Available, Some(until), 1, None, "snoozed");
    }
    let record = json!({
        "attempt": lease.attempt,
        "at": now,
        "kind": kind,
        "error": message,
    });
    let permanent = matches!(failure, Some(AttemptFailure::Job(JobError::Permanent(_))));
    if permanent || lease.attempt >= lease.max_attempts {
        return (Settle::Dead, None, 0, Some(record), "dead");
    }
    let delay = policy.backoff.delay(lease.attempt, unit);
    let run_at = now + chrono::Duration::from_std(delay).unwrap_or_default();
    (Settle::Available, Some(run_at), 0, Some(record), "retried")
}

/// The fields of a claimed job the ack needs once the handler has its payload.
#[derive(Debug, Clone, Copy)]
pub struct LeaseInfo {
    pub id: i64,
    pub lease_token: i32,
    pub job_name: &'static str,
    pub attempt: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub claimed_at: DateTime<Utc>,
}

enum AckMessage {
    Ack(Ack),
    Flush(oneshot::Sender<()>),
}

/// Cheap handle to queue acks to the process's [`Acker`].
#[derive(Clone)]
pub struct AckSender(mpsc::UnboundedSender<AckMessage>);

impl AckSender {
    pub fn send(&self, ack: Ack) {
        if self.0.send(AckMessage::Ack(ack)).is_err() {
            // Only after the acker stopped (process exit): the lease lapses and the
            // job is rescued, so nothing is lost.
            tracing::warn!("ack dropped after the acker stopped");
        }
    }

    /// Waits until everything queued before this call is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.0.send(AckMessage::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Writes acks in batches. One per process, shared by every queue.
pub struct Acker;

impl Acker {
    pub fn spawn(pool: PgPool, recorder: Recorder) -> (AckSender, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(Self::run(pool, recorder, rx));
        (AckSender(tx), handle)
    }

    async fn run(pool: PgPool, recorder: Recorder, mut rx: mpsc::UnboundedReceiver<AckMessage>) {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    AckMessage::Ack(ack) => batch.push(ack),
                    AckMessage::Flush(done) => flushes.push(done),
                }
                if batch.len() < MAX_ACK_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                write_until_done(&pool, &recorder, &batch).await;
                batch.clear();
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

/// Writes one batch, retrying while the database is unreachable: an ack is never
/// dropped while the process lives.
async fn write_until_done(pool: &PgPool, recorder: &Recorder, batch: &[Ack]) {
    let mut delay = Duration::from_millis(50);
    loop {
        let started = std::time::Instant::now();
        match write(pool, batch).await {
            Ok(accepted) => {
                tracing::debug!(acks = batch.len(), elapsed = ?started.elapsed(), "acks written");
                record(recorder, batch, &accepted);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, acks = batch.len(), "ack write failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

pub async fn write(pool: &PgPool, batch: &[Ack]) -> sqlx::Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(batch.len());
    let mut tokens = Vec::with_capacity(batch.len());
    let mut states = Vec::with_capacity(batch.len());
    let mut run_ats = Vec::with_capacity(batch.len());
    let mut refunds = Vec::with_capacity(batch.len());
    let mut errors = Vec::with_capacity(batch.len());
    for ack in batch {
        ids.push(ack.id);
        tokens.push(ack.lease_token);
        states.push(ack.settle.as_str());
        run_ats.push(ack.run_at);
        refunds.push(ack.refund);
        errors.push(ack.error.clone());
    }
    sqlx::query_scalar(ACK_SQL)
        .bind(ids)
        .bind(tokens)
        .bind(states)
        .bind(run_ats)
        .bind(refunds)
        .bind(errors)
        .fetch_all(pool)
        .await
}

fn record(recorder: &Recorder, batch: &[Ack], accepted: &[i64]) {
    let accepted: std::collections::HashSet<i64> = accepted.iter().copied().collect();
    let mut counts: HashMap<(&'static str, &'static str), f64> = HashMap::new();
    for ack in batch {
        if !accepted.contains(&ack.id) {
            tracing::warn!(
                job.id = ack.id,
                job.name = ack.job_name,
                lease_token = ack.lease_token,
                "late ack of job {} refused: its lease was rescued or re-claimed",
                ack.id
            );
            *counts.entry((ack.job_name, "refused")).or_default() += 1.0;
            continue;
        }
        *counts.entry((ack.job_name, ack.outcome)).or_default() += 1.0;
        if let Some(wait) = ack.wait_secs {
            recorder.observe("wait_seconds", ack.job_name, wait);
        }
        if let Some(run) = ack.run_secs {
            recorder.observe("run_seconds", ack.job_name, run);
        }
    }
    for ((job, outcome), n) in counts {
        recorder.add("attempts", job, outcome, n);
    }
}

/// The apalis middleware of a [`FleetBackend`](super::backend::FleetBackend).
#[derive(Clone)]
pub struct AckLayer {
    acks: AckSender,
    policy: RetryPolicy,
}

impl AckLayer {
    pub fn new(acks: AckSender, policy: RetryPolicy) -> Self {
        Self { acks, policy }
    }

    pub fn sender(&self) -> AckSender {
        self.acks.clone()
    }
}

impl<S> Layer<S> for AckLayer {
    type Service = AckService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AckService {
            inner,
            acks: self.acks.clone(),
            policy: self.policy,
        }
    }
}

#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    acks: AckSender,
    policy: RetryPolicy,
}

impl<S, R> Service<Task<ClaimedJob>> for AckService<S>
where
    S: Service<Task<ClaimedJob>, Response = R>,
    S::Error: Into<BoxDynError>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = R;
    type Error = BoxDynError;
    type Future = Pin<Box<dyn Future<Output = Result<R, BoxDynError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut task: Task<ClaimedJob>) -> Self::Future {
        let job = &mut task.args;
        let permit = job.permit.take();
        let lease = LeaseInfo {
            id: job.id,
            lease_token: job.lease_token,
            job_name: job.job_name,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            run_at: job.run_at,
            claimed_at: job.claimed_at,
        };
        let started = std::time::Instant::now();
        let future = self.inner.call(task);
        let acks = self.acks.clone();
        let policy = self.policy;
        Box::pin(async move {
            let result = future.await.map_err(Into::into);
            let run_secs = started.elapsed().as_secs_f64();
            let now = Utc::now();
            let unit: f64 = rand::rng().random();
            let (settle, run_at, refund, error, outcome) =
                classify(&lease, &result.as_ref().map(|_| ()), &policy, now, unit);
            if let Err(e) = &result {
                tracing::warn!(
                    job.id = lease.id,
                    job.name = lease.job_name,
                    job.attempt = lease.attempt,
                    outcome,
                    "job {} attempt {} failed: {e}",
                    lease.id,
                    lease.attempt
                );
            }
            let wait = (lease.claimed_at - lease.run_at)
                .to_std()
                .unwrap_or_default();
            acks.send(Ack {
                id: lease.id,
                lease_token: lease.lease_token,
                job_name: lease.job_name,
                settle,
                run_at,
                refund,
                error,
                outcome,
                wait_secs: Some(wait.as_secs_f64()),
                run_secs: Some(run_secs),
            });
            drop(permit);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(attempt: i32, max_attempts: i32) -> LeaseInfo {
        let now = Utc::now();
        LeaseInfo {
            id: 1,
            lease_token: 1,
            job_name: "canary",
            attempt,
            max_attempts,
            run_at: now,
            claimed_at: now,
        }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff {
                base: Duration::from_secs(2),
                max: Duration::from_secs(60),
                jitter: 0.0,
            },
        }
    }

    fn err(e: AttemptFailure) -> BoxDynError {
        Box::new(e)
    }

    #[test]
    fn a_retryable_failure_backs_off_exponentially_until_attempts_run_out() {
        let now = Utc::now();
        let e = err(AttemptFailure::Job(JobError::Retryable("boom".into())));
        for (attempt, secs) in [(1, 2), (2, 4), (3, 8)] {
            let (settle, run_at, refund, error, outcome) =
                classify(&lease(attempt, 5), &Err(&e), &policy(), now, 0.5);
            assert_eq!(settle, Settle::Available);
            assert_eq!(run_at, Some(now + chrono::Duration::seconds(secs)));
            assert_eq!(refund, 0);
            assert_eq!(outcome, "retried");
            assert_eq!(error.unwrap()["kind"], "retryable");
        }
        let (settle, ..) = classify(&lease(5, 5), &Err(&e), &policy(), now, 0.5);
        assert_eq!(settle, Settle::Dead);
    }

    #[test]
    fn a_snooze_refunds_its_attempt_and_records_no_error() {
        let now = Utc::now();
        let e = err(AttemptFailure::Job(JobError::Snooze(Duration::from_secs(
            30,
        ))));
        let (settle, run_at, refund, error, _) =
            classify(&lease(5, 5), &Err(&e), &policy(), now, 0.5);
        assert_eq!(settle, Settle::Available);
        assert_eq!(run_at, Some(now + chrono::Duration::seconds(30)));
        assert_eq!(refund, 1);
        assert!(error.is_none());
    }

    #[test]
    fn a_permanent_failure_is_dead_at_once() {
        let e = err(AttemptFailure::Job(JobError::Permanent("bad".into())));
        let (settle, _, _, error, _) =
            classify(&lease(1, 25), &Err(&e), &policy(), Utc::now(), 0.5);
        assert_eq!(settle, Settle::Dead);
        assert_eq!(error.unwrap()["error"], "bad");
    }

    #[test]
    fn panics_and_timeouts_are_retried() {
        for failure in [
            AttemptFailure::Panic("oops".into()),
            AttemptFailure::Timeout(Duration::from_secs(1)),
        ] {
            let e = err(failure);
            let (settle, _, _, error, _) =
                classify(&lease(1, 3), &Err(&e), &policy(), Utc::now(), 0.5);
            assert_eq!(settle, Settle::Available);
            assert!(["panic", "timeout"].contains(&error.unwrap()["kind"].as_str().unwrap()));
        }
    }
}
