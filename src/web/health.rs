//! `/internal/health`: 200 when the database answers and no queue lags past
//! `web.max_queue_lag_secs`, 503 otherwise, with the reasons. And `/`, the same facts
//! for people.

use std::time::Instant;

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{AppState, queue_lags};
use crate::queue::admin::state_counts;

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub problems: Vec<String>,
    pub database: DatabaseHealth,
    pub queues: Vec<QueueHealth>,
    pub workers: WorkersHealth,
    pub schedules: Vec<ScheduleHealth>,
}

#[derive(Debug, Serialize)]
pub struct DatabaseHealth {
    pub ok: bool,
    pub latency_ms: Option<f64>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct QueueHealth {
    pub name: String,
    pub lag_seconds: f64,
    pub available: i64,
    pub running: i64,
    pub dead: i64,
}

#[derive(Debug, Serialize)]
pub struct WorkersHealth {
    pub live: i64,
    pub names: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ScheduleHealth {
    pub name: String,
    pub job: String,
    pub last_tick_at: Option<DateTime<Utc>>,
}

pub async fn collect(state: &AppState) -> Health {
    let started = Instant::now();
    let ping: Result<i32, _> = sqlx::query_scalar("SELECT 1").fetch_one(&state.pool).await;
    if let Err(error) = ping {
        return Health {
            status: "unhealthy",
            problems: vec![format!("database unreachable: {error}")],
            database: DatabaseHealth {
                ok: false,
                latency_ms: None,
                error: Some(error.to_string()),
            },
            queues: vec![],
            workers: WorkersHealth {
                live: 0,
                names: vec![],
            },
            schedules: vec![],
        };
    }
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let mut problems = Vec::new();
    let lags = queue_lags(&state.pool, &state.job_names)
        .await
        .unwrap_or_default();
    let counts = state_counts(&state.pool).await.unwrap_or_default();
    let count = |name: &str, s: &str| {
        counts
            .iter()
            .find(|c| c.0 == name && c.1 == s)
            .map(|c| c.2)
            .unwrap_or(0)
    };
    let max_lag = state.settings.web.max_queue_lag_secs as f64;
    let queues: Vec<QueueHealth> = lags
        .into_iter()
        .map(|(name, lag)| {
            if lag > max_lag {
                problems.push(format!("queue {name} lags {lag:.0}s (limit {max_lag:.0}s)"));
            }
            QueueHealth {
                available: count(&name, "available"),
                running: count(&name, "running"),
                dead: count(&name, "dead"),
                lag_seconds: lag,
                name,
            }
        })
        .collect();
    let lease = state.settings.worker.lease_timeout().as_secs_f64();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM fleet.workers
         WHERE stopped_at IS NULL AND last_heartbeat_at > now() - make_interval(secs => $1)
         ORDER BY started_at",
    )
    .bind(lease)
    .fetch_all(&state.pool)
    .await
    .unwrap_or_default();
    let schedules: Vec<(String, String, Option<DateTime<Utc>>)> =
        sqlx::query_as("SELECT name, job_name, last_tick_at FROM fleet.schedules ORDER BY name")
            .fetch_all(&state.pool)
            .await
            .unwrap_or_default();
    Health {
        status: if problems.is_empty() {
            "ok"
        } else {
            "unhealthy"
        },
        problems,
        database: DatabaseHealth {
            ok: true,
            latency_ms: Some(latency_ms),
            error: None,
        },
        queues,
        workers: WorkersHealth {
            live: names.len() as i64,
            names,
        },
        schedules: schedules
            .into_iter()
            .map(|(name, job, last_tick_at)| ScheduleHealth {
                name,
                job,
                last_tick_at,
            })
            .collect(),
    }
}

/// 200 or 503 for everyone; the reasons, queues, workers and schedules only for
/// operators (worker names carry hosts and pids).
pub async fn health(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let health = collect(&state).await;
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

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

type IntentRow = (
    String,
    String,
    String,
    DateTime<Utc>,
    Option<String>,
    Option<String>,
);

/// The newest intents with their legs' orders (operators see every tenant).
async fn recent_intents(state: &AppState) -> String {
    let rows: Vec<IntentRow> = sqlx::query_as(
        "SELECT t.name, i.id::text, i.status::text, i.created_at, i.reason,
                (SELECT string_agg(o.side || ' ' || o.quantity::numeric(20,2) || ' ' || o.symbol || ': ' || o.status, '; ' ORDER BY o.leg_index)
                 FROM orders o WHERE o.intent_id = i.id)
         FROM multi_leg_intents i JOIN tenants t ON t.id = i.tenant_id
         ORDER BY i.created_at DESC LIMIT 10",
    )
    .fetch_all(&state.pool)
    .await
    .unwrap_or_default();
    rows.iter()
        .map(|(tenant, id, status, at, reason, orders)| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                at.format("%T"),
                escape(tenant),
                escape(&id[..8]),
                escape(status),
                escape(&orders.clone().or(reason.clone()).unwrap_or_default())
            )
        })
        .collect()
}

pub async fn dashboard(State(state): State<AppState>) -> Html<String> {
    let h = collect(&state).await;
    let intents = recent_intents(&state).await;
    let mut rows = String::new();
    for q in &h.queues {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1}s</td></tr>",
            escape(&q.name),
            q.available,
            q.running,
            q.dead,
            q.lag_seconds
        ));
    }
    let mut schedules = String::new();
    for s in &h.schedules {
        schedules.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.name),
            escape(&s.job),
            s.last_tick_at.map(|t| t.to_rfc3339()).unwrap_or_default()
        ));
    }
    let problems = if h.problems.is_empty() {
        "none".to_string()
    } else {
        h.problems
            .iter()
            .map(|p| escape(p))
            .collect::<Vec<_>>()
            .join("<br>")
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Pulse Fleet</title>\
         <meta http-equiv=refresh content=5>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:4px 12px;text-align:left}}\
         table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style></head><body>\
         <h1>Pulse Fleet</h1><p>Status: <b>{}</b> · problems: {} · live workers: {} · database {:.1} ms</p>\
         <h2>Queues</h2><table><tr><th>queue</th><th>available</th><th>running</th><th>dead</th><th>lag</th></tr>{}</table>\
         <h2>Schedules</h2><table><tr><th>schedule</th><th>job</th><th>last tick</th></tr>{}</table>\
         <h2>Recent intents</h2><table><tr><th>at</th><th>tenant</th><th>intent</th><th>status</th><th>orders</th></tr>{}</table>\
         <p><a href=/metrics>/metrics</a> · <a href=/internal/health>/internal/health</a></p></body></html>",
        h.status,
        problems,
        h.workers.live,
        h.database.latency_ms.unwrap_or_default(),
        rows,
        schedules,
        intents
    ))
}
