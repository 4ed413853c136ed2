//! The queue while an old snapshot holds the xmin horizon (an idle-in-transaction
//! session), and the mechanisms that keep it fast then: claims from a floor, quiet
//! enqueues, the rescue worker by worker, the queue's own vacuum.

use std::time::Duration;

use pulse_queue::{
    fetcher::{self, Floor},
    lease::{self, WorkerIdentity},
    maintenance::{self, Action},
};
use sqlx::{Connection, Executor, PgConnection, postgres::PgListener};

use crate::helpers::*;

/// `n` canary jobs, enqueued by one statement as a trigger would, one call a row.
async fn enqueue_canaries(db: &TestDb, n: i64) {
    sqlx::query("SELECT count(fleet.enqueue('canary', '{}')) FROM generate_series(1, $1)")
        .bind(n)
        .execute(&db.pool)
        .await
        .unwrap();
}

/// Shared buffers a claim statement's scan of the claim index touches (EXPLAIN
/// ANALYZE), from `floor` on.
async fn claim_buffers(db: &TestDb, floor: Option<fetcher::Position>) -> i64 {
    let (rank, run_at, id) = match floor {
        Some((rank, run_at, id)) => (rank, Some(run_at), id),
        None => (i32::MIN, None, i64::MIN),
    };
    let sql = format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        include_str!("../../crates/queue/src/sql/claim.sql")
    );
    let mut tx = db.pool.begin().await.unwrap();
    let plan: serde_json::Value = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind("canary")
        .bind(10_i64)
        .bind(uuid::Uuid::new_v4())
        .bind(rank)
        .bind(run_at)
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    claim_index_scan_buffers(&plan[0]["Plan"]).expect("the claim scans jobs_claim")
}

/// Buffers of the plan node scanning the claim index (what a floor saves).
fn claim_index_scan_buffers(node: &serde_json::Value) -> Option<i64> {
    if node["Index Name"] == "jobs_claim" {
        return Some(node["Shared Hit Blocks"].as_i64()? + node["Shared Read Blocks"].as_i64()?);
    }
    node["Plans"]
        .as_array()?
        .iter()
        .find_map(claim_index_scan_buffers)
}

#[tokio::test]
async fn with_the_horizon_held_a_claim_from_its_floor_skips_the_dead_entries_a_sweep_visits() {
    let db = TestDb::new(&[]).await;
    // The horizon held from here on: nothing claimed below can be vacuumed away.
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    holder.execute("BEGIN").await.unwrap();
    holder.execute("SELECT txid_current()").await.unwrap();

    // 5,000 jobs due 10 ms apart over the last minute, claimed and completed under the
    // held horizon, then 10 waiting.
    sqlx::query(
        "SELECT count(fleet.enqueue('canary', '{}',
                run_at => now() - interval '60 seconds' + i * interval '10 milliseconds'))
         FROM generate_series(1, 5000) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let worker = WorkerIdentity::new();
    worker.register(&db.pool, &["canary"]).await.unwrap();
    let mut floor = Floor::new();
    let mut claimed = 0;
    while claimed < 5000 {
        let from = floor.next();
        let rows = fetcher::claim_from(&db.pool, "canary", 500, worker.id, from)
            .await
            .unwrap();
        floor.claimed(from, &rows, Duration::ZERO);
        claimed += rows.len();
        sqlx::query(
            "UPDATE fleet.jobs SET state = 'completed', lease_owner = NULL WHERE id = ANY($1)",
        )
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .execute(&db.pool)
        .await
        .unwrap();
    }
    enqueue_canaries(&db, 10).await;

    let from = floor
        .next()
        .expect("a floor after claims, and no sweep due yet");
    let with_floor = claim_buffers(&db, Some(from)).await;
    let sweep = claim_buffers(&db, None).await;
    // 5,000 dead rows fill about a hundred heap pages.
    assert!(
        sweep > 100,
        "a claim from the head visits the 5,000 dead entries' rows: {sweep} buffers"
    );
    assert!(
        with_floor * 5 < sweep,
        "a claim from the floor visits few: {with_floor} buffers, against {sweep} from the head"
    );
    holder.execute("ROLLBACK").await.unwrap();
}

/// A job whose transaction began long before it committed: its run_at (the
/// transaction's start) is 10 s old when it becomes visible, behind any floor.
const LATE_ENQUEUE: &str =
    "SELECT fleet.enqueue('canary', '{}', run_at => now() - interval '10 seconds')";

/// Opens a transaction that enqueues one job by [`LATE_ENQUEUE`]; commit it to
/// make the job visible.
async fn begin_late_enqueue(db: &TestDb) -> (PgConnection, i64) {
    let mut late = PgConnection::connect(&db.url).await.unwrap();
    late.execute("BEGIN").await.unwrap();
    let id = sqlx::query_scalar(LATE_ENQUEUE)
        .fetch_one(&mut late)
        .await
        .unwrap();
    (late, id)
}

#[tokio::test]
async fn a_job_whose_transaction_began_before_the_floor_is_claimed_by_the_next_sweep() {
    let db = TestDb::new(&[]).await;
    let (mut late, late_id) = begin_late_enqueue(&db).await;
    let worker = WorkerIdentity::new();
    worker.register(&db.pool, &["canary"]).await.unwrap();
    let newer = db.enqueue("canary", serde_json::json!({})).await;
    let mut floor = Floor::new();
    assert_eq!(floor.next(), None, "a fetcher's first claim is a sweep");
    let first = fetcher::claim_from(&db.pool, "canary", 10, worker.id, None)
        .await
        .unwrap();
    floor.claimed(None, &first, Duration::ZERO);
    assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), vec![newer]);
    late.execute("COMMIT").await.unwrap();

    let from = floor.next().expect("the floor after the first claim");
    assert_eq!(
        from.1,
        first[0].run_at - chrono::Duration::from_std(Floor::MARGIN).unwrap()
    );
    let fast = fetcher::claim_from(&db.pool, "canary", 10, worker.id, Some(from))
        .await
        .unwrap();
    assert!(
        fast.is_empty(),
        "the late job is behind the floor: {:?}",
        fast.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    let swept = fetcher::claim(&db.pool, "canary", 10, worker.id)
        .await
        .unwrap();
    assert_eq!(
        swept.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![late_id]
    );
}

#[tokio::test]
async fn a_worker_runs_a_job_committed_behind_its_floor() {
    let db = TestDb::new(&[]).await;
    let worker = db.start_worker(vec![canary()], 4).await;
    let (mut late, late_id) = begin_late_enqueue(&db).await;
    // Newer jobs run first: the worker's floor moves past the late job.
    for _ in 0..5 {
        let id = db.enqueue("canary", serde_json::json!({})).await;
        db.wait_for_state(id, "completed", Duration::from_secs(10))
            .await;
    }
    late.execute("COMMIT").await.unwrap();
    let job = db
        .wait_for_state(late_id, "completed", Duration::from_secs(10))
        .await;
    assert_eq!(job.attempts, 1);
    worker.shutdown().await.unwrap();
}

/// Notifications on `fleet_jobs` up to a marker sent after `act`: what `act` caused.
async fn notifications_during(db: &TestDb, act: impl AsyncFnOnce()) -> Vec<String> {
    let mut listener = PgListener::connect(&db.url).await.unwrap();
    listener.listen("fleet_jobs").await.unwrap();
    act().await;
    sqlx::query("SELECT pg_notify('fleet_jobs', 'marker')")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("the marker arrives")
            .unwrap();
        if n.payload() == "marker" {
            return seen;
        }
        seen.push(n.payload().to_owned());
    }
}

#[tokio::test]
async fn enqueues_in_flight_together_do_not_notify_and_a_parked_fetcher_is_notified() {
    let db = TestDb::new(&[]).await;
    let mut a = PgConnection::connect(&db.url).await.unwrap();
    let mut b = PgConnection::connect(&db.url).await.unwrap();
    // Two enqueues in flight at once, nobody parked: no NOTIFY (each used to take the
    // other's idle lock for a parked fetcher).
    let quiet = notifications_during(&db, async || {
        a.execute("BEGIN").await.unwrap();
        b.execute("BEGIN").await.unwrap();
        a.execute("SELECT fleet.enqueue('canary', '{}')")
            .await
            .unwrap();
        b.execute("SELECT fleet.enqueue('canary', '{}')")
            .await
            .unwrap();
        a.execute("COMMIT").await.unwrap();
        b.execute("COMMIT").await.unwrap();
    })
    .await;
    assert_eq!(quiet, Vec::<String>::new());

    // A fetcher parked on the third slot: the enqueue NOTIFYs.
    let mut parked = PgConnection::connect(&db.url).await.unwrap();
    let took: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtext('fleet.idle.' || 2), hashtext('canary'))",
    )
    .fetch_one(&mut parked)
    .await
    .unwrap();
    assert!(took);
    let woken = notifications_during(&db, async || {
        a.execute("SELECT fleet.enqueue('canary', '{}')")
            .await
            .unwrap();
    })
    .await;
    assert_eq!(woken, vec!["canary".to_string()]);
}

#[tokio::test]
async fn a_dead_workers_jobs_are_rescued_worker_by_worker_and_the_worker_swept_once() {
    let db = TestDb::new(&[]).await;
    for _ in 0..2 {
        db.enqueue("canary", serde_json::json!({})).await;
    }
    let dead = WorkerIdentity::new();
    dead.register(&db.pool, &["canary"]).await.unwrap();
    assert_eq!(
        fetcher::claim(&db.pool, "canary", 10, dead.id)
            .await
            .unwrap()
            .len(),
        2
    );
    let timeout = Duration::from_secs(10);
    assert_eq!(
        lease::rescue_dead_workers(&db.pool, timeout).await.unwrap(),
        0,
        "alive"
    );
    sqlx::query(
        "UPDATE fleet.workers SET last_heartbeat_at = now() - interval '1 hour' WHERE id = $1",
    )
    .bind(dead.id)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        lease::rescue_dead_workers(&db.pool, timeout).await.unwrap(),
        2
    );
    let swept: i64 = db
        .count("SELECT count(*) FROM fleet.workers WHERE swept_at IS NOT NULL")
        .await;
    assert_eq!(swept, 1);
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.jobs WHERE state = 'available' AND errors @> '[{\"kind\": \"lease_expired\"}]'")
            .await,
        2
    );
    // Back from the dead: its heartbeat clears the mark, and what it claims then is
    // rescued again when it dies again.
    assert!(dead.heartbeat(&db.pool, &[]).await.unwrap().is_some());
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.workers WHERE swept_at IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        fetcher::claim(&db.pool, "canary", 10, dead.id)
            .await
            .unwrap()
            .len(),
        2
    );
    sqlx::query("UPDATE fleet.workers SET stopped_at = now() WHERE id = $1")
        .bind(dead.id)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        lease::rescue_dead_workers(&db.pool, timeout).await.unwrap(),
        2
    );
    assert_eq!(
        lease::rescue_dead_workers(&db.pool, timeout).await.unwrap(),
        0
    );
}

#[test]
fn the_queue_vacuums_and_analyses_its_tables_unless_an_older_transaction_holds_the_horizon() {
    let at = |s: i64| Some(chrono::DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap());
    let many = maintenance::DEAD_ROWS;
    assert_eq!(
        maintenance::decide(many, 0, None, None),
        Some(Action::Vacuum)
    );
    assert_eq!(
        maintenance::decide(many, 0, at(0), at(10)),
        Some(Action::Vacuum)
    );
    // The oldest transaction began before the last vacuum: the dead rows since are
    // still visible to it, a vacuum would remove none, and an analysis would count
    // the dead versions' table.
    assert_eq!(maintenance::decide(many, 0, at(10), at(0)), None);
    let changed = maintenance::CHANGED_ROWS;
    assert_eq!(maintenance::decide(many, changed, at(10), at(0)), None);
    assert_eq!(
        maintenance::decide(0, changed, at(0), at(10)),
        Some(Action::Analyze)
    );
    assert_eq!(
        maintenance::decide(0, changed, None, None),
        Some(Action::Analyze)
    );
    assert_eq!(maintenance::decide(many - 1, 0, None, None), None);
}

#[tokio::test]
async fn the_queues_maintenance_vacuums_and_analyses_its_tables() {
    let db = TestDb::new(&[]).await;
    enqueue_canaries(&db, 25000).await;
    // The statistics system counts the dead rows once the deleting backend reports:
    // delete on one connection and have it report at its next transaction's end.
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    conn.execute("DELETE FROM fleet.jobs").await.unwrap();
    conn.execute("SELECT pg_stat_force_next_flush()")
        .await
        .unwrap();
    conn.execute("SELECT 1").await.unwrap();
    wait_until(
        "the dead rows are counted",
        Duration::from_secs(10),
        || async {
            db.count(
                "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'fleet.jobs'::regclass",
            )
            .await
                >= maintenance::DEAD_ROWS
        },
    )
    .await;
    let done = maintenance::check(&mut conn).await.unwrap();
    assert!(
        done.iter()
            .any(|m| m.table == "fleet.jobs" && m.action == Action::Vacuum),
        "{done:?}"
    );
    assert_eq!(
        db.count(
            "SELECT count(*) FROM pg_stat_user_tables WHERE relid = 'fleet.jobs'::regclass
               AND last_vacuum IS NOT NULL AND last_analyze IS NOT NULL"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn the_queues_maintenance_folds_the_metrics_deltas_when_nobody_reads_them() {
    let db = TestDb::new(&[]).await;
    enqueue_canaries(&db, 300).await;
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.stat_deltas").await,
        300
    );
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    maintenance::check(&mut conn).await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM fleet.stat_deltas").await, 0);
    assert_eq!(
        db.count(
            "SELECT value::bigint FROM fleet.stats
             WHERE metric = 'jobs' AND job_name = 'canary' AND label = 'available'"
        )
        .await,
        300
    );
}
