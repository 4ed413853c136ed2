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
             FROM e WHERE i.id = e.id AND i.id = ANY($1)
               -- Submission hands a pending intent over; the lifecycle moves it on.
               AND (e.status <> 'submitted' OR i.status = 'pending')),
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

/// Releases an ended intent's entry locks (any left: normally its ending took them).
pub(super) async fn release_locks(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
) -> Result<(), JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    sqlx::query!("DELETE FROM entry_locks WHERE owner_token = $1", intent)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// What the venue answered for an intent all of whose legs were accepted, to be
/// recorded together with other intents of the tenant (see `IntentBatches`).
pub(super) struct Settlement {
    pub(super) intent: Uuid,
    pub(super) accepted: Vec<(Uuid, VenueOrder)>,
    pub(super) legs: usize,
}

/// Records settlements in one transaction: the intents' endings (intents before
/// orders, the lifecycle's lock order), the orders' venue answers, then the intents
/// rolled up from their legs where the lifecycle may have got there first.
pub(super) async fn settle_batch(
    pool: &sqlx::PgPool,
    tenant: Uuid,
    batch: &[Settlement],
) -> sqlx::Result<()> {
    let mut tx = tenancy::begin(pool, tenant).await?;
    // An intent run twice at once (a zombie and its rescuer) ends once.
    let mut seen = std::collections::HashSet::new();
    let endings: Vec<Ending> = batch
        .iter()
        .filter(|s| seen.insert(s.intent))
        .map(|s| Ending {
            intent: s.intent,
            status: IntentStatus::Submitted,
            reason: None,
            event: "intent_submitted",
            details: json!({"legs": s.legs}),
        })
        .collect();
    settle_intents(&mut tx, &endings).await?;
    let accepted: Vec<(Uuid, &VenueOrder)> = batch
        .iter()
        .flat_map(|s| s.accepted.iter().map(|(id, v)| (*id, v)))
        .collect();
    let mut moved = record_accepted(&mut tx, &accepted).await?;
    // An intent rolls up when the lifecycle got to one of its orders first: a fill or
    // an end recorded before this answer, or before an earlier attempt's answer for a
    // leg this attempt did not send.
    moved.extend(
        batch
            .iter()
            .filter(|s| s.accepted.len() < s.legs)
            .map(|s| s.intent),
    );
    moved.sort();
    moved.dedup();
    if !moved.is_empty() {
        lifecycle::roll_up(&mut tx, &moved).await?;
    }
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
        LegOutcome::Accepted(v) => {
            record_accepted(tx, &[(order.id, v)]).await?;
        }
        LegOutcome::Rejected(reason) => {
            set_status(tx, order.id, OrderStatus::Rejected).await?;
            let said: String = reason.chars().take(300).collect();
            sqlx::query!(
                "UPDATE orders SET reject_reason = $2 WHERE id = $1",
                order.id,
                said
            )
            .execute(&mut **tx)
            .await?;
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

/// Stores what the venue answered for accepted orders, in one statement: the venue's
/// id, and `accepted` for an order still in our submission states. Fills, and the
/// statuses they bring, are the lifecycle's alone (an answer may arrive after the
/// fills it reports); an answer that says the order already ended goes through the
/// lifecycle. Returns the intents of orders the lifecycle had moved on already.
pub(super) async fn record_accepted(
    tx: &mut Transaction<'_, Postgres>,
    accepted: &[(Uuid, &VenueOrder)],
) -> sqlx::Result<Vec<Uuid>> {
    if accepted.is_empty() {
        return Ok(vec![]);
    }
    let ended = sqlx::query!(
        "UPDATE orders o SET venue_order_id = coalesce(o.venue_order_id, a.venue_id),
                             status = CASE WHEN o.status IN ('pending_submit', 'sent', 'submit_unknown')
                                           THEN 'accepted' ELSE o.status END,
                             updated_at = now()
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS a(id, venue_id, status)
         WHERE o.id = a.id AND o.id = ANY($1)
         RETURNING o.tenant_id, o.account_id, a.status IN ('cancelled', 'expired', 'rejected') AS \"ended!\", o.id,
                   o.intent_id, o.status <> 'accepted' AS \"moved!\"",
        accepted.iter().map(|(id, _)| *id).collect::<Vec<_>>() as _,
        accepted.iter().map(|(_, v)| v.id.as_str()).collect::<Vec<_>>() as _,
        accepted.iter().map(|(_, v)| v.status).collect::<Vec<_>>() as _,
    )
    .fetch_all(&mut **tx)
    .await?;
    let moved: Vec<Uuid> = ended
        .iter()
        .filter(|r| r.moved || r.ended)
        .map(|r| r.intent_id)
        .collect();
    for row in ended.iter().filter(|r| r.ended) {
        if let Some((_, venue_order)) = accepted.iter().find(|(id, _)| *id == row.id) {
            lifecycle::apply_order(tx, row.tenant_id, row.account_id, venue_order)
                .await
                .map_err(|e| match e {
                    lifecycle::LifecycleError::Db(e) => e,
                    other => sqlx::Error::Protocol(other.to_string()),
                })?;
        }
    }
    Ok(moved)
}

/// Gives back what an order reserved (it will not fill): a leg rejected at
/// submission, or never placed.
pub(super) async fn release(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    order: &OrderRow,
) -> sqlx::Result<()> {
    lifecycle::release_remainder(tx, tenant, order.account_id, order.id).await
}
