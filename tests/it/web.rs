//! `/metrics` and `/internal/health` over real HTTP.

use std::time::Duration;

use crate::helpers::*;

const OPERATOR: &str = "test-operator-token";

/// The web process, configured with no schedule (no scheduler runs in these tests).
async fn serve(db: &TestDb, max_lag: u64) -> String {
    db.serve_web(|s| {
        s.web.max_queue_lag_secs = max_lag;
        s.web.operator_token = OPERATOR.into();
        s.schedules.clear();
    })
    .await
}

/// A GET as an operator (these pages are closed to everyone else).
async fn get(url: String) -> reqwest::Result<reqwest::Response> {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(OPERATOR)
        .send()
        .await
}

#[tokio::test]
async fn metrics_report_jobs_by_state_attempts_and_wait_histograms() {
    let db = TestDb::new(&[]).await;
    let worker = db.start_worker(vec![canary()], 4).await;
    for _ in 0..3 {
        db.enqueue("canary", serde_json::json!({"quiet": true}))
            .await;
    }
    db.enqueue("canary", serde_json::json!({"sleep_ms": "bad"}))
        .await;
    db.drain().await;
    worker.shutdown().await.unwrap();
    let base = serve(&db, 60).await;
    let body = get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "fleet_jobs{job=\"canary\",state=\"completed\"} 3",
        "fleet_jobs{job=\"canary\",state=\"dead\"} 1",
        "fleet_jobs{job=\"canary\",state=\"available\"} 0",
        "fleet_job_attempts_total{job=\"canary\",outcome=\"completed\"} 3",
        "fleet_job_attempts_total{job=\"canary\",outcome=\"dead\"} 1",
        "fleet_job_wait_seconds_count{job=\"canary\"} 4",
        "fleet_job_run_seconds_bucket{le=\"+Inf\",job=\"canary\"} 4",
        "fleet_oldest_available_job_age_seconds{job=\"canary\"} 0",
    ] {
        assert!(body.contains(line), "missing `{line}` in:\n{body}");
    }
}

#[tokio::test]
async fn health_is_200_when_fine_and_503_with_the_reason_when_a_queue_lags() {
    let db = TestDb::new(&[]).await;
    let base = serve(&db, 60).await;
    let ok = get(format!("{base}/internal/health")).await.unwrap();
    assert_eq!(ok.status(), 200);
    let body: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"]["ok"], true);

    // A due job and no worker: the queue lags past a 1 s limit.
    db.enqueue("canary", serde_json::json!({})).await;
    let strict = serve(&db, 1).await;
    wait_until(
        "the canary queue lags over 1 s",
        Duration::from_secs(10),
        || async {
            let body: serde_json::Value = get(format!("{strict}/internal/health"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["problems"].to_string().contains("queue canary lags")
        },
    )
    .await;
    let body: serde_json::Value = get(format!("{strict}/internal/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "unhealthy");
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert!(
        problems.iter().any(|p| p.starts_with("queue canary lags")),
        "{body}"
    );
    // And no worker runs it.
    assert!(
        problems.contains(&"queue canary has 1 jobs waiting or running and no live worker runs it"),
        "{body}"
    );
}

#[tokio::test]
async fn health_names_a_scheduled_queue_no_worker_runs_and_a_schedule_that_stopped_ticking() {
    let db = TestDb::new(&[]).await;
    let every_second = std::collections::BTreeMap::from([(
        "canary".to_string(),
        pulse_queue::settings::ScheduleSettings::new(
            "* * * * * *",
            "canary",
            serde_json::json!({"quiet": true}),
        ),
    )]);
    let schedules = every_second.clone();
    let base = db
        .serve_web(move |s| {
            s.web.operator_token = OPERATOR.into();
            s.schedules = schedules;
        })
        .await;
    let problems = || async {
        let answer = get(format!("{base}/internal/health")).await.unwrap();
        let code = answer.status().as_u16();
        let body: serde_json::Value = answer.json().await.unwrap();
        (code, body["problems"].to_string())
    };
    // No worker, no scheduler: the scheduled queue has no worker at once, and two
    // ticks later the schedule is overdue.
    wait_until("both problems", Duration::from_secs(10), || async {
        let (code, p) = problems().await;
        code == 503
            && p.contains("queue canary is scheduled (canary) and no live worker runs it")
            && p.contains("schedule canary (* * * * * *) has never ticked")
    })
    .await;

    // A worker and a scheduler: healthy.
    let worker = db.start_worker(vec![canary()], 1).await;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let scheduler = tokio::spawn(pulse_queue::scheduler::run(
        db.pool.clone(),
        pulse_queue::scheduler::parse_all(&every_second).unwrap(),
        stop_rx,
    ));
    wait_until("healthy", Duration::from_secs(10), || async {
        problems().await.0 == 200
    })
    .await;

    // The scheduler stops: two ticks later the schedule is overdue, with its last tick.
    let _ = stop.send(true);
    scheduler.await.unwrap();
    wait_until("the schedule overdue", Duration::from_secs(10), || async {
        let (code, p) = problems().await;
        code == 503 && p.contains("schedule canary (* * * * * *) last ticked")
    })
    .await;
    // The worker stops with jobs still due: the queue's work has no worker.
    worker.shutdown().await.unwrap();
    db.enqueue("canary", serde_json::json!({"quiet": true}))
        .await;
    wait_until(
        "the queue without a worker",
        Duration::from_secs(10),
        || async {
            problems()
                .await
                .1
                .contains("queue canary has 1 jobs waiting or running and no live worker runs it")
        },
    )
    .await;
}
