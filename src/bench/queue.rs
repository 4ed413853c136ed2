//! `pulse-fleet bench queue`: the workload of `shared/bench/peers` on our queue, in a
//! fresh database (`--database`, dropped and created):
//!
//! - drain: N jobs enqueued by one SQL statement (one `fleet.enqueue` call per row,
//!   as a trigger would), then a worker with a no-op handler starts; jobs/s until the
//!   last ack is written.
//! - latency: an idle worker; one job per autocommit INSERT at `--rate`/s, payload
//!   `ts = clock_timestamp()`; the handler measures now - ts.
//! - trigger: a 20k-row INSERT into a table without trigger, with a per-row enqueue
//!   trigger and with a statement-level one; then single-row transactions without
//!   and with the per-row trigger (their ratio).

use std::{
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pulse_contract::{Attempt, JobSpec};
use serde::Serialize;
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, Executor, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::sync::Notify;

use pulse_queue::worker::{self, QueueSpec};

use crate::{
    config::{Settings, WorkerSettings},
    db,
};

#[derive(Debug, Clone, Args)]
pub struct QueueBenchArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// Jobs per second during the latency test.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 20_000)]
    pub trigger_rows: usize,
    #[arg(long, default_value_t = 2_000)]
    pub single_rows: usize,
    /// Rounds of the trigger measurements (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 2_000)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
    /// Scratch database (dropped and created).
    #[arg(long, default_value = "pulse_fleet_bench")]
    pub database: String,
    /// Only these parts (drain, latency, trigger), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "drain,latency,trigger")]
    pub only: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct QueueBenchResult {
    pub drain_jobs: usize,
    pub drain_jobs_per_s: Option<f64>,
    pub enqueue_bulk_jobs_per_s: Option<f64>,
    pub latency_samples: usize,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_max_ms: Option<f64>,
    pub trigger_bulk_plain_rows_per_s: Option<f64>,
    pub trigger_bulk_row_trigger_rows_per_s: Option<f64>,
    pub trigger_bulk_statement_trigger_rows_per_s: Option<f64>,
    pub trigger_single_plain_rows_per_s: Option<f64>,
    pub trigger_single_trigger_rows_per_s: Option<f64>,
    pub trigger_single_ratio: Option<f64>,
}

pub async fn run(settings: &Settings, args: QueueBenchArgs) -> anyhow::Result<()> {
    let url = recreate_database(&settings.database.url, &args.database).await?;
    let mut settings = settings.clone();
    settings.database.url = url.clone();
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    db::migrate(&pool, &crate::registry::registered(&settings)).await?;

    let mut result = QueueBenchResult {
        drain_jobs: args.jobs,
        latency_samples: args.samples,
        ..Default::default()
    };
    let wants = |part: &str| args.only.iter().any(|p| p == part);
    if wants("drain") {
        eprintln!("drain: {} jobs", args.jobs);
        drain(&settings, &pool, &args, &mut result).await?;
    }
    if wants("latency") {
        eprintln!("latency: {} samples at {}/s", args.samples, args.rate);
        latency(&settings, &pool, &args, &mut result).await?;
    }
    if wants("trigger") {
        eprintln!("trigger cost: {} rounds", args.rounds);
        trigger(&pool, &args, &mut result).await?;
    }
    pool.close().await;

    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("{}", table(&result));
    }
    Ok(())
}

pub(crate) async fn recreate_database(url: &str, name: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && name.contains("bench"),
        "the bench database name must be a plain identifier containing `bench`"
    );
    let options = PgConnectOptions::from_str(url)?;
    let mut admin = options.clone().database("postgres").connect().await?;
    admin
        .execute(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .await?;
    admin
        .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await?;
    admin.close().await?;
    let mut parsed = url::Url::parse(url).context("database.url is not a URL")?;
    parsed.set_path(name);
    Ok(parsed.to_string())
}

async fn reset(pool: &PgPool) -> anyhow::Result<()> {
    pool.execute("TRUNCATE fleet.jobs, fleet.stat_deltas, fleet.stats, fleet.workers")
        .await?;
    pool.execute("VACUUM ANALYZE fleet.jobs").await?;
    Ok(())
}

fn bench_settings(settings: &Settings, args: &QueueBenchArgs) -> WorkerSettings {
    WorkerSettings {
        batch_size: args.batch,
        ..settings.worker.clone()
    }
}

/// A `canary`-named spec whose handler only counts (and reads `ts` when present).
pub(crate) fn counting_spec(
    done: Arc<AtomicUsize>,
    target: usize,
    all_done: Arc<Notify>,
    latencies: Arc<Mutex<Vec<f64>>>,
) -> JobSpec {
    let mut spec = JobSpec::typed("canary", move |payload: serde_json::Value, _: Attempt| {
        if let Some(ts) = payload.get("ts").and_then(|v| v.as_f64()) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            latencies
                .lock()
                .expect("latencies")
                .push((now - ts) * 1000.0);
        }
        if done.fetch_add(1, Ordering::AcqRel) + 1 == target {
            all_done.notify_one();
        }
        std::future::ready(Ok(()))
    });
    spec.max_attempts = 5;
    spec.timeout = Duration::from_secs(60);
    spec
}

async fn drain(
    settings: &Settings,
    pool: &PgPool,
    args: &QueueBenchArgs,
    result: &mut QueueBenchResult,
) -> anyhow::Result<()> {
    reset(pool).await?;
    let t = Instant::now();
    let n: i64 = sqlx::query_scalar!(
        r#"SELECT count(fleet.enqueue('canary', jsonb_build_object('i', i))) AS "n!" FROM generate_series(1, $1) i"#,
        args.jobs as i64,
    )
    .fetch_one(pool)
    .await?;
    result.enqueue_bulk_jobs_per_s = Some(n as f64 / t.elapsed().as_secs_f64());
    pool.execute("VACUUM ANALYZE fleet.jobs").await?;

    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let spec = counting_spec(done.clone(), args.jobs, all_done.clone(), Arc::default());
    let pools = db::queue_pools(settings, 1).await?;
    let t = Instant::now();
    let handle = worker::start(
        pool.clone(),
        pools,
        vec![QueueSpec {
            job: spec,
            concurrency: args.concurrency,
        }],
        &bench_settings(settings, args),
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(600), all_done.notified())
        .await
        .context("drain did not finish in 10 minutes")?;
    handle.flush_acks().await;
    let elapsed = t.elapsed().as_secs_f64();
    handle.shutdown().await?;
    let completed: i64 =
        sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM fleet.jobs WHERE state = 'completed'"#)
            .fetch_one(pool)
            .await?;
    anyhow::ensure!(
        completed as usize == args.jobs,
        "drain: {completed} of {} jobs completed",
        args.jobs
    );
    result.drain_jobs_per_s = Some(args.jobs as f64 / elapsed);
    Ok(())
}

async fn latency(
    settings: &Settings,
    pool: &PgPool,
    args: &QueueBenchArgs,
    result: &mut QueueBenchResult,
) -> anyhow::Result<()> {
    reset(pool).await?;
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(args.samples)));
    let spec = counting_spec(done, args.samples, all_done.clone(), latencies.clone());
    let pools = db::queue_pools(settings, 1).await?;
    let handle = worker::start(
        pool.clone(),
        pools,
        vec![QueueSpec {
            job: spec,
            concurrency: 16,
        }],
        &bench_settings(settings, args),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut producer = PgConnection::connect(&settings.database.url).await?;
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut next = tokio::time::Instant::now();
    for _ in 0..args.samples {
        sqlx::query_scalar!("SELECT fleet.enqueue('canary', jsonb_build_object('ts', extract(epoch FROM clock_timestamp())))")
        .fetch_one(&mut producer)
        .await?;
        next += period;
        tokio::time::sleep_until(next).await;
    }
    tokio::time::timeout(Duration::from_secs(30), all_done.notified())
        .await
        .context("latency: not every job ran within 30 s")?;
    handle.shutdown().await?;
    let mut v = latencies.lock().expect("latencies").clone();
    v.sort_by(|a, b| a.total_cmp(b));
    result.latency_p50_ms = Some(percentile(&v, 50.0));
    result.latency_p99_ms = Some(percentile(&v, 99.0));
    result.latency_max_ms = v.last().copied();
    Ok(())
}

/// The `p`th percentile of sorted samples (nearest rank), NaN when there are none.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

const TRIGGER_TABLES: &str = r#"
DROP TABLE IF EXISTS bench_orders_plain, bench_orders_row, bench_orders_stmt CASCADE;
CREATE TABLE bench_orders_plain (id bigserial PRIMARY KEY, customer int NOT NULL, amount numeric NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bench_orders_row (LIKE bench_orders_plain INCLUDING ALL);
CREATE TABLE bench_orders_stmt (LIKE bench_orders_plain INCLUDING ALL);
-- Fires per row: what most triggers look like.
CREATE OR REPLACE FUNCTION bench_enqueue_order() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM fleet.enqueue('canary', jsonb_build_object('order_id', NEW.id), 'order:' || NEW.id);
    RETURN NEW;
END $f$;
CREATE TRIGGER bench_orders_enqueue AFTER INSERT ON bench_orders_row
    FOR EACH ROW EXECUTE FUNCTION bench_enqueue_order();
-- Fires once per statement over the transition table: one job per row, one INSERT.
CREATE OR REPLACE FUNCTION bench_enqueue_orders() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM fleet.enqueue_batch('canary', array_agg(jsonb_build_object('order_id', n.id)),
                                array_agg('order:' || n.id)) FROM new_rows n;
    RETURN NULL;
END $f$;
CREATE TRIGGER bench_orders_enqueue AFTER INSERT ON bench_orders_stmt
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_enqueue_orders();
"#;

async fn trigger(
    pool: &PgPool,
    args: &QueueBenchArgs,
    result: &mut QueueBenchResult,
) -> anyhow::Result<()> {
    reset(pool).await?;
    sqlx::raw_sql(TRIGGER_TABLES).execute(pool).await?;
    let mut conn = pool.acquire().await?;
    let (mut plain, mut row, mut stmt, mut single_plain, mut single_trig) =
        (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..args.rounds {
        for (table, out) in [
            ("bench_orders_plain", &mut plain),
            ("bench_orders_row", &mut row),
            ("bench_orders_stmt", &mut stmt),
        ] {
            clean(pool).await?;
            let t = Instant::now();
            let n = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table} (customer, amount) SELECT i, i FROM generate_series(1, $1) i"
            )))
            .bind(args.trigger_rows as i64)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            out.push(n as f64 / t.elapsed().as_secs_f64());
        }
        let jobs: i64 = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM fleet.jobs"#)
            .fetch_one(&mut *conn)
            .await?;
        anyhow::ensure!(
            jobs as usize == args.trigger_rows,
            "statement trigger made {jobs} jobs"
        );
        for (table, out) in [
            ("bench_orders_plain", &mut single_plain),
            ("bench_orders_row", &mut single_trig),
        ] {
            clean(pool).await?;
            let sql = format!("INSERT INTO {table} (customer, amount) VALUES (1, 42)");
            let t = Instant::now();
            for _ in 0..args.single_rows {
                sqlx::query(AssertSqlSafe(sql.clone()))
                    .execute(&mut *conn)
                    .await?;
            }
            out.push(args.single_rows as f64 / t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    result.trigger_bulk_plain_rows_per_s = Some(median(&mut plain));
    result.trigger_bulk_row_trigger_rows_per_s = Some(median(&mut row));
    result.trigger_bulk_statement_trigger_rows_per_s = Some(median(&mut stmt));
    let sp = median(&mut single_plain);
    let st = median(&mut single_trig);
    result.trigger_single_plain_rows_per_s = Some(sp);
    result.trigger_single_trigger_rows_per_s = Some(st);
    result.trigger_single_ratio = Some(st / sp);
    Ok(())
}

async fn clean(pool: &PgPool) -> anyhow::Result<()> {
    pool.execute("TRUNCATE bench_orders_plain, bench_orders_row, bench_orders_stmt, fleet.jobs, fleet.stat_deltas")
        .await?;
    pool.execute(
        "VACUUM ANALYZE bench_orders_plain, bench_orders_row, bench_orders_stmt, fleet.jobs",
    )
    .await?;
    Ok(())
}

fn table(r: &QueueBenchResult) -> String {
    let f = |v: Option<f64>, d: usize| v.map(|x| format!("{x:.d$}")).unwrap_or("-".into());
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["metric", "value", "target"]);
    let rows = [
        (
            format!("drain {} pre-enqueued jobs, jobs/s", r.drain_jobs),
            f(r.drain_jobs_per_s, 0),
            ">= 50,000",
        ),
        (
            "bulk SQL enqueue (1 statement), jobs/s".into(),
            f(r.enqueue_bulk_jobs_per_s, 0),
            "",
        ),
        (
            format!("latency p50 over {} samples, ms", r.latency_samples),
            f(r.latency_p50_ms, 2),
            "<= 2",
        ),
        ("latency p99, ms".into(), f(r.latency_p99_ms, 2), "<= 4"),
        ("latency max, ms".into(), f(r.latency_max_ms, 2), ""),
        (
            "20k-row INSERT, no trigger, rows/s".into(),
            f(r.trigger_bulk_plain_rows_per_s, 0),
            "",
        ),
        (
            "20k-row INSERT, per-row enqueue trigger, rows/s".into(),
            f(r.trigger_bulk_row_trigger_rows_per_s, 0),
            "",
        ),
        (
            "20k-row INSERT, statement enqueue trigger, rows/s".into(),
            f(r.trigger_bulk_statement_trigger_rows_per_s, 0),
            ">= 100,000",
        ),
        (
            "single-row txns, no trigger, rows/s".into(),
            f(r.trigger_single_plain_rows_per_s, 0),
            "",
        ),
        (
            "single-row txns, enqueue trigger, rows/s".into(),
            f(r.trigger_single_trigger_rows_per_s, 0),
            "",
        ),
        (
            "single-row txns: trigger / no trigger".into(),
            f(r.trigger_single_ratio, 2),
            ">= 0.85",
        ),
    ];
    for (m, v, target) in rows {
        t.add_row([m, v, target.to_string()]);
    }
    t.to_string()
}
