//! The queue on more than one server (`docs/scaling.md`, step 5), simulated: three
//! queue databases on this server, each with the whole `fleet` schema and a worker of
//! its own, and one business database that every handler writes to. Jobs are routed by
//! `pulse_queue::shards::ShardMap`. What must hold across shards: a key's duplicates
//! meet and dedupe, a concurrency key's jobs never overlap, every job runs once, the
//! load spreads, and a shard that goes down stops only its own share.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use pulse_contract::{JobError, JobSpec};
use pulse_fleet::db;
use pulse_queue::{
    enqueue::EnqueueOptions,
    shards::{ShardMap, shard_of},
    worker::{self, QueueSpec, WorkerHandle},
};
use serde_json::json;
use sqlx::{AssertSqlSafe, PgPool};

use crate::helpers::{FAST_BACKOFF, TestDb, spec, test_worker_settings, wait_until};

const PROBE: &str = "shard_probe";

/// The probe as shard `shard` runs it: records its run in the business database. A
/// serial job (one with a concurrency key) works 2 ms, so overlaps would show.
fn probe(shard: usize) -> JobSpec {
    spec(PROBE, 3, FAST_BACKOFF, move |payload, attempt| async move {
        let key = payload["key"].as_str().unwrap_or_default().to_owned();
        let kind = payload["kind"].as_str().unwrap_or_default().to_owned();
        let started = Utc::now();
        if kind == "serial" {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sqlx::query(
            "INSERT INTO shard_runs (job_key, kind, shard, started, finished)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&key)
        .bind(&kind)
        .bind(shard as i32)
        .bind(started)
        .bind(Utc::now())
        .execute(&attempt.pool)
        .await
        .map_err(JobError::from)?;
        Ok(())
    })
}

struct Fleet {
    business: TestDb,
    shards: Vec<TestDb>,
    map: Arc<ShardMap>,
    workers: Vec<WorkerHandle>,
}

impl Fleet {
    async fn new(n: usize) -> Self {
        let business = TestDb::new(&[]).await;
        sqlx::query(
            "CREATE TABLE shard_runs (job_key text NOT NULL, kind text NOT NULL,
                 shard int NOT NULL, started timestamptz NOT NULL, finished timestamptz NOT NULL)",
        )
        .execute(&business.pool)
        .await
        .expect("shard_runs");
        let mut shards = Vec::new();
        let mut workers = Vec::new();
        for shard in 0..n {
            let db = TestDb::new(&[probe(shard)]).await;
            let pools = db::queue_pools(&db.settings(), 1)
                .await
                .expect("queue pools");
            let queues = vec![QueueSpec {
                job: probe(shard),
                concurrency: 8,
            }];
            // Claims and acks on the shard; the handler's pool is the business database.
            workers.push(
                worker::start(
                    business.pool.clone(),
                    pools,
                    queues,
                    &test_worker_settings(),
                )
                .await
                .expect("start a shard's worker"),
            );
            shards.push(db);
        }
        let map = Arc::new(ShardMap::new(
            shards.iter().map(|s| s.pool.clone()).collect(),
        ));
        Self {
            business,
            shards,
            map,
            workers,
        }
    }

    async fn runs(&self, sql: &str) -> i64 {
        self.business.count(sql).await
    }

    /// Waits until every shard has nothing due or running.
    async fn drain(&self) {
        for shard in &self.shards {
            shard.drain().await;
        }
    }

    async fn jobs_per_shard(&self) -> Vec<i64> {
        let mut counts = Vec::new();
        for shard in &self.shards {
            counts.push(shard.count("SELECT count(*) FROM fleet.jobs").await);
        }
        counts
    }

    async fn shutdown(self) {
        for worker in self.workers {
            worker.shutdown().await.expect("shutdown a shard's worker");
        }
    }
}

fn keyed(key: &str) -> EnqueueOptions {
    EnqueueOptions {
        idempotency_key: Some(key.to_owned()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn across_three_shards_duplicates_dedupe_concurrency_keys_serialise_and_every_job_runs_once()
{
    let fleet = Fleet::new(3).await;

    // 600 keyed jobs, each enqueued by two producers at once; 60 concurrency keys with
    // 5 jobs each; 300 jobs with no key at all.
    let mut producers = Vec::new();
    for _ in 0..2 {
        let map = fleet.map.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..600 {
                let key = format!("dedupe:{i}");
                let routed = map
                    .enqueue(PROBE, &json!({"key": key, "kind": "dedupe"}), &keyed(&key))
                    .await
                    .expect("enqueue a keyed job");
                assert_eq!(routed.shard, shard_of(&key, 3));
            }
        }));
    }
    for round in 0..5 {
        for i in 0..60 {
            let key = format!("serial:{i}");
            let options = EnqueueOptions {
                concurrency_key: Some(key.clone()),
                ..Default::default()
            };
            let routed = fleet
                .map
                .enqueue(
                    PROBE,
                    &json!({"key": key, "kind": "serial", "round": round}),
                    &options,
                )
                .await
                .expect("enqueue a serial job");
            assert_eq!(routed.shard, shard_of(&key, 3));
        }
    }
    for i in 0..300 {
        fleet
            .map
            .enqueue(
                PROBE,
                &json!({"key": format!("free:{i}"), "kind": "free"}),
                &EnqueueOptions::default(),
            )
            .await
            .expect("enqueue a free job");
    }
    for producer in producers {
        producer.await.expect("producer");
    }

    wait_until("every job has run", Duration::from_secs(60), || async {
        fleet.runs("SELECT count(*) FROM shard_runs").await >= 1_200
    })
    .await;
    fleet.drain().await;

    // Every job ran exactly once, and the duplicates were never stored.
    assert_eq!(fleet.runs("SELECT count(*) FROM shard_runs").await, 1_200);
    let per_shard = fleet.jobs_per_shard().await;
    assert_eq!(per_shard.iter().sum::<i64>(), 1_200, "{per_shard:?}");
    assert_eq!(
        fleet
            .runs("SELECT count(DISTINCT job_key) FROM shard_runs WHERE kind = 'dedupe'")
            .await,
        600
    );
    assert_eq!(
        fleet
            .runs("SELECT count(DISTINCT job_key) FROM shard_runs WHERE kind = 'free'")
            .await,
        300
    );
    // Each keyed job ran on its key's shard.
    let mut misplaced = 0;
    let rows: Vec<(String, i32)> =
        sqlx::query_as("SELECT job_key, shard FROM shard_runs WHERE kind <> 'free'")
            .fetch_all(&fleet.business.pool)
            .await
            .expect("runs");
    for (key, shard) in &rows {
        if shard_of(key, 3) != *shard as usize {
            misplaced += 1;
        }
    }
    assert_eq!(misplaced, 0);
    // A concurrency key's five jobs never overlapped, though they ran 8 at a time.
    let overlaps = fleet
        .runs(
            "SELECT count(*) FROM shard_runs a JOIN shard_runs b
               ON a.job_key = b.job_key AND a.ctid < b.ctid
             WHERE a.kind = 'serial'
               AND tstzrange(a.started, a.finished) && tstzrange(b.started, b.finished)",
        )
        .await;
    assert_eq!(overlaps, 0);
    assert_eq!(
        fleet
            .runs("SELECT count(*) FROM shard_runs WHERE kind = 'serial'")
            .await,
        300
    );
    // The load spread: each shard holds between a fifth and a half of the jobs.
    for jobs in &per_shard {
        assert!((240..=600).contains(jobs), "unbalanced: {per_shard:?}");
    }
    fleet.shutdown().await;
}

async fn set_connections(db: &TestDb, allowed: bool) {
    let name = db.name();
    let admin = PgPool::connect(&crate::helpers::server_url())
        .await
        .expect("admin connection");
    sqlx::query(AssertSqlSafe(format!(
        "ALTER DATABASE {name} ALLOW_CONNECTIONS {allowed}"
    )))
    .execute(&admin)
    .await
    .expect("alter database");
    if !allowed {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .execute(&admin)
        .await
        .expect("terminate the shard's connections");
    }
    admin.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_down_refuses_only_its_own_share_and_its_jobs_run_once_after_it_returns() {
    let fleet = Fleet::new(3).await;
    let down = 1;
    let keys: Vec<String> = (0..300).map(|i| format!("order:{i}")).collect();
    let theirs = keys.iter().filter(|k| shard_of(k, 3) == down).count();
    assert!(theirs > 50, "{theirs} keys on the shard taken down");

    set_connections(&fleet.shards[down], false).await;
    let mut refused = Vec::new();
    for key in &keys {
        match fleet
            .map
            .enqueue(PROBE, &json!({"key": key, "kind": "dedupe"}), &keyed(key))
            .await
        {
            Ok(routed) => assert_ne!(routed.shard, down),
            Err(error) => {
                assert_eq!(error.shard, down, "{error}");
                assert!(
                    error.to_string().starts_with("enqueue on queue shard 1:"),
                    "{error}"
                );
                refused.push(key.clone());
            }
        }
    }
    assert_eq!(refused.len(), theirs);
    // The other two shards run their share while the third is down.
    let accepted = (keys.len() - theirs) as i64;
    wait_until(
        "the shards that are up drain",
        Duration::from_secs(30),
        || async { fleet.runs("SELECT count(*) FROM shard_runs").await >= accepted },
    )
    .await;
    assert_eq!(
        fleet
            .runs(&format!(
                "SELECT count(*) FROM shard_runs WHERE shard = {down}"
            ))
            .await,
        0
    );

    // It comes back; the producers send everything again, as a retrying relay would.
    set_connections(&fleet.shards[down], true).await;
    for key in &keys {
        fleet
            .map
            .enqueue(PROBE, &json!({"key": key, "kind": "dedupe"}), &keyed(key))
            .await
            .expect("enqueue once the shard is back");
    }
    wait_until("every key has run", Duration::from_secs(60), || async {
        fleet.runs("SELECT count(*) FROM shard_runs").await >= keys.len() as i64
    })
    .await;
    fleet.drain().await;
    assert_eq!(
        fleet.runs("SELECT count(*) FROM shard_runs").await,
        keys.len() as i64
    );
    assert_eq!(
        fleet
            .runs("SELECT count(DISTINCT job_key) FROM shard_runs")
            .await,
        keys.len() as i64
    );
    assert_eq!(
        fleet
            .runs(&format!(
                "SELECT count(*) FROM shard_runs WHERE shard = {down}"
            ))
            .await,
        theirs as i64
    );
    fleet.shutdown().await;
}
