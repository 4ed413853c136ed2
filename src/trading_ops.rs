//! Operators' actions on a trading account (`pulse-fleet trading ...`), each audited
//! in the account's tenant: reconcile it now, rebuild its ledger from the journal
//! (the one sanctioned write to a ledger row outside the journal trigger, for drift),
//! and resume trading by releasing its kill switch. The runbooks in `docs/runbooks/`
//! say when.

use anyhow::{Context, bail};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// Begins a transaction in `account`'s tenant (for its audit events) as the operator's
/// own role; returns the tenant.
async fn begin(
    pool: &PgPool,
    account: Uuid,
) -> anyhow::Result<(Transaction<'static, Postgres>, Uuid)> {
    let mut tx = pool.begin().await?;
    let tenant = sqlx::query_scalar!(
        "SELECT tenant_id FROM trading_accounts WHERE id = $1",
        account
    )
    .fetch_optional(&mut *tx)
    .await?
    .with_context(|| format!("no trading account {account}"))?;
    sqlx::query!(
        "SELECT set_config('app.tenant_id', $1, true)",
        tenant.to_string()
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok((tx, tenant))
}

/// Asks for a reconciliation of `account` now (one at a time per account still).
pub async fn reconcile(pool: &PgPool, account: Uuid) -> anyhow::Result<i64> {
    let (mut tx, tenant) = begin(pool, account).await?;
    let id = sqlx::query_scalar!(
        r#"SELECT fleet.enqueue('reconcile_account',
                  jsonb_build_object('tenant_id', $1::uuid, 'account_id', $2::uuid, 'reason', 'manual'),
                  'reconcile:' || $2 || ':manual:' || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
                  NULL, 1, NULL, 'reconcile:' || $2) AS "id!""#,
        tenant,
        account,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Rewrites the account's ledger row as the sum of its journal, recording both in a
/// `ledger_rebuilt` audit event. Returns the audit details.
pub async fn rebuild_ledger(
    pool: &PgPool,
    account: Uuid,
    why: &str,
) -> anyhow::Result<serde_json::Value> {
    let (mut tx, _) = begin(pool, account).await?;
    let details = sqlx::query_scalar!(
        r#"WITH journal AS (
               SELECT coalesce(sum(d_allocated), 0) AS allocated, coalesce(sum(d_reserved_for_orders), 0) AS orders,
                      coalesce(sum(d_reserved_for_positions), 0) AS positions, coalesce(sum(d_realized_pnl), 0) AS pnl
               FROM capital_journal WHERE account_id = $1),
           before AS (SELECT * FROM capital_ledgers WHERE account_id = $1 FOR UPDATE),
           rebuilt AS (
               UPDATE capital_ledgers l SET allocated = j.allocated, reserved_for_orders = j.orders,
                                            reserved_for_positions = j.positions, realized_pnl = j.pnl,
                                            updated_at = now()
               FROM journal j WHERE l.account_id = $1
               RETURNING l.account_id)
           SELECT jsonb_build_object(
                      'reason', $2::text,
                      'before', (SELECT to_jsonb(b) - 'tenant_id' - 'account_id' - 'updated_at' FROM before b),
                      'after', (SELECT to_jsonb(j) FROM journal j)) AS "details!"
           FROM rebuilt"#,
        account,
        why,
    )
    .fetch_optional(&mut *tx)
    .await?
    .with_context(|| format!("account {account} has no ledger"))?;
    sqlx::query!(
        "SELECT audit_append('ledger_rebuilt', 'account', $1::text, $2)",
        account.to_string(),
        details,
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(details)
}

/// Releases the account's kill switch, with the operator's reason, audited. Refused
/// while its ledger still drifts from its journal (rebuild it, or find why, first).
pub async fn resume(pool: &PgPool, account: Uuid, why: &str) -> anyhow::Result<Option<String>> {
    let (mut tx, _) = begin(pool, account).await?;
    let drifts = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM capital_ledger_drift WHERE account_id = $1) AS "drifts!""#,
        account
    )
    .fetch_one(&mut *tx)
    .await?;
    if drifts {
        bail!(
            "account {account}: its ledger still differs from its journal; `pulse-fleet trading rebuild-ledger` first"
        );
    }
    let was = sqlx::query_scalar!(
        "WITH released AS (
             UPDATE kill_switches k SET engaged = false, changed_at = now(),
                                        reason = 'released by an operator: ' || $2
             FROM kill_switches old
             WHERE k.id = old.id AND k.account_id = $1 AND k.engaged
             RETURNING old.reason)
         SELECT reason FROM released",
        account,
        why,
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(was) = was else {
        bail!("account {account}: trading is not paused");
    };
    sqlx::query!(
        "SELECT audit_append('trading_resumed', 'account', $1::text,
                             jsonb_build_object('reason', $2::text, 'was_paused_for', $3::text))",
        account.to_string(),
        why,
        was,
    )
    .fetch_one(&mut *tx)
    .await?;
    // The drift mismatch, if any, is over: the ledger equals its journal.
    sqlx::query!(
        "UPDATE reconciliation_mismatches SET resolved_at = now(), resolution = 'cleared by an operator: ' || $2
         WHERE account_id = $1 AND kind = 'ledger_drift' AND resolved_at IS NULL",
        account,
        why,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(was)
}
