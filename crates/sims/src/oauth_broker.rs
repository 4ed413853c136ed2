//! A local OAuth 2.0 token endpoint in the dialect of Schwab's Trader API: what broker
//! connections refresh against in local runs and tests.
//!
//! `POST /v1/oauth/token` takes the client's credentials by HTTP Basic
//! (`client_id:client_secret`; anything else is 401 `invalid_client`) and a form body
//! `grant_type=refresh_token&refresh_token=...`. A live refresh token gets
//! `{"expires_in": 1800, "token_type": "Bearer", "scope": "api", "refresh_token",
//! "access_token", "id_token"}`; with rotation on, the answer carries a new refresh
//! token and the old one is dead from then on. Refresh tokens live 7 days from
//! authorisation and a refresh does not extend them. An expired, revoked, rotated-out
//! or unknown refresh token is 400 `{"error": "invalid_grant", "error_description"}`.
//! Faults: the next N requests answer a 5xx.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine;
use serde_json::json;

/// Access tokens last 30 minutes, refresh tokens 7 days (Schwab's documented lives).
pub const ACCESS_TOKEN_SECS: u64 = 1800;
pub const REFRESH_TOKEN_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct OAuthOptions {
    pub client_id: String,
    pub client_secret: String,
    /// Whether a refresh returns a new refresh token (and kills the old).
    pub rotate: bool,
}

impl Default for OAuthOptions {
    fn default() -> Self {
        Self {
            client_id: "local-client".into(),
            client_secret: "local-client-secret".into(),
            rotate: true,
        }
    }
}

struct RefreshToken {
    expires: SystemTime,
    live: bool,
}

#[derive(Default)]
struct Book {
    refresh: HashMap<String, RefreshToken>,
    /// Refresh requests received, by the refresh token they presented.
    requests: HashMap<String, u32>,
    fail_next: Vec<StatusCode>,
    issued: u64,
}

/// The endpoint and its state (clone to share).
#[derive(Clone)]
pub struct OAuthBroker {
    options: Arc<OAuthOptions>,
    book: Arc<Mutex<Book>>,
}

/// Tokens as the endpoint issued them.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: u64,
}

impl OAuthBroker {
    pub fn new(options: OAuthOptions) -> Self {
        Self {
            options: Arc::new(options),
            book: Arc::new(Mutex::new(Book::default())),
        }
    }

    fn token(book: &mut Book, kind: &str) -> String {
        book.issued += 1;
        format!("{kind}-{}-{}", book.issued, uuid::Uuid::new_v4().simple())
    }

    /// What an authorisation (the code flow's exchange) would give a user: a fresh
    /// pair, the refresh token living 7 days from now.
    pub fn authorize(&self) -> Issued {
        let mut book = self.book.lock().unwrap();
        let refresh = Self::token(&mut book, "refresh");
        let access = Self::token(&mut book, "access");
        book.refresh.insert(
            refresh.clone(),
            RefreshToken {
                expires: SystemTime::now() + Duration::from_secs(REFRESH_TOKEN_SECS),
                live: true,
            },
        );
        Issued {
            access_token: access,
            refresh_token: refresh,
            expires_in: ACCESS_TOKEN_SECS,
        }
    }

    /// Revokes a refresh token (the user disconnected the app at the broker).
    pub fn revoke(&self, refresh_token: &str) {
        if let Some(t) = self.book.lock().unwrap().refresh.get_mut(refresh_token) {
            t.live = false;
        }
    }

    /// Whether the endpoint would accept this refresh token now.
    pub fn is_live(&self, refresh_token: &str) -> bool {
        self.book
            .lock()
            .unwrap()
            .refresh
            .get(refresh_token)
            .is_some_and(|t| t.live && t.expires > SystemTime::now())
    }

    /// The next `n` requests answer `status`.
    pub fn fail_next(&self, n: usize, status: StatusCode) {
        self.book
            .lock()
            .unwrap()
            .fail_next
            .extend(std::iter::repeat_n(status, n));
    }

    /// Refresh requests received in all (including refused and failed ones).
    pub fn requests(&self) -> u32 {
        self.book.lock().unwrap().requests.values().sum()
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/oauth/token", post(token))
            .with_state(self.clone())
    }

    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// The client credentials of an HTTP Basic header.
fn basic(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

async fn token(State(broker): State<OAuthBroker>, headers: HeaderMap, body: Bytes) -> Response {
    let form: HashMap<String, String> = url_form(&body);
    let mut book = broker.book.lock().unwrap();
    if let Some(presented) = form.get("refresh_token") {
        *book.requests.entry(presented.clone()).or_default() += 1;
    }
    if !book.fail_next.is_empty() {
        let status = book.fail_next.remove(0);
        return (status, "upstream unavailable").into_response();
    }
    let o = &broker.options;
    if basic(&headers) != Some((o.client_id.clone(), o.client_secret.clone())) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed",
        );
    }
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be refresh_token",
        );
    }
    let Some(presented) = form.get("refresh_token") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        );
    };
    let expires = match book.refresh.get(presented) {
        Some(t) if t.live && t.expires > SystemTime::now() => t.expires,
        _ => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "The refresh token is invalid, expired or revoked",
            );
        }
    };
    let refresh = if o.rotate {
        // The new token lives as long as the old would have: refreshing does not
        // extend the 7 days.
        let new = OAuthBroker::token(&mut book, "refresh");
        if let Some(old) = book.refresh.get_mut(presented) {
            old.live = false;
        }
        book.refresh.insert(
            new.clone(),
            RefreshToken {
                expires,
                live: true,
            },
        );
        new
    } else {
        presented.clone()
    };
    let access = OAuthBroker::token(&mut book, "access");
    let id_token = OAuthBroker::token(&mut book, "id");
    Json(json!({
        "expires_in": ACCESS_TOKEN_SECS,
        "token_type": "Bearer",
        "scope": "api",
        "refresh_token": refresh,
        "access_token": access,
        "id_token": id_token,
    }))
    .into_response()
}

/// An `application/x-www-form-urlencoded` body as pairs (the last of a repeated key).
fn url_form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}
