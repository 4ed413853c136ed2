//! The worker's side of "notify only when someone waits" (see the enqueue
//! migration). Before a fetcher parks, it takes the queue's idle lock in shared mode
//! on a connection of its own and claims once more; it holds the lock while parked,
//! so enqueuers know to NOTIFY, and releases it when it wakes.
//!
//! Taking the lock waits for in-flight enqueues that skipped their NOTIFY (they hold
//! it exclusively until commit). That wait is capped by `lock_timeout`: a long
//! business transaction that enqueued early only makes the fetcher re-claim sooner.

use std::sync::Arc;

use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};

const LOCK_TIMEOUT: &str = "100ms";

pub struct IdleLock {
    queue: &'static str,
    options: Arc<PgConnectOptions>,
    conn: Option<PgConnection>,
    /// Holding the lock (parked).
    held: bool,
}

/// What an attempt to park found.
#[derive(Debug, PartialEq, Eq)]
pub enum Park {
    /// Holding the lock: claim once more, then wait for NOTIFY.
    Parked,
    /// An enqueue is in flight: claim again soon.
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
            held: false,
        }
    }

    pub fn is_parked(&self) -> bool {
        self.held
    }

    async fn connection(&mut self) -> sqlx::Result<&mut PgConnection> {
        if self.conn.is_none() {
            let mut conn = PgConnection::connect_with(&self.options).await?;
            sqlx::query_scalar!("SELECT set_config('lock_timeout', $1, false)", LOCK_TIMEOUT)
                .fetch_one(&mut conn)
                .await?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    pub async fn park(&mut self) -> Park {
        let queue = self.queue;
        let result = match self.connection().await {
            Ok(conn) => {
                sqlx::query!(
                    "SELECT pg_advisory_lock_shared(hashtext('fleet.idle'), hashtext($1))",
                    queue
                )
                .execute(conn)
                .await
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(_) => {
                self.held = true;
                Park::Parked
            }
            Err(error)
                if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("55P03") =>
            {
                Park::Busy
            }
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
        if !std::mem::take(&mut self.held) {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let released = sqlx::query_scalar!(
            "SELECT pg_advisory_unlock_shared(hashtext('fleet.idle'), hashtext($1))",
            queue
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
