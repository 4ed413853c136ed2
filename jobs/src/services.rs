//! What jobs use besides the database: external clients, built once per process by
//! the runtime from configuration and shared by every attempt.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Services {
    /// One HTTP client (connection pools, TLS) for every vendor call.
    pub http: reqwest::Client,
    /// Where alerts go when their user has no Discord webhook (local runs: the
    /// Discord-dialect sink). A secret like every webhook URL: never logged.
    pub discord_fallback_url: Option<String>,
}

impl Services {
    pub fn new(request_timeout: Duration, discord_fallback_url: Option<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(request_timeout)
            .user_agent("pulse-fleet")
            .build()
            .expect("HTTP client with default TLS");
        Self {
            http,
            discord_fallback_url,
        }
    }
}

impl Default for Services {
    fn default() -> Self {
        Self::new(Duration::from_secs(10), None)
    }
}
