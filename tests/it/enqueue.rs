//! The way in: triggers, dedupe, NOTIFY.

use std::time::{Duration, Instant};

use pulse_queue::enqueue::{EnqueueOptions, enqueue};

use crate::helpers::*;

#[tokio::test]
async fn a_row_trigger_enqueues_exactly_one_job_whose_payload_parses_as_the_job_type() {
    let db = TestDb::new(&[]).await;
    sqlx::raw_sql(
        "CREATE TABLE probes (id bigserial PRIMARY KEY, sleep_ms int NOT NULL);
         -- Fires per row: enqueue one canary per probe, keyed by the probe id.
         CREATE FUNCTION probes_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM fleet.enqueue('canary', jsonb_build_object('sleep_ms', NEW.sleep_ms), 'probe:' || NEW.id);
             RETURN NEW;
         END $$;
         CREATE TRIGGER probes_enqueue AFTER INSERT ON probes FOR EACH ROW EXECUTE FUNCTION probes_enqueue();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO probes (sleep_ms) VALUES (7)")
        .execute(&db.pool)
        .await
        .unwrap();
    let rows: Vec<(String, serde_json::Value, Option<String>)> =
        sqlx::query_as("SELECT job_name, payload, idempotency_key FROM fleet.jobs")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "exactly one job per inserted row");
    assert_eq!(
        rows[0].0,
        <pulse_jobs::canary::Canary as pulse_jobs::Job>::NAME
    );
    let job: pulse_jobs::canary::Canary = serde_json::from_value(rows[0].1.clone())
        .expect("the trigger's payload deserializes into the job type");
    assert_eq!(job.sleep_ms, 7);
    assert_eq!(rows[0].2.as_deref(), Some("probe:1"));
}

#[tokio::test]
async fn a_rolled_back_business_write_leaves_no_job() {
    let db = TestDb::new(&[]).await;
    let mut tx = db.pool.begin().await.unwrap();
    enqueue(
        &mut *tx,
        "canary",
        &serde_json::json!({}),
        &EnqueueOptions::default(),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM fleet.jobs").await, 0);
}

#[tokio::test]
async fn a_statement_trigger_enqueues_a_whole_batch_in_one_statement() {
    let db = TestDb::new(&[]).await;
    sqlx::raw_sql(
        "CREATE TABLE shop_orders (id bigserial PRIMARY KEY, qty int NOT NULL);
         -- Fires once per statement over the transition table: one job per row.
         CREATE FUNCTION shop_orders_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             PERFORM fleet.enqueue_batch('canary', array_agg(jsonb_build_object('sleep_ms', n.qty)),
                                         array_agg('order:' || n.id)) FROM new_rows n;
             RETURN NULL;
         END $$;
         CREATE TRIGGER shop_orders_enqueue AFTER INSERT ON shop_orders REFERENCING NEW TABLE AS new_rows
             FOR EACH STATEMENT EXECUTE FUNCTION shop_orders_enqueue();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO shop_orders (qty) SELECT i FROM generate_series(1, 500) i")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(db.count("SELECT count(*) FROM fleet.jobs").await, 500);
    assert_eq!(
        db.count("SELECT count(DISTINCT idempotency_key) FROM fleet.jobs")
            .await,
        500
    );
    // The same keys again (a replayed batch) create nothing and count as dedupe hits.
    let created: i32 = sqlx::query_scalar(
        "SELECT fleet.enqueue_batch('canary', array_agg(jsonb_build_object('sleep_ms', i)), array_agg('order:' || i))
         FROM generate_series(1, 500) i",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(created, 0);
    assert_eq!(db.count("SELECT count(*) FROM fleet.jobs").await, 500);
}

#[tokio::test]
async fn an_unknown_job_name_is_refused_at_enqueue() {
    let db = TestDb::new(&[]).await;
    let error = enqueue(
        &db.pool,
        "canray",
        &serde_json::json!({}),
        &EnqueueOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        error.to_string().contains("unknown job type \"canray\""),
        "{error}"
    );
}

#[tokio::test]
async fn concurrent_enqueues_with_one_key_make_one_job_and_all_get_its_id() {
    let db = TestDb::new(&[]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let pool = db.pool.clone();
        tasks.spawn(async move {
            let options = EnqueueOptions {
                idempotency_key: Some("intent:42".into()),
                ..Default::default()
            };
            enqueue(&pool, "canary", &serde_json::json!({}), &options)
                .await
                .unwrap()
        });
    }
    let ids: Vec<i64> = tasks.join_all().await;
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "every caller gets the one job's id: {ids:?}"
    );
    assert_eq!(db.count("SELECT count(*) FROM fleet.jobs").await, 1);
    assert_eq!(
        db.count("SELECT sum(delta)::bigint FROM fleet.stat_deltas WHERE metric = 'dedupe_hits'")
            .await,
        15
    );
}

#[tokio::test]
async fn notify_wakes_an_idle_worker_long_before_its_poll() {
    let db = TestDb::new(&[]).await;
    let mut settings = test_worker_settings();
    settings.poll_interval_ms = 60_000;
    let worker = db.start_worker_with(vec![canary()], 4, settings).await;
    // Let the fetcher's first (empty) claim happen, so it is parked on NOTIFY or its 60 s poll.
    wait_until("the worker idles", Duration::from_secs(5), || async {
        db.count("SELECT count(*) FROM fleet.workers").await == 1
    })
    .await;
    let started = Instant::now();
    let id = db
        .enqueue("canary", serde_json::json!({"quiet": true}))
        .await;
    db.wait_for_state(id, "completed", Duration::from_secs(10))
        .await;
    let took = started.elapsed();
    worker.shutdown().await.unwrap();
    assert!(
        took < Duration::from_secs(5),
        "woken by NOTIFY, not the 60 s poll: {took:?}"
    );
}

#[tokio::test]
async fn a_scheduled_job_starts_within_a_second_of_becoming_due() {
    let db = TestDb::new(&[]).await;
    let worker = db.start_worker(vec![canary()], 4).await;
    let due = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
    let id = db
        .enqueue_with(
            "canary",
            serde_json::json!({"quiet": true}),
            EnqueueOptions {
                run_at: Some(due),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(db.job(id).await.state, "available");
    let job = db
        .wait_for_state(id, "completed", Duration::from_secs(10))
        .await;
    worker.shutdown().await.unwrap();
    let started = job.started_at.unwrap();
    assert!(started >= due, "not before it is due");
    assert!(
        started - due < chrono::Duration::seconds(1),
        "started {} after due",
        started - due
    );
}

#[tokio::test]
async fn the_canary_writes_nothing_and_the_runtime_measures_it() {
    let db = TestDb::new(&[]).await;
    let worker = db.start_worker(vec![canary()], 2).await;
    let id = db.enqueue("canary", serde_json::json!({})).await;
    db.wait_for_state(id, "completed", Duration::from_secs(10))
        .await;
    // Shutdown flushes the process's counters to fleet.stat_deltas.
    worker.shutdown().await.unwrap();
    let metrics: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT metric FROM (
             SELECT metric, job_name FROM fleet.stats
             UNION ALL SELECT metric, job_name FROM fleet.stat_deltas) s
         WHERE job_name = 'canary' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        !metrics.iter().any(|m| m == "canary_latency_seconds"),
        "a job writes no fleet table: {metrics:?}"
    );
    assert!(
        metrics.iter().any(|m| m == "wait_seconds") && metrics.iter().any(|m| m == "run_seconds"),
        "{metrics:?}"
    );
}
