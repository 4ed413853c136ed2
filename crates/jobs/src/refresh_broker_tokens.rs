//! `refresh_broker_tokens`: the scheduled fan-out of token refreshes. One
//! `refresh_broker_token` per active broker connection whose access token expires
//! within the margin, keyed by connection and token generation (several schedulers and
//! overlapping ticks ask once per token) and run one at a time per connection (the
//! concurrency key `broker:<connection>`). The enqueueing is SQL's
//! (`request_token_refreshes`, a definer function that sees across tenants only which
//! connections are due).

use serde::{Deserialize, Serialize};

use crate::{Job, JobContext, JobError};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RefreshBrokerTokens {}

impl Job for RefreshBrokerTokens {
    const NAME: &'static str = "refresh_broker_tokens";
    const MAX_ATTEMPTS: i32 = 3;

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let margin = ctx.services.broker_refresh_margin.as_secs().min(86_400) as i32;
        let asked =
            sqlx::query_scalar!(r#"SELECT request_token_refreshes($1) AS "asked!""#, margin)
                .fetch_one(&ctx.pool)
                .await?;
        tracing::debug!("token refresh asked for {asked} broker connections");
        Ok(())
    }
}
