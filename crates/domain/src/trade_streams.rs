//! The fast path of the order lifecycle: one listener per venue account follows the
//! venue's order-update stream and stores each update in the `venue_events` inbox,
//! where a trigger turns it into an `apply_venue_event` job (the same transaction).
//!
//! One process of the fleet listens at a time (a session advisory lock on a
//! connection of its own: if the process dies, the lock goes with its connection and
//! another takes over), so each account has one stream connection however many
//! workers run. A listener reconnects with backoff; every (re)connection marks the
//! account's stream connected in `venue_sync_state`, whose trigger enqueues a sync of
//! the account: the stream does not replay what happened while nobody listened.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::{Connection, PgPool};
use tokio::{
    sync::watch,
    task::{AbortHandle, JoinSet},
};
use uuid::Uuid;

use crate::{
    Services, tenancy,
    venue::{StreamSignal, TradeUpdate},
};

/// How the listeners run.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// How often the accounts to follow are looked up again (and leadership tried).
    pub rescan: Duration,
    /// First and longest wait before reconnecting a stream.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            rescan: Duration::from_secs(10),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// Runs the listeners until `stop`: waits to lead, then follows every account with
/// venue credentials (looked up again every `rescan`).
pub async fn run(
    pool: PgPool,
    services: Arc<Services>,
    settings: StreamSettings,
    mut stop: watch::Receiver<bool>,
) {
    let connect = pool.connect_options();
    loop {
        // The leader's lock lives on a connection of its own, outside the pool.
        let leader = async {
            let mut conn = sqlx::PgConnection::connect_with(&connect).await?;
            let led: bool = sqlx::query_scalar!(
                r#"SELECT pg_try_advisory_lock(hashtext('pulse.trade_streams')) AS "led!""#
            )
            .fetch_one(&mut conn)
            .await?;
            Ok::<_, sqlx::Error>(led.then_some(conn))
        };
        match leader.await {
            Ok(Some(conn)) => {
                tracing::info!("trade streams: this process listens to the venues");
                lead(&pool, &services, &settings, conn, &mut stop).await;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "trade streams: cannot take the lead"),
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(settings.rescan) => {}
        }
    }
}

/// Follows the accounts while this process leads (until `stop`, or until the lock's
/// connection fails).
async fn lead(
    pool: &PgPool,
    services: &Arc<Services>,
    settings: &StreamSettings,
    mut lock: sqlx::PgConnection,
    stop: &mut watch::Receiver<bool>,
) {
    // Dropping the set (when this process stops leading, or its task is aborted)
    // aborts every follower with it.
    let mut tasks = JoinSet::new();
    let mut followers: HashMap<Uuid, AbortHandle> = HashMap::new();
    loop {
        match sqlx::query!(
            r#"SELECT tenant_id AS "tenant_id!", account_id AS "account_id!" FROM streamed_accounts()"#
        )
        .fetch_all(pool)
        .await
        {
            Ok(accounts) => {
                let wanted: HashMap<Uuid, Uuid> =
                    accounts.iter().map(|a| (a.account_id, a.tenant_id)).collect();
                followers.retain(|account, task| {
                    let keep = wanted.contains_key(account) && !task.is_finished();
                    if !keep {
                        task.abort();
                    }
                    keep
                });
                for (account, tenant) in wanted {
                    followers.entry(account).or_insert_with(|| {
                        tasks.spawn(follow(
                            pool.clone(),
                            services.clone(),
                            settings.clone(),
                            tenant,
                            account,
                        ))
                    });
                }
                // Reap the ones that ended (they never do but by abort).
                while tasks.try_join_next().is_some() {}
            }
            Err(error) => tracing::warn!(%error, "trade streams: cannot list the accounts"),
        }
        let alive = tokio::select! {
            _ = stopped(stop) => false,
            _ = tokio::time::sleep(settings.rescan) => {
                sqlx::query!("SELECT 1 AS one").fetch_one(&mut lock).await.is_ok()
            }
        };
        if !alive {
            break;
        }
    }
    tasks.abort_all();
}

/// Resolves when `stop` says so (the guard `wait_for` returns must not be held).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Follows one account's stream forever, reconnecting with exponential backoff.
async fn follow(
    pool: PgPool,
    services: Arc<Services>,
    settings: StreamSettings,
    tenant: Uuid,
    account: Uuid,
) {
    let mut wait = settings.backoff_min;
    loop {
        match listen(&pool, &services, tenant, account).await {
            Ok(Heard::Something) => wait = settings.backoff_min,
            Ok(Heard::Nothing) => {}
            Err(error) => tracing::warn!(account.id = %account, "trade stream: {error}"),
        }
        if let Err(error) = mark(&pool, tenant, account, false).await {
            tracing::warn!(account.id = %account, %error, "trade stream: cannot record the disconnect");
        }
        tokio::time::sleep(jitter(wait)).await;
        wait = (wait * 2).min(settings.backoff_max);
    }
}

enum Heard {
    Something,
    Nothing,
}

/// One connection: connect, mark connected (which syncs the account), then store each
/// update until the stream ends.
async fn listen(
    pool: &PgPool,
    services: &Services,
    tenant: Uuid,
    account: Uuid,
) -> Result<Heard, String> {
    let client = {
        let mut tx = tenancy::begin(pool, tenant)
            .await
            .map_err(|e| e.to_string())?;
        let row = sqlx::query!(
            "SELECT a.venue_id, c.identifier, c.secret_ref FROM trading_accounts a
             JOIN account_credentials c ON c.account_id = a.id AND c.credential_type = 'api_key'
             WHERE a.id = $1",
            account
        )
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the account has no api_key credential")?;
        tx.commit().await.map_err(|e| e.to_string())?;
        services.venue_client(
            account,
            &row.venue_id,
            row.identifier.as_deref(),
            &row.secret_ref,
        )?
    };
    let (sender, mut signals) = tokio::sync::mpsc::channel(1024);
    let stream = tokio::spawn(async move { client.stream_updates(sender).await });
    let mut heard = Heard::Nothing;
    while let Some(signal) = signals.recv().await {
        match signal {
            StreamSignal::Connected => {
                mark(pool, tenant, account, true)
                    .await
                    .map_err(|e| e.to_string())?;
                heard = Heard::Something;
            }
            StreamSignal::Update(update) => {
                store(pool, tenant, account, &update)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    match stream.await {
        Ok(Ok(())) => Ok(heard),
        Ok(Err(e)) => match heard {
            // A stream that worked and then dropped: reconnect soon.
            Heard::Something => {
                tracing::info!(account.id = %account, "trade stream ended: {e}; reconnecting");
                Ok(heard)
            }
            Heard::Nothing => Err(e.to_string()),
        },
        Err(e) => Err(format!("stream task failed: {e}")),
    }
}

/// Stores an update once (its key); the inbox trigger enqueues its job.
async fn store(
    pool: &PgPool,
    tenant: Uuid,
    account: Uuid,
    update: &TradeUpdate,
) -> sqlx::Result<()> {
    let body = serde_json::to_value(update).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let mut tx = tenancy::begin(pool, tenant).await?;
    sqlx::query!(
        "INSERT INTO venue_events (tenant_id, account_id, event_key, body) VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, account_id, event_key) DO NOTHING",
        tenant,
        account,
        update.key(),
        body,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Records whether the account's stream is connected; each connection is counted,
/// and the trigger on the count enqueues a sync for it.
async fn mark(pool: &PgPool, tenant: Uuid, account: Uuid, connected: bool) -> sqlx::Result<()> {
    let mut tx = tenancy::begin(pool, tenant).await?;
    sqlx::query!(
        "INSERT INTO venue_sync_state (tenant_id, account_id, stream_connected, stream_connects)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, account_id) DO UPDATE
             SET stream_connected = $3, stream_connects = venue_sync_state.stream_connects + $4",
        tenant,
        account,
        connected,
        i64::from(connected),
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// A wait of 75 to 125 % of `d`, so that listeners dropped together do not reconnect
/// together.
fn jitter(d: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    d.mul_f64(0.75 + f64::from(byte[0]) / 510.0)
}
