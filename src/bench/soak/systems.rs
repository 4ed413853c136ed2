//! The queues the soak compares: ours, graphile-worker (Node.js, from the shared peer
//! harness) and PgQ (Skype's queue of rotating event tables, Debian's
//! `postgresql-15-pgq3`). Each gets a fresh database, its own SQL enqueue and its
//! own worker processes.

use std::path::PathBuf;

use anyhow::Context;
use sqlx::{Connection, Executor, PgConnection};
use tokio::process::Command;

use super::{SoakArgs, worker::PGQ_QUEUE};
use crate::{bench::queue::recreate_database, config::Settings, db};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    Pulse,
    Graphile,
    Pgq,
}

/// graphile-worker's soak worker, written beside the harness's node_modules.
const GRAPHILE_WORKER_JS: &str = include_str!("graphile.mjs");

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Pulse => "pulse",
            System::Graphile => "graphile-worker",
            System::Pgq => "pgq",
        }
    }

    /// One job per call, `$1` its number: the system's own SQL enqueue, as a
    /// trigger would call it. Ours carries an idempotency key, as triggers' jobs do.
    pub fn enqueue_sql(self) -> &'static str {
        match self {
            System::Pulse => {
                "SELECT fleet.enqueue('canary', \
                   jsonb_build_object('seq', $1::bigint, 'ts', extract(epoch FROM clock_timestamp())), \
                   'soak:' || $1::bigint)"
            }
            System::Graphile => {
                "SELECT graphile_worker.add_job('noop', \
                   json_build_object('seq', $1::bigint, 'ts', extract(epoch FROM clock_timestamp())))"
            }
            System::Pgq => {
                "SELECT pgq.insert_event('soak', 'job', \
                   json_build_object('seq', $1::bigint, 'ts', extract(epoch FROM clock_timestamp()))::text)"
            }
        }
    }

    /// What a repeatable-read reader scans: the whole job table.
    pub fn job_table_scan(self) -> &'static str {
        match self {
            System::Pulse => "SELECT count(*) FROM fleet.jobs",
            System::Graphile => "SELECT count(*) FROM graphile_worker._private_jobs",
            // The parent of the rotating event tables (inheritance: scans all three).
            System::Pgq => "SELECT count(*) FROM pgq.event_template",
        }
    }

    /// The schemas whose tables are sampled (dead tuples, sizes).
    pub fn schemas(self) -> &'static [&'static str] {
        match self {
            System::Pulse => &["fleet"],
            System::Graphile => &["graphile_worker"],
            System::Pgq => &["pgq"],
        }
    }

    fn graphile_dir(args: &SoakArgs) -> PathBuf {
        args.peers.join("graphile")
    }

    /// A fresh database with the system's schema; returns its URL.
    pub async fn set_up(self, settings: &Settings, args: &SoakArgs) -> anyhow::Result<String> {
        let database = format!("soak_bench_{}", self.name().replace('-', "_"));
        let url = recreate_database(&settings.database.url, &database).await?;
        match self {
            System::Pulse => {
                let pool = sqlx::PgPool::connect(&url).await?;
                db::migrate(&pool, &crate::registry::registered(settings)).await?;
                pool.close().await;
            }
            System::Graphile => {
                let dir = Self::graphile_dir(args);
                if !dir.join("node_modules/graphile-worker").exists() {
                    let status = Command::new("npm")
                        .args(["ci", "--no-audit", "--no-fund"])
                        .current_dir(&dir)
                        .status()
                        .await
                        .context("npm ci in the graphile peer")?;
                    anyhow::ensure!(status.success(), "npm ci failed in {}", dir.display());
                }
                std::fs::write(dir.join("soak.mjs"), GRAPHILE_WORKER_JS)?;
                let status = Command::new("npx")
                    .args(["graphile-worker", "-c", &url, "--schema-only"])
                    .current_dir(&dir)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .await?;
                anyhow::ensure!(status.success(), "graphile-worker --schema-only failed");
            }
            System::Pgq => {
                let mut conn = PgConnection::connect(&url).await?;
                conn.execute("CREATE EXTENSION pgq")
                    .await
                    .context("CREATE EXTENSION pgq (install Debian's postgresql-15-pgq3)")?;
                sqlx::query("SELECT pgq.create_queue($1)")
                    .bind(PGQ_QUEUE)
                    .execute(&mut conn)
                    .await?;
                // A tick (the end of a batch) every 100 events or 100 ms, whichever
                // first, so that PgQ's latency is not its 3 s default; tables rotate
                // every 5 minutes, so that the soak sees rotation (default 2 h).
                for (param, value) in [
                    ("ticker_max_count", "100"),
                    ("ticker_max_lag", "100 milliseconds"),
                    ("ticker_idle_period", "1 second"),
                    ("rotation_period", "5 minutes"),
                ] {
                    sqlx::query("SELECT pgq.set_queue_config($1, $2, $3)")
                        .bind(PGQ_QUEUE)
                        .bind(param)
                        .bind(value)
                        .execute(&mut conn)
                        .await?;
                }
                conn.close().await?;
            }
        }
        Ok(url)
    }

    pub fn worker_command(self, args: &SoakArgs, url: &str) -> anyhow::Result<Command> {
        Ok(match self {
            System::Pulse | System::Pgq => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args([
                    "bench",
                    "soak-worker",
                    if self == System::Pulse {
                        "pulse"
                    } else {
                        "pgq"
                    },
                    "--work-ms",
                    &args.work_ms.to_string(),
                    "--concurrency",
                    &args.concurrency.to_string(),
                ])
                .env("DATABASE_URL", url);
                c
            }
            System::Graphile => {
                // The batched variant: graphile-worker's documented throughput knobs
                // (a local queue, batched completions), as the peer harness runs it.
                let mut c = Command::new("node");
                c.arg("soak.mjs")
                    .current_dir(Self::graphile_dir(args))
                    .env("DATABASE_URL", url)
                    .env("WORK_MS", args.work_ms.to_string())
                    // The peer harness's tuned concurrency (its pool is that plus 2:
                    // two processes and the producers stay within max_connections).
                    .env("GW_CONCURRENCY", args.concurrency.min(24).to_string())
                    .env("GW_LOCAL_QUEUE", "500")
                    .env("GW_COMPLETE_BATCH_DELAY", "0");
                c
            }
        })
    }

    /// Ours: the job table's own count of what ran, after the drain.
    pub async fn check_table(self, url: &str) -> anyhow::Result<Option<String>> {
        if self != System::Pulse {
            return Ok(None);
        }
        let mut conn = PgConnection::connect(url).await?;
        let (completed, retried, unfinished): (i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'completed'),
                    count(*) FILTER (WHERE attempts > 1),
                    count(*) FILTER (WHERE state <> 'completed')
             FROM fleet.jobs WHERE job_name = 'canary'",
        )
        .fetch_one(&mut conn)
        .await?;
        conn.close().await?;
        Ok(Some(format!(
            "fleet.jobs: {completed} completed, {unfinished} not completed, {retried} claimed more than once"
        )))
    }
}
