//! Who may see the operator pages. The web listener must be public (Stripe and the
//! watcher source post to it), so everything that names tenants or internals (the
//! console, `/metrics`, health's details) asks for the operator credential:
//! `PULSE__WEB__OPERATOR_TOKEN`, as `Authorization: Bearer <token>` (monitoring) or as
//! the password of HTTP Basic (a browser; any user name). Compared in constant time;
//! several tokens, comma-separated, during a rotation.
//! Without a configured token the operator pages are closed.

use axum::{
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::AppState;

/// Whether the request carries an operator credential.
pub fn is_operator(state: &AppState, headers: &HeaderMap) -> bool {
    let Some(presented) = presented(headers) else {
        return false;
    };
    // Digests first, so the comparison takes the same time whatever the lengths; and
    // every accepted token is compared (no early exit), during a rotation too.
    let presented = Sha256::digest(presented);
    state
        .settings
        .web
        .operator_tokens()
        .iter()
        .fold(subtle::Choice::from(0), |any, expected| {
            any | presented.ct_eq(&Sha256::digest(expected.as_bytes()))
        })
        .into()
}

/// The token of a Bearer header, or the password of a Basic one.
pub(crate) fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().as_bytes().to_vec());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let colon = decoded.iter().position(|b| *b == b':')?;
        return Some(decoded[colon + 1..].to_vec());
    }
    None
}

/// Middleware of the operator routes.
pub async fn require(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if is_operator(&state, request.headers()) {
        return next.run(request).await;
    }
    if state.settings.web.operator_tokens().is_empty() {
        return (
            StatusCode::NOT_FOUND,
            "operator pages are closed: set PULSE__WEB__OPERATOR_TOKEN\n",
        )
            .into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"Pulse Fleet operators\", charset=\"UTF-8\"",
        )],
        "operator credential required\n",
    )
        .into_response()
}
