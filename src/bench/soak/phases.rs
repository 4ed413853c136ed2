//! The soak's phases: what each does to the database or the workers while it lasts.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{Connection, Executor, PgConnection};

use super::Run;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseKind {
    /// Nothing but the load.
    Clean,
    /// One connection holds `BEGIN; SELECT txid_current();` open for the phase: the
    /// xmin horizon stands still, vacuum can reclaim nothing newer.
    IdleInTx,
    /// Four repeatable-read connections scan the job table in a loop.
    Readers,
    /// 1.5x the offered load.
    HighLoad,
    /// The load alone again, after one of the others.
    Recovery,
    /// One worker SIGKILLed at the start, and another started in its place.
    Kill,
}

impl PhaseKind {
    pub fn name(self) -> &'static str {
        match self {
            PhaseKind::Clean => "clean",
            PhaseKind::IdleInTx => "idle-in-tx",
            PhaseKind::Readers => "readers",
            PhaseKind::HighLoad => "high-load",
            PhaseKind::Recovery => "recovery",
            PhaseKind::Kill => "kill",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Phase {
    pub kind: PhaseKind,
    pub duration: Duration,
}

/// `clean:5m,idle-in-tx:10m,recovery:600` -> phases.
pub fn parse(scenario: &str) -> anyhow::Result<Vec<Phase>> {
    let mut phases = Vec::new();
    for part in scenario.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, duration) = part
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("phase `{part}`: expected name:duration"))?;
        let kind = match name {
            "clean" => PhaseKind::Clean,
            "idle-in-tx" => PhaseKind::IdleInTx,
            "readers" => PhaseKind::Readers,
            "high-load" => PhaseKind::HighLoad,
            "recovery" => PhaseKind::Recovery,
            "kill" => PhaseKind::Kill,
            other => anyhow::bail!(
                "unknown phase `{other}` (clean, idle-in-tx, readers, high-load, recovery, kill)"
            ),
        };
        let secs = match duration.strip_suffix('m') {
            Some(minutes) => minutes.parse::<u64>().map(|m| m * 60),
            None => duration.trim_end_matches('s').parse::<u64>(),
        }
        .map_err(|_| anyhow::anyhow!("phase `{part}`: bad duration `{duration}`"))?;
        anyhow::ensure!(secs > 0, "phase `{part}`: the duration must be positive");
        phases.push(Phase {
            kind,
            duration: Duration::from_secs(secs),
        });
    }
    anyhow::ensure!(!phases.is_empty(), "the scenario has no phase");
    Ok(phases)
}

/// What a phase set going, undone by `end`.
pub enum Effect {
    None,
    Holder(PgConnection),
    Readers(Arc<AtomicBool>, tokio::task::JoinSet<anyhow::Result<u64>>),
}

pub async fn begin(phase: &Phase, run: &mut Run<'_>, rate: &AtomicU64) -> anyhow::Result<Effect> {
    Ok(match phase.kind {
        PhaseKind::Clean | PhaseKind::Recovery => Effect::None,
        PhaseKind::HighLoad => {
            rate.store((run.args.rate * 1.5).to_bits(), Ordering::Relaxed);
            Effect::None
        }
        PhaseKind::Kill => {
            run.kill_and_restart(0).await?;
            Effect::None
        }
        PhaseKind::IdleInTx => {
            let mut holder = PgConnection::connect(&run.url).await?;
            holder.execute("BEGIN").await?;
            holder.execute("SELECT txid_current()").await?;
            Effect::Holder(holder)
        }
        PhaseKind::Readers => {
            let stop = Arc::new(AtomicBool::new(false));
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..4 {
                let mut conn = PgConnection::connect(&run.url).await?;
                let stop = stop.clone();
                let scan = run.system.job_table_scan();
                set.spawn(async move {
                    let mut scans = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                            .await?;
                        conn.execute(scan).await?;
                        conn.execute("COMMIT").await?;
                        scans += 1;
                    }
                    Ok(scans)
                });
            }
            Effect::Readers(stop, set)
        }
    })
}

impl Effect {
    pub async fn end(self, rate: &AtomicU64, base_rate: f64) -> anyhow::Result<()> {
        rate.store(base_rate.to_bits(), Ordering::Relaxed);
        match self {
            Effect::None => {}
            Effect::Holder(mut holder) => {
                holder.execute("ROLLBACK").await?;
                holder.close().await?;
            }
            Effect::Readers(stop, set) => {
                stop.store(true, Ordering::Relaxed);
                let scans: u64 = set
                    .join_all()
                    .await
                    .into_iter()
                    .collect::<anyhow::Result<Vec<u64>>>()?
                    .into_iter()
                    .sum();
                eprintln!("readers: {scans} repeatable-read scans of the job table");
            }
        }
        Ok(())
    }
}
