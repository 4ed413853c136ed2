//! Fleet-wide metrics without scanning any table: every layer of a process (the
//! runtime's acks, a job, a venue client) adds counters and histogram observations
//! to one in-memory [`Recorder`]; the runtime appends what accumulated to
//! `fleet.stat_deltas` every few seconds, and `/metrics` reads the folded totals.
//! A sample is (metric, first label, second label): the runtime uses (metric, job,
//! outcome or bucket); trading metrics use (metric, venue or account, endpoint or kind).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Upper bounds (seconds) of every histogram.
pub const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

pub type Key = (&'static str, String, String);

/// In-memory deltas, shared by the tasks of one process.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<HashMap<Key, f64>>>);

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder")
    }
}

impl Recorder {
    pub fn add(&self, metric: &'static str, first: &str, second: &str, delta: f64) {
        let mut map = self.0.lock().expect("stats lock");
        *map.entry((metric, first.to_owned(), second.to_owned()))
            .or_default() += delta;
    }

    /// One observation of a histogram: its bucket (non-cumulative; the exposition
    /// accumulates), its sum and its count.
    pub fn observe(&self, metric: &'static str, first: &str, seconds: f64) {
        let le = BUCKETS
            .iter()
            .find(|b| seconds <= **b)
            .map(|b| b.to_string())
            .unwrap_or_else(|| "+Inf".into());
        let mut map = self.0.lock().expect("stats lock");
        *map.entry((metric, first.to_owned(), le)).or_default() += 1.0;
        *map.entry((metric, first.to_owned(), "sum".into()))
            .or_default() += seconds.max(0.0);
    }

    /// Everything accumulated since the last take.
    pub fn take(&self) -> HashMap<Key, f64> {
        std::mem::take(&mut *self.0.lock().expect("stats lock"))
    }

    /// Puts back what a failed flush took, for the next one.
    pub fn restore(&self, pending: HashMap<Key, f64>) {
        let mut map = self.0.lock().expect("stats lock");
        for (k, d) in pending {
            *map.entry(k).or_default() += d;
        }
    }
}
