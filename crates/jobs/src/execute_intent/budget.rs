//! The per-account venue request budget (Alpaca: 200 requests a minute per account,
//! shared by every process).

use super::*;

/// Takes one request from the account's per-minute budget, or says how long to wait.
pub(super) async fn take_budget(
    ctx: &JobContext,
    tenant: Uuid,
    account: Uuid,
) -> Result<Option<Duration>, JobError> {
    take_budgets(ctx, tenant, &[(account, 1)]).await
}

/// How long to wait for the next window when a budget is spent.
pub(super) fn over_budget(per_minute: i32, used: &[i32]) -> Option<Duration> {
    if used.iter().any(|u| *u > per_minute) {
        let secs_left = 60 - (chrono::Utc::now().timestamp() % 60);
        return Some(Duration::from_secs(secs_left as u64));
    }
    None
}

pub(super) async fn take_budgets(
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

/// Requests each account's legs will cost: a leg that may exist at the venue is
/// looked up first (two requests at worst).
pub(super) fn budget_wants(legs: &[&OrderRow]) -> Vec<(Uuid, i32)> {
    let mut wants: HashMap<Uuid, i32> = HashMap::new();
    for leg in legs {
        let calls = if leg.may_exist_at_venue() { 2 } else { 1 };
        *wants.entry(leg.account_id).or_default() += calls;
    }
    wants.into_iter().collect()
}
