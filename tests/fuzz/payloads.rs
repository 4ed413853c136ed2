//! What clients write and queues carry: intents' legs (both forms) and every job
//! type's payload, from any JSON. Nothing panics; what the legs parser accepts is
//! within its bounds.

use std::collections::HashMap;

use proptest::prelude::*;
use pulse_jobs::{
    apply_venue_event::ApplyVenueEvent, canary::Canary, execute_intent::ExecuteIntent,
    process_payment::ProcessPayment, reconcile_account::ReconcileAccount,
    reconcile_accounts::ReconcileAccounts, refresh_broker_token::RefreshBrokerToken,
    send_alert::SendAlert, sync_account::SyncAccount, sync_accounts::SyncAccounts,
    sync_watcher::SyncWatcher,
};
use serde_json::Value;
use uuid::Uuid;

use crate::json::json_value;

fn decodes<T: serde::de::DeserializeOwned>(v: &Value) -> bool {
    serde_json::from_value::<T>(v.clone()).is_ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn legs_in_any_shape_are_parsed_or_refused_with_a_reason(v in json_value()) {
        let defaults = HashMap::from([("paper".to_string(), Uuid::from_u128(1))]);
        match pulse_jobs::execute_intent::check_legs(&v, &defaults) {
            Ok(n) => prop_assert!((1..=16).contains(&n)),
            Err(reason) => prop_assert!(!reason.is_empty() && reason.len() < 400, "{reason}"),
        }
        // Wrapped as a leg list and as a named leg, too.
        let _ = pulse_jobs::execute_intent::check_legs(&Value::Array(vec![v.clone()]), &defaults);
        let named = serde_json::json!({"buy_leg": v.clone()});
        let _ = pulse_jobs::execute_intent::check_legs(&named, &defaults);
    }

    #[test]
    fn every_job_payload_decodes_or_fails_without_panic(v in json_value()) {
        let _ = (
            decodes::<ApplyVenueEvent>(&v),
            decodes::<Canary>(&v),
            decodes::<ExecuteIntent>(&v),
            decodes::<ProcessPayment>(&v),
            decodes::<ReconcileAccount>(&v),
            decodes::<ReconcileAccounts>(&v),
            decodes::<RefreshBrokerToken>(&v),
            decodes::<SendAlert>(&v),
            decodes::<SyncAccount>(&v),
            decodes::<SyncAccounts>(&v),
            decodes::<SyncWatcher>(&v),
        );
    }
}
