//! The worker's side of "notify only when someone waits" (see the enqueue
//! migrations). A fetcher parks by taking one of the queue's idle slots exclusively
//! on a connection of its own, then claims once more; it holds the slot while parked,
//! so enqueuers (which try every slot in shared mode) know to NOTIFY, and releases
//! it when it wakes.
//!
//! An enqueue in flight holds every slot in shared mode until it commits, so a slot
//! taken means every enqueue that skipped its NOTIFY has committed, and the claim
//! made once parked sees its job. While one is in flight no slot can be taken: the
//! fetcher claims again a few milliseconds later instead of parking.

use std::sync::Arc;

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

/// Slots per queue: how many fetchers of one queue can park at once (the enqueue
/// migration tries as many).
const SLOTS: i32 = 4;

pub struct IdleLock {
    queue: &'static str,
    options: Arc<PgConnectOptions>,
    conn: Option<PgConnection>,
    /// The slot held (parked).
    held: Option<i32>,
}

/// What an attempt to park found.
#[derive(Debug, PartialEq, Eq)]
pub enum Park {
    /// Holding a slot: claim once more, then wait for NOTIFY.
    Parked,
    /// An enqueue is in flight, or every slot is taken: claim again soon.
    Busy,
    /// No lock connection: rely on polling.
    Unavailable,
}

impl IdleLock {
    pub fn new(queue: &'static str, options: Arc<PgConnectOptions>) -> Self {
        Self {
            queue,
            options,
            conn: None,
            held: None,
        }
    }

    pub fn is_parked(&self) -> bool {
        self.held.is_some()
    }

    async fn connection(&mut self) -> sqlx::Result<&mut PgConnection> {
        if self.conn.is_none() {
            self.conn = Some(PgConnection::connect_with(&self.options).await?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    pub async fn park(&mut self) -> Park {
        let queue = self.queue;
        let mut result = Ok(None);
        for slot in 0..SLOTS {
            let taken = match self.connection().await {
                Ok(conn) => {
                    sqlx::query_scalar!(
                        r#"SELECT pg_try_advisory_lock(hashtext('fleet.idle.' || $2::int), hashtext($1)) AS "taken!""#,
                        queue,
                        slot
                    )
                    .fetch_one(conn)
                    .await
                }
                Err(error) => Err(error),
            };
            match taken {
                Ok(true) => {
                    result = Ok(Some(slot));
                    break;
                }
                Ok(false) => {}
                Err(error) => {
                    result = Err(error);
                    break;
                }
            }
        }
        match result {
            Ok(Some(slot)) => {
                self.held = Some(slot);
                Park::Parked
            }
            Ok(None) => Park::Busy,
            Err(error) => {
                tracing::warn!(queue, %error, "idle lock unavailable; polling only");
                self.conn = None;
                Park::Unavailable
            }
        }
    }

    /// Releases the lock if held; a no-op otherwise.
    pub async fn unpark(&mut self) {
        let queue = self.queue;
        let Some(slot) = self.held.take() else {
            return;
        };
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let released = sqlx::query_scalar!(
            "SELECT pg_advisory_unlock(hashtext('fleet.idle.' || $2::int), hashtext($1))",
            queue,
            slot
        )
        .fetch_one(conn)
        .await;
        if let Err(error) = released {
            // Closing the connection releases the lock.
            tracing::warn!(queue, %error, "idle unlock failed; reconnecting");
            self.conn = None;
        }
    }
}
