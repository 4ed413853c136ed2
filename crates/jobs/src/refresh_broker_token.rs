//! `refresh_broker_token`: one broker connection's tokens, refreshed with the OAuth
//! refresh grant before the access token expires.
//!
//! - One at a time per connection (the concurrency key `broker:<connection>`, set by
//!   `request_token_refreshes`): a refresh token presented twice can end the
//!   connection when the broker rotates them.
//! - The new tokens are sealed and stored over the generation that was read, in the
//!   statement that retires the old ones; an attempt that finds the tokens fresh (a
//!   retry after its own success, a duplicate) does nothing.
//! - `invalid_grant` (the refresh token expired after its 7 days, or was revoked)
//!   marks the connection `needs_reauth` and alerts its user once; a 5xx or no
//!   answer is retried with backoff; our client refused is a permanent failure.
//! - Tokens live in this attempt's memory and in the database sealed: never in the
//!   payload, an error or a log line.

use std::time::Duration;

use pulse_domain::{
    brokers::{self, RefreshError},
    secrets, tenancy,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Backoff, Job, JobContext, JobError};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RefreshBrokerToken {
    pub tenant_id: Uuid,
    pub connection_id: Uuid,
}

impl Job for RefreshBrokerToken {
    const NAME: &'static str = "refresh_broker_token";
    const MAX_ATTEMPTS: i32 = 8;
    const TIMEOUT: Duration = Duration::from_secs(60);
    const BACKOFF: Backoff = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(120),
        jitter: 0.25,
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let margin = ctx.services.broker_refresh_margin.as_secs_f64();
        let mut tx = tenancy::begin(&ctx.pool, self.tenant_id).await?;
        let Some(c) = sqlx::query!(
            r#"SELECT broker, status, refresh_token, generation,
                      expires_at > now() + make_interval(secs => $2) AS "fresh!"
               FROM broker_connections WHERE id = $1"#,
            self.connection_id,
            margin,
        )
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(());
        };
        tx.commit().await?;
        if c.status != "active" || c.fresh {
            return Ok(());
        }
        let Some(key) = ctx.services.secrets_key else {
            return Err(JobError::permanent(
                "PULSE_SECRETS_KEY is not set: broker tokens are stored sealed under it",
            ));
        };
        let Some(broker) = ctx.services.brokers.get(&c.broker) else {
            return Err(JobError::permanent(format!(
                "no OAuth client is configured for broker {:?} ([brokers.{}])",
                c.broker, c.broker
            )));
        };
        let refresh_token = secrets::resolve_with(&c.refresh_token, |_| None, || Ok(key))
            .map_err(|e| JobError::permanent(format!("the stored refresh token: {e}")))?;
        let outcome = brokers::refresh(
            &ctx.services.http,
            broker,
            &refresh_token,
            Duration::from_secs(20),
        )
        .await;
        let mut tx = tenancy::begin(&ctx.pool, self.tenant_id).await?;
        let failure = match outcome {
            Ok(new) => {
                let rotated = new.refresh_token.is_some();
                let stored = sqlx::query!(
                    "UPDATE broker_connections
                     SET access_token = $3, refresh_token = coalesce($4, refresh_token),
                         expires_at = now() + make_interval(secs => $5),
                         scopes = CASE WHEN cardinality($6::text[]) > 0 THEN $6 ELSE scopes END,
                         generation = generation + 1, refreshed_at = now(), last_error = NULL,
                         updated_at = now()
                     WHERE id = $1 AND generation = $2 AND status = 'active'",
                    self.connection_id,
                    c.generation,
                    secrets::seal(new.access_token.expose(), &key),
                    new.refresh_token
                        .as_ref()
                        .map(|t| secrets::seal(t.expose(), &key)),
                    new.expires_in.as_secs_f64(),
                    &new.scopes,
                )
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if stored == 0 {
                    // Not expected while refreshes of a connection run one at a time.
                    tracing::warn!(connection = %self.connection_id, "refreshed tokens not stored: the connection changed meanwhile");
                } else {
                    tenancy::audit(
                        &mut tx,
                        "broker_token_refreshed",
                        "broker_connection",
                        &self.connection_id.to_string(),
                        &serde_json::json!({
                            "broker": c.broker, "generation": c.generation + 1,
                            "expires_in_secs": new.expires_in.as_secs(), "rotated": rotated,
                        }),
                    )
                    .await?;
                }
                None
            }
            Err(RefreshError::NeedsReauth(why)) => {
                let reason = RefreshError::NeedsReauth(why).to_string();
                let flipped = sqlx::query_scalar!(
                    "UPDATE broker_connections SET status = 'needs_reauth', last_error = $3, updated_at = now()
                     WHERE id = $1 AND generation = $2 AND status = 'active'
                     RETURNING user_id",
                    self.connection_id,
                    c.generation,
                    reason,
                )
                .fetch_optional(&mut *tx)
                .await?;
                // Alerted once: only by the attempt that changed the status.
                if let Some(user) = flipped {
                    sqlx::query!(
                        "INSERT INTO alerts (tenant_id, user_id, kind, payload)
                         VALUES ($1, $2, 'broker_connection', $3)",
                        self.tenant_id,
                        user,
                        serde_json::json!({
                            "title": format!("Reconnect your {} account", c.broker),
                            "message": format!(
                                "{} no longer accepts this connection's authorisation (it lasts 7 days, or was revoked). Trading through it is stopped until you connect the account again.",
                                c.broker
                            ),
                        }),
                    )
                    .execute(&mut *tx)
                    .await?;
                    tenancy::audit(
                        &mut tx,
                        "broker_needs_reauth",
                        "broker_connection",
                        &self.connection_id.to_string(),
                        &serde_json::json!({"broker": c.broker, "reason": reason}),
                    )
                    .await?;
                }
                None
            }
            Err(e @ RefreshError::Client(_)) => Some(JobError::permanent(e.to_string())),
            Err(e) => Some(JobError::retryable(e.to_string())),
        };
        if let Some(error) = &failure {
            sqlx::query!(
                "UPDATE broker_connections SET last_error = $2, updated_at = now() WHERE id = $1",
                self.connection_id,
                error.to_string(),
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        failure.map_or(Ok(()), Err)
    }
}
