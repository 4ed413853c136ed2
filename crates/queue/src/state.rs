//! A job's state: the `fleet.job_state` enum of the schema, one Rust type for the
//! admin API, the acker, health and metrics.

use std::{fmt, str::FromStr};

use sqlx::postgres::{PgHasArrayType, PgTypeInfo};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type, serde::Serialize,
)]
#[sqlx(type_name = "fleet.job_state", rename_all = "lowercase", no_pg_array)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed (new, retried, snoozed, handed back or rescued).
    Available,
    /// Claimed by a worker under a lease.
    Running,
    Completed,
    /// Out of attempts, or failed permanently.
    Dead,
    /// Cancelled by an operator.
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Available,
        JobState::Running,
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The schema's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }
}

// `sqlx::Type` would name the array type `_fleet.job_state`; PostgreSQL's is this.
impl PgHasArrayType for JobState {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("fleet._job_state")
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| {
                let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown state `{s}`; one of {}", all.join(", "))
            })
    }
}
