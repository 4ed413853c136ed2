//! Recording what happened: the venue's answers on the orders, the intents' endings
//! (status, reason, entry locks released, audit event) and the reservations given back.

use super::*;

/// How an intent ends for this job: its status (and reason), and its audit event.
pub(super) struct Ending<'a> {
    pub(super) intent: Uuid,
    pub(super) status: IntentStatus,
    pub(super) reason: Option<&'a str>,
    pub(super) event: &'a str,
    pub(super) details: Value,
}

/// Moves intents to their final state for this job (status, reason), releases their
/// entry locks and records their audit events, in one statement: one place for every
/// way an intent ends.
pub(super) async fn settle_intents(
    tx: &mut Transaction<'_, Postgres>,
    endings: &[Ending<'_>],
) -> sqlx::Result<()> {
    let ids: Vec<Uuid> = endings.iter().map(|e| e.intent).collect();
    sqlx::query!(
        "WITH e AS (SELECT * FROM unnest($1::uuid[], $2::intent_status[], $3::text[], $4::text[], $5::jsonb[])
                    AS e(id, status, reason, event, details)),
         settled AS (
             UPDATE multi_leg_intents i SET status = e.status,
                                            reason = coalesce(e.reason, i.reason), updated_at = now()
             FROM e WHERE i.id = e.id AND i.id = ANY($1)),
         unlocked AS (DELETE FROM entry_locks WHERE owner_token = ANY($1))
         SELECT audit_append(e.event, 'intent', e.id::text, e.details) FROM e",
        &ids,
        endings.iter().map(|e| e.status).collect::<Vec<_>>() as _,
        endings.iter().map(|e| e.reason).collect::<Vec<_>>() as _,
        endings.iter().map(|e| e.event).collect::<Vec<_>>() as _,
        endings.iter().map(|e| &e.details).collect::<Vec<_>>() as _,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What the venue answered for an intent all of whose legs were accepted, to be
/// recorded together with other intents of the tenant (see `IntentBatches`).
pub(super) struct Settlement {
    pub(super) intent: Uuid,
    pub(super) accepted: Vec<(Uuid, VenueOrder)>,
    pub(super) filled: bool,
    pub(super) legs: usize,
}

/// Records settlements in one transaction: the orders' venue answers, then the
/// intents' endings.
pub(super) async fn settle_batch(
    pool: &sqlx::PgPool,
    tenant: Uuid,
    batch: &[Settlement],
) -> sqlx::Result<()> {
    let mut tx = tenancy::begin(pool, tenant).await?;
    let accepted: Vec<(Uuid, &VenueOrder)> = batch
        .iter()
        .flat_map(|s| s.accepted.iter().map(|(id, v)| (*id, v)))
        .collect();
    record_accepted(&mut tx, &accepted).await?;
    // An intent run twice at once (a zombie and its rescuer) ends once.
    let mut seen = std::collections::HashSet::new();
    let endings: Vec<Ending> = batch
        .iter()
        .filter(|s| seen.insert(s.intent))
        .map(|s| Ending {
            intent: s.intent,
            status: if s.filled {
                IntentStatus::Filled
            } else {
                IntentStatus::Submitted
            },
            reason: None,
            event: "intent_submitted",
            details: json!({"legs": s.legs, "filled": s.filled}),
        })
        .collect();
    settle_intents(&mut tx, &endings).await?;
    tx.commit().await
}

/// Marks the intent failed with an audit event (and releases what it held).
pub(super) async fn fail(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    event: &str,
    reason: &str,
) -> Result<(), JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let ending = Ending {
        intent,
        status: IntentStatus::Failed,
        reason: Some(reason),
        event,
        details: json!({"reason": reason}),
    };
    settle_intents(&mut tx, &[ending]).await?;
    tx.commit().await?;
    tracing::info!(intent.id = %intent, event, "intent {intent} failed: {reason}");
    Ok(())
}

pub(super) async fn load_orders(
    tx: &mut Transaction<'_, Postgres>,
    intent: Uuid,
) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as!(
        OrderRow,
        r#"SELECT intent_id, id, leg_index, account_id, venue_id, symbol, side, quantity, order_type,
                  limit_price, time_in_force AS "time_in_force: TimeInForce", client_order_id, venue_order_id,
                  status AS "status: OrderStatus", reserved_amount
           FROM orders WHERE intent_id = $1 ORDER BY leg_index"#,
        intent,
    )
    .fetch_all(&mut **tx)
    .await
}

pub(super) async fn orders(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
) -> Result<Vec<OrderRow>, JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let rows = load_orders(&mut tx, intent).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Moves one order to `status` (a leg's answer that carries no venue order).
pub(super) async fn set_status(
    tx: &mut Transaction<'_, Postgres>,
    order: Uuid,
    status: OrderStatus,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE orders SET status = $2, updated_at = now() WHERE id = $1",
        order,
        status as OrderStatus,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub(super) async fn record(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    intent: Uuid,
    order: &OrderRow,
    outcome: &LegOutcome,
) -> Result<(), JobError> {
    match outcome {
        LegOutcome::Accepted(v) => record_accepted(tx, &[(order.id, v)]).await?,
        LegOutcome::Rejected(reason) => {
            set_status(tx, order.id, OrderStatus::Rejected).await?;
            release(tx, tenant, order).await?;
            let details = json!({"intent": intent, "leg": order.leg_index, "reason": reason});
            tenancy::audit(tx, "leg_rejected", "order", &order.id.to_string(), &details).await?;
        }
        LegOutcome::Unknown(_) => {
            set_status(tx, order.id, OrderStatus::SubmitUnknown).await?;
        }
        LegOutcome::NotPlaced => {
            set_status(tx, order.id, OrderStatus::Cancelled).await?;
            release(tx, tenant, order).await?;
            let details = json!({"intent": intent, "leg": order.leg_index});
            tenancy::audit(
                tx,
                "leg_withdrawn",
                "order",
                &order.id.to_string(),
                &details,
            )
            .await?;
        }
    }
    Ok(())
}

/// Stores what the venue answered for accepted orders, in one statement.
pub(super) async fn record_accepted(
    tx: &mut Transaction<'_, Postgres>,
    accepted: &[(Uuid, &VenueOrder)],
) -> sqlx::Result<()> {
    if accepted.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "UPDATE orders o SET venue_order_id = a.venue_id, status = a.status, filled_quantity = a.filled,
                             average_price = a.avg, updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::text[], $4::numeric[], $5::numeric[])
              AS a(id, venue_id, status, filled, avg)
         WHERE o.id = a.id AND o.id = ANY($1)",
        accepted.iter().map(|(id, _)| *id).collect::<Vec<_>>() as _,
        accepted.iter().map(|(_, v)| v.id.as_str()).collect::<Vec<_>>() as _,
        accepted.iter().map(|(_, v)| v.status).collect::<Vec<_>>() as _,
        accepted.iter().map(|(_, v)| v.filled_qty).collect::<Vec<_>>() as _,
        accepted.iter().map(|(_, v)| v.filled_avg_price).collect::<Vec<_>>() as _,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Gives back what an order reserved (it will not fill).
pub(super) async fn release(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    order: &OrderRow,
) -> sqlx::Result<()> {
    if order.reserved_amount.is_zero() {
        return Ok(());
    }
    sqlx::query!(
        "WITH released AS (
             UPDATE orders SET reserved_amount = 0 WHERE id = $4 AND reserved_amount > 0
             RETURNING reserved_amount)
         INSERT INTO capital_journal (tenant_id, account_id, entry_type, d_reserved_for_orders, ref_type, ref_id)
         SELECT $1, $2, 'release_order', -($3::numeric), 'order', $4 WHERE EXISTS (SELECT 1 FROM released)",
        tenant,
        order.account_id,
        order.reserved_amount,
        order.id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
