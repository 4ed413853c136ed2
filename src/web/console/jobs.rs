//! `/jobs` (filtered, newest first, a page at a time) and `/jobs/{id}` (payload,
//! attempts, actions).

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
};
use chrono::{Duration, Utc};
use maud::{Markup, html};
use pulse_queue::{JobState, admin};

use super::{
    super::AppState,
    page::{self, Operator, Section, csrf_field, json, maybe_when, when},
};

/// The age choices of the filter: (value, label, newer than, older than).
const AGES: [(&str, &str, Option<i64>, Option<i64>); 6] = [
    ("", "any age", None, None),
    ("5m", "newer than 5 min", Some(5), None),
    ("1h", "newer than 1 hour", Some(60), None),
    ("24h", "newer than 1 day", Some(1440), None),
    ("older-1h", "older than 1 hour", None, Some(60)),
    ("older-24h", "older than 1 day", None, Some(1440)),
];

#[derive(serde::Deserialize, Default, Clone)]
pub struct ListQuery {
    #[serde(default)]
    name: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    age: String,
    before: Option<i64>,
    notice: Option<String>,
}

fn non_empty(s: &str) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

impl ListQuery {
    fn filter(&self) -> Result<admin::Filter, String> {
        let state = match non_empty(&self.state) {
            Some(s) => Some(s.parse::<JobState>().map_err(|e| e.to_string())?),
            None => None,
        };
        let (_, _, newer, older) = AGES
            .iter()
            .find(|a| a.0 == self.age)
            .ok_or_else(|| format!("unknown age {:?}", self.age))?;
        let now = Utc::now();
        Ok(admin::Filter {
            name: non_empty(&self.name),
            state,
            tenant: non_empty(&self.tenant),
            key: non_empty(&self.key),
            created_after: newer.map(|m| now - Duration::minutes(m)),
            created_before: older.map(|m| now - Duration::minutes(m)),
            before_id: self.before,
            limit: 50,
        })
    }

    /// This list's URL with the page cursor at `before`.
    fn url(&self, before: Option<i64>) -> String {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("name", &self.name),
            ("state", &self.state),
            ("tenant", &self.tenant),
            ("key", &self.key),
            ("age", &self.age),
        ] {
            if !v.is_empty() {
                url.append_pair(k, v);
            }
        }
        if let Some(b) = before {
            url.append_pair("before", &b.to_string());
        }
        format!("/jobs?{}", url.finish())
    }
}

pub async fn list(
    State(state): State<AppState>,
    operator: Operator,
    Query(q): Query<ListQuery>,
) -> page::Page {
    let filter = match q.filter() {
        Ok(f) => f,
        Err(e) => return page::problem(StatusCode::BAD_REQUEST, Section::Jobs, &e),
    };
    let jobs = match admin::list(&state.pool, &filter).await {
        Ok(j) => j,
        Err(e) => return page::internal(Section::Jobs, &e),
    };
    let here = q.url(q.before);
    let body = html! {
        form.filters method="get" action="/jobs" {
            label { "job" select name="name" {
                option value="" { "all" }
                @for n in state.job_names.iter() { option value=(n) selected[*n == q.name] { (n) } }
            } }
            label { "state" select name="state" {
                option value="" { "all" }
                @for s in JobState::ALL { option value=(s.as_str()) selected[s.as_str() == q.state] { (s.as_str()) } }
            } }
            label { "tenant" input name="tenant" value=(q.tenant) placeholder="tenant id" size="36"; }
            label { "key" input name="key" value=(q.key) placeholder="idempotency key"; }
            label { "age" select name="age" {
                @for (v, l, _, _) in AGES { option value=(v) selected[v == q.age] { (l) } }
            } }
            button.primary type="submit" { "Filter" }
            a href="/jobs" { "clear" }
        }
        form #bulk method="post" action="/jobs/retry" {
            (csrf_field(&operator))
            input type="hidden" name="back" value=(here);
            div.actions {
                button type="submit" formaction="/jobs/retry" { "Retry selected" }
                button.danger type="submit" formaction="/jobs/cancel" { "Cancel selected" }
                @if let (Some(name), Some(JobState::Dead)) = (&filter.name, filter.state) {
                    button type="submit" formaction="/jobs/retry" name="all" value="1" { "Retry every dead " (name) " job" }
                }
            }
            @if let Some(name) = &filter.name { input type="hidden" name="name" value=(name); }
            @if let Some(s) = filter.state { input type="hidden" name="state" value=(s.as_str()); }
            div.scroll { table #jobs {
                tr {
                    th { "" } th.num { "id" } th { "job" } th { "state" } th.num { "attempts" }
                    th { "tenant" } th { "key" } th { "created" } th { "runs at" } th { "last error" }
                }
                @for j in &jobs {
                    tr {
                        td { input type="checkbox" name="ids" value=(j.id) aria-label={"select job " (j.id)}; }
                        td.num { a href={"/jobs/" (j.id)} { (j.id) } }
                        td { (j.job_name) }
                        td { span class={"pill " (j.state.as_str())} { (j.state.as_str()) } }
                        td.num { (j.attempts) "/" (j.max_attempts) }
                        td.mono { (j.tenant.as_deref().map(|t| &t[..t.len().min(8)]).unwrap_or("")) }
                        td.mono.truncate { (j.idempotency_key.as_deref().unwrap_or("")) }
                        td { (when(j.created_at)) }
                        td { (when(j.run_at)) }
                        td.truncate.error title=(j.last_error.as_deref().unwrap_or("")) { (j.last_error.as_deref().unwrap_or("")) }
                    }
                }
            } }
        }
        @if jobs.is_empty() {
            p.muted { "No job matches." }
        }
        @if jobs.len() as i64 == filter.limit && let Some(last) = jobs.last() {
            p { a #older href=(q.url(Some(last.id))) { "Older →" } }
        }
    };
    page::layout(Section::Jobs, "Jobs", q.notice.as_deref(), body)
}

pub async fn show(
    State(state): State<AppState>,
    operator: Operator,
    Path(id): Path<i64>,
    Query(notice): Query<super::overview::Notice>,
) -> page::Page {
    let job = match page::found(admin::job(&state.pool, id).await, Section::Jobs, || {
        format!("no job {id}")
    }) {
        Ok(job) => job,
        Err(missing) => return missing,
    };
    let attempts = job.errors.as_array().cloned().unwrap_or_default();
    let text = |v: &serde_json::Value, k: &str| -> String {
        match v.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        }
    };
    let back = format!("/jobs/{id}");
    let action = |path: &str, label: &str, class: &str| -> Markup {
        html! {
            form.inline method="post" action=(path) {
                (csrf_field(&operator))
                input type="hidden" name="ids" value=(id);
                input type="hidden" name="back" value=(back);
                button class=(class) type="submit" { (label) }
            }
        }
    };
    let body = html! {
        p { span class={"pill " (job.state.as_str())} { (job.state.as_str()) } " " (job.job_name) }
        div.actions {
            @if matches!(job.state, JobState::Dead | JobState::Cancelled) { (action("/jobs/retry", "Retry", "primary")) }
            @if matches!(job.state, JobState::Available | JobState::Running | JobState::Dead) { (action("/jobs/cancel", "Cancel", "danger")) }
        }
        dl.facts {
            dt { "attempts" } dd { (job.attempts) " of " (job.max_attempts) }
            dt { "priority" } dd { (job.priority) }
            dt { "idempotency key" } dd.mono { (job.idempotency_key.as_deref().unwrap_or("—")) }
            dt { "concurrency key" } dd.mono { (job.concurrency_key.as_deref().unwrap_or("—")) }
            dt { "created" } dd { (when(job.created_at)) }
            dt { "runs at" } dd { (when(job.run_at)) }
            dt { "last started" } dd { (maybe_when(job.started_at)) }
            dt { "finished" } dd { (maybe_when(job.finished_at)) }
            dt { "held by" } dd.mono { (job.held_by.as_deref().unwrap_or("—")) }
        }
        h2 { "Payload" }
        (json(&job.payload))
        h2 { "Attempts" }
        table #attempts {
            tr { th.num { "#" } th { "ended" } th { "outcome" } th { "worker" } th.num { "ran" } th { "error" } }
            @for a in &attempts {
                tr {
                    td.num { (text(a, "attempt")) }
                    td { @match text(a, "at").parse::<chrono::DateTime<Utc>>() { Ok(at) => (when(at)), Err(_) => (text(a, "at")) } }
                    td { span class={"pill " (if text(a, "kind") == "permanent" { "dead" } else { "failed" })} { (text(a, "kind")) } }
                    td.mono { (text(a, "worker")) }
                    td.num { @let ms = text(a, "run_ms"); @if !ms.is_empty() { (ms) " ms" } }
                    td.error { (text(a, "error")) }
                }
            }
            @if job.state == JobState::Completed {
                tr {
                    td.num { (job.attempts) }
                    td { (maybe_when(job.finished_at)) }
                    td { span.pill.completed { "completed" } }
                    td.muted { "—" }
                    td.num {
                        @if let (Some(s), Some(f)) = (job.started_at, job.finished_at) {
                            ((f - s).num_milliseconds()) " ms"
                        }
                    }
                    td {}
                }
            }
            @if job.state == JobState::Running {
                tr {
                    td.num { (job.attempts) }
                    td { "running since " (maybe_when(job.started_at)) }
                    td { span.pill.running { "running" } }
                    td.mono { (job.held_by.as_deref().unwrap_or("")) }
                    td {} td {}
                }
            }
        }
        @if attempts.is_empty() && !matches!(job.state, JobState::Completed | JobState::Running) {
            p.muted { "No attempt has failed." }
        }
    };
    page::layout(
        Section::Jobs,
        &format!("Job {id}"),
        notice.notice.as_deref(),
        body,
    )
}
