//! `/internal/health`: 200 when the database answers, no queue lags past
//! `web.max_queue_lag_secs`, every queue with work or a schedule has a live worker,
//! every schedule ticks, and every active account is reconciled and its ledger equals
//! its journal; 503 with the reasons otherwise. Everyone gets the status; operators get
//! the reasons, queues, workers and schedules.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use super::{AppState, read_model};

/// 200 or 503 for everyone; the reasons, queues, workers and schedules only for
/// operators (worker names carry hosts and pids).
pub async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let health = read_model::health(&state).await;
    let code = if health.status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if super::operator::is_operator(&state, &headers) {
        (code, Json(health)).into_response()
    } else {
        (code, Json(serde_json::json!({"status": health.status}))).into_response()
    }
}
