//! Signed webhooks in: each is verified on its raw body, stored once in an inbox
//! table (whose trigger enqueues the work) and answered at once. A bad signature is
//! refused before anything is parsed or stored.

use axum::{
    Json,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use pulse_domain::watcher::Operation;
use serde_json::{Value, json};

use super::{
    AppState,
    signature::{self, SignatureError},
};

fn error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

fn unauthorized(e: SignatureError) -> Response {
    let code = match e {
        SignatureError::Missing => "missing_signature",
        SignatureError::Expired => "expired_signature",
        SignatureError::Malformed | SignatureError::Mismatch => "invalid_signature",
    };
    error(StatusCode::UNAUTHORIZED, code)
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `POST /webhooks/stripe`.
pub async fn stripe(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let secrets = state.settings.stripe.secrets();
    if secrets.is_empty() {
        tracing::warn!(
            "Stripe webhook refused: no signing secret configured (PULSE__STRIPE__WEBHOOK_SECRETS)"
        );
    }
    let checked = signature::verify_stripe(
        header(&headers, "stripe-signature"),
        &body,
        &secrets,
        state.settings.stripe.tolerance_secs,
        Utc::now().timestamp(),
    );
    if let Err(e) = checked {
        return unauthorized(e);
    }
    let Ok(mut event) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "malformed_json");
    };
    // Verified above on the raw bytes; stored without NULs, which jsonb refuses.
    pulse_domain::bounds::strip_nul(&mut event);
    let (Some(id), Some(kind), Some(created)) = (
        event.get("id").and_then(Value::as_str),
        event.get("type").and_then(Value::as_str),
        event
            .get("created")
            .and_then(Value::as_i64)
            .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0)),
    ) else {
        return error(StatusCode::BAD_REQUEST, "not_a_stripe_event");
    };
    let livemode = event
        .get("livemode")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let inserted = sqlx::query!(
        "INSERT INTO billing.stripe_events (event_id, type, created, livemode, payload)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        id,
        kind,
        created,
        livemode,
        &event,
    )
    .execute(&state.pool)
    .await;
    match inserted {
        Ok(r) => {
            Json(json!({ "received": true, "duplicate": r.rows_affected() == 0 })).into_response()
        }
        Err(e) => {
            tracing::error!(stripe.event = id, error = %e, "storing a Stripe event failed");
            // 5xx: Stripe delivers it again later.
            error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable")
        }
    }
}

/// The version of a `user_symbols` change, for ordering deliveries: the row's
/// `version` (deletes count one past the deleted version), else its `updated_at` in
/// microseconds. Never the arrival time: the signature carries no time, so a replayed
/// body would get a new, newer version on every delivery and could revert a later
/// change or resurrect a deleted watcher. A change without either is refused.
fn source_version(op: Operation, record: Option<&Value>, old: Option<&Value>) -> Option<i64> {
    let version = |r: Option<&Value>| r.and_then(|r| r.get("version")).and_then(Value::as_i64);
    let updated = |r: Option<&Value>| {
        r.and_then(|r| r.get("updated_at"))
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp_micros())
    };
    match op {
        Operation::Delete => version(old)
            .and_then(|v| v.checked_add(1))
            .or_else(|| updated(old).and_then(|t| t.checked_add(1))),
        Operation::Insert | Operation::Update => version(record).or_else(|| updated(record)),
    }
}

/// `POST /webhooks/watchers`: the watcher-sync contract of the platform docs.
pub async fn watchers(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = header(&headers, "x-hmac-sha256");
    let checked = match state.settings.watchers.secret() {
        Some(secret) => signature::verify_hex_hmac(signature, &body, &secret),
        None => {
            tracing::warn!(
                "watcher webhook refused: no secret configured (PULSE__WATCHERS__WEBHOOK_SECRET)"
            );
            Err(signature.map_or(SignatureError::Missing, |_| SignatureError::Mismatch))
        }
    };
    if let Err(e) = checked {
        return unauthorized(e);
    }
    let Ok(mut payload) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "malformed_json");
    };
    pulse_domain::bounds::strip_nul(&mut payload);
    let Some(op) = payload
        .get("type")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<Operation>().ok())
    else {
        return error(StatusCode::BAD_REQUEST, "unknown_type");
    };
    let record = payload.get("record").filter(|r| r.is_object());
    let old = payload.get("old_record").filter(|r| r.is_object());
    let subject = if op == Operation::Delete { old } else { record };
    let Some(source_id) = subject.and_then(|r| r.get("id")).and_then(Value::as_i64) else {
        return error(StatusCode::BAD_REQUEST, "missing_record_id");
    };
    // Multi-tenant: a change without its tenant could not be applied by anyone.
    if subject
        .and_then(|r| r.get("tenant_id"))
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<uuid::Uuid>().ok())
        .is_none()
    {
        return error(StatusCode::BAD_REQUEST, "missing_tenant_id");
    }
    let Some(version) = source_version(op, record, old) else {
        return error(StatusCode::BAD_REQUEST, "missing_version");
    };
    let stored = sqlx::query!(
        "INSERT INTO watcher_events (source_id, source_version, type, record, old_record)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        source_id,
        version,
        op as Operation,
        record,
        old,
    )
    .execute(&state.pool)
    .await;
    if let Err(e) = stored {
        tracing::error!(source.id = source_id, error = %e, "storing a watcher change failed");
        return error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
    }
    let field = |name: &str| {
        subject
            .and_then(|r| r.get(name))
            .cloned()
            .unwrap_or(Value::Null)
    };
    Json(json!({
        "success": true,
        "operation": op,
        "symbol": field("symbol"),
        "user_id": field("user_id"),
    }))
    .into_response()
}
