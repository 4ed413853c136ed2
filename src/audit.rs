//! `pulse-fleet audit verify`: recomputes every tenant's audit hash chain in Rust,
//! independently of the database's trigger, and reports each break: an edited row
//! (its hash no longer matches its fields), a removed row (a gap in seq or a
//! prev_hash that no longer links), or a reordered one.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

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
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT tenant_id, seq, event_type, subject_type, subject_id, details::text AS details,
                (extract(epoch FROM created_at) * 1000000)::bigint AS created_micros, prev_hash, hash
         FROM audit_events ORDER BY tenant_id, seq",
    )
    .fetch_all(pool)
    .await?;
    let mut report = Report::default();
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
