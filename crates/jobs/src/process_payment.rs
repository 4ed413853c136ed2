//! `process_payment`: applies one verified Stripe event to customers, subscriptions
//! and the credits ledger.
//!
//! Enqueued by the trigger on `billing.stripe_events` (the web process stores each
//! signed event there once), keyed by the event id. Idempotent: the event row is
//! locked and marked processed in the same transaction as its effects, so a retry
//! after a crash either sees it done or redoes all of it. Safe in any order:
//! subscription state carries the `created` time of the event it came from and an
//! older event never overwrites it; credits are keyed by event id. Unknown event
//! types are recorded as ignored. A payload missing what its type needs is a
//! permanent failure (Stripe will not send it differently next time).
//!
//! Tenancy: the inbox is platform-level; an event names a Stripe customer, which
//! `billing.customer_tenants` routes to its tenant (the route is made from the
//! checkout session's `metadata.tenant_id`). Once routed, the job works as
//! `pulse_worker` confined to that tenant. An event of a customer with no route yet
//! (its checkout is still to be processed) is retried.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{Postgres, Transaction};

use uuid::Uuid;

use crate::{Job, JobContext, JobError};
use pulse_contract::{RetentionHook, retention_hook};
use pulse_domain::{stripe::StripeEvent, tenancy};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessPayment {
    pub event_id: String,
}

/// What processing an event did, recorded on the inbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    Applied,
    Ignored,
    Stale,
}

impl Processed {
    fn as_str(self) -> &'static str {
        match self {
            Processed::Applied => "applied",
            Processed::Ignored => "ignored",
            Processed::Stale => "stale",
        }
    }
}

impl Job for ProcessPayment {
    const NAME: &'static str = "process_payment";
    const MAX_ATTEMPTS: i32 = 10;

    /// Processed events of the inbox go after `keep` (Stripe retries for 3 days; a
    /// duplicate older than `keep` would be processed again).
    fn retention() -> Option<RetentionHook> {
        Some(retention_hook(|pool, keep| async move {
            let deleted = sqlx::query!(
                "DELETE FROM billing.stripe_events
                 WHERE processed_at < now() - make_interval(secs => $1)",
                keep.as_secs_f64(),
            )
            .execute(&pool)
            .await?;
            Ok(deleted.rows_affected())
        }))
    }

    async fn run(self, ctx: JobContext) -> Result<(), JobError> {
        let mut tx = ctx.pool.begin().await?;
        let row = sqlx::query_as!(
            InboxRow,
            "SELECT type AS kind, created, payload, processed_at FROM billing.stripe_events
             WHERE event_id = $1 FOR UPDATE",
            self.event_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(JobError::permanent(format!(
                "no Stripe event {}",
                self.event_id
            )));
        };
        if row.processed_at.is_some() {
            return Ok(());
        }
        let stripe: StripeEvent = serde_json::from_value(row.payload).map_err(|e| {
            JobError::permanent(format!(
                "Stripe event {} ({}) is malformed: {e}",
                self.event_id, row.kind
            ))
        })?;
        let kind = row.kind;
        let event = Event {
            id: &self.event_id,
            kind: &kind,
            created: row.created,
            object: stripe.object().cloned().unwrap_or(Value::Null),
            stripe: &stripe,
        };
        let outcome = match route(&mut tx, &event).await? {
            None => Processed::Ignored,
            Some(owner) => {
                tenancy::enter(&mut tx, owner.tenant).await?;
                apply(&mut tx, &owner, &event).await?
            }
        };
        sqlx::query!(
            "UPDATE billing.stripe_events SET processed_at = now(), outcome = $2 WHERE event_id = $1",
            &self.event_id,
            outcome.as_str(),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(stripe.event = %self.event_id, stripe.type = %kind, outcome = outcome.as_str(), "stripe event {} {}", self.event_id, outcome.as_str());
        Ok(())
    }
}

struct InboxRow {
    kind: String,
    created: DateTime<Utc>,
    payload: Value,
    processed_at: Option<DateTime<Utc>>,
}

struct Event<'a> {
    id: &'a str,
    /// The type as the inbox recorded it (for messages).
    kind: &'a str,
    created: DateTime<Utc>,
    object: Value,
    stripe: &'a StripeEvent,
}

impl Event<'_> {
    fn str(&self, pointer: &str) -> Option<&str> {
        self.object.pointer(pointer).and_then(Value::as_str)
    }

    fn require(&self, pointer: &str) -> Result<&str, JobError> {
        self.str(pointer).ok_or_else(|| {
            JobError::permanent(format!("{} event {} has no {pointer}", self.kind, self.id))
        })
    }

    /// An object id field that Stripe may expand into an object.
    fn id_of(&self, pointer: &str) -> Option<&str> {
        let v = self.object.pointer(pointer)?;
        v.as_str().or_else(|| v.get("id").and_then(Value::as_str))
    }
}

/// Whose an event is: its Stripe customer (every handled type names one) and the
/// customer's tenant.
#[derive(Clone, Copy)]
struct Owner<'a> {
    tenant: Uuid,
    customer: &'a str,
}

/// The owner of an event, or `None` for a type we do not handle. A checkout session
/// makes its customer's route from `metadata.tenant_id`; every other event follows
/// its customer's route.
async fn route<'e>(
    tx: &mut Transaction<'_, Postgres>,
    e: &'e Event<'_>,
) -> Result<Option<Owner<'e>>, JobError> {
    if matches!(e.stripe, StripeEvent::Unhandled) {
        return Ok(None);
    }
    let customer = e
        .id_of("/customer")
        .ok_or_else(|| JobError::permanent(format!("{} event {} has no customer", e.kind, e.id)))?;
    if matches!(e.stripe, StripeEvent::CheckoutSessionCompleted { .. }) {
        let tenant = e
            .str("/metadata/tenant_id")
            .and_then(|t| Uuid::from_str(t).ok())
            .ok_or_else(|| {
                JobError::permanent(format!(
                    "checkout session of {} has no metadata.tenant_id (a uuid): whose customer it is cannot be told",
                    e.id
                ))
            })?;
        let routed: Uuid = sqlx::query_scalar!(
            r#"WITH made AS (
                 INSERT INTO billing.customer_tenants (stripe_customer_id, tenant_id) VALUES ($1, $2)
                 ON CONFLICT (stripe_customer_id) DO NOTHING RETURNING tenant_id)
             SELECT tenant_id AS "tenant_id!" FROM made
             UNION ALL SELECT tenant_id FROM billing.customer_tenants WHERE stripe_customer_id = $1
             LIMIT 1"#,
            customer,
            tenant,
        )
        .fetch_one(&mut **tx)
        .await?;
        if routed != tenant {
            return Err(JobError::permanent(format!(
                "checkout session of {} names tenant {tenant}, but customer {customer} belongs to another",
                e.id
            )));
        }
        return Ok(Some(Owner { tenant, customer }));
    }
    let routed: Option<Uuid> = sqlx::query_scalar!(
        "SELECT tenant_id FROM billing.customer_tenants WHERE stripe_customer_id = $1",
        customer,
    )
    .fetch_optional(&mut **tx)
    .await?;
    routed
        .map(|tenant| Some(Owner { tenant, customer }))
        .ok_or_else(|| {
        JobError::retryable(format!(
            "customer {customer} has no tenant yet (its checkout.session.completed is not processed)"
        ))
    })
}

async fn apply(
    tx: &mut Transaction<'_, Postgres>,
    owner: &Owner<'_>,
    e: &Event<'_>,
) -> Result<Processed, JobError> {
    match e.stripe {
        StripeEvent::CheckoutSessionCompleted { .. } => checkout_completed(tx, owner, e).await,
        StripeEvent::PaymentIntentSucceeded { .. } => payment_succeeded(tx, owner, e).await,
        StripeEvent::SubscriptionCreated { .. }
        | StripeEvent::SubscriptionUpdated { .. }
        | StripeEvent::SubscriptionDeleted { .. } => subscription_changed(tx, owner, e).await,
        StripeEvent::InvoicePaid { .. } => invoice_paid(tx, e).await,
        StripeEvent::InvoicePaymentFailed { .. } => invoice_failed(tx, owner, e).await,
        StripeEvent::Unhandled => Ok(Processed::Ignored),
    }
}

/// Links the Stripe customer to the platform's user (client_reference_id).
async fn checkout_completed(
    tx: &mut Transaction<'_, Postgres>,
    owner: &Owner<'_>,
    e: &Event<'_>,
) -> Result<Processed, JobError> {
    let Owner { tenant, customer } = *owner;
    sqlx::query!(
        "INSERT INTO billing.customers (tenant_id, stripe_customer_id, user_id, email)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (tenant_id, stripe_customer_id) DO UPDATE SET
             user_id = coalesce(excluded.user_id, billing.customers.user_id),
             email = coalesce(excluded.email, billing.customers.email),
             updated_at = now()",
        tenant,
        customer,
        e.str("/client_reference_id"),
        e.str("/customer_details/email"),
    )
    .execute(&mut **tx)
    .await?;
    Ok(Processed::Applied)
}

/// Money arrived: credits named in the payment's metadata go to the ledger, once.
async fn payment_succeeded(
    tx: &mut Transaction<'_, Postgres>,
    owner: &Owner<'_>,
    e: &Event<'_>,
) -> Result<Processed, JobError> {
    let Some(credits) = e.str("/metadata/credits") else {
        return Ok(Processed::Applied);
    };
    let credits = Decimal::from_str(credits).map_err(|_| {
        JobError::permanent(format!("metadata.credits of {} is not a decimal", e.id))
    })?;
    let Owner { tenant, customer } = *owner;
    sqlx::query!(
        "INSERT INTO billing.credit_ledger (tenant_id, stripe_customer_id, delta, reason, stripe_event_id)
         VALUES ($1, $2, $3, 'payment_intent.succeeded', $4)
         ON CONFLICT (tenant_id, stripe_event_id) DO NOTHING",
        tenant,
        customer,
        credits,
        e.id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(Processed::Applied)
}

/// Within one second (Stripe's `created` resolution), later lifecycle steps win.
fn lifecycle_rank(event: &StripeEvent) -> i32 {
    match event {
        StripeEvent::SubscriptionCreated { .. } => 1,
        StripeEvent::SubscriptionUpdated { .. } => 2,
        _ => 3,
    }
}

async fn subscription_changed(
    tx: &mut Transaction<'_, Postgres>,
    owner: &Owner<'_>,
    e: &Event<'_>,
) -> Result<Processed, JobError> {
    let id = e.require("/id")?;
    let Owner { tenant, customer } = *owner;
    let status = if matches!(e.stripe, StripeEvent::SubscriptionDeleted { .. }) {
        "canceled"
    } else {
        e.require("/status")?
    };
    let tier = e
        .str("/items/data/0/price/lookup_key")
        .or_else(|| e.str("/metadata/tier"))
        .or_else(|| e.str("/items/data/0/price/nickname"));
    // Newer API versions moved current_period_end onto the subscription items.
    let period_end = e
        .object
        .pointer("/current_period_end")
        .or_else(|| e.object.pointer("/items/data/0/current_period_end"))
        .and_then(Value::as_i64)
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, 0));
    let written = sqlx::query!(
        "INSERT INTO billing.subscriptions AS s
             (stripe_subscription_id, stripe_customer_id, tier, status, current_period_end,
              source_event_created, source_event_id, source_rank, tenant_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (tenant_id, stripe_subscription_id) DO UPDATE SET
             stripe_customer_id = excluded.stripe_customer_id,
             tier = coalesce(excluded.tier, s.tier),
             status = excluded.status,
             current_period_end = coalesce(excluded.current_period_end, s.current_period_end),
             source_event_created = excluded.source_event_created,
             source_event_id = excluded.source_event_id,
             source_rank = excluded.source_rank,
             updated_at = now()
         WHERE (s.source_event_created, s.source_rank) < (excluded.source_event_created, excluded.source_rank)",
        id,
        customer,
        tier,
        status,
        period_end,
        e.created,
        e.id,
        lifecycle_rank(e.stripe),
        tenant,
    )
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(if written == 1 {
        Processed::Applied
    } else {
        Processed::Stale
    })
}

/// A paid invoice reactivates a subscription that was waiting on payment, unless a
/// newer event already said otherwise.
async fn invoice_paid(
    tx: &mut Transaction<'_, Postgres>,
    e: &Event<'_>,
) -> Result<Processed, JobError> {
    let Some(subscription) = e
        .id_of("/subscription")
        .or_else(|| e.id_of("/parent/subscription_details/subscription"))
    else {
        return Ok(Processed::Applied);
    };
    sqlx::query!(
        "UPDATE billing.subscriptions SET status = 'active', source_event_created = $2,
                source_event_id = $3, source_rank = 2, updated_at = now()
         WHERE stripe_subscription_id = $1 AND status IN ('past_due', 'unpaid', 'incomplete')
           AND source_event_created < $2",
        subscription,
        e.created,
        e.id,
    )
    .execute(&mut **tx)
    .await?;
    Ok(Processed::Applied)
}

/// A failed payment raises an alert to the customer's user (in this transaction:
/// exactly one alert per event).
async fn invoice_failed(
    tx: &mut Transaction<'_, Postgres>,
    owner: &Owner<'_>,
    e: &Event<'_>,
) -> Result<Processed, JobError> {
    let Owner { tenant, customer } = *owner;
    let user: Option<String> = sqlx::query_scalar!(
        "SELECT user_id FROM billing.customers WHERE stripe_customer_id = $1",
        customer,
    )
    .fetch_optional(&mut **tx)
    .await?
    .flatten();
    let amount = e
        .object
        .pointer("/amount_due")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let currency = e.str("/currency").unwrap_or("usd").to_uppercase();
    let payload = serde_json::json!({
        "title": "Payment failed",
        "message": format!(
            "We could not charge {}.{:02} {currency} for invoice {}.",
            amount / 100, amount % 100, e.str("/number").or(e.str("/id")).unwrap_or("?")
        ),
        "fields": [
            {"name": "Attempt", "value": e.object.pointer("/attempt_count").and_then(Value::as_i64).unwrap_or(1).to_string()},
            {"name": "Stripe event", "value": e.id},
        ],
    });
    sqlx::query!(
        "INSERT INTO alerts (tenant_id, user_id, kind, payload) VALUES ($1, $2, 'payment_failed', $3)",
        tenant,
        user,
        payload,
    )
        .execute(&mut **tx)
        .await?;
    Ok(Processed::Applied)
}
