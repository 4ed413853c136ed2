//! `pulse-fleet bench reconcile`: one reconciliation pass over many accounts, in a
//! scratch database, against the paper venue in this process.
//!
//! 1. Setup (not measured): `--accounts` accounts (a tenant and an API key each) with
//!    `--orders` working limit orders each, placed through the OMS (the venue's and
//!    the fleet's request limits lifted for the setup only).
//! 2. Divergence, with no stream, sync or reconciliation running: `--diverged` of
//!    the orders, in turn, get a fill the database does not know, end at the venue
//!    without the database knowing (cancelled by the venue), or gain a sibling placed
//!    by hand that the database never knew.
//! 3. **The pass**: the venue's limit back to Alpaca's 200 a minute per key and the
//!    fleet's budget with it; one `reconcile_account` per account asked for at once
//!    (`request_reconciliations`), run by a worker; from the ask to the last run's
//!    summary row. Then: requests per account (each within the budget), and the
//!    divergences found and fixed, by kind, against those made.

use std::time::{Duration, Instant};

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pulse_domain::venue::{OrderRequest, OrderType, Side, TimeInForce};
use pulse_jobs::{Env, execute_intent::ExecuteIntent, reconcile_account::ReconcileAccount};
use pulse_queue::worker::{self, QueueSpec};
use pulse_sims::paper::PaperOptions;
use rust_decimal::Decimal;
use serde::Serialize;
use uuid::Uuid;

use super::{
    queue::{percentile, recreate_database},
    wait_for,
};
use crate::{config::Settings, db};

#[derive(Debug, Clone, Args)]
pub struct ReconcileBenchArgs {
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    /// Working orders per account.
    #[arg(long, default_value_t = 50)]
    pub orders: usize,
    /// Share of the orders made to diverge.
    #[arg(long, default_value_t = 0.05)]
    pub diverged: f64,
    /// Reconciliations run at once by the worker.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    #[arg(long, default_value = "pulse_fleet_bench_reconcile")]
    pub database: String,
}

#[derive(Debug, Default, Serialize)]
pub struct ReconcileBenchResult {
    pub accounts: usize,
    pub orders_per_account: usize,
    pub concurrency: usize,
    /// Divergences made, by kind.
    pub made_missing_fills: usize,
    pub made_stale_states: usize,
    pub made_unknown_orders: usize,
    /// Found and fixed by the pass, by kind.
    pub found_missing_fills: i64,
    pub found_stale_states: i64,
    pub found_unknown_orders: i64,
    pub fixed_total: i64,
    pub remaining_total: i64,
    /// From the ask to the last summary row.
    pub pass_seconds: f64,
    pub run_ms_p50: f64,
    pub run_ms_max: f64,
    pub requests_per_account_min: i64,
    pub requests_per_account_max: i64,
    /// The most trading requests any key made at the venue during the pass.
    pub venue_requests_max_per_key: u64,
    pub budget_per_minute: i32,
}

const KEY: [u8; 32] = [17; 32];

pub async fn run(settings: &Settings, args: ReconcileBenchArgs) -> anyhow::Result<()> {
    let url = recreate_database(&settings.database.url, &args.database).await?;
    let mut settings = settings.clone();
    settings.database.url = url;
    settings.database.max_connections = 40;
    let pool = db::app_pool(&settings).await?;
    db::migrate(&pool, &crate::registry::registered(&settings)).await?;
    let (venue, services) = super::local_venue(
        PaperOptions {
            hold_fills: true,
            rate_limit_per_minute: u32::MAX,
            price_step_cents: 0,
            ..Default::default()
        },
        KEY,
    )
    .await?;

    // 1. Setup.
    eprintln!(
        "setup: {} accounts with {} working orders each",
        args.accounts, args.orders
    );
    let secret_ref = pulse_domain::secrets::seal("bench-secret", &KEY);
    let mut accounts = vec![];
    for a in 0..args.accounts {
        let (tenant, account) = (Uuid::new_v4(), Uuid::new_v4());
        crate::demo::open_desk(
            &pool,
            tenant,
            &format!("bench {a}"),
            account,
            &secret_ref,
            Decimal::from(1_000_000_000i64),
        )
        .await?;
        let key = format!("PKBENCH{a}");
        sqlx::query!(
            "UPDATE account_credentials SET identifier = $2 WHERE account_id = $1",
            account,
            key
        )
        .execute(&pool)
        .await?;
        super::insert_working_intents(&pool, tenant, account, args.orders, "R", "rc-", 10, "50")
            .await?;
        accounts.push((tenant, account, key));
    }
    let mut oms_services = services.clone();
    oms_services.venue_requests_per_minute = i32::MAX;
    let env = Env::new(oms_services);
    let queues = vec![QueueSpec {
        job: pulse_jobs::spec::<ExecuteIntent>(&env),
        concurrency: 32,
    }];
    let pools = db::queue_pools(&settings, queues.len()).await?;
    let oms = worker::start(pool.clone(), pools, queues, &settings.worker).await?;
    let total = (args.accounts * args.orders) as i64;
    wait_for(
        &pool,
        "every order accepted",
        Duration::from_secs(900),
        total,
        "SELECT count(*) FROM orders WHERE status = 'accepted'",
    )
    .await?;
    oms.shutdown().await?;

    // 2. Divergence: every n-th order, the kinds in turn.
    let every = ((1.0 / args.diverged.clamp(0.001, 1.0)).round() as usize).max(1);
    let coids: Vec<(Uuid, String)> =
        sqlx::query!("SELECT account_id, client_order_id FROM orders ORDER BY account_id, symbol")
            .fetch_all(&pool)
            .await?
            .into_iter()
            .map(|r| (r.account_id, r.client_order_id))
            .collect();
    let mut r = ReconcileBenchResult {
        accounts: args.accounts,
        orders_per_account: args.orders,
        concurrency: args.concurrency,
        budget_per_minute: 200,
        ..Default::default()
    };
    for (n, (account, coid)) in coids.iter().enumerate().filter(|(i, _)| i % every == 0) {
        match (n / every) % 3 {
            0 => {
                anyhow::ensure!(venue.fill(coid, Decimal::from(4), Decimal::from(50)));
                r.made_missing_fills += 1;
            }
            1 => {
                anyhow::ensure!(venue.cancel_by_venue(coid));
                r.made_stale_states += 1;
            }
            _ => {
                let key = &accounts.iter().find(|a| a.1 == *account).expect("ours").2;
                let client = services
                    .venue_client(*account, "paper", Some(key), &secret_ref)
                    .map_err(anyhow::Error::msg)?;
                client
                    .create_order(&OrderRequest {
                        symbol: "BYHAND".into(),
                        qty: Decimal::ONE,
                        side: Side::Buy,
                        order_type: OrderType::Limit,
                        time_in_force: TimeInForce::Gtc,
                        limit_price: Some(Decimal::from(40)),
                        client_order_id: Uuid::new_v4().to_string(),
                    })
                    .await?;
                r.made_unknown_orders += 1;
            }
        }
    }

    // 3. The pass, under Alpaca's limit and the fleet's budget of 200 a minute.
    venue.set_rate_limit(200);
    let before: Vec<u64> = accounts.iter().map(|a| venue.requests(&a.2)).collect();
    let mut budgeted = services.clone();
    budgeted.venue_requests_per_minute = r.budget_per_minute;
    let env = Env::new(budgeted);
    let queues = vec![QueueSpec {
        job: pulse_jobs::spec::<ReconcileAccount>(&env),
        concurrency: args.concurrency,
    }];
    let pools = db::queue_pools(&settings, queues.len()).await?;
    let reconciler = worker::start(pool.clone(), pools, queues, &settings.worker).await?;
    eprintln!(
        "pass: {} accounts, {} divergences, {} at once",
        args.accounts,
        r.made_missing_fills + r.made_stale_states + r.made_unknown_orders,
        args.concurrency
    );
    let started = Instant::now();
    sqlx::query!(r#"SELECT request_reconciliations('schedule', 3600) AS "asked!""#)
        .fetch_one(&pool)
        .await?;
    wait_for(
        &pool,
        "every account reconciled",
        Duration::from_secs(600),
        args.accounts as i64,
        "SELECT count(*) FROM reconciliation_runs",
    )
    .await?;
    r.pass_seconds = started.elapsed().as_secs_f64();
    reconciler.shutdown().await?;
    r.venue_requests_max_per_key = accounts
        .iter()
        .zip(&before)
        .map(|(a, b)| venue.requests(&a.2) - b)
        .max()
        .unwrap_or(0);
    let runs = sqlx::query!(
        r#"SELECT requests, duration_ms, ok, error,
                  coalesce((found->>'missing_fill')::bigint, 0) AS "missing!",
                  coalesce((found->>'order_state')::bigint, 0) AS "stale!",
                  coalesce((found->>'unknown_order')::bigint, 0) AS "unknown!",
                  (SELECT coalesce(sum(value::bigint), 0)::bigint FROM jsonb_each_text(fixed)) AS "fixed!",
                  (SELECT coalesce(sum(value::bigint), 0)::bigint FROM jsonb_each_text(remaining)) AS "remaining!"
           FROM reconciliation_runs"#
    )
    .fetch_all(&pool)
    .await?;
    if let Some(failed) = runs.iter().find(|run| !run.ok) {
        anyhow::bail!("a reconciliation failed: {:?}", failed.error);
    }
    let mut ms: Vec<f64> = runs.iter().map(|run| run.duration_ms).collect();
    ms.sort_by(f64::total_cmp);
    r.run_ms_p50 = percentile(&ms, 0.5);
    r.run_ms_max = ms.last().copied().unwrap_or_default();
    r.requests_per_account_min = runs
        .iter()
        .map(|run| run.requests as i64)
        .min()
        .unwrap_or(0);
    r.requests_per_account_max = runs
        .iter()
        .map(|run| run.requests as i64)
        .max()
        .unwrap_or(0);
    r.found_missing_fills = runs.iter().map(|run| run.missing).sum();
    r.found_stale_states = runs.iter().map(|run| run.stale).sum();
    r.found_unknown_orders = runs.iter().map(|run| run.unknown).sum();
    r.fixed_total = runs.iter().map(|run| run.fixed).sum();
    r.remaining_total = runs.iter().map(|run| run.remaining).sum();
    print(&r, args.json)
}

fn print(r: &ReconcileBenchResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(r)?);
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_header(["metric", "value", "target"]);
    t.add_row([
        format!(
            "one pass over {} accounts of {} working orders ({} at once), s",
            r.accounts, r.orders_per_account, r.concurrency
        ),
        format!("{:.2}", r.pass_seconds),
        "< 10".into(),
    ]);
    t.add_row([
        "  one account's run, p50 / max ms".into(),
        format!("{:.0} / {:.0}", r.run_ms_p50, r.run_ms_max),
        "".into(),
    ]);
    t.add_row([
        "requests per account, min / max".into(),
        format!(
            "{} / {}",
            r.requests_per_account_min, r.requests_per_account_max
        ),
        format!("<= {} a minute", r.budget_per_minute),
    ]);
    t.add_row([
        "most trading requests of one key at the venue".into(),
        r.venue_requests_max_per_key.to_string(),
        format!("<= {}", r.budget_per_minute),
    ]);
    for (kind, made, found) in [
        ("missing fills", r.made_missing_fills, r.found_missing_fills),
        (
            "stale states (ended at the venue)",
            r.made_stale_states,
            r.found_stale_states,
        ),
        (
            "unknown orders (placed by hand)",
            r.made_unknown_orders,
            r.found_unknown_orders,
        ),
    ] {
        t.add_row([
            format!("{kind}: found / made"),
            format!("{found} / {made}"),
            "all".into(),
        ]);
    }
    t.add_row([
        "fixed / still open after the pass".into(),
        format!("{} / {}", r.fixed_total, r.remaining_total),
        "all / 0".into(),
    ]);
    println!("{t}");
    Ok(())
}
