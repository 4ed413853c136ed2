//! `/metrics` and `/internal/health` over real HTTP.

use std::time::Duration;

use crate::helpers::*;

const OPERATOR: &str = "test-operator-token";

async fn serve(db: &TestDb, max_lag: u64) -> String {
    db.serve_web(|s| {
        s.web.max_queue_lag_secs = max_lag;
        s.web.operator_token = OPERATOR.into();
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
            get(format!("{strict}/internal/health"))
                .await
                .unwrap()
                .status()
                == 503
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
    assert!(
        body["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("queue canary lags"),
        "{body}"
    );
}
