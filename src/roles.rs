//! Process roles (worker, scheduler, web) and how they are wired: the clients jobs
//! get from configuration, the local stand-ins of vendors in local runs, shutdown.

use std::time::Duration;

use pulse_domain::{Services, bounds::WebhookPolicy};
use pulse_jobs::{Env, Job};
use pulse_queue::{scheduler, worker};
use tokio::sync::watch;

use crate::{cli::WorkerArgs, config::Settings, db, registry, web};

/// Which roles one process runs.
#[derive(Debug, Default)]
pub struct Roles {
    /// Run jobs (of these queues).
    pub worker: Option<WorkerArgs>,
    /// Enqueue cron ticks.
    pub scheduler: bool,
    /// Serve webhooks, health, metrics and the console.
    pub web: bool,
    /// A local run: start the paper venue and the Discord sink in this process.
    pub local: bool,
}

impl Roles {
    pub fn worker(args: WorkerArgs) -> Self {
        Self {
            worker: Some(args),
            ..Self::default()
        }
    }

    pub fn scheduler() -> Self {
        Self {
            scheduler: true,
            ..Self::default()
        }
    }

    pub fn web() -> Self {
        Self {
            web: true,
            ..Self::default()
        }
    }

    /// Every role, with the local vendors (`pulse-fleet all`).
    pub fn all_local(args: WorkerArgs) -> Self {
        Self {
            worker: Some(args),
            scheduler: true,
            web: true,
            local: true,
        }
    }
}

/// The clients jobs get, from configuration. `discord_fallback` is where alerts go
/// when their user has no webhook.
pub fn services(settings: &Settings, discord_fallback: Option<String>) -> Services {
    let mut services = Services::new(
        Duration::from_millis(settings.discord.request_timeout_ms),
        discord_fallback,
    );
    services.venue_urls = settings.venues.clone().into_iter().collect();
    services.venue_requests_per_minute = settings.oms.requests_per_minute_per_account;
    services.max_external_wait = settings.worker.max_snooze();
    services.venue_data_urls = settings.market_data.clone().into_iter().collect();
    services.price_collar = settings.oms.price_collar;
    services.discord_webhooks = WebhookPolicy {
        extra_origins: settings.discord.allowed_webhook_origins.clone(),
    };
    services.broker_refresh_margin = Duration::from_secs(settings.brokers.refresh_margin_secs);
    for (name, client) in &settings.brokers.clients {
        match pulse_domain::secrets::resolve(&client.client_secret_ref) {
            Ok(secret) => {
                services.brokers.insert(
                    name.clone(),
                    pulse_domain::brokers::BrokerOAuth {
                        token_url: client.token_url.clone(),
                        client_id: client.client_id.clone(),
                        client_secret: secret,
                    },
                );
            }
            // Its connections' refreshes fail saying no client is configured.
            Err(error) => {
                tracing::warn!(broker = %name, %error, "broker OAuth client secret unavailable")
            }
        }
    }
    services
}

/// Runs the chosen roles in this process until SIGTERM or Ctrl-C.
pub async fn run(settings: &Settings, roles: Roles) -> anyhow::Result<()> {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let app_pool = db::app_pool(settings).await?;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let local = roles.local;

    let mut worker = match &roles.worker {
        Some(args) => {
            let mut fallback = settings.discord.fallback();
            if fallback.is_none() && local {
                fallback = Some(start_discord_sink(settings, &mut tasks, stop_rx.clone()).await?);
            }
            let mut oauth = None;
            if local {
                start_paper_venue(settings, &mut tasks, stop_rx.clone()).await?;
                oauth = start_oauth_broker(settings, &mut tasks, stop_rx.clone()).await?;
            }
            let mut env = Env::new(services(settings, fallback));
            env.reconcile = std::sync::Arc::new(settings.reconcile.job());
            let specs = registry::all_specs(settings, &env);
            let queues = registry::select_queues(
                &specs,
                args.queues.as_deref(),
                args.concurrency,
                settings,
            )?;
            let pools = db::queue_pools(settings, queues.len()).await?;
            if local && args.demo {
                crate::demo::seed(&app_pool).await?;
                if let Some(oauth) = &oauth {
                    crate::demo::connect_broker(&app_pool, oauth).await?;
                }
                tasks.spawn(crate::demo::run(
                    app_pool.clone(),
                    Duration::from_secs(5),
                    stop_rx.clone(),
                ));
                tracing::info!("demo desk: a two-leg intent every 5 s on the paper venue");
            }
            tasks.spawn(pulse_domain::audit::run_sealer(
                app_pool.clone(),
                stop_rx.clone(),
            ));
            if settings.oms.trade_streams {
                tasks.spawn(pulse_domain::trade_streams::run(
                    app_pool.clone(),
                    env.services.clone(),
                    pulse_domain::trade_streams::StreamSettings {
                        rescan: Duration::from_secs(settings.oms.stream_rescan_secs.max(1)),
                        ..Default::default()
                    },
                    stop_rx.clone(),
                ));
            }
            // Only a process that runs reconciliations closes the gates: one that
            // cannot open them again could leave intents waiting with no one to
            // reconcile (a fleet split by queues restarts its reconcilers too).
            let reconciles = queues
                .iter()
                .any(|q| q.job.name == pulse_jobs::reconcile_account::ReconcileAccount::NAME);
            if settings.reconcile.at_startup && reconciles {
                reconcile_at_startup(&app_pool).await?;
            }
            Some(
                worker::start_with(
                    app_pool.clone(),
                    pools,
                    queues,
                    &settings.worker,
                    env.services.metrics.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    if roles.scheduler {
        let schedules = scheduler::parse_all(&settings.schedules)?;
        tasks.spawn(scheduler::run(app_pool.clone(), schedules, stop_rx.clone()));
    }
    if roles.web {
        let listener = tokio::net::TcpListener::bind(&settings.web.bind).await?;
        tracing::info!("web listening on http://{}", listener.local_addr()?);
        let specs = registry::registered(settings);
        let state = web::AppState::new(app_pool.clone(), settings.clone(), &specs);
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

    // The first run's story, through this process's own web server.
    if local && roles.web && roles.worker.as_ref().is_some_and(|a| a.demo) {
        tasks.spawn(crate::demo::story::play(app_pool.clone(), settings.clone()));
    }

    match worker.as_mut() {
        Some(w) => tokio::select! {
            _ = &mut shutdown => {}
            _ = w.wait_for_failure() => anyhow::bail!("a queue worker died; exiting so the supervisor restarts us"),
        },
        None => shutdown.await,
    }
    let _ = stop.send(true);
    if let Some(w) = worker {
        w.shutdown().await?;
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Restart durability: before this process claims a job, every active account's
/// gate closes and one reconciliation is asked for per closing (N processes starting
/// at once ask once); the account's new intents wait in planning until it succeeds.
/// Called by worker processes that run `reconcile_account`.
pub async fn reconcile_at_startup(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let asked = sqlx::query_scalar!(r#"SELECT request_reconciliations('startup', 0) AS "asked!""#)
        .fetch_one(pool)
        .await?;
    tracing::info!("start-up reconciliation asked for {asked} accounts");
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
        "paper venue (Alpaca's and Binance.US's dialects) on http://{}",
        listener.local_addr()?
    );
    let venue = pulse_sims::paper::PaperVenue::new(pulse_sims::paper::PaperOptions {
        rate_limit_per_minute: u32::try_from(settings.paper.requests_per_minute).unwrap_or(200),
        fill_delay_ms: settings.paper.fill_delay_ms,
        partial_fill_qty: settings.paper.partial_fill_qty,
        session_secs: settings.paper.session_secs,
        ..Default::default()
    });
    crate::demo::prepare_venue(&venue);
    spawn_until_stopped(tasks, "paper venue", venue.serve(listener), stop);
    Ok(())
}

/// Local runs with a `schwab` OAuth client configured: its token endpoint (Schwab's
/// dialect), with that client's credentials, for the demo's broker connection.
async fn start_oauth_broker(
    settings: &Settings,
    tasks: &mut tokio::task::JoinSet<()>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<pulse_sims::oauth_broker::OAuthBroker>> {
    let Some(client) = settings.brokers.clients.get("schwab") else {
        return Ok(None);
    };
    let Ok(secret) = pulse_domain::secrets::resolve(&client.client_secret_ref) else {
        tracing::info!("no local OAuth client secret: the demo has no broker connection");
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(&settings.brokers.local_bind).await?;
    tracing::info!(
        "OAuth token endpoint (Schwab dialect) on http://{}",
        listener.local_addr()?
    );
    let broker =
        pulse_sims::oauth_broker::OAuthBroker::new(pulse_sims::oauth_broker::OAuthOptions {
            client_id: client.client_id.clone(),
            client_secret: secret.expose().to_string(),
            rotate: true,
        });
    spawn_until_stopped(
        tasks,
        "OAuth token endpoint",
        broker.clone().serve(listener),
        stop,
    );
    Ok(Some(broker))
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
    let sink = pulse_sims::discord_sink::Sink::new(Default::default());
    spawn_until_stopped(tasks, "Discord sink", sink.serve(listener), stop);
    Ok(format!("http://{addr}/api/webhooks/0/local-sink"))
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when it is first polled: a process calls it before it starts any work, so a
/// SIGTERM that arrives while it is still starting up is a graceful stop, not the
/// default action (death).
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("interrupt received"),
        }
    }
}
