//! Broker connections authorised with OAuth 2.0, in the dialect of Schwab's Trader
//! API: the refresh grant (the `oauth2` crate builds and reads it; requests go through
//! the process's one HTTP client), and what each answer means for the connection.
//! Tokens are `Secret`s: they never reach a log, an error or a job payload.

use std::time::Duration;

use oauth2::{
    AuthType, ClientId, ClientSecret, RefreshToken, RequestTokenError, TokenResponse, TokenUrl,
    basic::{BasicClient, BasicErrorResponseType},
};

use crate::secrets::Secret;

/// A broker's OAuth client: where its token endpoint is and our credentials there
/// (`[brokers.<name>]`).
#[derive(Clone)]
pub struct BrokerOAuth {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
}

impl std::fmt::Debug for BrokerOAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOAuth")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// What a refresh brought back.
pub struct Refreshed {
    pub access_token: Secret,
    /// A new refresh token, when the broker rotates them: from now on the only valid
    /// one. None: the old one stays.
    pub refresh_token: Option<Secret>,
    pub expires_in: Duration,
    pub scopes: Vec<String>,
}

/// Why a refresh did not happen. No variant carries a token or a response body.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// `invalid_grant`: the refresh token expired (7 days) or was revoked. The user
    /// must authorise again; a normal state of a connection, not a fault.
    #[error("the broker refused the refresh token (invalid_grant{}): the user must authorise again", .0.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    NeedsReauth(Option<String>),
    /// Our client credentials or request were refused: configuration, not the user.
    #[error(
        "the broker refused our OAuth client ({0}): check [brokers] client_id and client_secret_ref"
    )]
    Client(String),
    /// 5xx, a timeout or no connection: retried with backoff.
    #[error("the broker's token endpoint is unavailable: {0}")]
    Unavailable(String),
    /// An answer that is not OAuth (its body is not repeated: it could hold tokens).
    #[error("the broker's token endpoint answered something unreadable: {0}")]
    Unreadable(String),
}

/// The transport's failures, as the oauth2 crate's HTTP client reports them.
#[derive(Debug, thiserror::Error)]
enum Transport {
    #[error("{0}")]
    Http(String),
    #[error("HTTP {0}")]
    Status(u16),
}

/// A token answer is a few hundred bytes.
const MAX_ANSWER: usize = 64 * 1024;

/// Exchanges `refresh_token` at the broker's token endpoint (client credentials by
/// HTTP Basic, as Schwab requires).
pub async fn refresh(
    http: &reqwest::Client,
    broker: &BrokerOAuth,
    refresh_token: &Secret,
    timeout: Duration,
) -> Result<Refreshed, RefreshError> {
    let token_url = TokenUrl::new(broker.token_url.clone())
        .map_err(|e| RefreshError::Client(format!("token_url: {e}")))?;
    let client = BasicClient::new(ClientId::new(broker.client_id.clone()))
        .set_client_secret(ClientSecret::new(broker.client_secret.expose().to_string()))
        .set_token_uri(token_url)
        .set_auth_type(AuthType::BasicAuth);
    // The oauth2 crate builds the request and reads the answer; our client sends it.
    let send = |request: oauth2::HttpRequest| {
        // Owned (a client is a handle): the crate wants a future that borrows nothing.
        let http = http.clone();
        async move {
            let request = reqwest::Request::try_from(request)
                .map_err(|e| Transport::Http(e.without_url().to_string()))?;
            let answer = tokio::time::timeout(timeout, http.execute(request))
                .await
                .map_err(|_| Transport::Http(format!("no answer within {timeout:?}")))?
                .map_err(|e| Transport::Http(e.without_url().to_string()))?;
            let status = answer.status();
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Err(Transport::Status(status.as_u16()));
            }
            let mut response = oauth2::HttpResponse::new(Vec::new());
            *response.status_mut() = status;
            *response.headers_mut() = answer.headers().clone();
            let body = answer
                .bytes()
                .await
                .map_err(|e| Transport::Http(e.without_url().to_string()))?;
            if body.len() > MAX_ANSWER {
                return Err(Transport::Http(format!(
                    "an answer over {MAX_ANSWER} bytes"
                )));
            }
            *response.body_mut() = body.to_vec();
            Ok::<_, Transport>(response)
        }
    };
    let answer = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.expose().to_string()))
        .request_async(&send)
        .await;
    match answer {
        Ok(tokens) => Ok(Refreshed {
            access_token: Secret::new(tokens.access_token().secret().clone()),
            refresh_token: tokens
                .refresh_token()
                .map(|t| Secret::new(t.secret().clone())),
            // Schwab says 1800; an answer without one is taken as Schwab's 30 minutes.
            expires_in: tokens.expires_in().unwrap_or(Duration::from_secs(1800)),
            scopes: tokens
                .scopes()
                .map(|s| s.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default(),
        }),
        Err(RequestTokenError::ServerResponse(e)) => match e.error() {
            BasicErrorResponseType::InvalidGrant => Err(RefreshError::NeedsReauth(
                e.error_description()
                    .map(|d| crate::discord::truncate(d, 200)),
            )),
            other => Err(RefreshError::Client(other.to_string())),
        },
        Err(RequestTokenError::Request(e)) => Err(RefreshError::Unavailable(e.to_string())),
        Err(RequestTokenError::Parse(e, _body)) => Err(RefreshError::Unreadable(format!(
            "not an OAuth token answer at {}",
            e.path()
        ))),
        Err(RequestTokenError::Other(e)) => {
            Err(RefreshError::Unreadable(crate::discord::truncate(&e, 200)))
        }
    }
}
