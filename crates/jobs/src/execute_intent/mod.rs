//! `execute_intent`: the OMS. A multi-leg intent becomes one broker order per leg.
//!
//! Enqueued by the trigger on `multi_leg_intents`, keyed by the intent id. Runs in
//! transactions confined to the intent's tenant (row-level security).
//!
//! 1. Plan (`plan.rs`), in one transaction, together with the other intents of the
//!    tenant asking at the same moment: validate the legs (a bad intent fails with a
//!    readable reason and an audit event); kill switches; risk limits; entry locks
//!    per (account, symbol), so two intents on one account and symbol run one after
//!    the other (the second snoozes); capital reserved through the journal, which
//!    the database refuses beyond the ledger invariant, in the same transaction that
//!    writes the order rows. Client order ids derive from (tenant, intent, leg).
//! 2. Submit each leg. An outcome that is unknown (timeout, lost answer, 5xx) leaves
//!    the order `submit_unknown` and the job retries; every retry first looks each
//!    order up by its client order id and never resends blindly.
//! 3. A definitively rejected leg releases its reservation, and its siblings are
//!    cancelled, or closed by an opposite market order when already filled; the
//!    intent fails. Every risk action writes an audit event.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Job, JobContext, JobError};
use pulse_domain::{
    Services, secrets,
    status::{IntentStatus, OrderStatus},
    tenancy,
    venue::{self, OrderRequest, OrderType, Side, Venue, VenueError, VenueOrder},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteIntent {
    pub intent_id: Uuid,
    pub tenant_id: Uuid,
}

/// How long an entry lock lasts if its holder dies.
const LOCK_TTL_SECS: f64 = 60.0;
/// Legs at or above this index are unwind orders.
const UNWIND_BASE: i32 = 1000;

mod group;
mod plan;
pub use plan::plan_together;
use plan::{Planned, Verdict};

/// This process's batches of intents, per tenant (see `group.rs`): planning, and
/// recording the venue's answers when every leg was accepted.
#[derive(Default)]
pub struct IntentBatches {
    plan: Arc<group::GroupCommit<Uuid, Verdict>>,
    settle: Arc<group::GroupCommit<Settlement, ()>>,
}

/// A client order id: the same for (tenant, intent, leg) on every attempt, at most
/// 48 characters (the strictest Alpaca API's limit), letters, digits and dashes.
pub fn client_order_id(tenant: Uuid, intent: Uuid, leg: i32) -> String {
    let digest = Sha256::digest(format!("{tenant}:{intent}:{leg}").as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("pf{hex}-{leg}")
}

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    intent_id: Uuid,
    id: Uuid,
    leg_index: i32,
    account_id: Uuid,
    venue_id: String,
    symbol: String,
    side: String,
    quantity: Decimal,
    order_type: String,
    limit_price: Option<Decimal>,
    time_in_force: String,
    client_order_id: String,
    venue_order_id: Option<String>,
    status: OrderStatus,
    reserved_amount: Decimal,
}

impl OrderRow {
    fn request(&self) -> OrderRequest {
        OrderRequest {
            symbol: self.symbol.clone(),
            qty: self.quantity,
            side: if self.side == "buy" {
                Side::Buy
            } else {
                Side::Sell
            },
            order_type: if self.order_type == "limit" {
                OrderType::Limit
            } else {
                OrderType::Market
            },
            time_in_force: self.time_in_force.clone(),
            limit_price: self.limit_price,
            client_order_id: self.client_order_id.clone(),
        }
    }

    /// It may already exist at the venue: it was released for sending (`sent`) or its
    /// answer was lost (`submit_unknown`). Whatever the attempt count (snoozes and
    /// hand-backs refund attempts), it is looked up by client order id before anything
    /// is sent again.
    fn may_exist_at_venue(&self) -> bool {
        self.status != OrderStatus::PendingSubmit
    }

    /// Settled at submission: the venue has it (or refused it for good).
    fn submitted(&self) -> bool {
        self.status.is_submitted()
    }
}

impl Job for ExecuteIntent {
    const NAME: &'static str = "execute_intent";
    const MAX_ATTEMPTS: i32 = 20;
    const TIMEOUT: Duration = Duration::from_secs(120);
    const BACKOFF: crate::Backoff = crate::Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(30),
        jitter: 0.25,
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let (tenant, intent) = (self.tenant_id, self.intent_id);
        let verdict = plan::plan(&ctx, tenant, intent)
            .await
            .map_err(JobError::retryable)?;
        match verdict {
            Verdict::Missing => Err(JobError::permanent(format!(
                "no intent {intent} in tenant {tenant}"
            ))),
            Verdict::NotPending(status) if status.is_final() => Ok(()),
            Verdict::NotPending(_) => submit_all(&ctx, tenant, intent, None).await,
            Verdict::Planned(Planned {
                orders,
                clients,
                wait,
            }) => {
                if let Some(wait) = wait {
                    return Err(JobError::Snooze(wait));
                }
                submit_all(
                    &ctx,
                    tenant,
                    intent,
                    Some(Prepared {
                        legs: orders,
                        clients,
                    }),
                )
                .await
            }
            Verdict::Refused { event, reason } => fail(&ctx, tenant, intent, event, &reason).await,
            Verdict::Locked => Err(JobError::Snooze(Duration::from_millis(100))),
            Verdict::Retry(why) => Err(JobError::retryable(why)),
        }
    }
}

/// How an intent ends for this job: its status (and reason), and its audit event.
struct Ending<'a> {
    intent: Uuid,
    status: IntentStatus,
    reason: Option<&'a str>,
    event: &'a str,
    details: Value,
}

/// Moves intents to their final state for this job (status, reason), releases their
/// entry locks and records their audit events, in one statement: one place for every
/// way an intent ends.
async fn settle_intents(
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
struct Settlement {
    intent: Uuid,
    accepted: Vec<(Uuid, VenueOrder)>,
    filled: bool,
    legs: usize,
}

/// Records settlements in one transaction: the orders' venue answers, then the
/// intents' endings.
async fn settle_batch(pool: &sqlx::PgPool, tenant: Uuid, batch: &[Settlement]) -> sqlx::Result<()> {
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
async fn fail(
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

async fn load_orders(
    tx: &mut Transaction<'_, Postgres>,
    intent: Uuid,
) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as!(
        OrderRow,
        r#"SELECT intent_id, id, leg_index, account_id, venue_id, symbol, side, quantity, order_type,
                  limit_price, time_in_force, client_order_id, venue_order_id,
                  status AS "status: OrderStatus", reserved_amount
           FROM orders WHERE intent_id = $1 ORDER BY leg_index"#,
        intent,
    )
    .fetch_all(&mut **tx)
    .await
}

async fn orders(ctx: &JobContext, tenant: Uuid, intent: Uuid) -> Result<Vec<OrderRow>, JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let rows = load_orders(&mut tx, intent).await?;
    tx.commit().await?;
    Ok(rows)
}

type Credentials = Vec<(Uuid, Option<String>, String)>;
/// The client the OMS speaks to a venue with.
pub(super) type VenueClient = std::sync::Arc<dyn Venue>;
type Clients = HashMap<Uuid, Result<VenueClient, String>>;

async fn load_credentials(
    tx: &mut Transaction<'_, Postgres>,
    legs: &[&OrderRow],
) -> sqlx::Result<Credentials> {
    let accounts: Vec<Uuid> = legs
        .iter()
        .map(|o| o.account_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = sqlx::query!(
        "SELECT account_id, identifier, secret_ref FROM account_credentials
         WHERE account_id = ANY($1) AND credential_type = 'api_key'",
        &accounts,
    )
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.account_id, r.identifier, r.secret_ref))
        .collect())
}

/// The venue client of one account, or why there is none.
pub(super) fn venue_client(
    services: &Services,
    account: Uuid,
    venue_id: &str,
    key_id: Option<&str>,
    secret_ref: &str,
) -> Result<VenueClient, String> {
    let base = services
        .venue_urls
        .get(venue_id)
        .ok_or_else(|| format!("no URL configured for venue {venue_id}"))?;
    let key = services.secrets_key;
    let secret = secrets::resolve_with(
        secret_ref,
        |n| std::env::var(n).ok(),
        || key.ok_or(secrets::SecretError::NoKey),
    )
    .map_err(|e| format!("credential of account {account}: {e}"))?;
    venue::connect(
        venue_id,
        venue::Connection {
            http: services.http.clone(),
            base_url: base,
            data_url: services.market_data_url(venue_id).unwrap_or(base),
            key_id: key_id.unwrap_or_default(),
            secret,
        },
    )
}

/// The venue clients of the legs' accounts; an account whose client cannot be built
/// maps to the reason.
fn build_clients(services: &Services, creds: &Credentials, legs: &[&OrderRow]) -> Clients {
    let mut out = HashMap::new();
    for leg in legs {
        if out.contains_key(&leg.account_id) {
            continue;
        }
        let client = creds
            .iter()
            .find(|c| c.0 == leg.account_id)
            .ok_or_else(|| format!("account {} has no api_key credential", leg.account_id))
            .and_then(|(_, key_id, secret_ref)| {
                venue_client(
                    services,
                    leg.account_id,
                    &leg.venue_id,
                    key_id.as_deref(),
                    secret_ref,
                )
            });
        out.insert(leg.account_id, client);
    }
    out
}

/// The venue clients of `legs`, for an attempt that goes on with an intent planned
/// earlier; the intent's entry locks are renewed in the same transaction.
async fn clients(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    legs: &[&OrderRow],
) -> Result<Clients, JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    renew_locks(&mut tx, intent).await?;
    let creds = load_credentials(&mut tx, legs).await?;
    tx.commit().await?;
    Ok(build_clients(&ctx.services, &creds, legs))
}

/// An intent holds its entry locks from planning until it settles, over any number
/// of attempts; each attempt, and each `LOCK_TTL_SECS / 3` within a long one, pushes
/// their expiry forward, so only a dead holder's locks expire.
async fn renew_locks(tx: &mut Transaction<'_, Postgres>, intent: Uuid) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE entry_locks SET expires_at = now() + make_interval(secs => $2) WHERE owner_token = $1",
        intent,
        LOCK_TTL_SECS,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Takes one request from the account's per-minute budget, or says how long to wait.
async fn take_budget(
    ctx: &JobContext,
    tenant: Uuid,
    account: Uuid,
) -> Result<Option<Duration>, JobError> {
    take_budgets(ctx, tenant, &[(account, 1)]).await
}

/// How long to wait for the next window when a budget is spent.
fn over_budget(per_minute: i32, used: &[i32]) -> Option<Duration> {
    if used.iter().any(|u| *u > per_minute) {
        let secs_left = 60 - (chrono::Utc::now().timestamp() % 60);
        return Some(Duration::from_secs(secs_left as u64));
    }
    None
}

async fn take_budgets(
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
fn budget_wants(legs: &[&OrderRow]) -> Vec<(Uuid, i32)> {
    let mut wants: HashMap<Uuid, i32> = HashMap::new();
    for leg in legs {
        let calls = if leg.may_exist_at_venue() { 2 } else { 1 };
        *wants.entry(leg.account_id).or_default() += calls;
    }
    wants.into_iter().collect()
}

/// What planning already loaded, so the first attempt needs no extra transactions.
struct Prepared {
    legs: Vec<OrderRow>,
    clients: Clients,
}

/// What submitting (or looking up) one leg came to.
enum LegOutcome {
    Accepted(VenueOrder),
    Rejected(String),
    Unknown(String),
    /// Never reached the venue (not sent, or looked up and not there): nothing to
    /// undo, its reservation goes back.
    NotPlaced,
}

/// Releases an intent's unsent legs for submission, in one transaction that checks
/// that no kill switch of the tenant or of the legs' accounts is engaged and that the
/// intent still holds every one of its entry locks (renewing them), and marks the
/// orders `sent` before any request goes out, so any later attempt looks them up
/// before sending anything. (The first attempt is released by planning itself, in the
/// transaction that checked the switches and took the locks.) Returns the legs sent for
/// the first time (any other may exist at the venue already and is looked up before
/// anything is sent), or why the intent must stop: a kill switch of the tenant or of
/// a leg's account is engaged, or the intent no longer holds all its entry locks (they
/// expired and may have been taken), so it must not trade on them.
async fn release_legs(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    legs: &[&OrderRow],
    locks: i64,
) -> Result<Result<BTreeSet<Uuid>, Halt>, JobError> {
    let ids: Vec<Uuid> = legs.iter().map(|o| o.id).collect();
    let accounts: Vec<Uuid> = legs.iter().map(|o| o.account_id).collect();
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let released = sqlx::query!(
        r#"WITH ks AS (
             SELECT coalesce(reason, 'no reason given') AS reason,
                    CASE WHEN account_id IS NULL THEN 'the tenant' ELSE 'account ' || account_id END AS scope
             FROM kill_switches WHERE engaged AND (account_id IS NULL OR account_id = ANY($2))
             ORDER BY account_id NULLS FIRST LIMIT 1),
         locks AS (
             UPDATE entry_locks SET expires_at = now() + make_interval(secs => $5)
             WHERE owner_token = $1 RETURNING 1),
         sent AS (
             UPDATE orders SET status = 'sent', updated_at = now()
             WHERE id = ANY($3) AND status = 'pending_submit'
               AND NOT EXISTS (SELECT 1 FROM ks) AND (SELECT count(*) FROM locks) = $4
             RETURNING id)
         SELECT (SELECT 'kill switch engaged for ' || scope || ': ' || reason FROM ks) AS killed,
                (SELECT count(*) FROM locks) AS "held!", ARRAY(SELECT id FROM sent) AS "fresh!""#,
        intent,
        &accounts,
        &ids,
        locks,
        LOCK_TTL_SECS,
    )
    .fetch_one(&mut *tx)
    .await?;
    let (killed, held, fresh) = (released.killed, released.held, released.fresh);
    tx.commit().await?;
    Ok(match killed {
        Some(reason) => Err(Halt::Stopped {
            event: "kill_switch_blocked",
            reason,
        }),
        None if held != locks => Err(Halt::Stopped {
            event: "entry_lock_lost",
            reason: "the intent lost its entry locks before all legs were sent".into(),
        }),
        None => Ok(fresh.into_iter().collect()),
    })
}

/// How many entry locks an intent holds while it runs: one per (account, symbol).
fn lock_count(legs: &[OrderRow]) -> i64 {
    legs.iter()
        .filter(|o| o.leg_index < UNWIND_BASE)
        .map(|o| (o.account_id, o.symbol.as_str()))
        .collect::<BTreeSet<_>>()
        .len() as i64
}

fn snooze_or(
    e: VenueError,
    otherwise: impl FnOnce(VenueError) -> LegOutcome,
) -> Result<LegOutcome, JobError> {
    match e {
        VenueError::RateLimited { retry_after } => Err(JobError::Snooze(retry_after)),
        e => Ok(otherwise(e)),
    }
}

/// Submits one order; when it may have been sent before (`look_up_first`), it is
/// looked up by client order id first and never resent blindly.
async fn submit_one(
    venue: &VenueClient,
    look_up_first: bool,
    order: &OrderRow,
) -> Result<LegOutcome, JobError> {
    if look_up_first {
        match venue.get_order_by_client_id(&order.client_order_id).await {
            Ok(found) => return Ok(LegOutcome::Accepted(found)),
            Err(VenueError::NotFound) => {}
            Err(e) => return snooze_or(e, |e| LegOutcome::Unknown(e.to_string())),
        }
    }
    match venue.create_order(&order.request()).await {
        Ok(accepted) => Ok(LegOutcome::Accepted(accepted)),
        // Sent by an attempt this one cannot know about (its record was lost): adopt it.
        Err(VenueError::DuplicateClientOrderId) => {
            match venue.get_order_by_client_id(&order.client_order_id).await {
                Ok(found) => Ok(LegOutcome::Accepted(found)),
                Err(e) => snooze_or(e, |e| LegOutcome::Unknown(e.to_string())),
            }
        }
        Err(
            e @ (VenueError::Rejected { .. } | VenueError::Unauthorized | VenueError::NotFound),
        ) => Ok(LegOutcome::Rejected(e.to_string())),
        Err(e) => snooze_or(e, |e| LegOutcome::Unknown(e.to_string())),
    }
}

/// Finds out what became of a leg without sending anything: for an intent that is
/// being unwound, where no new order may go out.
async fn resolve(venue: &VenueClient, order: &OrderRow) -> Result<LegOutcome, JobError> {
    if !order.may_exist_at_venue() {
        return Ok(LegOutcome::NotPlaced);
    }
    match venue.get_order_by_client_id(&order.client_order_id).await {
        Ok(found) => Ok(LegOutcome::Accepted(found)),
        Err(VenueError::NotFound) => Ok(LegOutcome::NotPlaced),
        Err(e) => snooze_or(e, |e| LegOutcome::Unknown(e.to_string())),
    }
}

/// Moves one order to `status` (a leg's answer that carries no venue order).
async fn set_status(
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

async fn record(
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
async fn record_accepted(
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
async fn release(
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

/// Why an attempt stopped going through the legs.
enum Halt {
    /// A leg was rejected for good: the intent unwinds.
    Rejected(i32),
    /// A kill switch, or a lost entry lock: the intent stops and unwinds.
    Stopped { event: &'static str, reason: String },
    /// The venue's rate limit: what was learnt is recorded, then the job snoozes.
    Snooze(Duration),
}

async fn submit_all(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    prepared: Option<Prepared>,
) -> Result<(), JobError> {
    let (legs, ready) = match prepared {
        Some(p) => (p.legs, Some(p.clients)),
        None => (orders(ctx, tenant, intent).await?, None),
    };
    let pending: Vec<&OrderRow> = legs
        .iter()
        .filter(|o| !o.submitted() && o.leg_index < UNWIND_BASE)
        .collect();
    // A leg rejected by an earlier attempt: nothing new goes out, what is pending is
    // only looked up, and the intent unwinds.
    let mut halt = legs
        .iter()
        .find(|o| o.status == OrderStatus::Rejected && o.leg_index < UNWIND_BASE)
        .map(|o| Halt::Rejected(o.leg_index));
    let locks = lock_count(&legs);
    let mut outcomes = Vec::with_capacity(pending.len());
    if !pending.is_empty() {
        let (clients, fresh) = match ready {
            // Released by planning a moment ago: every leg goes out for the first time.
            Some(c) => (c, pending.iter().map(|o| o.id).collect()),
            None => {
                let c = clients(ctx, tenant, intent, &pending).await?;
                if let Some(wait) = take_budgets(ctx, tenant, &budget_wants(&pending)).await? {
                    return Err(JobError::Snooze(wait));
                }
                let fresh = if halt.is_some() {
                    BTreeSet::new()
                } else {
                    release_legs(ctx, tenant, intent, &pending, locks)
                        .await?
                        .unwrap_or_else(|stop| {
                            halt = Some(stop);
                            BTreeSet::new()
                        })
                };
                (c, fresh)
            }
        };
        let mut renewed = std::time::Instant::now();
        for leg in &pending {
            if renewed.elapsed().as_secs_f64() > LOCK_TTL_SECS / 3.0 {
                let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
                renew_locks(&mut tx, intent).await?;
                tx.commit().await?;
                renewed = std::time::Instant::now();
            }
            let venue = match &clients[&leg.account_id] {
                Ok(venue) => venue,
                Err(reason) if halt.is_none() => {
                    outcomes.push((*leg, LegOutcome::Rejected(reason.clone())));
                    halt = Some(Halt::Rejected(leg.leg_index));
                    continue;
                }
                Err(reason) => return Err(JobError::retryable(reason.clone())),
            };
            // Once the intent is stopping, nothing new goes out: legs are only looked up.
            let outcome = if halt.is_some() {
                resolve(venue, leg).await
            } else {
                submit_one(venue, !fresh.contains(&leg.id), leg).await
            };
            match outcome {
                Ok(outcome) => {
                    if halt.is_none()
                        && let LegOutcome::Rejected(_) = outcome
                    {
                        halt = Some(Halt::Rejected(leg.leg_index));
                    }
                    outcomes.push((*leg, outcome));
                }
                Err(JobError::Snooze(wait)) => {
                    // Keep what the venue already answered: record it, then wait.
                    halt = Some(Halt::Snooze(wait));
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    let unknown = outcomes.iter().find_map(|(l, o)| match o {
        LegOutcome::Unknown(e) => Some(format!(
            "leg {}: outcome unknown ({e}); will look it up by client order id",
            l.leg_index
        )),
        _ => None,
    });
    // The venue's answers for accepted legs, apart from the others.
    let mut accepted: Vec<(Uuid, VenueOrder)> = vec![];
    let mut others = vec![];
    for (leg, outcome) in outcomes {
        match outcome {
            LegOutcome::Accepted(v) => accepted.push((leg.id, v)),
            other => others.push((leg, other)),
        }
    }
    if halt.is_none() && unknown.is_none() {
        // Every leg accepted: recorded in a batch with the tenant's other intents.
        let filled = legs.iter().all(|o| {
            accepted
                .iter()
                .find(|(id, _)| *id == o.id)
                .map(|(_, v)| v.status == OrderStatus::Filled)
                .unwrap_or(o.status == OrderStatus::Filled)
        });
        let settlement = Settlement {
            intent,
            accepted,
            filled,
            legs: legs.len(),
        };
        let pool = ctx.pool.clone();
        return ctx
            .intent_batches
            .settle
            .submit(tenant, settlement, move |batch: Vec<Settlement>| {
                let pool = pool.clone();
                async move {
                    let n = batch.len();
                    match settle_batch(&pool, tenant, &batch).await {
                        Ok(()) => (0..n).map(|_| Ok(())).collect(),
                        Err(e) => (0..n).map(|_| Err(e.to_string())).collect(),
                    }
                }
            })
            .await
            .map_err(JobError::retryable);
    }
    // Every outcome in one transaction.
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let accepted: Vec<(Uuid, &VenueOrder)> = accepted.iter().map(|(id, v)| (*id, v)).collect();
    record_accepted(&mut tx, &accepted).await?;
    for (leg, outcome) in &others {
        record(&mut tx, tenant, intent, leg, outcome).await?;
    }
    tx.commit().await?;
    match halt {
        Some(Halt::Snooze(wait)) => Err(JobError::Snooze(wait)),
        Some(Halt::Rejected(leg)) => {
            let reason = format!(
                "leg {leg} was rejected by the venue; the other legs were cancelled or closed"
            );
            unwind(ctx, tenant, intent, "intent_unwound", &reason).await
        }
        Some(Halt::Stopped { event, reason }) => {
            let reason = format!("{reason}; the legs sent were cancelled or closed");
            unwind(ctx, tenant, intent, event, &reason).await
        }
        None => Err(JobError::retryable(unknown.unwrap_or_default())),
    }
}

/// The intent fails (a leg was rejected, a kill switch was engaged, its locks were
/// lost): every leg not rejected is first resolved at the venue by client order id
/// (an attempt retries while any outcome is still unknown, so no leg is ever
/// skipped); legs that never reached the venue give their reservation back; open ones
/// are cancelled and the filled part of the others closed with opposite market
/// orders (their own deterministic ids). Then the intent fails with `reason`.
async fn unwind(
    ctx: &JobContext,
    tenant: Uuid,
    intent: Uuid,
    event: &str,
    reason: &str,
) -> Result<(), JobError> {
    let legs = orders(ctx, tenant, intent).await?;
    let siblings: Vec<&OrderRow> = legs
        .iter()
        .filter(|o| o.leg_index < UNWIND_BASE && o.status != OrderStatus::Rejected)
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
        let current = match venue.get_order(venue_id).await {
            Ok(o) => o,
            Err(VenueError::RateLimited { retry_after }) => {
                return Err(JobError::Snooze(retry_after));
            }
            Err(e) => {
                return Err(JobError::retryable(format!(
                    "unwinding leg {}: {e}",
                    leg.leg_index
                )));
            }
        };
        if !current.is_terminal() {
            match venue.cancel_order(venue_id).await {
                Ok(()) | Err(VenueError::NotCancelable) | Err(VenueError::NotFound) => {}
                Err(VenueError::RateLimited { retry_after }) => {
                    return Err(JobError::Snooze(retry_after));
                }
                Err(e) => {
                    return Err(JobError::retryable(format!(
                        "cancelling leg {}: {e}",
                        leg.leg_index
                    )));
                }
            }
        }
        let filled = venue
            .get_order(venue_id)
            .await
            .map(|o| o.filled_qty)
            .unwrap_or(current.filled_qty);
        if filled > Decimal::ZERO {
            close_filled(ctx, tenant, intent, leg, filled, venue).await?;
        }
        let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
        sqlx::query!(
            "UPDATE orders SET status = 'cancelled', filled_quantity = $2, updated_at = now() WHERE id = $1",
            leg.id,
            filled,
        )
            .execute(&mut *tx)
            .await?;
        release(&mut tx, tenant, leg).await?;
        tx.commit().await?;
    }
    fail(ctx, tenant, intent, event, reason).await
}

/// The opposite market order that closes a filled leg: an order row of its own (with
/// its own deterministic id), submitted like any leg, always looked up first.
async fn close_filled(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_order_ids_are_deterministic_distinct_and_short() {
        let (tenant, i) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(client_order_id(tenant, i, 0), client_order_id(tenant, i, 0));
        assert_ne!(client_order_id(tenant, i, 0), client_order_id(tenant, i, 1));
        assert_ne!(
            client_order_id(tenant, i, 0),
            client_order_id(Uuid::from_u128(3), i, 0)
        );
        assert!(client_order_id(tenant, i, 1001).len() <= 48);
    }
}
