//! `/metrics`, Prometheus text format, encoded by prometheus-client from a
//! [`Snapshot`] the read model takes: `fleet.stats` (after folding pending deltas), the
//! queues' head-of-line lag and the live worker count. Fleet-wide: every worker process reports through the
//! database, so one scrape of the web process sees them all.

use std::collections::BTreeMap;

use super::{
    AppState,
    read_model::{self, AccountHealth},
};
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
    /// Active trading accounts: reconciliation, mismatches, drift, streams.
    pub accounts: Vec<AccountHealth>,
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
        self.encode_histogram_by(encoder, name, help, metric, Some("job"))
    }

    /// A histogram whose samples' first label is `label` (None: a single series).
    fn encode_histogram_by(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        metric: &str,
        label: Option<&str>,
    ) -> Result<(), std::fmt::Error> {
        // No family without a sample (some parsers cannot tell an empty family from
        // the next one's descriptors): a labelled one waits for its first sample, an
        // unlabelled one starts at zero.
        let mut series = self.jobs_with(metric);
        if series.is_empty() {
            if label.is_some() {
                return Ok(());
            }
            series.push("");
        }
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for job in series {
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
            let labels: Vec<(&str, &str)> = label.map(|l| (l, job)).into_iter().collect();
            family
                .encode_family(&labels)?
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
        self.encode_counter(
            &mut encoder,
            "fleet_job_attempts",
            "Settled attempts by outcome: completed, retried, snoozed, dead, handed_back, refused",
            "attempts",
            &["job", "outcome"],
        )?;
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
            self.encode_counter(&mut encoder, name, help, metric, &["job"])?;
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
        self.encode_trading(&mut encoder)
    }
}

/// A metric of every active account: name, help, type and how to read it.
type PerAccount = (
    &'static str,
    &'static str,
    MetricType,
    fn(&AccountHealth) -> f64,
);

impl Snapshot {
    /// A counter family from the stats, its samples labelled by `labels` (the
    /// stats' first and, when named, second label).
    fn encode_counter(
        &self,
        encoder: &mut DescriptorEncoder,
        name: &str,
        help: &str,
        metric: &str,
        labels: &[&str],
    ) -> Result<(), std::fmt::Error> {
        let mut samples: Vec<(&str, &str, f64)> = self.of(metric).collect();
        if samples.is_empty() {
            // As for histograms: no empty family; an unlabelled counter starts at zero.
            if !labels.is_empty() {
                return Ok(());
            }
            samples.push(("", "", 0.0));
        }
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (first, second, v) in samples {
            let values = [first, second];
            let set: Vec<(&str, &str)> = labels.iter().copied().zip(values).collect();
            family
                .encode_family(&set)?
                .encode_counter::<NoLabelSet, _, f64>(&(v as u64), None)?;
        }
        Ok(())
    }

    /// The trading side (issue 11): venues, locks, fills, reconciliation, capital,
    /// streams, alerts. Counters come from every process's stats; gauges from the
    /// accounts' current state.
    fn encode_trading(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, metric, labels) in [
            (
                "pulse_venue_requests",
                "Venue API requests by venue and endpoint",
                "venue_requests",
                &["venue", "endpoint"][..],
            ),
            (
                "pulse_venue_errors",
                "Venue requests that failed (unreachable, 5xx, unreadable, credentials refused)",
                "venue_errors",
                &["venue", "endpoint"][..],
            ),
            (
                "pulse_venue_rate_limited",
                "Venue requests answered 429",
                "venue_rate_limited",
                &["venue", "endpoint"][..],
            ),
            (
                "pulse_entry_lock_contention",
                "Intents that found an entry lock taken and waited",
                "entry_lock_contention",
                &[][..],
            ),
            (
                "pulse_entry_lock_ttl_expiries",
                "Entry locks taken over after their holder let them expire",
                "entry_lock_ttl_expiries",
                &[][..],
            ),
            (
                "pulse_fills_recorded",
                "Fills recorded, by the path that brought them (stream, sync, reconcile)",
                "fills_recorded",
                &["source"][..],
            ),
            (
                "pulse_reconciliation_runs",
                "Reconciliation runs by outcome",
                "reconciliation_runs",
                &["outcome"][..],
            ),
            (
                "pulse_reconciliation_mismatches_found",
                "Mismatches found by reconciliation, by kind",
                "reconciliation_mismatches_found",
                &["kind"][..],
            ),
            (
                "pulse_capital_invariant_violations",
                "Capital invariant violations caught: a fill that cost more than its account had, ledger drift",
                "capital_invariant_violations",
                &["cause"][..],
            ),
            (
                "pulse_alerts",
                "Alert deliveries by outcome (sent, failed, skipped, attempt_failed)",
                "alerts",
                &["outcome"][..],
            ),
        ] {
            self.encode_counter(encoder, name, help, metric, labels)?;
        }
        self.encode_histogram_by(
            encoder,
            "pulse_entry_lock_wait_seconds",
            "How long an intent waited for its entry locks",
            "entry_lock_wait_seconds",
            None,
        )?;
        self.encode_histogram_by(
            encoder,
            "pulse_fill_to_database_seconds",
            "From the venue's fill to its row in the database, by path",
            "fill_to_database_seconds",
            Some("source"),
        )?;
        self.encode_histogram_by(
            encoder,
            "pulse_reconciliation_duration_seconds",
            "Duration of one account's reconciliation",
            "reconciliation_duration_seconds",
            None,
        )?;

        // Current mismatches by kind: back to zero when fixed.
        let mut open = encoder.encode_descriptor(
            "pulse_reconciliation_mismatches",
            "Mismatches open now, by kind",
            None,
            MetricType::Gauge,
        )?;
        for kind in pulse_jobs::reconcile_account::MismatchKind::ALL {
            let n: i64 = self
                .accounts
                .iter()
                .filter_map(|a| a.mismatches.get(kind.as_str()))
                .sum();
            open.encode_family(&[("kind", kind.as_str())])?
                .encode_gauge(&n)?;
        }
        let per_account: [PerAccount; 6] = [
            (
                "pulse_capital_ledger_drift",
                "The ledger's drift from its journal, by account (0: none)",
                MetricType::Gauge,
                |a| a.ledger_drift,
            ),
            (
                "pulse_trading_paused",
                "1 when the account's (or its tenant's) kill switch is engaged",
                MetricType::Gauge,
                |a| f64::from(u8::from(a.trading_paused)),
            ),
            (
                "pulse_reconciliation_age_seconds",
                "Since the account's last successful reconciliation (or its creation)",
                MetricType::Gauge,
                |a| a.unreconciled_seconds,
            ),
            (
                "pulse_stream_connected",
                "1 when the account's order-update stream is connected",
                MetricType::Gauge,
                |a| f64::from(u8::from(a.stream_connected)),
            ),
            (
                "pulse_stream_connects",
                "Connections of the account's order-update stream (reconnects and first)",
                MetricType::Counter,
                |a| a.stream_connects as f64,
            ),
            (
                "pulse_venue_reachable",
                "1 when the last reconciliation reached the venue or the stream is connected",
                MetricType::Gauge,
                |a| f64::from(u8::from(a.venue_reachable.unwrap_or(false))),
            ),
        ];
        for (name, help, kind, value) in per_account {
            if self.accounts.is_empty() {
                break;
            }
            let mut family = encoder.encode_descriptor(name, help, None, kind)?;
            for a in &self.accounts {
                let id = a.account_id.to_string();
                let labels = [
                    ("tenant", a.tenant.as_str()),
                    ("account", id.as_str()),
                    ("venue", a.venue.as_str()),
                ];
                let mut sample = family.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => {
                        sample.encode_counter::<NoLabelSet, _, f64>(&(value(a) as u64), None)?
                    }
                    _ => sample.encode_gauge(&value(a))?,
                }
            }
        }
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
