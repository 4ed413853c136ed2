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
        ScheduleSettings::new("* * * * * *", "canary", serde_json::json!({"quiet": true})),
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

#[tokio::test]
async fn missed_ticks_are_caught_up_once_as_each_schedule_says() {
    use pulse_queue::settings::CatchUp;
    let db = TestDb::new(&[]).await;
    let started = Utc::now();
    // Three schedules that last ticked a minute ago (an outage): one catches up
    // nothing, one the last tick, one the last five.
    let mut settings = BTreeMap::new();
    for (name, catch_up) in [
        ("none", CatchUp::None),
        ("last", CatchUp::Last),
        ("five", CatchUp::All),
    ] {
        settings.insert(
            name.to_string(),
            ScheduleSettings {
                catch_up,
                catch_up_limit: 5,
                ..ScheduleSettings::new(
                    "*/5 * * * * *",
                    "canary",
                    serde_json::json!({"quiet": true}),
                )
            },
        );
        sqlx::query(
            "INSERT INTO fleet.schedules (name, cron, job_name, last_tick_at, updated_at)
             VALUES ($1, '*/5 * * * * *', 'canary', $2, now())",
        )
        .bind(name)
        .bind(started - chrono::Duration::seconds(60))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let schedules = scheduler::parse_all(&settings).unwrap();
    // Two schedulers start at once: each missed tick is still enqueued once.
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let runs: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(scheduler::run(
                db.pool.clone(),
                schedules.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    let caught_up = |name: &'static str| {
        let pool = db.pool.clone();
        async move {
            let keys: Vec<String> = sqlx::query_scalar(
                "SELECT idempotency_key FROM fleet.jobs WHERE idempotency_key LIKE $1 || ':%'",
            )
            .bind(name)
            .fetch_all(&pool)
            .await
            .unwrap();
            keys.into_iter()
                .filter(|k| {
                    let tick = k.split_once(':').unwrap().1;
                    chrono::DateTime::parse_from_rfc3339(tick).unwrap() <= started
                })
                .count()
        }
    };
    wait_until("the catch-up", Duration::from_secs(10), || async {
        caught_up("five").await == 5 && caught_up("last").await == 1
    })
    .await;
    let _ = stop.send(true);
    for r in runs {
        r.await.unwrap();
    }
    assert_eq!(caught_up("none").await, 0);
    assert_eq!(caught_up("last").await, 1);
    assert_eq!(caught_up("five").await, 5);
}
