//! Every job type of the fleet, in one alphabetised list. The runtime registers a
//! worker queue for each, and `pulse-fleet migrate` writes them to `fleet.job_types`
//! so that `fleet.enqueue` refuses names no code runs.

use crate::{JobSpec, canary::Canary};

pub fn registry() -> Vec<JobSpec> {
    vec![JobSpec::of::<Canary>()]
}
