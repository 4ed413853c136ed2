//! What one worker process holds of the queue, and whether it may still hold it.
//!
//! - **Held**: every job this process claimed whose settlement is not written yet
//!   (buffered, running, or acked but not flushed). Heartbeats report it, so a job
//!   left `running` under this live worker that it no longer holds (its ack was lost
//!   in a database crash) is rescued instead of blocking its queue forever.
//! - **Running**: the handler task of each attempt, so that shutdown and a lost lease
//!   can abort them: no handler outlives the worker's right to run it.
//! - **Lease**: a worker whose heartbeat has not succeeded for nearly the lease
//!   timeout must assume its jobs are being rescued by others. It aborts its
//!   attempts without settling them, and the epoch changes, so that jobs claimed
//!   under the old lease never start.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::task::AbortHandle;

/// Why a handler task was aborted from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    /// The shutdown grace period is over: the attempt failed (and counts).
    Shutdown,
    /// The lease lapsed: others may run the job; this attempt must not settle it.
    LeaseLost,
}

struct Running {
    abort: AbortHandle,
    reason: Arc<OnceLock<AbortReason>>,
}

#[derive(Default)]
pub struct Holdings {
    held: Mutex<HashSet<i64>>,
    running: Mutex<HashMap<i64, Running>>,
    epoch: AtomicU64,
    lease_lost: AtomicBool,
}

impl Holdings {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Jobs just claimed (before they are handed to a handler).
    pub fn claimed(&self, ids: impl IntoIterator<Item = i64>) {
        self.held.lock().expect("holdings lock").extend(ids);
    }

    /// Jobs whose settlement was written (accepted or refused) or given up.
    pub fn released(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.held.lock().expect("holdings lock");
        for id in ids {
            held.remove(&id);
        }
    }

    /// What heartbeats report.
    pub fn held(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .held
            .lock()
            .expect("holdings lock")
            .iter()
            .copied()
            .collect();
        ids.sort_unstable();
        ids
    }

    /// A handler task started; the returned cell says why it was aborted, if it was.
    pub fn started(&self, id: i64, abort: AbortHandle) -> Arc<OnceLock<AbortReason>> {
        let reason = Arc::new(OnceLock::new());
        self.running.lock().expect("holdings lock").insert(
            id,
            Running {
                abort,
                reason: reason.clone(),
            },
        );
        reason
    }

    pub fn finished(&self, id: i64) {
        self.running.lock().expect("holdings lock").remove(&id);
    }

    /// Aborts every running handler task; returns how many.
    pub fn abort_running(&self, reason: AbortReason) -> usize {
        let running = self.running.lock().expect("holdings lock");
        for r in running.values() {
            let _ = r.reason.set(reason);
            r.abort.abort();
        }
        running.len()
    }

    /// The lease generation jobs are claimed under.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The lease lapsed (or the worker row vanished): abort everything, and make every
    /// job claimed so far unstartable. Returns how many attempts were aborted.
    pub fn lose_lease(&self) -> usize {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.lease_lost.store(true, Ordering::SeqCst);
        self.abort_running(AbortReason::LeaseLost)
    }

    /// A heartbeat went through: claiming may go on.
    pub fn lease_renewed(&self) {
        self.lease_lost.store(false, Ordering::SeqCst);
    }

    pub fn lease_ok(&self) -> bool {
        !self.lease_lost.load(Ordering::SeqCst)
    }
}
