//! Settings: `config/default.toml`, then `config/<APP_ENV>.toml`, then environment.
//!
//! Environment variables read here:
//! - `APP_ENV`: which file in `config/` layers on the defaults (default `local`).
//! - `PULSE_CONFIG_DIR`: where `config/` is (default `./config`).
//! - `PULSE__<SECTION>__<KEY>`: any setting, e.g. `PULSE__WORKER__CONCURRENCY=32`.
//! - `DATABASE_URL`: shortcut for `database.url`.
//! - `PORT`: the web port (Procfile platforms set it); with it, the web process binds
//!   every interface unless `web.host` names one.
//! - `PULSE__WEB__OPERATOR_TOKEN`: the operator credential of the console,
//!   `/metrics` and health's details.
//! - `PULSE__STRIPE__WEBHOOK_SECRETS`, `PULSE__WATCHERS__WEBHOOK_SECRET`,
//!   `PULSE__DISCORD__FALLBACK_WEBHOOK_URL`: secrets, from the environment only.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::Context;
use serde::Deserialize;

pub use pulse_queue::settings::{RetentionSettings, ScheduleSettings, WorkerSettings};

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub worker: WorkerSettings,
    pub retention: RetentionSettings,
    pub web: WebSettings,
    #[serde(default)]
    pub jobs: BTreeMap<String, JobSettings>,
    #[serde(default)]
    pub schedules: BTreeMap<String, ScheduleSettings>,
    #[serde(default)]
    pub stripe: StripeSettings,
    #[serde(default)]
    pub watchers: WatcherSettings,
    #[serde(default)]
    pub discord: DiscordSettings,
    /// Base URL per venue id: `alpaca = "https://paper-api.alpaca.markets"`, `paper = ...`.
    #[serde(default)]
    pub venues: BTreeMap<String, String>,
    /// Market data base URL per venue id where it is another host than trading
    /// (`alpaca = "https://data.alpaca.markets"`); others use their trading URL.
    #[serde(default)]
    pub market_data: BTreeMap<String, String>,
    #[serde(default)]
    pub paper: PaperSettings,
    #[serde(default)]
    pub oms: OmsSettings,
    #[serde(default)]
    pub reconcile: ReconcileSettings,
    #[serde(default)]
    pub brokers: BrokerSettings,
    #[serde(default)]
    pub log: crate::telemetry::LogSettings,
}

/// Broker connections authorised with OAuth (`refresh_broker_tokens`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BrokerSettings {
    /// Access tokens expiring within this are refreshed (Schwab's last 30 minutes).
    pub refresh_margin_secs: u64,
    /// Our OAuth client per broker: `[brokers.clients.schwab] token_url, client_id,
    /// client_secret_ref` (`env:NAME` or `enc:v1:...`).
    pub clients: BTreeMap<String, BrokerClientSettings>,
    /// Local runs: where the token endpoint in Schwab's dialect listens (the demo's
    /// broker connection refreshes against it).
    pub local_bind: String,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            refresh_margin_secs: 300,
            clients: BTreeMap::new(),
            local_bind: "127.0.0.1:8071".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct BrokerClientSettings {
    pub token_url: String,
    pub client_id: String,
    pub client_secret_ref: String,
}

/// Reconciliation (`reconcile_account`): its thresholds, and health's bound on its age.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ReconcileSettings {
    /// An order sent and unanswered this long is looked up by client order id.
    pub in_flight_after_secs: u64,
    /// An order the venue does not find in this many look-ups, sent at least this
    /// long ago, and whose intent the OMS is done with, was never received.
    pub never_received_lookups: i32,
    pub never_received_after_secs: u64,
    /// Single-order look-ups per run at most.
    pub max_lookups: usize,
    /// How far back an account's first run reads orders and fills.
    pub lookback_hours: u64,
    /// `/internal/health` answers 503 when an active account's last successful
    /// reconciliation is older than this.
    pub max_age_secs: u64,
    /// Worker processes ask for a reconciliation of every active account when they
    /// start, and its new intents wait for it.
    pub at_startup: bool,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        let d = pulse_jobs::reconcile_account::Settings::default();
        Self {
            in_flight_after_secs: d.in_flight_after.as_secs(),
            never_received_lookups: d.never_received_lookups,
            never_received_after_secs: d.never_received_after.as_secs(),
            max_lookups: d.max_lookups,
            lookback_hours: d.lookback.as_secs() / 3600,
            max_age_secs: 300,
            at_startup: true,
        }
    }
}

impl ReconcileSettings {
    /// What the job reads.
    pub fn job(&self) -> pulse_jobs::reconcile_account::Settings {
        use std::time::Duration;
        pulse_jobs::reconcile_account::Settings {
            in_flight_after: Duration::from_secs(self.in_flight_after_secs),
            never_received_lookups: self.never_received_lookups.max(1),
            never_received_after: Duration::from_secs(self.never_received_after_secs),
            max_lookups: self.max_lookups,
            lookback: Duration::from_secs(self.lookback_hours * 3600),
        }
    }
}

/// The OMS (`execute_intent`).
#[derive(Debug, Clone, Deserialize)]
pub struct OmsSettings {
    /// Venue requests per minute per trading account, a budget shared by every worker
    /// process (Alpaca allows 200).
    #[serde(default = "default_venue_rpm")]
    pub requests_per_minute_per_account: i32,
    /// Risk checks and reservations price a leg at the venue's latest quote (the
    /// higher side) raised by this share, never lower (nor lower than the client's
    /// limit or reference price). No quote, no market order.
    #[serde(default = "default_price_collar")]
    pub price_collar: rust_decimal::Decimal,
    /// Worker processes follow the venues' order-update streams (one process at a
    /// time leads). Off, orders are followed by the sync alone.
    #[serde(default = "default_true")]
    pub trade_streams: bool,
    /// How often the stream leader looks for new accounts (and a follower for the lead).
    #[serde(default = "default_stream_rescan_secs")]
    pub stream_rescan_secs: u64,
}

fn default_true() -> bool {
    true
}

fn default_stream_rescan_secs() -> u64 {
    10
}

fn default_price_collar() -> rust_decimal::Decimal {
    rust_decimal::Decimal::new(5, 2)
}

impl Default for OmsSettings {
    fn default() -> Self {
        Self {
            requests_per_minute_per_account: default_venue_rpm(),
            price_collar: default_price_collar(),
            trade_streams: true,
            stream_rescan_secs: default_stream_rescan_secs(),
        }
    }
}

/// The local paper venue that `all` starts (when `venues.paper` points at it).
#[derive(Debug, Clone, Deserialize)]
pub struct PaperSettings {
    #[serde(default = "default_paper_bind")]
    pub bind: String,
    /// Requests per minute per API key that the paper venue answers before its 429s.
    #[serde(default = "default_venue_rpm")]
    pub requests_per_minute: i32,
    /// How long after acceptance a market order starts filling.
    #[serde(default = "default_fill_delay_ms")]
    pub fill_delay_ms: u64,
    /// Orders larger than this fill in parts (0: at once).
    #[serde(default)]
    pub partial_fill_qty: u64,
    /// Day orders still open expire at the end of each session of this length (0: never).
    #[serde(default)]
    pub session_secs: u64,
}

fn default_fill_delay_ms() -> u64 {
    500
}

fn default_paper_bind() -> String {
    "127.0.0.1:8070".into()
}

fn default_venue_rpm() -> i32 {
    200
}

impl Default for PaperSettings {
    fn default() -> Self {
        Self {
            bind: default_paper_bind(),
            requests_per_minute: default_venue_rpm(),
            fill_delay_ms: default_fill_delay_ms(),
            partial_fill_qty: 0,
            session_secs: 0,
        }
    }
}

/// Secrets come from the environment only (never from files in the repository):
/// `PULSE__STRIPE__WEBHOOK_SECRETS=whsec_new,whsec_old` (several during a rotation).
#[derive(Clone, Deserialize)]
pub struct StripeSettings {
    #[serde(default)]
    pub webhook_secrets: String,
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: i64,
}

fn default_tolerance() -> i64 {
    300
}

impl Default for StripeSettings {
    fn default() -> Self {
        Self {
            webhook_secrets: String::new(),
            tolerance_secs: default_tolerance(),
        }
    }
}

impl StripeSettings {
    pub fn secrets(&self) -> Vec<&str> {
        self.webhook_secrets
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }
}

impl std::fmt::Debug for StripeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeSettings")
            .field(
                "webhook_secrets",
                &format!("[{} redacted]", self.secrets().len()),
            )
            .field("tolerance_secs", &self.tolerance_secs)
            .finish()
    }
}

/// `PULSE__WATCHERS__WEBHOOK_SECRET`: the shared secret of `x-hmac-sha256`.
#[derive(Clone, Default, Deserialize)]
pub struct WatcherSettings {
    #[serde(default)]
    pub webhook_secret: String,
}

impl WatcherSettings {
    pub fn secret(&self) -> Option<String> {
        Some(self.webhook_secret.trim().to_owned()).filter(|s| !s.is_empty())
    }
}

impl std::fmt::Debug for WatcherSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatcherSettings { webhook_secret: [redacted] }")
    }
}

#[derive(Clone, Deserialize)]
pub struct DiscordSettings {
    /// Where alerts of users without a webhook go (`PULSE__DISCORD__FALLBACK_WEBHOOK_URL`).
    /// Empty: `all` starts the local Discord-dialect sink and uses it.
    #[serde(default)]
    pub fallback_webhook_url: String,
    #[serde(default = "default_sink_bind")]
    pub sink_bind: String,
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Origins besides Discord's that tenants' alert webhooks may point at, e.g.
    /// `["http://127.0.0.1:8090"]` for the local sink (an entry without a port allows
    /// every port of its host). Empty in production: only Discord's webhook URLs.
    #[serde(default)]
    pub allowed_webhook_origins: Vec<String>,
}

fn default_sink_bind() -> String {
    "127.0.0.1:8090".into()
}

fn default_request_timeout() -> u64 {
    10_000
}

impl Default for DiscordSettings {
    fn default() -> Self {
        Self {
            fallback_webhook_url: String::new(),
            sink_bind: default_sink_bind(),
            request_timeout_ms: default_request_timeout(),
            allowed_webhook_origins: vec![],
        }
    }
}

impl std::fmt::Debug for DiscordSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscordSettings")
            .field("fallback_webhook_url", &"[redacted]")
            .field("sink_bind", &self.sink_bind)
            .field("allowed_webhook_origins", &self.allowed_webhook_origins)
            .finish()
    }
}

impl DiscordSettings {
    pub fn fallback(&self) -> Option<String> {
        Some(self.fallback_webhook_url.trim().to_owned()).filter(|s| !s.is_empty())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
}

#[derive(Clone, Deserialize)]
pub struct WebSettings {
    pub bind: String,
    /// The interface to bind when `PORT` is set (Procfile platforms): all of them
    /// unless this names one.
    #[serde(default)]
    pub host: Option<String>,
    pub max_queue_lag_secs: u64,
    /// Larger webhook bodies are refused with 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// The operator credential (`PULSE__WEB__OPERATOR_TOKEN`, from the environment
    /// only): the console, `/metrics` and health's details need it. Comma-separated
    /// during a rotation (`new,old`): any of them is accepted.
    #[serde(default)]
    pub operator_token: String,
}

impl WebSettings {
    /// A Procfile platform's `PORT`: its router reaches the process from outside, so
    /// bind every interface on that port, unless `web.host` names one explicitly.
    pub fn apply_port(&mut self, port: Option<&str>) {
        if let Some(port) = port.map(str::trim).filter(|p| !p.is_empty()) {
            let host = self.host.as_deref().unwrap_or("0.0.0.0");
            self.bind = format!("{host}:{port}");
        }
    }

    /// The accepted operator tokens (none: the operator pages are closed).
    pub fn operator_tokens(&self) -> Vec<&str> {
        self.operator_token
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .collect()
    }
}

impl std::fmt::Debug for WebSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSettings")
            .field("bind", &self.bind)
            .field("host", &self.host)
            .field("max_queue_lag_secs", &self.max_queue_lag_secs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("operator_token", &"[redacted]")
            .finish()
    }
}

fn default_max_body() -> usize {
    256 * 1024
}

/// Per job type overrides of the code's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobSettings {
    pub concurrency: Option<usize>,
    pub max_attempts: Option<i32>,
    pub timeout_ms: Option<u64>,
    pub backoff_base_ms: Option<u64>,
    pub backoff_max_ms: Option<u64>,
    pub backoff_jitter: Option<f64>,
}

impl Settings {
    /// Reads `APP_ENV` and `PULSE_CONFIG_DIR`, then [`Settings::load_from`].
    pub fn load() -> anyhow::Result<Self> {
        let dir = std::env::var("PULSE_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("config"));
        let env = std::env::var("APP_ENV").unwrap_or_else(|_| "local".into());
        Self::load_from(&dir, &env)
    }

    /// `dir/default.toml`, then `dir/<env>.toml`, then the environment variables.
    pub fn load_from(dir: &Path, env: &str) -> anyhow::Result<Self> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from(dir.join("default.toml")).required(true))
            .add_source(config::File::from(dir.join(format!("{env}.toml"))).required(false))
            .add_source(
                config::Environment::with_prefix("PULSE")
                    .prefix_separator("__")
                    .separator("__"),
            );
        if let Ok(url) = std::env::var("DATABASE_URL") {
            builder = builder.set_override("database.url", url)?;
        }
        let mut settings: Settings = builder
            .build()
            .with_context(|| format!("Failed to read settings from {}", dir.display()))?
            .try_deserialize()
            .context("Failed to parse settings")?;
        settings
            .web
            .apply_port(std::env::var("PORT").ok().as_deref());
        Ok(settings)
    }

    pub fn job(&self, name: &str) -> JobSettings {
        self.jobs.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn web(bind: &str, host: Option<&str>) -> WebSettings {
        WebSettings {
            bind: bind.into(),
            host: host.map(Into::into),
            max_queue_lag_secs: 60,
            max_body_bytes: 1024,
            operator_token: String::new(),
        }
    }

    #[test]
    fn the_operator_token_never_shows_in_debug_output() {
        let mut s = web("127.0.0.1:8080", None);
        s.operator_token = "op-secret".into();
        assert!(!format!("{s:?}").contains("op-secret"));
    }
}
