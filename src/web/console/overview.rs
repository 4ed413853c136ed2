//! `/`: the fleet at a glance. Everything comes from the stats the runtime keeps and
//! one index probe per queue: it costs the same with a million jobs as with ten.

use axum::extract::{Query, State};
use maud::html;
use pulse_queue::admin;

use super::{
    super::{AppState, read_model},
    page::{self, Operator, Section, csrf_field, maybe_when, sparkline},
};

#[derive(serde::Deserialize, Default)]
pub struct Notice {
    pub notice: Option<String>,
}

pub async fn overview(
    State(state): State<AppState>,
    operator: Operator,
    Query(q): Query<Notice>,
) -> page::Page {
    let h = read_model::health(&state).await;
    let hour = admin::throughput(&state.pool, 60).await.unwrap_or_default();
    let paused = admin::paused_queues(&state.pool).await.unwrap_or_default();
    let dead: i64 = h.queues.iter().map(|q| q.dead).sum();
    let paused_accounts: Vec<_> = h.accounts.iter().filter(|a| a.trading_paused).collect();
    let body = html! {
        p {
            "Status " span class={"pill " (h.status)} { (h.status) }
            " · database " (format!("{:.1}", h.database.latency_ms.unwrap_or_default())) " ms"
        }
        @if !h.problems.is_empty() {
            ul.problems { @for p in &h.problems { li { (p) } } }
        }
        div.cards {
            div.card { div.n { (h.workers.live) } div.l { "live worker processes" } }
            div.card { div.n { a href="/jobs?state=dead" { (dead) } } div.l { "dead jobs" } }
            div.card { div.n { (paused.len()) } div.l { "paused queues" } }
            div.card { div.n { a href="/trading" { (paused_accounts.len()) } } div.l { "accounts with trading paused" } }
        }
        h2 { "Queues" }
        div.scroll { table #queues {
            tr {
                th { "queue" } th.num { "available" } th.num { "running" } th.num { "dead" }
                th.num { "lag" } th { "completed / min, last hour" } th { "claiming" }
            }
            @for q in &h.queues {
                @let done: Vec<f64> = match hour.get(&q.name) {
                    Some(series) => series.iter().map(|(c, _)| *c).collect(),
                    None => vec![0.0; 60],
                };
                @let total: f64 = done.iter().fold(0.0, |a, b| a + b);
                @let is_paused = paused.iter().any(|(n, _)| n == &q.name);
                tr data-queue=(q.name) {
                    td { a href={"/jobs?name=" (q.name)} { (q.name) } }
                    td.num { (q.available) }
                    td.num { (q.running) }
                    td.num { @if q.dead > 0 { a href={"/jobs?state=dead&name=" (q.name)} { (q.dead) } } @else { "0" } }
                    td.num { (format!("{:.1}s", q.lag_seconds)) }
                    td { (sparkline(&done, &format!("{total:.0} completed in the last hour"))) " " span.muted { (format!("{total:.0}")) } }
                    td {
                        @if is_paused {
                            span.pill.paused { "paused" } " "
                            form.inline method="post" action={"/queues/" (q.name) "/resume"} {
                                (csrf_field(&operator))
                                button type="submit" { "Resume" }
                            }
                        } @else {
                            form.inline method="post" action={"/queues/" (q.name) "/pause"} {
                                (csrf_field(&operator))
                                button.danger type="submit" { "Pause" }
                            }
                        }
                    }
                }
            }
        } }
        h2 { "Workers" }
        @if h.workers.names.is_empty() {
            p.error { "No live worker process." }
        } @else {
            ul { @for w in &h.workers.names { li.mono { (w) } } }
        }
        h2 { "Schedules" }
        div.scroll { table #schedules {
            tr { th { "schedule" } th { "job" } th { "last tick" } th { "next tick" } th { "" } }
            @for s in &h.schedules {
                tr {
                    td { (s.name) }
                    td { (s.job) }
                    td { (maybe_when(s.last_tick_at)) }
                    td { (maybe_when(s.next_tick_at)) }
                    td { @if s.overdue { span.pill.unhealthy { "overdue" } } }
                }
            }
        } }
        h2 { "Trading paused" }
        @if paused_accounts.is_empty() {
            p.muted { "No account has trading paused." }
        } @else {
            table {
                tr { th { "tenant" } th { "account" } th { "venue" } th { "reason" } }
                @for a in &paused_accounts {
                    tr {
                        td { (a.tenant) }
                        td { a href={"/trading/accounts/" (a.account_id)} { (a.label) } }
                        td { (a.venue) }
                        td { (a.paused_reason.as_deref().unwrap_or_default()) }
                    }
                }
            }
        }
    };
    page::layout(Section::Overview, "Overview", q.notice.as_deref(), body)
}
