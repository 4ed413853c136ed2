//! Every job that touches tenant rows does so in a transaction that runs as
//! `pulse_worker` (which does not bypass row-level security) with its tenant set:
//! the database, not the job's code, keeps tenants apart.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Begins a transaction confined to `tenant`.
pub async fn begin(pool: &PgPool, tenant: Uuid) -> sqlx::Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    // One round trip: `role` is what SET LOCAL ROLE sets.
    sqlx::query(
        "SELECT set_config('role', 'pulse_worker', true), set_config('app.tenant_id', $1, true)",
    )
    .bind(tenant.to_string())
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

/// Appends an audit event to the tenant's hash chain (in the caller's transaction, so
/// it exists exactly when the action it records does).
pub async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    tenant: Uuid,
    event_type: &str,
    subject_type: &str,
    subject_id: &str,
    details: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (tenant_id, event_type, subject_type, subject_id, details, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, '', '')",
    )
    .bind(tenant)
    .bind(event_type)
    .bind(subject_type)
    .bind(subject_id)
    .bind(details)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
