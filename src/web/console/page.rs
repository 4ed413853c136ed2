//! What every console page shares: the layout, who the operator is (for the audit
//! log and the CSRF token), and small renderings (ages, sparklines, JSON).

use axum::{
    extract::FromRequestParts,
    http::{HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use maud::{DOCTYPE, Markup, html};
use sha2::{Digest, Sha256};

use super::super::{AppState, operator};

/// The sections of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Overview,
    Jobs,
    Trading,
    Alerts,
    Audit,
}

const SECTIONS: [(Section, &str, &str); 5] = [
    (Section::Overview, "/", "Overview"),
    (Section::Jobs, "/jobs", "Jobs"),
    (Section::Trading, "/trading", "Trading"),
    (Section::Alerts, "/alerts", "Alerts"),
    (Section::Audit, "/audit", "Audit"),
];

/// A rendered page, sent with a policy that allows no script, no frame and no
/// off-site anything: the console needs none.
pub struct Page(pub StatusCode, pub Markup);

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let mut response = (self.0, self.1).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

/// The page `body` in the console's frame, under `title`.
pub fn layout(section: Section, title: &str, notice: Option<&str>, body: Markup) -> Page {
    page(StatusCode::OK, section, title, notice, body)
}

pub fn page(
    status: StatusCode,
    section: Section,
    title: &str,
    notice: Option<&str>,
    body: Markup,
) -> Page {
    Page(
        status,
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · Pulse Fleet" }
                    link rel="stylesheet" href="/console.css";
                    link rel="icon" href="data:,";
                }
                body {
                    header {
                        nav {
                            span.brand { "Pulse Fleet" }
                            @for (s, href, label) in SECTIONS {
                                a href=(href) class=[(s == section).then_some("current")] { (label) }
                            }
                            a.plain href="/metrics" { "metrics" }
                            a.plain href="/internal/health" { "health" }
                        }
                    }
                    main {
                        @if let Some(notice) = notice {
                            p.notice role="status" { (notice) }
                        }
                        h1 { (title) }
                        (body)
                    }
                }
            }
        },
    )
}

/// A page saying what is wrong, with `status`.
pub fn problem(status: StatusCode, section: Section, message: &str) -> Page {
    page(
        status,
        section,
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! { p.error { (message) } },
    )
}

/// The row a page is about, or the page saying it is missing (404) or unreadable (500).
pub fn found<T>(
    read: sqlx::Result<Option<T>>,
    section: Section,
    missing: impl FnOnce() -> String,
) -> Result<T, Page> {
    match read {
        Ok(Some(row)) => Ok(row),
        Ok(None) => Err(problem(StatusCode::NOT_FOUND, section, &missing())),
        Err(e) => Err(internal(section, &e)),
    }
}

/// The page saying a read or a change failed (500), with the database's reason.
pub fn internal(section: Section, e: &sqlx::Error) -> Page {
    problem(StatusCode::INTERNAL_SERVER_ERROR, section, &e.to_string())
}

/// The operator making a request: how the audit log names them (a fingerprint of the
/// credential, never the credential) and the CSRF token their forms carry.
pub struct Operator {
    pub actor: String,
    pub csrf: String,
}

impl Operator {
    fn from_credential(credential: &[u8]) -> Self {
        let digest = hex::encode(Sha256::digest(credential));
        Self {
            actor: format!("operator:{}", &digest[..12]),
            csrf: csrf_token(credential),
        }
    }

    /// Whether `token` is this operator's CSRF token (constant time).
    pub fn csrf_matches(credential: &[u8], token: &str) -> bool {
        hex::decode(token).is_ok_and(|t| csrf_mac(credential).verify_slice(&t).is_ok())
    }
}

/// The CSRF token of the operator holding `credential`.
pub fn csrf_token(credential: &[u8]) -> String {
    hex::encode(csrf_mac(credential).finalize().into_bytes())
}

/// The CSRF token is a MAC of a fixed label under the operator's own credential: a
/// page from another site can neither read it (same-origin policy) nor compute it,
/// and it needs no state on the server.
fn csrf_mac(credential: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(credential).expect("HMAC takes any key length");
    mac.update(b"pulse-fleet console csrf v1");
    mac
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = StatusCode;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, StatusCode> {
        // The operator layer has admitted the request: the credential is present.
        operator::presented(&parts.headers)
            .map(|c| Operator::from_credential(&c))
            .ok_or(StatusCode::UNAUTHORIZED)
    }
}

/// "12s ago", "3m ago", "2h ago", "4d ago" (or "in 5s" for the future).
pub fn ago(at: DateTime<Utc>) -> String {
    let secs = (Utc::now() - at).num_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let text = match n {
        0..=119 => format!("{n}s"),
        120..=7199 => format!("{}m", n / 60),
        7200..=172_799 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

/// A timestamp as a `<time>` with its age shown and the instant in its title.
pub fn when(at: DateTime<Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) title=(at.format("%Y-%m-%d %H:%M:%S%.3f UTC")) { (ago(at)) } }
}

pub fn maybe_when(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        Some(at) => when(at),
        None => html! { span.muted { "—" } },
    }
}

/// A small inline SVG line of `values` (oldest first), scaled to its maximum.
pub fn sparkline(values: &[f64], label: &str) -> Markup {
    const W: f64 = 120.0;
    const H: f64 = 24.0;
    let max = values.iter().copied().fold(0.0, f64::max);
    let step = if values.len() > 1 {
        W / (values.len() - 1) as f64
    } else {
        W
    };
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let y = if max > 0.0 {
                H - 1.0 - v / max * (H - 2.0)
            } else {
                H - 1.0
            };
            format!("{:.1},{:.1}", i as f64 * step, y)
        })
        .collect();
    html! {
        svg.spark width="120" height="24" viewBox="0 0 120 24" role="img" aria-label=(label) {
            title { (label) }
            polyline points=(points.join(" ")) fill="none" stroke="currentColor" stroke-width="1.5";
        }
    }
}

/// JSON, indented, in a `<pre>`.
pub fn json(value: &serde_json::Value) -> Markup {
    html! { pre.json { (serde_json::to_string_pretty(value).unwrap_or_default()) } }
}

/// The hidden field every action form carries.
pub fn csrf_field(operator: &Operator) -> Markup {
    html! { input type="hidden" name="csrf" value=(operator.csrf); }
}

/// A short prefix of a uuid, as lists show ids.
pub fn short(id: &uuid::Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}
