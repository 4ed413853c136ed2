//! `pulse-fleet all --demo`: a demo desk for local runs. Seeds a tenant with one
//! paper-venue account (capital allocated through the journal) and inserts a two-leg
//! intent every few seconds, which execute_intent trades on the paper venue; the
//! dashboard shows them. Never for production data.

use std::time::Duration;

use jobs::tenancy;
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

pub const TENANT: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_de00);
pub const ACCOUNT: Uuid = Uuid::from_u128(0x0000_0000_0000_4000_8000_0000_0000_de01);
/// The paper venue accepts any key; the secret comes from this variable.
pub const SECRET_VAR: &str = "PULSE_DEMO_PAPER_SECRET";

pub async fn seed(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO venues (id, name, kind) VALUES ('paper', 'Paper venue (Alpaca dialect)', 'broker') ON CONFLICT DO NOTHING")
        .execute(pool)
        .await?;
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'demo desk') ON CONFLICT DO NOTHING")
        .bind(TENANT)
        .execute(pool)
        .await?;
    let mut tx = tenancy::begin(pool, TENANT).await?;
    let created = sqlx::query(
        "INSERT INTO trading_accounts (id, tenant_id, label, venue_id) VALUES ($1, $2, 'demo-main', 'paper')
         ON CONFLICT DO NOTHING",
    )
    .bind(ACCOUNT)
    .bind(TENANT)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if created == 1 {
        sqlx::query(
            "INSERT INTO account_credentials (tenant_id, account_id, credential_type, identifier, secret_ref)
             VALUES ($1, $2, 'api_key', 'PKDEMO', $3)",
        )
        .bind(TENANT)
        .bind(ACCOUNT)
        .bind(format!("env:{SECRET_VAR}"))
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO capital_journal (tenant_id, account_id, entry_type, d_allocated) VALUES ($1, $2, 'allocate', 1000000)",
        )
        .bind(TENANT)
        .bind(ACCOUNT)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Inserts a two-leg intent every `every` until `stop`.
pub async fn run(pool: PgPool, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        n += 1;
        let legs = json!([
            {"account_id": ACCOUNT, "symbol": "AAPL", "side": "buy", "quantity": 1 + n % 3, "type": "market", "reference_price": "100"},
            {"account_id": ACCOUNT, "symbol": "MSFT", "side": "sell", "quantity": 1, "type": "market", "reference_price": "100"},
        ]);
        let result = async {
            let mut tx = tenancy::begin(&pool, TENANT).await?;
            sqlx::query("INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json) VALUES ($1, $2, $3)")
                .bind(TENANT)
                .bind(format!("demo-{}", Uuid::new_v4()))
                .bind(&legs)
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
