//! Benchmarks that print numbers (`pulse-fleet bench ...`).

pub mod console;
pub mod intents;
pub mod lifecycle;
pub mod peer;
pub mod queue;
pub mod reconcile;
pub mod soak;

/// The paper venue served in this process (on a free port), and the clients jobs get
/// to reach it: credentials sealed under `key`, no request budget of the fleet's own
/// (benchmarks measure what the code asks for).
pub(crate) async fn local_venue(
    options: pulse_sims::paper::PaperOptions,
    key: [u8; 32],
) -> anyhow::Result<(pulse_sims::paper::PaperVenue, pulse_domain::Services)> {
    let venue = pulse_sims::paper::PaperVenue::new(options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(venue.clone().serve(listener));
    let mut services = pulse_domain::Services::new(std::time::Duration::from_secs(10), None);
    services.venue_urls = std::collections::HashMap::from([("paper".to_string(), base)]);
    services.venue_requests_per_minute = i32::MAX;
    services.venue_budgets.insert("binance".into(), i32::MAX);
    services.secrets_key = Some(key);
    Ok((venue, services))
}

/// Inserts `n` one-leg intents on `account` in one statement: intent `i` a GTC limit
/// buy of `qty` at `limit` of its own symbol `{symbol}{i}`, keyed `{key}{ordinal}`.
/// Once the OMS has placed them, they are `n` working orders.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn insert_working_intents(
    pool: &sqlx::PgPool,
    tenant: uuid::Uuid,
    account: uuid::Uuid,
    n: usize,
    symbol: &str,
    key: &str,
    qty: i64,
    limit: &str,
) -> anyhow::Result<()> {
    let legs: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!([{"account_id": account, "symbol": format!("{symbol}{i}"), "side": "buy",
                                "quantity": qty, "type": "limit", "limit_price": limit,
                                "time_in_force": "gtc"}])
        })
        .collect();
    sqlx::query!(
        "INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json)
         SELECT $1, $3 || ord, l FROM unnest($2::jsonb[]) WITH ORDINALITY AS u(l, ord)",
        tenant,
        &legs,
        key,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Waits until `count` (a `SELECT count(*) ...`) reaches `n`, or fails saying `what`.
pub(crate) async fn wait_for(
    pool: &sqlx::PgPool,
    what: &str,
    within: std::time::Duration,
    n: i64,
    count: &'static str,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let have: i64 = sqlx::query_scalar(count).fetch_one(pool).await?;
        if have >= n {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{what}: {have} of {n} after {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
