//! `apply_venue_event`: applies one update of a venue's order stream (stored in the
//! `venue_events` inbox by the stream listener, `pulse_domain::trade_streams`)
//! through the order lifecycle, in one transaction with marking the event applied.
//!
//! Enqueued by the inbox's trigger, keyed by the event. Idempotent: an applied event
//! is skipped, and the lifecycle records each fill once whatever path brought it (a
//! sync may have applied it first). An update that cannot be read, or that reports
//! something impossible of an order, fails this job for good with the reason; no
//! other event is held up.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Job, JobContext, JobError};
use pulse_contract::{RetentionHook, retention_hook};
use pulse_domain::{
    lifecycle::{self, LifecycleError, Source},
    tenancy,
    venue::TradeUpdate,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyVenueEvent {
    pub tenant_id: Uuid,
    pub event_id: i64,
}

/// How a lifecycle failure fails a job: an impossible report for good; a capital
/// check that failed because a reservation was made meanwhile (the ledger row is
/// booked without a lock on the reading side) is worth another attempt, as is any
/// database trouble.
pub(crate) fn lifecycle_failure(error: LifecycleError) -> JobError {
    match error {
        LifecycleError::Implausible(why) => JobError::permanent(why),
        LifecycleError::Db(sqlx::Error::Database(db)) if db.code().as_deref() == Some("23514") => {
            JobError::retryable(format!(
                "capital check raced a reservation: {}",
                db.message()
            ))
        }
        LifecycleError::Db(e) => JobError::from(e),
    }
}

impl Job for ApplyVenueEvent {
    const NAME: &'static str = "apply_venue_event";
    const MAX_ATTEMPTS: i32 = 10;
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

    /// Applied events older than `keep` go (what they did is in fills, orders and the
    /// journal; a late duplicate is recognised by its fill key).
    fn retention() -> Option<RetentionHook> {
        Some(retention_hook(|pool, keep| async move {
            let deleted = sqlx::query!(
                "DELETE FROM venue_events WHERE applied_at < now() - make_interval(secs => $1)",
                keep.as_secs_f64(),
            )
            .execute(&pool)
            .await?;
            Ok(deleted.rows_affected())
        }))
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = tenancy::begin(&ctx.pool, self.tenant_id).await?;
        let Some(event) = sqlx::query!(
            "SELECT account_id, body, applied_at FROM venue_events WHERE id = $1 FOR UPDATE",
            self.event_id
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Err(JobError::permanent(format!(
                "no venue event {} in tenant {}",
                self.event_id, self.tenant_id
            )));
        };
        if event.applied_at.is_some() {
            return Ok(());
        }
        let update: TradeUpdate = serde_json::from_value(event.body)
            .map_err(|e| JobError::permanent(format!("unreadable venue event: {e}")))?;
        let applied = lifecycle::apply_update(
            &mut tx,
            self.tenant_id,
            event.account_id,
            &update,
            Source::Stream,
        )
        .await
        .map_err(lifecycle_failure)?;
        if let Some(fill) = &update.fill {
            crate::trading_metrics::fill_applied(&ctx, "stream", fill, &applied);
        }
        if applied.unknown_order {
            tracing::info!(
                account.id = %event.account_id,
                venue_order = %update.order.id,
                "an update of an order that is not ours (placed by hand?): left to reconciliation"
            );
        }
        sqlx::query!(
            "UPDATE venue_events SET applied_at = clock_timestamp() WHERE id = $1",
            self.event_id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
