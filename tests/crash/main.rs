//! The queue under database crashes (issue 8, finding 10), for real: a PostgreSQL
//! cluster of the test's own, killed with `pg_ctl stop -m immediate` under a running
//! worker, then restarted.
//!
//! The queue's connections commit asynchronously, so a crash loses the claims, acks
//! and heartbeats of the last moments. The cluster runs with `wal_writer_delay=10s`,
//! so that what is not flushed by a durable commit (the handlers' own writes) stays
//! unflushed until the crash: losses are the rule here, not luck. After each crash:
//! every job must still end (none stuck `running` under a live worker whose ack was
//! lost), no two attempts may share a fencing token (a lost claim once let the next
//! claim reuse it, and the lost attempt's late ack then settled the new one), and the
//! worker's registration must survive (or others rescue a live worker's jobs).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    str::FromStr,
    time::Duration,
};

use pulse_contract::{Attempt, Backoff, JobSpec};
use pulse_fleet::{
    config::{Settings, WorkerSettings},
    db,
};
use pulse_queue::worker::{self, QueueSpec};
use sqlx::{
    ConnectOptions, Executor, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// A throwaway PostgreSQL cluster in a temporary directory, on a free port.
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    fn new() -> Self {
        // The newest server installed from Debian's packages (scripts/ensure-postgres.sh).
        let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries under /usr/lib/postgresql")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        versions.sort();
        let bin = versions.pop().expect("an initdb");
        let dir = std::env::temp_dir().join(format!("pf-crash-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&dir).unwrap();
        if running_as_root() {
            // PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
            assert!(
                Command::new("chown")
                    .args(["postgres:postgres", dir.to_str().unwrap()])
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self { dir, bin, port };
        cluster.run(
            "initdb",
            &[
                "-D",
                cluster.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        cluster.start();
        cluster
    }

    fn data(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    /// A server tool, run as `postgres` when we are root (PostgreSQL refuses root).
    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let program = self.bin.join(tool);
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        command.args(args);
        command
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let status = self
            .command(tool, args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        assert!(status.success(), "{tool} {args:?} failed");
    }

    fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c wal_writer_delay=10000 -c max_connections=60 -c shared_buffers=32MB",
            self.port,
            self.data()
        );
        let log = format!("{}/server.log", self.data());
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
    }

    /// Kills the server as a power cut would: no checkpoint, no flush.
    fn crash(&self) {
        self.run(
            "pg_ctl",
            &["-D", self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl", &["-D", self.data(), "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The probe job: waits a moment (so crashes land mid-attempt, with its claim not
/// yet flushed), then records its attempt durably.
fn probe() -> JobSpec {
    let mut spec = JobSpec::typed(
        "crash_probe",
        |payload: serde_json::Value, ctx: Attempt| async move {
            let sleep = payload["sleep_ms"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(sleep)).await;
            sqlx::query("INSERT INTO runs (job_id, attempt_id, attempt) VALUES ($1, $2, $3)")
                .bind(ctx.job_id)
                .bind(ctx.attempt_id)
                .bind(ctx.attempt)
                .execute(&ctx.pool)
                .await?;
            Ok(())
        },
    );
    spec.max_attempts = 100;
    spec.timeout = Duration::from_secs(30);
    spec.backoff = Backoff {
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
        jitter: 0.0,
    };
    spec
}

fn worker_settings() -> WorkerSettings {
    WorkerSettings {
        concurrency: 16,
        batch_size: 16,
        poll_interval_ms: 100,
        heartbeat_interval_ms: 300,
        lease_timeout_ms: 2000,
        shutdown_grace_ms: 2000,
        stats_flush_ms: 200,
        max_snooze_ms: 3_600_000,
        slow_attempt_ms: 10_000,
    }
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    loop {
        match sqlx::query_scalar(sql).fetch_one(pool).await {
            Ok(n) => return n,
            // The server is coming back.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn wait_for(pool: &PgPool, what: &str, within: Duration, sql: &'static str, target: i64) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if count(pool, sql).await >= target {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {within:?} waiting until {what} (at {} of {target})",
            count(pool, sql).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const JOBS: i64 = 400;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_of_the_database_lose_no_job_strand_none_and_never_reuse_a_fencing_token() {
    let cluster = Cluster::new();
    let admin = PgConnectOptions::from_str(&cluster.url("postgres")).unwrap();
    admin
        .connect()
        .await
        .unwrap()
        .execute("CREATE DATABASE crash")
        .await
        .unwrap();
    let url = cluster.url("crash");
    let app = pool(&url).await;
    let mut specs = pulse_jobs::registry(&pulse_jobs::Env::default());
    specs.push(probe());
    db::migrate(&app, &specs).await.unwrap();
    app.execute("CREATE TABLE runs (job_id bigint NOT NULL, attempt_id uuid NOT NULL, attempt int NOT NULL)")
        .await
        .unwrap();

    let mut settings = Settings::load_from(std::path::Path::new("config"), "test").unwrap();
    settings.database.url = url.clone();
    let pools = db::queue_pools(&settings, 1).await.unwrap();
    let worker = worker::start(
        app.clone(),
        pools,
        vec![QueueSpec {
            job: probe(),
            concurrency: 16,
        }],
        &worker_settings(),
    )
    .await
    .unwrap();

    // A crash right after the worker registered: the registration survives (it is
    // the one queue write committed durably), so nobody takes this live worker for
    // dead and rescues its jobs.
    let registered: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT started_at FROM fleet.workers WHERE id = $1")
            .bind(worker.identity.id)
            .fetch_one(&app)
            .await
            .unwrap();
    cluster.crash();
    cluster.start();
    let after: Option<chrono::DateTime<chrono::Utc>> = loop {
        match sqlx::query_scalar("SELECT started_at FROM fleet.workers WHERE id = $1")
            .bind(worker.identity.id)
            .fetch_optional(&app)
            .await
        {
            Ok(row) => break row,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    assert_eq!(
        after,
        Some(registered),
        "the registration was lost in the crash"
    );

    // Load, and two crashes in the middle of it.
    sqlx::query(
        "SELECT fleet.enqueue_batch('crash_probe',
             array_agg(jsonb_build_object('sleep_ms', (i * 37) % 300)), NULL)
         FROM generate_series(1, $1) AS i",
    )
    .bind(JOBS as i32)
    .execute(&app)
    .await
    .unwrap();
    for (round, done) in [(1, JOBS / 4), (2, JOBS / 2)] {
        wait_for(
            &app,
            "jobs complete",
            Duration::from_secs(60),
            "SELECT count(*) FROM fleet.jobs WHERE state = 'completed'",
            done,
        )
        .await;
        let running = count(
            &app,
            "SELECT count(*) FROM fleet.jobs WHERE state = 'running'",
        )
        .await;
        eprintln!("crash {round}: {running} attempts running");
        cluster.crash();
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.start();
    }
    // Every job ends: none stays running under the live worker after its ack was lost.
    wait_for(
        &app,
        "every job completes after the crashes",
        Duration::from_secs(90),
        "SELECT count(*) FROM fleet.jobs WHERE state = 'completed'",
        JOBS,
    )
    .await;
    worker.shutdown().await.unwrap();

    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state::text, count(*) FROM fleet.jobs GROUP BY 1 ORDER BY 1")
            .fetch_all(&app)
            .await
            .unwrap();
    assert_eq!(states, vec![("completed".to_string(), JOBS)]);
    // Each completion was written by an attempt that ran to its end and recorded
    // itself durably first.
    let unrun = count(
        &app,
        "SELECT count(*) FROM fleet.jobs j WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.job_id = j.id)",
    )
    .await;
    assert_eq!(unrun, 0, "completed jobs with no finished attempt");
    // No two attempts ever shared a fencing token, so no attempt could settle another.
    let shared = count(
        &app,
        "SELECT count(*) FROM (SELECT attempt_id FROM runs GROUP BY attempt_id HAVING count(*) > 1) s",
    )
    .await;
    assert_eq!(shared, 0, "fencing tokens reused across attempts");
    let (runs, rescued): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM runs),
                (SELECT count(*) FROM fleet.jobs j, jsonb_array_elements(j.errors) e
                 WHERE e->>'kind' IN ('lease_lost', 'lease_expired'))",
    )
    .fetch_one(&app)
    .await
    .unwrap();
    eprintln!("{JOBS} jobs, {runs} finished attempts, {rescued} rescued attempts");
    app.close().await;
}
