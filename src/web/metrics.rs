//! `/metrics`, Prometheus text format, encoded by prometheus-client from a
//! [`Snapshot`] the read model takes: `fleet.stats` (after folding pending deltas), the
//! queues' head-of-line lag and the live worker count. Fleet-wide: every worker process reports through the
//! database, so one scrape of the web process sees them all.

use std::collections::BTreeMap;

use super::{AppState, read_model};
use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};
use pulse_queue::{JobState, stats::BUCKETS};

#[derive(Debug, Default)]
pub struct Snapshot {
    /// (metric, job, label) -> value
    pub stats: BTreeMap<(String, String, String), f64>,
    pub lags: Vec<(String, f64)>,
    pub live_workers: i64,
    /// Jobs by name and state, every state of every job type (zeros included).
    pub states: Vec<(String, JobState, i64)>,
}

impl Snapshot {
    fn of(&self, metric: &str) -> impl Iterator<Item = (&str, &str, f64)> {
        self.stats
            .iter()
            .filter(move |((m, _, _), _)| m == metric)
            .map(|((_, j, l), v)| (j.as_str(), l.as_str(), *v))
    }

    fn jobs_with(&self, metric: &str) -> Vec<&str> {
        let mut jobs: Vec<&str> = self.of(metric).map(|(j, _, _)| j).collect();
        jobs.dedup();
        jobs
    }

    fn encode_histogram(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        metric: &str,
    ) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for job in self.jobs_with(metric) {
            let mut buckets: Vec<(f64, u64)> = BUCKETS.iter().map(|b| (*b, 0)).collect();
            buckets.push((f64::MAX, 0));
            let mut sum = 0.0;
            for (j, label, v) in self.of(metric) {
                if j != job {
                    continue;
                }
                if label == "sum" {
                    sum = v;
                } else if label == "+Inf" {
                    buckets.last_mut().expect("inf bucket").1 += v as u64;
                } else if let Ok(le) = label.parse::<f64>()
                    && let Some(b) = buckets.iter_mut().find(|b| b.0 == le)
                {
                    b.1 += v as u64;
                }
            }
            let count = buckets.iter().map(|b| b.1).sum();
            family
                .encode_family(&[("job", job)])?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        Ok(())
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut jobs = encoder.encode_descriptor(
            "fleet_jobs",
            "Jobs by name and state (exact; kept by every writer of the job table)",
            None,
            MetricType::Gauge,
        )?;
        for (job, state, n) in &self.states {
            jobs.encode_family(&[("job", job.as_str()), ("state", state.as_str())])?
                .encode_gauge(n)?;
        }
        let mut lag = encoder.encode_descriptor(
            "fleet_oldest_available_job_age_seconds",
            "How long the job at the head of each queue has been due",
            None,
            MetricType::Gauge,
        )?;
        for (job, secs) in &self.lags {
            lag.encode_family(&[("job", job.as_str())])?
                .encode_gauge(secs)?;
        }
        let mut attempts = encoder.encode_descriptor(
            "fleet_job_attempts",
            "Settled attempts by outcome: completed, retried, snoozed, dead, handed_back, refused",
            None,
            MetricType::Counter,
        )?;
        for (job, outcome, v) in self.of("attempts") {
            attempts
                .encode_family(&[("job", job), ("outcome", outcome)])?
                .encode_counter::<NoLabelSet, _, f64>(&(v as u64), None)?;
        }
        for (name, help, metric) in [
            (
                "fleet_job_rescues",
                "Jobs re-queued after their worker stopped heartbeating",
                "rescued",
            ),
            (
                "fleet_dedupe_hits",
                "Enqueues that found an existing job with the same idempotency key",
                "dedupe_hits",
            ),
        ] {
            let mut counter = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (job, _, v) in self.of(metric) {
                counter
                    .encode_family(&[("job", job)])?
                    .encode_counter::<NoLabelSet, _, f64>(&(v as u64), None)?;
            }
        }
        self.encode_histogram(
            &mut encoder,
            "fleet_job_wait_seconds",
            "From due (run_at) to claimed",
            "wait_seconds",
        )?;
        self.encode_histogram(
            &mut encoder,
            "fleet_job_run_seconds",
            "Handler run time per attempt",
            "run_seconds",
        )?;
        encoder
            .encode_descriptor(
                "fleet_workers_live",
                "Worker processes with a fresh heartbeat",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&self.live_workers)?;
        Ok(())
    }
}

pub fn render(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let lease = state.settings.worker.lease_timeout().as_secs_f64();
    let snap = match read_model::metrics(&state.pool, &state.job_names, lease).await {
        Ok(s) => s,
        Err(error) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("database: {error}\n"),
            )
                .into_response();
        }
    };
    match render(snap) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
