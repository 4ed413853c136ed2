//! What jobs use besides the database: external clients and vendor settings, built
//! once per process from configuration and shared by every attempt.

use std::{sync::Arc, time::Duration};

#[derive(Clone)]
pub struct Services {
    /// One HTTP client (connection pools, TLS) for every vendor call.
    pub http: reqwest::Client,
    /// Where alerts go when their user has no Discord webhook (local runs: the
    /// Discord-dialect sink). A secret like every webhook URL: never logged.
    pub discord_fallback_url: Option<String>,
    /// Base URL per venue id (`alpaca` -> Alpaca's paper or live endpoint, `paper` ->
    /// the local paper venue).
    pub venue_urls: std::collections::HashMap<String, String>,
    /// Market data base URL per venue id, where it is not the trading URL (Alpaca:
    /// `https://data.alpaca.markets`).
    pub venue_data_urls: std::collections::HashMap<String, String>,
    /// Requests per minute per trading account (Alpaca: 200).
    pub venue_requests_per_minute: i32,
    /// Per-venue budgets in the venue's own unit, over the built-in ones
    /// (`venue::budget_per_minute`: Binance's 1,200 of weight): benchmarks lift them.
    pub venue_budgets: std::collections::HashMap<String, i32>,
    /// Risk checks and reservations price a leg at the venue's quote raised by this
    /// share (0.05: 5 % above the higher side), never lower.
    pub price_collar: rust_decimal::Decimal,
    /// Latest quotes, shared by the attempts of this process.
    pub quotes: Arc<crate::venue::QuoteCache>,
    /// The key of `enc:v1:` secret references (PULSE_SECRETS_KEY), if set.
    pub secrets_key: Option<[u8; 32]>,
    /// The longest wait an answer from outside may impose (`retry_after`, resets).
    pub max_external_wait: Duration,
    /// Where tenants' alert webhooks may point (Discord, plus configured origins).
    pub discord_webhooks: crate::bounds::WebhookPolicy,
    /// OAuth clients of the brokers users connect (`[brokers.<name>]`), by broker.
    pub brokers: std::collections::HashMap<String, crate::brokers::BrokerOAuth>,
    /// Access tokens expiring within this are refreshed (`[brokers] refresh_margin_secs`).
    pub broker_refresh_margin: Duration,
    /// The process's metrics (venue requests, fills, reconciliation, ...), flushed by
    /// the queue runtime with its own.
    pub metrics: pulse_contract::metrics::Recorder,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("venue_urls", &self.venue_urls)
            .finish_non_exhaustive()
    }
}

impl Services {
    /// Where a venue's market data is: its own host if configured, else the trading
    /// URL. Clients and the quote cache both ask here, so they agree on the host.
    pub fn market_data_url(&self, venue: &str) -> Option<&str> {
        self.venue_data_urls
            .get(venue)
            .or_else(|| self.venue_urls.get(venue))
            .map(String::as_str)
    }

    /// The client of one account at its venue, from its credential (`key_id` and the
    /// reference to its secret), or why there is none.
    pub fn venue_client(
        &self,
        account: uuid::Uuid,
        venue_id: &str,
        key_id: Option<&str>,
        secret_ref: &str,
    ) -> Result<std::sync::Arc<dyn crate::venue::Venue>, String> {
        let base = self
            .venue_urls
            .get(venue_id)
            .ok_or_else(|| format!("no URL configured for venue {venue_id}"))?;
        let key = self.secrets_key;
        let secret = crate::secrets::resolve_with(
            secret_ref,
            |n| std::env::var(n).ok(),
            || key.ok_or(crate::secrets::SecretError::NoKey),
        )
        .map_err(|e| format!("credential of account {account}: {e}"))?;
        crate::venue::connect(
            venue_id,
            crate::venue::Connection {
                http: self.http.clone(),
                base_url: base,
                data_url: self.market_data_url(venue_id).unwrap_or(base),
                key_id: key_id.unwrap_or_default(),
                secret,
                metrics: self.metrics.clone(),
                quotes: self.quotes.clone(),
            },
        )
    }

    /// The per-minute budget of an account at `venue_id`, in its client's unit.
    pub fn venue_budget(&self, venue_id: &str) -> i32 {
        self.venue_budgets
            .get(venue_id)
            .copied()
            .or_else(|| crate::venue::budget_per_minute(venue_id))
            .unwrap_or(self.venue_requests_per_minute)
    }

    pub fn new(request_timeout: Duration, discord_fallback_url: Option<String>) -> Self {
        // No redirects: a vendor never needs one, and a tenant's URL could redirect
        // the request anywhere.
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("pulse-fleet")
            .build()
            .expect("HTTP client with default TLS");
        Self {
            http,
            discord_fallback_url,
            venue_urls: Default::default(),
            venue_data_urls: Default::default(),
            venue_requests_per_minute: 200,
            venue_budgets: Default::default(),
            price_collar: rust_decimal::Decimal::new(5, 2),
            quotes: Default::default(),
            secrets_key: crate::secrets::key_from_env().ok(),
            max_external_wait: crate::bounds::DEFAULT_MAX_EXTERNAL_WAIT,
            discord_webhooks: Default::default(),
            brokers: Default::default(),
            broker_refresh_margin: Duration::from_secs(300),
            metrics: Default::default(),
        }
    }
}

impl Default for Services {
    fn default() -> Self {
        Self::new(Duration::from_secs(10), None)
    }
}
