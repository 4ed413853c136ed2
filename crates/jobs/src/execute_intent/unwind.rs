//! Unwinding a failed intent: legs still open are cancelled, filled ones are closed
//! by an opposite order, and what they reserved is given back (through the order
//! lifecycle, once their fills are recorded).

use super::*;
use crate::venue_budget::venue_failure;

/// The intent fails (a leg was rejected, a kill switch was engaged, its locks were
/// lost): every leg not rejected is first resolved at the venue by client order id
/// (an attempt retries while any outcome is still unknown, so no leg is ever
/// skipped); legs that never reached the venue give their reservation back; open ones
/// are cancelled and the filled part of the others closed with opposite market
/// orders (their own deterministic ids). Then the intent fails with `reason`.
pub(super) async fn unwind(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    event: &str,
    reason: &str,
) -> Result<(), JobError> {
    let legs = orders(ctx, tenant, intent).await?;
    let siblings: Vec<&OrderRow> = legs
        .iter()
        // A leg refused when it was sent never reached the venue; one the venue
        // rejected after accepting it (it has a venue id) may have fills to close.
        .filter(|o| {
            o.leg_index < UNWIND_BASE
                && (o.status != OrderStatus::Rejected || o.venue_order_id.is_some())
        })
        .filter(|o| !(o.status == OrderStatus::Cancelled && o.venue_order_id.is_none()))
        .collect();
    let clients = clients(ctx, tenant, intent, &siblings).await?;
    // 1. What became of every leg whose outcome this database does not know.
    let unresolved: Vec<&OrderRow> = siblings
        .iter()
        .copied()
        .filter(|o| o.venue_order_id.is_none())
        .collect();
    if !unresolved.is_empty() {
        let mut resolved = vec![];
        let mut still_unknown = None;
        for leg in &unresolved {
            if leg.may_exist_at_venue()
                && let Some(wait) = take_budget(ctx, tenant, leg.account_id).await?
            {
                return Err(JobError::Snooze(wait));
            }
            let venue = clients[&leg.account_id]
                .as_ref()
                .map_err(|e| JobError::retryable(e.clone()))?;
            let outcome = resolve(venue, leg).await?;
            if let LegOutcome::Unknown(e) = &outcome {
                still_unknown = Some(format!(
                    "unwinding: leg {} outcome still unknown ({e}); looking it up again",
                    leg.leg_index
                ));
            }
            resolved.push((*leg, outcome));
        }
        let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
        for (leg, outcome) in &resolved {
            record(&mut tx, tenant, intent, leg, outcome).await?;
        }
        tx.commit().await?;
        if let Some(e) = still_unknown {
            return Err(JobError::retryable(e));
        }
        // Start over with what is now known.
        return Box::pin(unwind(ctx, tenant, intent, event, reason)).await;
    }
    // 2. Cancel or close what is at the venue.
    for leg in siblings {
        let venue = clients[&leg.account_id]
            .as_ref()
            .map_err(|e| JobError::retryable(e.clone()))?;
        let Some(venue_id) = &leg.venue_order_id else {
            continue;
        };
        if let Some(wait) = take_budget(ctx, tenant, leg.account_id).await? {
            return Err(JobError::Snooze(wait));
        }
        // A leg that has ended already answers NotCancelable (or NotFound): either way
        // it is looked up next.
        match venue.cancel_order(&leg.symbol, venue_id).await {
            Ok(()) | Err(VenueError::NotCancelable) | Err(VenueError::NotFound) => {}
            Err(e) => {
                return Err(venue_failure(
                    format_args!("cancelling leg {}", leg.leg_index),
                    e,
                ));
            }
        }
        // What the leg came to: applied through the lifecycle like any venue report
        // (its status, the quantity filled in the end; the fills themselves, and the
        // release of the rest of its reservation once they are recorded, follow by the
        // stream or the sync), and its filled part closed.
        let ended = match venue.get_order(&leg.symbol, venue_id).await {
            Ok(o) if o.is_terminal() => o,
            Ok(_) => {
                return Err(JobError::retryable(format!(
                    "unwinding leg {}: the cancel is still pending at the venue",
                    leg.leg_index
                )));
            }
            Err(e) => {
                return Err(venue_failure(
                    format_args!("unwinding leg {}", leg.leg_index),
                    e,
                ));
            }
        };
        if ended.filled_qty > Decimal::ZERO {
            close_filled(ctx, tenant, intent, leg, ended.filled_qty, venue).await?;
        }
        let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
        lifecycle::apply_order(&mut tx, tenant, leg.account_id, &ended)
            .await
            .map_err(crate::apply_venue_event::lifecycle_failure)?;
        tx.commit().await?;
    }
    fail(ctx, tenant, intent, event, reason).await
}

/// The unwind the order lifecycle asks for once a venue has ended one leg of a
/// submitted intent whose other legs still work or have fills. Only an intent still
/// submitted or partially filled is unwound (a retry after the unwind failed it, or
/// an intent that ended otherwise meanwhile, does nothing).
pub(super) async fn unwind_submitted(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    reason: &str,
) -> Result<(), JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let status = sqlx::query_scalar!(
        r#"SELECT status AS "status: IntentStatus" FROM multi_leg_intents WHERE id = $1"#,
        intent
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    match status {
        Some(IntentStatus::Submitted | IntentStatus::PartiallyFilled) => {
            unwind(ctx, tenant, intent, "intent_unwound", reason).await
        }
        _ => Ok(()),
    }
}

/// The opposite market order that closes a filled leg: an order row of its own (with
/// its own deterministic id), submitted like any leg, always looked up first.
pub(super) async fn close_filled(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    leg: &OrderRow,
    qty: Decimal,
    venue: &VenueClient,
) -> Result<(), JobError> {
    let index = UNWIND_BASE + leg.leg_index;
    let coid = client_order_id(tenant, intent, index);
    let side = if leg.side == "buy" { "sell" } else { "buy" };
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    sqlx::query!(
        "INSERT INTO orders (tenant_id, intent_id, leg_index, account_id, venue_id, symbol, side, quantity,
                             order_type, time_in_force, client_order_id, status)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'market', 'day', $9, 'sent')
         ON CONFLICT (tenant_id, intent_id, leg_index) DO NOTHING",
        tenant,
        intent,
        index,
        leg.account_id,
        &leg.venue_id,
        &leg.symbol,
        side,
        qty,
        &coid,
    )
    .execute(&mut *tx)
    .await?;
    let closing = load_orders(&mut tx, intent)
        .await?
        .into_iter()
        .find(|o| o.leg_index == index)
        .ok_or_else(|| {
            JobError::retryable(format!("closing order of leg {} vanished", leg.leg_index))
        })?;
    tx.commit().await?;
    let placed = match submit_one(venue, true, &closing).await? {
        accepted @ LegOutcome::Accepted(_) => accepted,
        LegOutcome::Rejected(e) | LegOutcome::Unknown(e) => {
            return Err(JobError::retryable(format!(
                "closing leg {}: {e}",
                leg.leg_index
            )));
        }
        LegOutcome::NotPlaced => {
            return Err(JobError::retryable(format!(
                "closing leg {}: not placed",
                leg.leg_index
            )));
        }
    };
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    record(&mut tx, tenant, intent, &closing, &placed).await?;
    tenancy::audit(
        &mut tx,
        "leg_unwound",
        "order",
        &leg.id.to_string(),
        &json!({"intent": intent, "closed_qty": qty.to_string()}),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
