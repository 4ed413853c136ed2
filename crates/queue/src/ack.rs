//! Settling attempts. [`AckLayer`] is the backend's apalis middleware: it sees each
//! attempt's result, classifies it (completed, retry with backoff, snooze, dead) and
//! queues an [`Ack`]. The [`Acker`] writes queued acks in batches, one statement per
//! batch, each fenced by the lease token it was claimed with.

use std::{
    collections::HashMap,
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use apalis_core::{error::BoxDynError, task::Task};
use chrono::{DateTime, Utc};
use pulse_contract::{Backoff, JobError};
use rand::Rng;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tower_layer::Layer;
use tower_service::Service;
use uuid::Uuid;

use super::{ClaimedJob, JobState, holdings::Holdings};
use crate::stats::Recorder;

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
    /// Aborted from outside (the shutdown grace period ran out): the attempt counts.
    #[error("aborted: {0}")]
    Aborted(&'static str),
    /// The worker's lease lapsed: others may be running the job, so this attempt is
    /// not settled at all (the rescue records it).
    #[error("the worker's lease was lost")]
    LeaseLost,
}

impl AttemptFailure {
    fn kind(&self) -> &'static str {
        match self {
            Self::Job(e) => e.kind(),
            Self::Timeout(_) => "timeout",
            Self::Panic(_) => "panic",
            Self::Aborted(_) => "aborted",
            Self::LeaseLost => "lease_lost",
        }
    }
}

/// What became of an attempt: the state it leaves its job in, whether it counts as
/// an attempt, and its label in `fleet_job_attempts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    /// Failed, and runs again after its backoff.
    Retried,
    /// Asked to run again later: the attempt does not count.
    Snoozed,
    /// Failed for good, or out of attempts.
    Dead,
    /// Given back unstarted (shutdown): the attempt does not count.
    HandedBack,
}

impl Outcome {
    pub fn state(self) -> JobState {
        match self {
            Outcome::Completed => JobState::Completed,
            Outcome::Retried | Outcome::Snoozed | Outcome::HandedBack => JobState::Available,
            Outcome::Dead => JobState::Dead,
        }
    }

    /// Attempts given back: the claim counted one that did not happen.
    pub fn refund(self) -> i32 {
        match self {
            Outcome::Snoozed | Outcome::HandedBack => 1,
            Outcome::Completed | Outcome::Retried | Outcome::Dead => 0,
        }
    }

    /// The label of `fleet_job_attempts_total{outcome}`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Retried => "retried",
            Outcome::Snoozed => "snoozed",
            Outcome::Dead => "dead",
            Outcome::HandedBack => "handed_back",
        }
    }
}

/// The label of acks the database refused (a zombie's: its lease was rescued).
const REFUSED: &str = "refused";

/// One settled attempt, waiting to be written.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: i64,
    pub lease_token: Uuid,
    pub job_name: &'static str,
    pub outcome: Outcome,
    pub run_at: Option<DateTime<Utc>>,
    pub error: Option<serde_json::Value>,
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
            outcome: Outcome::HandedBack,
            run_at: Some(Utc::now()),
            error: None,
            wait_secs: None,
            run_secs: None,
        }
    }
}

/// The retry policy of one queue, as configured.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    /// The longest a handler may snooze its job (a vendor's `retry_after` passes
    /// through here): longer requests are cut to this.
    pub max_snooze: Duration,
}

/// Longest text kept of one attempt's error.
const MAX_ERROR_CHARS: usize = 2000;

/// Error text as the job table can store it: jsonb refuses `\u0000`, and one ack it
/// refuses would fail its whole batch, so NULs become U+FFFD; and it is bounded.
pub fn storable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_ERROR_CHARS)
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .collect();
    if text.chars().count() > MAX_ERROR_CHARS {
        out.push('…');
    }
    out
}

/// `now + wait`, without overflow whatever `wait` is (cut to `cap`).
fn later(now: DateTime<Utc>, wait: Duration, cap: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(wait.min(cap))
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(now)
}

/// What an attempt's result means for its job.
pub fn classify(
    lease: &LeaseInfo,
    result: &Result<(), &BoxDynError>,
    policy: &RetryPolicy,
    now: DateTime<Utc>,
    unit: f64,
) -> (Outcome, Option<DateTime<Utc>>, Option<serde_json::Value>) {
    let error = match result {
        Ok(()) => return (Outcome::Completed, None, None),
        Err(error) => error,
    };
    let (kind, message, failure) = match error.downcast_ref::<AttemptFailure>() {
        Some(failure) => (failure.kind(), failure.to_string(), Some(failure)),
        None => ("retryable", error.to_string(), None),
    };
    if let Some(AttemptFailure::Job(JobError::Snooze(wait))) = failure {
        let until = later(now, *wait, policy.max_snooze);
        return (Outcome::Snoozed, Some(until), None);
    }
    let record = json!({
        "attempt": lease.attempt,
        "at": now,
        "kind": kind,
        "error": storable(&message),
    });
    let permanent = matches!(failure, Some(AttemptFailure::Job(JobError::Permanent(_))));
    if permanent || lease.attempt >= lease.max_attempts {
        return (Outcome::Dead, None, Some(record));
    }
    let delay = policy.backoff.delay(lease.attempt, unit);
    let run_at = later(now, delay, Duration::from_secs(366 * 24 * 3600));
    (Outcome::Retried, Some(run_at), Some(record))
}

/// The fields of a claimed job the ack needs once the handler has its payload.
#[derive(Debug, Clone, Copy)]
pub struct LeaseInfo {
    pub id: i64,
    pub lease_token: Uuid,
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
    pub fn spawn(
        pool: PgPool,
        recorder: Recorder,
        holdings: Arc<Holdings>,
    ) -> (AckSender, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(Self::run(pool, recorder, holdings, rx));
        (AckSender(tx), handle)
    }

    async fn run(
        pool: PgPool,
        recorder: Recorder,
        holdings: Arc<Holdings>,
        mut rx: mpsc::UnboundedReceiver<AckMessage>,
    ) {
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
                holdings.released(batch.iter().map(|a| a.id));
                batch.clear();
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

/// Whether a failed write is worth repeating as it is: the connection or the server
/// failed, not the statement. A statement the database refuses (bad data) would fail
/// the same way forever.
fn transient(error: &sqlx::Error) -> bool {
    !matches!(error, sqlx::Error::Database(_))
}

/// Writes one batch, retrying while the database is unreachable: an ack is never
/// dropped while the process lives. A batch the database refuses is split until the
/// refused ack stands alone; that one is written without its error text, and if even
/// that is refused it is dropped with a log line (its lease lapses and the job is
/// rescued). One bad ack never blocks the others.
async fn write_until_done(pool: &PgPool, recorder: &Recorder, batch: &[Ack]) {
    let mut pending: Vec<Vec<Ack>> = vec![batch.to_vec()];
    let mut delay = Duration::from_millis(50);
    while let Some(part) = pending.pop() {
        let started = std::time::Instant::now();
        match write(pool, &part).await {
            Ok(accepted) => {
                tracing::debug!(acks = part.len(), elapsed = ?started.elapsed(), "acks written");
                record(recorder, &part, &accepted);
                delay = Duration::from_millis(50);
            }
            Err(error) if transient(&error) => {
                tracing::warn!(%error, acks = part.len(), "ack write failed; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                pending.push(part);
            }
            Err(error) if part.len() > 1 => {
                tracing::warn!(%error, acks = part.len(), "ack batch refused; splitting it");
                let mut left = part;
                let right = left.split_off(left.len() / 2);
                pending.push(right);
                pending.push(left);
            }
            Err(error) => {
                let ack = &part[0];
                if ack.error.is_some() {
                    tracing::error!(%error, job.id = ack.id, "ack refused; writing it without its error text");
                    let mut bare = ack.clone();
                    bare.error = Some(
                        json!({"kind": "unstorable", "error": "the attempt's error could not be stored"}),
                    );
                    if let Some(e) = &ack.error
                        && e.get("kind") == Some(&json!("unstorable"))
                    {
                        bare.error = None;
                    }
                    pending.push(vec![bare]);
                } else {
                    tracing::error!(%error, job.id = ack.id, "ack refused by the database; dropped (the job will be rescued)");
                }
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
        states.push(ack.outcome.state());
        run_ats.push(ack.run_at);
        refunds.push(ack.outcome.refund());
        errors.push(ack.error.clone());
    }
    // Arrays with NULL elements (no new run_at, no error): checked by the statement's
    // casts rather than the macro, which knows no nullable array elements.
    sqlx::query_file_scalar!(
        "src/sql/ack.sql",
        &ids,
        &tokens,
        &states as &[JobState],
        &run_ats as _,
        &refunds,
        &errors as _
    )
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
                lease_token = %ack.lease_token,
                "late ack of job {} refused: its lease was rescued or re-claimed",
                ack.id
            );
            *counts.entry((ack.job_name, REFUSED)).or_default() += 1.0;
            continue;
        }
        *counts
            .entry((ack.job_name, ack.outcome.label()))
            .or_default() += 1.0;
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
    holdings: Arc<Holdings>,
    logging: AttemptLogging,
}

/// What every log line of an attempt carries besides the job's own fields, and when
/// an attempt is slow enough to say so.
#[derive(Clone, Debug)]
pub struct AttemptLogging {
    /// The worker process's name (host:pid:id).
    pub worker: Arc<str>,
    pub slow_after: Duration,
}

impl AckLayer {
    pub fn new(
        acks: AckSender,
        policy: RetryPolicy,
        holdings: Arc<Holdings>,
        logging: AttemptLogging,
    ) -> Self {
        Self {
            acks,
            policy,
            holdings,
            logging,
        }
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
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AckService<S> {
    inner: S,
    layer: AckLayer,
}

/// The ack of one finished attempt. Total: whatever the result (and whatever a
/// handler asked for), it returns an ack and never panics.
fn settle(
    lease: &LeaseInfo,
    result: &Result<(), &BoxDynError>,
    policy: &RetryPolicy,
    run_secs: f64,
    worker: &str,
) -> Ack {
    let now = Utc::now();
    let unit: f64 = rand::rng().random();
    let (outcome, run_at, mut error) = classify(lease, result, policy, now, unit);
    // A failed attempt's record says where it ran and for how long (the console's
    // attempt timeline).
    if let Some(serde_json::Value::Object(record)) = &mut error {
        record.insert("worker".into(), json!(worker));
        record.insert("run_ms".into(), json!((run_secs * 1000.0).round() as i64));
    }
    let wait = (lease.claimed_at - lease.run_at)
        .to_std()
        .unwrap_or_default();
    Ack {
        id: lease.id,
        lease_token: lease.lease_token,
        job_name: lease.job_name,
        outcome,
        run_at,
        error,
        wait_secs: Some(wait.as_secs_f64()),
        run_secs: Some(run_secs),
    }
}

/// If settling itself panicked (a defect of ours): retry the job in a minute with the
/// reason, rather than let the panic stop the queue's worker.
fn settle_after_panic(lease: &LeaseInfo, panic: &str) -> Ack {
    let now = Utc::now();
    Ack {
        id: lease.id,
        lease_token: lease.lease_token,
        job_name: lease.job_name,
        outcome: Outcome::Retried,
        run_at: Some(later(now, Duration::from_secs(60), Duration::from_secs(60))),
        error: Some(json!({
            "attempt": lease.attempt, "at": now, "kind": "internal",
            "error": storable(&format!("settling the attempt failed: {panic}")),
        })),
        wait_secs: None,
        run_secs: None,
    }
}

/// What a panic said, when it said it as text.
pub(crate) fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-string payload".into())
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
        let layer = self.layer.clone();
        // Every line of the attempt, the handler's included (it runs in this span),
        // carries the job, the attempt, the tenant its payload names, and the worker.
        let span = tracing::info_span!(
            "attempt",
            job.id = lease.id,
            job.name = lease.job_name,
            job.attempt = lease.attempt,
            tenant = tracing::field::Empty,
            worker = %layer.logging.worker,
        );
        if !span.is_disabled()
            && let Some(tenant) = job.payload.get("tenant_id").and_then(|t| t.as_str())
        {
            span.record("tenant", tenant);
        }
        let wait_secs = (lease.claimed_at - lease.run_at).num_milliseconds().max(0) as f64 / 1000.0;
        // Nothing between the claim and the ack may stop the queue's worker: a panic
        // in the inner service or in settling fails this one attempt, with a reason.
        let future = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(task)))
        };
        Box::pin(tracing::Instrument::instrument(
            async move {
                use futures_util::FutureExt;
                let result: Result<R, BoxDynError> = match future {
                    Ok(future) => match AssertUnwindSafe(future).catch_unwind().await {
                        Ok(result) => result.map_err(Into::into),
                        Err(panic) => Err(Box::new(AttemptFailure::Panic(panic_text(&*panic)))),
                    },
                    Err(panic) => Err(Box::new(AttemptFailure::Panic(panic_text(&*panic)))),
                };
                let lease_lost = result
                    .as_ref()
                    .err()
                    .and_then(|e| e.downcast_ref::<AttemptFailure>())
                    .is_some_and(|f| matches!(f, AttemptFailure::LeaseLost));
                if lease_lost {
                    // Not ours to settle any more: the rescue records the attempt.
                    tracing::warn!(
                        job.id = lease.id,
                        job.name = lease.job_name,
                        "attempt abandoned: lease lost"
                    );
                    layer.holdings.released([lease.id]);
                    drop(permit);
                    return result;
                }
                let run_secs = started.elapsed().as_secs_f64();
                if started.elapsed() > layer.logging.slow_after {
                    tracing::warn!(
                        run_secs,
                        wait_secs,
                        "slow attempt: ran {run_secs:.3}s (over {:?}) after waiting {wait_secs:.3}s to be claimed",
                        layer.logging.slow_after
                    );
                }
                let outcome = result.as_ref().map(|_| ());
                let ack = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    settle(
                        &lease,
                        &outcome,
                        &layer.policy,
                        run_secs,
                        &layer.logging.worker,
                    )
                }))
                .unwrap_or_else(|panic| settle_after_panic(&lease, &panic_text(&*panic)));
                if let Err(e) = &result {
                    tracing::warn!(
                        job.id = lease.id,
                        job.name = lease.job_name,
                        job.attempt = lease.attempt,
                        outcome = ack.outcome.label(),
                        "job {} attempt {} failed: {e}",
                        lease.id,
                        lease.attempt
                    );
                }
                layer.acks.send(ack);
                drop(permit);
                result
            },
            span,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(attempt: i32, max_attempts: i32) -> LeaseInfo {
        let now = Utc::now();
        LeaseInfo {
            id: 1,
            lease_token: Uuid::nil(),
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
            max_snooze: Duration::from_secs(3600),
        }
    }

    fn err(e: AttemptFailure) -> BoxDynError {
        Box::new(e)
    }

    #[test]
    fn a_retryable_failure_backs_off_exponentially_until_attempts_run_out() {
        let now = Utc::now();
        let e = err(AttemptFailure::Job(JobError::retryable("boom")));
        for (attempt, secs) in [(1, 2), (2, 4), (3, 8)] {
            let (outcome, run_at, error) =
                classify(&lease(attempt, 5), &Err(&e), &policy(), now, 0.5);
            assert_eq!(outcome, Outcome::Retried);
            assert_eq!(outcome.state(), JobState::Available);
            assert_eq!(run_at, Some(now + chrono::Duration::seconds(secs)));
            assert_eq!(outcome.refund(), 0);
            assert_eq!(error.unwrap()["kind"], "retryable");
        }
        let (outcome, ..) = classify(&lease(5, 5), &Err(&e), &policy(), now, 0.5);
        assert_eq!(outcome, Outcome::Dead);
    }

    #[test]
    fn a_snooze_refunds_its_attempt_and_records_no_error() {
        let now = Utc::now();
        let e = err(AttemptFailure::Job(JobError::Snooze(Duration::from_secs(
            30,
        ))));
        let (outcome, run_at, error) = classify(&lease(5, 5), &Err(&e), &policy(), now, 0.5);
        assert_eq!(outcome, Outcome::Snoozed);
        assert_eq!(outcome.state(), JobState::Available);
        assert_eq!(run_at, Some(now + chrono::Duration::seconds(30)));
        assert_eq!(outcome.refund(), 1);
        assert!(error.is_none());
    }

    #[test]
    fn a_snooze_from_outside_is_bounded_and_never_overflows() {
        // A tenant's endpoint answered 429 with retry_after ~9e12 seconds: the snooze
        // overflowed chrono here and killed the queue worker.
        let now = Utc::now();
        for wait in [Duration::from_secs_f64(9e12), Duration::MAX] {
            let e = err(AttemptFailure::Job(JobError::Snooze(wait)));
            let (outcome, run_at, _) = classify(&lease(1, 5), &Err(&e), &policy(), now, 0.5);
            assert_eq!(outcome, Outcome::Snoozed);
            assert_eq!(run_at, Some(now + chrono::Duration::seconds(3600)));
        }
    }

    #[test]
    fn error_text_is_made_storable() {
        let e = err(AttemptFailure::Job(JobError::retryable("bad\0byte")));
        let (_, _, error) = classify(&lease(1, 5), &Err(&e), &policy(), Utc::now(), 0.5);
        assert_eq!(error.unwrap()["error"], "bad\u{FFFD}byte");
        assert!(storable(&"x".repeat(10_000)).chars().count() <= MAX_ERROR_CHARS + 1);
    }

    #[test]
    fn a_permanent_failure_is_dead_at_once() {
        let e = err(AttemptFailure::Job(JobError::permanent("bad")));
        let (outcome, _, error) = classify(&lease(1, 25), &Err(&e), &policy(), Utc::now(), 0.5);
        assert_eq!(outcome, Outcome::Dead);
        assert_eq!(error.unwrap()["error"], "bad");
    }

    #[test]
    fn panics_and_timeouts_are_retried() {
        for failure in [
            AttemptFailure::Panic("oops".into()),
            AttemptFailure::Timeout(Duration::from_secs(1)),
        ] {
            let e = err(failure);
            let (outcome, _, error) = classify(&lease(1, 3), &Err(&e), &policy(), Utc::now(), 0.5);
            assert_eq!(outcome, Outcome::Retried);
            assert!(["panic", "timeout"].contains(&error.unwrap()["kind"].as_str().unwrap()));
        }
    }
}
