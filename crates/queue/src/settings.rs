//! The runtime's settings, as `config/` spells them (`[worker]`, `[retention]`,
//! `[schedules.<name>]`). The binary reads the files and hands these over.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub batch_size: usize,
    pub poll_interval_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub lease_timeout_ms: u64,
    pub shutdown_grace_ms: u64,
    pub stats_flush_ms: u64,
    /// The longest a job may snooze (a vendor's `retry_after` passes through here);
    /// also the longest wait any answer from outside may impose on a job.
    #[serde(default = "default_max_snooze")]
    pub max_snooze_ms: u64,
    /// An attempt that runs longer logs one warning with its timing.
    #[serde(default = "default_slow_attempt")]
    pub slow_attempt_ms: u64,
}

fn default_max_snooze() -> u64 {
    3_600_000
}

fn default_slow_attempt() -> u64 {
    10_000
}

impl WorkerSettings {
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
    pub fn lease_timeout(&self) -> Duration {
        Duration::from_millis(self.lease_timeout_ms)
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    pub fn stats_flush(&self) -> Duration {
        Duration::from_millis(self.stats_flush_ms)
    }
    pub fn max_snooze(&self) -> Duration {
        Duration::from_millis(self.max_snooze_ms)
    }
    pub fn slow_attempt(&self) -> Duration {
        Duration::from_millis(self.slow_attempt_ms)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    pub completed_hours: u64,
    pub dead_hours: u64,
    pub workers_hours: u64,
    /// Processed webhook inbox rows (Stripe retries for 3 days; duplicates older than
    /// this would be processed again).
    #[serde(default = "default_inbox_days")]
    pub inbox_days: u64,
}

fn default_inbox_days() -> u64 {
    30
}

#[derive(Debug, Clone, Deserialize)]
pub struct ScheduleSettings {
    /// Six fields, seconds first, in `timezone`: `0 */5 * * * *`.
    pub cron: String,
    /// The IANA time zone the cron reads in (`America/New_York`: 09:30 stays 09:30
    /// across daylight saving); UTC when absent.
    #[serde(default)]
    pub timezone: Option<String>,
    pub job: String,
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
    /// Ticks missed while no scheduler ran (since the schedule's last tick), when a
    /// scheduler starts: `none` (default), `last` (the most recent one only), or `all`
    /// (the most recent `catch_up_limit` of them).
    #[serde(default)]
    pub catch_up: CatchUp,
    #[serde(default = "default_catch_up_limit")]
    pub catch_up_limit: usize,
}

impl ScheduleSettings {
    /// A schedule with what configuration leaves out taken as its defaults (UTC, no
    /// catch-up).
    pub fn new(cron: &str, job: &str, payload: serde_json::Value) -> Self {
        Self {
            cron: cron.into(),
            timezone: None,
            job: job.into(),
            payload,
            catch_up: CatchUp::default(),
            catch_up_limit: default_catch_up_limit(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    #[default]
    None,
    Last,
    All,
}

fn default_catch_up_limit() -> usize {
    10
}

fn empty_object() -> serde_json::Value {
    serde_json::json!({})
}
