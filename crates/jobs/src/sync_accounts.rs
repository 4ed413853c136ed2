//! `sync_accounts`: the scheduled fan-out of the order sync. One `sync_account` per
//! account that has orders to follow (working at the venue, or ended with fills still
//! to learn), keyed by account and tick bucket so that overlapping ticks and processes
//! ask once. The enqueueing is SQL's (`request_order_syncs`, a definer function that
//! sees across tenants only which accounts have such orders).

use serde::{Deserialize, Serialize};

use crate::{Job, JobContext, JobError};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncAccounts {
    /// One sync per account per this many seconds at most (default 10).
    #[serde(default)]
    pub bucket_secs: Option<i32>,
}

impl Job for SyncAccounts {
    const NAME: &'static str = "sync_accounts";
    const MAX_ATTEMPTS: i32 = 3;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let bucket = self.bucket_secs.unwrap_or(10).clamp(1, 3600);
        let asked = sqlx::query_scalar!(r#"SELECT request_order_syncs($1) AS "asked!""#, bucket)
            .fetch_one(&ctx.pool)
            .await?;
        tracing::debug!("order sync asked for {asked} accounts");
        Ok(())
    }
}
