//! `send_alert` against a local server speaking Discord's webhook dialect.

use std::time::Duration;

use pulse_sims::discord_sink::{Sink, SinkOptions};
use serde_json::json;

use crate::helpers::*;

async fn sink(options: SinkOptions) -> (Sink, String) {
    let sink = Sink::new(options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sink.clone().serve(listener));
    (sink, format!("http://{addr}"))
}

fn alert_jobs() -> Vec<pulse_jobs::JobSpec> {
    vec![job::<pulse_jobs::send_alert::SendAlert>()]
}

pub(crate) async fn user_with_webhook(db: &TestDb, user: &str, url: &str) {
    sqlx::query("INSERT INTO notification_settings (tenant_id, user_id, discord_webhook_url) VALUES ($1, $2, $3)")
        .bind(TENANT)
        .bind(user)
        .bind(url)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn raise(db: &TestDb, user: &str, kind: &str, payload: serde_json::Value) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO alerts (tenant_id, user_id, kind, payload) VALUES ($1, $2, $3::alert_kind, $4) RETURNING id",
    )
    .bind(TENANT)
    .bind(user)
    .bind(kind)
    .bind(payload)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

async fn alert_status(
    db: &TestDb,
    id: i64,
) -> (
    String,
    Option<String>,
    Option<chrono::DateTime<chrono::Utc>>,
) {
    sqlx::query_as("SELECT status, last_error, sent_at FROM alerts WHERE id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_alert_becomes_one_colour_coded_embed_within_discords_limits() {
    let db = TestDb::new(&[]).await;
    let (sink, base) = sink(SinkOptions::default()).await;
    user_with_webhook(&db, "u1", &format!("{base}/api/webhooks/123/tok")).await;
    let fields: Vec<_> = (0..40)
        .map(|i| json!({"name": format!("leg {i}"), "value": "x".repeat(900)}))
        .collect();
    let id = raise(
        &db,
        "u1",
        "order_execution",
        json!({"title": "Filled", "message": "y".repeat(5000), "fields": fields}),
    )
    .await;
    let worker = db.start_worker(alert_jobs(), 4).await;
    db.drain().await;
    worker.shutdown().await.unwrap();
    let (status, _, sent_at) = alert_status(&db, id).await;
    assert_eq!(status, "sent");
    assert!(sent_at.is_some());
    let received = sink.received();
    assert_eq!(received.len(), 1, "the sink validated and accepted it");
    let embed = &received[0].message.embeds[0];
    assert_eq!(embed.color, Some(0x2ECC71));
    assert_eq!(embed.title.as_deref(), Some("Filled"));
    assert!(received[0].message.text_len() <= pulse_domain::discord::limits::TOTAL);
    assert!(embed.fields.len() <= 25);
    assert!(
        embed.fields.iter().any(|f| f.value.ends_with('…')),
        "cut visibly"
    );
}

#[tokio::test]
async fn a_429_is_honoured_and_every_alert_is_sent_without_using_attempts() {
    let db = TestDb::new(&[]).await;
    let (sink, base) = sink(SinkOptions {
        per_window: 2,
        window: Duration::from_millis(1500),
    })
    .await;
    user_with_webhook(&db, "u1", &format!("{base}/api/webhooks/555/tok")).await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            raise(
                &db,
                "u1",
                "price_alert",
                json!({"message": format!("BTC crossed {i}")}),
            )
            .await,
        );
    }
    let worker = db.start_worker(alert_jobs(), 8).await;
    wait_until("every alert is sent", Duration::from_secs(30), || async {
        db.count("SELECT count(*) FROM alerts WHERE status = 'sent'")
            .await
            == 5
    })
    .await;
    worker.shutdown().await.unwrap();
    assert_eq!(sink.received().len(), 5);
    // 5 messages at 2 per 1.5 s need at least two waits for the window.
    let sent: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT sent_at FROM alerts ORDER BY sent_at")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(
        sent[4] - sent[0] >= chrono::Duration::milliseconds(2900),
        "{sent:?}"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.jobs WHERE job_name = 'send_alert' AND attempts = 1 AND state = 'completed'").await,
        5,
        "snoozes for the rate limit used no attempt"
    );
}

#[tokio::test]
async fn a_404_disables_the_webhook_and_ends_the_job() {
    let db = TestDb::new(&[]).await;
    let (sink, base) = sink(SinkOptions::default()).await;
    user_with_webhook(&db, "u1", &format!("{base}/api/webhooks/gone42/tok")).await;
    let id = raise(&db, "u1", "system", json!({"message": "hello"})).await;
    let worker = db.start_worker(alert_jobs(), 4).await;
    db.drain().await;
    let (status, error, _) = alert_status(&db, id).await;
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains("404"));
    let disabled: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT discord_disabled_at FROM notification_settings WHERE user_id = 'u1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(disabled.is_some());
    assert_eq!(
        db.count(
            "SELECT count(*) FROM fleet.jobs WHERE job_name = 'send_alert' AND state = 'completed'"
        )
        .await,
        1
    );
    // The next alert of that user is not sent to the dead webhook.
    let next = raise(&db, "u1", "system", json!({"message": "again"})).await;
    db.drain().await;
    worker.shutdown().await.unwrap();
    assert_eq!(alert_status(&db, next).await.0, "skipped");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn an_unreachable_webhook_retries_and_its_token_never_reaches_an_error() {
    let db = TestDb::new(&[]).await;
    let token = "SuperSecretWebhookToken123";
    user_with_webhook(
        &db,
        "u1",
        &format!("http://127.0.0.1:9/api/webhooks/1/{token}"),
    )
    .await;
    let id = raise(&db, "u1", "trade_signal", json!({"message": "buy"})).await;
    let worker = db.start_worker(alert_jobs(), 4).await;
    let job: i64 = sqlx::query_scalar("SELECT id FROM fleet.jobs WHERE job_name = 'send_alert'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    wait_until(
        "the first attempt failed",
        Duration::from_secs(10),
        || async {
            db.job(job)
                .await
                .errors
                .as_array()
                .is_some_and(|e| !e.is_empty())
        },
    )
    .await;
    worker.shutdown().await.unwrap();
    let row = db.job(job).await;
    assert_eq!(row.state, "available", "retried with backoff");
    assert_eq!(row.errors[0]["kind"], "retryable");
    let (_, last_error, _) = alert_status(&db, id).await;
    let everything = format!("{} {}", row.errors, last_error.unwrap_or_default());
    assert!(everything.contains("Discord unreachable"), "{everything}");
    assert!(
        !everything.contains(token),
        "the webhook token leaked: {everything}"
    );
}
