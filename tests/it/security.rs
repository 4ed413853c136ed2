//! Attacks from the trust review (issue 8), one test per finding. Each failed on the
//! code before the fixes; the numbers are the issue's.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, http::StatusCode, routing::any};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

use crate::helpers::*;

/// A login role that is only a member of `pulse_client`, as a client of the platform
/// would be (through its gateway, or stolen credentials). Dropped at the end.
pub(crate) struct ClientLogin {
    name: String,
    url: String,
}

impl ClientLogin {
    pub(crate) async fn new(db: &TestDb) -> Self {
        let name = format!("pf_client_{}", Uuid::new_v4().simple());
        db.pool
            .execute(sqlx::AssertSqlSafe(format!(
                "CREATE ROLE {name} LOGIN PASSWORD 'client-pw' IN ROLE pulse_client"
            )))
            .await
            .unwrap();
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_username(&name).unwrap();
        url.set_password(Some("client-pw")).unwrap();
        Self {
            name,
            url: url.to_string(),
        }
    }

    pub(crate) async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    pub(crate) async fn drop_in(self, db: &TestDb) {
        db.pool
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP OWNED BY {0}; DROP ROLE {0}",
                self.name
            )))
            .await
            .unwrap();
    }
}

/// Makes `user` a member of `tenant`.
pub(crate) async fn member(db: &TestDb, tenant: Uuid, user: &str) {
    sqlx::query("INSERT INTO tenant_members (tenant_id, user_id, role) VALUES ($1, $2, 'trader')")
        .bind(tenant)
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
}

/// What the gateway does for every client request: the verified user, then the tenant.
pub(crate) async fn as_gateway(conn: &mut PgConnection, user: Option<&str>, tenant: Uuid) {
    conn.execute("BEGIN").await.unwrap();
    if let Some(user) = user {
        sqlx::query("SELECT set_config('request.jwt.claims', $1, true)")
            .bind(json!({"sub": user, "role": "pulse_client"}).to_string())
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    sqlx::query("SELECT set_config('app.tenant_id', $1, true)")
        .bind(tenant.to_string())
        .execute(&mut *conn)
        .await
        .unwrap();
}

async fn other_tenant(db: &TestDb) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'other')")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn f01_a_client_cannot_run_code_as_a_definer_functions_owner() {
    let db = TestDb::new(&[]).await;
    let client = ClientLogin::new(&db).await;
    member(&db, TENANT, "mallory").await;
    let row: i64 = sqlx::query_scalar(
        "INSERT INTO user_symbols (tenant_id, user_id, symbol, timeframe) VALUES ($1, 'mallory', 'AAPL', '1h') RETURNING id",
    )
    .bind(TENANT)
    .fetch_one(&db.pool)
    .await
    .unwrap();

    // First wall: PUBLIC may not create temporary objects at all.
    let mut conn = client.connect().await;
    let refused = conn
        .execute("CREATE TEMP TABLE watcher_events (x int)")
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );

    // Second wall, with the first taken down: the definer function that writes
    // watcher_events on the client's behalf never resolves a name to pg_temp.
    db.pool
        .execute(sqlx::AssertSqlSafe(format!(
            "GRANT TEMPORARY ON DATABASE {} TO {}",
            db.name(),
            client.name
        )))
        .await
        .unwrap();
    let mut conn = client.connect().await;
    conn.execute(sqlx::AssertSqlSafe(format!(
        "CREATE TEMP TABLE watcher_events (id bigint, source_id bigint, source_version bigint,
             type text, record jsonb, old_record jsonb, received_at timestamptz);
         CREATE TEMP TABLE loot (secret_ref text);
         CREATE FUNCTION pg_temp.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO pg_temp.loot SELECT secret_ref FROM public.account_credentials;
             EXECUTE 'ALTER ROLE {} SUPERUSER';
             RETURN NEW;
         END $$;
         CREATE TRIGGER escalate BEFORE INSERT ON pg_temp.watcher_events
             FOR EACH ROW EXECUTE FUNCTION pg_temp.escalate();",
        client.name
    )))
    .await
    .unwrap();
    as_gateway(&mut conn, Some("mallory"), TENANT).await;
    sqlx::query("UPDATE user_symbols SET active = false WHERE id = $1")
        .bind(row)
        .execute(&mut conn)
        .await
        .unwrap();
    conn.execute("COMMIT").await.unwrap();
    let shadowed: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_temp.watcher_events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        shadowed, 0,
        "the definer function wrote the client's temp table"
    );
    drop(conn);
    let superuser: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
        .bind(&client.name)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!superuser, "the client made itself a superuser");
    assert_eq!(
        db.count(&format!(
            "SELECT count(*) FROM watcher_events WHERE source_id = {row} AND type = 'UPDATE'"
        ))
        .await,
        1,
        "the change went to the real inbox"
    );

    // And every definer function: a safe search_path, a plain owner.
    let unsafe_definers: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
         JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND (r.rolsuper OR r.rolbypassrls OR r.rolcanlogin
                OR NOT coalesce(p.proconfig @> ARRAY['search_path=pg_catalog, pg_temp'], false))",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(unsafe_definers.is_empty(), "{unsafe_definers:?}");
    client.drop_in(&db).await;
}

#[tokio::test]
async fn f02_a_client_cannot_reach_the_queue_nor_preclaim_anyones_key() {
    let db = TestDb::new(&[]).await;
    let client = ClientLogin::new(&db).await;
    member(&db, TENANT, "mallory").await;
    let mut conn = client.connect().await;
    for attack in [
        "SELECT payload, errors FROM fleet.jobs",
        "INSERT INTO fleet.stat_deltas (metric, job_name, delta) VALUES ('jobs', 'x', 1)",
        "SELECT fleet.enqueue('send_alert', '{\"alert_id\": 1}', 'alert:1')",
        "SELECT fleet.enqueue_batch('send_alert', ARRAY['{}'::jsonb], ARRAY['1'])",
    ] {
        let refused = conn.execute(attack).await.unwrap_err();
        assert!(
            refused.to_string().contains("permission denied"),
            "{attack}: {refused}"
        );
    }
    // The client's writes still enqueue their work, through triggers, under keys
    // namespaced by the table they come from.
    as_gateway(&mut conn, Some("mallory"), TENANT).await;
    let intent: Uuid = sqlx::query_scalar(
        "INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json) VALUES ($1, 'k1', '[]') RETURNING id",
    )
    .bind(TENANT)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    // ...and only a new intent: never a status the OMS decides (the platform's inserts
    // may name `status`, but only as pending: a restrictive policy).
    conn.execute("SAVEPOINT s").await.unwrap();
    let forged = sqlx::query(
        "INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json, status) VALUES ($1, 'k2', '[]', 'filled')",
    )
    .bind(TENANT)
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(
        forged.to_string().contains("row-level security"),
        "{forged}"
    );
    conn.execute("ROLLBACK TO SAVEPOINT s; COMMIT")
        .await
        .unwrap();
    drop(conn);
    let key: String = sqlx::query_scalar(
        "SELECT idempotency_key FROM fleet.jobs WHERE job_name = 'execute_intent'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(key, format!("intent:{intent}"));
    let alert: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (tenant_id, user_id, kind) VALUES ($1, 'u1', 'system') RETURNING id",
    )
    .bind(TENANT)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let key: String =
        sqlx::query_scalar("SELECT idempotency_key FROM fleet.jobs WHERE job_name = 'send_alert'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(key, format!("alert:{alert}"));
    client.drop_in(&db).await;
}

#[tokio::test]
async fn f03_a_clients_tenant_is_checked_against_its_verified_user() {
    let db = TestDb::new(&[]).await;
    let other = other_tenant(&db).await;
    let client = ClientLogin::new(&db).await;
    member(&db, TENANT, "alice").await;
    member(&db, other, "bob").await;
    for (tenant, user) in [(TENANT, "alice"), (other, "bob")] {
        sqlx::query(
            "INSERT INTO user_symbols (tenant_id, user_id, symbol, timeframe) VALUES ($1, $2, 'AAPL', '1h')",
        )
        .bind(tenant)
        .bind(user)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let mut conn = client.connect().await;
    // Alice, verified, in her tenant: her rows.
    as_gateway(&mut conn, Some("alice"), TENANT).await;
    let users: Vec<String> = sqlx::query_scalar("SELECT user_id FROM user_symbols")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(users, vec!["alice".to_string()]);
    conn.execute("COMMIT").await.unwrap();
    // Alice naming Bob's tenant: refused, whatever she asks for.
    for statement in [
        "SELECT user_id FROM user_symbols",
        "INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json) VALUES (current_tenant_id(), 'x', '[]')",
    ] {
        as_gateway(&mut conn, Some("alice"), other).await;
        let refused = conn.execute(statement).await.unwrap_err();
        assert!(
            refused
                .to_string()
                .contains(&format!("user alice is not a member of tenant {other}")),
            "{refused}"
        );
        conn.execute("ROLLBACK").await.unwrap();
    }
    // No verified user at all: refused.
    as_gateway(&mut conn, None, TENANT).await;
    let refused = conn
        .execute("SELECT user_id FROM user_symbols")
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("without an authenticated user"),
        "{refused}"
    );
    conn.execute("ROLLBACK").await.unwrap();
    drop(conn);
    // Workers still set their tenant per transaction, unchecked.
    let mut tx = pulse_domain::tenancy::begin(&db.pool, other).await.unwrap();
    let users: Vec<String> = sqlx::query_scalar("SELECT user_id FROM user_symbols")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(users, vec!["bob".to_string()]);
    tx.rollback().await.unwrap();
    client.drop_in(&db).await;
}

/// An HTTP endpoint on loopback that answers every request with `status` and `body`
/// (and `headers`), counting the requests: a tenant's "Discord webhook" that is not
/// Discord.
async fn endpoint(
    status: u16,
    body: Value,
    headers: &'static [(&'static str, &'static str)],
) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().fallback(any(move || {
        let counter = counter.clone();
        let body = body.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut response = axum::response::IntoResponse::into_response((
                StatusCode::from_u16(status).unwrap(),
                Json(body),
            ));
            for (k, v) in headers {
                response.headers_mut().insert(*k, v.parse().unwrap());
            }
            response
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), hits)
}

async fn alert_for(db: &TestDb, user: &str) -> (i64, i64) {
    let alert: i64 = sqlx::query_scalar(
        "INSERT INTO alerts (tenant_id, user_id, kind, payload) VALUES ($1, $2, 'system', '{\"message\": \"hi\"}') RETURNING id",
    )
    .bind(TENANT)
    .bind(user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let job: i64 = sqlx::query_scalar("SELECT id FROM fleet.jobs WHERE idempotency_key = $1")
        .bind(format!("alert:{alert}"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
    (alert, job)
}

async fn alert_row(db: &TestDb, alert: i64) -> (String, Option<String>) {
    sqlx::query_as("SELECT status, last_error FROM alerts WHERE id = $1")
        .bind(alert)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

fn alert_jobs() -> Vec<pulse_jobs::JobSpec> {
    vec![job::<pulse_jobs::send_alert::SendAlert>(), canary()]
}

#[tokio::test]
async fn f04_an_absurd_retry_after_is_bounded_and_no_worker_dies_of_it() {
    let db = TestDb::new(&[]).await;
    let (base, hits) = endpoint(
        429,
        json!({"message": "You are being rate limited.", "retry_after": 9e12, "global": false}),
        &[
            ("x-ratelimit-reset-after", "9e15"),
            ("x-ratelimit-remaining", "0"),
        ],
    )
    .await;
    crate::alerts::user_with_webhook(&db, "u1", &format!("{base}/api/webhooks/1/token")).await;
    let worker = db.start_worker(alert_jobs(), 4).await;
    let (_, first) = alert_for(&db, "u1").await;
    // The 429 snoozes the job (no attempt used) for at most an hour.
    let job = db.wait_until_deferred(first).await;
    assert_eq!(job.attempts, 0, "{}", job.errors);
    let hour = chrono::Duration::hours(1) + chrono::Duration::seconds(5);
    assert!(job.run_at <= chrono::Utc::now() + hour, "{}", job.run_at);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // The stored budget is bounded too, and a later send to the same webhook reads it
    // and waits (snoozes) without a panic.
    assert_eq!(
        db.count(
            "SELECT count(*) FROM discord_rate_limits
             WHERE remaining = 0 AND reset_at <= now() + interval '1 hour 5 seconds'"
        )
        .await,
        1
    );
    let (_, second) = alert_for(&db, "u1").await;
    db.wait_until_deferred(second).await;
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the spent budget held it back"
    );
    // Both queues of the worker are alive: new work of either kind runs.
    let canary_job = db.enqueue("canary", json!({"quiet": true})).await;
    db.wait_for_state(canary_job, "completed", Duration::from_secs(20))
        .await;
    let (_, third) = alert_for(&db, "u1").await;
    wait_until(
        "the third alert is taken up",
        Duration::from_secs(20),
        || async { db.job(third).await.started_at.is_some() },
    )
    .await;
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn f05_alert_webhooks_reach_only_discord_and_never_echo_a_foreign_body() {
    let db = TestDb::new(&[]).await;
    // An internal service, reachable from the workers, answering with its secrets.
    let (internal, internal_hits) = endpoint(
        400,
        json!({"code": 50035, "message": "INTERNAL-SECRET-TOKEN"}),
        &[],
    )
    .await;
    let redirect_target = format!("{internal}/api/webhooks/2/after-redirect");
    let redirecting: &'static str = Box::leak(redirect_target.into_boxed_str());
    let (redirector, _) = endpoint(
        302,
        json!({}),
        Box::leak(Box::new([("location", redirecting)])),
    )
    .await;

    // With Discord only (production's policy), the internal URL is never called.
    let mut services = pulse_domain::Services::default();
    services.discord_webhooks.extra_origins = vec![];
    let pools = pulse_fleet::db::queue_pools(&db.settings(), 1)
        .await
        .unwrap();
    let worker = pulse_queue::worker::start(
        db.pool.clone(),
        pools,
        vec![pulse_queue::worker::QueueSpec {
            job: pulse_jobs::spec::<pulse_jobs::send_alert::SendAlert>(&pulse_jobs::Env::new(
                services,
            )),
            concurrency: 2,
        }],
        &test_worker_settings(),
    )
    .await
    .unwrap();
    crate::alerts::user_with_webhook(&db, "u1", &format!("{internal}/api/webhooks/1/token")).await;
    let (alert, job) = alert_for(&db, "u1").await;
    db.wait_for_state(job, "dead", Duration::from_secs(20))
        .await;
    worker.shutdown().await.unwrap();
    assert_eq!(internal_hits.load(Ordering::SeqCst), 0);
    let (status, error) = alert_row(&db, alert).await;
    assert_eq!(status, "failed");
    assert!(
        error
            .as_deref()
            .unwrap_or_default()
            .starts_with("webhook URL refused"),
        "{error:?}"
    );

    // With the origin allowed (as for the local sink), a refusal is stored as status
    // and Discord's error code, never the body; and redirects are not followed.
    let worker = db.start_worker(alert_jobs(), 2).await;
    crate::alerts::user_with_webhook(&db, "u2", &format!("{internal}/api/webhooks/1/token")).await;
    let (alert, job) = alert_for(&db, "u2").await;
    db.wait_for_state(job, "dead", Duration::from_secs(20))
        .await;
    let (status, error) = alert_row(&db, alert).await;
    assert_eq!(status, "failed");
    assert_eq!(
        error.as_deref(),
        Some("Discord refused it (400, code 50035)")
    );
    let errors = db.job(job).await.errors.to_string();
    assert!(!errors.contains("INTERNAL-SECRET"), "{errors}");
    crate::alerts::user_with_webhook(&db, "u3", &format!("{redirector}/api/webhooks/1/token"))
        .await;
    let before = internal_hits.load(Ordering::SeqCst);
    let (alert, job) = alert_for(&db, "u3").await;
    db.wait_for_state(job, "dead", Duration::from_secs(20))
        .await;
    worker.shutdown().await.unwrap();
    assert_eq!(
        internal_hits.load(Ordering::SeqCst),
        before,
        "the redirect was followed"
    );
    assert_eq!(
        alert_row(&db, alert).await.1.as_deref(),
        Some("Discord refused it (302)")
    );
}

/// Sets its flag when dropped: a handler holding one was aborted (or finished).
struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A job type whose handler hangs for a minute, holding a [`DropFlag`].
fn hanging(
    name: &'static str,
    max_attempts: i32,
    dropped: Arc<AtomicUsize>,
) -> pulse_jobs::JobSpec {
    spec(name, max_attempts, NO_JITTER, move |_, _| {
        let flag = DropFlag(dropped.clone());
        async move {
            let _flag = flag;
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        }
    })
}

#[tokio::test]
async fn f11_a_worker_that_cannot_heartbeat_aborts_its_attempts_before_its_lease_can_expire() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let hang = hanging("hang", 5, dropped.clone());
    let db = TestDb::new(std::slice::from_ref(&hang)).await;
    let worker = db.start_worker(vec![hang], 2).await;
    let id = db.enqueue("hang", json!({})).await;
    db.wait_for_state(id, "running", Duration::from_secs(20))
        .await;
    // Heartbeats block from here on: another session holds the worker's row.
    let mut blocker = PgConnection::connect(&db.url).await.unwrap();
    blocker.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT 1 FROM fleet.workers WHERE id = $1 FOR UPDATE")
        .bind(worker.identity.id)
        .execute(&mut blocker)
        .await
        .unwrap();
    let blocked = std::time::Instant::now();
    let lease_timeout = test_worker_settings().lease_timeout();
    wait_until("the attempt is aborted", lease_timeout * 2, || async {
        dropped.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        blocked.elapsed() < lease_timeout,
        "aborted after {:?}, when others could rescue the job after {lease_timeout:?}",
        blocked.elapsed()
    );
    // Not settled by the aborted attempt: what happens to the job is the rescue's call.
    worker.flush_acks().await;
    let job = db.job(id).await;
    assert_eq!(job.state, "running");
    assert_eq!(job.errors, json!([]));
    blocker.execute("ROLLBACK").await.unwrap();
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn f12_an_error_text_jsonb_refuses_blocks_no_other_ack() {
    let nul = spec("nul_error", 1, NO_JITTER, |_, _| async {
        Err(pulse_jobs::JobError::retryable("bad \0 byte"))
    });
    let db = TestDb::new(std::slice::from_ref(&nul)).await;
    let worker = db.start_worker(vec![nul, canary()], 4).await;
    let bad = db.enqueue("nul_error", json!({})).await;
    let good: Vec<i64> = futures_util::future::join_all(
        (0..5).map(|_| db.enqueue("canary", json!({"quiet": true}))),
    )
    .await;
    db.drain().await;
    worker.shutdown().await.unwrap();
    let dead = db.job(bad).await;
    assert_eq!(dead.state, "dead");
    assert_eq!(dead.errors[0]["error"], "bad \u{FFFD} byte");
    for id in good {
        assert_eq!(db.job(id).await.state, "completed");
    }
}

#[tokio::test]
async fn f12_a_signed_stripe_event_with_a_nul_is_stored_not_refused_forever() {
    let db = TestDb::new(&[]).await;
    let base = db
        .serve_web(|s| s.stripe.webhook_secrets = "whsec_nul".into())
        .await;
    let body = json!({"id": "evt_nul", "object": "event", "type": "customer.created",
                      "created": chrono::Utc::now().timestamp(), "livemode": false,
                      "data": {"object": {"id": "cus_1", "name": "nul \u{0000} here"}}})
    .to_string();
    let signature = pulse_fleet::web::signature::stripe_header(
        "whsec_nul",
        body.as_bytes(),
        chrono::Utc::now().timestamp(),
    );
    let answer = reqwest::Client::new()
        .post(format!("{base}/webhooks/stripe"))
        .header("Stripe-Signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let name: String = sqlx::query_scalar(
        "SELECT payload #>> '{data,object,name}' FROM billing.stripe_events WHERE event_id = 'evt_nul'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(name, "nul \u{FFFD} here");
}

#[tokio::test]
async fn f12_past_the_grace_period_handlers_are_aborted_and_the_attempt_counts() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let hang = hanging("hang", 1, dropped.clone());
    let db = TestDb::new(std::slice::from_ref(&hang)).await;
    let mut settings = test_worker_settings();
    settings.shutdown_grace_ms = 200;
    let worker = db.start_worker_with(vec![hang], 2, settings).await;
    let id = db.enqueue("hang", json!({})).await;
    db.wait_for_state(id, "running", Duration::from_secs(20))
        .await;
    worker.shutdown().await.unwrap();
    // The handler task is gone with the worker (it cannot run on and settle twice),
    // and the attempt counted: a job that always hangs ends up dead.
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    let job = db.job(id).await;
    assert_eq!((job.state.as_str(), job.attempts), ("dead", 1));
    assert_eq!(job.errors[0]["kind"], "aborted");
}

#[tokio::test]
async fn f12_jobs_claimed_as_the_worker_stops_are_handed_back_unused() {
    use pulse_queue::{
        ack::Acker,
        fetcher::{self, FetcherConfig, FetcherLinks},
        holdings::Holdings,
        lease::WorkerIdentity,
    };
    let db = TestDb::new(&[]).await;
    let id = db.enqueue("canary", json!({})).await;
    let identity = WorkerIdentity::new();
    identity.register(&db.pool, &["canary"]).await.unwrap();
    let holdings = Holdings::new();
    let (acks, acker) = Acker::spawn(
        db.pool.clone(),
        pulse_queue::stats::Recorder::default(),
        holdings.clone(),
    );
    // The worker is gone (its backend dropped the receiving end) while the fetcher's
    // claim was in flight.
    let (out, gone) = tokio::sync::mpsc::channel(4);
    drop(gone);
    let (_stop, stop) = tokio::sync::watch::channel(false);
    tokio::time::timeout(
        Duration::from_secs(20),
        fetcher::run(
            db.pool.clone(),
            FetcherConfig {
                queue: "canary",
                worker_id: identity.id,
                batch_size: 4,
                poll_interval: Duration::from_millis(100),
            },
            FetcherLinks {
                permits: Arc::new(tokio::sync::Semaphore::new(4)),
                wake: Arc::new(tokio::sync::Notify::new()),
                stop,
                out,
                holdings: holdings.clone(),
                acks: acks.clone(),
            },
        ),
    )
    .await
    .expect("the fetcher ends when its worker is gone");
    acks.flush().await;
    drop(acks);
    acker.await.unwrap();
    let job = db.job(id).await;
    assert_eq!((job.state.as_str(), job.attempts), ("available", 0));
    assert_eq!(job.errors, json!([]), "no false lease_expired");
    assert!(holdings.held().is_empty());
}

#[tokio::test]
async fn f13_a_replayed_watcher_body_never_overrides_a_newer_state() {
    const SECRET: &str = "watcher-secret";
    let db = TestDb::new(&[]).await;
    let base = db
        .serve_web(|s| s.watchers.webhook_secret = SECRET.into())
        .await;
    let deliver = |body: Value| {
        let url = format!("{base}/webhooks/watchers");
        async move {
            let raw = serde_json::to_vec(&body).unwrap();
            reqwest::Client::new()
                .post(url)
                .header(
                    "x-hmac-sha256",
                    pulse_fleet::web::signature::hex_hmac(SECRET, &raw),
                )
                .body(raw)
                .send()
                .await
                .unwrap()
        }
    };
    let record = |version: Option<i64>, timeframe: &str| {
        let mut r = json!({"id": 5, "tenant_id": TENANT, "user_id": "u1", "symbol": "BTC/USDT", "timeframe": timeframe});
        if let Some(v) = version {
            r["version"] = json!(v);
        }
        json!({"type": "UPDATE", "table": "user_symbols", "schema": "public", "record": r, "old_record": null})
    };
    // A change that carries no version cannot be ordered: refused, nothing stored.
    for _ in 0..3 {
        let answer = deliver(record(None, "1h")).await;
        assert_eq!(answer.status(), 400);
        assert_eq!(
            answer.json::<Value>().await.unwrap()["error"],
            "missing_version"
        );
    }
    assert_eq!(db.count("SELECT count(*) FROM watcher_events").await, 0);
    // Version 1, then 2; then version 1's signed body replayed three times.
    assert_eq!(deliver(record(Some(1), "1h")).await.status(), 200);
    assert_eq!(deliver(record(Some(2), "4h")).await.status(), 200);
    for _ in 0..3 {
        assert_eq!(deliver(record(Some(1), "1h")).await.status(), 200);
    }
    assert_eq!(db.count("SELECT count(*) FROM watcher_events").await, 2);
    let worker = db
        .start_worker(vec![job::<pulse_jobs::sync_watcher::SyncWatcher>()], 2)
        .await;
    db.drain().await;
    worker.shutdown().await.unwrap();
    let timeframe: String = sqlx::query_scalar("SELECT timeframe FROM watchers")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(timeframe, "4h");
}

#[test]
fn f15_with_port_set_the_web_process_binds_every_interface_unless_a_host_is_named() {
    // The default bind is loopback: a Procfile platform's router could not reach it.
    let web = |host: Option<&str>| {
        let mut w = load_test_settings().web;
        w.bind = "127.0.0.1:8080".into();
        w.host = host.map(Into::into);
        w
    };
    let mut public = web(None);
    public.apply_port(Some("5000"));
    assert_eq!(public.bind, "0.0.0.0:5000");
    let mut named = web(Some("10.1.2.3"));
    named.apply_port(Some("5000"));
    assert_eq!(named.bind, "10.1.2.3:5000");
    let mut local = web(None);
    local.apply_port(None);
    assert_eq!(local.bind, "127.0.0.1:8080");
}

#[tokio::test]
async fn f14_operator_pages_need_the_operator_credential() {
    let db = TestDb::new(&[]).await;
    let tenant = other_tenant(&db).await;
    sqlx::query("UPDATE tenants SET name = 'Acme Trading' WHERE id = $1")
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
    let worker = db.start_worker(vec![canary()], 1).await;
    let base = db
        .serve_web(|s| {
            s.web.operator_token = "op-token-123, op-token-old".into();
            s.schedules.clear();
        })
        .await;
    let http = reqwest::Client::new();
    let get = |path: &str, auth: Option<&str>| {
        let mut request = http.get(format!("{base}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };
    // The public listener: the dashboard and metrics are closed, health says only
    // its status (no worker names, hosts, pids, queues).
    for path in ["/", "/metrics"] {
        for auth in [None, Some("Bearer wrong"), Some("Basic b3A6d3Jvbmc=")] {
            let answer = get(path, auth).await.unwrap();
            assert_eq!(answer.status(), 401, "{path} {auth:?}");
            assert!(answer.headers().contains_key("www-authenticate"));
            let body = answer.text().await.unwrap();
            assert!(
                !body.contains("Acme") && !body.contains("fleet_jobs"),
                "{body}"
            );
        }
    }
    let public: Value = get("/internal/health", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(public, json!({"status": "ok"}));
    // Operators, by bearer token or as a browser's Basic password.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "ops:op-token-123"
        )
    );
    // The previous token still works during a rotation.
    for auth in ["Bearer op-token-123", basic.as_str(), "Bearer op-token-old"] {
        let page = get("/", Some(auth)).await.unwrap();
        assert_eq!(page.status(), 200);
        let detail: Value = get("/internal/health", Some(auth))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(detail["workers"]["names"][0], worker.identity.name.as_str());
        let metrics = get("/metrics", Some(auth)).await.unwrap();
        assert_eq!(metrics.status(), 200);
    }
    // No credential configured: the operator pages are closed to everyone.
    let closed = db.serve_web(|_| {}).await;
    assert_eq!(
        reqwest::get(format!("{closed}/")).await.unwrap().status(),
        404
    );
    worker.shutdown().await.unwrap();
}

mod oms {
    use pulse_sims::paper::PaperOptions;
    use rust_decimal::Decimal;

    use super::*;
    use crate::oms::desk;

    async fn job_of(desk: &crate::oms::Desk, intent: Uuid) -> i64 {
        sqlx::query_scalar("SELECT id FROM fleet.jobs WHERE idempotency_key = $1")
            .bind(format!("intent:{intent}"))
            .fetch_one(&desk.db.pool)
            .await
            .unwrap()
    }

    /// The intent's job has run and snoozed (it waits, no attempt used).
    async fn snoozed(desk: &crate::oms::Desk, intent: Uuid) {
        desk.db
            .wait_until_deferred(job_of(desk, intent).await)
            .await;
    }

    async fn order_rows(
        desk: &crate::oms::Desk,
        intent: Uuid,
    ) -> Vec<(i32, String, Option<String>)> {
        sqlx::query_as(
            "SELECT leg_index, status, venue_order_id FROM orders WHERE intent_id = $1 ORDER BY leg_index",
        )
        .bind(intent)
        .fetch_all(&desk.db.pool)
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn f06_the_risk_price_is_the_venues_not_the_clients_and_no_quantity_panics_a_batch() {
        let mut desk = desk(PaperOptions::default(), 10_000).await;
        sqlx::query(
            "INSERT INTO risk_limits (tenant_id, account_id, max_order_notional) VALUES ($1, $2, 1000)",
        )
        .bind(desk.tenant)
        .bind(desk.account)
        .execute(&desk.db.pool)
        .await
        .unwrap();
        let mut services = desk.services();
        services.price_collar = Decimal::new(5, 2);
        desk.worker.take().unwrap().shutdown().await.unwrap();
        desk.start_worker_with(services).await;
        // "buy 1,000,000 AAPL at reference 0.0000000001": priced at the venue's quote.
        let cheap = desk
            .intent(
                "cheap",
                vec![
                    json!({"account_id": desk.account, "symbol": "AAPL", "side": "buy",
                            "quantity": 1000000, "reference_price": "0.0000000001"}),
                ],
            )
            .await;
        let (status, reason) = desk.wait_for(cheap, &["failed"]).await;
        assert_eq!(status, "failed");
        assert_eq!(
            reason.as_deref(),
            Some("leg 0: notional 105000000 exceeds the order limit 1000")
        );
        assert!(desk.venue.orders().is_empty(), "nothing reached the venue");
        assert_eq!(desk.reserved().await, "0.0000000000");

        // A quantity near Decimal's maximum, batched with a sound intent: refused with a
        // reason, and its batch-mate planned as usual.
        let huge = desk
            .intent(
                "huge",
                vec![
                    json!({"account_id": desk.account, "symbol": "MSFT", "side": "buy",
                            "quantity": "79228162514264337593543950335"}),
                ],
            )
            .await;
        let fine = desk.intent("fine", vec![desk.leg("MSFT", "buy", 1)]).await;
        desk.db.drain().await;
        let (status, reason) = desk.intent_state(huge).await;
        assert_eq!(status, "failed");
        assert!(
            reason
                .unwrap()
                .contains("quantity must be a positive number up to 1000000000")
        );
        assert_eq!(desk.wait_for(fine, &["filled"]).await.0, "filled");
        let desk = desk.stop().await;
        let (state, attempts): (String, i32) = sqlx::query_as(
            "SELECT state::text, attempts FROM fleet.jobs WHERE idempotency_key = $1",
        )
        .bind(format!("intent:{huge}"))
        .fetch_one(&desk.db.pool)
        .await
        .unwrap();
        assert_eq!((state.as_str(), attempts), ("completed", 1));
    }

    /// Plans `legs` on a desk whose venue budget is spent, so the intent is planned
    /// (orders reserved) and then waits before sending anything; runs `meanwhile`
    /// with no worker up; then lets the intent go on with its budget back. Returns
    /// how it ended.
    async fn wait_then_resume<F, Fut>(
        desk: &mut crate::oms::Desk,
        legs: Vec<Value>,
        meanwhile: F,
    ) -> (Uuid, (String, Option<String>))
    where
        F: FnOnce(Uuid) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut starved = desk.services();
        starved.venue_requests_per_minute = 0;
        desk.worker.take().unwrap().shutdown().await.unwrap();
        desk.start_worker_with(starved).await;
        let id = desk.intent("waits", legs).await;
        snoozed(desk, id).await;
        assert_eq!(desk.intent_state(id).await.0, "submitted");
        desk.worker.take().unwrap().shutdown().await.unwrap();
        meanwhile(id).await;
        let services = desk.services();
        desk.start_worker_with(services).await;
        sqlx::query("UPDATE fleet.jobs SET run_at = now() WHERE idempotency_key = $1")
            .bind(format!("intent:{id}"))
            .execute(&desk.db.pool)
            .await
            .unwrap();
        (id, desk.wait_for(id, &["failed", "filled"]).await)
    }

    #[tokio::test]
    async fn f07_a_kill_switch_engaged_while_an_intent_waits_stops_its_orders() {
        let mut desk = desk(PaperOptions::default(), 10_000).await;
        let (tenant, pool) = (desk.tenant, desk.db.pool.clone());
        let legs = vec![desk.leg("AAPL", "buy", 2), desk.leg("MSFT", "buy", 1)];
        let (_, (status, reason)) = wait_then_resume(&mut desk, legs, |_| async move {
            // The operator engages the tenant's kill switch while the intent waits.
            sqlx::query("INSERT INTO kill_switches (tenant_id, reason) VALUES ($1, 'desk halted')")
                .bind(tenant)
                .execute(&pool)
                .await
                .unwrap();
        })
        .await;
        assert_eq!(status, "failed");
        let reason = reason.unwrap();
        assert!(
            reason.starts_with("kill switch engaged for the tenant: desk halted"),
            "{reason}"
        );
        assert!(
            desk.venue.orders().is_empty(),
            "an order went out under the kill switch"
        );
        assert_eq!(desk.reserved().await, "0.0000000000");
        assert!(
            desk.audit_events()
                .await
                .contains(&"kill_switch_blocked".to_string())
        );
        assert_eq!(
            desk.db.count("SELECT count(*) FROM entry_locks").await,
            0,
            "its entry locks were released"
        );
        desk.stop().await;
    }

    #[tokio::test]
    async fn f07_an_intent_that_lost_its_entry_locks_does_not_trade() {
        let mut desk = desk(PaperOptions::default(), 10_000).await;
        let pool = desk.db.pool.clone();
        let legs = vec![desk.leg("AAPL", "buy", 1)];
        let (_, (status, reason)) = wait_then_resume(&mut desk, legs, |id| async move {
            // Its lock expired meanwhile and another intent took it.
            sqlx::query(
                "UPDATE entry_locks SET owner_token = gen_random_uuid() WHERE owner_token = $1",
            )
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        })
        .await;
        assert_eq!(status, "failed");
        assert!(
            reason
                .unwrap()
                .starts_with("the intent lost its entry locks")
        );
        assert!(desk.venue.orders().is_empty());
        assert_eq!(desk.reserved().await, "0.0000000000");
        desk.stop().await;
    }

    #[tokio::test]
    async fn f08_an_order_is_marked_sent_before_its_request_and_answers_survive_a_429() {
        // The venue answers two requests a minute: the third leg meets a 429.
        let desk = desk(
            PaperOptions {
                rate_limit_per_minute: 2,
                ..PaperOptions::default()
            },
            10_000,
        )
        .await;
        let id = desk
            .intent(
                "three",
                vec![
                    desk.leg("AAPL", "buy", 1),
                    desk.leg("MSFT", "buy", 1),
                    desk.leg("IBM", "buy", 1),
                ],
            )
            .await;
        snoozed(&desk, id).await;
        let job = desk.db.job(job_of(&desk, id).await).await;
        assert_eq!(job.attempts, 0, "the snooze refunded its attempt");
        // The two answers received before the 429 are kept; the third order is marked
        // as possibly at the venue, so the next attempt, whatever its number, looks it
        // up before sending anything.
        let rows = order_rows(&desk, id).await;
        assert_eq!(rows.len(), 3);
        assert!(rows[0].2.is_some() && rows[1].2.is_some(), "{rows:?}");
        assert_eq!(rows[2].1, "sent", "{rows:?}");
        assert_eq!(desk.venue.orders().len(), 2);
        desk.stop().await;
    }

    #[tokio::test]
    async fn f09_unwinding_resolves_a_leg_whose_answer_was_lost_before_failing_the_intent() {
        // LOST's order is created but its answer never arrives; HALTED is refused.
        let desk = desk(
            PaperOptions {
                drop_symbols: vec!["LOST".into()],
                reject_symbols: vec!["HALTED".into()],
                // Filled as accepted: the unwind finds it filled and closes it.
                fill_delay_ms: 0,
                ..PaperOptions::default()
            },
            10_000,
        )
        .await;
        let id = desk
            .intent(
                "unwind",
                vec![desk.leg("LOST", "buy", 2), desk.leg("HALTED", "buy", 1)],
            )
            .await;
        let (status, reason) = desk.wait_for(id, &["failed"]).await;
        assert_eq!(status, "failed");
        assert!(reason.unwrap().starts_with("leg 1 was rejected"));
        // The lost leg was found at the venue (filled) and closed by an opposite order;
        // nothing is left unknown and no reservation leaked.
        desk.settle().await;
        let rows = order_rows(&desk, id).await;
        assert_eq!(rows[0].1, "filled", "{rows:?}");
        assert_eq!(
            (rows[2].0, rows[2].1.as_str()),
            (1000, "filled"),
            "{rows:?}"
        );
        assert!(rows[0].2.is_some(), "the lost leg was resolved: {rows:?}");
        assert_eq!(rows[1].1, "rejected");
        assert_eq!(rows.iter().filter(|r| r.1 == "submit_unknown").count(), 0);
        let closing = desk
            .venue
            .orders()
            .into_iter()
            .filter(|o| o.symbol == "LOST" && o.side == pulse_sims::paper::Side::Sell)
            .map(|o| o.qty)
            .collect::<Vec<_>>();
        assert_eq!(
            closing,
            vec![Decimal::from(2)],
            "the filled leg was closed once"
        );
        assert_eq!(desk.reserved().await, "0.0000000000");
        desk.stop().await;
    }
}
