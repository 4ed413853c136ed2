//! The contract between the queue runtime and the jobs: what the runtime knows of a
//! job type ([`JobSpec`]: a name, a retry policy, an erased handler, an optional
//! retention hook), what it tells an attempt ([`Attempt`]) and the three ways an
//! attempt can fail ([`JobError`]). It knows no job type, no table and no vendor: the
//! queue crate and the jobs crate both depend on it, and not on each other.

pub mod metrics;

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use serde::de::DeserializeOwned;
use sqlx::PgPool;

/// What caused a failure, kept whole (its `source()` chain included).
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// How a handler failed. The runtime retries; handlers never loop or sleep.
#[derive(Debug)]
pub enum JobError {
    /// Transient: retry with backoff, consuming an attempt.
    Retryable(Cause),
    /// Not now (a rate limit, a lock held elsewhere): run again after the duration.
    /// No attempt is consumed.
    Snooze(Duration),
    /// Will never succeed (bad input, a 4xx that no retry fixes): dead at once.
    Permanent(Cause),
}

impl JobError {
    /// A failure a later attempt may not meet: a message, or an error kept as source.
    pub fn retryable(cause: impl Into<Cause>) -> Self {
        Self::Retryable(cause.into())
    }

    /// A failure no retry fixes.
    pub fn permanent(cause: impl Into<Cause>) -> Self {
        Self::Permanent(cause.into())
    }

    /// The kind recorded with the attempt's error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Retryable(_) => "retryable",
            Self::Snooze(_) => "snooze",
            Self::Permanent(_) => "permanent",
        }
    }

    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Permanent(_))
    }
}

/// The error and every source under it, `: `-separated (what an attempt records).
impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cause = match self {
            Self::Snooze(d) => return write!(f, "snoozed for {d:?}"),
            Self::Retryable(c) | Self::Permanent(c) => c,
        };
        write!(f, "{cause}")?;
        let mut source = cause.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Retryable(c) | Self::Permanent(c) => Some(&**c),
            Self::Snooze(_) => None,
        }
    }
}

/// A database error is retried when a later attempt can meet another outcome: the
/// connection, the server or a conflict with another transaction. An integrity or data
/// violation (a unique key taken, a CHECK refused, a bad value) or a row that is not
/// there gives the same answer on every attempt, so it fails the job at once.
impl From<sqlx::Error> for JobError {
    fn from(error: sqlx::Error) -> Self {
        if db_error_is_permanent(&error) {
            Self::Permanent(Box::new(DatabaseError(error)))
        } else {
            Self::Retryable(Box::new(DatabaseError(error)))
        }
    }
}

/// `database: <the sqlx error>`, with the sqlx error as source.
#[derive(Debug, thiserror::Error)]
#[error("database")]
struct DatabaseError(#[source] sqlx::Error);

fn db_error_is_permanent(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::RowNotFound
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::Encode(_)
        | sqlx::Error::TypeNotFound { .. } => true,
        // SQLSTATE class 22 (data exception) and 23 (integrity constraint violation).
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
        _ => false,
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

/// What the runtime tells one attempt of a job.
#[derive(Debug, Clone)]
pub struct Attempt {
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
}

pub type JobFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;
pub type JobHandler = Arc<dyn Fn(serde_json::Value, Attempt) -> JobFuture + Send + Sync>;

/// A job type's retention of its own business rows (an inbox it fills, say): given
/// the application's pool and how long to keep rows, deletes older ones and returns
/// how many. The runtime's `prune` calls every hook; it deletes no business row itself.
pub type RetentionHook = Arc<
    dyn Fn(PgPool, Duration) -> Pin<Box<dyn Future<Output = Result<u64, JobError>> + Send>>
        + Send
        + Sync,
>;

/// Boxes a retention function into a [`RetentionHook`].
pub fn retention_hook<F, Fut>(prune: F) -> RetentionHook
where
    F: Fn(PgPool, Duration) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, JobError>> + Send + 'static,
{
    Arc::new(move |pool, keep| Box::pin(prune(pool, keep)))
}

/// A job type with its payload erased, as the runtime registers it.
#[derive(Clone)]
pub struct JobSpec {
    pub name: &'static str,
    pub max_attempts: i32,
    pub timeout: Duration,
    pub backoff: Backoff,
    pub handler: JobHandler,
    pub retention: Option<RetentionHook>,
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSpec")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .field("retention", &self.retention.is_some())
            .finish_non_exhaustive()
    }
}

impl JobSpec {
    /// A spec whose payload is `P`. A payload that does not deserialize into `P`
    /// fails permanently with the serde error: retrying cannot fix it.
    pub fn typed<P, F, Fut>(name: &'static str, run: F) -> Self
    where
        P: DeserializeOwned + Send + 'static,
        F: Fn(P, Attempt) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let run = Arc::new(run);
        Self {
            name,
            max_attempts: 25,
            timeout: Duration::from_secs(300),
            backoff: Backoff::DEFAULT,
            handler: Arc::new(move |payload, attempt| {
                let run = run.clone();
                Box::pin(async move {
                    let payload: P = serde_json::from_value(payload).map_err(|e| {
                        JobError::permanent(format!("payload does not match job `{name}`: {e}"))
                    })?;
                    run(payload, attempt).await
                })
            }),
            retention: None,
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

#[cfg(test)]
mod error_tests {
    use super::*;

    #[test]
    fn a_missing_row_is_permanent_and_a_lost_connection_is_not() {
        assert!(JobError::from(sqlx::Error::PoolClosed).is_retryable());
        assert!(!JobError::from(sqlx::Error::RowNotFound).is_retryable());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let error = JobError::from(sqlx::Error::Io(io));
        assert!(error.is_retryable());
        assert!(error.to_string().contains("reset by peer"), "{error}");
    }
}
