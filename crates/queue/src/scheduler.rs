//! The scheduler only enqueues: each cron tick of each schedule in `config/`
//! becomes one job with the idempotency key `<schedule>:<tick time>`, so any number
//! of scheduler processes produce exactly one job per tick (run two for
//! availability). Ticks missed while no scheduler ran are not replayed.

use std::{collections::BTreeMap, str::FromStr};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    enqueue::{EnqueueOptions, enqueue},
    settings::ScheduleSettings,
};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron: cron::Schedule,
    pub job: String,
    pub payload: serde_json::Value,
}

impl Schedule {
    pub fn parse(name: &str, settings: &ScheduleSettings) -> anyhow::Result<Self> {
        let cron = cron::Schedule::from_str(&settings.cron)
            .with_context(|| format!("schedule `{name}`: bad cron `{}`", settings.cron))?;
        Ok(Self {
            name: name.to_owned(),
            cron,
            job: settings.job.clone(),
            payload: settings.payload.clone(),
        })
    }

    /// The dedupe key of one tick: the same in every scheduler process.
    pub fn tick_key(&self, tick: DateTime<Utc>) -> String {
        format!("{}:{}", self.name, tick.to_rfc3339())
    }
}

pub fn parse_all(settings: &BTreeMap<String, ScheduleSettings>) -> anyhow::Result<Vec<Schedule>> {
    settings
        .iter()
        .map(|(name, s)| Schedule::parse(name, s))
        .collect()
}

/// Enqueues the job of one tick and records it. Returns the job id.
pub async fn fire(pool: &PgPool, schedule: &Schedule, tick: DateTime<Utc>) -> anyhow::Result<i64> {
    let mut tx = pool.begin().await?;
    let options = EnqueueOptions {
        idempotency_key: Some(schedule.tick_key(tick)),
        ..Default::default()
    };
    let id = enqueue(&mut *tx, &schedule.job, &schedule.payload, &options).await?;
    sqlx::query!(
        "INSERT INTO fleet.schedules (name, cron, job_name, last_tick_at, last_job_id, updated_at)
         VALUES ($1, $2, $3, $4, $5, now())
         ON CONFLICT (name) DO UPDATE SET cron = excluded.cron, job_name = excluded.job_name,
             last_tick_at = greatest(fleet.schedules.last_tick_at, excluded.last_tick_at),
             last_job_id = excluded.last_job_id, updated_at = now()",
        &schedule.name,
        schedule.cron.to_string(),
        &schedule.job,
        tick,
        id,
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Runs every schedule until `stop`.
pub async fn run(pool: PgPool, schedules: Vec<Schedule>, stop: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    for schedule in schedules {
        tracing::info!(schedule = %schedule.name, cron = %schedule.cron, job = %schedule.job, "schedule active");
        tasks.spawn(run_one(pool.clone(), schedule, stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn run_one(pool: PgPool, schedule: Schedule, mut stop: watch::Receiver<bool>) {
    let mut after = Utc::now();
    loop {
        let Some(tick) = schedule.cron.after(&after).next() else {
            return;
        };
        let wait = (tick - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // A failed tick is retried until it lands or the next tick is due.
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            match fire(&pool, &schedule, tick).await {
                Ok(id) => {
                    tracing::info!(schedule = %schedule.name, %tick, job.id = id, "tick enqueued");
                    break;
                }
                Err(error) => {
                    tracing::warn!(schedule = %schedule.name, %tick, %error, "tick failed; retrying");
                    let next_due = schedule.cron.after(&tick).next();
                    if next_due.is_some_and(|n| {
                        n <= Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default()
                    }) {
                        break;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
        after = tick;
    }
}
