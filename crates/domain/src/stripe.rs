//! The Stripe events the platform acts on, as Stripe sends them: tagged by `type`,
//! with the object in `data.object`. Every other type reads as [`StripeEvent::Unhandled`].

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type")]
pub enum StripeEvent {
    /// A checkout finished: links the customer to a tenant (`metadata.tenant_id`) and a
    /// user (`client_reference_id`).
    #[serde(rename = "checkout.session.completed")]
    CheckoutSessionCompleted { data: EventData },
    /// Money arrived (credits named in `metadata.credits`).
    #[serde(rename = "payment_intent.succeeded")]
    PaymentIntentSucceeded { data: EventData },
    #[serde(rename = "customer.subscription.created")]
    SubscriptionCreated { data: EventData },
    #[serde(rename = "customer.subscription.updated")]
    SubscriptionUpdated { data: EventData },
    #[serde(rename = "customer.subscription.deleted")]
    SubscriptionDeleted { data: EventData },
    #[serde(rename = "invoice.paid")]
    InvoicePaid { data: EventData },
    #[serde(rename = "invoice.payment_failed")]
    InvoicePaymentFailed { data: EventData },
    #[serde(other)]
    Unhandled,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventData {
    pub object: Value,
}

impl StripeEvent {
    /// The event's object (`data.object`); none for an unhandled type.
    pub fn object(&self) -> Option<&Value> {
        match self {
            StripeEvent::CheckoutSessionCompleted { data }
            | StripeEvent::PaymentIntentSucceeded { data }
            | StripeEvent::SubscriptionCreated { data }
            | StripeEvent::SubscriptionUpdated { data }
            | StripeEvent::SubscriptionDeleted { data }
            | StripeEvent::InvoicePaid { data }
            | StripeEvent::InvoicePaymentFailed { data } => Some(&data.object),
            StripeEvent::Unhandled => None,
        }
    }

    /// Stripe's name of the type.
    pub fn type_name(&self) -> &'static str {
        match self {
            StripeEvent::CheckoutSessionCompleted { .. } => "checkout.session.completed",
            StripeEvent::PaymentIntentSucceeded { .. } => "payment_intent.succeeded",
            StripeEvent::SubscriptionCreated { .. } => "customer.subscription.created",
            StripeEvent::SubscriptionUpdated { .. } => "customer.subscription.updated",
            StripeEvent::SubscriptionDeleted { .. } => "customer.subscription.deleted",
            StripeEvent::InvoicePaid { .. } => "invoice.paid",
            StripeEvent::InvoicePaymentFailed { .. } => "invoice.payment_failed",
            StripeEvent::Unhandled => "unhandled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handled_type_carries_its_object_and_any_other_is_unhandled() {
        let paid: StripeEvent = serde_json::from_value(serde_json::json!({
            "id": "evt_1", "type": "invoice.paid", "data": {"object": {"id": "in_1"}}
        }))
        .unwrap();
        assert!(matches!(paid, StripeEvent::InvoicePaid { .. }));
        assert_eq!(paid.object().unwrap()["id"], "in_1");
        let other: StripeEvent = serde_json::from_value(serde_json::json!({
            "id": "evt_2", "type": "charge.refunded", "data": {"object": {}}
        }))
        .unwrap();
        assert!(matches!(other, StripeEvent::Unhandled));
    }
}
