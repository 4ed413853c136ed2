//! Broker connections' OAuth tokens refreshed before they expire, against a local token
//! endpoint in Schwab's dialect (`pulse_sims::oauth_broker`): exactly once across
//! three workers, a rotated refresh token replacing the old, `invalid_grant` marking
//! the connection and alerting its user once, a 5xx retried; no token ever in a job's
//! payload or error.

use std::{collections::HashMap, time::Duration};

use pulse_domain::{Services, brokers::BrokerOAuth, secrets};
use pulse_jobs::{
    Env, refresh_broker_token::RefreshBrokerToken, refresh_broker_tokens::RefreshBrokerTokens,
};
use pulse_queue::enqueue::EnqueueOptions;
use pulse_sims::oauth_broker::{Issued, OAuthBroker, OAuthOptions};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

const KEY: [u8; 32] = [9; 32];

struct Rig {
    db: TestDb,
    broker: OAuthBroker,
    services: Services,
}

async fn rig() -> Rig {
    let db = TestDb::new(&[]).await;
    let options = OAuthOptions::default();
    let broker = OAuthBroker::new(options.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/oauth/token", listener.local_addr().unwrap());
    tokio::spawn(broker.clone().serve(listener));
    let mut services = test_services();
    services.secrets_key = Some(KEY);
    services.brokers = HashMap::from([(
        "schwab".to_string(),
        BrokerOAuth {
            token_url: url,
            client_id: options.client_id,
            client_secret: secrets::Secret::new(options.client_secret),
        },
    )]);
    Rig {
        db,
        broker,
        services,
    }
}

impl Rig {
    /// A connection authorised at the broker whose access token expires in `secs`.
    async fn connection(&self, user: &str, secs: i64) -> (Uuid, Issued) {
        let issued = self.broker.authorize();
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO broker_connections (tenant_id, user_id, broker, scopes, access_token,
                 refresh_token, expires_at, refresh_expires_at)
             VALUES ($1, $2, 'schwab', '{api}', $3, $4, now() + make_interval(secs => $5),
                     now() + interval '7 days')
             RETURNING id",
        )
        .bind(TENANT)
        .bind(user)
        .bind(secrets::seal(&issued.access_token, &KEY))
        .bind(secrets::seal(&issued.refresh_token, &KEY))
        .bind(secs as f64)
        .fetch_one(&self.db.pool)
        .await
        .unwrap();
        (id, issued)
    }

    async fn worker(&self) -> pulse_queue::worker::WorkerHandle {
        let env = Env::new(self.services.clone());
        self.db
            .start_worker(
                vec![
                    pulse_jobs::spec::<RefreshBrokerToken>(&env),
                    pulse_jobs::spec::<RefreshBrokerTokens>(&env),
                ],
                4,
            )
            .await
    }

    /// A scheduler's tick of the fan-out (each its own key, as separate ticks are).
    async fn tick(&self) {
        self.db
            .enqueue_with(
                "refresh_broker_tokens",
                json!({}),
                EnqueueOptions {
                    idempotency_key: Some(Uuid::new_v4().to_string()),
                    ..Default::default()
                },
            )
            .await;
    }

    /// (status, generation, opened access token, opened refresh token, seconds left).
    async fn state(&self, id: Uuid) -> (String, i32, String, String, f64) {
        let (status, generation, access, refresh, left): (String, i32, String, String, f64) =
            sqlx::query_as(
                "SELECT status, generation, access_token, refresh_token,
                        extract(epoch FROM expires_at - now())::float8
                 FROM broker_connections WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap();
        let open = |r: &str| {
            secrets::resolve_with(r, |_| None, || Ok(KEY))
                .unwrap()
                .expose()
                .to_string()
        };
        (status, generation, open(&access), open(&refresh), left)
    }

    /// Waits until no refresh job is due or running (the alerts they raise wait for
    /// a `send_alert` worker this rig does not run).
    async fn settle(&self) {
        wait_until(
            "the refresh jobs settle",
            Duration::from_secs(30),
            || async {
                self.db
                    .count(
                        "SELECT count(*) FROM fleet.jobs WHERE job_name LIKE 'refresh_broker_%'
                     AND (state = 'running' OR (state = 'available' AND run_at <= now()))",
                    )
                    .await
                    == 0
            },
        )
        .await;
    }

    /// Every job's payload and errors, as text: where no token may appear.
    async fn job_text(&self) -> String {
        sqlx::query_scalar(
            "SELECT coalesce(string_agg(payload::text || errors::text, ' '), '') FROM fleet.jobs",
        )
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }
}

#[tokio::test]
async fn a_token_near_expiry_is_refreshed_once_by_one_of_three_workers_and_the_rotated_refresh_token_replaces_the_old()
 {
    let rig = rig().await;
    let (id, issued) = rig.connection("trader-1", 60).await;
    // Not due: expires after the margin.
    let (later, _) = rig.connection("trader-2", 3600).await;
    let workers = [rig.worker().await, rig.worker().await, rig.worker().await];
    for _ in 0..3 {
        rig.tick().await;
    }
    rig.settle().await;

    assert_eq!(rig.broker.requests(), 1, "one refresh request in all");
    let (status, generation, access, refresh, left) = rig.state(id).await;
    assert_eq!((status.as_str(), generation), ("active", 1));
    assert_ne!(access, issued.access_token);
    assert_ne!(
        refresh, issued.refresh_token,
        "the rotated refresh token is stored"
    );
    assert!(rig.broker.is_live(&refresh) && !rig.broker.is_live(&issued.refresh_token));
    assert!(left > 1700.0 && left <= 1800.0, "{left}");
    assert_eq!(
        rig.state(later).await.1,
        0,
        "a token not yet due is left alone"
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE event_type = 'broker_token_refreshed' AND subject_id = $1",
    )
    .bind(id.to_string())
    .fetch_one(&rig.db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    // Fresh now: the next ticks ask for nothing.
    rig.tick().await;
    rig.settle().await;
    assert_eq!(
        rig.db
            .count("SELECT count(*) FROM fleet.jobs WHERE job_name = 'refresh_broker_token'")
            .await,
        1
    );
    let text = rig.job_text().await;
    for token in [
        &issued.access_token,
        &issued.refresh_token,
        &access,
        &refresh,
    ] {
        assert!(!text.contains(token.as_str()), "a token in a job row");
    }
    for w in workers {
        w.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_refused_refresh_marks_the_connection_for_reauthorisation_and_alerts_its_user_once() {
    let rig = rig().await;
    let (id, issued) = rig.connection("trader-1", 30).await;
    rig.broker.revoke(&issued.refresh_token);
    let worker = rig.worker().await;
    rig.tick().await;
    rig.settle().await;
    // A duplicate attempt (another key) after the status changed: nothing more.
    rig.db
        .enqueue_with(
            "refresh_broker_token",
            json!({"tenant_id": TENANT, "connection_id": id}),
            EnqueueOptions {
                idempotency_key: Some("again".into()),
                ..Default::default()
            },
        )
        .await;
    rig.tick().await;
    rig.settle().await;

    let (status, generation, ..) = rig.state(id).await;
    assert_eq!((status.as_str(), generation), ("needs_reauth", 0));
    let alerts: Vec<(String, String)> =
        sqlx::query_as("SELECT user_id, kind::text FROM alerts ORDER BY id")
            .fetch_all(&rig.db.pool)
            .await
            .unwrap();
    assert_eq!(
        alerts,
        [("trader-1".to_string(), "broker_connection".to_string())]
    );
    let last_error: String =
        sqlx::query_scalar("SELECT last_error FROM broker_connections WHERE id = $1")
            .bind(id)
            .fetch_one(&rig.db.pool)
            .await
            .unwrap();
    assert!(last_error.contains("invalid_grant"), "{last_error}");
    assert_eq!(
        rig.db
            .count(
                "SELECT count(*) FROM fleet.jobs
                 WHERE job_name LIKE 'refresh_broker_%' AND state <> 'completed'"
            )
            .await,
        0,
        "a refusal is an outcome, not a failure"
    );
    assert!(!rig.job_text().await.contains(&issued.refresh_token));
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unavailable_token_endpoint_is_retried_and_the_refresh_then_lands() {
    let rig = rig().await;
    let (id, issued) = rig.connection("trader-1", 30).await;
    rig.broker
        .fail_next(2, axum::http::StatusCode::SERVICE_UNAVAILABLE);
    let worker = rig.worker().await;
    rig.tick().await;
    let job = wait_for_job(&rig.db, "refresh_broker_token").await;
    let row = rig
        .db
        .wait_for_state(job, "completed", Duration::from_secs(40))
        .await;
    let errors = row.errors.as_array().unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e["error"].as_str().unwrap().contains("HTTP 503"))
    );
    assert_eq!(rig.state(id).await.1, 1);
    assert_eq!(rig.broker.requests(), 3);
    assert!(!rig.job_text().await.contains(&issued.refresh_token));
    worker.shutdown().await.unwrap();
}

/// The id of the first job of `name`, once there is one.
async fn wait_for_job(db: &TestDb, name: &str) -> i64 {
    wait_until(
        &format!("a {name} job"),
        Duration::from_secs(20),
        || async {
            db.count(&format!(
                "SELECT count(*) FROM fleet.jobs WHERE job_name = '{name}'"
            ))
            .await
                > 0
        },
    )
    .await;
    sqlx::query_scalar("SELECT min(id) FROM fleet.jobs WHERE job_name = $1")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}
