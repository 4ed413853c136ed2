//! Orders and fills: the venue's sets against the database's.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use uuid::Uuid;

use super::{Kind, MAX_PAGES, Run, ours};
use crate::{JobError, apply_venue_event::lifecycle_failure, venue_budget::venue_failure};
use pulse_domain::{
    lifecycle::{self, Applied, LifecycleError},
    status::OrderStatus,
    tenancy,
    venue::{Call, VenueError, VenueOrder},
};

/// An order of the account as the database holds it.
#[derive(Debug)]
struct Ours {
    id: Uuid,
    intent_id: Uuid,
    client_order_id: String,
    venue_order_id: Option<String>,
    symbol: String,
    status: OrderStatus,
    origin: String,
    ended: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    inflight_checks: i32,
}

impl Run<'_> {
    pub(super) async fn orders(&mut self) -> Result<(), JobError> {
        // The venue's side: what it listed since the cursor, then what is open now
        // (read last, so it is the freshest word on every order it names).
        let mut at_venue: HashMap<String, VenueOrder> = HashMap::new();
        let mut token: Option<String> = None;
        let mut newest = None;
        for _ in 0..MAX_PAGES {
            self.spend(Call::Orders).await?;
            let page = self
                .venue
                .orders_after(&self.symbols, self.orders_after, token.as_deref())
                .await
                .map_err(|e| venue_failure("reconcile: orders", e))?;
            for o in page.items {
                newest = newest.max(Some(o.created_at));
                at_venue.insert(o.client_order_id.clone(), o);
            }
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        // The cursor moves past what was read when the list is read to its end, or
        // when its pages run oldest first over the whole account: pages per symbol
        // (Binance) are oldest first within a symbol only, so a list cut short there
        // may have older orders of other symbols behind it.
        if token.is_none() || self.venue.pages_in_time_order() {
            self.next_orders_after = self.next_orders_after.max(newest);
        }
        self.spend(Call::OpenOrders).await?;
        let open = self
            .venue
            .list_open_orders()
            .await
            .map_err(|e| venue_failure("reconcile: open orders", e))?;
        let open_ids: HashSet<String> = open.iter().map(|o| o.client_order_id.clone()).collect();
        for o in open {
            at_venue.insert(o.client_order_id.clone(), o);
        }

        // The database's side: every order it still follows (any age), and every
        // order the venue named.
        let coids: Vec<String> = at_venue.keys().cloned().collect();
        let mut known = self.known(&coids).await?;

        // 1. Every order the venue named, against ours.
        let mut still_open_at_venue = vec![];
        for (coid, theirs) in &at_venue {
            match known.remove(coid) {
                None => self.import(theirs).await?,
                Some(o) if !o.status.is_submitted() => {
                    // In flight here, and the venue has it: its answer, at last.
                    self.apply(theirs).await?;
                    self.findings
                        .fixed(
                            &self.ctx.pool,
                            Kind::InFlight,
                            coid,
                            json!({"ours": o.status, "venue": theirs.status}),
                            "the venue has it: applied",
                        )
                        .await?;
                }
                Some(o) if o.status.is_terminal() && !theirs.is_terminal() => {
                    if open_ids.contains(coid) {
                        still_open_at_venue.push(coid.clone());
                        self.open_at_venue(&o, theirs).await?;
                    }
                }
                Some(o) if theirs.is_terminal() && (!o.status.is_terminal() || !o.ended) => {
                    let applied = self.apply(theirs).await?;
                    if applied.status_changed {
                        self.findings
                            .fixed(
                                &self.ctx.pool,
                                Kind::OrderState,
                                coid,
                                json!({"ours": o.status, "venue": theirs.status}),
                                "applied",
                            )
                            .await?;
                    }
                }
                Some(_) => {}
            }
        }
        self.findings
            .gone(
                &self.ctx.pool,
                Kind::OpenAtVenue,
                &still_open_at_venue,
                "the venue ended it",
            )
            .await?;

        // 2. What we still follow that the venue did not name: looked up one by one
        //    (a bounded number per run).
        let mut lookups = 0;
        let mut left: Vec<Ours> = known.into_values().collect();
        left.sort_by_key(|o| o.updated_at);
        for o in left {
            if lookups >= self.ctx.reconcile.max_lookups {
                break;
            }
            if o.status.is_submitted() {
                lookups += 1;
                self.look_up_working(&o).await?;
            } else if o.status != OrderStatus::PendingSubmit
                && Utc::now() - o.updated_at >= delta(self.ctx.reconcile.in_flight_after)
            {
                lookups += 1;
                self.look_up_in_flight(&o).await?;
            }
        }
        Ok(())
    }

    /// The account's orders the database still follows (working, in flight, or ended
    /// with the venue's final quantity unknown), and those with these client order ids.
    async fn known(&self, coids: &[String]) -> Result<HashMap<String, Ours>, JobError> {
        let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
        let rows = sqlx::query_as!(
            Ours,
            r#"SELECT id, intent_id, client_order_id, venue_order_id, symbol, status AS "status: OrderStatus", origin,
                      final_filled_quantity IS NOT NULL AS "ended!", created_at, updated_at, inflight_checks
               FROM orders
               WHERE account_id = $1
                 AND (client_order_id = ANY($2)
                      OR status IN ('sent', 'submit_unknown', 'accepted', 'partially_filled'))"#,
            self.account,
            coids,
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows
            .into_iter()
            .map(|o| (o.client_order_id.clone(), o))
            .collect())
    }

    /// Applies the venue's word on one order through the lifecycle.
    async fn apply(&self, theirs: &VenueOrder) -> Result<Applied, JobError> {
        let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
        let applied = lifecycle::apply_order(&mut tx, self.tenant, self.account, theirs).await;
        settle(tx, applied, "order").await
    }

    /// An order at the venue the database never knew: imported as external.
    async fn import(&mut self, theirs: &VenueOrder) -> Result<(), JobError> {
        let lost = ours(&theirs.client_order_id);
        let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
        let imported = lifecycle::import_external(
            &mut tx,
            self.tenant,
            self.account,
            &self.venue_id,
            theirs,
            lost,
        )
        .await;
        match imported {
            Ok(Some(_)) => tx.commit().await?,
            Ok(None) => return Ok(()),
            Err(LifecycleError::Implausible(why)) => {
                tracing::warn!("reconcile: not imported: {why}");
                return Ok(());
            }
            Err(e) => return Err(lifecycle_failure(e)),
        }
        // Its fills may predate the fill cursor: read them from its creation on.
        self.fills_after = self.fills_after.min(theirs.created_at - super::MARGIN);
        self.findings
            .fixed(&self.ctx.pool,
                Kind::UnknownOrder,
                &theirs.client_order_id,
                json!({"venue_order_id": theirs.id, "symbol": theirs.symbol, "side": theirs.side.as_str(),
                       "qty": theirs.qty, "venue_status": theirs.status, "ours_lost": lost}),
                "imported as an external order",
            )
            .await
    }

    /// Ended here, working there: an order we gave up on (resolved as never received,
    /// then received after all). It is cancelled at the venue, once per sighting, and
    /// stays reported until the venue ends it; its fills meanwhile are facts and are
    /// applied as any fill.
    async fn open_at_venue(&mut self, o: &Ours, theirs: &VenueOrder) -> Result<(), JobError> {
        let details =
            json!({"ours": o.status, "venue": theirs.status, "venue_order_id": theirs.id});
        let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
        let new = self
            .findings
            .open(
                &mut tx,
                Kind::OpenAtVenue,
                &o.client_order_id,
                details.clone(),
            )
            .await?;
        if new {
            tenancy::audit(
                &mut tx,
                "order_open_at_venue",
                "order",
                &o.id.to_string(),
                &details,
            )
            .await?;
        }
        tx.commit().await?;
        if o.origin == "oms" {
            self.spend(Call::CancelOrder).await?;
            match self.venue.cancel_order(&theirs.symbol, &theirs.id).await {
                Ok(()) | Err(VenueError::NotCancelable | VenueError::NotFound) => {}
                Err(e) => return Err(venue_failure("reconcile: cancel", e)),
            }
        }
        Ok(())
    }

    /// A working order the venue did not list: asked for by its id.
    async fn look_up_working(&mut self, o: &Ours) -> Result<(), JobError> {
        self.spend(Call::GetOrder).await?;
        let found = match &o.venue_order_id {
            Some(id) => self.venue.get_order(&o.symbol, id).await,
            None => {
                self.venue
                    .get_order_by_client_id(&o.symbol, &o.client_order_id)
                    .await
            }
        };
        match found {
            Ok(theirs) => {
                let applied = self.apply(&theirs).await?;
                if applied.status_changed {
                    self.findings
                        .fixed(
                            &self.ctx.pool,
                            Kind::OrderState,
                            &o.client_order_id,
                            json!({"ours": o.status, "venue": theirs.status}),
                            "applied",
                        )
                        .await?;
                }
                Ok(())
            }
            Err(VenueError::NotFound) => {
                // Venues forget old orders; ours says it is working: reported.
                let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
                self.findings
                    .open(
                        &mut tx,
                        Kind::OrderState,
                        &o.client_order_id,
                        json!({"ours": o.status, "venue": "not found"}),
                    )
                    .await?;
                tx.commit().await?;
                Ok(())
            }
            Err(e) => Err(venue_failure("reconcile: order look-up", e)),
        }
    }

    /// An order sent and unanswered past the threshold: looked up by client order id.
    /// Not found often enough, long enough after it was sent, with the OMS done with
    /// its intent: the venue never received it.
    async fn look_up_in_flight(&mut self, o: &Ours) -> Result<(), JobError> {
        self.spend(Call::GetOrder).await?;
        match self
            .venue
            .get_order_by_client_id(&o.symbol, &o.client_order_id)
            .await
        {
            Ok(theirs) => {
                self.apply(&theirs).await?;
                self.findings
                    .fixed(
                        &self.ctx.pool,
                        Kind::InFlight,
                        &o.client_order_id,
                        json!({"ours": o.status, "venue": theirs.status}),
                        "the venue has it: applied",
                    )
                    .await
            }
            Err(VenueError::NotFound) => self.not_received(o).await,
            Err(e) => Err(venue_failure("reconcile: in-flight look-up", e)),
        }
    }

    async fn not_received(&mut self, o: &Ours) -> Result<(), JobError> {
        let settings = &self.ctx.reconcile;
        let checks = o.inflight_checks + 1;
        let old_enough = Utc::now() - o.created_at >= delta(settings.never_received_after);
        let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
        let oms_done =
            sqlx::query_scalar!(r#"SELECT intent_job_finished($1) AS "done!""#, o.intent_id)
                .fetch_one(&mut *tx)
                .await?;
        if checks >= settings.never_received_lookups && old_enough && oms_done {
            let why = format!(
                "not found at the venue by client order id in {checks} look-ups over {}s",
                (Utc::now() - o.created_at).num_seconds()
            );
            let resolved =
                lifecycle::resolve_never_received(&mut tx, self.tenant, self.account, o.id, &why)
                    .await
                    .map_err(lifecycle_failure)?;
            tx.commit().await?;
            if resolved {
                self.findings
                    .fixed(
                        &self.ctx.pool,
                        Kind::InFlight,
                        &o.client_order_id,
                        json!({"ours": o.status, "venue": "not found", "lookups": checks}),
                        "never received: rejected, reservation released",
                    )
                    .await?;
            }
            return Ok(());
        }
        sqlx::query!(
            "UPDATE orders SET inflight_checks = inflight_checks + 1 WHERE id = $1",
            o.id
        )
        .execute(&mut *tx)
        .await?;
        self.findings
            .open(&mut tx, Kind::InFlight, &o.client_order_id,
                  json!({"ours": o.status, "venue": "not found", "lookups": checks,
                         "waiting_for": if oms_done { "more look-ups" } else { "the OMS, still working on it" }}))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The fills since `since` the database lacks, applied. A fill of an order the
    /// database does not know brings the order in first (ours in flight: its answer;
    /// anyone else's: imported).
    pub(super) async fn fills(&mut self, since: DateTime<Utc>) -> Result<(), JobError> {
        let mut token: Option<String> = None;
        let mut newest = None;
        for _ in 0..MAX_PAGES {
            self.spend(Call::Fills).await?;
            let page = self
                .venue
                .fills(&self.symbols, Some(since), token.as_deref())
                .await
                .map_err(|e| venue_failure("reconcile: fills", e))?;
            let keys: Vec<String> = page.items.iter().map(|f| f.key()).collect();
            let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
            let recorded: HashSet<String> = sqlx::query_scalar!(
                "SELECT venue_fill_id FROM fills WHERE venue_fill_id = ANY($1)",
                &keys
            )
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            tx.commit().await?;
            for fill in &page.items {
                newest = newest.max(Some(fill.at));
                if recorded.contains(&fill.key()) {
                    continue;
                }
                let mut applied = self.apply_fill(fill).await?;
                if applied.unknown_order {
                    self.spend(Call::GetOrder).await?;
                    let theirs = self
                        .venue
                        .get_order(&fill.symbol, &fill.order_id)
                        .await
                        .map_err(|e| venue_failure("reconcile: order of a fill", e))?;
                    if self.apply(&theirs).await?.unknown_order {
                        self.import(&theirs).await?;
                    }
                    applied = self.apply_fill(fill).await?;
                }
                crate::trading_metrics::fill_applied(self.ctx, "reconcile", fill, &applied);
                if applied.fill_recorded {
                    self.findings
                        .fixed(&self.ctx.pool, Kind::MissingFill, &fill.key(),
                               json!({"venue_fill_id": fill.id, "qty": fill.qty, "price": fill.price, "at": fill.at}),
                               "applied")
                        .await?;
                }
            }
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        // As for orders.
        if token.is_none() || self.venue.pages_in_time_order() {
            self.next_fills_after = self.next_fills_after.max(newest);
        }
        Ok(())
    }

    async fn apply_fill(&self, fill: &pulse_domain::venue::Fill) -> Result<Applied, JobError> {
        let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
        let applied = lifecycle::apply_fill(&mut tx, self.tenant, self.account, fill).await;
        settle(tx, applied, "fill").await
    }
}

/// Ends the transaction of one lifecycle event: committed when applied; an impossible
/// report (the lifecycle wrote nothing) is logged and skipped, so it holds up no other
/// event of the run.
async fn settle(
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    applied: Result<Applied, LifecycleError>,
    what: &str,
) -> Result<Applied, JobError> {
    match applied {
        Ok(applied) => {
            tx.commit().await?;
            Ok(applied)
        }
        Err(LifecycleError::Implausible(why)) => {
            tracing::warn!("reconcile: {what} skipped: {why}");
            Ok(Applied::default())
        }
        Err(e) => Err(lifecycle_failure(e)),
    }
}

fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}
