//! Every job type of the fleet, in one alphabetised list. The runtime registers a
//! worker queue for each, and `pulse-fleet migrate` writes them to `fleet.job_types`
//! so that `fleet.enqueue` refuses names no code runs.

use crate::{
    Env, JobSpec, apply_venue_event::ApplyVenueEvent, canary::Canary,
    execute_intent::ExecuteIntent, process_payment::ProcessPayment,
    reconcile_account::ReconcileAccount, reconcile_accounts::ReconcileAccounts,
    refresh_broker_token::RefreshBrokerToken, refresh_broker_tokens::RefreshBrokerTokens,
    send_alert::SendAlert, spec, sync_account::SyncAccount, sync_accounts::SyncAccounts,
    sync_watcher::SyncWatcher,
};

pub fn registry(env: &Env) -> Vec<JobSpec> {
    vec![
        spec::<ApplyVenueEvent>(env),
        spec::<Canary>(env),
        spec::<ExecuteIntent>(env),
        spec::<ProcessPayment>(env),
        spec::<ReconcileAccount>(env),
        spec::<ReconcileAccounts>(env),
        spec::<RefreshBrokerToken>(env),
        spec::<RefreshBrokerTokens>(env),
        spec::<SendAlert>(env),
        spec::<SyncAccount>(env),
        spec::<SyncAccounts>(env),
        spec::<SyncWatcher>(env),
    ]
}
