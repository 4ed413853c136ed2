//! `canary`: a probe of the whole path (enqueue, NOTIFY, claim, handler, ack).
//!
//! Enqueued by operators (`pulse-fleet enqueue canary '{}'`), by tests, by the
//! benchmark, and periodically by the scheduler (config `schedules.canary`). It sleeps
//! `sleep_ms`, fails its first `fail_first_attempts` attempts (retryable), and
//! changes nothing: its wait and run times are the runtime's own metrics
//! (`fleet_job_wait_seconds{job="canary"}`, `fleet_job_run_seconds{job="canary"}`).

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
    /// Accepted for old payloads; the canary writes nothing any more.
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
            return Err(JobError::retryable(message));
        }
        Ok(())
    }
}
