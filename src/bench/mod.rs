//! Benchmarks that print numbers (`pulse-fleet bench ...`).

pub mod console;
pub mod intents;
pub mod lifecycle;
pub mod peer;
pub mod queue;
pub mod reconcile;

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
    services.secrets_key = Some(key);
    Ok((venue, services))
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
