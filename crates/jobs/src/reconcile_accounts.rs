//! `reconcile_accounts`: the scheduled fan-out of reconciliation. One
//! `reconcile_account` per active account with venue credentials, keyed by account
//! and tick bucket so that overlapping ticks and several schedulers ask once, and run
//! one at a time per account (the concurrency key `reconcile:<account>`). The
//! enqueueing is SQL's (`request_reconciliations`, a definer function that sees across
//! tenants only which accounts trade).

use serde::{Deserialize, Serialize};

use crate::{Job, JobContext, JobError};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileAccounts {
    /// One reconciliation per account per this many seconds at most (default 60).
    #[serde(default)]
    pub bucket_secs: Option<i32>,
}

impl Job for ReconcileAccounts {
    const NAME: &'static str = "reconcile_accounts";
    const MAX_ATTEMPTS: i32 = 3;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let bucket = self.bucket_secs.unwrap_or(60).clamp(1, 86_400);
        let asked = sqlx::query_scalar!(
            r#"SELECT request_reconciliations('schedule', $1) AS "asked!""#,
            bucket
        )
        .fetch_one(&ctx.pool)
        .await?;
        tracing::debug!("reconciliation asked for {asked} accounts");
        Ok(())
    }
}
