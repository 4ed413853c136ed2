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

pub mod trading;

use super::{AppState, metrics::Snapshot};

#[derive(Debug, Serialize)]
pub struct Health {
    pub status: &'static str,
    pub problems: Vec<String>,
    pub database: DatabaseHealth,
    pub queues: Vec<QueueHealth>,
    pub workers: WorkersHealth,
    pub schedules: Vec<ScheduleHealth>,
    /// Every active trading account: reconciliation, mismatches, pause, venue.
    pub accounts: Vec<AccountHealth>,
}

/// One active trading account as health, metrics and the console see it.
#[derive(Debug, Clone, Serialize)]
pub struct AccountHealth {
    pub tenant: String,
    pub account_id: uuid::Uuid,
    pub label: String,
    pub venue: String,
    /// The last successful reconciliation and how long ago it ended.
    pub last_reconciled_at: Option<DateTime<Utc>>,
    pub reconciled_age_seconds: Option<f64>,
    /// How long since the account's last reconciliation, or its creation if it has
    /// none: what health bounds.
    #[serde(skip)]
    pub unreconciled_seconds: f64,
    /// The last run, successful or not.
    pub last_run_ok: Option<bool>,
    pub last_run_error: Option<String>,
    /// Open mismatches by kind.
    pub mismatches: std::collections::BTreeMap<String, i64>,
    /// The ledger's drift from its journal (sum of absolute differences), 0 if none.
    pub ledger_drift: f64,
    pub trading_paused: bool,
    pub paused_reason: Option<String>,
    /// New intents wait for its start-up reconciliation.
    pub waiting_for_startup_reconciliation: bool,
    /// The venue banned the account's requests until then (Binance's 418): none goes.
    pub venue_banned_until: Option<DateTime<Utc>>,
    /// The last reconciliation reached the venue, or its stream is connected (None:
    /// neither has been tried).
    pub venue_reachable: Option<bool>,
    pub stream_connected: bool,
    pub stream_connects: i64,
}

/// Every active trading account with venue credentials, across tenants.
pub async fn accounts(pool: &PgPool) -> sqlx::Result<Vec<AccountHealth>> {
    let rows = sqlx::query!(
        r#"SELECT t.name AS tenant, a.id, a.label, a.venue_id, r.last_success_at,
                  extract(epoch FROM now() - r.last_success_at)::float8 AS age,
                  extract(epoch FROM now() - coalesce(r.last_success_at, a.created_at))::float8 AS "unreconciled!",
                  lr.ok AS "last_ok?", lr.error AS "last_error?", r.gate_since IS NOT NULL AS "gated!",
                  coalesce(s.stream_connected, false) AS "connected!", coalesce(s.stream_connects, 0) AS "connects!",
                  k.reason AS "paused_reason?", k.id IS NOT NULL AS "paused!",
                  (SELECT b.banned_until FROM venue_request_budgets b
                   WHERE b.account_id = a.id AND b.banned_until > now()) AS banned_until,
                  (SELECT jsonb_object_agg(kind, n) FROM (
                       SELECT m.kind, count(*) AS n FROM reconciliation_mismatches m
                       WHERE m.account_id = a.id AND m.resolved_at IS NULL GROUP BY m.kind) x) AS mismatches,
                  (SELECT (m.details->>'total')::float8 FROM reconciliation_mismatches m
                   WHERE m.account_id = a.id AND m.kind = 'ledger_drift' AND m.resolved_at IS NULL) AS drift
           FROM trading_accounts a
           JOIN tenants t ON t.id = a.tenant_id
           LEFT JOIN account_reconciliation r ON r.account_id = a.id
           LEFT JOIN venue_sync_state s ON s.account_id = a.id
           LEFT JOIN LATERAL (
               SELECT x.ok, x.error FROM reconciliation_runs x WHERE x.account_id = a.id
               ORDER BY x.started_at DESC LIMIT 1) lr ON true
           LEFT JOIN LATERAL (
               SELECT ks.id, ks.reason FROM kill_switches ks
               WHERE ks.tenant_id = a.tenant_id AND ks.engaged AND (ks.account_id = a.id OR ks.account_id IS NULL)
               ORDER BY ks.account_id NULLS LAST LIMIT 1) k ON true
           WHERE a.active
             AND EXISTS (SELECT 1 FROM account_credentials c WHERE c.account_id = a.id)
           ORDER BY t.name, a.label"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| AccountHealth {
            tenant: r.tenant,
            account_id: r.id,
            label: r.label,
            venue: r.venue_id,
            last_reconciled_at: r.last_success_at,
            reconciled_age_seconds: r.age,
            unreconciled_seconds: r.unreconciled,
            venue_reachable: match (r.last_ok, r.connected) {
                (_, true) => Some(true),
                (Some(ok), false) => Some(ok || r.last_error.is_none()),
                (None, false) => None,
            },
            last_run_ok: r.last_ok,
            last_run_error: r.last_error,
            mismatches: r
                .mismatches
                .and_then(|m| serde_json::from_value(m).ok())
                .unwrap_or_default(),
            ledger_drift: r.drift.unwrap_or(0.0),
            trading_paused: r.paused,
            paused_reason: r.paused_reason,
            waiting_for_startup_reconciliation: r.gated,
            venue_banned_until: r.banned_until,
            stream_connected: r.connected,
            stream_connects: r.connects,
        })
        .collect())
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
    /// The tick after the last one (or after this process started, if it never
    /// ticked): when it is due.
    pub next_tick_at: Option<DateTime<Utc>>,
    /// Two ticks have been missed: no scheduler is running it.
    pub overdue: bool,
}

/// The queues with a live worker, and the problems of queues and schedules that
/// nothing runs: a queue with work or a schedule and no live worker, and a configured
/// schedule whose last tick (or this process's start) is older than two of its periods.
fn liveness_problems(
    state: &AppState,
    queues: &[QueueHealth],
    live: &[String],
    ticks: &[admin::ScheduleTick],
    problems: &mut Vec<String>,
) -> Vec<ScheduleHealth> {
    let now = Utc::now();
    let mut schedules = vec![];
    for (name, settings) in &state.settings.schedules {
        let tick = ticks.iter().find(|t| &t.name == name);
        let last = tick.and_then(|t| t.last_tick_at);
        let since = last.unwrap_or(state.started_at);
        let (next, overdue) = match pulse_queue::scheduler::Schedule::parse(name, settings) {
            Ok(schedule) => {
                let mut upcoming = schedule.after(since);
                let next = upcoming.next();
                let second = upcoming.next();
                (next, second.is_some_and(|s| s < now))
            }
            Err(_) => (None, false),
        };
        if overdue {
            problems.push(format!(
                "schedule {name} ({}) {}: two of its ticks have passed; no scheduler is running it",
                settings.cron,
                match last {
                    Some(t) => format!("last ticked {:.0}s ago", (now - t).num_seconds()),
                    None => "has never ticked".into(),
                }
            ));
        }
        schedules.push(ScheduleHealth {
            name: name.clone(),
            job: settings.job.clone(),
            last_tick_at: last,
            next_tick_at: next,
            overdue,
        });
    }
    for q in queues {
        if live.contains(&q.name) {
            continue;
        }
        let scheduled: Vec<&str> = state
            .settings
            .schedules
            .iter()
            .filter(|(_, s)| s.job == q.name)
            .map(|(n, _)| n.as_str())
            .collect();
        if q.available + q.running > 0 {
            problems.push(format!(
                "queue {} has {} jobs waiting or running and no live worker runs it",
                q.name,
                q.available + q.running
            ));
        } else if !scheduled.is_empty() {
            problems.push(format!(
                "queue {} is scheduled ({}) and no live worker runs it",
                q.name,
                scheduled.join(", ")
            ));
        }
    }
    schedules
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
            accounts: vec![],
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
    let lease = state.settings.worker.lease_timeout();
    let names = admin::live_workers(&state.pool, lease)
        .await
        .unwrap_or_default();
    let live = admin::live_queues(&state.pool, lease)
        .await
        .unwrap_or_default();
    let ticks = admin::schedule_ticks(&state.pool).await.unwrap_or_default();
    let schedules = liveness_problems(state, &queues, &live, &ticks, &mut problems);
    let accounts = match accounts(&state.pool).await {
        Ok(a) => a,
        Err(error) => {
            problems.push(format!("trading accounts unreadable: {error}"));
            vec![]
        }
    };
    let max_age = state.settings.reconcile.max_age_secs as f64;
    for a in &accounts {
        if a.unreconciled_seconds > max_age {
            problems.push(format!(
                "account {} ({}) last reconciled {} (limit {max_age:.0}s)",
                a.label,
                a.tenant,
                match a.reconciled_age_seconds {
                    Some(age) => format!("{age:.0}s ago"),
                    None => "never".into(),
                }
            ));
        }
        if a.ledger_drift != 0.0 || a.mismatches.contains_key("ledger_drift") {
            problems.push(format!(
                "account {} ({}): capital invariant broken: the ledger drifts {} from its journal",
                a.label, a.tenant, a.ledger_drift
            ));
        }
    }
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
        schedules,
        accounts,
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
        accounts: accounts(pool).await?,
    })
}

/// One intent as the console lists it.
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
