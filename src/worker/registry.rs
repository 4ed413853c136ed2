//! Every job type a worker can run: the business jobs of the `jobs` crate plus the
//! runtime's own (`prune`), with the operator's overrides from `config/` applied.

use std::time::Duration;

use jobs::{Backoff, JobSpec};

use crate::{builtin, config::Settings};

/// All job types, alphabetised, with configuration applied.
pub fn all_specs(settings: &Settings) -> Vec<JobSpec> {
    let mut specs = jobs::registry();
    specs.push(builtin::prune::spec(settings.retention.clone()));
    specs.sort_by_key(|s| s.name);
    specs
        .into_iter()
        .map(|s| effective_spec(s, settings))
        .collect()
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
