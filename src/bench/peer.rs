//! `pulse-fleet bench peer <drain|latency|steady> <n>`: our worker with the interface
//! of the shared peer harness (`shared/bench/peers`), so that `bench/peers/compare.sh`
//! measures us and graphile-worker, pgqueuer, apalis-postgres... in one run. Prints
//! `READY`, then one `RESULT key=value ...` line. The database must be migrated
//! (`pulse-fleet migrate`); jobs are `canary` jobs enqueued by the harness.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use tokio::sync::Notify;

use super::queue::{counting_spec, percentile};
use pulse_queue::worker::{self, QueueSpec};

use crate::{config::Settings, db};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Mode {
    Drain,
    Latency,
    Steady,
}

#[derive(Debug, Clone, Args)]
pub struct PeerArgs {
    pub mode: Mode,
    /// Jobs (drain), samples (latency) or seconds (steady).
    pub n: usize,
    #[arg(long, default_value_t = 2_000)]
    pub concurrency: usize,
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
}

pub async fn run(settings: &Settings, args: PeerArgs) -> anyhow::Result<()> {
    let pool = db::app_pool(settings).await?;
    let done = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(Notify::new());
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let target = match args.mode {
        Mode::Steady => usize::MAX,
        _ => args.n,
    };
    let spec = counting_spec(done.clone(), target, all_done.clone(), latencies.clone());
    let mut worker_settings = settings.worker.clone();
    worker_settings.batch_size = args.batch;
    let t0 = Instant::now();
    let pools = db::queue_pools(settings, 1).await?;
    let handle = worker::start(
        pool,
        pools,
        vec![QueueSpec {
            job: spec,
            concurrency: args.concurrency,
        }],
        &worker_settings,
    )
    .await?;
    println!(
        "READY concurrency={} batch={}",
        args.concurrency, args.batch
    );
    match args.mode {
        Mode::Drain => {
            all_done.notified().await;
            handle.flush_acks().await;
            let elapsed = t0.elapsed().as_secs_f64();
            println!(
                "RESULT drain jobs={} elapsed_s={elapsed:.3} jobs_per_s={:.1} first_job_after_s=0",
                args.n,
                args.n as f64 / elapsed
            );
        }
        Mode::Latency => {
            all_done.notified().await;
            let mut v = latencies.lock().expect("latencies").clone();
            v.sort_by(|a, b| a.total_cmp(b));
            println!(
                "RESULT latency samples={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
                v.len(),
                percentile(&v, 50.0),
                percentile(&v, 99.0),
                percentile(&v, 100.0)
            );
        }
        Mode::Steady => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let c0 = done.load(Ordering::Relaxed);
            let t = Instant::now();
            tokio::time::sleep(Duration::from_secs(args.n as u64)).await;
            let c1 = done.load(Ordering::Relaxed);
            let window = t.elapsed().as_secs_f64();
            println!(
                "RESULT steady completed={} window_s={window:.2} jobs_per_s={:.1}",
                c1 - c0,
                (c1 - c0) as f64 / window
            );
        }
    }
    handle.shutdown().await?;
    Ok(())
}
