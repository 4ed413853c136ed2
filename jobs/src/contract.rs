//! The Job contract: what a job type declares (name, payload, retry policy) and the
//! three ways a handler can fail.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use serde::{Serialize, de::DeserializeOwned};
use sqlx::PgPool;

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
}

/// How a handler failed. The runtime retries; handlers never loop or sleep.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Transient: retry with backoff, consuming an attempt.
    #[error("{0}")]
    Retryable(String),
    /// Not now (a rate limit, a lock held elsewhere): run again after the duration.
    /// No attempt is consumed.
    #[error("snoozed for {0:?}")]
    Snooze(Duration),
    /// Will never succeed (bad input, a 4xx that no retry fixes): dead at once.
    #[error("{0}")]
    Permanent(String),
}

impl JobError {
    pub fn retryable(error: impl std::fmt::Display) -> Self {
        Self::Retryable(error.to_string())
    }

    pub fn permanent(error: impl std::fmt::Display) -> Self {
        Self::Permanent(error.to_string())
    }

    /// The kind recorded with the attempt's error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Retryable(_) => "retryable",
            Self::Snooze(_) => "snooze",
            Self::Permanent(_) => "permanent",
        }
    }
}

/// Database errors are transient unless proven otherwise: a retry after a failover or
/// a serialisation conflict succeeds.
impl From<sqlx::Error> for JobError {
    fn from(error: sqlx::Error) -> Self {
        Self::Retryable(format!("database: {error}"))
    }
}

/// Exponential backoff with jitter: `base * 2^(attempt-1)`, capped at `max`, then
/// scaled by a random factor in `[1 - jitter, 1 + jitter]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub jitter: f64,
}

impl Backoff {
    pub const DEFAULT: Backoff = Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(3600),
        jitter: 0.25,
    };

    /// The delay after failed attempt `attempt` (1-based), given a uniform sample
    /// `unit` in `[0, 1)` for the jitter.
    pub fn delay(&self, attempt: i32, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 62) as u32;
        let raw = self.base.as_secs_f64() * 2f64.powi(exponent as i32);
        let capped = raw.min(self.max.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        // Never a panic, whatever the configuration says (NaN, negative, huge).
        Duration::try_from_secs_f64((capped * factor).max(0.0)).unwrap_or(self.max)
    }
}

/// What a handler gets besides its payload.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The application's pool (not the queue's own connections).
    pub pool: PgPool,
    pub job_id: i64,
    pub job_name: &'static str,
    /// This attempt, 1-based.
    pub attempt: i32,
    /// This attempt's identity, unique among all attempts of all jobs (the claim's
    /// fencing token): what an effect can carry to be told apart from another
    /// attempt's, even when a database crash lost the claim that started it.
    pub attempt_id: uuid::Uuid,
    pub max_attempts: i32,
    /// When the job was enqueued (for end-to-end latency).
    pub enqueued_at: chrono::DateTime<chrono::Utc>,
    /// External clients (HTTP, vendor settings), shared by every attempt.
    pub services: Arc<crate::Services>,
}

pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;
pub type JobHandler = Arc<dyn Fn(serde_json::Value, JobContext) -> JobFuture + Send + Sync>;

/// A job type with its payload erased, as the runtime registers it.
#[derive(Clone)]
pub struct JobSpec {
    pub name: &'static str,
    pub max_attempts: i32,
    pub timeout: Duration,
    pub backoff: Backoff,
    pub handler: JobHandler,
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl JobSpec {
    /// The spec of a typed job. A payload that does not deserialize into `J` fails
    /// permanently with the serde error: retrying cannot fix it.
    pub fn of<J: Job>() -> Self {
        Self {
            name: J::NAME,
            max_attempts: J::MAX_ATTEMPTS,
            timeout: J::TIMEOUT,
            backoff: J::BACKOFF,
            handler: Arc::new(|payload, ctx| {
                Box::pin(async move {
                    let job: J = serde_json::from_value(payload).map_err(|e| {
                        JobError::Permanent(format!(
                            "payload does not match job `{}`: {e}",
                            J::NAME
                        ))
                    })?;
                    job.run(ctx).await
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_and_is_capped() {
        let b = Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(60),
            jitter: 0.0,
        };
        let secs: Vec<u64> = (1..=7).map(|a| b.delay(a, 0.5).as_secs()).collect();
        assert_eq!(secs, vec![2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn jitter_stays_within_its_band() {
        let b = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(3600),
            jitter: 0.25,
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_secs_f64(7.5));
        assert_eq!(b.delay(1, 1.0), Duration::from_secs_f64(12.5));
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(10));
    }
}
