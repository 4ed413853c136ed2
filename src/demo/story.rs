//! The first run's story, played once when `all --demo` starts: what a new user
//! should see the platform do within a minute, through the same doors production
//! traffic takes (intents inserted as the platform's edge functions insert them,
//! webhooks signed and posted to this process's web server).
//!
//! - a seed-000 cross-exchange arbitrage per tenant: buy BTC/USD on Binance.US, sell
//!   it on the Alpaca-dialect venue, each from its own ledger, filled over time;
//! - one whose Binance leg is rejected (a spot sell of SOL the fund does not hold):
//!   the other leg is unwound on its own venue, and the intent fails saying why;
//! - Stripe: the demo customer's subscription `updated` delivered before its
//!   `created` (the older one is recorded as stale), and `invoice.paid` delivered
//!   twice (the second answers `duplicate: true`);
//! - the demo trader's watcher on ETH/USDT inserted, then switched off.

use std::time::Duration;

use anyhow::Context;
use pulse_domain::tenancy;
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use super::{DEMO_CUSTOMER, DEMO_USER, FUND, TENANT};
use crate::{config::Settings, web::signature};

/// Where to look, printed when the story starts.
pub fn guide(settings: &Settings) -> String {
    let web = &settings.web.bind;
    format!(
        "\n\
         first run: two tenants (demo desk, demo fund), each with an account on the paper venue\n\
         (Alpaca's dialect) and on Binance.US (the paper venue's Binance dialect), both on {paper}.\n\
         \n  console         http://{web}/  (any user name; the password is PULSE__WEB__OPERATOR_TOKEN)\n\
         \x20 Discord sink    http://{sink}/messages  (alerts: fills, the failed payment, the unwound intent)\n\
         \n  what to expect, within a minute:\n\
         \x20 - Trading: a cross-venue BTC/USD arbitrage per tenant, both legs filled, a position on\n\
         \x20   each venue, two ledgers; an intent whose Binance leg was rejected (a spot sell of SOL\n\
         \x20   the fund does not hold), its other leg unwound, failed with Binance's words;\n\
         \x20 - a two-leg pair trade on the demo desk every 5 s, fills arriving over time;\n\
         \x20 - Stripe: a subscription whose `updated` came before its `created` (the older one\n\
         \x20   recorded as stale), an invoice delivered twice (booked once);\n\
         \x20 - a watcher (ETH/USDT) inserted, then switched off;\n\
         \x20 - Trading → Broker connections: the demo trader's Schwab tokens refreshed.\n",
        paper = settings.paper.bind,
        sink = settings.discord.sink_bind,
    )
}

/// Plays the story once `web` answers; a step that fails is logged, not retried.
pub async fn play(pool: PgPool, settings: Settings) {
    let web = format!("http://{}", settings.web.bind);
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http
            .get(format!("{web}/internal/health"))
            .send()
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{}", guide(&settings));
    if let Err(error) = intents(&pool).await {
        tracing::warn!(error = format!("{error:#}"), "demo story: intents");
    }
    if let Err(error) = stripe(&pool, &http, &web, &settings).await {
        tracing::warn!(error = format!("{error:#}"), "demo story: Stripe events");
    }
    if let Err(error) = watchers(&http, &web, &settings).await {
        tracing::warn!(error = format!("{error:#}"), "demo story: watcher changes");
    }
}

/// Inserts an intent as seed 000's edge functions do: the platform's columns, legs
/// keyed by name, each naming a venue.
async fn platform_intent(
    pool: &PgPool,
    tenant: Uuid,
    key: &str,
    legs: Value,
) -> anyhow::Result<()> {
    let mut tx = tenancy::begin(pool, tenant).await?;
    sqlx::query!(
        "INSERT INTO multi_leg_intents (id, tenant_id, intent_id, legs_json, status, idempotency_key)
         VALUES ($1, $2, $1, $3, 'pending', $4) ON CONFLICT DO NOTHING",
        Uuid::new_v4(),
        tenant,
        legs,
        key,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

async fn intents(pool: &PgPool) -> anyhow::Result<()> {
    for (tenant, key) in [(TENANT, "story-arb-desk"), (FUND, "story-arb-fund")] {
        platform_intent(
            pool,
            tenant,
            key,
            json!({
                "buy_leg": {"venue": "binance", "symbol": "BTC/USD", "side": "buy", "size": 0.01, "order_type": "market"},
                "sell_leg": {"venue": "paper", "symbol": "BTC/USD", "side": "sell", "size": 0.01, "order_type": "market"},
            }),
        )
        .await
        .context("the cross-venue arbitrage")?;
    }
    platform_intent(
        pool,
        FUND,
        "story-unwound",
        json!({
            "buy_leg": {"venue": "paper", "symbol": "SOL/USD", "side": "buy", "size": 1, "order_type": "market"},
            "sell_leg": {"venue": "binance", "symbol": "SOL/USD", "side": "sell", "size": 1, "order_type": "market"},
        }),
    )
    .await
    .context("the intent to unwind")
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    header: (&str, String),
    body: &str,
) -> anyhow::Result<Value> {
    let answer = http
        .post(url)
        .header(header.0, header.1)
        .body(body.to_owned())
        .send()
        .await?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "{url} answered {status}: {body}");
    Ok(body)
}

async fn stripe(
    pool: &PgPool,
    http: &reqwest::Client,
    web: &str,
    settings: &Settings,
) -> anyhow::Result<()> {
    let secret = *settings
        .stripe
        .secrets()
        .first()
        .context("no Stripe webhook secret")?;
    let now = chrono::Utc::now().timestamp();
    let sub = |status: &str, tier: &str| {
        json!({"id": "sub_demo", "customer": DEMO_CUSTOMER, "status": status, "current_period_end": now + 30 * 86_400,
               "items": {"data": [{"price": {"lookup_key": tier}}]}})
    };
    let event = |id: &str, kind: &str, created: i64, object: Value| {
        json!({"id": id, "type": kind, "created": created, "data": {"object": object}}).to_string()
    };
    // Newest first: the subscription's update, processed, then its creation (out of
    // order: recorded as stale), then a paid invoice, delivered twice.
    let invoice = json!({"id": "in_demo_1", "customer": DEMO_CUSTOMER, "subscription": "sub_demo",
                         "amount_paid": 4900, "currency": "eur"});
    let deliveries = [
        (
            "evt_story_sub_updated",
            event(
                "evt_story_sub_updated",
                "customer.subscription.updated",
                now - 30,
                sub("active", "pro"),
            ),
        ),
        (
            "evt_story_sub_created",
            event(
                "evt_story_sub_created",
                "customer.subscription.created",
                now - 60,
                sub("incomplete", "basic"),
            ),
        ),
        (
            "evt_story_invoice",
            event(
                "evt_story_invoice",
                "invoice.paid",
                now - 10,
                invoice.clone(),
            ),
        ),
        (
            "evt_story_invoice",
            event("evt_story_invoice", "invoice.paid", now - 10, invoice),
        ),
    ];
    for (n, (id, body)) in deliveries.iter().enumerate() {
        let header =
            signature::stripe_header(secret, body.as_bytes(), chrono::Utc::now().timestamp());
        post(
            http,
            &format!("{web}/webhooks/stripe"),
            ("Stripe-Signature", header),
            body,
        )
        .await?;
        if n == 0 {
            // Delivered and processed before the older one arrives, as out-of-order
            // deliveries happen (processing in parallel could take them in any order).
            processed(pool, id).await?;
        }
    }
    Ok(())
}

/// Waits until Stripe event `id` is processed.
async fn processed(pool: &PgPool, id: &str) -> anyhow::Result<()> {
    for _ in 0..600 {
        let done: Option<bool> = sqlx::query_scalar!(
            "SELECT processed_at IS NOT NULL FROM billing.stripe_events WHERE event_id = $1",
            id
        )
        .fetch_optional(pool)
        .await?
        .flatten();
        if done == Some(true) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("Stripe event {id} was not processed within a minute")
}

async fn watchers(http: &reqwest::Client, web: &str, settings: &Settings) -> anyhow::Result<()> {
    let secret = settings.watchers.secret().context("no watcher secret")?;
    let record = |active: bool| {
        json!({"user_id": DEMO_USER, "symbol": "ETH/USDT", "timeframe": "4h", "strategy": {"kind": "breakout"},
               "active": active})
    };
    for (kind, record) in [("INSERT", record(true)), ("UPDATE", record(false))] {
        let body = json!({"type": kind, "record": record}).to_string();
        let header = signature::hex_hmac(&secret, body.as_bytes());
        post(
            http,
            &format!("{web}/functions/v1/watchers-upsert"),
            ("x-hmac-sha256", header),
            &body,
        )
        .await?;
    }
    Ok(())
}
