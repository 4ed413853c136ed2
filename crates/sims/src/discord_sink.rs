//! A local server that speaks Discord's execute-webhook dialect: what alerts go to
//! when no real webhook is configured (local runs), and what tests send to.
//!
//! `POST /api/webhooks/{id}/{token}[?wait=true]`: validates the message against
//! Discord's limits (400 `Invalid Form Body`), answers 404 `Unknown Webhook` for ids
//! starting with `gone`, enforces a per-webhook bucket (`per_window` requests per
//! `window`) with Discord's X-RateLimit-* headers and its 429 body
//! (`{message, retry_after, global}`), and answers 200 with the message (`wait=true`)
//! or 204. `GET /messages` lists what it accepted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The sink's own copy of Discord's execute-webhook body and limits, from Discord's
/// documentation (not the fleet's client types: a fake sharing them would agree with
/// the client even where both were wrong).
pub mod wire {
    use serde::{Deserialize, Serialize};

    /// Discord's documented limits.
    pub mod limits {
        pub const EMBEDS: usize = 10;
        pub const TITLE: usize = 256;
        pub const DESCRIPTION: usize = 4096;
        pub const FIELDS: usize = 25;
        pub const FIELD_NAME: usize = 256;
        pub const FIELD_VALUE: usize = 1024;
        pub const FOOTER: usize = 2048;
        /// Sum of all titles, descriptions, field names and values, footers of a message.
        pub const TOTAL: usize = 6000;
        pub const CONTENT: usize = 2000;
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
    pub struct Message {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub content: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub embeds: Vec<Embed>,
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
    pub struct Embed {
        #[serde(skip_serializing_if = "Option::is_none")]
        pub title: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub description: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub color: Option<u32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub fields: Vec<Field>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub footer: Option<Footer>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pub timestamp: Option<String>,
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
    pub struct Field {
        pub name: String,
        pub value: String,
        #[serde(default)]
        pub inline: bool,
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
    pub struct Footer {
        pub text: String,
    }
}

use wire::{Message, limits};

#[derive(Debug, Clone)]
pub struct SinkOptions {
    pub per_window: u32,
    pub window: Duration,
}

impl Default for SinkOptions {
    /// Discord's usual webhook bucket: 5 requests per 2 seconds.
    fn default() -> Self {
        Self {
            per_window: 5,
            window: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Received {
    pub webhook_id: String,
    pub message: Message,
}

#[derive(Clone)]
pub struct Sink {
    options: SinkOptions,
    messages: Arc<Mutex<Vec<Received>>>,
    /// webhook id -> (requests in the window, window start)
    buckets: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
}

impl Sink {
    pub fn new(options: SinkOptions) -> Self {
        Self {
            options,
            messages: Arc::default(),
            buckets: Arc::default(),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.messages.lock().expect("sink lock").clone()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/webhooks/{id}/{token}", post(execute))
            .route("/messages", get(messages))
            .with_state(self.clone())
    }

    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

#[derive(Deserialize)]
struct ExecuteQuery {
    #[serde(default)]
    wait: bool,
}

fn invalid_form_body(reason: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"message": "Invalid Form Body", "code": 50035, "errors": {"_errors": [{"code": "BASE_TYPE_INVALID", "message": reason}]}})),
    )
        .into_response()
}

fn validate(message: &Message) -> Result<(), String> {
    if message.content.as_deref().unwrap_or_default().is_empty() && message.embeds.is_empty() {
        return Err("Cannot send an empty message".into());
    }
    if message
        .content
        .as_deref()
        .is_some_and(|c| c.chars().count() > limits::CONTENT)
    {
        return Err("content is longer than 2000".into());
    }
    if message.embeds.len() > limits::EMBEDS {
        return Err("more than 10 embeds".into());
    }
    let len = |s: &Option<String>| s.as_ref().map_or(0, |s| s.chars().count());
    for e in &message.embeds {
        if len(&e.title) > limits::TITLE || len(&e.description) > limits::DESCRIPTION {
            return Err("embed title or description too long".into());
        }
        if e.fields.len() > limits::FIELDS {
            return Err("more than 25 fields".into());
        }
        if e.fields.iter().any(|f| {
            f.name.chars().count() > limits::FIELD_NAME
                || f.value.chars().count() > limits::FIELD_VALUE
        }) {
            return Err("field name or value too long".into());
        }
        if e.footer
            .as_ref()
            .is_some_and(|f| f.text.chars().count() > limits::FOOTER)
        {
            return Err("footer too long".into());
        }
    }
    if message.text_len() > limits::TOTAL {
        return Err("embeds exceed 6000 characters".into());
    }
    Ok(())
}

impl Message {
    /// The text Discord counts against its 6,000-character total: titles,
    /// descriptions, field names and values, and footers of every embed.
    pub fn text_len(&self) -> usize {
        let n = |s: &Option<String>| s.as_ref().map_or(0, |s| s.chars().count());
        self.embeds
            .iter()
            .map(|e| {
                n(&e.title)
                    + n(&e.description)
                    + e.footer.as_ref().map_or(0, |f| f.text.chars().count())
                    + e.fields
                        .iter()
                        .map(|f| f.name.chars().count() + f.value.chars().count())
                        .sum::<usize>()
            })
            .sum()
    }
}

async fn execute(
    State(sink): State<Sink>,
    Path((id, _token)): Path<(String, String)>,
    Query(query): Query<ExecuteQuery>,
    body: Bytes,
) -> Response {
    if id.starts_with("gone") {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "Unknown Webhook", "code": 10015})),
        )
            .into_response();
    }
    let (limit, window) = (sink.options.per_window, sink.options.window);
    let (remaining, reset_after) = {
        let mut buckets = sink.buckets.lock().expect("sink lock");
        let now = Instant::now();
        let entry = buckets.entry(id.clone()).or_insert((0, now));
        if now.duration_since(entry.1) >= window {
            *entry = (0, now);
        }
        let reset_after = window.saturating_sub(now.duration_since(entry.1));
        if entry.0 >= limit {
            let mut headers = rate_headers(&id, limit, 0, reset_after);
            headers.insert(
                "retry-after",
                HeaderValue::from(reset_after.as_secs_f64().ceil() as u64),
            );
            headers.insert("x-ratelimit-scope", HeaderValue::from_static("user"));
            let body = json!({"message": "You are being rate limited.", "retry_after": reset_after.as_secs_f64(), "global": false});
            return (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response();
        }
        entry.0 += 1;
        (limit - entry.0, reset_after)
    };
    let Ok(message) = serde_json::from_slice::<Message>(&body) else {
        return invalid_form_body("the body is not a message");
    };
    if let Err(reason) = validate(&message) {
        return invalid_form_body(&reason);
    }
    sink.messages.lock().expect("sink lock").push(Received {
        webhook_id: id.clone(),
        message: message.clone(),
    });
    let headers = rate_headers(&id, limit, remaining, reset_after);
    if query.wait {
        (
            StatusCode::OK,
            headers,
            Json(json!({"id": "1", "webhook_id": id, "embeds": message.embeds})),
        )
            .into_response()
    } else {
        (StatusCode::NO_CONTENT, headers).into_response()
    }
}

fn rate_headers(id: &str, limit: u32, remaining: u32, reset_after: Duration) -> HeaderMap {
    let mut h = HeaderMap::new();
    let reset_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        + reset_after;
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    h.insert(
        "x-ratelimit-reset",
        HeaderValue::from_str(&format!("{:.3}", reset_at.as_secs_f64())).expect("number"),
    );
    h.insert(
        "x-ratelimit-reset-after",
        HeaderValue::from_str(&format!("{:.3}", reset_after.as_secs_f64())).expect("number"),
    );
    h.insert(
        "x-ratelimit-bucket",
        HeaderValue::from_str(&format!("webhook-{id}"))
            .unwrap_or(HeaderValue::from_static("webhook")),
    );
    h
}

async fn messages(State(sink): State<Sink>) -> Json<Vec<Received>> {
    Json(sink.received())
}
