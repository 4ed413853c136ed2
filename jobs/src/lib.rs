//! The fleet's job types. One file per job; this crate knows nothing of how jobs are
//! stored, claimed or scheduled (that is the runtime in `src/`). Follow-up work is
//! enqueued through SQL (`fleet.enqueue` or triggers), never by calling another job.

mod contract;
mod registry;
mod services;

pub mod bounds;

pub mod canary;
pub mod discord;
pub mod execute_intent;
pub mod process_payment;
pub mod secrets;
pub mod send_alert;
pub mod sync_watcher;
pub mod tenancy;
pub mod venue;

pub use contract::{Backoff, Job, JobContext, JobError, JobFuture, JobHandler, JobSpec};
pub use registry::registry;
pub use services::Services;
