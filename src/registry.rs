//! Every job type a worker can run: the business jobs of `pulse-jobs` plus the
//! runtime's own (`prune`), with the operator's overrides from `config/` applied.

use std::time::Duration;

use pulse_contract::{Backoff, JobSpec};
use pulse_jobs::Env;
use pulse_queue::worker::QueueSpec;

use crate::config::Settings;

/// All job types, alphabetised, with configuration applied; handlers bound to `env`.
pub fn all_specs(settings: &Settings, env: &Env) -> Vec<JobSpec> {
    let mut specs = pulse_jobs::registry(env);
    specs.push(pulse_queue::prune::spec(settings.retention.clone(), &specs));
    specs.sort_by_key(|s| s.name);
    specs
        .into_iter()
        .map(|s| effective_spec(s, settings))
        .collect()
}

/// The job types for what needs their names and policies only (migrations, the web
/// process, the CLI): handlers bound to default clients, never run.
pub fn registered(settings: &Settings) -> Vec<JobSpec> {
    all_specs(settings, &Env::default())
}

/// Applies `[jobs.<name>]` overrides.
pub fn effective_spec(mut spec: JobSpec, settings: &Settings) -> JobSpec {
    let o = settings.job(spec.name);
    if let Some(n) = o.max_attempts {
        spec.max_attempts = n.max(1);
    }
    if let Some(ms) = o.timeout_ms {
        spec.timeout = Duration::from_millis(ms);
    }
    spec.backoff = Backoff {
        base: o
            .backoff_base_ms
            .map(Duration::from_millis)
            .unwrap_or(spec.backoff.base),
        max: o
            .backoff_max_ms
            .map(Duration::from_millis)
            .unwrap_or(spec.backoff.max),
        jitter: o.backoff_jitter.unwrap_or(spec.backoff.jitter),
    };
    spec
}

/// Refuses a queue name no registered job type has (the one check for the CLI's
/// `--queues`, `pause` and `resume`).
pub fn check_known<'a>(
    specs: &[JobSpec],
    names: impl IntoIterator<Item = &'a str>,
) -> anyhow::Result<()> {
    for name in names {
        anyhow::ensure!(
            specs.iter().any(|s| s.name == name),
            "unknown queue `{name}`; known: {}",
            specs.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// The queues a worker runs: `filter` (job names) or every registered job type.
pub fn select_queues(
    specs: &[JobSpec],
    filter: Option<&[String]>,
    concurrency_override: Option<usize>,
    settings: &Settings,
) -> anyhow::Result<Vec<QueueSpec>> {
    if let Some(filter) = filter {
        check_known(specs, filter.iter().map(String::as_str))?;
    }
    Ok(specs
        .iter()
        .filter(|s| filter.is_none_or(|f| f.iter().any(|n| n == s.name)))
        .map(|s| QueueSpec {
            job: s.clone(),
            concurrency: concurrency_override
                .or(settings.job(s.name).concurrency)
                .unwrap_or(settings.worker.concurrency)
                .max(1),
        })
        .collect())
}
