//! `/`, the operators' dashboard: the fleet's health, its trading accounts (reconciliation,
//! mismatches, pauses) and the newest intents, rendered
//! from the read model.

use axum::{extract::State, response::Html};

use super::{AppState, read_model};

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The newest intents with their legs' orders, as table rows.
fn intent_rows(intents: &[read_model::IntentSummary]) -> String {
    intents
        .iter()
        .map(|i| {
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                i.created_at.format("%T"),
                escape(&i.tenant),
                &i.id.simple().to_string()[..8],
                i.status,
                escape(
                    i.orders
                        .as_deref()
                        .or(i.reason.as_deref())
                        .unwrap_or_default()
                )
            )
        })
        .collect()
}

pub async fn dashboard(State(state): State<AppState>) -> Html<String> {
    let h = read_model::health(&state).await;
    let intents = intent_rows(
        &read_model::recent_intents(&state.pool, 10)
            .await
            .unwrap_or_default(),
    );
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
    let mut accounts = String::new();
    for a in &h.accounts {
        let mismatches = a
            .mismatches
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        accounts.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&a.tenant),
            escape(&a.label),
            escape(&a.venue),
            a.reconciled_age_seconds
                .map_or("never".to_string(), |s| format!("{s:.0}s ago")),
            escape(&mismatches),
            if a.trading_paused {
                format!("paused: {}", escape(a.paused_reason.as_deref().unwrap_or_default()))
            } else if a.waiting_for_startup_reconciliation {
                "waiting for its start-up reconciliation".to_string()
            } else {
                "trading".to_string()
            },
            match a.venue_reachable {
                Some(true) => "reachable",
                Some(false) => "unreachable",
                None => "not tried",
            }
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
         <h2>Trading accounts</h2><table><tr><th>tenant</th><th>account</th><th>venue</th><th>reconciled</th><th>open mismatches</th><th>trading</th><th>venue</th></tr>{}</table>\
         <h2>Recent intents</h2><table><tr><th>at</th><th>tenant</th><th>intent</th><th>status</th><th>orders</th></tr>{}</table>\
         <p><a href=/metrics>/metrics</a> · <a href=/internal/health>/internal/health</a></p></body></html>",
        h.status,
        problems,
        h.workers.live,
        h.database.latency_ms.unwrap_or_default(),
        rows,
        schedules,
        accounts,
        intents
    ))
}
