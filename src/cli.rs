//! The one binary: a subcommand per process type (the Procfile maps them) plus the
//! operators' tools.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use pulse_queue::{
    JobState, admin,
    enqueue::{self, EnqueueOptions},
};

use crate::{
    bench,
    config::Settings,
    db, registry,
    roles::{self, Roles},
    telemetry,
};

#[derive(Debug, Parser)]
#[command(
    name = "pulse-fleet",
    version,
    about = "Background jobs on PostgreSQL for the trading platform"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations and record the job types (the Procfile's `release`).
    Migrate,
    /// Run jobs.
    Worker(WorkerArgs),
    /// Enqueue the cron schedules of config/.
    Scheduler,
    /// Serve /internal/health and /metrics.
    Web,
    /// Every process role in one (local runs and demos): migrate, worker, scheduler, web.
    All(WorkerArgs),
    /// Inspect and act on jobs.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Enqueue one job.
    Enqueue(EnqueueArgs),
    /// Benchmarks that print numbers.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// A local venue speaking Alpaca's trading API (see crates/sims/src/paper).
    Paper(pulse_sims::paper::PaperOptions),
    /// Credentials' secret references.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// The audit log: `verify` recomputes every tenant's hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Operators' actions on a trading account (see docs/runbooks/).
    #[command(subcommand)]
    Trading(TradingCommand),
    /// Print the signature header for a webhook body, with the configured secret
    /// (to send test webhooks: `curl -H "Stripe-Signature: $(pulse-fleet sign stripe "$BODY")"`).
    Sign {
        #[arg(value_parser = ["stripe", "watchers"])]
        kind: String,
        body: String,
    },
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Queues (job names) to run, comma-separated; default: all.
    #[arg(long, value_delimiter = ',')]
    pub queues: Option<Vec<String>>,
    /// Jobs at once per queue (overrides config).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// (`all` only) seed a demo desk and trade an intent on the paper venue every few seconds.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first.
    List(ListArgs),
    /// One job with its payload and every attempt's error.
    Show { id: i64 },
    /// Make dead or cancelled jobs runnable again, with a fresh set of attempts.
    Retry(SelectionArgs),
    /// Cancel jobs that have not finished (a running attempt's result is then refused).
    Cancel(SelectionArgs),
    /// Jobs by name and state, from the stats tables (no scan of the job table).
    Stats,
    /// Stop claiming from a queue (a job name); running jobs finish.
    Pause { queue: String },
    /// Claim from a paused queue again.
    Resume { queue: String },
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only this job name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only this state (available, running, completed, dead, cancelled).
    #[arg(long)]
    pub state: Option<JobState>,
    /// Only jobs whose payload names this tenant_id.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only the job with this idempotency key.
    #[arg(long)]
    pub key: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: i64,
}

#[derive(Debug, Clone, Args)]
pub struct SelectionArgs {
    /// Job ids.
    pub ids: Vec<i64>,
    /// Instead of ids: every job of this name (with --state).
    #[arg(long)]
    pub name: Option<String>,
    /// Instead of ids: every job in this state (default: dead for retry, available for cancel).
    #[arg(long)]
    pub state: Option<JobState>,
}

impl From<SelectionArgs> for admin::Selection {
    fn from(a: SelectionArgs) -> Self {
        Self {
            ids: a.ids,
            name: a.name,
            state: a.state,
        }
    }
}

#[derive(Debug, Args)]
pub struct EnqueueArgs {
    pub job: String,
    /// The payload, as JSON.
    pub payload: String,
    #[arg(long)]
    pub key: Option<String>,
    /// RFC 3339 time, e.g. 2026-11-23T10:00:00Z.
    #[arg(long)]
    pub run_at: Option<DateTime<Utc>>,
    #[arg(long, default_value_t = 0)]
    pub priority: i32,
    #[arg(long)]
    pub max_attempts: Option<i32>,
    #[arg(long)]
    pub concurrency_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print a new random sealing key (base64) for PULSE_SECRETS_KEY.
    NewKey,
    /// Read a secret from stdin and print its `enc:v1:` reference (key: PULSE_SECRETS_KEY).
    Seal,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Exit 1 if any tenant's chain is broken (an edited, missing or reordered event).
    Verify,
    /// Seal the events not sealed yet (running workers do this every 500 ms).
    Seal,
}

#[derive(Debug, Subcommand)]
pub enum TradingCommand {
    /// Reconcile the account with its venue now.
    Reconcile { account: uuid::Uuid },
    /// Rewrite the account's ledger as the sum of its journal (after drift), audited.
    RebuildLedger {
        account: uuid::Uuid,
        #[arg(long)]
        reason: String,
    },
    /// Release the account's kill switch (after drift or a shortfall), audited.
    Resume {
        account: uuid::Uuid,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The queue: drain rate, idle latency, trigger enqueue cost.
    Queue(bench::queue::QueueBenchArgs),
    /// The OMS: two-leg intents traded on the paper venue.
    Intents(bench::intents::IntentBenchArgs),
    /// The order lifecycle: fills to the database by the stream and by the sync, and
    /// the requests an account with many working orders costs.
    Lifecycle(bench::lifecycle::LifecycleBenchArgs),
    /// Reconciliation: one pass over many accounts with diverged orders.
    Reconcile(bench::reconcile::ReconcileBenchArgs),
    /// The operators' console: every page and filter over a million jobs.
    Console(bench::console::ConsoleBenchArgs),
    /// The queue over a long horizon (idle-in-transaction, readers, 1.5x load, a
    /// killed worker), beside graphile-worker and PgQ: samples, plots, a summary.
    Soak(bench::soak::SoakArgs),
    /// One worker process of the soak benchmark.
    #[command(hide = true)]
    SoakWorker(bench::soak::worker::SoakWorkerArgs),
    /// Worker for the shared peer harness (bench/peers/compare.sh).
    #[command(hide = true)]
    Peer(bench::peer::PeerArgs),
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Secrets(command) = &cli.command {
        telemetry::init(&Default::default());
        return secrets(command);
    }
    let settings = Settings::load()?;
    telemetry::init(&settings.log);
    // Only the commands that record or check job types build them (it builds an HTTP
    // client); the roles build their own.
    let specs = || registry::registered(&settings);
    match cli.command {
        Command::Migrate => {
            let pool = db::app_pool(&settings).await?;
            let specs = specs();
            db::migrate(&pool, &specs).await?;
            println!("migrations applied; {} job types recorded", specs.len());
        }
        Command::Worker(args) => roles::run(&settings, Roles::worker(args)).await?,
        Command::Scheduler => roles::run(&settings, Roles::scheduler()).await?,
        Command::Web => roles::run(&settings, Roles::web()).await?,
        Command::All(args) => {
            let pool = db::app_pool(&settings).await?;
            db::migrate(&pool, &specs()).await?;
            roles::run(&settings, Roles::all_local(args)).await?
        }
        Command::Jobs(command) => {
            let pool = db::app_pool(&settings).await?;
            println!("{}", jobs(&pool, &specs(), command).await?);
        }
        Command::Enqueue(args) => {
            let payload: serde_json::Value = serde_json::from_str(&args.payload)
                .map_err(|e| anyhow::anyhow!("the payload is not JSON: {e}"))?;
            let pool = db::app_pool(&settings).await?;
            let options = EnqueueOptions {
                idempotency_key: args.key,
                run_at: args.run_at,
                priority: args.priority,
                max_attempts: args.max_attempts,
                concurrency_key: args.concurrency_key,
            };
            let id = enqueue::enqueue(&pool, &args.job, &payload, &options).await?;
            println!("{id}");
        }
        Command::Paper(options) => {
            let listener = tokio::net::TcpListener::bind(&options.bind).await?;
            tracing::info!(
                "paper venue (Alpaca dialect) on http://{}",
                listener.local_addr()?
            );
            let venue = pulse_sims::paper::PaperVenue::new(options);
            tokio::select! {
                result = venue.serve(listener) => result?,
                _ = roles::shutdown_signal() => {}
            }
        }
        // Needs no settings; handled before they load.
        Command::Secrets(command) => secrets(&command)?,
        Command::Audit(AuditCommand::Verify) => {
            let pool = db::app_pool(&settings).await?;
            let report = pulse_domain::audit::verify(&pool).await?;
            for problem in &report.problems {
                println!("BROKEN {problem}");
            }
            if report.unsealed > 0 {
                println!(
                    "{} event(s) not sealed yet (workers seal them; `audit seal` does now)",
                    report.unsealed
                );
            }
            println!(
                "{} sealed event(s) of {} tenant(s) checked: {}",
                report.events,
                report.tenants,
                if report.is_ok() {
                    "chains intact"
                } else {
                    "chains broken"
                }
            );
            if !report.is_ok() {
                std::process::exit(1);
            }
        }
        Command::Trading(command) => {
            let pool = db::app_pool(&settings).await?;
            match command {
                TradingCommand::Reconcile { account } => {
                    let job = crate::trading_ops::reconcile(&pool, account).await?;
                    println!("reconciliation of {account} asked for: job {job}");
                }
                TradingCommand::RebuildLedger { account, reason } => {
                    let details =
                        crate::trading_ops::rebuild_ledger(&pool, account, &reason).await?;
                    println!("ledger of {account} rebuilt from its journal: {details}");
                }
                TradingCommand::Resume { account, reason } => {
                    let was = crate::trading_ops::resume(&pool, account, &reason).await?;
                    println!(
                        "trading on {account} resumed (was paused: {})",
                        was.unwrap_or_default()
                    );
                }
            }
        }
        Command::Audit(AuditCommand::Seal) => {
            let pool = db::app_pool(&settings).await?;
            println!(
                "{} event(s) sealed",
                pulse_domain::audit::seal_all(&pool).await?
            );
        }
        Command::Sign { kind, body } => {
            use crate::web::signature;
            let header = if kind == "stripe" {
                let secret = *settings.stripe.secrets().first().ok_or_else(|| {
                    anyhow::anyhow!("no Stripe secret: set PULSE__STRIPE__WEBHOOK_SECRETS")
                })?;
                signature::stripe_header(secret, body.as_bytes(), chrono::Utc::now().timestamp())
            } else {
                let secret = settings.watchers.secret().ok_or_else(|| {
                    anyhow::anyhow!("no watcher secret: set PULSE__WATCHERS__WEBHOOK_SECRET")
                })?;
                signature::hex_hmac(&secret, body.as_bytes())
            };
            println!("{header}");
        }
        Command::Bench(BenchCommand::Queue(args)) => bench::queue::run(&settings, args).await?,
        Command::Bench(BenchCommand::Intents(args)) => bench::intents::run(&settings, args).await?,
        Command::Bench(BenchCommand::Lifecycle(args)) => {
            bench::lifecycle::run(&settings, args).await?
        }
        Command::Bench(BenchCommand::Reconcile(args)) => {
            bench::reconcile::run(&settings, args).await?
        }
        Command::Bench(BenchCommand::Console(args)) => bench::console::run(&settings, args).await?,
        Command::Bench(BenchCommand::Peer(args)) => bench::peer::run(&settings, args).await?,
        Command::Bench(BenchCommand::Soak(args)) => bench::soak::run(&settings, args).await?,
        Command::Bench(BenchCommand::SoakWorker(args)) => {
            bench::soak::worker::run(&settings, args).await?
        }
    }
    Ok(())
}

/// An operator's `jobs` command, rendered for the terminal.
async fn jobs(
    pool: &sqlx::PgPool,
    specs: &[pulse_contract::JobSpec],
    command: JobsCommand,
) -> anyhow::Result<String> {
    Ok(match command {
        JobsCommand::List(args) => {
            let filter = admin::Filter {
                name: args.name,
                state: args.state,
                tenant: args.tenant,
                key: args.key,
                limit: args.limit,
                ..Default::default()
            };
            jobs_table(&admin::list(pool, &filter).await?)
        }
        JobsCommand::Show { id } => {
            let row = admin::show(pool, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no job {id}"))?;
            serde_json::to_string_pretty(&row)?
        }
        JobsCommand::Retry(selection) => {
            let n = admin::retry(pool, &selection.into(), &cli_actor()).await?;
            format!("{n} job(s) queued again")
        }
        JobsCommand::Cancel(selection) => {
            let n = admin::cancel(pool, &selection.into(), &cli_actor()).await?;
            format!("{n} job(s) cancelled")
        }
        JobsCommand::Stats => stats_table(&admin::state_counts(pool).await?),
        JobsCommand::Pause { queue } => {
            registry::check_known(specs, [queue.as_str()])?;
            if admin::pause(pool, &queue, &cli_actor()).await? {
                format!("queue {queue} paused")
            } else {
                format!("queue {queue} was paused already")
            }
        }
        JobsCommand::Resume { queue } => {
            registry::check_known(specs, [queue.as_str()])?;
            if admin::resume(pool, &queue, &cli_actor()).await? {
                format!("queue {queue} resumed")
            } else {
                format!("queue {queue} was not paused")
            }
        }
    })
}

/// Who an operator's action from the command line is audited as: the OS user.
fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

fn jobs_table(rows: &[admin::JobSummary]) -> String {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "id",
        "job",
        "state",
        "attempts",
        "run at",
        "created",
        "last error",
    ]);
    for job in rows {
        let mut error = job.last_error.clone().unwrap_or_default();
        if error.chars().count() > 60 {
            error = error.chars().take(57).collect::<String>() + "...";
        }
        table.add_row([
            job.id.to_string(),
            job.job_name.clone(),
            job.state.to_string(),
            format!("{}/{}", job.attempts, job.max_attempts),
            job.run_at.format("%F %T").to_string(),
            job.created_at.format("%F %T").to_string(),
            error,
        ]);
    }
    table.to_string()
}

fn stats_table(counts: &[admin::StateCount]) -> String {
    let mut names: Vec<&str> = counts.iter().map(|c| c.job_name.as_str()).collect();
    names.dedup();
    let mut table = Table::new();
    let mut header = vec!["job".to_string()];
    header.extend(JobState::ALL.iter().map(|s| s.to_string()));
    table.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    for name in names {
        let mut row = vec![name.to_string()];
        for state in JobState::ALL {
            let n = counts
                .iter()
                .find(|c| c.job_name == name && c.state == state)
                .map_or(0, |c| c.count);
            row.push(n.to_string());
        }
        table.add_row(row);
    }
    table.to_string()
}

fn secrets(command: &SecretsCommand) -> anyhow::Result<()> {
    use base64::Engine;
    match command {
        SecretsCommand::NewKey => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
            println!("{}", base64::engine::general_purpose::STANDARD.encode(key));
        }
        SecretsCommand::Seal => {
            let key = pulse_domain::secrets::key_from_env()?;
            let mut plaintext = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut plaintext)?;
            println!(
                "{}",
                pulse_domain::secrets::seal(plaintext.trim_end_matches(['\n', '\r']), &key)
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
