//! One sample of a soak: throughput since the last one, latencies over the last
//! 30 s, depth, the queue tables' dead tuples and sizes, the workers' memory.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;
use sqlx::{Connection, PgConnection};

use super::{PhaseKind, System, Tally};

#[derive(Debug, Clone, Serialize)]
pub struct TableStat {
    pub name: String,
    pub live_tuples: i64,
    pub dead_tuples: i64,
    pub table_bytes: i64,
    pub index_bytes: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub system: System,
    pub phase: PhaseKind,
    /// Seconds since the system's scenario started.
    pub t: f64,
    pub offered_per_s: f64,
    pub enqueued_per_s: f64,
    pub completed_per_s: f64,
    /// Enqueue-to-start over the last 30 s, ms.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// One enqueue statement (the producer's round trip) over the last 30 s, ms.
    pub enqueue_p99_ms: Option<f64>,
    /// Enqueued and not yet run.
    pub depth: i64,
    /// Issued by the load and not yet enqueued (the producers are behind).
    pub producer_backlog: i64,
    pub dead_tuples: i64,
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub tables: Vec<TableStat>,
    pub worker_rss_bytes: u64,
}

impl Sample {
    /// One line for the terminal.
    pub fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
        format!(
            "{} {:>6.0}s {:<10} enq {:>6.0}/s done {:>6.0}/s p50 {:>7} p99 {:>8} ms enq p99 {:>7} ms backlog {:>6} depth {:>7} dead {:>8} size {:>6.1} MB",
            self.system.name(),
            self.t,
            self.phase.name(),
            self.enqueued_per_s,
            self.completed_per_s,
            ms(self.p50_ms),
            ms(self.p99_ms),
            ms(self.enqueue_p99_ms),
            self.producer_backlog,
            self.depth,
            self.dead_tuples,
            (self.table_bytes + self.index_bytes) as f64 / 1e6,
        )
    }
}

pub struct Sampler {
    conn: PgConnection,
    system: System,
    tally: Arc<Tally>,
    last_at: Instant,
    last_reports: u64,
    last_enqueued: u64,
}

impl Sampler {
    pub async fn connect(url: &str, system: System, tally: Arc<Tally>) -> anyhow::Result<Self> {
        Ok(Self {
            conn: PgConnection::connect(url).await?,
            system,
            last_at: Instant::now(),
            last_reports: tally.reports.load(Ordering::Relaxed),
            last_enqueued: tally.enqueued.load(Ordering::Relaxed),
            tally,
        })
    }

    pub async fn take(
        &mut self,
        phase: PhaseKind,
        t: Duration,
        offered: f64,
        worker_pids: &[u32],
    ) -> anyhow::Result<Sample> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last_at).as_secs_f64().max(1e-3);
        let reports = self.tally.reports.load(Ordering::Relaxed);
        let enqueued = self.tally.enqueued.load(Ordering::Relaxed);
        let issued = self.tally.issued.load(Ordering::Relaxed);
        let failed = self.tally.enqueue_failures.load(Ordering::Relaxed);
        let distinct = self.tally.distinct.load(Ordering::Relaxed);
        let completed_per_s = (reports - self.last_reports) as f64 / elapsed;
        let enqueued_per_s = (enqueued - self.last_enqueued) as f64 / elapsed;
        (self.last_at, self.last_reports, self.last_enqueued) = (now, reports, enqueued);

        let waits = Tally::percentiles(&self.tally.waits);
        let enqueue = Tally::percentiles(&self.tally.enqueue_times);
        // pg_stat_user_tables: the statistics system's counts (what autovacuum reads),
        // not a scan: sampling must not itself hold the horizon or load the tables.
        let rows: Vec<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT s.schemaname || '.' || s.relname, s.n_live_tup, s.n_dead_tup,
                    pg_table_size(s.relid), pg_indexes_size(s.relid)
             FROM pg_stat_user_tables s
             WHERE s.schemaname = ANY($1)
             ORDER BY 1",
        )
        .bind(self.system.schemas())
        .fetch_all(&mut self.conn)
        .await?;
        let tables: Vec<TableStat> = rows
            .into_iter()
            .map(|(name, live, dead, table, index)| TableStat {
                name,
                live_tuples: live,
                dead_tuples: dead,
                table_bytes: table,
                index_bytes: index,
            })
            .collect();
        Ok(Sample {
            system: self.system,
            phase,
            t: t.as_secs_f64(),
            offered_per_s: offered,
            enqueued_per_s,
            completed_per_s,
            p50_ms: waits.map(|p| p[0]),
            p95_ms: waits.map(|p| p[1]),
            p99_ms: waits.map(|p| p[2]),
            enqueue_p99_ms: enqueue.map(|p| p[2]),
            depth: enqueued as i64 - distinct as i64,
            producer_backlog: issued as i64 - enqueued as i64 - failed as i64,
            dead_tuples: tables.iter().map(|t| t.dead_tuples).sum(),
            table_bytes: tables.iter().map(|t| t.table_bytes).sum(),
            index_bytes: tables.iter().map(|t| t.index_bytes).sum(),
            tables,
            worker_rss_bytes: worker_pids.iter().map(|&pid| rss_bytes(pid)).sum(),
        })
    }
}

/// A process's resident memory, from /proc (0 if it is gone).
fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
