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

/// The watcher contract's budget (seed 003: the function answers 408 past 1 s).
const WATCHER_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// `POST /webhooks/watchers` (and the contract's own path,
/// `/functions/v1/watchers-upsert`): the watcher-sync contract of the platform docs,
/// in two forms.
///
/// - **Keyed** (our database's trigger sends these): the record carries its `id`, its
///   `tenant_id` and a `version` (or `updated_at`), and changes apply in version order
///   whatever order they arrive in.
/// - **The contract verbatim** (seed 003's payload): no `id`, no `tenant_id`, no
///   version. The tenant is the user's (one membership; none or several is refused
///   with the reason), the change is keyed by (user_id, symbol, timeframe), and
///   changes apply in arrival order, as the contract's own function does. A replayed
///   old body can then undo a later change of that key: the contract's signature
///   carries no time, so it cannot be told from a new one (the keyed form can).
///
/// Answers the contract's `{success, operation, symbol, user_id}`, or 408
/// `{"error":"timeout"}` when storing would take longer than 1 s, with nothing
/// stored.
pub async fn watchers(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
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
    let mut record = payload.get("record").filter(|r| r.is_object()).cloned();
    let mut old = payload.get("old_record").filter(|r| r.is_object()).cloned();
    let subject = if op == Operation::Delete {
        &old
    } else {
        &record
    };
    let Some(subject) = subject.clone() else {
        return error(StatusCode::BAD_REQUEST, "missing_record");
    };
    let text = |field: &str| {
        subject
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let Some(user_id) = text("user_id") else {
        return error(StatusCode::BAD_REQUEST, "missing_user_id");
    };
    let keyed = subject.get("id").and_then(Value::as_i64);
    let named_tenant = text("tenant_id").and_then(|t| t.parse::<uuid::Uuid>().ok());
    if keyed.is_some() && named_tenant.is_none() {
        // A keyed change says whose it is (our trigger always does).
        return error(StatusCode::BAD_REQUEST, "missing_tenant_id");
    }
    let version = match (keyed, source_version(op, record.as_ref(), old.as_ref())) {
        (_, Some(v)) => Some(v),
        (Some(_), None) => return error(StatusCode::BAD_REQUEST, "missing_version"),
        // The contract's form: arrival order (the statement's clock, below).
        (None, None) => None,
    };
    let stored = tokio::time::timeout(WATCHER_BUDGET, async {
        let mut tx = state.pool.begin().await?;
        // What is left of the budget bounds the statements too: a timed-out change
        // is rolled back by the server, not left half-stored.
        let left = WATCHER_BUDGET.saturating_sub(started.elapsed()).as_millis().max(1);
        sqlx::query!("SELECT set_config('statement_timeout', $1, true)", format!("{left}ms"))
            .fetch_one(&mut *tx)
            .await?;
        let tenant = match named_tenant {
            Some(t) => t,
            None => {
                let tenants = sqlx::query_scalar!(
                    r#"SELECT t AS "t!" FROM tenants_of_user($1) AS t"#,
                    &user_id
                )
                .fetch_all(&mut *tx)
                .await?;
                match tenants[..] {
                    [one] => one,
                    [] => return Ok(Err("unknown_user")),
                    _ => return Ok(Err("ambiguous_user_tenant")),
                }
            }
        };
        // The inbox's job reads the tenant from the record, and a key from its id or,
        // in the contract's form, from (tenant, user_id, symbol, timeframe).
        for r in [&mut record, &mut old].into_iter().flatten() {
            if let Some(r) = r.as_object_mut() {
                r.insert("tenant_id".into(), json!(tenant));
            }
        }
        let source_id = match keyed {
            Some(id) => id,
            None => {
                let (Some(symbol), Some(timeframe)) = (text("symbol"), text("timeframe")) else {
                    return Ok(Err("missing_record_key"));
                };
                natural_source_id(tenant, &user_id, &symbol, &timeframe)
            }
        };
        sqlx::query!(
            "INSERT INTO watcher_events (source_id, source_version, type, record, old_record)
             VALUES ($1, coalesce($2, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint), $3, $4, $5)
             ON CONFLICT DO NOTHING",
            source_id,
            version,
            op as Operation,
            record,
            old,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok::<_, sqlx::Error>(Ok(()))
    })
    .await;
    match stored {
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "timeout"),
        Ok(Err(sqlx::Error::Database(e))) if e.code().as_deref() == Some("57014") => {
            // statement_timeout: the budget ran out inside the database.
            return error(StatusCode::REQUEST_TIMEOUT, "timeout");
        }
        Ok(Err(e)) => {
            tracing::error!(user.id = %user_id, error = %e, "storing a watcher change failed");
            return error(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable");
        }
        Ok(Ok(Err(code))) => return error(StatusCode::BAD_REQUEST, code),
        Ok(Ok(Ok(()))) => {}
    }
    let field = |name: &str| subject.get(name).cloned().unwrap_or(Value::Null);
    Json(json!({
        "success": true,
        "operation": op,
        "symbol": field("symbol"),
        "user_id": field("user_id"),
    }))
    .into_response()
}

/// The inbox key of a change in the contract's form, which names no row id: a stable
/// function of (tenant, user_id, symbol, timeframe), negative so that it never meets
/// the ids of `user_symbols` rows (positive).
fn natural_source_id(tenant: uuid::Uuid, user_id: &str, symbol: &str, timeframe: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [tenant.to_string().as_str(), user_id, symbol, timeframe] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let n = i64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) & i64::MAX;
    -n - 1
}
