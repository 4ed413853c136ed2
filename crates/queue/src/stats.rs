//! Fleet-wide metrics without scanning the job table: each process accumulates
//! counters and histogram buckets in memory and appends them to `fleet.stat_deltas`
//! every few seconds; `fleet.roll_up_stats()` folds deltas into `fleet.stats`, which
//! `/metrics` reads.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::PgPool;
use tokio::sync::watch;

/// Upper bounds (seconds) of the wait and run histograms.
pub const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

type Key = (&'static str, String, String);

/// In-memory deltas, shared by the tasks of one process.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<HashMap<Key, f64>>>);

impl Recorder {
    pub fn add(&self, metric: &'static str, job_name: &str, label: &str, delta: f64) {
        let mut map = self.0.lock().expect("stats lock");
        *map.entry((metric, job_name.to_owned(), label.to_owned()))
            .or_default() += delta;
    }

    /// One observation of a histogram: its bucket (non-cumulative; the exposition
    /// accumulates), its sum and its count.
    pub fn observe(&self, metric: &'static str, job_name: &str, seconds: f64) {
        let le = BUCKETS
            .iter()
            .find(|b| seconds <= **b)
            .map(|b| b.to_string())
            .unwrap_or_else(|| "+Inf".into());
        let mut map = self.0.lock().expect("stats lock");
        *map.entry((metric, job_name.to_owned(), le)).or_default() += 1.0;
        *map.entry((metric, job_name.to_owned(), "sum".into()))
            .or_default() += seconds;
    }

    fn take(&self) -> HashMap<Key, f64> {
        std::mem::take(&mut *self.0.lock().expect("stats lock"))
    }

    /// Appends what accumulated to `fleet.stat_deltas`. On failure the deltas are
    /// merged back for the next flush.
    pub async fn flush(&self, pool: &PgPool) -> sqlx::Result<()> {
        let pending = self.take();
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
            let mut map = self.0.lock().expect("stats lock");
            for (k, d) in pending {
                *map.entry(k).or_default() += d;
            }
            return Err(error);
        }
        Ok(())
    }

    /// Flushes every `interval` until `stop`, then once more.
    pub async fn run_flusher(
        self,
        pool: PgPool,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            if let Err(error) = self.flush(&pool).await {
                tracing::warn!(%error, "stats flush failed");
            }
        }
        let _ = self.flush(&pool).await;
    }
}
