//! `pulse-fleet bench soak-worker <pulse|pgq>`: one worker process of the soak
//! benchmark. It runs until SIGTERM (or SIGKILL, in the `kill` phase) and reports
//! each job it ran on stdout as `R <seq> <enqueue-to-start µs>`, which the harness
//! reads to count completions, losses and second runs and to draw latency.
//!
//! - `pulse`: our runtime (`worker::start`, as `pulse-fleet worker` runs it) with a
//!   `canary` handler that works `--work-ms` and reports.
//! - `pgq`: a PgQ consumer (next_batch, get_batch_events, finish_batch), with the
//!   ticker and the maintenance pgqd would run, in this process.

use std::{
    io::Write,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use clap::{Args, ValueEnum};
use pulse_contract::{Attempt, JobError, JobSpec};
use pulse_queue::worker::{self, QueueSpec};
use serde::Deserialize;
use sqlx::{AssertSqlSafe, Executor, PgPool, Row, postgres::PgPoolOptions};
use tokio::sync::Semaphore;

use crate::{config::Settings, db};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkerKind {
    Pulse,
    Pgq,
}

#[derive(Debug, Clone, Args)]
pub struct SoakWorkerArgs {
    pub kind: WorkerKind,
    /// Milliseconds each job works (sleeps).
    #[arg(long, default_value_t = 1)]
    pub work_ms: u64,
    /// Jobs run at once in this process.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// What a soak job carries: its number and when it was enqueued (epoch seconds,
/// `clock_timestamp()` of the enqueuing statement).
#[derive(Debug, Deserialize)]
pub struct SoakPayload {
    pub seq: i64,
    pub ts: f64,
}

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The reports not yet written to stdout.
#[derive(Clone, Default)]
struct Reports(Arc<std::sync::Mutex<String>>);

impl Reports {
    fn push(&self, seq: i64, waited_us: u64) {
        use std::fmt::Write as _;
        let mut buffer = self.0.lock().expect("reports");
        let _ = writeln!(buffer, "R {seq} {waited_us}");
    }

    fn flush(&self) {
        let text = std::mem::take(&mut *self.0.lock().expect("reports"));
        if !text.is_empty() {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    /// Writes what accumulated every 50 ms (one write per batch, not per job).
    fn spawn_flusher(&self) {
        let reports = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                reports.flush();
            }
        });
    }
}

/// Runs a job's work and reports it.
async fn work(payload: SoakPayload, work_ms: u64, reports: &Reports) {
    let waited_us = ((now_epoch() - payload.ts) * 1e6).max(0.0) as u64;
    if work_ms > 0 {
        tokio::time::sleep(Duration::from_millis(work_ms)).await;
    }
    reports.push(payload.seq, waited_us);
}

pub async fn run(settings: &Settings, args: SoakWorkerArgs) -> anyhow::Result<()> {
    let reports = Reports::default();
    reports.spawn_flusher();
    let result = match args.kind {
        WorkerKind::Pulse => run_pulse(settings, &args, reports.clone()).await,
        WorkerKind::Pgq => run_pgq(settings, &args, reports.clone()).await,
    };
    reports.flush();
    result
}

async fn run_pulse(
    settings: &Settings,
    args: &SoakWorkerArgs,
    reports: Reports,
) -> anyhow::Result<()> {
    let work_ms = args.work_ms;
    let mut spec = JobSpec::typed("canary", move |payload: SoakPayload, _: Attempt| {
        let reports = reports.clone();
        async move {
            work(payload, work_ms, &reports).await;
            Ok::<(), JobError>(())
        }
    });
    spec.max_attempts = 5;
    spec.timeout = Duration::from_secs(60);
    let pool = db::app_pool(settings).await?;
    let pools = db::queue_pools(settings, 1).await?;
    let handle = worker::start(
        pool,
        pools,
        vec![QueueSpec {
            job: spec,
            concurrency: args.concurrency,
        }],
        &settings.worker,
    )
    .await?;
    println!("READY");
    terminated().await;
    handle.shutdown().await?;
    Ok(())
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
}

/// The PgQ queue and consumer the soak uses.
pub const PGQ_QUEUE: &str = "soak";
const PGQ_CONSUMER: &str = "soak_worker";

async fn run_pgq(
    settings: &Settings,
    args: &SoakWorkerArgs,
    reports: Reports,
) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&settings.database.url)
        .await?;
    sqlx::query("SELECT pgq.register_consumer($1, $2)")
        .bind(PGQ_QUEUE)
        .bind(PGQ_CONSUMER)
        .execute(&pool)
        .await?;
    tokio::spawn(pgq_ticker(pool.clone()));
    println!("READY");
    let limit = Arc::new(Semaphore::new(args.concurrency));
    let consume = async {
        loop {
            let batch: Option<i64> = sqlx::query_scalar("SELECT pgq.next_batch($1, $2)")
                .bind(PGQ_QUEUE)
                .bind(PGQ_CONSUMER)
                .fetch_one(&pool)
                .await?;
            let Some(batch) = batch else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let rows = sqlx::query("SELECT ev_data FROM pgq.get_batch_events($1)")
                .bind(batch)
                .fetch_all(&pool)
                .await?;
            let mut running = tokio::task::JoinSet::new();
            for row in rows {
                let data: Option<String> = row.try_get("ev_data")?;
                let Some(payload) = data.and_then(|d| serde_json::from_str(&d).ok()) else {
                    continue;
                };
                let permit = limit.clone().acquire_owned().await?;
                let reports = reports.clone();
                let work_ms = args.work_ms;
                running.spawn(async move {
                    work(payload, work_ms, &reports).await;
                    drop(permit);
                });
            }
            running.join_all().await;
            sqlx::query("SELECT pgq.finish_batch($1)")
                .bind(batch)
                .execute(&pool)
                .await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), anyhow::Error>(())
    };
    tokio::select! {
        result = consume => result,
        _ = terminated() => Ok(()),
    }
}

/// What pgqd does: tick often (a batch is the events between two ticks) and run
/// `pgq.maint_operations()` (table rotation, retry events, vacuum of its tables).
async fn pgq_ticker(pool: PgPool) {
    let mut last_maint = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Err(error) = pool.execute("SELECT pgq.ticker()").await {
            eprintln!("pgq ticker: {error}");
        }
        if last_maint.elapsed() < Duration::from_secs(10) {
            continue;
        }
        last_maint = tokio::time::Instant::now();
        let ops: Vec<(String, Option<String>)> =
            match sqlx::query_as("SELECT func_name, func_arg FROM pgq.maint_operations()")
                .fetch_all(&pool)
                .await
            {
                Ok(ops) => ops,
                Err(error) => {
                    eprintln!("pgq maintenance: {error}");
                    continue;
                }
            };
        for (func, arg) in ops {
            let sql = match (func.as_str(), arg) {
                ("vacuum", Some(table)) => format!("VACUUM {table}"),
                (func, Some(arg)) => format!("SELECT {func}('{}')", arg.replace('\'', "''")),
                (func, None) => format!("SELECT {func}()"),
            };
            if let Err(error) = pool.execute(AssertSqlSafe(sql.clone())).await {
                eprintln!("pgq maintenance `{sql}`: {error}");
            }
        }
    }
}
