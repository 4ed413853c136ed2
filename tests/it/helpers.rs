//! Test support: a fresh database per test, in-process workers, real worker
//! processes, and waiting on conditions (never on time alone).

use std::{future::Future, str::FromStr, time::Duration};

use pulse_contract::{Attempt, Backoff, JobError, JobSpec};
use pulse_fleet::{config::WorkerSettings, db};
use pulse_jobs::{Env, Job};
use pulse_queue::{
    enqueue::{EnqueueOptions, enqueue},
    worker::{self, QueueSpec, WorkerHandle},
};
use sqlx::{
    AssertSqlSafe, ConnectOptions, Executor, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of its own, migrated, with the registry's job types plus `extra`.
pub struct TestDb {
    pub pool: PgPool,
    pub url: String,
}

/// The tenant of the rows of tests that are not about tenancy (every database has it).
pub const TENANT: uuid::Uuid = uuid::Uuid::from_u128(0x7e57_7e57);

impl TestDb {
    pub async fn new(extra: &[JobSpec]) -> Self {
        let name = format!("pf_test_{}", uuid::Uuid::new_v4().simple());
        let server = PgConnectOptions::from_str(&server_url()).expect("DATABASE_URL");
        let mut admin = server
            .clone()
            .database("postgres")
            .connect()
            .await
            .expect("connect to the PostgreSQL server (DATABASE_URL)");
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create test database");
        let mut url = url::Url::parse(&server_url()).expect("DATABASE_URL is a URL");
        url.set_path(&name);
        let url = url.to_string();
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .expect("connect to test database");
        let mut specs = pulse_jobs::registry(&Env::default());
        specs.extend(extra.iter().cloned());
        db::migrate(&pool, &specs).await.expect("migrate");
        sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'test tenant')")
            .bind(TENANT)
            .execute(&pool)
            .await
            .expect("the test tenant");
        Self { pool, url }
    }

    /// The database's name: the path of its URL.
    pub fn name(&self) -> String {
        url::Url::parse(&self.url)
            .map(|u| u.path().trim_start_matches('/').to_owned())
            .unwrap_or_default()
    }

    pub fn settings(&self) -> pulse_fleet::config::Settings {
        let mut s = load_test_settings();
        s.database.url = self.url.clone();
        s
    }

    pub async fn enqueue(&self, job: &str, payload: serde_json::Value) -> i64 {
        enqueue(&self.pool, job, &payload, &EnqueueOptions::default())
            .await
            .expect("enqueue")
    }

    pub async fn enqueue_with(
        &self,
        job: &str,
        payload: serde_json::Value,
        options: EnqueueOptions,
    ) -> i64 {
        enqueue(&self.pool, job, &payload, &options)
            .await
            .expect("enqueue")
    }

    pub async fn job(&self, id: i64) -> JobRow {
        sqlx::query_as(
            "SELECT state::text, attempts, run_at, errors, started_at, finished_at
             FROM fleet.jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.pool)
        .await
        .expect("job row")
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .expect("count query")
    }

    pub async fn start_worker(&self, specs: Vec<JobSpec>, concurrency: usize) -> WorkerHandle {
        self.start_worker_with(specs, concurrency, test_worker_settings())
            .await
    }

    pub async fn start_worker_with(
        &self,
        specs: Vec<JobSpec>,
        concurrency: usize,
        settings: WorkerSettings,
    ) -> WorkerHandle {
        let s = self.settings();
        let pools = db::queue_pools(&s, specs.len()).await.expect("queue pools");
        let queues = specs
            .into_iter()
            .map(|job| QueueSpec { job, concurrency })
            .collect();
        worker::start(self.pool.clone(), pools, queues, &settings)
            .await
            .expect("start worker")
    }

    /// Serves the web process on an ephemeral port with this database and the test
    /// settings as `adjust` leaves them; returns its base URL.
    pub async fn serve_web(
        &self,
        adjust: impl FnOnce(&mut pulse_fleet::config::Settings),
    ) -> String {
        let mut settings = self.settings();
        adjust(&mut settings);
        let specs = pulse_fleet::registry::registered(&settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = pulse_fleet::web::AppState::new(self.pool.clone(), settings, &specs);
        tokio::spawn(pulse_fleet::web::serve(
            listener,
            state,
            std::future::pending(),
        ));
        format!("http://{addr}")
    }

    /// Waits until no job of the database is available-and-due or running.
    pub async fn drain(&self) {
        wait_until("the queue drains", Duration::from_secs(30), || async {
            self.count(
                "SELECT count(*) FROM fleet.jobs
                 WHERE state = 'running' OR (state = 'available' AND run_at <= now())",
            )
            .await
                == 0
        })
        .await;
    }

    /// Waits until job `id` has run and now waits to run again later (a snooze or a
    /// retry) and returns it.
    pub async fn wait_until_deferred(&self, id: i64) -> JobRow {
        wait_until(
            &format!("job {id} ran and waits"),
            Duration::from_secs(20),
            || async {
                let j = self.job(id).await;
                j.state == "available" && j.started_at.is_some() && j.run_at > chrono::Utc::now()
            },
        )
        .await;
        self.job(id).await
    }

    /// Waits until job `id` is in `state`.
    pub async fn wait_for_state(&self, id: i64, state: &str, within: Duration) -> JobRow {
        wait_until(&format!("job {id} is {state}"), within, || async {
            self.job(id).await.state == state
        })
        .await;
        self.job(id).await
    }
}

/// Drops the database, even when the test panicked (FORCE ends open connections).
impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name();
        if !name.starts_with("pf_test_") {
            return;
        }
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let server = PgConnectOptions::from_str(&server_url())?;
                let mut admin = server.database("postgres").connect().await?;
                admin
                    .execute(AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(std::io::Error::other)
        })
        .join();
    }
}

#[derive(Debug, sqlx::FromRow)]
pub struct JobRow {
    pub state: String,
    pub attempts: i32,
    pub run_at: chrono::DateTime<chrono::Utc>,
    pub errors: serde_json::Value,
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// `config/default.toml` + `config/test.toml`, whatever APP_ENV says.
pub fn load_test_settings() -> pulse_fleet::config::Settings {
    pulse_fleet::config::Settings::load_from(std::path::Path::new("config"), "test")
        .expect("config/ loads")
}

/// What in-process test workers use: default services, with alert webhooks allowed on
/// this machine's loopback (where the tests' Discord-dialect servers listen).
pub fn test_services() -> pulse_domain::Services {
    let mut services = pulse_domain::Services::default();
    services.discord_webhooks.extra_origins = vec!["http://127.0.0.1".into()];
    services
}

/// The specs of job `J` as in-process test workers run it (with [`test_services`]).
pub fn job<J: Job>() -> JobSpec {
    pulse_jobs::spec::<J>(&Env::new(test_services()))
}

/// Fast polls and short leases, so failure paths finish in seconds.
pub fn test_worker_settings() -> WorkerSettings {
    load_test_settings().worker
}

/// Polls `condition` every 20 ms until it holds; panics with `what` after `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {within:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A job spec whose handler is a closure (tests' own job types).
pub fn spec<F, Fut>(name: &'static str, max_attempts: i32, backoff: Backoff, run: F) -> JobSpec
where
    F: Fn(serde_json::Value, Attempt) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    let mut spec = JobSpec::typed(name, run);
    spec.max_attempts = max_attempts;
    spec.timeout = Duration::from_secs(30);
    spec.backoff = backoff;
    spec
}

/// Retries within tens of milliseconds (tests of what a retry does, not of backoff).
pub const FAST_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(10),
    max: Duration::from_millis(50),
    jitter: 0.0,
};

pub const NO_JITTER: Backoff = Backoff {
    base: Duration::from_secs(1),
    max: Duration::from_secs(60),
    jitter: 0.0,
};

/// The canary spec of the registry (what worker processes run).
pub fn canary() -> JobSpec {
    job::<pulse_jobs::canary::Canary>()
}

/// A real `pulse-fleet` process against the test database, its output piped (read
/// it, or it blocks once the pipe is full).
pub fn fleet_process(db: &TestDb, args: &[&str], envs: &[(&str, &str)]) -> tokio::process::Child {
    fleet_command(db, args, envs)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pulse-fleet")
}

/// The command of a `pulse-fleet` process against the test database (`APP_ENV=test`,
/// `RUST_LOG=info`, then `envs`), killed when dropped; output not yet directed.
pub fn fleet_command(db: &TestDb, args: &[&str], envs: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pulse-fleet"));
    cmd.args(args)
        .env("DATABASE_URL", &db.url)
        .env("APP_ENV", "test")
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd
}

pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("child pid") as i32;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
}

pub fn sigkill(child: &tokio::process::Child) {
    let pid = child.id().expect("child pid") as i32;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill -KILL");
    assert!(status.success());
}
