//! `execute_intent`: the OMS. A multi-leg intent becomes one broker order per leg.
//!
//! Enqueued by the trigger on `multi_leg_intents`, keyed by the intent id. Runs in
//! transactions confined to the intent's tenant (row-level security).
//!
//! 1. Plan (`plan.rs`), in one transaction, together with the other intents of the
//!    tenant asking at the same moment: validate the legs (a bad intent fails with a
//!    readable reason and an audit event); kill switches; risk limits; entry locks
//!    per (account, symbol), so two intents on one account and symbol run one after
//!    the other (the second snoozes); capital reserved through the journal, which
//!    the database refuses beyond the ledger invariant, in the same transaction that
//!    writes the order rows. Client order ids derive from (tenant, intent, leg).
//! 2. Submit each leg (`submit.rs`, with `clients.rs` and `budget.rs`). An outcome
//!    that is unknown (timeout, lost answer, 5xx) leaves the order `submit_unknown`
//!    and the job retries; every retry first looks each order up by its client order
//!    id and never resends blindly.
//! 3. Record the answers and the intent's ending (`record.rs`).
//! 4. A definitively rejected leg releases its reservation, and its siblings are
//!    cancelled, or closed by an opposite market order when already filled
//!    (`unwind.rs`); the intent fails. Every risk action writes an audit event.
//!
//! `group.rs` batches the planning and recording of concurrent intents per tenant.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::{Job, JobContext, JobError};
use pulse_domain::{
    Services, lifecycle,
    status::{IntentStatus, OrderStatus},
    tenancy,
    venue::{OrderRequest, OrderType, Side, TimeInForce, Venue, VenueError, VenueOrder},
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecuteIntent {
    pub intent_id: Uuid,
    pub tenant_id: Uuid,
    /// Unwind mode: the intent was submitted, then a venue ended one of its legs while
    /// another still works or has fills (the order lifecycle's roll-up asks this, with
    /// the reason): cancel what is open, close what filled, fail the intent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unwind: Option<String>,
}

/// How long an entry lock lasts if its holder dies.
const LOCK_TTL_SECS: f64 = 60.0;
/// Legs at or above this index are unwind orders.
const UNWIND_BASE: i32 = 1000;

mod budget;
mod clients;
mod group;
mod instruments;
mod plan;
mod record;
mod submit;
mod unwind;
use budget::*;
use clients::*;
pub use plan::plan_together;
use plan::{Planned, Verdict};

use record::*;
use submit::*;
use unwind::*;

/// This process's batches of intents, per tenant (see `group.rs`): planning, and
/// recording the venue's answers when every leg was accepted.
#[derive(Default)]
pub struct IntentBatches {
    plan: Arc<group::GroupCommit<Uuid, Verdict>>,
    settle: Arc<group::GroupCommit<Settlement, ()>>,
}

/// Checks an intent's legs as planning will, without a database: how many legs there
/// are, or the reason the intent would be refused. `defaults` is the tenant's default
/// account per venue. (The fuzz target drives it; a gateway could pre-check with it.)
pub fn check_legs(
    legs: &Value,
    defaults: &std::collections::HashMap<String, Uuid>,
) -> Result<usize, String> {
    plan::parse_legs(legs, defaults).map(|legs| legs.len())
}

/// Hex digits of digest in [`client_order_id`].
pub const CLIENT_ORDER_ID_HEX: usize = 28;

/// A client order id: the same for (tenant, intent, leg) on every attempt, at most
/// 36 characters (Binance's limit; Alpaca takes 48), letters, digits and dashes.
pub fn client_order_id(tenant: Uuid, intent: Uuid, leg: i32) -> String {
    // 112 bits of digest: with an unwind's leg number (1000 and up) the id stays
    // within Binance's 36 characters (`^[.A-Z:/a-z0-9_-]{1,36}$`).
    let digest = Sha256::digest(format!("{tenant}:{intent}:{leg}").as_bytes());
    let hex: String = digest[..CLIENT_ORDER_ID_HEX / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("pf{hex}-{leg}")
}

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    intent_id: Uuid,
    id: Uuid,
    leg_index: i32,
    account_id: Uuid,
    venue_id: String,
    symbol: String,
    side: String,
    quantity: Decimal,
    order_type: String,
    limit_price: Option<Decimal>,
    time_in_force: TimeInForce,
    client_order_id: String,
    venue_order_id: Option<String>,
    status: OrderStatus,
    reserved_amount: Decimal,
}

impl OrderRow {
    fn request(&self) -> OrderRequest {
        OrderRequest {
            symbol: self.symbol.clone(),
            qty: self.quantity,
            side: if self.side == "buy" {
                Side::Buy
            } else {
                Side::Sell
            },
            order_type: if self.order_type == "limit" {
                OrderType::Limit
            } else {
                OrderType::Market
            },
            time_in_force: self.time_in_force,
            limit_price: self.limit_price,
            client_order_id: self.client_order_id.clone(),
        }
    }

    /// It may already exist at the venue: it was released for sending (`sent`) or its
    /// answer was lost (`submit_unknown`). Whatever the attempt count (snoozes and
    /// hand-backs refund attempts), it is looked up by client order id before anything
    /// is sent again.
    fn may_exist_at_venue(&self) -> bool {
        self.status != OrderStatus::PendingSubmit
    }

    /// Settled at submission: the venue has it (or refused it for good).
    fn submitted(&self) -> bool {
        self.status.is_submitted()
    }
}

impl Job for ExecuteIntent {
    const NAME: &'static str = "execute_intent";
    const MAX_ATTEMPTS: i32 = 20;
    const TIMEOUT: Duration = Duration::from_secs(120);
    const BACKOFF: crate::Backoff = crate::Backoff {
        base: Duration::from_millis(200),
        max: Duration::from_secs(30),
        jitter: 0.25,
    };

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let (tenant, intent) = (self.tenant_id, self.intent_id);
        if let Some(reason) = &self.unwind {
            return unwind_submitted(&ctx, tenant, intent, reason).await;
        }
        let verdict = plan::plan(&ctx, tenant, intent)
            .await
            .map_err(JobError::retryable)?;
        match verdict {
            Verdict::Missing => Err(JobError::permanent(format!(
                "no intent {intent} in tenant {tenant}"
            ))),
            // Ended already: the lifecycle may have rolled it up (its legs filled)
            // while this job still held its entry locks; they go now, or every
            // other intent on those symbols would wait for their expiry.
            Verdict::NotPending(status) if status.is_final() => {
                release_locks(&ctx, tenant, intent).await
            }
            Verdict::NotPending(_) => submit_all(&ctx, tenant, intent, None).await,
            Verdict::Planned(Planned {
                orders,
                clients,
                wait,
            }) => {
                if let Some(wait) = wait {
                    return Err(JobError::Snooze(wait));
                }
                submit_all(
                    &ctx,
                    tenant,
                    intent,
                    Some(Prepared {
                        legs: orders,
                        clients,
                    }),
                )
                .await
            }
            Verdict::Refused { event, reason } => fail(&ctx, tenant, intent, event, &reason).await,
            Verdict::Locked => Err(JobError::Snooze(Duration::from_millis(100))),
            Verdict::Gated => Err(JobError::Snooze(Duration::from_millis(500))),
            Verdict::Retry(why) => Err(JobError::retryable(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_order_ids_are_deterministic_distinct_and_short() {
        let (tenant, i) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(client_order_id(tenant, i, 0), client_order_id(tenant, i, 0));
        assert_ne!(client_order_id(tenant, i, 0), client_order_id(tenant, i, 1));
        assert_ne!(
            client_order_id(tenant, i, 0),
            client_order_id(Uuid::from_u128(3), i, 0)
        );
        assert!(client_order_id(tenant, i, 1001).len() <= 48);
    }
}
