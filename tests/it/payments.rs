//! Stripe webhooks over real HTTP into `process_payment`.

use std::time::Duration;

use pulse_fleet::web::signature;
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "whsec_test_current";
const OLD_SECRET: &str = "whsec_test_previous";

async fn serve(db: &TestDb) -> String {
    let base = db
        .serve_web(|s| {
            s.stripe.webhook_secrets = format!("{SECRET},{OLD_SECRET}");
            s.web.max_body_bytes = 64 * 1024;
        })
        .await;
    format!("{base}/webhooks/stripe")
}

fn event(id: &str, kind: &str, created: i64, object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "object": "event", "type": kind, "created": created, "livemode": false,
        "data": {"object": object}
    }))
    .unwrap()
}

async fn post(url: &str, body: &[u8], signature: Option<String>) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(sig) = signature {
        request = request.header("Stripe-Signature", sig);
    }
    request.send().await.unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn signed(body: &[u8]) -> Option<String> {
    Some(signature::stripe_header(SECRET, body, now()))
}

/// Routes a Stripe customer to the test tenant, as its processed checkout would.
async fn route(db: &TestDb, customer: &str) {
    sqlx::query(
        "INSERT INTO billing.customer_tenants (stripe_customer_id, tenant_id) VALUES ($1, $2)",
    )
    .bind(customer)
    .bind(TENANT)
    .execute(&db.pool)
    .await
    .unwrap();
}

fn payment_jobs() -> Vec<pulse_jobs::JobSpec> {
    vec![job::<pulse_jobs::process_payment::ProcessPayment>()]
}

#[tokio::test]
async fn a_bad_signature_is_refused_before_anything_is_stored() {
    let db = TestDb::new(&[]).await;
    let url = serve(&db).await;
    let body = event(
        "evt_1",
        "payment_intent.succeeded",
        now(),
        json!({"customer": "cus_1"}),
    );
    let tampered = event(
        "evt_1",
        "payment_intent.succeeded",
        now(),
        json!({"customer": "cus_2"}),
    );
    let cases = [
        (None, &body, "missing_signature"),
        (signed(&body), &tampered, "invalid_signature"),
        (
            Some(signature::stripe_header("whsec_someone_else", &body, now())),
            &body,
            "invalid_signature",
        ),
        (
            Some(signature::stripe_header(SECRET, &body, now() - 301)),
            &body,
            "expired_signature",
        ),
        (Some("t=abc,v1=00".into()), &body, "invalid_signature"),
    ];
    for (sig, payload, code) in cases {
        let response = post(&url, payload, sig).await;
        assert_eq!(response.status(), 401);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], code);
    }
    assert_eq!(
        db.count("SELECT count(*) FROM billing.stripe_events").await,
        0
    );
    assert_eq!(db.count("SELECT count(*) FROM fleet.jobs").await, 0);
}

#[tokio::test]
async fn signatures_from_the_previous_secret_and_with_several_v1_pass_during_a_rotation() {
    let db = TestDb::new(&[]).await;
    let url = serve(&db).await;
    let body = event("evt_rot", "customer.created", now(), json!({"id": "cus_9"}));
    let old = signature::stripe_header(OLD_SECRET, &body, now());
    assert_eq!(post(&url, &body, Some(old)).await.status(), 200);
    let body = event(
        "evt_rot2",
        "customer.created",
        now(),
        json!({"id": "cus_9"}),
    );
    let t = now();
    let several = format!(
        "t={t},v1={},v1={}",
        signature::stripe_v1("whsec_unknown", &body, t),
        signature::stripe_v1(SECRET, &body, t)
    );
    assert_eq!(post(&url, &body, Some(several)).await.status(), 200);
}

#[tokio::test]
async fn malformed_or_oversized_bodies_get_a_clear_error() {
    let db = TestDb::new(&[]).await;
    let url = serve(&db).await;
    let not_json = b"{not json".to_vec();
    let response = post(&url, &not_json, signed(&not_json)).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "malformed_json"
    );
    let not_event = br#"{"hello": "world"}"#.to_vec();
    let response = post(&url, &not_event, signed(&not_event)).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "not_a_stripe_event"
    );
    let huge = event("evt_big", "x", now(), json!({"blob": "x".repeat(100_000)}));
    assert_eq!(post(&url, &huge, signed(&huge)).await.status(), 413);
    assert_eq!(
        db.count("SELECT count(*) FROM billing.stripe_events").await,
        0
    );
}

#[tokio::test]
async fn a_duplicate_delivery_answers_200_and_credits_once() {
    let db = TestDb::new(&[]).await;
    route(&db, "cus_1").await;
    let url = serve(&db).await;
    let worker = db.start_worker(payment_jobs(), 4).await;
    let body = event(
        "evt_pay",
        "payment_intent.succeeded",
        now(),
        json!({"id": "pi_1", "customer": "cus_1", "amount": 2550, "metadata": {"credits": "25.50"}}),
    );
    let first: Value = post(&url, &body, signed(&body)).await.json().await.unwrap();
    assert_eq!(first, json!({"received": true, "duplicate": false}));
    db.drain().await;
    let again = post(&url, &body, signed(&body)).await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["duplicate"], true);
    db.drain().await;
    worker.shutdown().await.unwrap();
    assert_eq!(
        db.count("SELECT count(*) FROM billing.credit_ledger").await,
        1
    );
    let balance: String = sqlx::query_scalar(
        "SELECT balance::text FROM billing.credit_balances WHERE stripe_customer_id = 'cus_1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(balance, "25.5000");
}

#[tokio::test]
async fn subscription_events_in_any_order_end_in_the_newest_state() {
    let db = TestDb::new(&[]).await;
    route(&db, "cus_1").await;
    let url = serve(&db).await;
    let t = now() - 100;
    let sub = |status: &str, tier: &str| {
        json!({"id": "sub_1", "customer": "cus_1", "status": status, "current_period_end": t + 3600,
               "items": {"data": [{"price": {"lookup_key": tier}}]}})
    };
    // Delivered and processed newest first: updated (t+10), then created (t).
    let updated = event(
        "evt_upd",
        "customer.subscription.updated",
        t + 10,
        sub("active", "pro"),
    );
    let created = event(
        "evt_new",
        "customer.subscription.created",
        t,
        sub("incomplete", "basic"),
    );
    let worker = db.start_worker(payment_jobs(), 4).await;
    for body in [&updated, &created] {
        assert_eq!(post(&url, body, signed(body)).await.status(), 200);
        db.drain().await;
    }
    let state: (String, Option<String>) = sqlx::query_as(
        "SELECT status, tier FROM billing.subscriptions WHERE stripe_subscription_id = 'sub_1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(state, ("active".into(), Some("pro".into())));
    let outcome: String =
        sqlx::query_scalar("SELECT outcome FROM billing.stripe_events WHERE event_id = 'evt_new'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(outcome, "stale");
    let deleted = event(
        "evt_del",
        "customer.subscription.deleted",
        t + 20,
        sub("canceled", "pro"),
    );
    post(&url, &deleted, signed(&deleted)).await;
    db.drain().await;
    worker.shutdown().await.unwrap();
    let status: String = sqlx::query_scalar(
        "SELECT status FROM billing.subscriptions WHERE stripe_subscription_id = 'sub_1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(status, "canceled");
}

#[tokio::test]
async fn a_failed_payment_alerts_the_customers_user_and_unknown_types_are_ignored() {
    let db = TestDb::new(&[]).await;
    let url = serve(&db).await;
    let mut jobs = payment_jobs();
    jobs.push(job::<pulse_jobs::send_alert::SendAlert>());
    let worker = db.start_worker(jobs, 4).await;
    // The failure arrives before the checkout that tells whose customer cus_7 is: it
    // waits (retries) for the route instead of being lost or misfiled.
    let failed = event(
        "evt_fail",
        "invoice.payment_failed",
        now(),
        json!({"id": "in_1", "number": "INV-1", "customer": "cus_7", "amount_due": 1999, "currency": "usd", "attempt_count": 2}),
    );
    post(&url, &failed, signed(&failed)).await;
    wait_until(
        "the failure waits for its tenant",
        Duration::from_secs(10),
        || async {
            db.count(
                "SELECT count(*) FROM fleet.jobs WHERE job_name = 'process_payment'
               AND errors::text LIKE '%customer cus_7 has no tenant yet%'",
            )
            .await
                == 1
        },
    )
    .await;
    let checkout = event(
        "evt_co",
        "checkout.session.completed",
        now(),
        json!({"id": "cs_1", "customer": "cus_7", "client_reference_id": "user-7",
               "customer_details": {"email": "u7@example.com"}, "metadata": {"tenant_id": TENANT}}),
    );
    post(&url, &checkout, signed(&checkout)).await;
    wait_until(
        "the failure is processed",
        Duration::from_secs(15),
        || async {
            db.count("SELECT count(*) FROM billing.stripe_events WHERE processed_at IS NOT NULL")
                .await
                == 2
        },
    )
    .await;
    let unknown = event(
        "evt_odd",
        "radar.early_fraud_warning.created",
        now(),
        json!({"id": "issfr_1"}),
    );
    post(&url, &unknown, signed(&unknown)).await;
    db.drain().await;
    worker.shutdown().await.unwrap();
    let alert: (String, String, Value, String) =
        sqlx::query_as("SELECT kind::text, user_id, payload, status FROM alerts")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (alert.0.as_str(), alert.1.as_str()),
        ("payment_failed", "user-7")
    );
    assert!(
        alert.2["message"].as_str().unwrap().contains("19.99 USD"),
        "{}",
        alert.2
    );
    let ignored: String =
        sqlx::query_scalar("SELECT outcome FROM billing.stripe_events WHERE event_id = 'evt_odd'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(ignored, "ignored");
    // The alert was enqueued for delivery by its trigger.
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.jobs WHERE job_name = 'send_alert'")
            .await,
        1
    );
}
