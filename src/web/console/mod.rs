//! The operators' console: server-rendered pages (maud templates, no JavaScript) over
//! the read model, behind the operator credential.
//!
//! - `/` overview: health, queues (depth, lag, an hour of throughput), workers,
//!   schedules, paused trading;
//! - `/jobs` filtered lists, `/jobs/{id}` one job and its attempts, and the actions
//!   (retry, cancel, pause, resume) in `actions.rs`;
//! - `/trading`, `/trading/accounts/{id}`, `/trading/intents/{id}`, `/alerts`;
//! - `/audit`: what operators did.
//!
//! Every action is a POST carrying a CSRF token, asks for confirmation first, and is
//! audited in the transaction that makes it (`fleet.operator_actions`).

mod actions;
mod jobs;
mod overview;
mod page;
mod trading;

use axum::{
    Router,
    http::header,
    response::IntoResponse,
    routing::{get, post},
};

pub use page::csrf_token;

use super::AppState;

/// The console's routes (the caller puts them behind the operator layer).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(overview::overview))
        .route("/console.css", get(stylesheet))
        .route("/jobs", get(jobs::list))
        .route("/jobs/{id}", get(jobs::show))
        .route("/jobs/retry", post(actions::retry))
        .route("/jobs/cancel", post(actions::cancel))
        .route("/queues/{name}/pause", post(actions::pause))
        .route("/queues/{name}/resume", post(actions::resume))
        .route("/audit", get(actions::audit_log))
        .route("/trading", get(trading::index))
        .route("/trading/accounts/{id}", get(trading::account))
        .route("/trading/intents/{id}", get(trading::intent))
        .route("/alerts", get(trading::alerts))
}

/// The one stylesheet (a file of its own, so the pages' policy allows no inline
/// anything).
async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("console.css"),
    )
}
