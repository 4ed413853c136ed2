//! What reconciliation brings into the lifecycle that no venue event would: an order
//! the venue has and the database never knew (imported as an external order, under
//! an intent of its own that the OMS never executes), and an order sent that the
//! venue never received (resolved as rejected, its reservation given back). Both go
//! through the same locks and the same ending ([`super::finish`]) as every event.

use serde_json::json;

use super::*;

/// Imports an order the venue has and the database does not: an intent of origin
/// `external` holding it as its one leg, the order itself (nothing reserved: no
/// intent of ours planned it), an `external_order_imported` audit event, and then the
/// venue's status of it through [`apply_order`]. Its fills come as every fill does.
/// `ours` says its client order id has our scheme (an attempt whose record was lost).
/// Returns the order's id, or None when it was imported before.
pub async fn import_external(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    venue_id: &str,
    order: &VenueOrder,
    ours: bool,
) -> Result<Option<Uuid>, LifecycleError> {
    let implausible =
        |why: String| LifecycleError::Implausible(format!("venue order {}: {why}", order.id));
    if order.qty <= Decimal::ZERO
        || order.filled_qty < Decimal::ZERO
        || order.filled_qty > order.qty
    {
        return Err(implausible(format!(
            "{} filled of {}",
            order.filled_qty, order.qty
        )));
    }
    if order
        .limit_price
        .is_some_and(|p| p <= Decimal::ZERO || p > MAX_TRUSTED_PRICE)
        || order.client_order_id.len() > 48
        || order.symbol.is_empty()
        || order.symbol.len() > 32
    {
        return Err(implausible("an order this venue could not hold".into()));
    }
    let leg = json!([{
        "account_id": account, "symbol": order.symbol, "side": order.side.as_str(),
        "quantity": order.qty.normalize().to_string(), "type": order.order_type.as_str(),
        "limit_price": order.limit_price.map(|p| p.normalize().to_string()),
        "time_in_force": order.time_in_force.as_str(),
    }]);
    let imported = sqlx::query!(
        r#"WITH intent AS (
               INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json, status, origin, reason)
               SELECT $1, 'external:' || $3, $4, 'submitted', 'external', $5
               WHERE NOT EXISTS (SELECT 1 FROM orders WHERE account_id = $2 AND client_order_id = $6)
               ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
               RETURNING id),
           imported AS (
               INSERT INTO orders (tenant_id, intent_id, leg_index, account_id, venue_id, symbol, side, quantity,
                                   order_type, limit_price, time_in_force, client_order_id, venue_order_id,
                                   status, origin, created_at)
               SELECT $1, intent.id, 0, $2, $7, $8, $9, $10, $11, $12, $13, $6, $3, 'accepted', 'external', $14
               FROM intent
               RETURNING id)
           SELECT imported.id AS "id!",
                  audit_append('external_order_imported', 'order', imported.id::text,
                               jsonb_build_object('venue_order_id', $3::text, 'client_order_id', $6::text,
                                                  'symbol', $8::text, 'side', $9::text, 'quantity', $10::numeric,
                                                  'venue_status', $15::text, 'placed_by',
                                                  CASE WHEN $16 THEN 'an attempt of ours whose record was lost'
                                                       ELSE 'someone outside the platform' END)) AS "sealed"
           FROM imported"#,
        tenant,
        account,
        &order.id,
        leg,
        if ours {
            "imported by reconciliation: an order of ours the database had lost"
        } else {
            "imported by reconciliation: placed outside the platform"
        },
        &order.client_order_id,
        venue_id,
        &order.symbol,
        order.side.as_str(),
        order.qty,
        order.order_type.as_str(),
        order.limit_price,
        order.time_in_force.as_str(),
        order.created_at,
        order.status.as_str(),
        ours,
    )
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = imported else {
        return Ok(None);
    };
    apply_order(tx, tenant, account, order).await?;
    Ok(Some(row.id))
}

/// Resolves an order sent that the venue says it never received (looked up by client
/// order id, several times, long enough after it was sent): it ends `rejected` with
/// nothing filled, its reservation goes back and its intent rolls up, with an
/// `order_never_received` audit event. False when it is no longer in flight (an
/// answer arrived meanwhile).
pub async fn resolve_never_received(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    order: Uuid,
    why: &str,
) -> Result<bool, LifecycleError> {
    let Some(found) = sqlx::query!(
        "SELECT id, intent_id, symbol FROM orders WHERE id = $1 AND account_id = $2",
        order,
        account,
    )
    .fetch_optional(&mut **tx)
    .await?
    else {
        return Ok(false);
    };
    let order = lock_found(tx, account, found.id, found.intent_id, &found.symbol).await?;
    if !matches!(order.status, OrderStatus::Sent | OrderStatus::SubmitUnknown) {
        return Ok(false);
    }
    sqlx::query!(
        "WITH ended AS (
             UPDATE orders SET status = 'rejected', final_filled_quantity = 0, updated_at = now()
             WHERE id = $1 RETURNING id)
         SELECT audit_append('order_never_received', 'order', $1::text, jsonb_build_object('reason', $2::text))
         FROM ended",
        order.id,
        why,
    )
    .fetch_one(&mut **tx)
    .await?;
    finish(
        tx,
        tenant,
        account,
        &order,
        Some(OrderStatus::Rejected),
        true,
        None,
    )
    .await?;
    Ok(true)
}
