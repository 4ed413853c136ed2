//! The web process: signed webhooks in (`/webhooks/stripe`, `/webhooks/watchers`),
//! `/internal/health`, and for operators only `/metrics` and the console (`/`, `/jobs`,
//! `/trading`, ...: `console/`).
//! None of them scans the job table: counts come from `fleet.stats`, lag from one
//! index probe per queue.

mod console;
mod health;
mod ingress;
mod metrics;
pub mod operator;
pub mod read_model;
pub mod signature;

pub use console::csrf_token;

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post},
};
use sqlx::PgPool;

use crate::config::Settings;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub settings: Arc<Settings>,
    pub job_names: Arc<Vec<String>>,
    /// When this process started: a schedule that has never ticked is overdue only
    /// once two of its ticks have passed since.
    pub started_at: chrono::DateTime<chrono::Utc>,
}

impl AppState {
    pub fn new(pool: PgPool, settings: Settings, specs: &[pulse_contract::JobSpec]) -> Self {
        Self {
            pool,
            settings: Arc::new(settings),
            job_names: Arc::new(specs.iter().map(|s| s.name.to_string()).collect()),
            started_at: chrono::Utc::now(),
        }
    }
}

/// The listener is public (webhooks come from outside): the operator pages, which name
/// tenants and internals, need the operator credential ([`operator`]); health answers
/// everyone with its status only, and operators with the details.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.web.max_body_bytes;
    let operators = Router::new()
        .merge(console::routes())
        .route("/metrics", get(metrics::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            operator::require,
        ));
    Router::new()
        .merge(operators)
        .route("/internal/health", get(health::health))
        .route("/webhooks/stripe", post(ingress::stripe))
        .route("/webhooks/watchers", post(ingress::watchers))
        // The contract's own path (seed 003), for senders configured for it.
        .route("/functions/v1/watchers-upsert", post(ingress::watchers))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Refuses a queue name no registered job type has.
pub(crate) fn registry_check(state: &AppState, name: &str) -> Result<(), String> {
    if state.job_names.iter().any(|n| n == name) {
        Ok(())
    } else {
        Err(format!("no queue named {name:?}"))
    }
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
