//! Every way an attempt can fail, and what it leaves behind.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use pulse_jobs::JobError;
use pulse_queue::{
    JobState,
    ack::{self, Ack, Outcome},
    admin::{self, Selection},
    enqueue::EnqueueOptions,
    fetcher,
    lease::{self, WorkerIdentity},
};

use crate::helpers::*;

#[tokio::test]
async fn retryable_failures_back_off_exponentially_then_the_job_is_dead_with_every_error() {
    let always_fails = spec("always_fails", 3, NO_JITTER, |_, ctx| async move {
        Err(JobError::retryable(format!(
            "upstream 503 on attempt {}",
            ctx.attempt
        )))
    });
    let db = TestDb::new(std::slice::from_ref(&always_fails)).await;
    let worker = db.start_worker(vec![always_fails], 2).await;
    let id = db.enqueue("always_fails", serde_json::json!({})).await;
    let job = db.wait_for_state(id, "dead", Duration::from_secs(20)).await;
    worker.shutdown().await.unwrap();

    assert_eq!(job.attempts, 3);
    let errors = job.errors.as_array().unwrap();
    assert_eq!(errors.len(), 3, "one error per attempt: {errors:?}");
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e["attempt"], i as i64 + 1);
        assert_eq!(e["kind"], "retryable");
        assert_eq!(e["error"], format!("upstream 503 on attempt {}", i + 1));
    }
    // Attempt n+1 waited base * 2^(n-1) after attempt n failed (no jitter): 1 s, then 2 s.
    let at = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(errors[i]["at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
    };
    let gap1 = (at(1) - at(0)).num_milliseconds();
    let gap2 = (at(2) - at(1)).num_milliseconds();
    assert!(
        (1000..1900).contains(&gap1),
        "first backoff ~1 s, was {gap1} ms"
    );
    assert!(
        (2000..2900).contains(&gap2),
        "second backoff ~2 s, was {gap2} ms"
    );
}

#[tokio::test]
async fn a_snooze_reschedules_without_using_an_attempt_or_recording_an_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let snoozer = spec("snoozer", 1, NO_JITTER, move |_, _| {
        let c = c.clone();
        async move {
            if c.fetch_add(1, Ordering::SeqCst) == 0 {
                Err(JobError::Snooze(Duration::from_millis(800)))
            } else {
                Ok(())
            }
        }
    });
    let db = TestDb::new(std::slice::from_ref(&snoozer)).await;
    let worker = db.start_worker(vec![snoozer], 2).await;
    let id = db.enqueue("snoozer", serde_json::json!({})).await;
    // max_attempts is 1: had the snooze used the attempt, the job would now be dead.
    let job = db
        .wait_for_state(id, "completed", Duration::from_secs(10))
        .await;
    worker.shutdown().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(job.attempts, 1);
    assert_eq!(job.errors, serde_json::json!([]));
    let ran_after = job.started_at.unwrap() - job.run_at;
    assert!(ran_after < chrono::Duration::seconds(1));
}

#[tokio::test]
async fn a_permanent_failure_is_dead_at_once() {
    let rejects = spec("rejects", 25, NO_JITTER, |_, _| async {
        Err(JobError::permanent(
            "venue said 422: client_order_id reused",
        ))
    });
    let db = TestDb::new(std::slice::from_ref(&rejects)).await;
    let worker = db.start_worker(vec![rejects], 2).await;
    let id = db.enqueue("rejects", serde_json::json!({})).await;
    let job = db.wait_for_state(id, "dead", Duration::from_secs(10)).await;
    worker.shutdown().await.unwrap();
    assert_eq!(job.attempts, 1);
    assert_eq!(job.errors[0]["kind"], "permanent");
    assert_eq!(
        job.errors[0]["error"],
        "venue said 422: client_order_id reused"
    );
}

#[tokio::test]
async fn a_unique_violation_fails_the_job_at_once_and_keeps_the_database_error() {
    // The same row twice: a retry would meet the same key, so it is not retried.
    let duplicates = spec("duplicates", 25, NO_JITTER, |_, attempt| async move {
        sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, 'again')")
            .bind(TENANT)
            .execute(&attempt.pool)
            .await?;
        Ok(())
    });
    let db = TestDb::new(std::slice::from_ref(&duplicates)).await;
    let worker = db.start_worker(vec![duplicates], 2).await;
    let id = db.enqueue("duplicates", serde_json::json!({})).await;
    let job = db.wait_for_state(id, "dead", Duration::from_secs(10)).await;
    worker.shutdown().await.unwrap();
    assert_eq!(job.attempts, 1, "no retry for a unique violation");
    assert_eq!(job.errors[0]["kind"], "permanent");
    let error = job.errors[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with("database: ") && error.contains("duplicate key"),
        "the cause chain is kept: {error}"
    );
}

#[tokio::test]
async fn a_lost_connection_is_retried() {
    // A handler whose database connection is cut (the server ends the backend): the
    // error is transient, so the job is retried and then succeeds.
    let flaky = spec("flaky", 5, FAST_BACKOFF, |_, attempt| async move {
        let mut conn = attempt.pool.acquire().await?;
        if attempt.attempt == 1 {
            sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    });
    let db = TestDb::new(std::slice::from_ref(&flaky)).await;
    let worker = db.start_worker(vec![flaky], 2).await;
    let id = db.enqueue("flaky", serde_json::json!({})).await;
    let job = db
        .wait_for_state(id, "completed", Duration::from_secs(10))
        .await;
    worker.shutdown().await.unwrap();
    assert_eq!(job.attempts, 2);
    assert_eq!(job.errors[0]["kind"], "retryable", "{}", job.errors);
}

#[tokio::test]
async fn a_poison_payload_kills_only_its_job_and_the_worker_goes_on() {
    let db = TestDb::new(&[]).await;
    let worker = db.start_worker(vec![canary()], 4).await;
    let poison = db
        .enqueue("canary", serde_json::json!({"sleep_ms": "not a number"}))
        .await;
    let good = db
        .enqueue("canary", serde_json::json!({"quiet": true}))
        .await;
    let dead = db
        .wait_for_state(poison, "dead", Duration::from_secs(10))
        .await;
    db.wait_for_state(good, "completed", Duration::from_secs(10))
        .await;
    // And the worker still takes new work.
    let after = db
        .enqueue("canary", serde_json::json!({"quiet": true}))
        .await;
    db.wait_for_state(after, "completed", Duration::from_secs(10))
        .await;
    worker.shutdown().await.unwrap();
    assert_eq!(dead.attempts, 1, "no retry can fix a payload");
    let error = dead.errors[0]["error"].as_str().unwrap();
    assert!(
        error.contains("payload does not match job `canary`"),
        "{error}"
    );
    assert!(error.contains("invalid type"), "{error}");
}

#[tokio::test]
async fn a_panic_fails_that_attempt_only_and_the_retry_succeeds() {
    let db = TestDb::new(&[]).await;
    let worker = db.start_worker(vec![canary()], 4).await;
    let id = db
        .enqueue(
            "canary",
            serde_json::json!({"fail_first_attempts": 1, "panic": true, "quiet": true}),
        )
        .await;
    let job = db
        .wait_for_state(id, "completed", Duration::from_secs(15))
        .await;
    worker.shutdown().await.unwrap();
    assert_eq!(job.attempts, 2);
    assert_eq!(job.errors[0]["kind"], "panic");
    assert!(
        job.errors[0]["error"]
            .as_str()
            .unwrap()
            .contains("canary fails attempt 1")
    );
}

#[tokio::test]
async fn an_attempt_past_its_timeout_fails_as_a_timeout() {
    let mut slow = spec("slow", 1, NO_JITTER, |_, _| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    });
    slow.timeout = Duration::from_millis(200);
    let db = TestDb::new(std::slice::from_ref(&slow)).await;
    let worker = db.start_worker(vec![slow], 2).await;
    let id = db.enqueue("slow", serde_json::json!({})).await;
    let job = db.wait_for_state(id, "dead", Duration::from_secs(10)).await;
    worker.shutdown().await.unwrap();
    assert_eq!(job.errors[0]["kind"], "timeout");
}

#[tokio::test]
async fn a_rescued_attempts_late_completion_is_refused() {
    let db = TestDb::new(&[]).await;
    let id = db.enqueue("canary", serde_json::json!({})).await;
    let zombie = WorkerIdentity::new();
    zombie.register(&db.pool, &["canary"]).await.unwrap();
    let claimed = fetcher::claim(&db.pool, "canary", 10, zombie.id)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let zombie_token = claimed[0].lease_token;

    // The zombie stops heartbeating; the rescue gives its job back.
    sqlx::query(
        "UPDATE fleet.workers SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(zombie.id)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        lease::rescue_expired(&db.pool, Duration::from_secs(10))
            .await
            .unwrap(),
        1
    );
    let rescued = db.job(id).await;
    assert_eq!(rescued.state, "available");
    assert_eq!(rescued.errors[0]["kind"], "lease_expired");

    let completion = |token: uuid::Uuid| Ack {
        id,
        lease_token: token,
        job_name: "canary",
        outcome: Outcome::Completed,
        run_at: None,
        error: None,
        wait_secs: None,
        run_secs: None,
    };
    // Refused while the job waits to be re-run...
    assert!(
        ack::write(&db.pool, &[completion(zombie_token)])
            .await
            .unwrap()
            .is_empty()
    );
    // ...and after another worker claimed it: only the new token settles it.
    let fresh = WorkerIdentity::new();
    fresh.register(&db.pool, &["canary"]).await.unwrap();
    let again = fetcher::claim(&db.pool, "canary", 10, fresh.id)
        .await
        .unwrap();
    let fresh_token = again[0].lease_token;
    assert_ne!(fresh_token, zombie_token, "every claim draws a new token");
    assert!(
        ack::write(&db.pool, &[completion(zombie_token)])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(db.job(id).await.state, "running");
    assert_eq!(
        ack::write(&db.pool, &[completion(fresh_token)])
            .await
            .unwrap(),
        vec![id]
    );
    let done = db.job(id).await;
    assert_eq!(done.state, "completed");
    assert_eq!(done.attempts, 2);
}

#[tokio::test]
async fn jobs_sharing_a_concurrency_key_never_run_at_once() {
    let db = TestDb::new(&[]).await;
    let worker = db.start_worker(vec![canary()], 8).await;
    let mut ids = vec![];
    for _ in 0..4 {
        ids.push(
            db.enqueue_with(
                "canary",
                serde_json::json!({"sleep_ms": 150, "quiet": true}),
                EnqueueOptions {
                    concurrency_key: Some("account:7".into()),
                    ..Default::default()
                },
            )
            .await,
        );
    }
    let free = db
        .enqueue(
            "canary",
            serde_json::json!({"sleep_ms": 150, "quiet": true}),
        )
        .await;
    db.drain().await;
    worker.shutdown().await.unwrap();
    let mut spans = vec![];
    for id in &ids {
        let j = db.job(*id).await;
        assert_eq!(j.state, "completed");
        spans.push((j.started_at.unwrap(), j.finished_at.unwrap()));
    }
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "overlapping runs of one key: {pair:?}"
        );
    }
    assert_eq!(db.job(free).await.state, "completed");
}

#[tokio::test]
async fn operators_retry_dead_jobs_and_cancel_waiting_ones() {
    let db = TestDb::new(&[]).await;
    let dead = db.enqueue("canary", serde_json::json!({})).await;
    sqlx::query(
        "UPDATE fleet.jobs SET state = 'dead', attempts = 5, finished_at = now() WHERE id = $1",
    )
    .bind(dead)
    .execute(&db.pool)
    .await
    .unwrap();
    let waiting = db.enqueue("canary", serde_json::json!({})).await;

    let out = admin::retry(&db.pool, &Selection::ids(vec![dead]), "test")
        .await
        .unwrap();
    assert_eq!(out, 1, "one job queued again");
    let j = db.job(dead).await;
    assert_eq!((j.state.as_str(), j.attempts), ("available", 0));

    let out = admin::cancel(&db.pool, &Selection::ids(vec![waiting]), "test")
        .await
        .unwrap();
    assert_eq!(out, 1, "one job cancelled");
    assert_eq!(db.job(waiting).await.state, "cancelled");
    // Retrying what is not dead or cancelled changes nothing.
    let out = admin::retry(&db.pool, &Selection::ids(vec![dead]), "test")
        .await
        .unwrap();
    assert_eq!(out, 0, "nothing queued again");
    let listed = admin::list(
        &db.pool,
        &admin::Filter {
            limit: 10,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let states: Vec<JobState> = listed.iter().map(|j| j.state).collect();
    assert!(
        states.contains(&JobState::Cancelled) && states.contains(&JobState::Available),
        "{listed:?}"
    );
}

#[tokio::test]
async fn a_paused_queue_is_not_claimed_until_resumed() {
    let db = TestDb::new(&[]).await;
    admin::pause(&db.pool, "canary", "test").await.unwrap();
    let id = db
        .enqueue("canary", serde_json::json!({"quiet": true}))
        .await;
    let someone = WorkerIdentity::new();
    let claimed = fetcher::claim(&db.pool, "canary", 10, someone.id)
        .await
        .unwrap();
    assert!(claimed.is_empty(), "a paused queue yields nothing");
    assert_eq!(db.job(id).await.state, "available");
    admin::resume(&db.pool, "canary", "test").await.unwrap();
    let worker = db.start_worker(vec![canary()], 2).await;
    db.wait_for_state(id, "completed", Duration::from_secs(10))
        .await;
    worker.shutdown().await.unwrap();
}

#[tokio::test]
async fn prune_deletes_expired_jobs_and_workers_and_recounts_states() {
    let db = TestDb::new(&[]).await;
    let old_done = db.enqueue("canary", serde_json::json!({})).await;
    let new_done = db.enqueue("canary", serde_json::json!({})).await;
    let old_dead = db.enqueue("canary", serde_json::json!({})).await;
    let waiting = db.enqueue("canary", serde_json::json!({})).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "UPDATE fleet.jobs SET state = 'completed', finished_at = now() - interval '25 hours' WHERE id = {old_done};
         UPDATE fleet.jobs SET state = 'completed', finished_at = now() - interval '1 hour' WHERE id = {new_done};
         UPDATE fleet.jobs SET state = 'dead', finished_at = now() - interval '15 days' WHERE id = {old_dead};
         INSERT INTO fleet.workers (id, name, host, pid, queues, stopped_at)
         VALUES (gen_random_uuid(), 'gone', 'h', 1, '{{canary}}', now() - interval '2 days');
         ALTER TABLE billing.stripe_events DISABLE TRIGGER stripe_events_enqueue;
         INSERT INTO billing.stripe_events (event_id, type, created, livemode, payload, processed_at)
         VALUES ('evt_old', 'x', now(), false, '{{}}', now() - interval '31 days'),
                ('evt_new', 'x', now(), false, '{{}}', now() - interval '1 day');
         ALTER TABLE billing.stripe_events ENABLE TRIGGER stripe_events_enqueue;"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    // Those hand edits bypassed the counters; prune's recount must heal them.
    let settings = db.settings();
    let specs = pulse_jobs::registry(&pulse_jobs::Env::default());
    let prune = pulse_queue::prune::spec(settings.retention.clone(), &specs);
    let attempt = pulse_contract::Attempt {
        pool: db.pool.clone(),
        job_id: 0,
        job_name: "prune",
        attempt: 1,
        attempt_id: uuid::Uuid::new_v4(),
        max_attempts: 3,
        enqueued_at: chrono::Utc::now(),
    };
    (prune.handler)(serde_json::json!({}), attempt)
        .await
        .unwrap();

    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM fleet.jobs ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, vec![new_done, waiting]);
    assert_eq!(db.count("SELECT count(*) FROM fleet.workers").await, 0);
    let inbox: Vec<String> = sqlx::query_scalar("SELECT event_id FROM billing.stripe_events")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        inbox,
        vec!["evt_new".to_string()],
        "processed events older than 30 days are pruned"
    );
    let counts = admin::state_counts(&db.pool).await.unwrap();
    let n = |state: JobState| {
        counts
            .iter()
            .find(|c| c.state == state)
            .map_or(0, |c| c.count)
    };
    assert_eq!(
        (
            n(JobState::Completed),
            n(JobState::Available),
            n(JobState::Dead)
        ),
        (1, 1, 0)
    );
}
