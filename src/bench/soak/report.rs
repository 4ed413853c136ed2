//! The soak's summary: one row per system and phase, then what each system lost,
//! ran twice and grew to, and the targets checked against our samples.

use std::fmt::Write;

use super::{Phase, PhaseKind, SoakArgs, SystemResult, sample::Sample};

fn mb(bytes: i64) -> String {
    format!("{:.1}", bytes as f64 / 1e6)
}

fn max_of(samples: &[&Sample], f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
    samples.iter().filter_map(|s| f(s)).reduce(f64::max)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// The samples of phase `i` (phases may repeat a kind: they are told apart by time).
fn phase_samples<'a>(result: &'a SystemResult, phases: &[Phase], i: usize) -> Vec<&'a Sample> {
    let start: f64 = phases[..i].iter().map(|p| p.duration.as_secs_f64()).sum();
    let end = start + phases[i].duration.as_secs_f64();
    result
        .samples
        .iter()
        .filter(|s| s.t > start && s.t <= end + 0.5)
        .collect()
}

pub fn summary(args: &SoakArgs, phases: &[Phase], results: &[SystemResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Soak: {}/s offered, {} worker processes, {} ms of work per job, scenario `{}`\n",
        args.rate, args.workers, args.work_ms, args.scenario
    );
    let _ = writeln!(
        out,
        "| system | phase | offered/s | completed/s (mean) | lowest 5-s | p50 ms | p99 ms (max) | p99 ms (end) | enqueue p99 ms (max) | producers behind (max) | depth (max) | dead tuples (max) | dead tuples (end) | size MB (end) |"
    );
    let _ = writeln!(
        out,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for result in results {
        for (i, phase) in phases.iter().enumerate() {
            let samples = phase_samples(result, phases, i);
            let Some(last) = samples.last() else { continue };
            let mean =
                samples.iter().map(|s| s.completed_per_s).sum::<f64>() / samples.len() as f64;
            let lowest = samples
                .iter()
                .map(|s| s.completed_per_s)
                .fold(f64::INFINITY, f64::min);
            let mut p50s: Vec<f64> = samples.iter().filter_map(|s| s.p50_ms).collect();
            p50s.sort_by(f64::total_cmp);
            let _ = writeln!(
                out,
                "| {} | {} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                result.system.name(),
                phase.kind.name(),
                last.offered_per_s,
                mean,
                lowest,
                opt(p50s.get(p50s.len() / 2).copied(), 1),
                opt(max_of(&samples, |s| s.p99_ms), 1),
                opt(last.p99_ms, 1),
                opt(max_of(&samples, |s| s.enqueue_p99_ms), 1),
                samples
                    .iter()
                    .map(|s| s.producer_backlog)
                    .max()
                    .unwrap_or(0),
                samples.iter().map(|s| s.depth).max().unwrap_or(0),
                samples.iter().map(|s| s.dead_tuples).max().unwrap_or(0),
                last.dead_tuples,
                mb(last.table_bytes + last.index_bytes),
            );
        }
    }
    let _ = writeln!(out);
    for result in results {
        let first_phase_end = phase_samples(result, phases, 0)
            .last()
            .map(|s| s.table_bytes + s.index_bytes);
        let end = result.samples.last().map(|s| s.table_bytes + s.index_bytes);
        let growth = match (first_phase_end, end) {
            (Some(a), Some(b)) if a > 0 => format!("{:.2}x", b as f64 / a as f64),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "- **{}**: {} jobs enqueued ({} enqueues failed; {} offered but not yet enqueued when the scenario ended, dropped), {} lost, {} extra runs; backlog drained {}; size at the end {} the size at the end of the first phase{}",
            result.system.name(),
            result.enqueued,
            result.enqueue_failures,
            result.shed,
            result.lost,
            result.ran_twice,
            result
                .drained_in
                .map_or("NOT within the drain time".to_string(), |d| format!(
                    "in {:.1} s",
                    d.as_secs_f64()
                )),
            growth,
            result
                .table_check
                .as_ref()
                .map_or(String::new(), |c| format!("; {c}")),
        );
        for (i, phase) in phases.iter().enumerate() {
            if let Some(line) = target(result, phases, i, phase) {
                let _ = writeln!(out, "  - {line}");
            }
        }
    }
    out
}

/// The targets for a phase: keep up; p99 <= 50 ms clean, <= 250 ms with the
/// horizon held; back under 50 ms within 60 s of recovery.
fn target(result: &SystemResult, phases: &[Phase], i: usize, phase: &Phase) -> Option<String> {
    let samples = phase_samples(result, phases, i);
    let last = samples.last()?;
    let mean = samples.iter().map(|s| s.completed_per_s).sum::<f64>() / samples.len() as f64;
    // Kept up: completed what was offered, and neither the queue nor the producers
    // (whose enqueues the queue slows) ended the phase more than 5 s of load behind.
    let behind = (last.offered_per_s * 5.0) as i64;
    let kept_up =
        mean >= 0.97 * last.offered_per_s && last.depth < behind && last.producer_backlog < behind;
    let p99 = max_of(&samples, |s| s.p99_ms).unwrap_or(f64::INFINITY);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let keep = format!(
        "keeps up ({:.0}/s of {:.0}/s, depth {} at the end): {}",
        mean,
        last.offered_per_s,
        last.depth,
        verdict(kept_up)
    );
    match phase.kind {
        PhaseKind::Clean => Some(format!(
            "{}: {keep}; p99 <= 50 ms (max {p99:.1}): {}",
            phase.kind.name(),
            verdict(p99 <= 50.0)
        )),
        PhaseKind::IdleInTx => Some(format!(
            "{}: {keep}; p99 <= 250 ms (max {p99:.1}): {}",
            phase.kind.name(),
            verdict(p99 <= 250.0)
        )),
        PhaseKind::Recovery => {
            let start: f64 = phases[..i].iter().map(|p| p.duration.as_secs_f64()).sum();
            // The first sample from which p99 stays under 50 ms to the phase's end.
            let settled = samples
                .iter()
                .rposition(|s| s.p99_ms.is_none_or(|p| p > 50.0))
                .map_or(Some(start), |k| samples.get(k + 1).map(|s| s.t));
            Some(match settled {
                Some(t) => format!(
                    "{}: {keep}; p99 back under 50 ms {:.0} s in (target 60 s): {}",
                    phase.kind.name(),
                    t - start,
                    verdict(t - start <= 60.0)
                ),
                None => format!(
                    "{}: {keep}; p99 never back under 50 ms: MISSED",
                    phase.kind.name()
                ),
            })
        }
        _ => Some(format!("{}: {keep}", phase.kind.name())),
    }
}
