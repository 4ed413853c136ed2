//! What the OMS's requests cost the per-account venue budget (`crate::venue_budget`).

use super::*;
pub(super) use crate::venue_budget::{Taken, over_budget, take_budgets};

/// Takes one request from the account's budget, or says how long to wait.
pub(super) async fn take_budget(
    ctx: &JobContext,
    tenant: Uuid,
    account: Uuid,
) -> Result<Option<Duration>, JobError> {
    crate::venue_budget::take_budget(ctx, tenant, account, 1).await
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
