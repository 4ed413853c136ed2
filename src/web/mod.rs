//! The web process: signed webhooks in (`/webhooks/stripe`, `/webhooks/watchers`),
//! `/internal/health`, and for operators only `/metrics` and the dashboard `/`.
//! None of them scans the job table: counts come from `fleet.stats`, lag from one
//! index probe per queue.

mod health;
mod ingress;
mod metrics;
pub mod operator;
pub mod signature;

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
}

impl AppState {
    pub fn new(pool: PgPool, settings: Settings, specs: &[jobs::JobSpec]) -> Self {
        Self {
            pool,
            settings: Arc::new(settings),
            job_names: Arc::new(specs.iter().map(|s| s.name.to_string()).collect()),
        }
    }
}

/// The listener is public (webhooks come from outside): the operator pages, which name
/// tenants and internals, need the operator credential ([`operator`]); health answers
/// everyone with its status only, and operators with the details.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.web.max_body_bytes;
    let operators = Router::new()
        .route("/", get(health::dashboard))
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
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
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

/// Seconds the job at the head of each queue has been due (0 when none is due): one
/// probe of the claim index per queue.
pub async fn queue_lags(pool: &PgPool, names: &[String]) -> sqlx::Result<Vec<(String, f64)>> {
    sqlx::query_as(
        "SELECT q.name, coalesce(extract(epoch FROM now() - head.run_at)::float8, 0)
         FROM unnest($1::text[]) AS q(name)
         LEFT JOIN LATERAL (
             SELECT j.run_at FROM fleet.jobs j
             WHERE j.job_name = q.name AND j.state = 'available' AND j.run_at <= now()
             ORDER BY j.priority DESC, j.run_at, j.id LIMIT 1
         ) head ON true
         ORDER BY q.name",
    )
    .bind(names)
    .fetch_all(pool)
    .await
}
