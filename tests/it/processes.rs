//! Real worker processes: SIGKILL and rescue, SIGTERM and the grace period, and
//! several processes sharing a queue.

use std::time::{Duration, Instant};

use crate::helpers::*;

#[tokio::test]
async fn the_jobs_of_a_sigkilled_worker_are_rerun_within_the_lease_timeout() {
    let db = TestDb::new(&[]).await;
    let mut victim = fleet_process(&db, &["worker", "--queues", "canary"], &[]);
    let id = db
        .enqueue(
            "canary",
            serde_json::json!({"sleep_ms": 60_000, "quiet": true}),
        )
        .await;
    db.wait_for_state(id, "running", Duration::from_secs(20))
        .await;
    sigkill(&victim);
    let killed_at = Instant::now();
    let status = victim.wait().await.unwrap();
    assert!(!status.success(), "killed, not exited");

    // A healthy worker (whose canary finishes at once) notices the dead lease.
    let quick = spec("canary", 5, NO_JITTER, |_, _| async { Ok(()) });
    let rescuer = db.start_worker(vec![quick], 4).await;
    let job = db
        .wait_for_state(id, "completed", Duration::from_secs(30))
        .await;
    let took = killed_at.elapsed();
    rescuer.shutdown().await.unwrap();

    assert_eq!(
        job.attempts, 2,
        "the killed attempt counts, the rerun is the second"
    );
    assert_eq!(job.errors[0]["kind"], "lease_expired");
    // config/test.toml: lease 3 s, heartbeat 0.5 s; production default is 10 s + 2 s.
    assert!(
        took < Duration::from_secs(15),
        "re-run {took:?} after the kill"
    );
}

#[tokio::test]
async fn sigterm_finishes_the_running_job_and_leaves_the_rest_untouched() {
    let db = TestDb::new(&[]).await;
    let mut worker = fleet_process(
        &db,
        &["worker", "--queues", "canary", "--concurrency", "1"],
        &[],
    );
    let running = db
        .enqueue(
            "canary",
            serde_json::json!({"sleep_ms": 1500, "quiet": true}),
        )
        .await;
    db.wait_for_state(running, "running", Duration::from_secs(20))
        .await;
    let waiting = db
        .enqueue("canary", serde_json::json!({"quiet": true}))
        .await;
    sigterm(&worker);
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(status.success(), "graceful exit: {status:?}");
    let done = db.job(running).await;
    assert_eq!((done.state.as_str(), done.attempts), ("completed", 1));
    let w = db.job(waiting).await;
    assert_eq!(
        (w.state.as_str(), w.attempts),
        ("available", 0),
        "not claimed after SIGTERM"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.workers WHERE stopped_at IS NOT NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn past_the_grace_period_running_attempts_are_aborted_and_count() {
    let db = TestDb::new(&[]).await;
    let mut worker = fleet_process(
        &db,
        &["worker", "--queues", "canary"],
        &[("PULSE__WORKER__SHUTDOWN_GRACE_MS", "300")],
    );
    let id = db
        .enqueue(
            "canary",
            serde_json::json!({"sleep_ms": 60_000, "quiet": true}),
        )
        .await;
    db.wait_for_state(id, "running", Duration::from_secs(20))
        .await;
    sigterm(&worker);
    let status = tokio::time::timeout(Duration::from_secs(10), worker.wait())
        .await
        .expect("exits soon after the grace period")
        .unwrap();
    assert!(status.success());
    // The attempt ran, so it counts (before, the hand-back refunded it, and a job
    // that always hangs past the grace period never died).
    let job = db.job(id).await;
    assert_eq!((job.state.as_str(), job.attempts), ("available", 1));
    assert_eq!(job.errors[0]["kind"], "aborted", "{}", job.errors);
}

#[tokio::test]
async fn three_worker_processes_share_a_queue_and_run_no_job_twice() {
    let db = TestDb::new(&[]).await;
    let mut workers: Vec<_> = (0..3)
        .map(|_| {
            fleet_process(
                &db,
                &["worker", "--queues", "canary", "--concurrency", "4"],
                &[],
            )
        })
        .collect();
    wait_until(
        "three workers register",
        Duration::from_secs(20),
        || async { db.count("SELECT count(*) FROM fleet.workers").await == 3 },
    )
    .await;
    sqlx::query(
        "SELECT fleet.enqueue('canary', jsonb_build_object('sleep_ms', 5, 'quiet', true), 'batch:' || i)
         FROM generate_series(1, 300) i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    db.drain().await;
    for w in &workers {
        sigterm(w);
    }
    for w in &mut workers {
        assert!(w.wait().await.unwrap().success());
    }
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.jobs WHERE state = 'completed' AND attempts = 1")
            .await,
        300,
        "every job completed on its first and only attempt"
    );
}

#[tokio::test]
async fn json_logs_carry_the_job_attempt_tenant_and_worker_and_slow_attempts_say_so() {
    let db = TestDb::new(&[]).await;
    let mut worker = fleet_process(
        &db,
        &["worker", "--queues", "canary"],
        &[
            ("PULSE__LOG__FORMAT", "json"),
            ("PULSE__WORKER__SLOW_ATTEMPT_MS", "150"),
        ],
    );
    let stderr = worker.stderr.take().unwrap();
    let reader = tokio::spawn(async move {
        let mut out = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut { stderr }, &mut out)
            .await
            .unwrap();
        out
    });
    let tenant = uuid::Uuid::new_v4().to_string();
    let failing = db
        .enqueue(
            "canary",
            serde_json::json!({"fail_first_attempts": 1, "tenant_id": tenant}),
        )
        .await;
    let slow = db
        .enqueue(
            "canary",
            serde_json::json!({"sleep_ms": 400, "tenant_id": tenant}),
        )
        .await;
    for id in [failing, slow] {
        db.wait_for_state(id, "completed", Duration::from_secs(30))
            .await;
    }
    sigterm(&worker);
    worker.wait().await.unwrap();
    let logs = reader.await.unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    let attempt_of = |line: &serde_json::Value| -> Option<serde_json::Value> {
        line["spans"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == "attempt")
            .cloned()
    };
    let failed = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("job {failing} attempt 1 failed")))
        })
        .unwrap_or_else(|| panic!("no failure line in {logs}"));
    let span = attempt_of(failed).expect("the failure line is in the attempt's span");
    assert_eq!(span["job.id"], failing);
    assert_eq!(span["job.name"], "canary");
    assert_eq!(span["job.attempt"], 1);
    assert_eq!(span["tenant"], tenant.as_str());
    assert!(span["worker"].as_str().is_some_and(|w| !w.is_empty()));
    let slow_line = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("slow attempt"))
        })
        .unwrap_or_else(|| panic!("no slow-attempt line in {logs}"));
    assert_eq!(attempt_of(slow_line).unwrap()["job.id"], slow);
    assert!(slow_line["run_secs"].as_f64().unwrap() >= 0.4);
    // Exactly one warning per slow attempt, none for the quick ones.
    let slow_lines = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("slow attempt"))
        })
        .count();
    assert_eq!(slow_lines, 1);
}

#[tokio::test]
async fn the_procfile_formation_runs_under_honcho_as_the_readme_says() {
    // README: `honcho run target/release/pulse-fleet migrate`, then
    // `honcho start -c worker=3 web worker scheduler`. (A bare `honcho start` also
    // starts `release`, which exits, and honcho then stops every process.)
    let db = TestDb::new(&[]).await;
    let honcho = std::env::var("PULSE_HONCHO").unwrap_or_else(|_| "honcho".into());
    let root = env!("CARGO_MANIFEST_DIR");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let command = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(&honcho);
        cmd.args(["-f", &format!("{root}/Procfile"), "-d", root])
            .args(args)
            .env("PULSE_BIN", env!("CARGO_BIN_EXE_pulse-fleet"))
            .env("DATABASE_URL", &db.url)
            .env("APP_ENV", "test")
            .env("PORT", port.to_string())
            .env("PULSE__WEB__OPERATOR_TOKEN", "procfile")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group, so that a failed test can stop all of it.
            .process_group(0)
            .kill_on_drop(true);
        cmd
    };
    let release = command(&["run", env!("CARGO_BIN_EXE_pulse-fleet"), "migrate"])
        .status()
        .await
        .unwrap_or_else(|e| panic!("{honcho} (scripts/ensure-honcho.sh installs it): {e}"));
    assert!(release.success(), "the release phase failed");
    let started = chrono::Utc::now();
    let mut formation = command(&["start", "-c", "worker=2", "web", "worker", "scheduler"])
        .spawn()
        .unwrap();
    // If an assertion below fails, honcho is told to stop its processes (killing
    // honcho alone, as kill_on_drop does, would leave them running and holding
    // connections for the tests that follow).
    let mut stop = StopOnDrop(formation.id());
    // Two workers, a scheduler ticking (every 10 s for sync_accounts: the formation
    // outlives a `release` that exits), and the web process healthy on PORT.
    wait_until("two live workers", Duration::from_secs(30), || async {
        db.count("SELECT count(*) FROM fleet.workers WHERE stopped_at IS NULL")
            .await
            == 2
    })
    .await;
    wait_until("a scheduler tick", Duration::from_secs(30), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM fleet.schedules WHERE name = 'sync_accounts' AND last_tick_at > $1",
        )
        .bind(started)
        .fetch_one(&db.pool)
        .await
        .unwrap()
            > 0
    })
    .await;
    let health = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/internal/health"))
        .bearer_auth("procfile")
        .send()
        .await
        .unwrap();
    let status = health.status();
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["workers"]["live"], 2);
    assert!(
        formation.try_wait().unwrap().is_none(),
        "the formation stopped"
    );

    sigterm(&formation);
    let exited = tokio::time::timeout(Duration::from_secs(30), formation.wait())
        .await
        .expect("honcho stops the formation on SIGTERM")
        .unwrap();
    stop.0 = None;
    assert!(exited.code().is_some(), "{exited:?}");
    wait_until(
        "the workers deregistered",
        Duration::from_secs(10),
        || async {
            db.count("SELECT count(*) FROM fleet.workers WHERE stopped_at IS NULL")
                .await
                == 0
        },
    )
    .await;
}

/// Stops a process group (honcho's, with the formation's processes) when dropped
/// unless it has exited: SIGTERM, up to 10 s for the processes to stop, then SIGKILL.
/// It is dropped before the child handle, whose kill_on_drop would SIGKILL honcho
/// alone and orphan the rest.
struct StopOnDrop(Option<u32>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(pid) = self.0 else { return };
        let group = format!("-{pid}");
        let signal = |sig: &str| {
            std::process::Command::new("kill")
                .args([sig, "--", &group])
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !signal("-TERM") {
            return;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline
            && std::process::Command::new("pgrep")
                .args(["-g", &pid.to_string()])
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        signal("-KILL");
    }
}
