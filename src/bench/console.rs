//! `pulse-fleet bench console`: how long the console's pages take with a large job
//! table, in a scratch database.
//!
//! 1. Setup (not measured): `--jobs` jobs (default 1,000,000) enqueued through
//!    `fleet.enqueue_batch`, spread over the registered job types, a third naming one
//!    of 20 tenants, each with an idempotency key; then given the states and ages of a
//!    long-running fleet by one UPDATE (98% completed, 1% dead, the rest waiting; ages
//!    spread over the last two days), the counts recomputed (`fleet.recount_jobs`) and
//!    the table analysed.
//! 2. **The pages**: the web process's router served in this process; every page and
//!    every filter fetched `--rounds` times over HTTP, as an operator's browser would;
//!    p50, p95 and max per page.

use std::time::Instant;

use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;

use super::queue::{percentile, recreate_database};
use crate::{config::Settings, db, web};

#[derive(Debug, Clone, Args)]
pub struct ConsoleBenchArgs {
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 1_000_000)]
    pub jobs: i64,
    /// Fetches of each page.
    #[arg(long, default_value_t = 20)]
    pub rounds: usize,
    #[arg(long, default_value = "pulse_fleet_bench_console")]
    pub database: String,
}

#[derive(Debug, Serialize)]
pub struct PageTiming {
    pub page: String,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct ConsoleBenchResult {
    pub jobs: i64,
    pub setup_secs: f64,
    pub pages: Vec<PageTiming>,
}

const TOKEN: &str = "bench-operator";

pub async fn run(settings: &Settings, args: ConsoleBenchArgs) -> anyhow::Result<()> {
    let url = recreate_database(&settings.database.url, &args.database).await?;
    let mut settings = settings.clone();
    settings.database.url = url.clone();
    settings.web.operator_token = TOKEN.into();
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await?;
    let specs = crate::registry::registered(&settings);
    db::migrate(&pool, &specs).await?;

    let started = Instant::now();
    eprintln!("setup: {} jobs", args.jobs);
    let names: Vec<String> = specs.iter().map(|s| s.name.to_string()).collect();
    let chunk = 20_000i64;
    let mut made = 0i64;
    while made < args.jobs {
        let n = chunk.min(args.jobs - made);
        let name = &names[(made / chunk) as usize % names.len()];
        sqlx::query(
            "SELECT fleet.enqueue_batch($1,
                 array(SELECT CASE WHEN i % 3 = 0
                                   THEN jsonb_build_object('tenant_id', format('00000000-0000-4000-8000-%s', lpad((i % 20)::text, 12, '0')))
                                   ELSE jsonb_build_object('n', i) END
                       FROM generate_series($2::bigint, $2 + $3 - 1) i),
                 array(SELECT 'bench-' || i FROM generate_series($2::bigint, $2 + $3 - 1) i))",
        )
        .bind(name)
        .bind(made)
        .bind(n)
        .execute(&pool)
        .await?;
        made += n;
    }
    // The states and ages of a fleet that has run for two days (a fixture: the runtime
    // never writes like this), then the counts the runtime keeps, recomputed.
    sqlx::query(
        "UPDATE fleet.jobs SET
             state = CASE WHEN id % 100 = 0 THEN 'dead' WHEN id % 100 = 1 THEN 'available'
                          ELSE 'completed' END::fleet.job_state,
             attempts = CASE WHEN id % 100 = 1 THEN 0 ELSE 1 END,
             created_at = now() - make_interval(secs => ($1 - id) * 172800.0 / $1),
             run_at = now() - make_interval(secs => ($1 - id) * 172800.0 / $1),
             finished_at = CASE WHEN id % 100 = 1 THEN NULL ELSE now() END,
             errors = CASE WHEN id % 100 = 0 THEN '[{\"attempt\":1,\"kind\":\"permanent\",\"error\":\"bench\"}]'::jsonb ELSE '[]' END",
    )
    .bind(args.jobs as f64)
    .execute(&pool)
    .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT fleet.recount_jobs()")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    sqlx::query("VACUUM ANALYZE fleet.jobs")
        .execute(&pool)
        .await?;
    let setup_secs = started.elapsed().as_secs_f64();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let state = web::AppState::new(pool.clone(), settings.clone(), &specs);
    tokio::spawn(web::serve(listener, state, std::future::pending()));
    let http = reqwest::Client::new();
    let mid = args.jobs / 2;
    let first = &names[0];
    let pages = [
        "/".to_string(),
        "/jobs".into(),
        format!("/jobs?before={mid}"),
        "/jobs?state=dead".into(),
        "/jobs?state=available".into(),
        format!("/jobs?name={first}"),
        format!("/jobs?name={first}&state=completed"),
        format!("/jobs?name={first}&state=cancelled"),
        "/jobs?tenant=00000000-0000-4000-8000-000000000007".into(),
        "/jobs?tenant=00000000-0000-4000-8000-000000000099".into(),
        format!("/jobs?key=bench-{mid}"),
        "/jobs?age=5m".into(),
        "/jobs?age=older-24h".into(),
        "/jobs?age=1h&state=dead".into(),
        format!("/jobs/{mid}"),
        "/trading".into(),
        "/alerts".into(),
        "/audit".into(),
    ];
    eprintln!("pages: {} rounds each", args.rounds);
    let mut timings = vec![];
    for page in pages {
        let mut ms = vec![];
        for _ in 0..args.rounds {
            let t = Instant::now();
            let answer = http
                .get(format!("{base}{page}"))
                .bearer_auth(TOKEN)
                .send()
                .await?;
            anyhow::ensure!(answer.status() == 200, "{page}: {}", answer.status());
            answer.bytes().await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        timings.push(PageTiming {
            page,
            p50_ms: percentile(&ms, 50.0),
            p95_ms: percentile(&ms, 95.0),
            max_ms: *ms.last().unwrap_or(&0.0),
        });
    }
    pool.close().await;
    let result = ConsoleBenchResult {
        jobs: args.jobs,
        setup_secs,
        pages: timings,
    };
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(["page", "p50 ms", "p95 ms", "max ms"]);
        for p in &result.pages {
            table.add_row([
                p.page.clone(),
                format!("{:.1}", p.p50_ms),
                format!("{:.1}", p.p95_ms),
                format!("{:.1}", p.max_ms),
            ]);
        }
        println!(
            "{} jobs (setup {:.0} s)\n{table}",
            result.jobs, result.setup_secs
        );
    }
    Ok(())
}
