//! What the web process reads, in one place: the handlers and pages render what these
//! return and run no query of their own. Queue facts come through `pulse-queue`'s
//! admin API (stats tables and index probes, never a scan of the job table); business
//! facts (intents, orders, tenants) are read here.

use std::time::Instant;

use chrono::{DateTime, Utc};
use pulse_domain::status::IntentStatus;
use pulse_queue::{JobState, admin};
use serde::Serialize;
use sqlx::PgPool;

use super::{AppState, metrics::Snapshot};

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

/// Health of the fleet as the web process sees it: database, queues (counts from the
/// stats tables, lag from one index probe each), live workers, schedules.
pub async fn health(state: &AppState) -> Health {
    let started = Instant::now();
    let ping = sqlx::query_scalar!(r#"SELECT 1 AS "one!""#)
        .fetch_one(&state.pool)
        .await;
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
    let lags = admin::queue_lags(&state.pool, &state.job_names)
        .await
        .unwrap_or_default();
    let counts = admin::state_counts(&state.pool).await.unwrap_or_default();
    let count = |name: &str, state: JobState| {
        counts
            .iter()
            .find(|c| c.job_name == name && c.state == state)
            .map_or(0, |c| c.count)
    };
    let max_lag = state.settings.web.max_queue_lag_secs as f64;
    let queues: Vec<QueueHealth> = lags
        .into_iter()
        .map(|(name, lag)| {
            if lag > max_lag {
                problems.push(format!("queue {name} lags {lag:.0}s (limit {max_lag:.0}s)"));
            }
            QueueHealth {
                available: count(&name, JobState::Available),
                running: count(&name, JobState::Running),
                dead: count(&name, JobState::Dead),
                lag_seconds: lag,
                name,
            }
        })
        .collect();
    let names = admin::live_workers(&state.pool, state.settings.worker.lease_timeout())
        .await
        .unwrap_or_default();
    let schedules = admin::schedule_ticks(&state.pool).await.unwrap_or_default();
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
            .map(|s| ScheduleHealth {
                name: s.name,
                job: s.job_name,
                last_tick_at: s.last_tick_at,
            })
            .collect(),
    }
}

/// What `/metrics` exposes.
pub async fn metrics(pool: &PgPool, names: &[String], lease_secs: f64) -> sqlx::Result<Snapshot> {
    let stats = admin::stats(pool).await?;
    let lags = admin::queue_lags(pool, names).await?;
    let live = admin::live_workers(pool, std::time::Duration::from_secs_f64(lease_secs)).await?;
    let stats: std::collections::BTreeMap<_, _> = stats
        .into_iter()
        .map(|s| ((s.metric, s.job_name, s.label), s.value))
        .collect();
    // `admin::stats` has just folded the pending deltas: its `jobs` rows are the
    // counts, so they are read from there rather than asked for again.
    let states = names
        .iter()
        .flat_map(|name| {
            let stats = &stats;
            JobState::ALL.into_iter().map(move |state| {
                let key = ("jobs".to_string(), name.clone(), state.as_str().to_string());
                let n = stats.get(&key).copied().unwrap_or(0.0) as i64;
                (name.clone(), state, n)
            })
        })
        .collect();
    Ok(Snapshot {
        stats,
        lags,
        live_workers: live.len() as i64,
        states,
    })
}

/// One intent as the dashboard lists it.
#[derive(Debug, Clone)]
pub struct IntentSummary {
    pub tenant: String,
    pub id: uuid::Uuid,
    pub status: IntentStatus,
    pub created_at: DateTime<Utc>,
    pub reason: Option<String>,
    /// Its legs' orders, `side qty symbol: status`, `; `-separated.
    pub orders: Option<String>,
}

/// The newest intents with their legs' orders (operators see every tenant).
pub async fn recent_intents(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<IntentSummary>> {
    sqlx::query_as!(
        IntentSummary,
        r#"SELECT t.name AS tenant, i.id, i.status AS "status: IntentStatus", i.created_at, i.reason,
                  (SELECT string_agg(o.side || ' ' || o.quantity::numeric(20,2) || ' ' || o.symbol || ': ' || o.status, '; ' ORDER BY o.leg_index)
                   FROM orders o WHERE o.intent_id = i.id) AS orders
           FROM multi_leg_intents i JOIN tenants t ON t.id = i.tenant_id
           ORDER BY i.created_at DESC LIMIT $1"#,
        limit,
    )
    .fetch_all(pool)
    .await
}
