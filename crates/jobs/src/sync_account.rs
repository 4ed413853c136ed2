//! `sync_account`: brings one account's orders and fills up to the venue's truth, by
//! account, not by order (Alpaca allows 200 requests a minute per account): the
//! orders created since the oldest one still followed, open or closed, in pages of
//! 500, then the FILL activities since the account's cursor, in pages of 100. Each
//! order and each fill goes through the order lifecycle in a transaction of its own
//! (idempotent: a fill the stream recorded already changes nothing); what the
//! database knows already (a working order still working, a fill recorded) is
//! skipped without a transaction. An account with nothing to follow costs no request.
//!
//! The fallback of the stream: enqueued a little after orders are accepted, when a
//! stream (re)connects, and by the `sync_accounts` schedule; one at a time per account
//! (the concurrency key `sync:<account>`), every request taken from the account's
//! budget first.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Job, JobContext, JobError,
    apply_venue_event::lifecycle_failure,
    venue_budget::{account_venue, spend, venue_failure},
};
use pulse_domain::{
    lifecycle::{self, Applied, LifecycleError},
    status::OrderStatus,
    tenancy,
    venue::{Call, Fill, Venue, VenueOrder},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncAccount {
    pub tenant_id: Uuid,
    pub account_id: Uuid,
}

/// Most pages one sync reads of each list; the rest waits for the next sync.
const MAX_PAGES: usize = 20;
/// The venue's clocks and ours differ a little, and `after` is exclusive: lists are
/// read from this much before the cursor (recording is idempotent).
const MARGIN: chrono::TimeDelta = chrono::TimeDelta::seconds(2);

/// What one sync found and did (logged, and its request count stored).
#[derive(Debug, Default)]
struct Tally {
    requests: i32,
    orders: usize,
    fills: usize,
    recorded: usize,
    unknown: usize,
    implausible: usize,
}

impl Tally {
    fn count(&mut self, applied: Result<Applied, LifecycleError>) -> Result<(), JobError> {
        match applied {
            Ok(a) => {
                self.recorded += usize::from(a.fill_recorded);
                self.unknown += usize::from(a.unknown_order);
                Ok(())
            }
            // One impossible report does not hold up the others; it is logged, and
            // recurs in the next sync until reconciliation deals with it.
            Err(LifecycleError::Implausible(why)) => {
                tracing::warn!("sync: skipped: {why}");
                self.implausible += 1;
                Ok(())
            }
            Err(e) => Err(lifecycle_failure(e)),
        }
    }
}

impl Job for SyncAccount {
    const NAME: &'static str = "sync_account";
    const MAX_ATTEMPTS: i32 = 10;
    const TIMEOUT: Duration = Duration::from_secs(120);

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let (tenant, account) = (self.tenant_id, self.account_id);
        let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
        let Some(state) = sqlx::query!(
            r#"SELECT a.venue_id, c.identifier, c.secret_ref,
                      (SELECT fills_after FROM venue_sync_state s WHERE s.account_id = a.id) AS fills_after,
                      (SELECT min(o.created_at) FROM orders o
                       WHERE o.account_id = a.id
                         AND (o.status IN ('sent', 'submit_unknown', 'accepted', 'partially_filled')
                              OR (o.final_filled_quantity IS NOT NULL
                                  AND o.filled_quantity < o.final_filled_quantity))) AS oldest_followed
               FROM trading_accounts a
               LEFT JOIN account_credentials c ON c.account_id = a.id AND c.credential_type = 'api_key'
               WHERE a.id = $1"#,
            account
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(JobError::permanent(format!(
                "no account {account} in tenant {tenant}"
            )));
        };
        tx.commit().await?;
        let Some(oldest) = state.oldest_followed else {
            return finish(&ctx, tenant, account, None, &Tally::default()).await;
        };
        let venue = account_venue(
            &ctx,
            (tenant, account),
            &state.venue_id,
            state.identifier.as_deref(),
            state.secret_ref.as_deref(),
        )?;
        let mut tally = Tally::default();
        // 1. What became of the orders followed: every order created since the oldest.
        //    Only what tells us something new is applied (a working order the venue
        //    still calls working costs no transaction).
        let (known, symbols) = known_orders(&ctx, tenant, account, oldest - MARGIN).await?;
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            spend(
                &ctx,
                (tenant, account),
                venue.as_ref(),
                Call::Orders,
                &mut tally.requests,
            )
            .await?;
            let page = venue
                .orders_after(&symbols, oldest - MARGIN, token.as_deref())
                .await
                .map_err(|e| venue_failure("sync", e))?;
            for order in &page.items {
                tally.orders += 1;
                if !news(order, known.get(&order.client_order_id)) {
                    continue;
                }
                let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
                let applied = lifecycle::apply_order(&mut tx, tenant, account, order).await;
                if applied.is_ok() {
                    tx.commit().await?;
                }
                tally.count(applied)?;
            }
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        // 2. The fills since the cursor: fills before it were read already, and fills
        //    before the oldest order followed are of no order followed.
        let since = state.fills_after.map_or(oldest, |c| c.max(oldest)) - MARGIN;
        let newest = sync_fills(
            &ctx,
            venue.as_ref(),
            (tenant, account),
            &symbols,
            since,
            &mut tally,
        )
        .await?;
        finish(&ctx, tenant, account, newest.or(state.fills_after), &tally).await
    }
}

/// Reads the fills since `since`, page after page, applying each; the newest fill's
/// time, if any, when everything before it has been read (the list read to its end,
/// or pages oldest first over the whole account: see `Venue::pages_in_time_order`).
async fn sync_fills(
    ctx: &JobContext,
    venue: &dyn Venue,
    (tenant, account): (Uuid, Uuid),
    symbols: &[String],
    since: DateTime<Utc>,
    tally: &mut Tally,
) -> Result<Option<DateTime<Utc>>, JobError> {
    let mut token: Option<String> = None;
    let mut newest = None;
    for _ in 0..MAX_PAGES {
        spend(
            ctx,
            (tenant, account),
            venue,
            Call::Fills,
            &mut tally.requests,
        )
        .await?;
        let page = venue
            .fills(symbols, Some(since), token.as_deref())
            .await
            .map_err(|e| venue_failure("sync", e))?;
        let recorded = recorded_fills(ctx, tenant, &page.items).await?;
        for fill in &page.items {
            tally.fills += 1;
            newest = newest.max(Some(fill.at));
            if recorded.contains(&fill.key()) {
                continue;
            }
            let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
            let applied = lifecycle::apply_fill(&mut tx, tenant, account, fill).await;
            if let Ok(a) = &applied {
                tx.commit().await?;
                crate::trading_metrics::fill_applied(ctx, "sync", fill, a);
            }
            tally.count(applied)?;
        }
        match page.next {
            Some(next) => token = Some(next),
            None => {
                token = None;
                break;
            }
        }
    }
    Ok(newest.filter(|_| token.is_none() || venue.pages_in_time_order()))
}

/// What the database holds of the account's orders created since `since`, by client
/// order id: their status and the quantity the venue said they ended with; and the
/// symbols the account's history since then can be in.
async fn known_orders(
    ctx: &JobContext,
    tenant: Uuid,
    account: Uuid,
    since: DateTime<Utc>,
) -> Result<(HashMap<String, (OrderStatus, bool)>, Vec<String>), JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let rows = sqlx::query!(
        r#"SELECT client_order_id, status AS "status: OrderStatus",
                  final_filled_quantity IS NOT NULL AS "ended!"
           FROM orders WHERE account_id = $1 AND created_at >= $2"#,
        account,
        since,
    )
    .fetch_all(&mut *tx)
    .await?;
    let symbols = lifecycle::account_symbols(&mut tx, account, since).await?;
    tx.commit().await?;
    let known = rows
        .into_iter()
        .map(|r| (r.client_order_id, (r.status, r.ended)))
        .collect();
    Ok((known, symbols))
}

/// Whether the venue's account of an order tells the database something new: an
/// order it does not know, one still in our submission states, or an end it has not
/// recorded. (Fills come from the fill history.)
fn news(order: &VenueOrder, ours: Option<&(OrderStatus, bool)>) -> bool {
    match ours {
        None => true,
        Some((status, ended)) => !status.is_submitted() || (order.is_terminal() && !ended),
    }
}

/// The keys of `page`'s fills the database has recorded already.
async fn recorded_fills(
    ctx: &JobContext,
    tenant: Uuid,
    page: &[Fill],
) -> Result<HashSet<String>, JobError> {
    let keys: Vec<String> = page.iter().map(Fill::key).collect();
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let found = sqlx::query_scalar!(
        "SELECT venue_fill_id FROM fills WHERE venue_fill_id = ANY($1)",
        &keys
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(found.into_iter().collect())
}

/// Stores where the sync got to.
async fn finish(
    ctx: &JobContext,
    tenant: Uuid,
    account: Uuid,
    fills_after: Option<DateTime<Utc>>,
    tally: &Tally,
) -> Result<(), JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    sqlx::query!(
        "INSERT INTO venue_sync_state (tenant_id, account_id, fills_after, last_synced_at, last_requests)
         VALUES ($1, $2, $3, now(), $4)
         ON CONFLICT (tenant_id, account_id) DO UPDATE
             SET fills_after = greatest(venue_sync_state.fills_after, $3), last_synced_at = now(),
                 last_requests = $4",
        tenant,
        account,
        fills_after,
        tally.requests,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::debug!(account.id = %account, ?tally, "account synced");
    Ok(())
}
