//! The fleet's job types, one file (or folder) each, and the one list of them
//! ([`registry`]). A job knows its payload, its retry policy and the domain
//! (`pulse-domain`); it knows nothing of how jobs are stored, claimed or scheduled and
//! touches no `fleet.*` table. Follow-up work is enqueued through SQL (triggers),
//! never by calling another job.

mod job;
mod registry;
mod trading_metrics;
mod venue_budget;

pub mod apply_venue_event;
pub mod canary;
pub mod execute_intent;
pub mod process_payment;
pub mod reconcile_account;
pub mod reconcile_accounts;
pub mod refresh_broker_token;
pub mod refresh_broker_tokens;
pub mod send_alert;
pub mod sync_account;
pub mod sync_accounts;
pub mod sync_watcher;

pub use job::{Env, Job, JobContext, spec};
pub use pulse_contract::{Backoff, JobError, JobSpec};
pub use registry::registry;
