//! `pulse-fleet all --demo`: the platform on a first run. Seeds two tenants, each with
//! an account on both local venues (the paper venue's Alpaca dialect, `paper`, and its
//! Binance.US dialect, `binance`; capital allocated through the journal), inserts a
//! two-leg intent every few seconds, which execute_intent trades, and plays the first
//! run's story once (`story.rs`): cross-venue intents, one unwound, signed Stripe
//! events out of order and duplicated, watcher changes. The console shows it all.
//! Never for production data.

pub mod story;

use std::time::Duration;

use pulse_domain::tenancy;
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

pub const TENANT: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_de00);
pub const ACCOUNT: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_de01);
/// The demo desk's Binance account, and the second tenant's two accounts.
pub const BINANCE_ACCOUNT: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_de02);
pub const FUND: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_df00);
pub const FUND_PAPER: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_df01);
pub const FUND_BINANCE: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_df02);
/// The second tenant's bot, which inserts intents as the platform's edge functions do.
pub const FUND_USER: &str = "demo-fund-bot";

/// The demo's Binance API keys (the local venue's Binance dialect checks their
/// signatures with the secret in `SECRET_VAR`).
pub const BINANCE_KEYS: [&str; 2] = ["DEMOBINANCEDESK", "DEMOBINANCEFUND"];
/// The paper venue accepts any key; the secret comes from this variable.
pub const SECRET_VAR: &str = "PULSE_DEMO_PAPER_SECRET";

/// A tenant with one paper-venue account: an `api_key` credential behind
/// `secret_ref`, and `allocated` capital journalled in. Used by the demo, the intent
/// benchmark and tests. Idempotent: an account that exists (same id) is left as it is.
pub async fn open_desk(
    pool: &PgPool,
    tenant: Uuid,
    name: &str,
    account: Uuid,
    secret_ref: &str,
    allocated: Decimal,
) -> sqlx::Result<()> {
    sqlx::query!("INSERT INTO venues (id, name, kind) VALUES ('paper', 'Paper venue (Alpaca dialect)', 'broker')
         ON CONFLICT DO NOTHING")
    .execute(pool)
    .await?;
    sqlx::query!(
        "INSERT INTO tenants (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        tenant,
        name,
    )
    .execute(pool)
    .await?;
    open_account(
        pool,
        (tenant, account),
        ("paper", "main"),
        "PKPAPER",
        secret_ref,
        allocated,
    )
    .await
}

/// The demo desk's capital: enough for a few entries at a time, so that a desk whose
/// fills, exits and releases were not followed would run out within minutes.
pub const DEMO_CAPITAL: i64 = 10_000;

pub async fn seed(pool: &PgPool) -> anyhow::Result<()> {
    let secret_ref = format!("env:{SECRET_VAR}");
    open_desk(
        pool,
        TENANT,
        "demo desk",
        ACCOUNT,
        &secret_ref,
        Decimal::from(DEMO_CAPITAL),
    )
    .await?;
    // The desk's trader, so that the README's watcher example (the platform's watcher
    // contract, which names a user, not a tenant) lands in the demo tenant.
    sqlx::query!(
        "INSERT INTO tenant_members (tenant_id, user_id, role) VALUES ($1, $2, 'owner')
         ON CONFLICT DO NOTHING",
        TENANT,
        DEMO_USER,
    )
    .execute(pool)
    .await?;
    // ... and a Stripe customer of the trader, as a completed checkout would have
    // linked it, so that the README's payment-failed example reaches the trader.
    sqlx::query!(
        "WITH routed AS (
             INSERT INTO billing.customer_tenants (stripe_customer_id, tenant_id) VALUES ($1, $2)
             ON CONFLICT DO NOTHING)
         INSERT INTO billing.customers (tenant_id, stripe_customer_id, user_id, email)
         VALUES ($2, $1, $3, 'demo-trader@example.com') ON CONFLICT DO NOTHING",
        DEMO_CUSTOMER,
        TENANT,
        DEMO_USER,
    )
    .execute(pool)
    .await?;
    // Both venues for both tenants, each account its venue's default (what the
    // platform's intents, which name venues, trade on).
    sqlx::query!(
        "INSERT INTO venues (id, name, kind) VALUES ('binance', 'Binance.US', 'exchange') ON CONFLICT DO NOTHING"
    )
    .execute(pool)
    .await?;
    sqlx::query!(
        "INSERT INTO tenants (id, name) VALUES ($1, 'demo fund') ON CONFLICT DO NOTHING",
        FUND
    )
    .execute(pool)
    .await?;
    let capital = Decimal::from(DEMO_CAPITAL * 10);
    for (tenant, account, venue, key) in [
        (TENANT, BINANCE_ACCOUNT, "binance", BINANCE_KEYS[0]),
        (FUND, FUND_PAPER, "paper", "PKPAPERFUND"),
        (FUND, FUND_BINANCE, "binance", BINANCE_KEYS[1]),
    ] {
        open_account(
            pool,
            (tenant, account),
            (venue, venue),
            key,
            &secret_ref,
            capital,
        )
        .await?;
    }
    sqlx::query!(
        "UPDATE trading_accounts SET is_default = true WHERE id = ANY($1)",
        &[ACCOUNT, BINANCE_ACCOUNT, FUND_PAPER, FUND_BINANCE][..],
    )
    .execute(pool)
    .await?;
    sqlx::query!(
        "INSERT INTO tenant_members (tenant_id, user_id, role) VALUES ($1, $2, 'owner') ON CONFLICT DO NOTHING",
        FUND,
        FUND_USER,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// An account of `tenant` at `venue`, labelled `label`, with an `api_key` credential
/// (`key`, its secret behind `secret_ref`) and `allocated` capital journalled in. An
/// account that exists (same id or label) is left as it is.
pub async fn open_account(
    pool: &PgPool,
    (tenant, account): (Uuid, Uuid),
    (venue, label): (&str, &str),
    key: &str,
    secret_ref: &str,
    allocated: Decimal,
) -> sqlx::Result<()> {
    let mut tx = tenancy::begin(pool, tenant).await?;
    sqlx::query!(
        "WITH a AS (INSERT INTO trading_accounts (id, tenant_id, label, venue_id) VALUES ($1, $2, $3, $4)
                    ON CONFLICT DO NOTHING RETURNING id),
              c AS (INSERT INTO account_credentials (tenant_id, account_id, credential_type, identifier, secret_ref)
                    SELECT $2, id, 'api_key', $5, $6 FROM a)
         INSERT INTO capital_journal (tenant_id, account_id, entry_type, d_allocated)
         SELECT $2, id, 'allocate', $7 FROM a",
        account,
        tenant,
        label,
        venue,
        key,
        secret_ref,
        allocated,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// The local paper venue as the demo needs it: its Binance keys (with the demo's
/// secret, when set) and crypto prices where they trade.
pub fn prepare_venue(venue: &pulse_sims::paper::PaperVenue) {
    if let Ok(secret) = std::env::var(SECRET_VAR) {
        for key in BINANCE_KEYS {
            venue.register_key(key, &secret);
        }
    }
    for (symbol, price) in [
        ("BTCUSD", 60_000),
        ("BTC/USD", 60_000),
        ("SOLUSD", 150),
        ("SOL/USD", 150),
    ] {
        venue.set_price(symbol, Decimal::from(price));
    }
}

/// The demo trader's broker connection (Schwab's dialect, against the local token
/// endpoint): authorised now, its access token due for refresh, and a refresh asked
/// for at once, so that a first run shows one within seconds (console: Trading →
/// Broker connections). Re-authorised on every start: the local endpoint keeps its
/// tokens in memory. Skipped without `PULSE_SECRETS_KEY` (tokens are stored sealed).
pub async fn connect_broker(
    pool: &PgPool,
    broker: &pulse_sims::oauth_broker::OAuthBroker,
) -> anyhow::Result<()> {
    let Ok(key) = pulse_domain::secrets::key_from_env() else {
        tracing::info!("PULSE_SECRETS_KEY is not set: the demo has no broker connection");
        return Ok(());
    };
    let issued = broker.authorize();
    let seal = |t: &str| pulse_domain::secrets::seal(t, &key);
    // As the platform's OAuth callback would (the schema owner: workers only read and
    // refresh connections).
    sqlx::query!(
        "INSERT INTO broker_connections (tenant_id, user_id, broker, scopes, access_token, refresh_token,
                                         expires_at, refresh_expires_at)
         VALUES ($1, $2, 'schwab', '{api}', $3, $4, now() + interval '1 minute', now() + interval '7 days')
         ON CONFLICT (tenant_id, user_id, broker) DO UPDATE
             SET status = 'active', access_token = excluded.access_token,
                 refresh_token = excluded.refresh_token, expires_at = excluded.expires_at,
                 refresh_expires_at = excluded.refresh_expires_at, last_error = NULL,
                 updated_at = now()",
        TENANT,
        DEMO_USER,
        seal(&issued.access_token),
        seal(&issued.refresh_token),
    )
    .execute(pool)
    .await?;
    sqlx::query_scalar!("SELECT request_token_refreshes(300)")
        .fetch_one(pool)
        .await?;
    tracing::info!("demo broker connection (schwab) authorised; its first refresh is asked for");
    Ok(())
}

/// The demo tenant's trader, and the trader's Stripe customer.
pub const DEMO_USER: &str = "demo-trader";
pub const DEMO_CUSTOMER: &str = "cus_demo";

/// The demo's `n`th intent (from 1) on `account`: a pair trade entered (buy 1-3 AAPL,
/// sell 1 MSFT) and, on the next, exited the other way, so the desk trades all day on
/// the capital its exits give back.
pub fn demo_legs(account: Uuid, n: u64) -> serde_json::Value {
    let qty = 1 + (n / 2) % 3;
    let (aapl, msft) = if n % 2 == 1 {
        ("buy", "sell")
    } else {
        ("sell", "buy")
    };
    json!([
        {"account_id": account, "symbol": "AAPL", "side": aapl, "quantity": qty, "type": "market", "reference_price": "100"},
        {"account_id": account, "symbol": "MSFT", "side": msft, "quantity": 1, "type": "market", "reference_price": "100"},
    ])
}

/// Inserts a two-leg intent every `every` until `stop` (entries and exits in turn).
pub async fn run(pool: PgPool, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        n += 1;
        let legs = demo_legs(ACCOUNT, n);
        let result = async {
            let mut tx = tenancy::begin(&pool, TENANT).await?;
            sqlx::query!(
                "INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json) VALUES ($1, $2, $3)",
                TENANT,
                format!("demo-{}", Uuid::new_v4()),
                &legs,
            )
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "demo intent not inserted");
        }
    }
}
