//! The per-account venue request budget (Alpaca: 200 requests a minute per account),
//! shared by every process and every job that speaks to a venue (the OMS, the order
//! sync): `take_venue_budget` counts in the database. And what a failed request
//! means for the job that made it.

use std::time::Duration;

use uuid::Uuid;

use crate::{JobContext, JobError};
use pulse_domain::{tenancy, venue::VenueError};

/// The client of one account at its venue, from the account's row: no `api_key`
/// credential, or a venue no client speaks, fails the job for good.
pub(crate) fn account_venue(
    ctx: &JobContext,
    account: Uuid,
    venue_id: &str,
    key_id: Option<&str>,
    secret_ref: Option<&str>,
) -> Result<std::sync::Arc<dyn pulse_domain::venue::Venue>, JobError> {
    let secret_ref = secret_ref.ok_or_else(|| {
        JobError::permanent(format!("account {account} has no api_key credential"))
    })?;
    ctx.services
        .venue_client(account, venue_id, key_id, secret_ref)
        .map_err(JobError::permanent)
}

/// A venue request that failed, as the job's outcome: the venue's rate limit snoozes
/// until it resets; anything else is retried, `doing` saying what failed.
pub(crate) fn venue_failure(doing: impl std::fmt::Display, e: VenueError) -> JobError {
    match e {
        VenueError::RateLimited { retry_after } => JobError::Snooze(retry_after),
        e => JobError::retryable(format!("{doing}: {e}")),
    }
}

/// Takes `n` requests from the account's per-minute budget, or says how long to wait.
pub(crate) async fn take_budget(
    ctx: &JobContext,
    tenant: Uuid,
    account: Uuid,
    n: i32,
) -> Result<Option<Duration>, JobError> {
    take_budgets(ctx, tenant, &[(account, n)]).await
}

/// One request from the account's budget before it is made (counted in `requests`),
/// or the job snoozes until the next window.
pub(crate) async fn spend(
    ctx: &JobContext,
    tenant: Uuid,
    account: Uuid,
    requests: &mut i32,
) -> Result<(), JobError> {
    if let Some(wait) = take_budget(ctx, tenant, account, 1).await? {
        return Err(JobError::Snooze(wait));
    }
    *requests += 1;
    Ok(())
}

/// How long to wait for the next window when a budget is spent.
pub(crate) fn over_budget(per_minute: i32, used: &[i32]) -> Option<Duration> {
    if used.iter().any(|u| *u > per_minute) {
        let secs_left = 60 - (chrono::Utc::now().timestamp() % 60);
        return Some(Duration::from_secs(secs_left as u64));
    }
    None
}

pub(crate) async fn take_budgets(
    ctx: &JobContext,
    tenant: Uuid,
    wants: &[(Uuid, i32)],
) -> Result<Option<Duration>, JobError> {
    let (accounts, counts): (Vec<Uuid>, Vec<i32>) = wants.iter().copied().unzip();
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let used = sqlx::query_scalar!(
        r#"SELECT used AS "used!" FROM take_venue_budget($1, $2, $3) AS used"#,
        tenant,
        &accounts,
        &counts,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(over_budget(ctx.services.venue_requests_per_minute, &used))
}
