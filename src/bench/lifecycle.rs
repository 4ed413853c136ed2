//! `pulse-fleet bench lifecycle`: the order lifecycle on the paper venue (in this
//! process; its fills driven by the benchmark), in a scratch database, with a worker
//! (the OMS, `apply_venue_event`, `sync_account`), the trade-stream listener and the
//! `sync_accounts` schedule running as in production.
//!
//! 1. Setup (not measured): `--orders` single-leg limit intents on one account become
//!    working orders of 20 each at the venue (the venue's and the OMS's request limits
//!    are lifted for the setup only).
//! 2. **Stream**: one fill of 1 on each order at `--rate` fills/s; from the venue's
//!    fill to the end of the transaction that recorded it, p50/p99.
//! 3. **Sync alone**: the stream listener stopped; one more fill of 1 on `--sync-fills`
//!    orders at 10/s; the same latency, which the schedule (every 10 s) bounds.
//! 4. **Requests**: the listener back, the venue's limit back to Alpaca's 200 a
//!    minute; the rest of every order filled over `--spread-secs`; every
//!    fill recorded, and the trading requests the fleet made in each minute, counted
//!    by the venue.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pulse_domain::trade_streams;
use pulse_jobs::{
    Env, apply_venue_event::ApplyVenueEvent, execute_intent::ExecuteIntent,
    sync_account::SyncAccount, sync_accounts::SyncAccounts,
};
use pulse_queue::{
    scheduler,
    settings::ScheduleSettings,
    worker::{self, QueueSpec},
};
use pulse_sims::paper::{PaperOptions, PaperVenue};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;
use uuid::Uuid;

use super::{
    queue::{percentile, recreate_database},
    wait_for,
};
use crate::{config::Settings, db};

#[derive(Debug, Clone, Args)]
pub struct LifecycleBenchArgs {
    #[arg(long)]
    pub json: bool,
    /// Working orders on the one account.
    #[arg(long, default_value_t = 1_000)]
    pub orders: usize,
    /// Fills per second during the stream phase.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Fills made with the stream off.
    #[arg(long, default_value_t = 100)]
    pub sync_fills: usize,
    /// Over how long the rest of every order fills in the requests phase.
    #[arg(long, default_value_t = 60)]
    pub spread_secs: u64,
    #[arg(long, default_value = "pulse_fleet_bench_lifecycle")]
    pub database: String,
}

#[derive(Debug, Default, Serialize)]
pub struct LifecycleBenchResult {
    pub orders: usize,
    pub stream_fills: usize,
    pub stream_rate_per_s: f64,
    pub stream_p50_ms: f64,
    pub stream_p99_ms: f64,
    pub stream_max_ms: f64,
    pub sync_fills: usize,
    pub sync_interval_s: f64,
    pub sync_p50_ms: f64,
    pub sync_max_ms: f64,
    pub spread_fills: usize,
    pub spread_secs: u64,
    pub fills_recorded: i64,
    pub fills_at_venue: usize,
    /// Trading requests the fleet made in each minute of the requests phase.
    pub requests_per_minute: Vec<u64>,
}

const KEY: [u8; 32] = [13; 32];
const API_KEY: &str = "PKPAPER";
const SYNC_EVERY_SECS: u64 = 10;

pub async fn run(settings: &Settings, args: LifecycleBenchArgs) -> anyhow::Result<()> {
    let url = recreate_database(&settings.database.url, &args.database).await?;
    let mut settings = settings.clone();
    settings.database.url = url;
    settings.database.max_connections = 40;
    let pool = db::app_pool(&settings).await?;
    db::migrate(&pool, &crate::registry::registered(&settings)).await?;
    let (tenant, account) = (Uuid::new_v4(), Uuid::new_v4());
    let secret_ref = pulse_domain::secrets::seal("bench-secret", &KEY);
    crate::demo::open_desk(
        &pool,
        tenant,
        "bench",
        account,
        &secret_ref,
        Decimal::from(1_000_000_000i64),
    )
    .await?;

    // The setup places every order at once; the requests phase runs under the venue's
    // (Alpaca's) limit, set below.
    let (venue, services) = super::local_venue(
        PaperOptions {
            hold_fills: true,
            rate_limit_per_minute: u32::MAX,
            ..Default::default()
        },
        KEY,
    )
    .await?;
    let env = Env::new(services);
    let queues = vec![
        QueueSpec {
            job: pulse_jobs::spec::<ExecuteIntent>(&env),
            concurrency: 32,
        },
        QueueSpec {
            job: pulse_jobs::spec::<ApplyVenueEvent>(&env),
            concurrency: 8,
        },
        QueueSpec {
            job: pulse_jobs::spec::<SyncAccount>(&env),
            concurrency: 2,
        },
        QueueSpec {
            job: pulse_jobs::spec::<SyncAccounts>(&env),
            concurrency: 1,
        },
    ];
    let pools = db::queue_pools(&settings, queues.len()).await?;
    let handle = worker::start(pool.clone(), pools, queues, &settings.worker).await?;
    let (stop, stop_rx) = watch::channel(false);
    let schedules = scheduler::parse_all(&BTreeMap::from([(
        "sync_accounts".to_string(),
        ScheduleSettings::new(
            &format!("*/{SYNC_EVERY_SECS} * * * * *"),
            "sync_accounts",
            serde_json::json!({"bucket_secs": SYNC_EVERY_SECS}),
        ),
    )]))?;
    let scheduler = tokio::spawn(scheduler::run(pool.clone(), schedules, stop_rx.clone()));
    let streams = Streams::start(&pool, &env);

    // 1. Setup: the working orders.
    eprintln!("setup: {} working orders", args.orders);
    super::insert_working_intents(&pool, tenant, account, args.orders, "L", "lc-", 20, "10")
        .await?;
    wait_for(
        &pool,
        "every order accepted",
        Duration::from_secs(600),
        args.orders as i64,
        "SELECT count(*) FROM orders WHERE status = 'accepted'",
    )
    .await?;
    // The venue's `new` updates of the setup, applied before anything is measured.
    wait_for(
        &pool,
        "the setup's updates stored",
        Duration::from_secs(120),
        args.orders as i64,
        "SELECT count(*) FROM venue_events",
    )
    .await?;
    wait_for(
        &pool,
        "the setup's updates applied",
        Duration::from_secs(300),
        0,
        "SELECT -count(*) FROM venue_events WHERE applied_at IS NULL",
    )
    .await?;
    let coids: Vec<String> =
        sqlx::query_scalar!("SELECT client_order_id FROM orders ORDER BY leg_index, symbol")
            .fetch_all(&pool)
            .await?;

    // 2. Through the stream.
    eprintln!("stream: {} fills at {}/s", coids.len(), args.rate);
    let stream_fills = paced(&venue, &coids, Decimal::ONE, args.rate).await;
    wait_recorded(&pool, &venue).await?;
    let stream_ms = latencies(&pool, &stream_fills, Path::Stream).await?;

    // 3. The sync alone.
    streams.stop().await;
    let n = args.sync_fills.min(coids.len());
    eprintln!("sync alone: {n} fills at 10/s, the stream off");
    let sync_fills = paced(&venue, &coids[..n], Decimal::ONE, 10.0).await;
    wait_recorded(&pool, &venue).await?;
    let sync_ms = latencies(&pool, &sync_fills, Path::Sync).await?;

    // 4. Requests, under Alpaca's limit.
    let streams = Streams::start(&pool, &env);
    tokio::time::sleep(Duration::from_millis(500)).await;
    venue.set_rate_limit(200);
    // What each order has left: 20, less one fill each, less the sync phase's.
    let rest: Vec<(String, Decimal)> = coids
        .iter()
        .enumerate()
        .map(|(i, c)| (c.clone(), Decimal::from(if i < n { 18 } else { 19 })))
        .collect();
    let spread_rate = rest.len() as f64 / args.spread_secs.max(1) as f64;
    eprintln!(
        "requests: the rest of {} orders filled over {} s ({spread_rate:.1} fills/s) at Alpaca's 200 requests a minute",
        rest.len(),
        args.spread_secs
    );
    let before = venue.requests(API_KEY);
    let started = Instant::now();
    let mut minutes = vec![];
    let mut minute_start = before;
    let period = Duration::from_secs_f64(1.0 / spread_rate);
    let mut next = tokio::time::Instant::now();
    for (coid, qty) in &rest {
        anyhow::ensure!(
            venue.fill(coid, *qty, Decimal::from(10)),
            "the venue refused to fill {qty} of {coid}"
        );
        next += period;
        tokio::time::sleep_until(next).await;
        if started.elapsed() >= Duration::from_secs(60 * (minutes.len() as u64 + 1)) {
            let now = venue.requests(API_KEY);
            minutes.push(now - minute_start);
            minute_start = now;
        }
    }
    wait_recorded(&pool, &venue).await?;
    wait_for(
        &pool,
        "every order filled",
        Duration::from_secs(120),
        args.orders as i64,
        "SELECT count(*) FROM orders WHERE status = 'filled'",
    )
    .await?;
    // The last (partial) minute, scaled to a minute only if it is most of one.
    minutes.push(venue.requests(API_KEY) - minute_start);
    let recorded: i64 = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM fills"#)
        .fetch_one(&pool)
        .await?;

    let _ = stop.send(true);
    streams.stop().await;
    scheduler.await?;
    handle.shutdown().await?;
    let drift: i64 = sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM capital_ledger_drift"#)
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(drift == 0, "the ledger drifted from its journal");

    let result = LifecycleBenchResult {
        orders: args.orders,
        stream_fills: stream_ms.len(),
        stream_rate_per_s: args.rate,
        stream_p50_ms: percentile(&stream_ms, 50.0),
        stream_p99_ms: percentile(&stream_ms, 99.0),
        stream_max_ms: stream_ms.last().copied().unwrap_or(f64::NAN),
        sync_fills: sync_ms.len(),
        sync_interval_s: SYNC_EVERY_SECS as f64,
        sync_p50_ms: percentile(&sync_ms, 50.0),
        sync_max_ms: sync_ms.last().copied().unwrap_or(f64::NAN),
        spread_fills: rest.len(),
        spread_secs: args.spread_secs,
        fills_recorded: recorded,
        fills_at_venue: venue.all_fills().len(),
        requests_per_minute: minutes,
    };
    print(&result, args.json)
}

/// The stream listener, started and stopped on cue.
struct Streams {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Streams {
    fn start(pool: &PgPool, env: &Env) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(trade_streams::run(
            pool.clone(),
            env.services.clone(),
            trade_streams::StreamSettings {
                rescan: Duration::from_millis(200),
                ..Default::default()
            },
            stop_rx,
        ));
        Self { stop, task }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Fills `qty` of each order at `rate` a second; the keys of the fills made.
async fn paced(venue: &PaperVenue, coids: &[String], qty: Decimal, rate: f64) -> Vec<String> {
    let period = Duration::from_secs_f64(1.0 / rate);
    let before = venue.all_fills().len();
    let mut next = tokio::time::Instant::now();
    for coid in coids {
        let filled = venue.fill(coid, qty, Decimal::from(10));
        debug_assert!(filled, "{coid} could not fill");
        next += period;
        tokio::time::sleep_until(next).await;
    }
    venue.all_fills()[before..]
        .iter()
        .map(|f| format!("{}:{}", f.order_id, f.cum_qty.normalize()))
        .collect()
}

/// Which path recorded the fills measured.
enum Path {
    Stream,
    Sync,
}

/// From each venue fill (the venue's timestamp, on this machine's clock) to the end of
/// the transaction that recorded it, in ms, sorted. The stream's: `applied_at` of its
/// inbox row, the transaction's last statement (`clock_timestamp()`), so only the
/// commit itself is left out. The sync's: the fill row's `recorded_at`, the start of
/// its one-fill transaction (a few statements).
async fn latencies(pool: &PgPool, keys: &[String], path: Path) -> anyhow::Result<Vec<f64>> {
    let mut ms: Vec<f64> = match path {
        Path::Stream => {
            sqlx::query_scalar!(
                r#"SELECT extract(epoch FROM e.applied_at - f.filled_at)::float8 * 1000 AS "ms!"
               FROM fills f JOIN venue_events e ON e.event_key = 'fill:' || f.venue_fill_id
               WHERE f.venue_fill_id = ANY($1) AND e.applied_at IS NOT NULL"#,
                keys
            )
            .fetch_all(pool)
            .await?
        }
        Path::Sync => {
            sqlx::query_scalar!(
                r#"SELECT extract(epoch FROM recorded_at - filled_at)::float8 * 1000 AS "ms!"
               FROM fills WHERE venue_fill_id = ANY($1)"#,
                keys
            )
            .fetch_all(pool)
            .await?
        }
    };
    anyhow::ensure!(
        ms.len() == keys.len(),
        "{} of {} fills measured",
        ms.len(),
        keys.len()
    );
    ms.sort_by(f64::total_cmp);
    Ok(ms)
}

async fn wait_recorded(pool: &PgPool, venue: &PaperVenue) -> anyhow::Result<()> {
    let n = venue.all_fills().len() as i64;
    wait_for(
        pool,
        "every fill recorded",
        Duration::from_secs(120),
        n,
        "SELECT count(*) FROM fills",
    )
    .await
}

fn print(r: &LifecycleBenchResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["metric", "value", "target"]);
    let ms = |v: f64| format!("{v:.1}");
    t.add_row([
        format!(
            "fill to database via the stream at {}/s, p50 ms",
            r.stream_rate_per_s
        ),
        ms(r.stream_p50_ms),
        "".into(),
    ]);
    t.add_row(["  p99 ms".into(), ms(r.stream_p99_ms), "<= 50".into()]);
    t.add_row(["  max ms".into(), ms(r.stream_max_ms), "".into()]);
    t.add_row([
        format!(
            "fill to database by the sync alone ({} fills), p50 ms",
            r.sync_fills
        ),
        ms(r.sync_p50_ms),
        "".into(),
    ]);
    t.add_row([
        "  max ms".into(),
        ms(r.sync_max_ms),
        format!(
            "<= {:.0} (one sync interval + 1 s)",
            r.sync_interval_s * 1000.0 + 1000.0
        ),
    ]);
    t.add_row([
        format!(
            "{} open orders filled over {} s: fills recorded / made",
            r.orders, r.spread_secs
        ),
        format!("{} / {}", r.fills_recorded, r.fills_at_venue),
        "all".into(),
    ]);
    t.add_row([
        "  requests to the venue per minute".into(),
        format!("{:?}", r.requests_per_minute),
        "<= 200".into(),
    ]);
    println!("{t}");
    Ok(())
}
