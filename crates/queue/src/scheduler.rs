//! The scheduler only enqueues: each cron tick of each schedule in `config/`
//! becomes one job with the idempotency key `<schedule>:<tick time>`, so any number
//! of scheduler processes produce exactly one job per tick (run two for
//! availability). Ticks missed while no scheduler ran are caught up when one starts,
//! as each schedule's `catch_up` says: none, the last one, or the last N (keyed by
//! their tick times like any tick, so schedulers starting together catch up once).

use std::{collections::BTreeMap, str::FromStr};

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::{sync::watch, task::JoinSet};

use crate::{
    enqueue::{EnqueueOptions, enqueue},
    settings::{CatchUp, ScheduleSettings},
};

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron: cron::Schedule,
    pub job: String,
    pub payload: serde_json::Value,
    pub catch_up: CatchUp,
    pub catch_up_limit: usize,
    /// The zone the cron reads in.
    pub timezone: chrono_tz::Tz,
}

/// Most ticks looked through when catching up (a year of a per-second schedule is
/// more than a scheduler should ever replay).
const MAX_CATCH_UP_SCAN: usize = 1_000_000;

impl Schedule {
    pub fn parse(name: &str, settings: &ScheduleSettings) -> anyhow::Result<Self> {
        let cron = cron::Schedule::from_str(&settings.cron)
            .with_context(|| format!("schedule `{name}`: bad cron `{}`", settings.cron))?;
        let timezone = match &settings.timezone {
            None => chrono_tz::UTC,
            Some(zone) => zone.parse::<chrono_tz::Tz>().map_err(|e| {
                anyhow::anyhow!("schedule `{name}`: unknown time zone `{zone}`: {e}")
            })?,
        };
        Ok(Self {
            timezone,
            name: name.to_owned(),
            cron,
            job: settings.job.clone(),
            payload: settings.payload.clone(),
            catch_up: settings.catch_up,
            catch_up_limit: settings.catch_up_limit.max(1),
        })
    }

    /// The ticks after `after`, read in the schedule's time zone, as UTC instants.
    pub fn after(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        self.cron
            .after(&after.with_timezone(&self.timezone))
            .map(|t| t.with_timezone(&Utc))
    }

    /// The missed ticks after `last` up to `now` that the catch-up policy replays,
    /// oldest first.
    pub fn missed(&self, last: DateTime<Utc>, now: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let keep = match self.catch_up {
            CatchUp::None => return vec![],
            CatchUp::Last => 1,
            CatchUp::All => self.catch_up_limit,
        };
        let mut kept = std::collections::VecDeque::with_capacity(keep);
        for tick in self
            .after(last)
            .take(MAX_CATCH_UP_SCAN)
            .take_while(|t| *t <= now)
        {
            if kept.len() == keep {
                kept.pop_front();
            }
            kept.push_back(tick);
        }
        kept.into()
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
    catch_up(&pool, &schedule, after).await;
    loop {
        let Some(tick) = schedule.after(after).next() else {
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
                    let next_due = schedule.after(tick).next();
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

/// Replays the ticks missed since the schedule's last one, as its policy says.
async fn catch_up(pool: &PgPool, schedule: &Schedule, now: DateTime<Utc>) {
    if schedule.catch_up == CatchUp::None {
        return;
    }
    let last = sqlx::query_scalar!(
        "SELECT last_tick_at FROM fleet.schedules WHERE name = $1",
        &schedule.name
    )
    .fetch_optional(pool)
    .await;
    let last = match last {
        Ok(Some(Some(last))) => last,
        // Never ticked: nothing was missed.
        Ok(_) => return,
        Err(error) => {
            tracing::warn!(schedule = %schedule.name, %error, "catch-up skipped: last tick unreadable");
            return;
        }
    };
    let missed = schedule.missed(last, now);
    for tick in &missed {
        if let Err(error) = fire(pool, schedule, *tick).await {
            tracing::warn!(schedule = %schedule.name, %tick, %error, "catch-up tick failed");
        }
    }
    if !missed.is_empty() {
        tracing::info!(schedule = %schedule.name, ticks = missed.len(), "caught up missed ticks");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn schedule(catch_up: CatchUp, limit: usize) -> Schedule {
        Schedule::parse(
            "s",
            &ScheduleSettings {
                catch_up,
                catch_up_limit: limit,
                ..ScheduleSettings::new("0 * * * * *", "canary", serde_json::json!({}))
            },
        )
        .unwrap()
    }

    #[test]
    fn a_schedule_in_a_time_zone_keeps_its_wall_clock_time_across_daylight_saving() {
        let mut settings = ScheduleSettings {
            timezone: Some("America/New_York".into()),
            catch_up_limit: 1,
            ..ScheduleSettings::new("0 30 9 * * *", "canary", serde_json::json!({}))
        };
        let s = Schedule::parse("open", &settings).unwrap();
        // New York leaves daylight saving on 2026-11-01: 09:30 is 13:30 UTC before,
        // 14:30 UTC after.
        let before = Utc.with_ymd_and_hms(2026, 10, 30, 12, 0, 0).unwrap();
        let ticks: Vec<_> = s.after(before).take(4).collect();
        assert_eq!(
            ticks,
            vec![
                Utc.with_ymd_and_hms(2026, 10, 30, 13, 30, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 10, 31, 13, 30, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 11, 1, 14, 30, 0).unwrap(),
                Utc.with_ymd_and_hms(2026, 11, 2, 14, 30, 0).unwrap(),
            ]
        );
        settings.timezone = Some("Mars/Olympus_Mons".into());
        let refused = Schedule::parse("open", &settings).unwrap_err();
        assert!(
            refused.to_string().contains("unknown time zone"),
            "{refused}"
        );
    }

    #[test]
    fn missed_ticks_follow_the_policy() {
        let last = Utc.with_ymd_and_hms(2026, 12, 1, 10, 0, 0).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 10, 10, 30).unwrap();
        let at = |m| Utc.with_ymd_and_hms(2026, 12, 1, 10, m, 0).unwrap();
        assert!(schedule(CatchUp::None, 10).missed(last, now).is_empty());
        assert_eq!(schedule(CatchUp::Last, 10).missed(last, now), vec![at(10)]);
        assert_eq!(
            schedule(CatchUp::All, 3).missed(last, now),
            vec![at(8), at(9), at(10)]
        );
        assert_eq!(schedule(CatchUp::All, 100).missed(last, now).len(), 10);
        // Nothing missed: nothing replayed.
        assert!(schedule(CatchUp::Last, 10).missed(now, now).is_empty());
    }
}
