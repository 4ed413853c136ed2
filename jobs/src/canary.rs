//! `canary`: a probe of the whole path (enqueue, NOTIFY, claim, handler, ack).
//!
//! Enqueued by operators (`pulse-fleet enqueue canary '{}'`), by tests, by the
//! benchmark, and periodically by the scheduler (config `schedules.canary`). It sleeps
//! `sleep_ms`, fails its first `fail_first_attempts` attempts (retryable), and
//! records its end-to-end latency for `/metrics`. Idempotent: it changes nothing but
//! that gauge.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Backoff, Job, JobContext, JobError};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Canary {
    #[serde(default)]
    pub sleep_ms: u64,
    #[serde(default)]
    pub fail_first_attempts: i32,
    /// Panic instead of returning an error on the failing attempts (tests the
    /// runtime's panic isolation).
    #[serde(default)]
    pub panic: bool,
    /// Skip the latency gauge write (the queue benchmark wants a no-op handler).
    #[serde(default)]
    pub quiet: bool,
}

impl Job for Canary {
    const NAME: &'static str = "canary";
    const MAX_ATTEMPTS: i32 = 5;
    const TIMEOUT: Duration = Duration::from_secs(60);
    const BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(30),
        jitter: 0.25,
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        if self.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
        }
        if ctx.attempt <= self.fail_first_attempts {
            let message = format!(
                "canary fails attempt {} of its first {}",
                ctx.attempt, self.fail_first_attempts
            );
            if self.panic {
                panic!("{message}");
            }
            return Err(JobError::Retryable(message));
        }
        if !self.quiet {
            let latency = (chrono::Utc::now() - ctx.enqueued_at)
                .to_std()
                .unwrap_or_default();
            sqlx::query(
                "INSERT INTO fleet.stats (metric, job_name, label, value)
                 VALUES ('canary_latency_seconds', 'canary', '', $1)
                 ON CONFLICT (metric, job_name, label) DO UPDATE SET value = excluded.value",
            )
            .bind(latency.as_secs_f64())
            .execute(&ctx.pool)
            .await?;
        }
        Ok(())
    }
}
