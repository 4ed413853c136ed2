//! The order lifecycle: what the venue says about an order (a fill, a new status)
//! applied to the database, once, whatever path brought it (the stream, a sync, the
//! OMS's own look-ups, reconciliation). One place for each effect:
//!
//! - a **fill** is recorded once (its key, [`Fill::key`], is unique), the order's
//!   filled quantity and average price follow, its share of the order's reservation
//!   leaves `reserved_for_orders`, and the position of (account, symbol) scales in or
//!   out (`position.rs`) with its capital and realised PnL: one journal row keyed
//!   `fill:<key>`;
//! - an order that **ends** (cancelled, expired, rejected) gives back the remainder of
//!   its reservation once every fill it had is recorded: one journal row keyed
//!   `release:<order>`;
//! - the **intent** rolls up from its legs (`rollup.rs`), and a filled order raises an
//!   `order_execution` alert.
//!
//! Each event is one transaction that takes its locks in one order: the lifecycle
//! lock of its (account, symbol) (an advisory lock: fills of one position apply one at
//! a time), the intent, the order, the position leg, and last the ledger row (through
//! the journal trigger), so fills of other symbols of the account run in parallel up
//! to there. What a fill opens is booked as far as the ledger has room, read just
//! before; two fills racing for the last of it cannot both book it (the ledger's CHECK
//! refuses the second, whose job retries and reads again). The OMS, which also writes
//! intents and orders, locks intents before orders too.

mod adopt;
mod position;
mod rollup;

pub use adopt::{import_external, resolve_never_received};
pub use position::{Effect, Leg, effect, reservation_share};
pub use rollup::roll_up;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{
    status::OrderStatus,
    venue::{Fill, MAX_TRUSTED_PRICE, Side, TradeUpdate, VenueOrder},
};

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The venue's account of the order cannot be true (more filled than ordered, a
    /// price beyond belief, another symbol): nothing was written.
    #[error("implausible venue report: {0}")]
    Implausible(String),
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// No order of ours has this venue id or client order id (an order placed by
    /// hand: reconciliation imports those).
    pub unknown_order: bool,
    /// A fill was recorded now (false: no fill, or recorded before).
    pub fill_recorded: bool,
    /// The order's status changed.
    pub status_changed: bool,
    /// The fill cost more than the account had: its kill switch engaged.
    pub shortfall: bool,
}

/// Where the event came from (kept on the fill row).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stream,
    Sync,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Stream => "stream",
            Source::Sync => "sync",
        }
    }
}

/// The order row as the lifecycle needs it, locked.
#[derive(Debug)]
struct Order {
    id: Uuid,
    intent_id: Uuid,
    symbol: String,
    side: String,
    quantity: Decimal,
    filled_quantity: Decimal,
    average_price: Option<Decimal>,
    reserved_amount: Decimal,
    status: OrderStatus,
    venue_order_id: Option<String>,
    final_filled_quantity: Option<Decimal>,
}

/// Applies one stream update: its fill (if any), then the order's new status.
pub async fn apply_update(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    update: &TradeUpdate,
    source: Source,
) -> Result<Applied, LifecycleError> {
    let Some(order) = lock(
        tx,
        account,
        &update.order.id,
        Some(&update.order.client_order_id),
    )
    .await?
    else {
        return Ok(Applied {
            unknown_order: true,
            ..Applied::default()
        });
    };
    let mut applied = Applied::default();
    let mut booking = None;
    if let Some(fill) = &update.fill {
        booking = record_fill(tx, tenant, account, &order, fill, source).await?;
        applied.fill_recorded = booking.is_some();
        applied.shortfall = booking.as_ref().is_some_and(|b| b.shortfall);
    }
    applied.status_changed = record_order(tx, &order, &update.order).await?;
    let changed = applied.fill_recorded || applied.status_changed;
    finish(
        tx,
        tenant,
        account,
        &order,
        Some(update.order.status),
        changed,
        booking,
    )
    .await?;
    Ok(applied)
}

/// Applies what the venue says of an order now (a sync's listing, a look-up).
pub async fn apply_order(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    venue_order: &VenueOrder,
) -> Result<Applied, LifecycleError> {
    let Some(order) = lock(
        tx,
        account,
        &venue_order.id,
        Some(&venue_order.client_order_id),
    )
    .await?
    else {
        return Ok(Applied {
            unknown_order: true,
            ..Applied::default()
        });
    };
    let status_changed = record_order(tx, &order, venue_order).await?;
    finish(
        tx,
        tenant,
        account,
        &order,
        Some(venue_order.status),
        status_changed,
        None,
    )
    .await?;
    Ok(Applied {
        status_changed,
        ..Applied::default()
    })
}

/// Applies one fill learnt from the venue's fill history (a sync).
pub async fn apply_fill(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    fill: &Fill,
) -> Result<Applied, LifecycleError> {
    let Some(order) = lock(tx, account, &fill.order_id, None).await? else {
        return Ok(Applied {
            unknown_order: true,
            ..Applied::default()
        });
    };
    let booking = record_fill(tx, tenant, account, &order, fill, Source::Sync).await?;
    let fill_recorded = booking.is_some();
    let shortfall = booking.as_ref().is_some_and(|b| b.shortfall);
    finish(tx, tenant, account, &order, None, fill_recorded, booking).await?;
    Ok(Applied {
        fill_recorded,
        shortfall,
        ..Applied::default()
    })
}

/// Finds our order by the venue's id (or, before the OMS has recorded that, by
/// client order id) and takes the locks in their order: the position's lifecycle lock
/// (account and symbol), the intent, the order.
async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    venue_order_id: &str,
    client_order_id: Option<&str>,
) -> Result<Option<Order>, LifecycleError> {
    let found = sqlx::query!(
        "SELECT id, intent_id, symbol FROM orders
         WHERE account_id = $1 AND (venue_order_id = $2 OR client_order_id = $3)
         ORDER BY venue_order_id = $2 DESC LIMIT 1",
        account,
        venue_order_id,
        client_order_id,
    )
    .fetch_optional(&mut **tx)
    .await?;
    let Some(found) = found else {
        return Ok(None);
    };
    let order = lock_found(tx, account, found.id, found.intent_id, &found.symbol).await?;
    if order.venue_order_id.is_none() {
        // Reported before the OMS recorded the venue's answer: adopted here.
        sqlx::query!(
            "UPDATE orders SET venue_order_id = $2 WHERE id = $1 AND venue_order_id IS NULL",
            order.id,
            venue_order_id,
        )
        .execute(&mut **tx)
        .await?;
    }
    Ok(Some(order))
}

/// Takes the locks of an order found, in their order: the position's lifecycle lock
/// (account and symbol), the intent, the order.
async fn lock_found(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    id: Uuid,
    intent_id: Uuid,
    symbol: &str,
) -> Result<Order, LifecycleError> {
    // Fills of one (account, symbol) apply one at a time (they share a position leg,
    // which the first may have to create); other symbols of the account go on in
    // parallel up to the ledger row, which each fill's journal row updates last.
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtextextended('lifecycle:' || $1::text || ':' || $2, 0)) AS locked",
        account.to_string(),
        symbol,
    )
    .fetch_one(&mut **tx)
    .await?;
    let order = sqlx::query_as!(
        Order,
        r#"WITH intent AS (SELECT id FROM multi_leg_intents WHERE id = $2 FOR UPDATE)
           SELECT id, intent_id, symbol, side, quantity, filled_quantity, average_price,
                  reserved_amount, status AS "status: OrderStatus", venue_order_id,
                  final_filled_quantity
           FROM orders WHERE id = $1 AND EXISTS (SELECT 1 FROM intent) FOR UPDATE"#,
        id,
        intent_id,
    )
    .fetch_one(&mut **tx)
    .await?;
    Ok(order)
}

/// A fill's move of the ledger, written last in its transaction (see [`book`]).
struct Booking {
    fill_id: Uuid,
    key: String,
    /// Out of `reserved_for_orders`.
    share: Decimal,
    /// Into `reserved_for_positions` (what it opened, less what it released).
    positions: Decimal,
    pnl: Decimal,
    /// It cost more than the account had (see [`shortfall`]).
    shortfall: bool,
}

/// Records a fill on a locked order: the fill row (once), the order's quantities
/// and the position; the ledger move it makes is returned, to be booked last. None
/// when it was recorded before.
async fn record_fill(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    order: &Order,
    fill: &Fill,
    source: Source,
) -> Result<Option<Booking>, LifecycleError> {
    let implausible =
        |why: String| LifecycleError::Implausible(format!("order {}: {why}", order.id));
    if fill.qty <= Decimal::ZERO || fill.price <= Decimal::ZERO || fill.price > MAX_TRUSTED_PRICE {
        return Err(implausible(format!(
            "fill of {} at {}",
            fill.qty, fill.price
        )));
    }
    if fill.symbol != order.symbol || fill.side.as_str() != order.side {
        return Err(implausible(format!(
            "fill is a {} of {}, the order a {} of {}",
            fill.side.as_str(),
            fill.symbol,
            order.side,
            order.symbol
        )));
    }
    let key = fill.key();
    let fill_id = sqlx::query_scalar!(
        "INSERT INTO fills (tenant_id, order_id, account_id, venue_fill_id, quantity, price, filled_at, source)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (tenant_id, venue_fill_id) DO NOTHING RETURNING id",
        tenant,
        order.id,
        account,
        &key,
        fill.qty,
        fill.price,
        fill.at,
        source.as_str(),
    )
    .fetch_optional(&mut **tx)
    .await?;
    let Some(fill_id) = fill_id else {
        return Ok(None);
    };
    let open = order.quantity - order.filled_quantity;
    if fill.qty > open {
        return Err(implausible(format!(
            "a fill of {} with only {} left to fill",
            fill.qty.normalize(),
            open.normalize()
        )));
    }
    let filled = order.filled_quantity + fill.qty;
    let average = match order.average_price {
        Some(avg) => ((avg * order.filled_quantity + fill.price * fill.qty) / filled)
            .round_dp(position::SCALE),
        None => fill.price,
    };
    let share = reservation_share(order.reserved_amount, fill.qty, open);
    let complete = filled >= order.quantity;
    sqlx::query!(
        "UPDATE orders SET filled_quantity = $2, average_price = $3, reserved_amount = reserved_amount - $4,
                           status = CASE WHEN $5 THEN 'filled'
                                         WHEN status IN ('cancelled', 'expired', 'rejected') THEN status
                                         ELSE 'partially_filled' END,
                           updated_at = now()
         WHERE id = $1",
        order.id,
        filled,
        average,
        share,
        complete,
    )
    .execute(&mut **tx)
    .await?;
    let booking = book_position(tx, tenant, account, order, fill, fill_id, key, share).await?;
    if complete {
        execution_alert(tx, tenant, account, order, filled, average).await?;
    }
    Ok(Some(booking))
}

/// The position side of a fill, and the ledger move that goes with it.
#[allow(clippy::too_many_arguments)]
async fn book_position(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    order: &Order,
    fill: &Fill,
    fill_id: Uuid,
    key: String,
    share: Decimal,
) -> Result<Booking, LifecycleError> {
    let buy = fill.side == Side::Buy;
    let current = sqlx::query!(
        "SELECT id, position_id, side, quantity, cost_basis, reserved FROM position_legs
         WHERE account_id = $1 AND symbol = $2 AND closed_at IS NULL FOR UPDATE",
        account,
        &order.symbol,
    )
    .fetch_optional(&mut **tx)
    .await?;
    let leg = current.as_ref().map(|l| Leg {
        long: l.side == "long",
        qty: l.quantity,
        cost: l.cost_basis,
        reserved: l.reserved,
    });
    let e = effect(leg.as_ref(), buy, fill.qty, fill.price)
        .ok_or_else(|| LifecycleError::Implausible(format!("fill {key}: amounts overflow")))?;
    // What the opened part books into reserved_for_positions: its cost, as far as the
    // ledger has room once this fill's releases are counted. A fill is a fact and is
    // recorded whatever it costs; one that costs more than the account has engages
    // the account's kill switch instead of breaking the ledger's invariant.
    let mut booked = e.open_cost;
    let mut short = false;
    if e.open_cost > Decimal::ZERO {
        let available = sqlx::query_scalar!(
            r#"SELECT allocated - reserved_for_orders - reserved_for_positions + realized_pnl AS "available!"
               FROM capital_ledgers WHERE account_id = $1"#,
            account
        )
        .fetch_optional(&mut **tx)
        .await?
        .unwrap_or_default();
        let room = (available + share + e.released + e.pnl).max(Decimal::ZERO);
        if room < e.open_cost {
            booked = room;
            short = true;
            shortfall(tx, account, &key, e.open_cost - room).await?;
        }
    }
    if let Some(l) = &current
        && e.reduced > Decimal::ZERO
    {
        sqlx::query!(
            "WITH leg AS (
                 UPDATE position_legs SET quantity = quantity - $2, cost_basis = cost_basis - $3,
                                          reserved = reserved - $4, realized_pnl = realized_pnl + $5,
                                          entry_price = CASE WHEN quantity - $2 > 0
                                              THEN round((cost_basis - $3) / (quantity - $2), 10) END,
                                          closed_at = CASE WHEN $6 THEN now() END
                 WHERE id = $1 RETURNING tenant_id, position_id, realized_pnl),
             pos AS (
                 UPDATE positions p SET pnl = leg.realized_pnl,
                                        status = CASE WHEN $6 THEN 'closed' ELSE p.status END,
                                        closed_at = CASE WHEN $6 THEN now() END,
                                        exit_reason = CASE WHEN $6 THEN 'flat' END
                 FROM leg WHERE p.id = leg.position_id RETURNING p.id)
             INSERT INTO position_fills (tenant_id, position_id, leg_id, fill_id, quantity, price, executed_at, realized_pnl)
             SELECT leg.tenant_id, leg.position_id, $1, $7, -($2::numeric), $8, $9, $5 FROM leg",
            l.id,
            e.reduced,
            e.cost_out,
            e.released,
            e.pnl,
            e.closes,
            fill_id,
            fill.price,
            fill.at,
        )
        .execute(&mut **tx)
        .await?;
    }
    if e.opened > Decimal::ZERO {
        match current
            .as_ref()
            .filter(|_| !e.closes && e.reduced.is_zero())
        {
            // Scaling in.
            Some(l) => {
                sqlx::query!(
                    "WITH leg AS (
                         UPDATE position_legs SET quantity = quantity + $2, cost_basis = cost_basis + $3,
                                                  reserved = reserved + $4,
                                                  entry_price = round((cost_basis + $3) / (quantity + $2), 10)
                         WHERE id = $1 RETURNING tenant_id, position_id)
                     INSERT INTO position_fills (tenant_id, position_id, leg_id, fill_id, quantity, price, executed_at)
                     SELECT tenant_id, position_id, $1, $5, $2, $6, $7 FROM leg",
                    l.id,
                    e.opened,
                    e.open_cost,
                    booked,
                    fill_id,
                    fill.price,
                    fill.at,
                )
                .execute(&mut **tx)
                .await?;
            }
            // Opening (after a close, the rest of the fill the other way).
            None => {
                sqlx::query!(
                    "WITH pos AS (
                         INSERT INTO positions (tenant_id, intent_id, metadata)
                         VALUES ($1, $2, jsonb_build_object('account_id', $3::uuid, 'symbol', $4::text))
                         RETURNING id),
                     leg AS (
                         INSERT INTO position_legs (tenant_id, position_id, leg_index, account_id, symbol, side,
                                                    quantity, entry_price, cost_basis, reserved)
                         SELECT $1, pos.id, 0, $3, $4, $5, $6, $8, $7, $9 FROM pos
                         RETURNING id, position_id)
                     INSERT INTO position_fills (tenant_id, position_id, leg_id, fill_id, quantity, price, executed_at)
                     SELECT $1, leg.position_id, leg.id, $10, $6, $8, $11 FROM leg",
                    tenant,
                    order.intent_id,
                    account,
                    &order.symbol,
                    if buy { "long" } else { "short" },
                    e.opened,
                    e.open_cost,
                    fill.price,
                    booked,
                    fill_id,
                    fill.at,
                )
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    Ok(Booking {
        fill_id,
        key,
        share,
        positions: booked - e.released,
        pnl: e.pnl,
        shortfall: short,
    })
}

/// Writes a fill's ledger move: one journal row keyed `fill:<key>`, whose trigger
/// updates the account's ledger row. Last in the transaction, because that row is
/// every fill's of the account: it is held only from here to the commit.
async fn book(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    b: &Booking,
) -> Result<(), LifecycleError> {
    sqlx::query!(
        "INSERT INTO capital_journal (tenant_id, account_id, entry_type, d_reserved_for_orders,
                                      d_reserved_for_positions, d_realized_pnl, ref_type, ref_id, event_key)
         VALUES ($1, $2, 'fill', -($3::numeric), $4, $5, 'fill', $6, 'fill:' || $7)
         ON CONFLICT (tenant_id, event_key) DO NOTHING",
        tenant,
        account,
        b.share,
        b.positions,
        b.pnl,
        b.fill_id,
        &b.key,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A fill cost more than the account had: trading on the account stops until an
/// operator looks (the switch says why), and the audit chain records it.
async fn shortfall(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    key: &str,
    missing: Decimal,
) -> Result<(), LifecycleError> {
    let reason = format!("fill {key} cost {missing} more than the account's capital");
    sqlx::query!(
        "WITH switch AS (
             INSERT INTO kill_switches (tenant_id, account_id, engaged, reason)
             VALUES (current_tenant_id(), $1, true, $2)
             ON CONFLICT (tenant_id, account_id) DO UPDATE SET engaged = true, reason = $2, changed_at = now())
         SELECT audit_append('capital_shortfall', 'account', $1::text, jsonb_build_object('reason', $2::text))",
        account,
        &reason,
    )
    .fetch_one(&mut **tx)
    .await?;
    tracing::warn!(account.id = %account, "{reason}: kill switch engaged");
    Ok(())
}

/// Records the venue's status of a locked order: a working order moves out of our
/// submission states; an ended one takes the venue's ending and the quantity it says
/// was filled (its fills may still be on their way). Fill statuses are left to the
/// fills themselves, and the statement reads the status as it is now, not as `order`
/// was locked: a fill of the same event may have just moved it. True when the
/// status changed.
async fn record_order(
    tx: &mut Transaction<'_, Postgres>,
    order: &Order,
    venue: &VenueOrder,
) -> Result<bool, LifecycleError> {
    if venue.filled_qty > order.quantity || venue.filled_qty < Decimal::ZERO {
        return Err(LifecycleError::Implausible(format!(
            "order {}: the venue says {} filled of {}",
            order.id,
            venue.filled_qty.normalize(),
            order.quantity.normalize()
        )));
    }
    let next = match venue.status {
        OrderStatus::Cancelled | OrderStatus::Expired | OrderStatus::Rejected
            if !order.status.is_terminal() =>
        {
            Some(venue.status)
        }
        OrderStatus::Accepted | OrderStatus::PartiallyFilled | OrderStatus::Filled
            if !order.status.is_submitted() =>
        {
            Some(OrderStatus::Accepted)
        }
        _ => None,
    };
    // What the venue says was filled in the end, for a terminal order.
    let last = venue.is_terminal().then_some(venue.filled_qty);
    if next.is_none() && (last.is_none() || order.final_filled_quantity.is_some()) {
        return Ok(false);
    }
    let changed = sqlx::query_scalar!(
        r#"UPDATE orders SET status = CASE
                                 -- A fill of this same event may have moved it on already.
                                 WHEN $2 = 'accepted' AND status NOT IN ('pending_submit', 'sent', 'submit_unknown')
                                     THEN status
                                 WHEN $2 IN ('cancelled', 'expired', 'rejected') AND status = 'filled'
                                     THEN status
                                 ELSE coalesce($2, status) END,
                             final_filled_quantity = coalesce(final_filled_quantity, $3),
                             updated_at = now()
           WHERE id = $1 AND ($2::text IS NOT NULL OR ($3::numeric IS NOT NULL AND final_filled_quantity IS NULL))
           RETURNING status AS "status: OrderStatus""#,
        order.id,
        next as Option<OrderStatus>,
        last,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(changed.is_some_and(|s| s != order.status))
}

/// After an event on an order: the remainder of its reservation goes back once it
/// has ended and its fills are all recorded (only an order that has ended, or that
/// the venue says has, is looked at), its intent rolls up if the order `changed` (a
/// fill recorded, a new status; a replayed event changes nothing), and last the
/// fill's ledger move is booked.
async fn finish(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    order: &Order,
    venue_status: Option<OrderStatus>,
    changed: bool,
    booking: Option<Booking>,
) -> Result<(), LifecycleError> {
    let unfilled_end = |s: OrderStatus| s.is_terminal() && s != OrderStatus::Filled;
    if unfilled_end(order.status) || venue_status.is_some_and(unfilled_end) {
        release_remainder(tx, tenant, account, order.id).await?;
    }
    if changed {
        roll_up(tx, &[order.intent_id]).await?;
    }
    if let Some(b) = booking {
        book(tx, tenant, account, &b).await?;
    }
    Ok(())
}

/// Gives back what an ended order still reserves, once the fills the venue reports
/// for it are all recorded (the OMS also calls it for a leg rejected at submission or
/// never placed). Keyed by the order: it happens once.
pub async fn release_remainder(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    order: Uuid,
) -> sqlx::Result<()> {
    sqlx::query!(
        "WITH before AS (
             SELECT id, reserved_amount FROM orders
             WHERE id = $3 AND reserved_amount > 0 AND status IN ('cancelled', 'expired', 'rejected')
               AND filled_quantity >= coalesce(final_filled_quantity, 0)
             FOR UPDATE),
         released AS (
             UPDATE orders o SET reserved_amount = 0 FROM before WHERE o.id = before.id
             RETURNING before.reserved_amount)
         INSERT INTO capital_journal (tenant_id, account_id, entry_type, d_reserved_for_orders, ref_type, ref_id, event_key)
         SELECT $1, $2, 'release_order', -reserved_amount, 'order', $3, 'release:' || $3
         FROM released
         ON CONFLICT (tenant_id, event_key) DO NOTHING",
        tenant,
        account,
        order,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A filled order raises an `order_execution` alert to the account's owner (or the
/// tenant's owner), once: only the fill that completes the order gets here.
async fn execution_alert(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    order: &Order,
    filled: Decimal,
    average: Decimal,
) -> Result<(), LifecycleError> {
    let side = order.side.to_uppercase();
    let payload = json!({
        "title": format!("{side} {} filled", order.symbol),
        "message": format!("{side} {} {} at an average {}", filled.normalize(), order.symbol, average.normalize()),
        "side": order.side,
        "fields": [
            {"name": "Symbol", "value": order.symbol, "inline": true},
            {"name": "Side", "value": order.side, "inline": true},
            {"name": "Quantity", "value": filled.normalize().to_string(), "inline": true},
            {"name": "Average price", "value": average.normalize().to_string(), "inline": true},
            {"name": "Order", "value": order.id.to_string(), "inline": false},
        ],
    });
    account_alert(tx, tenant, account, "order_execution", payload).await?;
    Ok(())
}

/// Raises an alert of `kind` (an `alert_kind`) to the account's owner, or the tenant's
/// owner when the account names none.
pub async fn account_alert(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    account: Uuid,
    kind: &str,
    payload: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO alerts (tenant_id, user_id, kind, payload)
         SELECT $1, coalesce(a.owner, (SELECT m.user_id FROM tenant_members m WHERE m.tenant_id = $1
                                       ORDER BY m.role = 'owner' DESC, m.user_id LIMIT 1)),
                $3::text::alert_kind, $4
         FROM trading_accounts a WHERE a.id = $2",
        tenant,
        account,
        kind,
        payload,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The venue symbols an account's history at its venue can be in, as far as the
/// platform knows: its orders created since `since`, its open position legs, and its
/// venue's instruments. What a venue that lists history per symbol (Binance) reads.
pub async fn account_symbols(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar!(
        r#"SELECT symbol AS "symbol!" FROM orders WHERE account_id = $1 AND created_at >= $2
           UNION SELECT symbol FROM position_legs WHERE account_id = $1 AND closed_at IS NULL
           UNION SELECT i.venue_symbol FROM instruments i
                 JOIN trading_accounts a ON a.venue_id = i.venue_id WHERE a.id = $1
           ORDER BY 1"#,
        account,
        since,
    )
    .fetch_all(&mut **tx)
    .await
}
