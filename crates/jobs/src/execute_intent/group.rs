//! Group commit per tenant: requests of a tenant that arrive while a batch of that
//! tenant is in flight in this process wait, and run together as the next batch.
//! One batch per tenant at a time, tenants in parallel.
//!
//! Why: every intent of an account locks the same rows (the capital ledger, the venue
//! request budget) and every transaction pays its round trips and its commit. A batch
//! pays them once for all its intents, and the wait it adds is at most one batch.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;
use uuid::Uuid;

/// Most requests in one batch.
const MAX_BATCH: usize = 64;

struct Waiting<Req, Out> {
    request: Req,
    reply: oneshot::Sender<Result<Out, String>>,
}

pub struct GroupCommit<Req, Out> {
    waiting: Mutex<HashMap<Uuid, Vec<Waiting<Req, Out>>>>,
}

impl<Req, Out> Default for GroupCommit<Req, Out> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl<Req: Send + 'static, Out: Send + 'static> GroupCommit<Req, Out> {
    /// Runs `request` of `tenant` in a batch and returns its own result. `run` gets a
    /// batch and returns one result per request, in order; the caller that finds no
    /// batch of its tenant in flight becomes the batch runner (its `run` is used).
    pub async fn submit<F, Fut>(
        self: &Arc<Self>,
        tenant: Uuid,
        request: Req,
        run: F,
    ) -> Result<Out, String>
    where
        F: Fn(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<Out, String>>> + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let lead = {
            let mut waiting = self.waiting.lock().expect("group commit");
            let request = Waiting { request, reply };
            match waiting.get_mut(&tenant) {
                // A batch of this tenant is in flight: its runner takes this one next.
                Some(queue) => {
                    queue.push(request);
                    false
                }
                None => {
                    waiting.insert(tenant, vec![request]);
                    true
                }
            }
        };
        if lead {
            tokio::spawn(self.clone().drain(tenant, run));
        }
        result
            .await
            .map_err(|_| "the batch runner stopped".to_string())?
    }

    /// Runs batches of `tenant` until none is waiting. The tenant's entry exists while
    /// a runner runs; the runner removes it (under the lock) when it finds it empty.
    async fn drain<F, Fut>(self: Arc<Self>, tenant: Uuid, run: F)
    where
        F: Fn(Vec<Req>) -> Fut,
        Fut: Future<Output = Vec<Result<Out, String>>>,
    {
        // If `run` panics, the tenant's waiting requests are dropped (their callers see
        // an error and retry) and the next request starts a new runner.
        struct OnPanic<'a, Req, Out>(&'a GroupCommit<Req, Out>, Uuid);
        impl<Req, Out> Drop for OnPanic<'_, Req, Out> {
            fn drop(&mut self) {
                if std::thread::panicking()
                    && let Ok(mut waiting) = self.0.waiting.lock()
                {
                    waiting.remove(&self.1);
                }
            }
        }
        let _guard = OnPanic(&self, tenant);
        loop {
            let batch: Vec<Waiting<Req, Out>> = {
                let mut waiting = self.waiting.lock().expect("group commit");
                let queue = waiting.get_mut(&tenant).expect("the runner's entry");
                if queue.is_empty() {
                    waiting.remove(&tenant);
                    return;
                }
                let n = queue.len().min(MAX_BATCH);
                queue.drain(..n).collect()
            };
            let (requests, replies): (Vec<Req>, Vec<_>) =
                batch.into_iter().map(|w| (w.request, w.reply)).unzip();
            let results = run(requests).await;
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that gave up waiting (its timeout) no longer listens.
                let _ = reply.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn requests_arriving_during_a_batch_run_together_as_the_next_one() {
        let group: Arc<GroupCommit<u32, u32>> = Arc::default();
        let tenant = Uuid::from_u128(1);
        let (release, gate) = tokio::sync::watch::channel(false);
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let running = Arc::new(AtomicUsize::new(0));
        let run = {
            let batches = batches.clone();
            let running = running.clone();
            move |batch: Vec<u32>| {
                let (batches, running, mut gate) = (batches.clone(), running.clone(), gate.clone());
                async move {
                    assert_eq!(
                        running.fetch_add(1, Ordering::SeqCst),
                        0,
                        "one batch at a time"
                    );
                    // The first batch holds until the others have queued up behind it.
                    let _ = gate.wait_for(|open| *open).await;
                    batches.lock().unwrap().push(batch.clone());
                    running.fetch_sub(1, Ordering::SeqCst);
                    batch.into_iter().map(|n| Ok(n * 10)).collect()
                }
            }
        };
        let first = tokio::spawn({
            let (group, run) = (group.clone(), run.clone());
            async move { group.submit(tenant, 1, run).await }
        });
        while group
            .waiting
            .lock()
            .unwrap()
            .get(&tenant)
            .is_none_or(|q| !q.is_empty())
        {
            tokio::task::yield_now().await;
        }
        let rest: Vec<_> = (2..=5)
            .map(|n| {
                let (group, run) = (group.clone(), run.clone());
                tokio::spawn(async move { group.submit(tenant, n, run).await })
            })
            .collect();
        while group.waiting.lock().unwrap()[&tenant].len() < 4 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Ok(10));
        for (n, r) in (2..=5).zip(rest) {
            assert_eq!(r.await.unwrap(), Ok(n * 10), "each gets its own result");
        }
        assert_eq!(*batches.lock().unwrap(), vec![vec![1], vec![2, 3, 4, 5]]);
        assert!(group.waiting.lock().unwrap().is_empty(), "the runner left");
    }
}
