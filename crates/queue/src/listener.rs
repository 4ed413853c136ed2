//! One LISTEN connection per process: `fleet.enqueue` NOTIFYs the job name, and the
//! listener wakes that queue's fetcher. LISTEN needs a session connection (not a
//! transaction-pooling PgBouncer); when it is down, fetchers still poll.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::{PgPool, postgres::PgListener};
use tokio::sync::{Notify, watch};

use super::NOTIFY_CHANNEL;

pub async fn run(
    pool: PgPool,
    queues: HashMap<&'static str, Arc<Notify>>,
    ready: Option<tokio::sync::oneshot::Sender<()>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut ready = ready;
    let mut delay = Duration::from_millis(100);
    loop {
        let mut listener = match connect(&pool).await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, "LISTEN failed; polling only, retrying in {delay:?}");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        delay = Duration::from_millis(100);
        if let Some(tx) = ready.take() {
            let _ = tx.send(());
        }
        // Anything enqueued while we were not listening: look now.
        for wake in queues.values() {
            wake.notify_one();
        }
        loop {
            let notification = tokio::select! {
                n = listener.try_recv() => n,
                _ = stop.wait_for(|s| *s) => return,
            };
            match notification {
                Ok(Some(n)) => {
                    if let Some(wake) = queues.get(n.payload()) {
                        wake.notify_one();
                    }
                }
                Ok(None) | Err(_) => {
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    break;
                }
            }
        }
    }
}

async fn connect(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(NOTIFY_CHANNEL).await?;
    Ok(listener)
}
