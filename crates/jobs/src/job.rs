//! How a job type is written: the typed [`Job`] trait, the [`JobContext`] a handler
//! gets, and [`spec`], which erases a job into the runtime's `JobSpec`.

use std::{future::Future, sync::Arc, time::Duration};

use pulse_contract::{Attempt, Backoff, JobError, JobSpec, RetentionHook};
use pulse_domain::Services;
use serde::{Serialize, de::DeserializeOwned};

use crate::execute_intent::IntentBatches;

/// A job type. The struct is the payload: ids, not snapshots. It is a wire format
/// shared with SQL triggers, so fields are only ever added (as `Option` or
/// `#[serde(default)]`), never renamed.
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The queue name, in snake_case, equal to the file name. SQL uses the same string.
    const NAME: &'static str;
    /// Attempts before the job is dead. Operators can override it in `config/`.
    const MAX_ATTEMPTS: i32 = 25;
    /// One attempt longer than this fails as a timeout (and is retried).
    const TIMEOUT: Duration = Duration::from_secs(300);
    /// Delay before attempt n+1 after a retryable failure of attempt n.
    const BACKOFF: Backoff = Backoff::DEFAULT;

    fn run(self, ctx: JobContext) -> impl Future<Output = Result<(), JobError>> + Send;

    /// The job type's retention of business rows it owns (an inbox, say), which the
    /// runtime's `prune` calls with `retention.inbox_days`. None by default.
    fn retention() -> Option<RetentionHook> {
        None
    }
}

/// What jobs share within one process.
#[derive(Clone, Default)]
pub struct Env {
    /// The domain's clients and settings (HTTP, venues, Discord, secrets).
    pub services: Arc<Services>,
    /// Concurrent intents of a tenant are planned and recorded in batches.
    pub intent_batches: Arc<IntentBatches>,
    /// Reconciliation's thresholds.
    pub reconcile: Arc<crate::reconcile_account::Settings>,
}

impl Env {
    pub fn new(services: Services) -> Self {
        Self {
            services: Arc::new(services),
            intent_batches: Default::default(),
            reconcile: Default::default(),
        }
    }
}

/// What a handler gets besides its payload: the runtime's facts about the attempt
/// (through `Deref`: `ctx.pool`, `ctx.attempt`, `ctx.attempt_id`, ...) and the
/// process's shared clients.
#[derive(Clone)]
pub struct JobContext {
    run: Attempt,
    pub services: Arc<Services>,
    pub intent_batches: Arc<IntentBatches>,
    pub reconcile: Arc<crate::reconcile_account::Settings>,
}

impl JobContext {
    pub fn new(attempt: Attempt, env: &Env) -> Self {
        Self {
            run: attempt,
            services: env.services.clone(),
            intent_batches: env.intent_batches.clone(),
            reconcile: env.reconcile.clone(),
        }
    }
}

impl std::ops::Deref for JobContext {
    type Target = Attempt;

    fn deref(&self) -> &Attempt {
        &self.run
    }
}

/// The runtime's spec of job `J`, its handler bound to `env`.
pub fn spec<J: Job>(env: &Env) -> JobSpec {
    let env = env.clone();
    let mut spec = JobSpec::typed(J::NAME, move |job: J, attempt: Attempt| {
        job.run(JobContext::new(attempt, &env))
    });
    spec.max_attempts = J::MAX_ATTEMPTS;
    spec.timeout = J::TIMEOUT;
    spec.backoff = J::BACKOFF;
    spec.retention = J::retention();
    spec
}
