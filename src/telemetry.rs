//! Logging. `RUST_LOG` filters (default `info`); logs go to stderr, as text or, with
//! `[log] format = "json"` (`PULSE__LOG__FORMAT=json`), one JSON object per line with
//! the fields of the spans it is in: every line of a job attempt carries `job.id`,
//! `job.name`, `job.attempt`, `tenant` (when its payload names one) and `worker`.

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogSettings {
    #[serde(default)]
    pub format: LogFormat,
}

pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
}
