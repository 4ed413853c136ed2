//! What the console's trading pages read: one account's ledger with its journal,
//! positions, orders, reconciliation; one intent with its legs, orders and fills;
//! alerts. Operators see every tenant (the web process's owner connection).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Ledger {
    pub allocated: Decimal,
    pub reserved_for_orders: Decimal,
    pub reserved_for_positions: Decimal,
    pub realized_pnl: Decimal,
    /// The same four, summed from the journal: the ledger must equal them.
    pub journal_allocated: Decimal,
    pub journal_orders: Decimal,
    pub journal_positions: Decimal,
    pub journal_pnl: Decimal,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct JournalEntry {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub entry_type: String,
    pub d_allocated: Decimal,
    pub d_reserved_for_orders: Decimal,
    pub d_reserved_for_positions: Decimal,
    pub d_realized_pnl: Decimal,
    pub ref_type: Option<String>,
    pub ref_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct PositionLeg {
    pub symbol: String,
    pub side: String,
    pub quantity: Decimal,
    pub entry_price: Option<Decimal>,
    pub cost_basis: Decimal,
    pub reserved: Decimal,
    pub realized_pnl: Decimal,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub intent_id: Option<Uuid>,
}

#[derive(Debug, Clone)]
pub struct OrderRow {
    pub id: Uuid,
    pub intent_id: Uuid,
    pub leg_index: i32,
    pub account: String,
    pub venue_id: String,
    pub symbol: String,
    pub side: String,
    pub quantity: Decimal,
    pub order_type: String,
    pub limit_price: Option<Decimal>,
    pub status: String,
    pub filled_quantity: Decimal,
    pub average_price: Option<Decimal>,
    pub reserved_amount: Decimal,
    pub client_order_id: String,
    pub venue_order_id: Option<String>,
    pub origin: String,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct FillRow {
    pub order_id: Uuid,
    pub venue_fill_id: String,
    pub quantity: Decimal,
    pub price: Decimal,
    pub fee: Decimal,
    pub filled_at: DateTime<Utc>,
    pub source: String,
}

#[derive(Debug, Clone)]
pub struct ReconciliationRun {
    pub started_at: DateTime<Utc>,
    pub reason: String,
    pub duration_ms: f64,
    pub requests: i32,
    pub ok: bool,
    pub error: Option<String>,
    pub found: serde_json::Value,
    pub fixed: serde_json::Value,
    pub remaining: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Mismatch {
    pub kind: String,
    pub subject: String,
    pub details: serde_json::Value,
    pub found_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct AccountDetail {
    pub id: Uuid,
    pub tenant: String,
    pub label: String,
    pub venue_id: String,
    pub active: bool,
    pub paused_reason: Option<String>,
    pub ledger: Option<Ledger>,
    pub journal: Vec<JournalEntry>,
    pub positions: Vec<PositionLeg>,
    pub orders: Vec<OrderRow>,
    pub runs: Vec<ReconciliationRun>,
    pub mismatches: Vec<Mismatch>,
}

/// A tenant's newest orders (50), of one account or of one intent.
async fn orders(
    pool: &PgPool,
    tenant: Uuid,
    account: Option<Uuid>,
    intent: Option<Uuid>,
) -> sqlx::Result<Vec<OrderRow>> {
    sqlx::query_as!(
        OrderRow,
        r#"SELECT o.id, o.intent_id, o.leg_index, a.label AS account, o.venue_id, o.symbol, o.side,
                  o.quantity, o.order_type, o.limit_price, o.status, o.filled_quantity, o.average_price,
                  o.reserved_amount, o.client_order_id, o.venue_order_id, o.origin, o.updated_at
           FROM orders o JOIN trading_accounts a ON a.id = o.account_id
           WHERE o.tenant_id = $1 AND ($2::uuid IS NULL OR o.account_id = $2)
             AND ($3::uuid IS NULL OR o.intent_id = $3)
           ORDER BY o.created_at DESC, o.leg_index LIMIT 50"#,
        tenant,
        account,
        intent
    )
    .fetch_all(pool)
    .await
}

/// One account with its ledger (and the journal behind it), positions, newest orders,
/// reconciliation runs and open mismatches; None if there is no such account.
pub async fn account(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<AccountDetail>> {
    let Some(a) = sqlx::query!(
        r#"SELECT a.id, a.tenant_id, t.name AS tenant, a.label, a.venue_id, a.active,
                  (SELECT ks.reason FROM kill_switches ks
                   WHERE ks.tenant_id = a.tenant_id AND ks.engaged AND (ks.account_id = a.id OR ks.account_id IS NULL)
                   ORDER BY ks.account_id NULLS LAST LIMIT 1) AS paused_reason
           FROM trading_accounts a JOIN tenants t ON t.id = a.tenant_id WHERE a.id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let ledger = sqlx::query_as!(
        Ledger,
        r#"SELECT allocated AS "allocated!", reserved_for_orders AS "reserved_for_orders!",
                  reserved_for_positions AS "reserved_for_positions!", realized_pnl AS "realized_pnl!",
                  updated_at AS "updated_at!", journal_allocated AS "journal_allocated!",
                  journal_reserved_for_orders AS "journal_orders!",
                  journal_reserved_for_positions AS "journal_positions!",
                  journal_realized_pnl AS "journal_pnl!"
           FROM capital_ledger_vs_journal WHERE account_id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?;
    let journal = sqlx::query_as!(
        JournalEntry,
        "SELECT id, created_at, entry_type, d_allocated, d_reserved_for_orders, d_reserved_for_positions,
                d_realized_pnl, ref_type, ref_id
         FROM capital_journal WHERE account_id = $1 ORDER BY id DESC LIMIT 50",
        id
    )
    .fetch_all(pool)
    .await?;
    let positions = sqlx::query_as!(
        PositionLeg,
        r#"SELECT l.symbol, l.side, l.quantity, l.entry_price, l.cost_basis, l.reserved, l.realized_pnl,
                  l.opened_at, l.closed_at, p.intent_id AS "intent_id?"
           FROM position_legs l JOIN positions p ON p.id = l.position_id
           WHERE l.account_id = $1
           ORDER BY l.closed_at IS NOT NULL, l.opened_at DESC LIMIT 50"#,
        id
    )
    .fetch_all(pool)
    .await?;
    let orders = orders(pool, a.tenant_id, Some(id), None).await?;
    let runs = sqlx::query_as!(
        ReconciliationRun,
        "SELECT started_at, reason, duration_ms, requests, ok, error, found, fixed, remaining
         FROM reconciliation_runs WHERE account_id = $1 ORDER BY started_at DESC LIMIT 20",
        id
    )
    .fetch_all(pool)
    .await?;
    let mismatches = sqlx::query_as!(
        Mismatch,
        "SELECT kind, subject, details, found_at, last_seen_at FROM reconciliation_mismatches
         WHERE account_id = $1 AND resolved_at IS NULL ORDER BY found_at DESC",
        id
    )
    .fetch_all(pool)
    .await?;
    Ok(Some(AccountDetail {
        id: a.id,
        tenant: a.tenant,
        label: a.label,
        venue_id: a.venue_id,
        active: a.active,
        paused_reason: a.paused_reason,
        ledger,
        journal,
        positions,
        orders,
        runs,
        mismatches,
    }))
}

#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub seq: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub event_type: String,
    pub subject_type: String,
    pub subject_id: String,
    pub details: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct IntentDetail {
    pub id: Uuid,
    pub tenant: String,
    pub status: String,
    pub reason: Option<String>,
    pub origin: String,
    pub idempotency_key: String,
    pub legs_json: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub orders: Vec<OrderRow>,
    pub fills: Vec<FillRow>,
    pub audit: Vec<AuditEvent>,
}

/// One intent with its legs as written, its orders, their fills and the audit events
/// about it and its orders.
pub async fn intent(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<IntentDetail>> {
    let Some(i) = sqlx::query!(
        r#"SELECT i.id, t.name AS tenant, i.status::text AS "status!", i.reason, i.origin, i.idempotency_key,
                  i.legs_json, i.created_at, i.updated_at, i.tenant_id
           FROM multi_leg_intents i JOIN tenants t ON t.id = i.tenant_id WHERE i.id = $1"#,
        id
    )
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let orders = orders(pool, i.tenant_id, None, Some(id)).await?;
    let order_ids: Vec<Uuid> = orders.iter().map(|o| o.id).collect();
    let fills = sqlx::query_as!(
        FillRow,
        "SELECT order_id, venue_fill_id, quantity, price, fee, filled_at, source FROM fills
         WHERE tenant_id = $1 AND order_id = ANY($2) ORDER BY filled_at",
        i.tenant_id,
        &order_ids
    )
    .fetch_all(pool)
    .await?;
    let subjects: Vec<String> = std::iter::once(id.to_string())
        .chain(order_ids.iter().map(|o| o.to_string()))
        .collect();
    let audit = sqlx::query_as!(
        AuditEvent,
        "SELECT seq, created_at, event_type, subject_type, subject_id, details FROM audit_events
         WHERE tenant_id = $1 AND subject_id = ANY($2) ORDER BY id LIMIT 200",
        i.tenant_id,
        &subjects
    )
    .fetch_all(pool)
    .await?;
    Ok(Some(IntentDetail {
        id: i.id,
        tenant: i.tenant,
        status: i.status,
        reason: i.reason,
        origin: i.origin,
        idempotency_key: i.idempotency_key,
        legs_json: i.legs_json,
        created_at: i.created_at,
        updated_at: i.updated_at,
        orders,
        fills,
        audit,
    }))
}

#[derive(Debug, Clone)]
pub struct AlertRow {
    pub id: i64,
    pub tenant: String,
    pub user_id: Option<String>,
    pub kind: String,
    pub status: String,
    pub attempts: i32,
    pub sent_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub payload: serde_json::Value,
}

/// The newest alerts and how their delivery went.
pub async fn alerts(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<AlertRow>> {
    sqlx::query_as!(
        AlertRow,
        r#"SELECT a.id, t.name AS tenant, a.user_id, a.kind::text AS "kind!", a.status, a.attempts,
                  a.sent_at, a.last_error, a.created_at, a.payload
           FROM alerts a JOIN tenants t ON t.id = a.tenant_id ORDER BY a.id DESC LIMIT $1"#,
        limit
    )
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone)]
pub struct BrokerConnection {
    pub id: Uuid,
    pub tenant: String,
    pub user_id: String,
    pub broker: String,
    pub status: String,
    pub scopes: Vec<String>,
    pub expires_at: DateTime<Utc>,
    pub refresh_expires_at: Option<DateTime<Utc>>,
    pub refreshed_at: Option<DateTime<Utc>>,
    pub generation: i32,
    pub last_error: Option<String>,
}

/// Every broker connection with its tokens' expiry (never the tokens), soonest first.
pub async fn broker_connections(pool: &PgPool) -> sqlx::Result<Vec<BrokerConnection>> {
    sqlx::query_as!(
        BrokerConnection,
        "SELECT c.id, t.name AS tenant, c.user_id, c.broker, c.status, c.scopes, c.expires_at,
                c.refresh_expires_at, c.refreshed_at, c.generation, c.last_error
         FROM broker_connections c JOIN tenants t ON t.id = c.tenant_id
         ORDER BY c.status = 'active', c.expires_at LIMIT 200"
    )
    .fetch_all(pool)
    .await
}
