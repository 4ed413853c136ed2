//! Every job that touches tenant rows does so in a transaction that runs as
//! `pulse_worker` (which does not bypass row-level security) with its tenant set:
//! the database, not the job's code, keeps tenants apart.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Begins a transaction confined to `tenant`, in one round trip.
pub async fn begin(pool: &PgPool, tenant: Uuid) -> sqlx::Result<Transaction<'static, Postgres>> {
    // A simple-protocol batch, so the tenant is spelled into the text: a `Uuid`
    // formats as hex and dashes only.
    pool.begin_with(sqlx::AssertSqlSafe(format!(
        "BEGIN; SET LOCAL ROLE pulse_worker; SELECT set_config('app.tenant_id', '{tenant}', true)"
    )))
    .await
}

/// Appends an audit event for the transaction's tenant (in the caller's transaction,
/// so it exists exactly when the action it records does). It is sealed into the
/// tenant's hash chain shortly after commit (see `audit_seal`). Statements that want
/// to record their event in the same round trip call `audit_append` themselves.
pub async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    event_type: &str,
    subject_type: &str,
    subject_id: &str,
    details: &serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("SELECT audit_append($1, $2, $3, $4)")
        .bind(event_type)
        .bind(subject_type)
        .bind(subject_id)
        .bind(details)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
