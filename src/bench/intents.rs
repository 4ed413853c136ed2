//! `pulse-fleet bench intents`: two-leg intents inserted by SQL and traded on the
//! paper venue (in this process, no injected latency), in a scratch database.
//! `--venues paper` trades both legs on one Alpaca-dialect account; `--venues
//! paper,binance` is cross-venue: the buy on a Binance account (the paper venue's
//! Binance dialect: signed requests, exchangeInfo filters), the sell on the Alpaca
//! one, each from its own ledger.
//!
//! - throughput: `--intents` intents inserted in one statement per tenant; intents
//!   per second until every leg of every intent is accepted;
//! - latency: one intent per transaction at `--rate`/s for `--seconds`; from the
//!   intent's insert to its last leg accepted (database timestamps), p50/p99.
//!
//! Audit events are sealed meanwhile, as every worker process does, and the chains
//! are verified at the end.

use std::time::{Duration, Instant};

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pulse_domain::tenancy;
use pulse_jobs::{Env, execute_intent::ExecuteIntent};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::queue::{percentile, recreate_database};
use pulse_queue::worker::{self, QueueSpec};
use pulse_sims::paper::PaperOptions;

use crate::{config::Settings, db};

#[derive(Debug, Clone, Args)]
pub struct IntentBenchArgs {
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 2_000)]
    pub intents: usize,
    /// Intents per second during the latency run.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Tenants (one account each) the intents are spread over.
    #[arg(long, default_value_t = 1)]
    pub tenants: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    #[arg(long, default_value = "pulse_fleet_bench_intents")]
    pub database: String,
    /// The venues the two legs trade on: `paper` (Alpaca's dialect) for both, or
    /// `paper,binance` (`alpaca` names the paper venue too) for buy on Binance, sell
    /// on Alpaca.
    #[arg(long, value_delimiter = ',', default_value = "paper")]
    pub venues: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct IntentBenchResult {
    pub venues: String,
    pub tenants: usize,
    pub throughput_intents: usize,
    pub throughput_intents_per_s: f64,
    pub latency_intents: usize,
    pub latency_rate_per_s: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
}

const KEY: [u8; 32] = [11; 32];

/// A tenant's accounts: the Alpaca-dialect one, and the Binance one when the legs
/// cross venues.
#[derive(Clone, Copy)]
struct Desk {
    tenant: Uuid,
    account: Uuid,
    binance: Option<Uuid>,
}

const BINANCE_KEY: &str = "bench-binance-key";

async fn seed(pool: &PgPool, tenants: usize, cross: bool) -> anyhow::Result<Vec<Desk>> {
    let secret_ref = pulse_domain::secrets::seal("bench-secret", &KEY);
    let mut desks = vec![];
    for n in 0..tenants {
        let (tenant, account) = (Uuid::new_v4(), Uuid::new_v4());
        let allocated = rust_decimal::Decimal::from(1_000_000_000_000i64);
        crate::demo::open_desk(
            pool,
            tenant,
            &format!("bench-{n}"),
            account,
            &secret_ref,
            allocated,
        )
        .await?;
        let binance = if cross {
            let id = Uuid::new_v4();
            crate::demo::open_account(
                pool,
                (tenant, id),
                ("binance", "binance"),
                BINANCE_KEY,
                &secret_ref,
                allocated,
            )
            .await?;
            Some(id)
        } else {
            None
        };
        desks.push(Desk {
            tenant,
            account,
            binance,
        });
    }
    Ok(desks)
}

fn legs(desk: Desk, i: usize) -> serde_json::Value {
    // Distinct symbols per intent: the entry lock serialises intents on one symbol.
    // Binance is spot (a sell needs what it sells): the buy goes there.
    let buy = match desk.binance {
        Some(binance) => {
            serde_json::json!({"account_id": binance, "symbol": format!("X{i}USD"), "side": "buy",
                                            "quantity": 1, "type": "market", "reference_price": "100"})
        }
        None => {
            serde_json::json!({"account_id": desk.account, "symbol": format!("S{i}A"), "side": "buy",
                                   "quantity": 1, "type": "market", "reference_price": "10"})
        }
    };
    serde_json::json!([
        buy,
        {"account_id": desk.account, "symbol": format!("S{i}B"), "side": "sell", "quantity": 1, "type": "market", "reference_price": "10"},
    ])
}

async fn settled(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM multi_leg_intents WHERE status IN ('submitted', 'filled', 'failed')"#
    )
    .fetch_one(pool)
    .await
}

async fn wait_settled(pool: &PgPool, n: i64, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while settled(pool).await? < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "intents did not settle within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let failed: i64 = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM multi_leg_intents WHERE status = 'failed'"#
    )
    .fetch_one(pool)
    .await?;
    anyhow::ensure!(failed == 0, "{failed} intents failed");
    Ok(())
}

/// The first symbol number of the latency run's intents (after the throughput run's:
/// at most `intents` rounded up to a multiple of the tenants).
fn latency_base(args: &IntentBenchArgs) -> usize {
    args.intents + args.tenants.max(1)
}

pub async fn run(settings: &Settings, args: IntentBenchArgs) -> anyhow::Result<()> {
    let url = recreate_database(&settings.database.url, &args.database).await?;
    let mut settings = settings.clone();
    settings.database.url = url;
    settings.database.max_connections = (args.concurrency as u32 + 8).min(90);
    let pool = db::app_pool(&settings).await?;
    db::migrate(&pool, &crate::registry::registered(&settings)).await?;
    let cross = match args.venues.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["paper" | "alpaca"] => false,
        ["paper" | "alpaca", "binance"] | ["binance", "paper" | "alpaca"] => true,
        _ => anyhow::bail!("--venues: paper, or paper,binance"),
    };
    let desks = seed(&pool, args.tenants.max(1), cross).await?;

    let latency_intents = (args.rate * args.seconds as f64) as usize;
    let (venue, mut services) = super::local_venue(
        PaperOptions {
            rate_limit_per_minute: u32::MAX,
            binance_weight_per_minute: u32::MAX,
            // A symbol of its own for every intent's Binance leg.
            binance_extra_pairs: if cross {
                latency_base(&args) + latency_intents
            } else {
                0
            },
            ..Default::default()
        },
        KEY,
    )
    .await?;
    if cross {
        venue.register_key(BINANCE_KEY, "bench-secret");
        let base = services.venue_urls["paper"].clone();
        services.venue_urls.insert("binance".into(), base);
    }
    let pools = db::queue_pools(&settings, 1).await?;
    let mut worker_settings = settings.worker.clone();
    worker_settings.batch_size = args.concurrency;
    let handle = worker::start(
        pool.clone(),
        pools,
        vec![QueueSpec {
            job: pulse_jobs::spec::<ExecuteIntent>(&Env::new(services)),
            concurrency: args.concurrency,
        }],
        &worker_settings,
    )
    .await?;

    // As in every worker process, audit events are sealed while the OMS runs.
    let (stop_sealer, sealer_stop) = tokio::sync::watch::channel(false);
    let sealer = tokio::spawn(pulse_domain::audit::run_sealer(pool.clone(), sealer_stop));

    // Throughput.
    eprintln!(
        "throughput: {} intents over {} tenant(s)",
        args.intents,
        desks.len()
    );
    let per = args.intents.div_ceil(desks.len());
    let started = Instant::now();
    for (n, desk) in desks.iter().enumerate() {
        let tenant = &desk.tenant;
        let batch: Vec<serde_json::Value> = (0..per).map(|i| legs(*desk, n * per + i)).collect();
        sqlx::query!(
            "INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json)
             SELECT $1, 'tp-' || ord, l FROM unnest($2::jsonb[]) WITH ORDINALITY AS u(l, ord)",
            tenant,
            &batch,
        )
        .execute(&pool)
        .await?;
    }
    let total = (per * desks.len()) as i64;
    wait_settled(&pool, total, Duration::from_secs(600)).await?;
    let throughput = total as f64 / started.elapsed().as_secs_f64();

    // Latency at a fixed rate.
    let n = latency_intents;
    eprintln!("latency: {n} intents at {}/s", args.rate);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut next = tokio::time::Instant::now();
    for i in 0..n {
        let desk = desks[i % desks.len()];
        let mut tx = tenancy::begin(&pool, desk.tenant).await?;
        sqlx::query!(
            "INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json) VALUES ($1, $2, $3)",
            desk.tenant,
            format!("lat-{i}"),
            legs(desk, latency_base(&args) + i),
        )
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        next += period;
        tokio::time::sleep_until(next).await;
    }
    wait_settled(&pool, total + n as i64, Duration::from_secs(120)).await?;
    handle.shutdown().await?;
    let _ = stop_sealer.send(true);
    sealer.await?;
    let report = pulse_domain::audit::verify(&pool).await?;
    anyhow::ensure!(report.is_ok(), "audit chains broken: {:?}", report.problems);
    // An intent without orders has no latency (NULL): it is left out.
    let mut ms: Vec<f64> = sqlx::query_scalar!(
        "SELECT extract(epoch FROM (SELECT max(o.updated_at) FROM orders o WHERE o.intent_id = i.id) - i.created_at)::float8 * 1000
         FROM multi_leg_intents i WHERE i.idempotency_key LIKE 'lat-%'"
    )
    .fetch_all(&pool)
    .await?
    .into_iter()
    .flatten()
    .collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    let accepted_orders = venue.orders().len();
    anyhow::ensure!(
        accepted_orders as i64 == 2 * (total + n as i64),
        "venue holds {accepted_orders} orders"
    );

    let result = IntentBenchResult {
        venues: args.venues.join(","),
        tenants: desks.len(),
        throughput_intents: total as usize,
        throughput_intents_per_s: throughput,
        latency_intents: n,
        latency_rate_per_s: args.rate,
        latency_p50_ms: percentile(&ms, 50.0),
        latency_p99_ms: percentile(&ms, 99.0),
        latency_max_ms: ms.last().copied().unwrap_or(f64::NAN),
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED)
            .set_header(["metric", "value", "target"]);
        t.add_row([
            format!(
                "two-leg intents on {} to all legs accepted ({} tenant(s)), intents/s",
                result.venues, result.tenants
            ),
            format!("{:.0}", result.throughput_intents_per_s),
            ">= 500".into(),
        ]);
        t.add_row([
            format!(
                "insert to last leg accepted at {}/s, p50 ms",
                result.latency_rate_per_s
            ),
            format!("{:.1}", result.latency_p50_ms),
            "".into(),
        ]);
        t.add_row([
            "p99 ms".to_string(),
            format!("{:.1}", result.latency_p99_ms),
            "<= 50".into(),
        ]);
        t.add_row([
            "max ms".to_string(),
            format!("{:.1}", result.latency_max_ms),
            "".into(),
        ]);
        println!("{t}");
    }
    Ok(())
}
