//! Planning: an intent's legs become order rows with capital reserved, in one
//! transaction, after validation, kill switches, risk limits and entry locks.
//!
//! Intents of one tenant that are planned at the same moment in this process are
//! planned together, in one transaction of set-oriented statements (`group.rs`):
//! the per-account rows every intent must lock (the capital ledger, the venue request
//! budget) are then locked and committed once per batch instead of once per intent,
//! and a batch costs about as many round trips as one intent. Each intent still gets
//! its own verdict; when the database refuses a batch's reservation (the capital
//! invariant), its intents are planned again one by one, so only the intent that
//! does not fit is refused.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    str::FromStr,
    time::Duration,
};

use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    Clients, Credentials, LOCK_TTL_SECS, OrderRow, Taken, build_clients, client_order_id,
    over_budget,
};
use crate::JobContext;
use pulse_domain::{
    Services,
    status::{IntentStatus, OrderStatus},
    tenancy,
    venue::{MAX_TRUSTED_PRICE, OrderType, Side, TimeInForce, VenueError},
};

#[derive(Debug, Clone)]
pub(super) struct Leg {
    pub account_id: Uuid,
    pub symbol: String,
    pub side: Side,
    pub quantity: Decimal,
    pub order_type: OrderType,
    pub limit_price: Option<Decimal>,
    pub time_in_force: TimeInForce,
    /// What the client says the price is: used only when it is higher than what the
    /// fleet trusts (a client can make a leg look dearer, never cheaper).
    pub reference_price: Option<Decimal>,
    /// The price risk checks and reservations use (see [`price_legs`]); zero until
    /// priced.
    pub price: Decimal,
    /// The venue's minimum notional for the instrument, if it has one.
    pub min_notional: Option<Decimal>,
}

/// The most legs an intent may have.
pub(super) const MAX_LEGS: usize = 16;
/// Bounds of what a client may ask for. With them, a leg's notional stays below
/// 10^17 (orders.reserved_amount is numeric(28, 10)) and no product can overflow.
pub(super) const MAX_QUANTITY: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
pub(super) const MAX_DECIMALS: u32 = 10;

impl Leg {
    /// quantity x price, rounded to the database's scale; `None` if it overflows
    /// (it cannot within the bounds, but nothing here may panic).
    fn notional(&self) -> Option<Decimal> {
        self.quantity
            .checked_mul(self.price)
            .map(|n| n.round_dp(MAX_DECIMALS))
    }

    /// The notional of a priced leg ([`price_legs`] refused any that overflows).
    fn value(&self) -> Decimal {
        self.notional().unwrap_or(Decimal::MAX)
    }
}

fn decimal(v: Option<&Value>) -> Option<Decimal> {
    match v? {
        Value::String(s) => Decimal::from_str(s).ok(),
        Value::Number(n) => Decimal::from_str(&n.to_string()).ok(),
        _ => None,
    }
}

/// A positive amount within `max` with at most [`MAX_DECIMALS`] places.
fn bounded(v: Option<&Value>, max: Decimal) -> Option<Decimal> {
    decimal(v).filter(|d| *d > Decimal::ZERO && *d <= max && d.normalize().scale() <= MAX_DECIMALS)
}

/// A symbol as venues spell them: letters and digits, then also `.`, `-`, `/`
/// (classes, crypto pairs), never two dots (it becomes a URL path segment).
fn symbol_ok(s: &str) -> bool {
    s.len() <= 32
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && !s.contains("..")
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'/'))
}

/// A client's name for something, as a reason may quote it: at most 40 printable
/// characters.
fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(40).collect()
}

/// The tenant's default account per venue id: where a leg naming only a venue trades.
pub(super) type Defaults = HashMap<String, Uuid>;

/// The platform's own shape of legs (seed 000): an object of named legs, each with
/// `venue`, `symbol`, `side`, `size`, optional `price` and `order_type`, turned into
/// the array form. A leg without `order_type` is a limit order at its `price` if it
/// has one, else a market order; a market leg's `price` is only a reference (it can
/// make the leg look dearer, never cheaper). Legs are in key order.
fn platform_legs(
    legs: &serde_json::Map<String, Value>,
    defaults: &Defaults,
) -> Result<(Vec<String>, Vec<Value>), String> {
    let mut names = vec![];
    let mut items = vec![];
    for (name, leg) in legs {
        let name = shown(name);
        let bad = |what: &str| format!("leg {name}: {what}");
        let leg = leg.as_object().ok_or_else(|| bad("must be an object"))?;
        let account = match (
            leg.get("account_id"),
            leg.get("venue").and_then(Value::as_str),
        ) {
            (Some(account), _) => account.clone(),
            (None, Some(venue)) => {
                let venue = venue.to_ascii_lowercase();
                let id = defaults.get(&venue).ok_or_else(|| {
                    bad(&format!(
                        "no default account for venue {:?}: mark one of the tenant's accounts there as its default",
                        shown(&venue)
                    ))
                })?;
                Value::String(id.to_string())
            }
            (None, None) => return Err(bad("venue (or account_id) is required")),
        };
        let price = leg.get("price").filter(|p| !p.is_null()).cloned();
        let order_type = match leg.get("order_type").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None if price.is_some() => "limit".into(),
            None => "market".into(),
        };
        let mut item = serde_json::Map::new();
        item.insert("account_id".into(), account);
        for (from, to) in [("symbol", "symbol"), ("side", "side"), ("size", "quantity")] {
            if let Some(v) = leg.get(from) {
                item.insert(to.into(), v.clone());
            }
        }
        if let Some(price) = price {
            let field = if order_type == "limit" {
                "limit_price"
            } else {
                "reference_price"
            };
            item.insert(field.into(), price);
        }
        item.insert("type".into(), Value::String(order_type));
        names.push(name);
        items.push(Value::Object(item));
    }
    Ok((names, items))
}

/// Reads and checks the legs, in either form (an array, or the platform's object of
/// named legs resolved against `defaults`); the error is the reason given to the user.
pub(super) fn parse_legs(legs: &Value, defaults: &Defaults) -> Result<Vec<Leg>, String> {
    let converted;
    let (names, items): (Option<&[String]>, &[Value]) = match legs {
        Value::Object(map) if !map.is_empty() => {
            if map.len() > MAX_LEGS {
                return Err(format!("an intent has at most {MAX_LEGS} legs"));
            }
            converted = platform_legs(map, defaults)?;
            (Some(&converted.0), &converted.1)
        }
        _ => (
            None,
            legs.as_array()
                .filter(|a| !a.is_empty())
                .ok_or("legs must be a non-empty array, or an object of named legs")?,
        ),
    };
    if items.len() > MAX_LEGS {
        return Err(format!("an intent has at most {MAX_LEGS} legs"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let label = names.map_or_else(|| i.to_string(), |n| n[i].clone());
            let bad = |what: &str| format!("leg {label}: {what}");
            let account_id = l
                .get("account_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| bad("account_id must be a uuid"))?;
            let symbol = l
                .get("symbol")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("symbol is required"))?;
            if !symbol_ok(symbol) {
                return Err(bad(
                    "symbol must be 1 to 32 letters, digits, '.', '-' or '/', starting with a letter or digit",
                ));
            }
            let side = match l.get("side").and_then(Value::as_str) {
                Some("buy") => Side::Buy,
                Some("sell") => Side::Sell,
                _ => return Err(bad("side must be buy or sell")),
            };
            let quantity = bounded(l.get("quantity"), MAX_QUANTITY).ok_or_else(|| {
                bad(&format!(
                    "quantity must be a positive number up to {MAX_QUANTITY} with at most {MAX_DECIMALS} decimal places"
                ))
            })?;
            let order_type = match l.get("type").and_then(Value::as_str).unwrap_or("market") {
                "market" => OrderType::Market,
                "limit" => OrderType::Limit,
                other => {
                    return Err(bad(&format!(
                        "type {other} is not supported (market, limit)"
                    )));
                }
            };
            // An optional price: absent, or within the bounds.
            let price = |field: &str| match l.get(field) {
                None | Some(Value::Null) => Ok(None),
                v => bounded(v, MAX_TRUSTED_PRICE).map(Some).ok_or_else(|| {
                    bad(&format!(
                        "{field} must be a positive number up to {MAX_TRUSTED_PRICE} with at most {MAX_DECIMALS} decimal places"
                    ))
                }),
            };
            let limit_price = price("limit_price")?;
            if order_type == OrderType::Limit && limit_price.is_none() {
                return Err(bad("a limit leg needs a positive limit_price"));
            }
            let reference_price = price("reference_price")?;
            let time_in_force: TimeInForce = l
                .get("time_in_force")
                .and_then(Value::as_str)
                .unwrap_or("day")
                .parse()
                .map_err(|_| bad("unknown time_in_force"))?;
            Ok(Leg {
                account_id,
                symbol: symbol.to_owned(),
                side,
                quantity,
                order_type,
                limit_price,
                time_in_force,
                reference_price,
                price: Decimal::ZERO,
                min_notional: None,
            })
        })
        .collect()
}

/// What the venue's quote says a leg is worth, per (account, symbol).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Trusted {
    /// The higher side of the latest quote.
    Price(Decimal),
    /// The venue has no (believable) quote for it.
    None,
    /// The venue could not be asked just now: try again.
    Unavailable(String),
}

pub(super) type Quotes = HashMap<(Uuid, String), Trusted>;

/// Prices every leg for risk: the trusted quote raised by the collar, never lower than
/// the client's limit or reference price. No trusted price, no market order. The error
/// is the reason given to the user, or (`Err(Err(..))`) a venue outage to retry.
pub(super) fn price_legs(
    legs: &mut [Leg],
    quotes: &Quotes,
    collar: Decimal,
) -> Result<(), Result<String, String>> {
    for (i, leg) in legs.iter_mut().enumerate() {
        let trusted = match quotes.get(&(leg.account_id, leg.symbol.clone())) {
            Some(Trusted::Price(p)) => Some(*p),
            // A market leg waits for the venue's quote; a limit leg can go at its limit.
            Some(Trusted::Unavailable(e)) if leg.order_type == OrderType::Market => {
                return Err(Err(e.clone()));
            }
            Some(Trusted::Unavailable(_) | Trusted::None) | None => None,
        };
        let collared = trusted
            .and_then(|p| p.checked_mul(Decimal::ONE + collar))
            .map(|p| p.round_dp(MAX_DECIMALS));
        let floor = match (leg.order_type, collared) {
            (OrderType::Market, None) => {
                return Err(Ok(format!(
                    "leg {i}: no trusted price for {} at the venue: a market order needs one",
                    leg.symbol
                )));
            }
            (OrderType::Market, Some(c)) => c,
            // A limit bounds what a buy can cost; a quote, when there is one, still
            // keeps a far-off limit from making the leg look cheap.
            (OrderType::Limit, c) => c
                .unwrap_or(Decimal::ZERO)
                .max(leg.limit_price.unwrap_or_default()),
        };
        leg.price = floor.max(leg.reference_price.unwrap_or_default());
        let Some(notional) = leg.notional() else {
            return Err(Ok(format!("leg {i}: notional out of range")));
        };
        if let Some(min) = leg.min_notional
            && notional < min
        {
            return Err(Ok(format!(
                "leg {i}: {} {} is worth about {notional}, under the venue's minimum order of {min}",
                leg.quantity, leg.symbol
            )));
        }
    }
    Ok(())
}

/// What planning produced: the order rows, their venue clients, and how long to wait
/// when the venue request budget is spent.
pub(super) struct Planned {
    pub orders: Vec<OrderRow>,
    pub clients: Clients,
    pub wait: Option<Duration>,
}

/// The verdict on one intent.
pub(super) enum Verdict {
    Planned(Planned),
    /// Planned before (or settled): its status.
    NotPending(IntentStatus),
    Missing,
    /// The intent fails: audit `event` with `reason`.
    Refused {
        event: &'static str,
        reason: String,
    },
    /// Another intent holds one of its entry locks: try again shortly.
    Locked,
    /// An account of its legs waits for its start-up reconciliation: the intent
    /// waits too (it is not refused).
    Gated,
    /// A venue could not be asked (for a quote) just now: retry with backoff.
    Retry(String),
}

pub(super) fn refused(event: &'static str, reason: impl Into<String>) -> Verdict {
    Verdict::Refused {
        event,
        reason: reason.into(),
    }
}

/// Plans the intent together with the other intents of its tenant asking at the same
/// moment in this process (see `group.rs`).
pub(super) async fn plan(ctx: &JobContext, tenant: Uuid, intent: Uuid) -> Result<Verdict, String> {
    let (pool, shared) = (ctx.pool.clone(), ctx.services.clone());
    ctx.intent_batches
        .plan
        .submit(tenant, intent, move |asks: Vec<Uuid>| {
            let (pool, services) = (pool.clone(), shared.clone());
            async move { plan_asks(&pool, &services, tenant, &asks).await }
        })
        .await
}

/// Plans `intents` of `tenant` as one batch, as concurrent jobs would, and describes
/// each verdict: `planned`, `locked`, `refused <event>: <reason>`, `not pending: <status>`
/// or `missing`. For tests, which cannot make jobs meet in a batch on cue.
#[doc(hidden)]
pub async fn plan_together(
    pool: &PgPool,
    services: &Services,
    tenant: Uuid,
    intents: &[Uuid],
) -> Result<Vec<String>, String> {
    let verdicts: Vec<Verdict> = plan_asks(pool, services, tenant, intents)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    Ok(verdicts
        .into_iter()
        .map(|v| match v {
            Verdict::Planned(_) => "planned".to_string(),
            Verdict::Locked => "locked".to_string(),
            Verdict::Gated => "gated".to_string(),
            Verdict::Refused { event, reason } => format!("refused {event}: {reason}"),
            Verdict::NotPending(status) => format!("not pending: {status}"),
            Verdict::Missing => "missing".to_string(),
            Verdict::Retry(why) => format!("retry: {why}"),
        })
        .collect())
}

/// Plans `asks` as one batch; when the batch does not fit an account's capital, one
/// by one, so that only the intents that do not fit are refused. Quotes the batch
/// needs and this process has not seen within a second are asked of the venues
/// between two tries, with no row locked while a venue answers.
async fn plan_asks(
    pool: &PgPool,
    services: &Services,
    tenant: Uuid,
    asks: &[Uuid],
) -> Vec<Result<Verdict, String>> {
    let mut fetched = Quotes::new();
    let first = loop {
        match plan_batch(pool, services, tenant, asks, &fetched).await {
            Err(BatchError::NeedQuotes(wants)) => {
                fetched.extend(fetch_quotes(services, wants).await)
            }
            other => break other,
        }
    };
    match first {
        Ok(verdicts) => verdicts.into_iter().map(Ok).collect(),
        Err(BatchError::Capital) => {
            let mut one_by_one = Vec::with_capacity(asks.len());
            for ask in asks {
                one_by_one.push(
                    match plan_batch(pool, services, tenant, &[*ask], &fetched).await {
                        Ok(mut v) => Ok(v.remove(0)),
                        Err(e) => Err(e.to_string()),
                    },
                );
            }
            one_by_one
        }
        Err(e) => {
            let e = e.to_string();
            asks.iter().map(|_| Err(e.clone())).collect()
        }
    }
}

/// A quote planning needs: the account's venue and API key, and the symbol.
#[derive(Debug)]
pub(super) struct QuoteWant {
    account: Uuid,
    venue: String,
    key_id: Option<String>,
    secret_ref: String,
    symbol: String,
}

/// What this process learnt of `(account, symbol)` in the last second, if anything.
fn cached(services: &Services, venue: &str, symbol: &str) -> Option<Trusted> {
    let quote = services
        .quotes
        .get(services.market_data_url(venue)?, symbol)?;
    Some(
        quote
            .and_then(|q| q.high())
            .map_or(Trusted::None, Trusted::Price),
    )
}

/// Asks the venues for the quotes `wants`, all at once; every answer is cached.
async fn fetch_quotes(services: &Services, wants: Vec<QuoteWant>) -> Quotes {
    let asked = wants.into_iter().map(|w| async move {
        let client = services.venue_client(w.account, &w.venue, w.key_id.as_deref(), &w.secret_ref);
        let trusted = match client {
            // No usable client: submission will refuse the intent for that reason.
            Err(_) => Trusted::None,
            Ok(client) => match client.latest_quote(&w.symbol).await {
                Ok(q) => {
                    services
                        .quotes
                        .put(client.quote_source(), &w.symbol, Some(q));
                    q.high().map_or(Trusted::None, Trusted::Price)
                }
                // Refused for now (a rate limit, a ban) or an outage: not "no quote".
                Err(e) if e.wait().is_some() || matches!(e, VenueError::Unavailable(_)) => {
                    Trusted::Unavailable(format!("no quote for {} just now", w.symbol))
                }
                Err(_) => {
                    services.quotes.put(client.quote_source(), &w.symbol, None);
                    Trusted::None
                }
            },
        };
        ((w.account, w.symbol), trusted)
    });
    futures_util::future::join_all(asked)
        .await
        .into_iter()
        .collect()
}

pub(super) type Known = Vec<(Uuid, String, Option<String>, Option<String>)>;

/// The accounts among `accounts` that the tenant has, with their venue and API key,
/// and which of them wait for their start-up reconciliation.
async fn known_accounts(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    accounts: &[Uuid],
) -> sqlx::Result<(Known, Vec<Uuid>)> {
    let rows = sqlx::query!(
        r#"SELECT a.id, a.venue_id, c.identifier AS "identifier?", c.secret_ref AS "secret_ref?",
                  EXISTS (SELECT 1 FROM account_reconciliation r
                          WHERE r.account_id = a.id AND r.gate_since IS NOT NULL) AS "gated!"
           FROM trading_accounts a
           LEFT JOIN account_credentials c ON c.account_id = a.id AND c.credential_type = 'api_key'
           WHERE a.id = ANY($1)"#,
        accounts,
    )
    .fetch_all(&mut **tx)
    .await?;
    let gated = rows.iter().filter(|r| r.gated).map(|r| r.id).collect();
    Ok((
        rows.into_iter()
            .map(|r| (r.id, r.venue_id, r.identifier, r.secret_ref))
            .collect(),
        gated,
    ))
}

#[derive(Debug, thiserror::Error)]
enum BatchError {
    #[error("quotes needed")]
    NeedQuotes(Vec<QuoteWant>),
    #[error("the batch does not fit the capital of an account")]
    Capital,
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// A row of `risk_limits`: the tenant's (no account) or one account's.
#[derive(Debug, Clone)]
struct Limits {
    account_id: Option<Uuid>,
    max_order_notional: Option<Decimal>,
    max_intent_notional: Option<Decimal>,
    max_open_intents: Option<i32>,
}

/// The risk limits an intent must fit; `open` is the tenant's open intents so far.
fn check_limits(legs: &[Leg], limits: &[Limits], open: i64) -> Option<Verdict> {
    let total: Decimal = legs.iter().map(Leg::value).sum();
    for Limits {
        account_id: account,
        max_order_notional: max_order,
        max_intent_notional: max_intent,
        max_open_intents: max_open,
    } in limits
    {
        let applies = |leg: &Leg| account.is_none_or(|a| a == leg.account_id);
        if let Some(max) = max_order
            && let Some((i, leg)) = legs
                .iter()
                .enumerate()
                .find(|(_, l)| applies(l) && l.value() > *max)
        {
            return Some(refused(
                "risk_limit_exceeded",
                format!(
                    "leg {i}: notional {} exceeds the order limit {}",
                    leg.value().normalize(),
                    max.normalize()
                ),
            ));
        }
        if let Some(max) = max_intent
            && account.is_none()
            && total > *max
        {
            return Some(refused(
                "risk_limit_exceeded",
                format!(
                    "intent notional {} exceeds the limit {}",
                    total.normalize(),
                    max.normalize()
                ),
            ));
        }
        if let Some(max) = max_open
            && account.is_none()
            && open >= *max as i64
        {
            return Some(refused(
                "risk_limit_exceeded",
                format!("{open} intents already open (limit {max})"),
            ));
        }
    }
    None
}

/// Plans `asks` (intents) of `tenant` in one transaction; one verdict per ask.
async fn plan_batch(
    pool: &PgPool,
    services: &Services,
    tenant: Uuid,
    asks: &[Uuid],
    fetched: &Quotes,
) -> Result<Vec<Verdict>, BatchError> {
    let mut tx = tenancy::begin(pool, tenant).await?;
    // In id order, so two batches that share intents cannot deadlock.
    let found = sqlx::query!(
        r#"SELECT id, status AS "status: IntentStatus", legs_json,
                  extract(epoch FROM clock_timestamp() - lock_waited_since)::float8 AS lock_waited
           FROM multi_leg_intents
           WHERE id = ANY($1) ORDER BY id FOR UPDATE"#,
        asks,
    )
    .fetch_all(&mut *tx)
    .await?;
    // How long each intent has waited for entry locks (the lock-wait histogram).
    let waited: HashMap<Uuid, f64> = found
        .iter()
        .filter_map(|r| Some((r.id, r.lock_waited?)))
        .collect();
    let rows: Vec<(Uuid, IntentStatus, Value)> = found
        .into_iter()
        .map(|r| (r.id, r.status, r.legs_json))
        .collect();
    // Default accounts per venue, read only when an intent names venues.
    let defaults: Defaults = if rows.iter().any(|r| r.2.is_object()) {
        sqlx::query!("SELECT venue_id, id FROM trading_accounts WHERE is_default AND active")
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| (r.venue_id, r.id))
            .collect()
    } else {
        Defaults::new()
    };
    let mut verdicts: Vec<Option<Verdict>> = asks.iter().map(|_| None).collect();
    let mut candidates: Vec<(usize, Vec<Leg>)> = vec![];
    for (i, intent) in asks.iter().enumerate() {
        verdicts[i] = match rows.iter().find(|r| r.0 == *intent) {
            None => Some(Verdict::Missing),
            Some((_, status, _)) if *status != IntentStatus::Pending => {
                Some(Verdict::NotPending(*status))
            }
            Some((_, _, legs)) => match parse_legs(legs, &defaults) {
                Err(reason) => Some(refused("intent_rejected", reason)),
                Ok(legs) => {
                    candidates.push((i, legs));
                    None
                }
            },
        };
    }
    if candidates.is_empty() {
        tx.commit().await?;
        return Ok(verdicts.into_iter().map(Option::unwrap).collect());
    }

    // What every candidate is checked against, read once for the batch: its accounts
    // (with their API credentials, which submission needs), kill switches, limits.
    let accounts: Vec<Uuid> = candidates
        .iter()
        .flat_map(|(_, legs)| legs.iter().map(|l| l.account_id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    // With the accounts whose start-up reconciliation has not succeeded yet: their
    // intents wait.
    let (known, gated) = known_accounts(&mut tx, &accounts).await?;
    let candidates = super::instruments::apply(&mut tx, candidates, &known, &mut verdicts).await?;
    let engaged: Vec<(Option<Uuid>, Option<String>)> = sqlx::query!(
        "SELECT account_id, reason FROM kill_switches
         WHERE engaged AND (account_id IS NULL OR account_id = ANY($1))",
        &accounts,
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.account_id, r.reason))
    .collect();
    let limits = sqlx::query_as!(
        Limits,
        "SELECT account_id, max_order_notional, max_intent_notional, max_open_intents FROM risk_limits",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut open: i64 = if limits
        .iter()
        .any(|l| l.account_id.is_none() && l.max_open_intents.is_some())
    {
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM multi_leg_intents WHERE status IN ('submitted', 'partially_filled')"#)
        .fetch_one(&mut *tx)
        .await?
    } else {
        0
    };
    // The trusted price of every (account, symbol): fetched this round, or seen by
    // this process within a second. Any other must be asked of its venue, which is
    // done with no row locked: this transaction ends and the batch is planned again.
    let mut quotes = fetched.clone();
    let mut wants: Vec<QuoteWant> = vec![];
    for leg in candidates.iter().flat_map(|(_, legs)| legs) {
        let key = (leg.account_id, leg.symbol.clone());
        if quotes.contains_key(&key) {
            continue;
        }
        let Some((_, venue, key_id, Some(secret_ref))) =
            known.iter().find(|k| k.0 == leg.account_id)
        else {
            continue;
        };
        match cached(services, venue, &leg.symbol) {
            Some(trusted) => {
                quotes.insert(key, trusted);
            }
            None if !wants
                .iter()
                .any(|w| w.account == leg.account_id && w.symbol == leg.symbol) =>
            {
                wants.push(QuoteWant {
                    account: leg.account_id,
                    venue: venue.clone(),
                    key_id: key_id.clone(),
                    secret_ref: secret_ref.clone(),
                    symbol: leg.symbol.clone(),
                });
            }
            None => {}
        }
    }
    if !wants.is_empty() {
        tx.rollback().await?;
        return Err(BatchError::NeedQuotes(wants));
    }
    let mut passed: Vec<(usize, Vec<Leg>)> = vec![];
    for (i, mut legs) in candidates {
        let verdict = if legs.iter().any(|l| gated.contains(&l.account_id)) {
            Some(Verdict::Gated)
        } else if legs
            .iter()
            .any(|l| !known.iter().any(|k| k.0 == l.account_id))
        {
            Some(refused(
                "intent_rejected",
                "a leg names an account this tenant does not have",
            ))
        } else if let Some((account, reason)) = engaged
            .iter()
            .find(|(a, _)| a.is_none_or(|a| legs.iter().any(|l| l.account_id == a)))
        {
            let scope = account.map_or("the tenant".to_string(), |a| format!("account {a}"));
            Some(refused(
                "kill_switch_blocked",
                format!(
                    "kill switch engaged for {scope}: {}",
                    reason.clone().unwrap_or_default()
                ),
            ))
        } else {
            match price_legs(&mut legs, &quotes, services.price_collar) {
                Err(Ok(reason)) => Some(refused("intent_rejected", reason)),
                Err(Err(outage)) => Some(Verdict::Retry(outage)),
                Ok(()) => check_limits(&legs, &limits, open),
            }
        };
        match verdict {
            Some(v) => verdicts[i] = Some(v),
            None => {
                open += 1;
                passed.push((i, legs));
            }
        }
    }

    // Entry locks per (account, symbol), all in one statement, taken in key order so
    // that two transactions cannot deadlock. Two intents of this batch on one key:
    // the later one waits, as it would behind another batch.
    let mut claimed: HashSet<(Uuid, &str)> = HashSet::new();
    let mut wanted: Vec<(Uuid, &str, Uuid)> = vec![];
    let mut lockable: Vec<(usize, &Vec<Leg>, usize)> = vec![];
    for (i, legs) in &passed {
        let keys: BTreeSet<(Uuid, &str)> = legs
            .iter()
            .map(|l| (l.account_id, l.symbol.as_str()))
            .collect();
        if keys.iter().any(|k| claimed.contains(k)) {
            verdicts[*i] = Some(Verdict::Locked);
            continue;
        }
        claimed.extend(keys.iter().copied());
        wanted.extend(keys.iter().map(|(a, s)| (*a, *s, asks[*i])));
        lockable.push((*i, legs, keys.len()));
    }
    wanted.sort();
    let took = sqlx::query!(
        "INSERT INTO entry_locks AS l (tenant_id, account_id, symbol, owner_token, expires_at)
         SELECT $1, a, s, o, now() + make_interval(secs => $5)
         FROM unnest($2::uuid[], $3::text[], $4::uuid[]) WITH ORDINALITY AS k(a, s, o, ord) ORDER BY ord
         ON CONFLICT (tenant_id, account_id, symbol) DO UPDATE
             SET owner_token = excluded.owner_token, expires_at = excluded.expires_at
             WHERE l.expires_at < now() OR l.owner_token = excluded.owner_token
         -- xmax is set on a row taken over: a lock whose holder let it expire.
         RETURNING owner_token AS \"owner!\", xmax <> 0 AS \"took_over!\"",
        tenant,
        wanted.iter().map(|w| w.0).collect::<Vec<_>>() as _,
        wanted.iter().map(|w| w.1).collect::<Vec<_>>() as _,
        wanted.iter().map(|w| w.2).collect::<Vec<_>>() as _,
        LOCK_TTL_SECS,
    )
    .fetch_all(&mut *tx)
    .await?;
    let metrics = &services.metrics;
    let expiries = took.iter().filter(|t| t.took_over).count();
    if expiries > 0 {
        metrics.add("entry_lock_ttl_expiries", "", "", expiries as f64);
    }
    let taken: Vec<Uuid> = took.into_iter().map(|t| t.owner).collect();
    let mut planned: Vec<(usize, &Vec<Leg>)> = vec![];
    let mut blocked: Vec<Uuid> = vec![];
    for (i, legs, keys) in lockable {
        let intent = asks[i];
        if taken.iter().filter(|o| **o == intent).count() == keys {
            planned.push((i, legs));
        } else {
            verdicts[i] = Some(Verdict::Locked);
            blocked.push(intent);
        }
    }
    // Contention: intents that found a lock taken wait (their first wait is kept);
    // intents planned now after waiting say how long they waited.
    let locked: Vec<Uuid> = asks
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| matches!(v, Some(Verdict::Locked)))
        .map(|(a, _)| *a)
        .collect();
    if !locked.is_empty() {
        metrics.add("entry_lock_contention", "", "", locked.len() as f64);
        sqlx::query!(
            "UPDATE multi_leg_intents SET lock_waited_since = clock_timestamp()
             WHERE id = ANY($1) AND lock_waited_since IS NULL",
            &locked,
        )
        .execute(&mut *tx)
        .await?;
    }
    for (i, _) in &planned {
        if let Some(secs) = waited.get(&asks[*i]) {
            metrics.observe("entry_lock_wait_seconds", "", *secs);
        }
    }
    if !blocked.is_empty() {
        // Give back the locks a blocked intent did get.
        sqlx::query!(
            "DELETE FROM entry_locks WHERE owner_token = ANY($1)",
            &blocked,
        )
        .execute(&mut *tx)
        .await?;
    }
    if planned.is_empty() {
        tx.commit().await?;
        return Ok(verdicts.into_iter().map(Option::unwrap).collect());
    }

    // One order row per leg of every planned intent, and their intents marked
    // submitted, in one statement.
    let venue_of = |a: Uuid| -> &str { &known.iter().find(|k| k.0 == a).expect("checked").1 };
    let legs: Vec<(Uuid, i32, &Leg)> = planned
        .iter()
        .flat_map(|(i, legs)| {
            legs.iter()
                .enumerate()
                .map(move |(n, l)| (asks[*i], n as i32, l))
        })
        .collect();
    let mut orders: Vec<OrderRow> = sqlx::query_as!(
        OrderRow,
        r#"WITH submitted AS (
             UPDATE multi_leg_intents SET status = 'submitted', updated_at = now()
             WHERE id = ANY($2))
         INSERT INTO orders (tenant_id, intent_id, leg_index, account_id, venue_id, symbol, side, quantity,
                             order_type, limit_price, time_in_force, client_order_id, reserved_amount, status)
         SELECT $1, i, n, a, v, s, sd, q, ot, lp, tif, coid, r, 'sent'
         FROM unnest($3::uuid[], $4::int[], $5::uuid[], $6::text[], $7::text[], $8::text[], $9::numeric[],
                     $10::text[], $11::numeric[], $12::text[], $13::text[], $14::numeric[])
              AS l(i, n, a, v, s, sd, q, ot, lp, tif, coid, r)
         RETURNING intent_id, id, leg_index, account_id, venue_id, symbol, side, quantity, order_type,
                   limit_price, time_in_force AS "time_in_force: TimeInForce", client_order_id, venue_order_id,
                   status AS "status: OrderStatus", reserved_amount"#,
        tenant,
        planned.iter().map(|(i, _)| asks[*i]).collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.0).collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.1).collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.2.account_id).collect::<Vec<_>>() as _,
        legs.iter().map(|l| venue_of(l.2.account_id)).collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.2.symbol.as_str()).collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.2.side.as_str()).collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.2.quantity).collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.2.order_type.as_str()).collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.2.limit_price).collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.2.time_in_force.as_str()).collect::<Vec<_>>() as _,
        legs.iter()
            .map(|l| client_order_id(tenant, l.0, l.1))
            .collect::<Vec<_>>() as _,
        legs.iter().map(|l| l.2.value()).collect::<Vec<_>>() as _,
    )
    .fetch_all(&mut *tx)
    .await?;
    orders.sort_by_key(|o| (o.intent_id, o.leg_index));

    // Each intent's `capital_reserved` event, in one statement.
    let reserved_details: Vec<Value> = planned
        .iter()
        .map(|(_, legs)| {
            let total: Decimal = legs.iter().map(Leg::value).sum();
            json!({"legs": legs.len(), "notional": total.to_string()})
        })
        .collect();
    sqlx::query!(
        "SELECT audit_append('capital_reserved', 'intent', i::text, d)
         FROM unnest($1::uuid[], $2::jsonb[]) AS x(i, d)",
        planned.iter().map(|(i, _)| asks[*i]).collect::<Vec<_>>() as _,
        &reserved_details,
    )
    .execute(&mut *tx)
    .await?;

    // Last before commit, in one statement: the capital reservation (through the
    // journal, which the database refuses beyond the ledger invariant) and the venue
    // request budget. Both are rows per account that every intent of the account
    // locks, so they are held only from here to the commit, once per batch.
    let mut wants: HashMap<Uuid, i32> = HashMap::new();
    for (intent, _) in &planned {
        let intent = asks[*intent];
        let refs: Vec<&OrderRow> = orders.iter().filter(|o| o.intent_id == intent).collect();
        // One request per leg: none of them has been sent yet.
        for order in refs {
            *wants.entry(order.account_id).or_default() += 1;
        }
    }
    let (budget_accounts, budget_counts): (Vec<Uuid>, Vec<i32>) = wants.into_iter().unzip();
    let used = sqlx::query_as!(
        Taken,
        r#"WITH reserve AS (
               INSERT INTO capital_journal (tenant_id, account_id, entry_type, d_reserved_for_orders, ref_type, ref_id)
               SELECT $1, a, 'reserve_order', n, 'order', o
               FROM unnest($4::uuid[], $5::numeric[], $6::uuid[]) AS r(a, n, o))
           SELECT used AS "used!", banned_ms AS "banned_ms!", venue_id AS "venue_id!"
           FROM take_venue_budget($1, $2, $3)"#,
        tenant,
        &budget_accounts,
        &budget_counts,
        orders.iter().map(|o| o.account_id).collect::<Vec<_>>() as _,
        orders.iter().map(|o| o.reserved_amount).collect::<Vec<_>>() as _,
        orders.iter().map(|o| o.id).collect::<Vec<_>>() as _,
    )
    .fetch_all(&mut *tx)
    .await;
    let used = match used {
        Ok(used) => used,
        Err(e)
            if e.as_database_error().and_then(|d| d.constraint()) == Some("capital_invariant") =>
        {
            tx.rollback().await?;
            if asks.len() > 1 {
                return Err(BatchError::Capital);
            }
            let total: Decimal = planned[0].1.iter().map(Leg::value).sum();
            return Ok(vec![refused(
                "insufficient_capital",
                format!(
                    "reserving {} would exceed the capital of the account",
                    total.normalize()
                ),
            )]);
        }
        Err(e) => return Err(e.into()),
    };
    let wait = over_budget(services, &used);
    // The orders were written `sent`: their legs go out right after this commit,
    // released in the transaction that checked the kill switches and took the entry
    // locks. When the budget is spent they wait instead, unreleased, and the attempt
    // that sends them releases them (checking the switches and locks again).
    if wait.is_some() {
        let ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
        sqlx::query!(
            "UPDATE orders SET status = 'pending_submit' WHERE id = ANY($1)",
            &ids,
        )
        .execute(&mut *tx)
        .await?;
        for order in &mut orders {
            order.status = OrderStatus::PendingSubmit;
        }
    }
    tx.commit().await?;

    let creds: Credentials = known
        .iter()
        .filter_map(|(a, _, key_id, secret_ref)| Some((*a, key_id.clone(), secret_ref.clone()?)))
        .collect();
    // One client per account for the whole batch (resolving a secret decrypts it).
    let all_clients = build_clients(
        (pool, services),
        tenant,
        &creds,
        &orders.iter().collect::<Vec<_>>(),
    );
    let mut by_intent: HashMap<Uuid, Vec<OrderRow>> = HashMap::new();
    for order in orders {
        by_intent.entry(order.intent_id).or_default().push(order);
    }
    for (i, _) in &planned {
        let orders = by_intent.remove(&asks[*i]).unwrap_or_default();
        let clients: Clients = orders
            .iter()
            .map(|o| (o.account_id, all_clients[&o.account_id].clone()))
            .collect();
        verdicts[*i] = Some(Verdict::Planned(Planned {
            orders,
            clients,
            wait,
        }));
    }
    Ok(verdicts.into_iter().map(Option::unwrap).collect())
}

#[cfg(test)]
fn parse_legs_array(legs: &Value) -> Result<Vec<Leg>, String> {
    parse_legs(legs, &Defaults::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: &str =
        "quantity must be a positive number up to 1000000000 with at most 10 decimal places";

    #[test]
    fn bad_legs_get_readable_reasons() {
        let account = Uuid::from_u128(9).to_string();
        let leg = |extra: Value| {
            let mut l =
                json!({"account_id": account, "symbol": "AAPL", "side": "buy", "quantity": 1});
            l.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            json!([l])
        };
        let cases = [
            (json!([]), "legs must be a non-empty array, or an object of named legs".to_string()),
            (json!([{"account_id": "x"}]), "leg 0: account_id must be a uuid".into()),
            (leg(json!({"side": "hold"})), "leg 0: side must be buy or sell".into()),
            (leg(json!({"quantity": -1})), format!("leg 0: {Q}")),
            // Near Decimal's maximum: it panicked the tenant's batch planner.
            (leg(json!({"quantity": "79228162514264337593543950335"})), format!("leg 0: {Q}")),
            (leg(json!({"quantity": "0.00000000001"})), format!("leg 0: {Q}")),
            (leg(json!({"type": "limit"})), "leg 0: a limit leg needs a positive limit_price".into()),
            (
                leg(json!({"reference_price": "1e30"})),
                "leg 0: reference_price must be a positive number up to 100000000 with at most 10 decimal places".into(),
            ),
            (
                leg(json!({"symbol": "../v2/orders"})),
                "leg 0: symbol must be 1 to 32 letters, digits, '.', '-' or '/', starting with a letter or digit".into(),
            ),
            (
                json!((0..17).map(|_| leg(json!({}))[0].clone()).collect::<Vec<_>>()),
                "an intent has at most 16 legs".into(),
            ),
        ];
        for (legs, reason) in cases {
            assert_eq!(parse_legs(&legs, &Defaults::new()).unwrap_err(), reason);
        }
        let ok = parse_legs_array(&json!([{"account_id": account, "symbol": "AAPL", "side": "sell", "quantity": "2.5", "type": "limit", "limit_price": 10}])).unwrap();
        assert_eq!(ok[0].limit_price, Some(Decimal::from(10)));
    }

    fn quotes(account: Uuid, trusted: Trusted) -> Quotes {
        HashMap::from([((account, "AAPL".to_string()), trusted)])
    }

    #[test]
    fn risk_prices_come_from_the_venues_quote_never_lower_and_never_from_the_client_alone() {
        let account = Uuid::from_u128(9);
        let collar = Decimal::new(5, 2);
        // "buy 1,000,000 AAPL at reference 0.0000000001": priced at the quote + 5 %.
        let mut legs = parse_legs_array(
            &json!([{"account_id": account.to_string(), "symbol": "AAPL",
            "side": "buy", "quantity": 1000000, "reference_price": "0.0000000001"}]),
        )
        .unwrap();
        price_legs(
            &mut legs,
            &quotes(account, Trusted::Price(Decimal::from(100))),
            collar,
        )
        .unwrap();
        assert_eq!(legs[0].price, Decimal::from(105));
        assert_eq!(legs[0].value(), Decimal::from(105_000_000));
        // A client may make a leg dearer, never cheaper.
        let mut dear = parse_legs_array(
            &json!([{"account_id": account.to_string(), "symbol": "AAPL",
            "side": "buy", "quantity": 1, "reference_price": 200}]),
        )
        .unwrap();
        price_legs(
            &mut dear,
            &quotes(account, Trusted::Price(Decimal::from(100))),
            collar,
        )
        .unwrap();
        assert_eq!(dear[0].price, Decimal::from(200));
        // No trusted price: no market order; a venue outage is retried, not refused.
        let mut blind = legs.clone();
        assert_eq!(
            price_legs(&mut blind, &quotes(account, Trusted::None), collar),
            Err(Ok(
                "leg 0: no trusted price for AAPL at the venue: a market order needs one".into()
            ))
        );
        assert!(matches!(
            price_legs(
                &mut blind,
                &quotes(account, Trusted::Unavailable("down".into())),
                collar
            ),
            Err(Err(_))
        ));
        // A limit leg without a quote is priced at its limit; with one, at the higher.
        let mut limit = parse_legs_array(
            &json!([{"account_id": account.to_string(), "symbol": "AAPL",
            "side": "sell", "quantity": 1, "type": "limit", "limit_price": "0.01"}]),
        )
        .unwrap();
        price_legs(&mut limit, &quotes(account, Trusted::None), collar).unwrap();
        assert_eq!(limit[0].price, Decimal::new(1, 2));
        price_legs(
            &mut limit,
            &quotes(account, Trusted::Price(Decimal::from(100))),
            collar,
        )
        .unwrap();
        assert_eq!(limit[0].price, Decimal::from(105));
    }

    #[test]
    fn limits_count_the_intents_planned_before_in_the_batch() {
        let account = Uuid::from_u128(9);
        let mut legs = parse_legs_array(
            &json!([{"account_id": account.to_string(), "symbol": "AAPL",
            "side": "buy", "quantity": 2}]),
        )
        .unwrap();
        price_legs(
            &mut legs,
            &quotes(account, Trusted::Price(Decimal::from(50))),
            Decimal::ZERO,
        )
        .unwrap();
        let limits = vec![Limits {
            account_id: None,
            max_order_notional: None,
            max_intent_notional: Some(Decimal::from(150)),
            max_open_intents: Some(3),
        }];
        assert!(check_limits(&legs, &limits, 2).is_none());
        assert!(matches!(
            check_limits(&legs, &limits, 3),
            Some(Verdict::Refused { reason, .. }) if reason == "3 intents already open (limit 3)"
        ));
        let per_order = vec![Limits {
            account_id: Some(account),
            max_order_notional: Some(Decimal::from(99)),
            max_intent_notional: None,
            max_open_intents: None,
        }];
        assert!(matches!(
            check_limits(&legs, &per_order, 0),
            Some(Verdict::Refused { reason, .. }) if reason == "leg 0: notional 100 exceeds the order limit 99"
        ));
    }

    #[test]
    fn the_platforms_named_legs_trade_on_the_default_account_of_their_venue() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let defaults = Defaults::from([("paper".to_string(), a), ("alpaca".to_string(), b)]);
        // Seed 000's spot arbitrage: prices and no order type (limit orders).
        let legs = parse_legs(
            &json!({
                "sell_leg": {"venue": "alpaca", "symbol": "BTC/USD", "side": "sell", "size": 0.5, "price": 101.5},
                "buy_leg": {"venue": "Paper", "symbol": "BTC/USD", "side": "buy", "size": 0.5, "price": 100}
            }),
            &defaults,
        )
        .unwrap();
        assert_eq!(legs.len(), 2);
        assert_eq!(
            (legs[0].account_id, legs[0].side),
            (a, Side::Buy),
            "key order: buy_leg first"
        );
        assert_eq!((legs[1].account_id, legs[1].side), (b, Side::Sell));
        assert_eq!(legs[0].order_type, OrderType::Limit);
        assert_eq!(legs[0].limit_price, Some(Decimal::from(100)));
        assert_eq!(legs[1].quantity, Decimal::new(5, 1));
        // Its basis trade: no prices, market orders; an explicit market price is a
        // reference only.
        let legs = parse_legs(
            &json!({
                "spot_leg": {"venue": "paper", "symbol": "ETH/USD", "side": "buy", "size": 2},
                "perp_leg": {"venue": "alpaca", "symbol": "ETH/USD", "side": "sell", "size": 2, "order_type": "market", "price": 3000}
            }),
            &defaults,
        )
        .unwrap();
        assert_eq!(legs[0].order_type, OrderType::Market);
        assert_eq!(
            legs[0].reference_price,
            Some(Decimal::from(3000)),
            "perp_leg sorts first"
        );
        assert_eq!(legs[1].limit_price, None);
        // A venue with no default account, and a bad leg, are refused by name.
        for (legs, reason) in [
            (
                json!({"buy_leg": {"venue": "kraken", "symbol": "BTC/USD", "side": "buy", "size": 1}}),
                "leg buy_leg: no default account for venue \"kraken\": mark one of the tenant's accounts there as its default",
            ),
            (
                json!({"buy_leg": {"venue": "paper", "symbol": "BTC/USD", "side": "hold", "size": 1}}),
                "leg buy_leg: side must be buy or sell",
            ),
            (json!({"buy_leg": 7}), "leg buy_leg: must be an object"),
            (
                json!({"buy_leg": {"symbol": "BTC/USD", "side": "buy", "size": 1}}),
                "leg buy_leg: venue (or account_id) is required",
            ),
        ] {
            assert_eq!(parse_legs(&legs, &defaults).unwrap_err(), reason);
        }
    }
}
