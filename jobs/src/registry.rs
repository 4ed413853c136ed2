//! Every job type of the fleet, in one alphabetised list. The runtime registers a
//! worker queue for each, and `pulse-fleet migrate` writes them to `fleet.job_types`
//! so that `fleet.enqueue` refuses names no code runs.

use crate::{
    JobSpec, canary::Canary, execute_intent::ExecuteIntent, process_payment::ProcessPayment,
    send_alert::SendAlert, sync_watcher::SyncWatcher,
};

pub fn registry() -> Vec<JobSpec> {
    vec![
        JobSpec::of::<Canary>(),
        JobSpec::of::<ExecuteIntent>(),
        JobSpec::of::<ProcessPayment>(),
        JobSpec::of::<SendAlert>(),
        JobSpec::of::<SyncWatcher>(),
    ]
}
