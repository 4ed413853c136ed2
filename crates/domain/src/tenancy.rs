//! Every job that touches tenant rows does so in a transaction that runs as
//! `pulse_worker` (which does not bypass row-level security) with its tenant set:
//! the database, not the job's code, keeps tenants apart.

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The statements that confine a transaction to `tenant`. A simple-protocol batch, so
/// the tenant is spelled into the text: a `Uuid` formats as hex and dashes only.
fn confine(tenant: Uuid) -> String {
    format!("SET LOCAL ROLE pulse_worker; SELECT set_config('app.tenant_id', '{tenant}', true)")
}

/// Begins a transaction confined to `tenant`, in one round trip.
pub async fn begin(pool: &PgPool, tenant: Uuid) -> sqlx::Result<Transaction<'static, Postgres>> {
    pool.begin_with(sqlx::AssertSqlSafe(format!("BEGIN; {}", confine(tenant))))
        .await
}

/// Confines an open transaction to `tenant` from here on: for jobs that first read a
/// platform-level inbox row to learn whose it is.
pub async fn enter(tx: &mut Transaction<'_, Postgres>, tenant: Uuid) -> sqlx::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(confine(tenant)))
        .execute(&mut **tx)
        .await?;
    Ok(())
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
    sqlx::query!(
        "SELECT audit_append($1, $2, $3, $4)",
        event_type,
        subject_type,
        subject_id,
        details,
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}
