//! The scheduler: one job per tick, however many schedulers run.

use std::{collections::BTreeMap, time::Duration};

use chrono::{TimeZone, Utc};
use pulse_fleet::config::ScheduleSettings;
use pulse_queue::scheduler;

use crate::helpers::*;

fn every_second() -> scheduler::Schedule {
    let mut settings = BTreeMap::new();
    settings.insert(
        "probe".to_string(),
        ScheduleSettings {
            cron: "* * * * * *".into(),
            job: "canary".into(),
            payload: serde_json::json!({"quiet": true}),
        },
    );
    scheduler::parse_all(&settings).unwrap().remove(0)
}

#[tokio::test]
async fn two_schedulers_firing_the_same_tick_make_one_job() {
    let db = TestDb::new(&[]).await;
    let schedule = every_second();
    let tick = Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0).unwrap();
    let (a, b) = tokio::join!(
        scheduler::fire(&db.pool, &schedule, tick),
        scheduler::fire(&db.pool, &schedule, tick)
    );
    assert_eq!(a.unwrap(), b.unwrap());
    assert_eq!(db.count("SELECT count(*) FROM fleet.jobs").await, 1);
    let key: String = sqlx::query_scalar("SELECT idempotency_key FROM fleet.jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(key, "probe:2026-11-23T10:00:00+00:00");
}

#[tokio::test]
async fn two_running_schedulers_produce_exactly_one_job_per_tick() {
    let db = TestDb::new(&[]).await;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let one = tokio::spawn(scheduler::run(
        db.pool.clone(),
        vec![every_second()],
        stop_rx.clone(),
    ));
    let two = tokio::spawn(scheduler::run(
        db.pool.clone(),
        vec![every_second()],
        stop_rx,
    ));
    wait_until("three ticks fired", Duration::from_secs(10), || async {
        db.count("SELECT count(*) FROM fleet.jobs").await >= 3
    })
    .await;
    stop.send(true).unwrap();
    one.await.unwrap();
    two.await.unwrap();
    let ticks = db
        .count("SELECT count(DISTINCT idempotency_key) FROM fleet.jobs")
        .await;
    assert_eq!(db.count("SELECT count(*) FROM fleet.jobs").await, ticks);
    let last: Option<chrono::DateTime<Utc>> =
        sqlx::query_scalar("SELECT last_tick_at FROM fleet.schedules WHERE name = 'probe'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(last.is_some());
}
