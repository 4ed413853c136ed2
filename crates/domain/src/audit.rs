//! The audit log's hash chains.
//!
//! - Sealing: events are appended unsealed (no lock on the trading path) and sealed
//!   into their tenant's chain by `audit_seal`, which every worker process runs
//!   every `SEAL_INTERVAL` ([`run_sealer`]); `pulse-fleet audit seal` runs it once.
//! - `pulse-fleet audit verify` recomputes every sealed chain in Rust, independently
//!   of the database, and reports each break: an edited row (its hash no longer
//!   matches its fields), a removed row (a gap in seq or a prev_hash that no longer
//!   links), or a reordered one. Unsealed events are counted, not judged.
//!
//! Finding the tenants with unsealed events reads across tenants, like verify: the
//! login role must bypass row-level security (the table owner as superuser or with
//! BYPASSRLS). Each tenant's sealing then runs confined to that tenant.

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

/// How often each worker process seals new audit events.
pub const SEAL_INTERVAL: Duration = Duration::from_millis(500);
/// Events sealed per transaction.
const SEAL_BATCH: i32 = 5_000;

/// Seals every tenant's unsealed events; returns how many it sealed. A tenant that
/// another process is sealing right now is skipped (that process seals it).
pub async fn seal_all(pool: &PgPool) -> sqlx::Result<u64> {
    let tenants: Vec<Uuid> =
        sqlx::query_scalar!("SELECT DISTINCT tenant_id FROM audit_events WHERE hash IS NULL")
            .fetch_all(pool)
            .await?;
    let mut sealed = 0u64;
    for tenant in tenants {
        loop {
            let mut tx = crate::tenancy::begin(pool, tenant).await?;
            let n: i32 = sqlx::query_scalar!(r#"SELECT audit_seal($1) AS "sealed!""#, SEAL_BATCH,)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            sealed += n as u64;
            if n < SEAL_BATCH {
                break;
            }
        }
    }
    Ok(sealed)
}

/// Seals new events every `SEAL_INTERVAL` until `stop`.
pub async fn run_sealer(pool: PgPool, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(SEAL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(error) = seal_all(&pool).await {
            tracing::warn!(%error, "sealing audit events failed; will retry");
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    tenant_id: Uuid,
    seq: i64,
    event_type: String,
    subject_type: String,
    subject_id: String,
    details: String,
    created_micros: i64,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub tenants: usize,
    pub events: usize,
    /// Events not sealed yet (they are, within about `SEAL_INTERVAL`, while workers run).
    pub unsealed: i64,
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The same canonical text as the SQL function `audit_canonical`.
fn canonical(e: &EventRow) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}|{}",
        e.tenant_id, e.seq, e.event_type, e.subject_type, e.subject_id, e.details, e.created_micros
    )
}

pub async fn verify(pool: &PgPool) -> sqlx::Result<Report> {
    // Read as the table owner: verification spans every tenant.
    let rows: Vec<EventRow> = sqlx::query_as!(
        EventRow,
        r#"SELECT tenant_id, seq AS "seq!", event_type, subject_type, subject_id,
                  details::text AS "details!",
                  (extract(epoch FROM created_at) * 1000000)::bigint AS "created_micros!",
                  prev_hash AS "prev_hash!", hash AS "hash!"
           FROM audit_events WHERE hash IS NOT NULL ORDER BY tenant_id, seq"#,
    )
    .fetch_all(pool)
    .await?;
    let mut report = Report {
        unsealed: sqlx::query_scalar!(
            r#"SELECT count(*) AS "n!" FROM audit_events WHERE hash IS NULL"#
        )
        .fetch_one(pool)
        .await?,
        ..Report::default()
    };
    let mut previous: Option<&EventRow> = None;
    for row in &rows {
        let first_of_tenant = previous.is_none_or(|p| p.tenant_id != row.tenant_id);
        if first_of_tenant {
            report.tenants += 1;
            if row.seq != 1 {
                report.problems.push(format!(
                    "tenant {}: events before seq {} are missing",
                    row.tenant_id, row.seq
                ));
            }
        } else if let Some(p) = previous {
            if row.seq != p.seq + 1 {
                report.problems.push(format!(
                    "tenant {}: seq {} follows {}: {} event(s) missing",
                    row.tenant_id,
                    row.seq,
                    p.seq,
                    row.seq - p.seq - 1
                ));
            }
            if row.prev_hash != p.hash {
                report.problems.push(format!(
                    "tenant {}: seq {} does not link to seq {}",
                    row.tenant_id, row.seq, p.seq
                ));
            }
        }
        if first_of_tenant && row.seq == 1 && !row.prev_hash.is_empty() {
            report.problems.push(format!(
                "tenant {}: seq 1 has a previous hash",
                row.tenant_id
            ));
        }
        let mut hasher = Sha256::new();
        hasher.update(&row.prev_hash);
        hasher.update(canonical(row).as_bytes());
        if hasher.finalize()[..] != row.hash[..] {
            report.problems.push(format!(
                "tenant {}: seq {} ({} {}) was altered: its hash does not match its contents",
                row.tenant_id, row.seq, row.subject_type, row.subject_id
            ));
        }
        report.events += 1;
        previous = Some(row);
    }
    Ok(report)
}
