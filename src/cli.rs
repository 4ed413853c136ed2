//! The one binary: a subcommand per process type (the Procfile maps them) plus the
//! operators' tools.

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use tokio::sync::watch;

use crate::{
    bench, config::Settings, db, queue, queue::enqueue::EnqueueOptions, scheduler, telemetry, web,
    worker,
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
    /// A local venue speaking Alpaca's trading API (see src/paper).
    Paper(crate::paper::PaperOptions),
    /// Credentials' secret references.
    #[command(subcommand)]
    Secrets(SecretsCommand),
    /// The audit log: `verify` recomputes every tenant's hash chain.
    #[command(subcommand)]
    Audit(AuditCommand),
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
    List(queue::admin::Filter),
    /// One job with its payload and every attempt's error.
    Show { id: i64 },
    /// Make dead or cancelled jobs runnable again, with a fresh set of attempts.
    Retry(queue::admin::Selection),
    /// Cancel jobs that have not finished (a running attempt's result is then refused).
    Cancel(queue::admin::Selection),
    /// Jobs by name and state, from the stats tables (no scan of the job table).
    Stats,
    /// Stop claiming from a queue (a job name); running jobs finish.
    Pause { queue: String },
    /// Claim from a paused queue again.
    Resume { queue: String },
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
pub enum BenchCommand {
    /// The queue: drain rate, idle latency, trigger enqueue cost.
    Queue(bench::queue::QueueBenchArgs),
    /// The OMS: two-leg intents traded on the paper venue.
    Intents(bench::intents::IntentBenchArgs),
    /// Worker for the shared peer harness (bench/peers/compare.sh).
    #[command(hide = true)]
    Peer(bench::peer::PeerArgs),
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Secrets(command) = &cli.command {
        return secrets(command);
    }
    let settings = Settings::load()?;
    let specs = worker::all_specs(&settings);
    match cli.command {
        Command::Migrate => {
            let pool = db::app_pool(&settings).await?;
            db::migrate(&pool, &specs).await?;
            println!("migrations applied; {} job types recorded", specs.len());
        }
        Command::Worker(args) => {
            run_roles(&settings, &specs, Some(args), false, false, false).await?
        }
        Command::Scheduler => run_roles(&settings, &specs, None, true, false, false).await?,
        Command::Web => run_roles(&settings, &specs, None, false, true, false).await?,
        Command::All(args) => {
            let pool = db::app_pool(&settings).await?;
            db::migrate(&pool, &specs).await?;
            run_roles(&settings, &specs, Some(args), true, true, true).await?
        }
        Command::Jobs(command) => {
            let pool = db::app_pool(&settings).await?;
            let out = match command {
                JobsCommand::List(filter) => queue::admin::list(&pool, &filter).await?,
                JobsCommand::Show { id } => queue::admin::show(&pool, id).await?,
                JobsCommand::Retry(selection) => queue::admin::retry(&pool, &selection).await?,
                JobsCommand::Cancel(selection) => queue::admin::cancel(&pool, &selection).await?,
                JobsCommand::Stats => queue::admin::stats(&pool).await?,
                JobsCommand::Pause { queue } => {
                    known_queue(&specs, &queue)?;
                    queue::admin::pause(&pool, &queue).await?
                }
                JobsCommand::Resume { queue } => {
                    known_queue(&specs, &queue)?;
                    queue::admin::resume(&pool, &queue).await?
                }
            };
            println!("{out}");
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
            let id = queue::enqueue::enqueue(&pool, &args.job, &payload, &options).await?;
            println!("{id}");
        }
        Command::Paper(options) => {
            let listener = tokio::net::TcpListener::bind(&options.bind).await?;
            tracing::info!(
                "paper venue (Alpaca dialect) on http://{}",
                listener.local_addr()?
            );
            let venue = crate::paper::PaperVenue::new(options);
            tokio::select! {
                result = venue.serve(listener) => result?,
                _ = shutdown_signal() => {}
            }
        }
        // Needs no settings; handled before they load.
        Command::Secrets(command) => secrets(&command)?,
        Command::Audit(AuditCommand::Verify) => {
            let pool = db::app_pool(&settings).await?;
            let report = crate::audit::verify(&pool).await?;
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
        Command::Audit(AuditCommand::Seal) => {
            let pool = db::app_pool(&settings).await?;
            println!("{} event(s) sealed", crate::audit::seal_all(&pool).await?);
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
        Command::Bench(BenchCommand::Peer(args)) => bench::peer::run(&settings, args).await?,
    }
    Ok(())
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
            let key = jobs::secrets::key_from_env()?;
            let mut plaintext = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut plaintext)?;
            println!(
                "{}",
                jobs::secrets::seal(plaintext.trim_end_matches(['\n', '\r']), &key)
            );
        }
    }
    Ok(())
}

fn known_queue(specs: &[jobs::JobSpec], queue: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        specs.iter().any(|s| s.name == queue),
        "unknown queue `{queue}`; known: {}",
        specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// Runs the chosen roles in this process until SIGTERM or Ctrl-C.
async fn run_roles(
    settings: &Settings,
    specs: &[jobs::JobSpec],
    worker_args: Option<WorkerArgs>,
    with_scheduler: bool,
    with_web: bool,
    local: bool,
) -> anyhow::Result<()> {
    let app_pool = db::app_pool(settings).await?;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    let mut worker = match &worker_args {
        Some(args) => {
            let queues =
                worker::select_queues(specs, args.queues.as_deref(), args.concurrency, settings)?;
            let pools = db::queue_pools(settings, queues.len()).await?;
            let mut fallback = settings.discord.fallback();
            if fallback.is_none() && local {
                fallback = Some(start_discord_sink(settings, &mut tasks, stop_rx.clone()).await?);
            }
            if local {
                start_paper_venue(settings, &mut tasks, stop_rx.clone()).await?;
            }
            let mut services = jobs::Services::new(
                std::time::Duration::from_millis(settings.discord.request_timeout_ms),
                fallback,
            );
            services.venue_urls = settings.venues.clone().into_iter().collect();
            services.venue_requests_per_minute = settings.oms.requests_per_minute_per_account;
            services.max_external_wait = settings.worker.max_snooze();
            services.venue_data_urls = settings.market_data.clone().into_iter().collect();
            services.price_collar = settings.oms.price_collar;
            services.discord_webhooks = jobs::bounds::WebhookPolicy {
                extra_origins: settings.discord.allowed_webhook_origins.clone(),
            };
            if local && args.demo {
                crate::demo::seed(&app_pool).await?;
                tasks.spawn(crate::demo::run(
                    app_pool.clone(),
                    std::time::Duration::from_secs(5),
                    stop_rx.clone(),
                ));
                tracing::info!("demo desk: a two-leg intent every 5 s on the paper venue");
            }
            tasks.spawn(crate::audit::run_sealer(app_pool.clone(), stop_rx.clone()));
            Some(worker::start(app_pool.clone(), pools, queues, &settings.worker, services).await?)
        }
        None => None,
    };
    if with_scheduler {
        let schedules = scheduler::parse_all(&settings.schedules)?;
        tasks.spawn(scheduler::run(app_pool.clone(), schedules, stop_rx.clone()));
    }
    if with_web {
        let listener = tokio::net::TcpListener::bind(&settings.web.bind).await?;
        tracing::info!("web listening on http://{}", listener.local_addr()?);
        let state = web::AppState::new(app_pool.clone(), settings.clone(), specs);
        let mut stop_web = stop_rx.clone();
        tasks.spawn(async move {
            let shutdown = async move {
                let _ = stop_web.wait_for(|s| *s).await;
            };
            if let Err(error) = web::serve(listener, state, shutdown).await {
                tracing::error!(%error, "web server failed");
            }
        });
    }

    match worker.as_mut() {
        Some(w) => tokio::select! {
            _ = shutdown_signal() => {}
            _ = w.wait_for_failure() => anyhow::bail!("a queue worker died; exiting so the supervisor restarts us"),
        },
        None => shutdown_signal().await,
    }
    let _ = stop.send(true);
    if let Some(w) = worker {
        w.shutdown().await?;
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Local runs: the paper venue (Alpaca dialect) in this process.
async fn start_paper_venue(
    settings: &Settings,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&settings.paper.bind).await?;
    tracing::info!(
        "paper venue (Alpaca dialect) on http://{}",
        listener.local_addr()?
    );
    let venue = crate::paper::PaperVenue::new(crate::paper::PaperOptions {
        rate_limit_per_minute: u32::try_from(settings.paper.requests_per_minute).unwrap_or(200),
        ..Default::default()
    });
    spawn_until_stopped(tasks, "paper venue", venue.serve(listener), stop);
    Ok(())
}

/// Runs a local helper server until `stop` (or until it fails, which is logged).
fn spawn_until_stopped(
    tasks: &mut tokio::task::JoinSet<()>,
    what: &'static str,
    server: impl std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    tasks.spawn(async move {
        tokio::select! {
            result = server => if let Err(error) = result {
                tracing::error!(%error, "{what} failed");
            },
            _ = stop.wait_for(|s| *s) => {}
        }
    });
}

/// Local runs without a real Discord webhook: alerts go to the Discord-dialect sink.
async fn start_discord_sink(
    settings: &Settings,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(&settings.discord.sink_bind).await?;
    let addr = listener.local_addr()?;
    tracing::info!(
        "no Discord webhook configured: alerts go to the local sink, http://{addr}/messages"
    );
    let sink = crate::discord_sink::Sink::new(Default::default());
    spawn_until_stopped(tasks, "Discord sink", sink.serve(listener), stop);
    Ok(format!("http://{addr}/api/webhooks/0/local-sink"))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
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
