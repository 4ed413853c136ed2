//! `reconcile_account`: the database compared with the venue's truth for one account,
//! in full sets, through the `Venue` trait and within the account's request budget
//! (every request is taken from it first). One run:
//!
//! 1. orders (`orders.rs`): the venue's open orders and the orders it lists since the
//!    last run, against the database's working and in-flight ones. An order ended at
//!    the venue is applied through the lifecycle, as sync applies it; an order the
//!    database never knew is imported as an external order; an order ended here but
//!    working there is cancelled at the venue (we gave up on it) and reported; an
//!    order stuck in flight is looked up by client order id, a bounded number per
//!    run, and one the venue never got, after enough look-ups over a minimum age and
//!    once the OMS is done with its intent, ends rejected with its reservation back;
//! 2. fills since the run's cursor that the database lacks, applied;
//! 3. positions per symbol (`holdings.rs`) against the venue's: a difference is
//!    recorded with both sides, audited and alerted, and never traded away;
//! 4. the ledger against its journal: drift is recorded, audited, alerted, and the
//!    account's kill switch engaged until an operator clears it.
//!
//! Every difference is a row of `reconciliation_mismatches` (`findings.rs`), and the run
//! one row of `reconciliation_runs`. Nothing is held across a venue request: each
//! change is its own short transaction, so trading on the account waits at most for
//! one statement of ours. At most one run per account at a time: the queue's
//! concurrency key `reconcile:<account>` (a lease that expires with a dead worker,
//! fenced by its token), so no lock table of our own is needed.
//!
//! Enqueued by `reconcile_accounts` (the schedule) and when a worker process starts
//! (`request_reconciliations('startup')`), which closes each active account's gate:
//! its new intents wait in planning until a run that started after the gate closed
//! succeeds.

mod findings;
mod holdings;
mod orders;

use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Job, JobContext, JobError};
use findings::{Findings, Kind};
use pulse_contract::{RetentionHook, retention_hook};
use pulse_domain::{
    lifecycle, tenancy,
    venue::{Call, Venue},
};

pub use findings::Kind as MismatchKind;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReconcileAccount {
    pub tenant_id: Uuid,
    pub account_id: Uuid,
    /// `schedule`, `startup` or `manual`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Thresholds of a run (config `[reconcile]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// An order sent and unanswered this long is looked up by client order id.
    pub in_flight_after: Duration,
    /// ... and resolved as never received after this many look-ups that did not find
    /// it, no sooner than this long after it was sent.
    pub never_received_lookups: i32,
    pub never_received_after: Duration,
    /// Single-order look-ups per run at most (the rest wait for the next run).
    pub max_lookups: usize,
    /// How far back the first run of an account reads orders and fills.
    pub lookback: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            in_flight_after: Duration::from_secs(10),
            never_received_lookups: 3,
            never_received_after: Duration::from_secs(60),
            max_lookups: 20,
            lookback: Duration::from_secs(24 * 3600),
        }
    }
}

/// The venue's clocks and ours differ a little, and `after` is exclusive: lists are
/// read from this much before a cursor (applying is idempotent).
const MARGIN: TimeDelta = TimeDelta::seconds(2);
/// Most pages of a list one run reads; the rest waits for the next run.
const MAX_PAGES: usize = 20;

/// One run over one account.
struct Run<'a> {
    ctx: &'a JobContext,
    tenant: Uuid,
    account: Uuid,
    venue_id: String,
    venue: &'a dyn Venue,
    /// The symbols the account's history can be in (venues that list it per symbol).
    symbols: Vec<String>,
    findings: Findings,
    /// Where the lists start this run, and where the next run's will.
    orders_after: DateTime<Utc>,
    fills_after: DateTime<Utc>,
    next_orders_after: Option<DateTime<Utc>>,
    next_fills_after: Option<DateTime<Utc>>,
}

impl Run<'_> {
    /// What `call` costs, from the account's budget, before it is made.
    async fn spend(&mut self, call: Call) -> Result<(), JobError> {
        crate::venue_budget::spend(
            self.ctx,
            (self.tenant, self.account),
            self.venue,
            call,
            &mut self.findings.requests,
        )
        .await
    }

    async fn all(&mut self) -> Result<(), JobError> {
        self.orders().await?;
        self.fills(self.fills_after).await?;
        self.positions().await?;
        self.ledger().await
    }
}

impl Job for ReconcileAccount {
    const NAME: &'static str = "reconcile_account";
    const MAX_ATTEMPTS: i32 = 10;
    const TIMEOUT: Duration = Duration::from_secs(120);

    /// Runs and resolved mismatches older than `keep` go (open mismatches stay, and
    /// every account's latest run).
    fn retention() -> Option<RetentionHook> {
        Some(retention_hook(|pool, keep| async move {
            let secs = keep.as_secs_f64();
            let mismatches = sqlx::query!(
                "DELETE FROM reconciliation_mismatches
                 WHERE resolved_at < now() - make_interval(secs => $1)",
                secs,
            )
            .execute(&pool)
            .await?
            .rows_affected();
            let runs = sqlx::query!(
                "DELETE FROM reconciliation_runs r
                 WHERE finished_at < now() - make_interval(secs => $1)
                   AND EXISTS (SELECT 1 FROM reconciliation_runs n
                               WHERE n.account_id = r.account_id AND n.started_at > r.started_at)",
                secs,
            )
            .execute(&pool)
            .await?
            .rows_affected();
            Ok(mismatches + runs)
        }))
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let (tenant, account) = (self.tenant_id, self.account_id);
        let reason = match self.reason.as_deref() {
            Some(r @ ("schedule" | "startup" | "manual")) => r,
            None => "schedule",
            Some(other) => {
                return Err(JobError::permanent(format!(
                    "unknown reconciliation reason {other:?}"
                )));
            }
        };
        let started = Utc::now();
        let clock = Instant::now();
        let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
        let Some(row) = sqlx::query!(
            r#"SELECT a.venue_id, a.active, c.identifier, c.secret_ref AS "secret_ref?",
                      r.orders_after, r.fills_after
               FROM trading_accounts a
               LEFT JOIN account_credentials c ON c.account_id = a.id AND c.credential_type = 'api_key'
               LEFT JOIN account_reconciliation r ON r.account_id = a.id
               WHERE a.id = $1"#,
            account
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(JobError::permanent(format!(
                "no account {account} in tenant {tenant}"
            )));
        };
        // Where this run's lists start, and the symbols the account's history since
        // then can be in (read in the same transaction).
        let lookback = started - TimeDelta::from_std(ctx.reconcile.lookback).unwrap_or_default();
        let orders_after = row.orders_after.unwrap_or(lookback) - MARGIN;
        let fills_after = row.fills_after.unwrap_or(lookback) - MARGIN;
        let symbols =
            lifecycle::account_symbols(&mut tx, account, orders_after.min(fills_after)).await?;
        tx.commit().await?;
        if !row.active {
            return open_gate(&ctx, tenant, account, started).await;
        }
        let venue = crate::venue_budget::account_venue(
            &ctx,
            (tenant, account),
            &row.venue_id,
            row.identifier.as_deref(),
            row.secret_ref.as_deref(),
        )?;
        let mut run = Run {
            ctx: &ctx,
            tenant,
            account,
            venue_id: row.venue_id,
            venue: venue.as_ref(),
            symbols,
            findings: Findings::new(&ctx, tenant, account),
            orders_after,
            fills_after,
            next_orders_after: row.orders_after,
            next_fills_after: row.fills_after,
        };
        let outcome = run.all().await;
        if let Err(JobError::Snooze(wait)) = outcome {
            // Out of budget: the run is done again after the wait; what it applied
            // so far stays applied (every step is idempotent).
            return Err(JobError::Snooze(wait));
        }
        let error = outcome.as_ref().err().map(ToString::to_string);
        let seconds = clock.elapsed().as_secs_f64();
        record_run(&run, reason, started, seconds, error.as_deref()).await?;
        let metrics = &ctx.services.metrics;
        metrics.add(
            "reconciliation_runs",
            if error.is_none() { "ok" } else { "failed" },
            "",
            1.0,
        );
        metrics.observe("reconciliation_duration_seconds", "", seconds);
        outcome
    }
}

/// The run's row, its account's cursors and last times, and (when it succeeded) the
/// account's gate opened if it closed before the run started.
async fn record_run(
    run: &Run<'_>,
    reason: &str,
    started: DateTime<Utc>,
    seconds: f64,
    error: Option<&str>,
) -> Result<(), JobError> {
    let mut tx = tenancy::begin(&run.ctx.pool, run.tenant).await?;
    let remaining: Vec<(String, i64)> = sqlx::query!(
        r#"SELECT kind, count(*) AS "n!" FROM reconciliation_mismatches
           WHERE account_id = $1 AND resolved_at IS NULL GROUP BY kind"#,
        run.account
    )
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| (r.kind, r.n))
    .collect();
    let remaining = serde_json::Value::Object(
        remaining
            .into_iter()
            .map(|(k, n)| (k, serde_json::Value::from(n)))
            .collect(),
    );
    let f = &run.findings;
    sqlx::query!(
        "WITH run AS (
             INSERT INTO reconciliation_runs (tenant_id, account_id, reason, started_at, duration_ms,
                                              requests, ok, error, found, fixed, remaining)
             VALUES ($1, $2, $3, $4, $5, $6, $7::text IS NULL, $7, $8, $9, $10))
         INSERT INTO account_reconciliation AS r (tenant_id, account_id, orders_after, fills_after,
                                                  last_run_at, last_success_at)
         VALUES ($1, $2, $11, $12, now(), CASE WHEN $7 IS NULL THEN now() END)
         ON CONFLICT (tenant_id, account_id) DO UPDATE
             SET orders_after = greatest(r.orders_after, excluded.orders_after),
                 fills_after = greatest(r.fills_after, excluded.fills_after),
                 last_run_at = now(),
                 last_success_at = coalesce(excluded.last_success_at, r.last_success_at),
                 gate_since = CASE WHEN $7 IS NULL AND r.gate_since <= $4 THEN NULL ELSE r.gate_since END",
        run.tenant,
        run.account,
        reason,
        started,
        seconds * 1000.0,
        f.requests,
        error,
        Findings::json(&f.found),
        Findings::json(&f.fixed),
        remaining,
        run.next_orders_after,
        run.next_fills_after,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::debug!(account.id = %run.account, requests = f.requests, found = ?f.found, "account reconciled");
    Ok(())
}

/// An inactive account is not reconciled; its gate must not hold anything.
async fn open_gate(
    ctx: &JobContext,
    tenant: Uuid,
    account: Uuid,
    started: DateTime<Utc>,
) -> Result<(), JobError> {
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    sqlx::query!(
        "UPDATE account_reconciliation SET gate_since = NULL WHERE account_id = $1 AND gate_since <= $2",
        account,
        started
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Whether a client order id has our scheme (`execute_intent::client_order_id`).
fn ours(client_order_id: &str) -> bool {
    let Some(rest) = client_order_id.strip_prefix("pf") else {
        return false;
    };
    let Some((hex, leg)) = rest.split_once('-') else {
        return false;
    };
    hex.len() == crate::execute_intent::CLIENT_ORDER_ID_HEX
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !leg.is_empty()
        && leg.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_client_order_ids_are_told_apart() {
        let id = crate::execute_intent::client_order_id(Uuid::new_v4(), Uuid::new_v4(), 3);
        assert!(ours(&id), "{id}");
        assert!(ours(&crate::execute_intent::client_order_id(
            Uuid::nil(),
            Uuid::nil(),
            1001
        )));
        for other in [
            "",
            "pf",
            &Uuid::new_v4().to_string(),
            "pf0123-1",
            "pf0123456789abcdef0123456789AB-1",
            "pf0123456789abcdef0123456789ab-",
            "pf0123456789abcdef0123456789ab-1x",
            "xx0123456789abcdef0123456789ab-1",
            // The longer digest of earlier ids.
            "pf0123456789abcdef0123456789abcdef-1",
        ] {
            assert!(!ours(other), "{other}");
        }
    }
}
