//! Statuses of the trading tables, one spelling each, checked by the schema
//! (`orders.status` has a CHECK listing [`OrderStatus`]; `multi_leg_intents.status` is
//! the `intent_status` enum). Venues' own spellings are mapped in their clients.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where an order is in its life. The first three are ours (before and during
/// submission); the rest are the venue's answer, venue-neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Planned, not released for sending.
    PendingSubmit,
    /// Released for sending: it may exist at the venue from here on.
    Sent,
    /// Sent, and the answer was lost: look it up before sending again.
    SubmitUnknown,
    /// The venue has it and it is working (no fill yet).
    Accepted,
    PartiallyFilled,
    Filled,
    Cancelled,
    Expired,
    Rejected,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 9] = [
        OrderStatus::PendingSubmit,
        OrderStatus::Sent,
        OrderStatus::SubmitUnknown,
        OrderStatus::Accepted,
        OrderStatus::PartiallyFilled,
        OrderStatus::Filled,
        OrderStatus::Cancelled,
        OrderStatus::Expired,
        OrderStatus::Rejected,
    ];

    /// The schema's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::PendingSubmit => "pending_submit",
            OrderStatus::Sent => "sent",
            OrderStatus::SubmitUnknown => "submit_unknown",
            OrderStatus::Accepted => "accepted",
            OrderStatus::PartiallyFilled => "partially_filled",
            OrderStatus::Filled => "filled",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
            OrderStatus::Rejected => "rejected",
        }
    }

    /// No further fill can come.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            OrderStatus::Filled
                | OrderStatus::Cancelled
                | OrderStatus::Expired
                | OrderStatus::Rejected
        )
    }

    /// Settled at submission: the venue has it, or refused it for good.
    pub fn is_submitted(self) -> bool {
        !matches!(
            self,
            OrderStatus::PendingSubmit | OrderStatus::Sent | OrderStatus::SubmitUnknown
        )
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::text_column!(OrderStatus, "order status");

/// Where an intent is in its life (the `intent_status` enum of the schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[sqlx(type_name = "intent_status", rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum IntentStatus {
    Pending,
    Submitted,
    PartiallyFilled,
    Filled,
    Cancelled,
    Failed,
}

impl IntentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IntentStatus::Pending => "pending",
            IntentStatus::Submitted => "submitted",
            IntentStatus::PartiallyFilled => "partially_filled",
            IntentStatus::Filled => "filled",
            IntentStatus::Cancelled => "cancelled",
            IntentStatus::Failed => "failed",
        }
    }

    /// Nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            IntentStatus::Filled | IntentStatus::Cancelled | IntentStatus::Failed
        )
    }
}

impl fmt::Display for IntentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_order_status_reads_back_from_its_spelling() {
        for status in OrderStatus::ALL {
            assert_eq!(status.as_str().parse::<OrderStatus>(), Ok(status));
        }
        assert!("canceled".parse::<OrderStatus>().is_err());
    }
}
