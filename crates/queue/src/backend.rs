//! The apalis 1.0 `Backend` of one queue: it yields the jobs its fetcher claimed,
//! and its middleware ([`AckLayer`]) settles every attempt. On shutdown it hands the
//! claimed jobs no handler has started back to the queue, without using an attempt.

use std::task::{Context, Poll};

use apalis_core::{
    backend::{Backend, BackendConfig, finalize::Ephemeral},
    task::{Task, task_id::TaskId},
    worker::context::WorkerContext,
};
use tokio::sync::{mpsc, watch};

use super::{
    ClaimedJob,
    ack::{Ack, AckLayer, AckSender},
};

pub struct FleetBackend {
    jobs: mpsc::Receiver<ClaimedJob>,
    stop: watch::Receiver<bool>,
    layer: AckLayer,
    acks: AckSender,
}

impl FleetBackend {
    pub fn new(
        jobs: mpsc::Receiver<ClaimedJob>,
        stop: watch::Receiver<bool>,
        layer: AckLayer,
    ) -> Self {
        let acks = layer.sender();
        Self {
            jobs,
            stop,
            layer,
            acks,
        }
    }

    /// Hands every claimed-but-unstarted job back (refunding its attempt).
    fn hand_back_buffered(&mut self) {
        self.jobs.close();
        while let Ok(job) = self.jobs.try_recv() {
            self.acks.send(Ack::hand_back(&job));
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("fleet backend error")]
pub struct BackendError;

impl Backend for FleetBackend {
    type Task = Task<ClaimedJob>;
    type Error = BackendError;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        if *self.stop.borrow() {
            self.hand_back_buffered();
            // apalis ends a worker once it is stopped and its in-flight tasks are done.
            let _ = worker.stop();
            return Poll::Ready(None);
        }
        match self.jobs.poll_recv(cx) {
            Poll::Ready(Some(job)) => {
                let id = job.id as u64;
                let task = apalis_core::task::builder::TaskBuilder::new(job)
                    .task_id(TaskId::from_int(id))
                    .build();
                Poll::Ready(Some(Ok(task)))
            }
            // The fetcher stopped: no more work will come.
            Poll::Ready(None) => {
                let _ = worker.stop();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        self.hand_back_buffered();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for FleetBackend {
    type Args = ClaimedJob;
    type Id = u64;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = AckLayer;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        self.layer.clone()
    }
}
