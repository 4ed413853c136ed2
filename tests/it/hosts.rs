//! Workers on hosts of their own: network namespaces joined to this host by veth pairs
//! (`ip netns`, needs root, as on the project's test machines), PostgreSQL reached
//! through a TCP forwarder on each host's link. One host's link is cut mid-job: its
//! jobs are rescued by the other host within the lease, the cut-off worker stops its
//! attempts before its lease can expire, and its late acks are refused when the link
//! comes back.

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

/// Two hosts, `a` and `b`, each a network namespace with a veth pair to this one
/// (10.231.1.0/24 and 10.231.2.0/24, this side .1); removed when dropped.
struct Hosts {
    names: [String; 2],
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (these tests need root and iproute2)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Hosts {
    fn new() -> Self {
        let tag = std::process::id() % 100_000;
        let names = [format!("pf{tag}a"), format!("pf{tag}b")];
        for (n, name) in names.iter().enumerate() {
            let (here, there) = (format!("{name}h"), format!("{name}n"));
            let net = n + 1;
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            let _ = Command::new("ip").args(["link", "del", &here]).output();
            ip(&["netns", "add", name]);
            ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
            ip(&["link", "set", &there, "netns", name]);
            ip(&["addr", "add", &format!("10.231.{net}.1/24"), "dev", &here]);
            ip(&["link", "set", &here, "up"]);
            ip(&[
                "netns",
                "exec",
                name,
                "ip",
                "addr",
                "add",
                &format!("10.231.{net}.2/24"),
                "dev",
                &there,
            ]);
            ip(&["netns", "exec", name, "ip", "link", "set", &there, "up"]);
            ip(&["netns", "exec", name, "ip", "link", "set", "lo", "up"]);
        }
        Self { names }
    }

    /// Cuts (or restores) host `n`'s link, on this side: packets stop, no reset is sent.
    fn link(&self, n: usize, up: bool) {
        ip(&[
            "link",
            "set",
            &format!("{}h", self.names[n]),
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{name}h")])
                .output();
        }
    }
}

/// Forwards TCP connections to `listen` (an address on a host's link) to PostgreSQL.
async fn forward(listen: &str) -> String {
    let listener = tokio::net::TcpListener::bind(format!("{listen}:0"))
        .await
        .unwrap();
    let at = listener.local_addr().unwrap().to_string();
    let server = url::Url::parse(&server_url()).unwrap();
    let upstream = format!(
        "{}:{}",
        server.host_str().unwrap_or("127.0.0.1"),
        server.port().unwrap_or(5432)
    );
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    at
}

/// A worker process (canary queue) on host `ns`, reaching the database at `via`; its
/// JSON log lines collected.
fn worker_on(db: &TestDb, ns: &str, via: &str) -> (tokio::process::Child, Arc<Mutex<Vec<Value>>>) {
    let mut url = url::Url::parse(&db.url).unwrap();
    let (host, port) = via.split_once(':').unwrap();
    url.set_host(Some(host)).unwrap();
    url.set_port(Some(port.parse().unwrap())).unwrap();
    let mut child = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            env!("CARGO_BIN_EXE_pulse-fleet"),
            "worker",
        ])
        .args(["--queues", "canary", "--concurrency", "4"])
        .env("DATABASE_URL", url.as_str())
        .env("APP_ENV", "test")
        .env("RUST_LOG", "info")
        .env("PULSE__LOG__FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ip netns exec pulse-fleet worker");
    let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let lines = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(out).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    lines.lock().unwrap().push(v);
                }
            }
        });
    }
    (child, lines)
}

/// The log lines whose message contains `what`: (time, line).
fn logged(lines: &Mutex<Vec<Value>>, what: &str) -> Vec<(DateTime<Utc>, Value)> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l["message"].as_str().is_some_and(|m| m.contains(what)))
        .filter_map(|l| Some((l["timestamp"].as_str()?.parse().ok()?, l.clone())))
        .collect()
}

#[tokio::test]
async fn a_host_cut_off_mid_job_loses_its_jobs_to_another_host_and_its_late_acks_are_refused() {
    let db = TestDb::new(&[]).await;
    let hosts = Hosts::new();
    let (via_a, via_b) = (forward("10.231.1.1").await, forward("10.231.2.1").await);
    // Host a takes every job: two that end while its link is down (their acks wait),
    // two still running when it gives its lease up.
    let (mut worker_a, log_a) = worker_on(&db, &hosts.names[0], &via_a);
    let mut ids = vec![];
    for sleep_ms in [1_500, 1_500, 4_000, 4_000] {
        ids.push(
            db.enqueue("canary", serde_json::json!({"sleep_ms": sleep_ms}))
                .await,
        );
    }
    wait_until(
        "host a runs the four jobs",
        Duration::from_secs(30),
        || async {
            db.count("SELECT count(*) FROM fleet.jobs WHERE state = 'running'")
                .await
                == 4
        },
    )
    .await;
    let a_name: String = sqlx::query_scalar(
        "SELECT lease_owner_name FROM (SELECT w.name AS lease_owner_name FROM fleet.jobs j
           JOIN fleet.workers w ON w.id = j.lease_owner LIMIT 1) x",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (mut worker_b, log_b) = worker_on(&db, &hosts.names[1], &via_b);
    wait_until("host b's worker is up", Duration::from_secs(30), || async {
        db.count("SELECT count(*) FROM fleet.workers WHERE stopped_at IS NULL")
            .await
            == 2
    })
    .await;

    let cut = Utc::now();
    hosts.link(0, false);
    // Host b rescues a's four jobs once a's lease has lapsed, and runs them.
    wait_until(
        "host b completed every job",
        Duration::from_secs(40),
        || async {
            db.count("SELECT count(*) FROM fleet.jobs WHERE state = 'completed'")
                .await
                == 4
        },
    )
    .await;
    let lease = test_worker_settings().lease_timeout();
    for id in &ids {
        let job = db.job(*id).await;
        let errors = job.errors.as_array().cloned().unwrap_or_default();
        let rescued: Vec<&Value> = errors
            .iter()
            .filter(|e| e["kind"] == "lease_expired")
            .collect();
        assert_eq!(rescued.len(), 1, "job {id}: {:?}", job.errors);
        assert_eq!(rescued[0]["worker"], a_name.as_str(), "{:?}", job.errors);
        let at: DateTime<Utc> = serde_json::from_value(rescued[0]["at"].clone()).unwrap();
        let after = (at - cut).to_std().unwrap_or_default();
        assert!(
            after <= lease + Duration::from_secs(2),
            "rescued {after:?} after the cut (lease {lease:?})"
        );
        assert_eq!(job.attempts, 2, "{:?}", job.errors);
    }
    // a gave its attempts up before its lease could lapse in the database.
    let gave_up = logged(&log_a, "lease presumed lost");
    assert_eq!(gave_up.len(), 1, "{:?}", log_a.lock().unwrap());
    assert_eq!(gave_up[0].1["aborted"], 2, "the two jobs still running");
    let rescued_at: Vec<DateTime<Utc>> = {
        let mut all = vec![];
        for id in &ids {
            for e in db
                .job(*id)
                .await
                .errors
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                if e["kind"] == "lease_expired" {
                    all.push(serde_json::from_value(e["at"].clone()).unwrap());
                }
            }
        }
        all
    };
    assert!(
        rescued_at.iter().all(|at| gave_up[0].0 < *at),
        "a stopped at {} before the rescues {rescued_at:?}",
        gave_up[0].0
    );
    assert!(logged(&log_b, "late ack").is_empty());

    // The link comes back: a's acks of the two jobs that ended meanwhile are refused,
    // and b's completions stand.
    hosts.link(0, true);
    wait_until("a's late acks refused", Duration::from_secs(60), || async {
        logged(&log_a, "late ack of job").len() >= 2
    })
    .await;
    for id in &ids[..2] {
        assert!(
            !logged(&log_a, &format!("late ack of job {id} refused")).is_empty(),
            "job {id}"
        );
    }
    for id in &ids {
        let job = db.job(*id).await;
        assert_eq!((job.state.as_str(), job.attempts), ("completed", 2));
    }
    sigterm(&worker_b);
    sigterm(&worker_a);
    let _ = tokio::time::timeout(Duration::from_secs(10), worker_b.wait()).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), worker_a.wait()).await;
}
