//! The per-account venue request budget (Alpaca: 200 requests a minute per account;
//! Binance.US: 1,200 of request weight), shared by every process and every job that
//! speaks to a venue (the OMS, the order sync, reconciliation): `take_venue_budget`
//! counts in the database, and refuses every request of an account the venue has
//! banned until the ban ends. And what a failed request means for the job that made it.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{JobContext, JobError};
use pulse_domain::{
    lifecycle, tenancy,
    venue::{
        Call, Fill, OrderRequest, Page, Position, Quote, UpdateSink, Venue, VenueError,
        VenueFuture, VenueOrder,
    },
};

/// The client of one account at its venue, from the account's row: no `api_key`
/// credential, or a venue no client speaks, fails the job for good.
pub(crate) fn account_venue(
    ctx: &JobContext,
    (tenant, account): (Uuid, Uuid),
    venue_id: &str,
    key_id: Option<&str>,
    secret_ref: Option<&str>,
) -> Result<Arc<dyn Venue>, JobError> {
    let secret_ref = secret_ref.ok_or_else(|| {
        JobError::permanent(format!("account {account} has no api_key credential"))
    })?;
    let client = ctx
        .services
        .venue_client(account, venue_id, key_id, secret_ref)
        .map_err(JobError::permanent)?;
    Ok(BanWatch::wrap(client, ctx.pool.clone(), tenant, account))
}

/// A venue request that failed, as the job's outcome: the venue's rate limit (or ban,
/// recorded by [`BanWatch`]) snoozes until it ends; anything else is retried, `doing`
/// saying what failed.
pub(crate) fn venue_failure(doing: impl std::fmt::Display, e: VenueError) -> JobError {
    match e.wait() {
        Some(wait) => JobError::Snooze(wait),
        None => JobError::retryable(format!("{doing}: {e}")),
    }
}

/// Takes `n` requests from the account's per-minute budget, or says how long to wait.
pub(crate) async fn take_budget(
    ctx: &JobContext,
    tenant: Uuid,
    account: Uuid,
    n: i32,
) -> Result<Option<Duration>, JobError> {
    take_budgets(ctx, tenant, &[(account, n)]).await
}

/// What `call` costs the account's budget at `venue` (a request at Alpaca, its weight
/// at Binance), taken before the call is made and counted in `requests`; or the job
/// snoozes until the next window (or the end of a ban).
pub(crate) async fn spend(
    ctx: &JobContext,
    (tenant, account): (Uuid, Uuid),
    venue: &dyn Venue,
    call: Call,
    requests: &mut i32,
) -> Result<(), JobError> {
    if let Some(wait) = take_budgets(ctx, tenant, &[(account, venue.cost(call))]).await? {
        return Err(JobError::Snooze(wait));
    }
    *requests += 1;
    Ok(())
}

/// An account's use of its budget after a take: this minute's use, how long its
/// requests are still banned (0: not banned), and its venue (whose limit applies).
#[derive(Debug, Clone)]
pub(crate) struct Taken {
    pub used: i32,
    pub banned_ms: i64,
    pub venue_id: String,
}

/// How long to wait: until a ban ends, or for the next window when an account has
/// spent its venue's budget.
pub(crate) fn over_budget(services: &pulse_domain::Services, taken: &[Taken]) -> Option<Duration> {
    if let Some(ban) = taken.iter().map(|t| t.banned_ms).max().filter(|ms| *ms > 0) {
        return Some(Duration::from_millis(ban as u64));
    }
    let spent = |t: &Taken| t.used > services.venue_budget(&t.venue_id);
    if taken.iter().any(spent) {
        let secs_left = 60 - (chrono::Utc::now().timestamp() % 60);
        return Some(Duration::from_secs(secs_left as u64));
    }
    None
}

pub(crate) async fn take_budgets(
    ctx: &JobContext,
    tenant: Uuid,
    wants: &[(Uuid, i32)],
) -> Result<Option<Duration>, JobError> {
    let (accounts, counts): (Vec<Uuid>, Vec<i32>) = wants.iter().copied().unzip();
    let mut tx = tenancy::begin(&ctx.pool, tenant).await?;
    let taken = sqlx::query_as!(
        Taken,
        r#"SELECT used AS "used!", banned_ms AS "banned_ms!", venue_id AS "venue_id!"
           FROM take_venue_budget($1, $2, $3)"#,
        tenant,
        &accounts,
        &counts,
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(over_budget(&ctx.services, &taken))
}

/// Records that the venue banned the account's requests for `wait`: every process's
/// budget refuses them until then, and the account's owner is alerted once per ban.
pub(crate) async fn record_ban(
    pool: &sqlx::PgPool,
    tenant: Uuid,
    account: Uuid,
    wait: Duration,
) -> Result<(), sqlx::Error> {
    let mut tx = tenancy::begin(pool, tenant).await?;
    let until = chrono::Utc::now() + chrono::TimeDelta::from_std(wait).unwrap_or_default();
    let newly = sqlx::query_scalar!(
        r#"INSERT INTO venue_request_budgets AS b (tenant_id, account_id, window_start, used, banned_until)
           VALUES ($1, $2, date_trunc('minute', now()), 0, $3)
           ON CONFLICT (tenant_id, account_id) DO UPDATE
               SET banned_until = greatest(b.banned_until, excluded.banned_until)
           RETURNING (SELECT o.banned_until IS NULL OR o.banned_until <= now()
                      FROM venue_request_budgets o WHERE o.account_id = $2 AND o.tenant_id = $1) AS "newly""#,
        tenant,
        account,
        until,
    )
    .fetch_one(&mut *tx)
    .await?;
    if newly.unwrap_or(true) {
        lifecycle::account_alert(
            &mut tx,
            tenant,
            account,
            "system",
            serde_json::json!({
                "title": "The venue banned this account's requests",
                "message": format!(
                    "The venue refuses our requests until {} (HTTP 418, sent on through its rate limit). No request of this account goes until then; orders and syncs wait.",
                    until.format("%Y-%m-%d %H:%M:%S UTC")
                ),
            }),
        )
        .await?;
        tenancy::audit(
            &mut tx,
            "venue_ban",
            "trading_account",
            &account.to_string(),
            &serde_json::json!({"until": until}),
        )
        .await?;
    }
    tx.commit().await
}

/// A client of one account that records a ban the moment the venue says it
/// ([`record_ban`]), whichever job's request heard it.
pub(crate) struct BanWatch {
    inner: Arc<dyn Venue>,
    pool: sqlx::PgPool,
    tenant: Uuid,
    account: Uuid,
}

impl BanWatch {
    pub(crate) fn wrap(
        inner: Arc<dyn Venue>,
        pool: sqlx::PgPool,
        tenant: Uuid,
        account: Uuid,
    ) -> Arc<dyn Venue> {
        Arc::new(Self {
            inner,
            pool,
            tenant,
            account,
        })
    }

    fn watch<'a, T: Send + 'a>(&'a self, call: VenueFuture<'a, T>) -> VenueFuture<'a, T> {
        Box::pin(async move {
            let result = call.await;
            if let Err(VenueError::Banned { retry_after }) = &result
                && let Err(e) =
                    record_ban(&self.pool, self.tenant, self.account, *retry_after).await
            {
                tracing::error!(account.id = %self.account, error = %e, "cannot record a venue ban");
            }
            result
        })
    }
}

impl Venue for BanWatch {
    fn quote_source(&self) -> &str {
        self.inner.quote_source()
    }
    fn cost(&self, call: Call) -> i32 {
        self.inner.cost(call)
    }
    fn pages_in_time_order(&self) -> bool {
        self.inner.pages_in_time_order()
    }
    fn create_order<'a>(&'a self, order: &'a OrderRequest) -> VenueFuture<'a, VenueOrder> {
        self.watch(self.inner.create_order(order))
    }
    fn get_order_by_client_id<'a>(
        &'a self,
        symbol: &'a str,
        coid: &'a str,
    ) -> VenueFuture<'a, VenueOrder> {
        self.watch(self.inner.get_order_by_client_id(symbol, coid))
    }
    fn get_order<'a>(&'a self, symbol: &'a str, id: &'a str) -> VenueFuture<'a, VenueOrder> {
        self.watch(self.inner.get_order(symbol, id))
    }
    fn cancel_order<'a>(&'a self, symbol: &'a str, id: &'a str) -> VenueFuture<'a, ()> {
        self.watch(self.inner.cancel_order(symbol, id))
    }
    fn list_open_orders(&self) -> VenueFuture<'_, Vec<VenueOrder>> {
        self.watch(self.inner.list_open_orders())
    }
    fn latest_quote<'a>(&'a self, symbol: &'a str) -> VenueFuture<'a, Quote> {
        self.watch(self.inner.latest_quote(symbol))
    }
    fn fills<'a>(
        &'a self,
        symbols: &'a [String],
        since: Option<DateTime<Utc>>,
        page: Option<&'a str>,
    ) -> VenueFuture<'a, Page<Fill>> {
        self.watch(self.inner.fills(symbols, since, page))
    }
    fn orders_after<'a>(
        &'a self,
        symbols: &'a [String],
        after: DateTime<Utc>,
        page: Option<&'a str>,
    ) -> VenueFuture<'a, Page<VenueOrder>> {
        self.watch(self.inner.orders_after(symbols, after, page))
    }
    fn stream_updates(&self, updates: UpdateSink) -> VenueFuture<'_, ()> {
        self.inner.stream_updates(updates)
    }
    fn positions(&self) -> VenueFuture<'_, Vec<Position>> {
        self.watch(self.inner.positions())
    }
}
