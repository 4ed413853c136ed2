//! `send_alert`: delivers one alert to its user's Discord webhook as a colour-coded
//! embed.
//!
//! Enqueued by the trigger on `alerts`, keyed by the alert id. Idempotent: an alert
//! not `pending` is done. Discord's answers decide the rest: 2xx marks it sent;
//! 429 snoozes the job for `retry_after` (no attempt used); 404 disables the
//! webhook and ends the job; other 4xx fail the alert for good; 5xx and transport
//! errors retry with backoff. The per-webhook rate budget is shared by all worker
//! processes through `discord_rate_limits`, filled from the X-RateLimit-* headers: a
//! send waits (snoozes) while the budget of its webhook is spent. The webhook URL
//! holds a token: it is never logged, and errors are stripped of it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::{Job, JobContext, JobError};
use pulse_domain::{
    bounds::wait_from_secs,
    discord::{self, Delivery, Embed, Field, Footer, Message, RateLimit},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendAlert {
    pub alert_id: i64,
    pub tenant_id: uuid::Uuid,
}

/// Colour and default title per alert kind.
pub fn style(kind: &str) -> (u32, &'static str) {
    match kind {
        "trade_signal" => (0x3498DB, "Trade signal"),
        "order_execution" => (0x2ECC71, "Order executed"),
        "price_alert" => (0xF1C40F, "Price alert"),
        "payment_failed" => (0xE74C3C, "Payment failed"),
        "broker_connection" => (0xE67E22, "Broker connection"),
        _ => (0x95A5A6, "System"),
    }
}

/// The message for an alert: `payload.title`, `payload.message` and `payload.fields`
/// (a list of `{name, value, inline}` or an object), within Discord's limits.
pub fn render(kind: &str, payload: &Value, created_at: DateTime<Utc>) -> Message {
    let (color, default_title) = style(kind);
    // Executions are coloured by side: buys green, sells orange.
    let color = match (kind, payload.get("side").and_then(Value::as_str)) {
        ("order_execution", Some("sell")) => 0xE67E22,
        _ => color,
    };
    let fields = match payload.get("fields") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|f| {
                Some(Field {
                    name: display(f.get("name")?),
                    value: display(f.get("value")?),
                    inline: f.get("inline").and_then(Value::as_bool).unwrap_or(false),
                })
            })
            .collect(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| Field {
                name: k.clone(),
                value: display(v),
                inline: true,
            })
            .collect(),
        _ => vec![],
    };
    Message {
        content: None,
        embeds: vec![Embed {
            title: Some(
                payload
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or(default_title)
                    .to_owned(),
            ),
            description: payload.get("message").map(display),
            color: Some(color),
            fields,
            footer: Some(Footer {
                text: format!("Pulse Fleet · {kind}"),
            }),
            timestamp: Some(created_at.to_rfc3339()),
        }],
    }
    .fit()
}

fn display(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The budget row's key: a digest of the URL, so the token is not stored twice.
pub fn webhook_key(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

impl Job for SendAlert {
    const NAME: &'static str = "send_alert";
    const MAX_ATTEMPTS: i32 = 12;
    const TIMEOUT: Duration = Duration::from_secs(60);

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = pulse_domain::tenancy::begin(&ctx.pool, self.tenant_id).await?;
        let row = sqlx::query!(
            r#"SELECT a.kind::text AS "kind!", a.payload, a.status, a.created_at,
                      s.discord_webhook_url AS "own_url?", s.discord_disabled_at AS "disabled_at?"
               FROM alerts a
               LEFT JOIN notification_settings s ON s.tenant_id = a.tenant_id AND s.user_id = a.user_id
               WHERE a.id = $1"#,
            self.alert_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let Some(row) = row else {
            return Err(JobError::permanent(format!("no alert {}", self.alert_id)));
        };
        let (kind, payload, status, created_at, own_url, disabled_at) = (
            row.kind,
            row.payload,
            row.status,
            row.created_at,
            row.own_url,
            row.disabled_at,
        );
        if status != "pending" {
            return Ok(());
        }
        let url = match (own_url, disabled_at) {
            (Some(url), None) => {
                // The tenant chose this URL: only Discord's webhook endpoint (or an
                // origin the operator allowed) is ever called.
                if let Err(why) = ctx.services.discord_webhooks.check(&url) {
                    let reason = format!("webhook URL refused: {why}");
                    self.finish(&ctx, "failed", Some(&reason)).await?;
                    return Err(JobError::permanent(reason));
                }
                Some(url)
            }
            // The operator's fallback (configuration, not tenant input).
            _ => ctx.services.discord_fallback_url.clone(),
        };
        let Some(url) = url else {
            return self
                .finish(&ctx, "skipped", Some("no Discord webhook configured"))
                .await;
        };
        let key = webhook_key(&url);
        let max_wait = ctx.services.max_external_wait;
        if let Some(wait) = take_budget(&ctx, &key, max_wait).await? {
            return Err(JobError::Snooze(wait));
        }
        self.confined(
            &ctx,
            sqlx::query!(
                "UPDATE alerts SET attempts = attempts + 1 WHERE id = $1",
                self.alert_id,
            ),
        )
        .await?;
        let message = render(&kind, &payload, created_at);
        let delivery = discord::execute(&ctx.services.http, &url, &message, max_wait)
            .await
            .map_err(|e| JobError::retryable(format!("Discord unreachable: {e}")));
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => {
                self.note_error(&ctx, &e.to_string()).await?;
                return Err(e);
            }
        };
        match delivery {
            Delivery::Sent(rate) => {
                record_rate(&ctx, &key, &rate, None).await?;
                self.finish(&ctx, "sent", None).await
            }
            Delivery::RateLimited { retry_after, rate } => {
                record_rate(&ctx, &key, &rate, Some(retry_after)).await?;
                self.note_error(&ctx, &format!("rate limited for {retry_after:?}"))
                    .await?;
                Err(JobError::Snooze(retry_after))
            }
            Delivery::Gone => {
                self.confined(
                    &ctx,
                    sqlx::query!(
                        "UPDATE notification_settings SET discord_disabled_at = now(),
                                discord_disabled_why = 'Discord answered 404: the webhook no longer exists'
                         WHERE discord_webhook_url = $1",
                        &url,
                    ),
                )
                .await?;
                tracing::warn!(
                    alert.id = self.alert_id,
                    "Discord webhook gone (404): disabled for its user"
                );
                self.finish(&ctx, "failed", Some("webhook gone (404); disabled"))
                    .await
            }
            Delivery::Rejected { status, code } => {
                let code = code.map_or(String::new(), |c| format!(", code {c}"));
                let reason = format!("Discord refused it ({status}{code})");
                self.finish(&ctx, "failed", Some(&reason)).await?;
                Err(JobError::permanent(reason))
            }
            Delivery::Unavailable { status } => {
                let e = format!("Discord answered {status}");
                self.note_error(&ctx, &e).await?;
                Err(JobError::retryable(e))
            }
        }
    }
}

impl SendAlert {
    /// Runs one statement in a transaction confined to the alert's tenant.
    async fn confined(
        &self,
        ctx: &JobContext,
        statement: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::Result<()> {
        let mut tx = pulse_domain::tenancy::begin(&ctx.pool, self.tenant_id).await?;
        statement.execute(&mut *tx).await?;
        tx.commit().await
    }

    async fn finish(
        &self,
        ctx: &JobContext,
        status: &str,
        error: Option<&str>,
    ) -> Result<(), JobError> {
        self.confined(
            ctx,
            sqlx::query!(
                "UPDATE alerts SET status = $2, last_error = coalesce($3, last_error),
                        sent_at = CASE WHEN $2 = 'sent' THEN now() END
                 WHERE id = $1 AND status = 'pending'",
                self.alert_id,
                status,
                error,
            ),
        )
        .await?;
        // Deliveries and failures by outcome: sent, failed, skipped.
        ctx.services.metrics.add("alerts", status, "", 1.0);
        Ok(())
    }

    async fn note_error(&self, ctx: &JobContext, error: &str) -> Result<(), JobError> {
        ctx.services
            .metrics
            .add("alerts", "attempt_failed", "", 1.0);
        self.confined(
            ctx,
            sqlx::query!(
                "UPDATE alerts SET last_error = $2 WHERE id = $1",
                self.alert_id,
                error,
            ),
        )
        .await?;
        Ok(())
    }
}

/// Takes one request from the webhook's shared budget. Returns how long to wait when
/// it is spent (never more than `max_wait`, whatever the row says).
async fn take_budget(
    ctx: &JobContext,
    key: &str,
    max_wait: Duration,
) -> Result<Option<Duration>, JobError> {
    let taken = sqlx::query_scalar!(
        "UPDATE discord_rate_limits SET remaining = remaining - 1, updated_at = now()
         WHERE webhook_key = $1 AND (remaining > 0 OR reset_at <= now())
         RETURNING remaining",
        key,
    )
    .fetch_optional(&ctx.pool)
    .await?;
    if taken.is_some() {
        return Ok(None);
    }
    // The wait is computed by the database, in seconds: no far-off timestamp is ever
    // decoded or subtracted here.
    let reset: Option<f64> = sqlx::query_scalar!(
        "SELECT extract(epoch FROM reset_at - now())::float8 FROM discord_rate_limits WHERE webhook_key = $1",
        key,
    )
    .fetch_optional(&ctx.pool)
    .await?
    .flatten();
    Ok(reset.map(|secs| wait_from_secs(secs, max_wait).max(Duration::from_millis(50))))
}

/// Stores what Discord said about the budget (a 429 empties it until `retry_after`).
async fn record_rate(
    ctx: &JobContext,
    key: &str,
    rate: &RateLimit,
    retry_after: Option<Duration>,
) -> Result<(), JobError> {
    let (remaining, reset_after) = match retry_after {
        Some(wait) => (0, Some(wait)),
        None => match (rate.remaining, rate.reset_after) {
            (Some(r), reset) => (r, reset),
            _ => return Ok(()),
        },
    };
    let reset_after = reset_after.unwrap_or(Duration::from_secs(1));
    sqlx::query!(
        "INSERT INTO discord_rate_limits (webhook_key, bucket, remaining, reset_at)
         VALUES ($1, $2, $3, now() + make_interval(secs => $4))
         ON CONFLICT (webhook_key) DO UPDATE SET bucket = coalesce(excluded.bucket, discord_rate_limits.bucket),
             remaining = excluded.remaining, reset_at = excluded.reset_at, updated_at = now()",
        key,
        rate.bucket.as_deref(),
        remaining.clamp(0, i64::from(i32::MAX)) as i32,
        reset_after.as_secs_f64(),
    )
    .execute(&ctx.pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executions_are_coloured_by_side_and_carry_their_fields() {
        let at = Utc::now();
        let buy =
            serde_json::json!({"side": "buy", "fields": [{"name": "Symbol", "value": "AAPL"}]});
        let sell = serde_json::json!({"side": "sell"});
        let bought = render("order_execution", &buy, at);
        assert_eq!(bought.embeds[0].color, Some(0x2ECC71));
        assert_eq!(bought.embeds[0].fields[0].value, "AAPL");
        assert_eq!(
            render("order_execution", &sell, at).embeds[0].color,
            Some(0xE67E22)
        );
    }
}
