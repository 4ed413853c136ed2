//! Fleet-wide metrics without scanning the job table: each process accumulates
//! counters and histogram buckets in memory (a [`Recorder`], which jobs and venue
//! clients add to as well) and appends them to `fleet.stat_deltas` every few seconds;
//! `fleet.roll_up_stats()` folds deltas into `fleet.stats`, which `/metrics` reads.

use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

pub use pulse_contract::metrics::{BUCKETS, Recorder};

/// Appends what `recorder` accumulated to `fleet.stat_deltas`. On failure the deltas
/// are put back for the next flush.
pub async fn flush(recorder: &Recorder, pool: &PgPool) -> sqlx::Result<()> {
    let pending = recorder.take();
    if pending.is_empty() {
        return Ok(());
    }
    let (mut metrics, mut jobs, mut labels, mut deltas) = (vec![], vec![], vec![], vec![]);
    for ((m, j, l), d) in &pending {
        metrics.push(*m);
        jobs.push(j.as_str());
        labels.push(l.as_str());
        deltas.push(*d);
    }
    let result = sqlx::query!(
        "INSERT INTO fleet.stat_deltas (metric, job_name, label, delta)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[])",
        &metrics as &[&str],
        &jobs as &[&str],
        &labels as &[&str],
        &deltas,
    )
    .execute(pool)
    .await;
    if let Err(error) = result {
        recorder.restore(pending);
        return Err(error);
    }
    Ok(())
}

/// Flushes `recorder` every `interval` until `stop`, then once more.
pub async fn run_flusher(
    recorder: Recorder,
    pool: PgPool,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if let Err(error) = flush(&recorder, &pool).await {
            tracing::warn!(%error, "stats flush failed");
        }
    }
    let _ = flush(&recorder, &pool).await;
}
