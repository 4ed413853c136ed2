//! What a reconciliation found, in `reconciliation_mismatches` and in the run's
//! tallies: every difference is a row, open while it lasts (one per account, kind
//! and subject), resolved when fixed or when a later run no longer finds it.

use std::collections::BTreeMap;

use serde_json::Value;
use uuid::Uuid;

use crate::{JobContext, JobError};
use pulse_domain::tenancy;

/// The kinds of difference, as `reconciliation_mismatches.kind` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Open in the database, ended at the venue (or the reverse of an ending).
    OrderState,
    /// Sent, and no answer recorded past the in-flight threshold.
    InFlight,
    /// At the venue, unknown to the database.
    UnknownOrder,
    /// A fill at the venue the database lacked.
    MissingFill,
    /// Ended in the database, still working at the venue.
    OpenAtVenue,
    Position,
    LedgerDrift,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::OrderState,
        Kind::InFlight,
        Kind::UnknownOrder,
        Kind::MissingFill,
        Kind::OpenAtVenue,
        Kind::Position,
        Kind::LedgerDrift,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OrderState => "order_state",
            Kind::InFlight => "in_flight",
            Kind::UnknownOrder => "unknown_order",
            Kind::MissingFill => "missing_fill",
            Kind::OpenAtVenue => "open_at_venue",
            Kind::Position => "position",
            Kind::LedgerDrift => "ledger_drift",
        }
    }
}

/// One run's findings, by kind.
#[derive(Debug)]
pub struct Findings {
    tenant: Uuid,
    account: Uuid,
    metrics: pulse_contract::metrics::Recorder,
    pub requests: i32,
    pub found: BTreeMap<Kind, i64>,
    pub fixed: BTreeMap<Kind, i64>,
}

impl Findings {
    pub fn new(ctx: &JobContext, tenant: Uuid, account: Uuid) -> Self {
        Self {
            tenant,
            account,
            metrics: ctx.services.metrics.clone(),
            requests: 0,
            found: Default::default(),
            fixed: Default::default(),
        }
    }

    pub fn json(map: &BTreeMap<Kind, i64>) -> Value {
        Value::Object(
            map.iter()
                .map(|(k, n)| (k.as_str().to_owned(), Value::from(*n)))
                .collect(),
        )
    }

    /// A difference found and fixed in this run (applied through the lifecycle): kept
    /// as a resolved row, or the open row of an earlier sighting resolved.
    pub async fn fixed(
        &mut self,
        pool: &sqlx::PgPool,
        kind: Kind,
        subject: &str,
        details: Value,
        resolution: &str,
    ) -> Result<(), JobError> {
        let (tenant, account) = (self.tenant, self.account);
        let mut tx = tenancy::begin(pool, tenant).await?;
        let earlier = sqlx::query_scalar!(
            "UPDATE reconciliation_mismatches SET resolved_at = now(), last_seen_at = now(),
                    resolution = $5, details = details || $4
             WHERE account_id = $1 AND kind = $2 AND subject = $3 AND resolved_at IS NULL
             RETURNING id",
            account,
            kind.as_str(),
            subject,
            details,
            resolution,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if earlier.is_none() {
            sqlx::query!(
                "INSERT INTO reconciliation_mismatches (tenant_id, account_id, kind, subject, details,
                                                        resolved_at, resolution)
                 VALUES ($1, $2, $3, $4, $5, now(), $6)",
                tenant,
                account,
                kind.as_str(),
                subject,
                details,
                resolution,
            )
            .execute(&mut *tx)
            .await?;
            self.count_found(kind);
        }
        tx.commit().await?;
        *self.fixed.entry(kind).or_default() += 1;
        Ok(())
    }

    /// A difference that stays: its open row is kept up to date. True when it is new
    /// (the caller audits and alerts once, not on every run).
    pub async fn open(
        &mut self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        kind: Kind,
        subject: &str,
        details: Value,
    ) -> Result<bool, JobError> {
        let (tenant, account) = (self.tenant, self.account);
        let new = sqlx::query_scalar!(
            r#"INSERT INTO reconciliation_mismatches (tenant_id, account_id, kind, subject, details)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (tenant_id, account_id, kind, subject) WHERE resolved_at IS NULL
               DO UPDATE SET last_seen_at = now(), details = excluded.details
               RETURNING xmax = 0 AS "new!""#,
            tenant,
            account,
            kind.as_str(),
            subject,
            details,
        )
        .fetch_one(&mut **tx)
        .await?;
        if new {
            self.count_found(kind);
        }
        Ok(new)
    }

    /// Resolves the open rows of `kind` whose subject this run no longer found.
    pub async fn gone(
        &mut self,
        pool: &sqlx::PgPool,
        kind: Kind,
        still: &[String],
        resolution: &str,
    ) -> Result<(), JobError> {
        let (tenant, account) = (self.tenant, self.account);
        let mut tx = tenancy::begin(pool, tenant).await?;
        let n = sqlx::query_scalar!(
            r#"WITH gone AS (
                   UPDATE reconciliation_mismatches SET resolved_at = now(), resolution = $4
                   WHERE account_id = $1 AND kind = $2 AND resolved_at IS NULL AND subject <> ALL($3)
                   RETURNING 1)
               SELECT count(*) AS "n!" FROM gone"#,
            account,
            kind.as_str(),
            still,
            resolution,
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        if n > 0 {
            *self.fixed.entry(kind).or_default() += n;
        }
        Ok(())
    }

    fn count_found(&mut self, kind: Kind) {
        *self.found.entry(kind).or_default() += 1;
        self.metrics
            .add("reconciliation_mismatches_found", kind.as_str(), "", 1.0);
    }
}
