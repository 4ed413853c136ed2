//! `pulse-fleet bench soak`: the queue over a long horizon, beside graphile-worker and
//! PgQ, under the same offered load and the same phases.
//!
//! For each system in turn, in a fresh database of its own:
//! - producers enqueue at a fixed offered rate, one job per transaction, through the
//!   system's SQL enqueue (`fleet.enqueue`, `graphile_worker.add_job`,
//!   `pgq.insert_event`), each job carrying its number and `clock_timestamp()`;
//! - `--workers` worker processes (separate processes, `soak-worker`; PgQ's one
//!   consumer) run each job for `--work-ms` and report it on stdout;
//! - the scenario's phases play in order (`phases.rs`: an idle-in-transaction holder,
//!   repeatable-read readers, 1.5x load, a SIGKILLed worker);
//! - every `--sample-secs` a sample is taken (`sample.rs`) and appended to
//!   `samples.jsonl`; at the end `soak.png` is drawn (`plot.rs`) and a summary per
//!   phase printed (`report.rs`), with the jobs lost and run twice counted from the
//!   workers' reports (and, for ours, from the job table).

mod phases;
mod plot;
mod report;
mod sample;
mod systems;
pub mod worker;

use std::{
    collections::VecDeque,
    path::PathBuf,
    process::Stdio,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::Args;
use sqlx::{Connection, PgConnection};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
    sync::{Notify, mpsc},
};

pub use phases::{Phase, PhaseKind};
pub use systems::System;

use crate::config::Settings;

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// Systems to run, in this order, each through the whole scenario.
    #[arg(long, value_delimiter = ',', default_value = "pulse,graphile,pgq")]
    pub systems: Vec<System>,
    /// Offered load, jobs per second (`high-load` offers 1.5x).
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Worker processes (PgQ runs one consumer whatever this says).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Milliseconds of work per job.
    #[arg(long, default_value_t = 1)]
    pub work_ms: u64,
    /// Jobs each worker process runs at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Phases `name:duration` in order; names: clean, idle-in-tx, readers, high-load,
    /// recovery, kill; durations like `300`, `90s`, `5m`.
    #[arg(long, default_value = "clean:5m,idle-in-tx:10m,recovery:10m")]
    pub scenario: String,
    /// Producer connections sharing the offered load (enough that a slow enqueue
    /// delays jobs rather than lowering the load: the load is open-loop).
    #[arg(long, default_value_t = 24)]
    pub producers: usize,
    #[arg(long, default_value_t = 5)]
    pub sample_secs: u64,
    /// Where samples, plots and worker logs go (default `bench-results/soak-<time>`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The shared peer harness (graphile-worker's node_modules live there).
    #[arg(long, default_value = "../shared/bench/peers")]
    pub peers: PathBuf,
    /// After the scenario, how long the workers get to finish the backlog.
    #[arg(long, default_value_t = 300)]
    pub drain_secs: u64,
}

/// What the workers reported so far, and what the producers enqueued.
#[derive(Default)]
pub(crate) struct Tally {
    /// Reports per job number (a job reported twice ran twice).
    runs: Mutex<Vec<u8>>,
    distinct: AtomicU64,
    reports: AtomicU64,
    /// (when reported, enqueue-to-start ms), the last 30 s.
    waits: Mutex<VecDeque<(Instant, f64)>>,
    /// (when, enqueue statement ms), the last 30 s.
    enqueue_times: Mutex<VecDeque<(Instant, f64)>>,
    issued: AtomicU64,
    enqueued: AtomicU64,
    enqueue_failures: AtomicU64,
    /// Set when the scenario ends: what the producers had not enqueued by then is
    /// dropped (counted in `shed`), not enqueued at whatever rate the system allows.
    shedding: std::sync::atomic::AtomicBool,
    shed: AtomicU64,
}

const WINDOW: Duration = Duration::from_secs(30);

fn push_window(window: &Mutex<VecDeque<(Instant, f64)>>, value: f64) {
    let now = Instant::now();
    let mut w = window.lock().expect("window");
    w.push_back((now, value));
    while w
        .front()
        .is_some_and(|(t, _)| now.duration_since(*t) > WINDOW)
    {
        w.pop_front();
    }
}

impl Tally {
    fn report(&self, seq: usize, waited_ms: f64) {
        self.reports.fetch_add(1, Ordering::Relaxed);
        {
            let mut runs = self.runs.lock().expect("runs");
            if runs.len() <= seq {
                runs.resize(seq + 1 + 65_536, 0);
            }
            if runs[seq] == 0 {
                self.distinct.fetch_add(1, Ordering::Relaxed);
            }
            runs[seq] = runs[seq].saturating_add(1);
        }
        push_window(&self.waits, waited_ms);
    }

    /// Percentiles (p50, p95, p99) of a window, in ms.
    fn percentiles(window: &Mutex<VecDeque<(Instant, f64)>>) -> Option<[f64; 3]> {
        let now = Instant::now();
        let mut v: Vec<f64> = window
            .lock()
            .expect("window")
            .iter()
            .filter(|(t, _)| now.duration_since(*t) <= WINDOW)
            .map(|(_, x)| *x)
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let p = |q: f64| super::queue::percentile(&v, q);
        Some([p(50.0), p(95.0), p(99.0)])
    }

    /// Jobs enqueued and never reported; jobs reported more than once (extra runs).
    fn lost_and_twice(&self) -> (u64, u64) {
        let enqueued = self.enqueued.load(Ordering::Relaxed);
        let distinct = self.distinct.load(Ordering::Relaxed);
        let reports = self.reports.load(Ordering::Relaxed);
        (enqueued.saturating_sub(distinct), reports - distinct)
    }
}

/// One worker process and what it reports.
struct WorkerProcess {
    child: Child,
    ready: Arc<Notify>,
}

pub(crate) struct Run<'a> {
    args: &'a SoakArgs,
    system: System,
    url: String,
    out: PathBuf,
    tally: Arc<Tally>,
    workers: Vec<WorkerProcess>,
    /// The tasks reading the workers' reports, the killed ones' too: each ends when
    /// its worker's stdout closes.
    readers: Vec<tokio::task::JoinHandle<()>>,
    spawned: usize,
}

impl Run<'_> {
    async fn spawn_worker(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.out.join(format!(
            "worker-{}-{}.log",
            self.system.name(),
            self.spawned
        )))?;
        self.spawned += 1;
        let mut command = self.system.worker_command(self.args, &self.url)?;
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting a {} worker", self.system.name()))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let ready = Arc::new(Notify::new());
        let tally = self.tally.clone();
        let on_ready = ready.clone();
        let reader = tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut parts = line.split_ascii_whitespace();
                match parts.next() {
                    Some("READY") => on_ready.notify_one(),
                    Some("R") => {
                        let seq = parts.next().and_then(|s| s.parse::<usize>().ok());
                        let us = parts.next().and_then(|s| s.parse::<u64>().ok());
                        if let (Some(seq), Some(us)) = (seq, us) {
                            tally.report(seq, us as f64 / 1000.0);
                        }
                    }
                    _ => {}
                }
            }
        });
        self.readers.push(reader);
        self.workers.push(WorkerProcess { child, ready });
        Ok(())
    }

    /// SIGKILLs worker `i` and starts another in its place.
    async fn kill_and_restart(&mut self, i: usize) -> anyhow::Result<()> {
        let mut old = self.workers.remove(i);
        old.child.start_kill()?;
        old.child.wait().await?;
        self.spawn_worker().await
    }

    async fn stop_workers(&mut self) {
        for w in &self.workers {
            if let Some(pid) = w.child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        for w in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(30), w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.start_kill();
                let _ = w.child.wait().await;
            }
        }
        self.workers.clear();
    }

    fn worker_pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }
}

/// The offered load: issues job numbers at `rate` (f64 bits, changed by the phases)
/// into a queue the producers take from, so a slow enqueue delays jobs, never drops
/// them.
fn spawn_load(
    tally: Arc<Tally>,
    rate: Arc<AtomicU64>,
    stop: Arc<Notify>,
) -> mpsc::UnboundedReceiver<u64> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut owed = 0.0f64;
        let mut last = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.notified() => return,
            }
            let now = Instant::now();
            owed += f64::from_bits(rate.load(Ordering::Relaxed)) * (now - last).as_secs_f64();
            last = now;
            while owed >= 1.0 {
                owed -= 1.0;
                let seq = tally.issued.fetch_add(1, Ordering::Relaxed);
                if tx.send(seq).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// Producers: each its own connection, one job per statement (autocommit: its own
/// transaction), until the load stops and its queue is empty.
async fn spawn_producers(
    url: &str,
    system: System,
    n: usize,
    tally: Arc<Tally>,
    jobs: mpsc::UnboundedReceiver<u64>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut conn = PgConnection::connect(url).await?;
        let jobs = jobs.clone();
        let tally = tally.clone();
        set.spawn(async move {
            loop {
                let Some(seq) = jobs.lock().await.recv().await else {
                    return;
                };
                if tally.shedding.load(Ordering::Relaxed) {
                    tally.shed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let t = Instant::now();
                let result = sqlx::query(system.enqueue_sql())
                    .bind(seq as i64)
                    .execute(&mut conn)
                    .await;
                match result {
                    Ok(_) => {
                        tally.enqueued.fetch_add(1, Ordering::Relaxed);
                        push_window(&tally.enqueue_times, t.elapsed().as_secs_f64() * 1e3);
                    }
                    Err(error) => {
                        tally.enqueue_failures.fetch_add(1, Ordering::Relaxed);
                        eprintln!("enqueue of job {seq} failed: {error}");
                    }
                }
            }
        });
    }
    Ok(set)
}

pub async fn run(settings: &Settings, args: SoakArgs) -> anyhow::Result<()> {
    let phases = phases::parse(&args.scenario)?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "bench-results/soak-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ))
    });
    std::fs::create_dir_all(&out)?;
    let samples_path = out.join("samples.jsonl");
    let mut samples_file = std::fs::File::create(&samples_path)?;
    eprintln!(
        "soak: {} at {}/s, {} workers, {} ms of work; scenario {}; out {}",
        args.systems
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.rate,
        args.workers,
        args.work_ms,
        args.scenario,
        out.display()
    );
    let mut results = Vec::new();
    for &system in &args.systems {
        let result = run_system(settings, &args, system, &phases, &out, &mut samples_file)
            .await
            .with_context(|| format!("soak of {}", system.name()))?;
        results.push(result);
    }
    plot::draw(&out.join("soak.png"), &phases, &results)?;
    let summary = report::summary(&args, &phases, &results);
    std::fs::write(out.join("summary.md"), &summary)?;
    println!("{summary}");
    println!(
        "samples: {}\nplot: {}",
        samples_path.display(),
        out.join("soak.png").display()
    );
    Ok(())
}

/// Everything one system's run produced.
pub(crate) struct SystemResult {
    pub system: System,
    pub samples: Vec<sample::Sample>,
    pub enqueued: u64,
    pub enqueue_failures: u64,
    /// Issued by the load but not enqueued when the scenario ended (dropped).
    pub shed: u64,
    pub lost: u64,
    pub ran_twice: u64,
    pub drained_in: Option<Duration>,
    /// Ours only: what the job table says at the end.
    pub table_check: Option<String>,
}

async fn run_system(
    settings: &Settings,
    args: &SoakArgs,
    system: System,
    phases: &[Phase],
    out: &std::path::Path,
    samples_file: &mut std::fs::File,
) -> anyhow::Result<SystemResult> {
    let url = system.set_up(settings, args).await?;
    let tally = Arc::new(Tally::default());
    let mut run = Run {
        args,
        system,
        url: url.clone(),
        out: out.to_path_buf(),
        tally: tally.clone(),
        workers: Vec::new(),
        readers: Vec::new(),
        spawned: 0,
    };
    let n_workers = if system == System::Pgq {
        1
    } else {
        args.workers
    };
    for _ in 0..n_workers {
        run.spawn_worker().await?;
    }
    for w in &run.workers {
        tokio::time::timeout(Duration::from_secs(120), w.ready.notified())
            .await
            .context("a worker did not say READY within 120 s (see its log)")?;
    }
    eprintln!("{}: {} workers ready", system.name(), run.workers.len());

    let rate = Arc::new(AtomicU64::new(args.rate.to_bits()));
    let stop_load = Arc::new(Notify::new());
    let jobs = spawn_load(tally.clone(), rate.clone(), stop_load.clone());
    let producers = spawn_producers(&url, system, args.producers, tally.clone(), jobs).await?;
    let mut sampler = sample::Sampler::connect(&url, system, tally.clone()).await?;

    let t0 = Instant::now();
    let mut samples = Vec::new();
    let every = Duration::from_secs(args.sample_secs.max(1));
    for phase in phases {
        let started = Instant::now();
        let effect = phases::begin(phase, &mut run, &rate).await?;
        eprintln!(
            "{}: phase {} for {:?} at {:.0}/s",
            system.name(),
            phase.kind.name(),
            phase.duration,
            f64::from_bits(rate.load(Ordering::Relaxed))
        );
        while started.elapsed() < phase.duration {
            let next = every.min(phase.duration.saturating_sub(started.elapsed()));
            tokio::time::sleep(next).await;
            if next < every / 2 {
                break;
            }
            let s = sampler
                .take(
                    phase.kind,
                    t0.elapsed(),
                    f64::from_bits(rate.load(Ordering::Relaxed)),
                    &run.worker_pids(),
                )
                .await?;
            serde_json::to_writer(&mut *samples_file, &s)?;
            std::io::Write::write_all(samples_file, b"\n")?;
            eprintln!("{}", s.line());
            samples.push(s);
        }
        effect.end(&rate, args.rate).await?;
    }

    // The load stops; what the producers had not enqueued is dropped; the workers
    // finish the backlog.
    tally.shedding.store(true, Ordering::Relaxed);
    stop_load.notify_one();
    producers.join_all().await;
    let drain_started = Instant::now();
    let mut drained_in = None;
    while drain_started.elapsed() < Duration::from_secs(args.drain_secs) {
        if tally.distinct.load(Ordering::Relaxed) >= tally.enqueued.load(Ordering::Relaxed) {
            drained_in = Some(drain_started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let table_check = system.check_table(&url).await?;
    // Stopped workers write their last reports and close stdout; read them all.
    run.stop_workers().await;
    for reader in run.readers.drain(..) {
        let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
    }
    let (lost, ran_twice) = tally.lost_and_twice();
    Ok(SystemResult {
        system,
        samples,
        enqueued: tally.enqueued.load(Ordering::Relaxed),
        enqueue_failures: tally.enqueue_failures.load(Ordering::Relaxed),
        shed: tally.shed.load(Ordering::Relaxed),
        lost,
        ran_twice,
        drained_in,
        table_check,
    })
}

impl FromStr for System {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "pulse" => Ok(System::Pulse),
            "graphile" | "graphile-worker" => Ok(System::Graphile),
            "pgq" => Ok(System::Pgq),
            other => anyhow::bail!("unknown system `{other}` (pulse, graphile, pgq)"),
        }
    }
}
