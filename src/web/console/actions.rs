//! The console's actions: retry and cancel jobs (one or many), pause and resume
//! queues. Each is a POST that must carry the operator's CSRF token and come from the
//! console's own pages; the first POST shows what will change and asks to confirm, the
//! confirmed one does it (audited by `pulse_queue::admin` in the same transaction) and
//! sends the operator back where they were.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::html;
use pulse_queue::{JobState, admin};

use super::{
    super::{AppState, operator, registry_check},
    page::{self, Operator, Section, csrf_field, when},
};

/// An action form's fields.
#[derive(Default)]
struct ActionForm {
    csrf: String,
    confirmed: bool,
    ids: Vec<i64>,
    /// "Retry every dead job of this name": the selection by name and state.
    all: bool,
    name: Option<String>,
    state: Option<JobState>,
    back: Option<String>,
}

impl ActionForm {
    fn parse(body: &[u8]) -> Result<Self, String> {
        let mut form = ActionForm::default();
        for (k, v) in url::form_urlencoded::parse(body) {
            match &*k {
                "csrf" => form.csrf = v.into_owned(),
                "confirm" => form.confirmed = v == "yes",
                "ids" => form
                    .ids
                    .push(v.parse().map_err(|_| format!("not a job id: {v:?}"))?),
                "all" => form.all = v == "1",
                "name" if !v.is_empty() => form.name = Some(v.into_owned()),
                "state" if !v.is_empty() => {
                    form.state = Some(v.parse().map_err(|e: String| e)?);
                }
                // Only a path of this site: never an open redirect (a browser drops
                // tabs and newlines from a URL, so `/<tab>/evil` would be `//evil`).
                "back"
                    if v.starts_with('/')
                        && !v.starts_with("//")
                        && !v.contains('\\')
                        && !v.chars().any(char::is_control) =>
                {
                    form.back = Some(v.into_owned());
                }
                _ => {}
            }
        }
        Ok(form)
    }

    /// The jobs the action is about: the ticked ids, or (asked for explicitly) every
    /// job of a name in a state.
    fn selection(&self) -> Result<admin::Selection, String> {
        if self.all {
            if self.name.is_none() {
                return Err("a bulk action needs a job name".into());
            }
            return Ok(admin::Selection {
                ids: vec![],
                name: self.name.clone(),
                state: self.state,
            });
        }
        if self.ids.is_empty() {
            return Err("select at least one job".into());
        }
        Ok(admin::Selection::ids(self.ids.clone()))
    }

    fn back_with(&self, default: &str, notice: &str) -> String {
        let back = self.back.as_deref().unwrap_or(default);
        let sep = if back.contains('?') { '&' } else { '?' };
        let notice: String = url::form_urlencoded::byte_serialize(notice.as_bytes()).collect();
        format!("{back}{sep}notice={notice}")
    }
}

/// Why a POST does not come from the console itself, if it does not: a browser says
/// where a form was sent from (`Sec-Fetch-Site`, `Origin`), and the token proves the
/// page was ours. Checked before anything is read from the database.
fn refusal(headers: &HeaderMap, form: &ActionForm) -> Option<&'static str> {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Some("the form was sent from another site");
    }
    if let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
        if origin_host != host {
            return Some("the form was sent from another origin");
        }
    }
    let credential = operator::presented(headers).unwrap_or_default();
    if !Operator::csrf_matches(&credential, &form.csrf) {
        return Some("missing or wrong CSRF token (reload the page and try again)");
    }
    None
}

/// The form of an action POST, or the page refusing it (unreadable, or not from the
/// console: see [`refusal`]).
fn admitted(
    headers: &HeaderMap,
    body: &[u8],
    section: Section,
) -> Result<ActionForm, Box<Response>> {
    let refuse = |status, why: &str| Box::new(page::problem(status, section, why).into_response());
    let form = ActionForm::parse(body).map_err(|e| refuse(StatusCode::BAD_REQUEST, &e))?;
    match refusal(headers, &form) {
        Some(why) => Err(refuse(StatusCode::FORBIDDEN, &format!("refused: {why}"))),
        None => Ok(form),
    }
}

/// What a confirmation page asks.
struct Ask<'a> {
    title: String,
    what: String,
    button: &'a str,
    action: String,
    danger: bool,
}

fn confirm_page(operator: &Operator, form: &ActionForm, ask: Ask<'_>) -> Response {
    let body = html! {
        p { (ask.what) }
        form method="post" action=(ask.action) {
            (csrf_field(operator))
            input type="hidden" name="confirm" value="yes";
            @for id in &form.ids { input type="hidden" name="ids" value=(id); }
            @if form.all { input type="hidden" name="all" value="1"; }
            @if let Some(n) = &form.name { input type="hidden" name="name" value=(n); }
            @if let Some(s) = form.state { input type="hidden" name="state" value=(s.as_str()); }
            @if let Some(b) = &form.back { input type="hidden" name="back" value=(b); }
            div.actions {
                button #confirm class=(if ask.danger { "danger" } else { "primary" }) type="submit" { (ask.button) }
                a href=(form.back.as_deref().unwrap_or("/")) { "Back" }
            }
        }
    };
    page::layout(Section::Jobs, &ask.title, None, body).into_response()
}

/// A sentence naming the selected jobs.
fn describe(selection: &admin::Selection, default: JobState) -> String {
    if selection.ids.is_empty() {
        format!(
            "every {} job that is {}",
            selection.name.as_deref().unwrap_or("?"),
            selection.state.unwrap_or(default)
        )
    } else if selection.ids.len() == 1 {
        format!("job {}", selection.ids[0])
    } else {
        format!(
            "{} jobs ({})",
            selection.ids.len(),
            selection
                .ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[derive(Clone, Copy)]
enum JobAction {
    Retry,
    Cancel,
}

async fn job_action(
    state: AppState,
    operator: Operator,
    headers: HeaderMap,
    body: Bytes,
    kind: JobAction,
) -> Response {
    let form = match admitted(&headers, &body, Section::Jobs) {
        Ok(f) => f,
        Err(refused) => return *refused,
    };
    let selection = match form.selection() {
        Ok(s) => s,
        Err(e) => return page::problem(StatusCode::BAD_REQUEST, Section::Jobs, &e).into_response(),
    };
    let (verb, path, default) = match kind {
        JobAction::Retry => ("retry", "/jobs/retry", JobState::Dead),
        JobAction::Cancel => ("cancel", "/jobs/cancel", JobState::Available),
    };
    if !form.confirmed {
        let what = describe(&selection, default);
        return confirm_page(
            &operator,
            &form,
            Ask {
                title: format!("Confirm: {verb} {what}?"),
                what: match kind {
                    JobAction::Retry => format!(
                        "Retrying {what} runs it again with all its attempts (only dead or cancelled jobs change)."
                    ),
                    JobAction::Cancel => format!(
                        "Cancelling {what} stops it for good (only waiting, running or dead jobs change; a running attempt finishes, but its result is not kept)."
                    ),
                },
                button: match kind {
                    JobAction::Retry => "Yes, retry",
                    JobAction::Cancel => "Yes, cancel",
                },
                action: path.into(),
                danger: matches!(kind, JobAction::Cancel),
            },
        );
    }
    let result = match kind {
        JobAction::Retry => admin::retry(&state.pool, &selection, &operator.actor).await,
        JobAction::Cancel => admin::cancel(&state.pool, &selection, &operator.actor).await,
    };
    match result {
        Ok(n) => {
            let done = match kind {
                JobAction::Retry => format!("{n} job(s) queued again"),
                JobAction::Cancel => format!("{n} job(s) cancelled"),
            };
            tracing::info!(actor = %operator.actor, action = verb, changed = n, "operator action");
            Redirect::to(&form.back_with("/jobs", &done)).into_response()
        }
        Err(admin::AdminError::Database(e)) => page::internal(Section::Jobs, &e).into_response(),
        Err(e) => {
            page::problem(StatusCode::BAD_REQUEST, Section::Jobs, &e.to_string()).into_response()
        }
    }
}

pub async fn retry(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    job_action(state, operator, headers, body, JobAction::Retry).await
}

pub async fn cancel(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    job_action(state, operator, headers, body, JobAction::Cancel).await
}

async fn queue_action(
    state: AppState,
    operator: Operator,
    headers: HeaderMap,
    name: String,
    body: Bytes,
    pause: bool,
) -> Response {
    let form = match admitted(&headers, &body, Section::Overview) {
        Ok(f) => f,
        Err(refused) => return *refused,
    };
    if let Err(e) = registry_check(&state, &name) {
        return page::problem(StatusCode::NOT_FOUND, Section::Overview, &e).into_response();
    }
    let verb = if pause { "pause" } else { "resume" };
    if !form.confirmed {
        return confirm_page(
            &operator,
            &form,
            Ask {
                title: format!("Confirm: {verb} queue {name}?"),
                what: if pause {
                    format!(
                        "Pausing {name} stops every worker from claiming its jobs; running attempts finish, new jobs wait."
                    )
                } else {
                    format!("Resuming {name} lets workers claim its jobs again.")
                },
                button: if pause { "Yes, pause" } else { "Yes, resume" },
                action: format!("/queues/{name}/{verb}"),
                danger: pause,
            },
        );
    }
    let result = if pause {
        admin::pause(&state.pool, &name, &operator.actor).await
    } else {
        admin::resume(&state.pool, &name, &operator.actor).await
    };
    match result {
        Ok(changed) => {
            tracing::info!(actor = %operator.actor, action = verb, queue = %name, changed, "operator action");
            let done = match (pause, changed) {
                (true, true) => format!("queue {name} paused"),
                (true, false) => format!("queue {name} was paused already"),
                (false, true) => format!("queue {name} resumed"),
                (false, false) => format!("queue {name} was not paused"),
            };
            Redirect::to(&form.back_with("/", &done)).into_response()
        }
        Err(e) => page::internal(Section::Overview, &e).into_response(),
    }
}

pub async fn pause(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    queue_action(state, operator, headers, name, body, true).await
}

pub async fn resume(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    queue_action(state, operator, headers, name, body, false).await
}

/// `/audit`: the newest operators' actions.
pub async fn audit_log(State(state): State<AppState>) -> page::Page {
    let actions = match admin::operator_actions(&state.pool, 200).await {
        Ok(a) => a,
        Err(e) => return page::internal(Section::Audit, &e),
    };
    let body = html! {
        p.muted { "Every retry, cancel, pause and resume, from the console or the command line, newest first." }
        table #audit {
            tr { th { "when" } th { "who" } th { "action" } th { "target" } th.num { "changed" } }
            @for a in &actions {
                tr {
                    td { (when(a.at)) }
                    td.mono { (a.actor) }
                    td { (a.action) }
                    td.mono { (a.target.to_string()) }
                    td.num { (a.affected) }
                }
            }
        }
        @if actions.is_empty() { p.muted { "No action yet." } }
    };
    page::layout(Section::Audit, "Audit log", None, body)
}
