// How late tokio-cron-scheduler 0.15 fires a per-second cron job after its tick.
use std::sync::{Arc, Mutex};
use tokio_cron_scheduler::{Job, JobScheduler};

#[tokio::main]
async fn main() {
    let sched = JobScheduler::new().await.unwrap();
    let delays = Arc::new(Mutex::new(Vec::<f64>::new()));
    let d = delays.clone();
    sched
        .add(
            Job::new("* * * * * *", move |_uuid, _l| {
                let now = chrono::Utc::now();
                // The tick this run is for: the whole second at or before now.
                let ms = now.timestamp_subsec_millis() as f64;
                d.lock().unwrap().push(ms);
            })
            .unwrap(),
        )
        .await
        .unwrap();
    sched.start().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    let mut v = delays.lock().unwrap().clone();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    println!(
        "tokio-cron-scheduler 0.15.1, '* * * * * *' for 20 s: {n} runs, delay after the tick ms: min {:.0} p50 {:.0} mean {:.0} max {:.0}",
        v[0], v[n / 2], mean, v[n - 1]
    );
}
