//! Positions and the ledger: compared, reported, never traded or written to fix.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::json;

use super::{Kind, Run};
use crate::{JobError, venue_budget::venue_failure};
use pulse_domain::venue::Call;
use pulse_domain::{lifecycle, tenancy};

/// Net quantity per symbol (negative: short).
type Book = BTreeMap<String, Decimal>;

impl Run<'_> {
    /// Positions per symbol against the venue's. A difference may be a fill on its way:
    /// before anything is reported the fills are read once more and both sides again.
    pub(super) async fn positions(&mut self) -> Result<(), JobError> {
        let mut diff = self.position_diff().await?;
        if !diff.is_empty() {
            self.fills(self.fills_after).await?;
            diff = self.position_diff().await?;
        }
        let subjects: Vec<String> = diff.keys().cloned().collect();
        for (symbol, (ours, theirs)) in diff {
            let details = json!({"symbol": symbol, "ours": ours, "venue": theirs,
                                 "difference": theirs - ours});
            let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
            let new = self
                .findings
                .open(&mut tx, Kind::Position, &symbol, details.clone())
                .await?;
            if new {
                tenancy::audit(
                    &mut tx,
                    "position_mismatch",
                    "account",
                    &self.account.to_string(),
                    &details,
                )
                .await?;
                lifecycle::account_alert(&mut tx, self.tenant, self.account, "system", json!({
                    "title": format!("Position mismatch: {symbol}"),
                    "message": format!(
                        "The venue holds {} {symbol}, the platform {}. Nothing was traded to fix it; see the reconciliation runbook.",
                        theirs.normalize(), ours.normalize()),
                    "fields": [
                        {"name": "Account", "value": self.account.to_string(), "inline": false},
                        {"name": "Venue", "value": theirs.normalize().to_string(), "inline": true},
                        {"name": "Platform", "value": ours.normalize().to_string(), "inline": true},
                    ],
                }))
                .await?;
            }
            tx.commit().await?;
        }
        self.findings
            .gone(
                &self.ctx.pool,
                Kind::Position,
                &subjects,
                "the positions agree again",
            )
            .await
    }

    /// Symbols whose net quantity differs: (ours, the venue's).
    async fn position_diff(&mut self) -> Result<BTreeMap<String, (Decimal, Decimal)>, JobError> {
        self.spend(Call::Positions).await?;
        let theirs: Book = self
            .venue
            .positions()
            .await
            .map_err(|e| venue_failure("reconcile: positions", e))?
            .into_iter()
            .map(|p| (p.symbol, p.qty))
            .collect();
        let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
        let ours: Book = sqlx::query!(
            r#"SELECT symbol, sum(CASE side WHEN 'long' THEN quantity ELSE -quantity END) AS "qty!"
               FROM position_legs WHERE account_id = $1 AND closed_at IS NULL GROUP BY symbol"#,
            self.account
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.symbol, r.qty))
        .collect();
        tx.commit().await?;
        let mut diff = BTreeMap::new();
        for symbol in ours.keys().chain(theirs.keys()) {
            let (o, t) = (
                ours.get(symbol).copied().unwrap_or_default(),
                theirs.get(symbol).copied().unwrap_or_default(),
            );
            if o != t {
                diff.insert(symbol.clone(), (o.normalize(), t.normalize()));
            }
        }
        Ok(diff)
    }

    /// The live ledger against the sum of its journal. Drift pauses trading on the
    /// account (its kill switch, with the reason) until an operator clears it.
    pub(super) async fn ledger(&mut self) -> Result<(), JobError> {
        let mut tx = tenancy::begin(&self.ctx.pool, self.tenant).await?;
        let row = sqlx::query!(
            r#"SELECT allocated AS "allocated!", reserved_for_orders AS "reserved_for_orders!",
                      reserved_for_positions AS "reserved_for_positions!", realized_pnl AS "realized_pnl!",
                      journal_allocated AS "j_allocated!", journal_reserved_for_orders AS "j_orders!",
                      journal_reserved_for_positions AS "j_positions!", journal_realized_pnl AS "j_pnl!"
               FROM capital_ledger_vs_journal WHERE account_id = $1"#,
            self.account
        )
        .fetch_optional(&mut *tx)
        .await?;
        let drift = row.and_then(|r| {
            let live = [r.allocated, r.reserved_for_orders, r.reserved_for_positions, r.realized_pnl];
            let journal = [r.j_allocated, r.j_orders, r.j_positions, r.j_pnl];
            (live != journal).then(|| {
                let names = ["allocated", "reserved_for_orders", "reserved_for_positions", "realized_pnl"];
                let side = |v: [Decimal; 4]| {
                    serde_json::Value::Object(
                        names.iter().zip(v).map(|(n, d)| (n.to_string(), json!(d.normalize()))).collect(),
                    )
                };
                let total: Decimal = live.iter().zip(journal).map(|(l, j)| (*l - j).abs()).sum();
                (json!({"ledger": side(live), "journal": side(journal), "total": total.normalize()}), total)
            })
        });
        let metrics = &self.ctx.services.metrics;
        let Some((details, total)) = drift else {
            tx.commit().await?;
            return self
                .findings
                .gone(
                    &self.ctx.pool,
                    Kind::LedgerDrift,
                    &[],
                    "the ledger equals its journal again (trading stays paused until cleared)",
                )
                .await;
        };
        let new = self
            .findings
            .open(&mut tx, Kind::LedgerDrift, "ledger", details.clone())
            .await?;
        if new {
            metrics.add("capital_invariant_violations", "ledger_drift", "", 1.0);
            let reason = format!(
                "ledger drift: the live ledger differs from its journal by {} in all; trading paused until an operator clears it",
                total.normalize()
            );
            sqlx::query!(
                "INSERT INTO kill_switches (tenant_id, account_id, engaged, reason)
                 VALUES ($1, $2, true, $3)
                 ON CONFLICT (tenant_id, account_id) DO UPDATE SET engaged = true, reason = $3, changed_at = now()",
                self.tenant,
                self.account,
                reason,
            )
            .execute(&mut *tx)
            .await?;
            tenancy::audit(
                &mut tx,
                "ledger_drift",
                "account",
                &self.account.to_string(),
                &details,
            )
            .await?;
            lifecycle::account_alert(&mut tx, self.tenant, self.account, "system", json!({
                "title": "Ledger drift: trading paused",
                "message": reason,
                "fields": [{"name": "Account", "value": self.account.to_string(), "inline": false}],
            }))
            .await?;
            tracing::warn!(account.id = %self.account, "{reason}");
        }
        tx.commit().await?;
        Ok(())
    }
}
