//! The paper venue's own copy of the parts of Alpaca's wire format it speaks (order
//! bodies, Order entities, FILL activities). Written from Alpaca's documentation, not
//! shared with the fleet's client: a simulator that borrowed the client's types would
//! agree with the client even where both are wrong about Alpaca.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// An order as sent: Alpaca's `POST /v2/orders` body. Alpaca takes its decimal fields
/// as JSON strings or numbers (official clients send either), and so does this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderBody {
    pub symbol: String,
    #[serde(serialize_with = "rust_decimal::serde::str::serialize")]
    #[serde(deserialize_with = "decimal")]
    pub qty: Decimal,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub time_in_force: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "rust_decimal::serde::str_option::serialize",
        deserialize_with = "optional_decimal"
    )]
    pub limit_price: Option<Decimal>,
    pub client_order_id: String,
}

/// A decimal sent as a JSON string (`"1.5"`) or number (`1.5`).
fn decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    optional_decimal(d)?.ok_or_else(|| serde::de::Error::custom("expected a decimal"))
}

fn optional_decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    use serde::de::Error;
    let text = match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        other => return Err(D::Error::custom(format!("expected a decimal, got {other}"))),
    };
    let value = text
        .parse::<Decimal>()
        .or_else(|_| Decimal::from_scientific(&text))
        .map_err(|_| D::Error::custom(format!("`{text}` is not a decimal")))?;
    Ok(Some(value))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    pub fn opposite(self) -> Self {
        match self {
            Side::Buy => Side::Sell,
            Side::Sell => Side::Buy,
        }
    }

    /// The wire (and database) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderType {
    Market,
    Limit,
}

impl OrderType {
    /// The wire (and database) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderType::Market => "market",
            OrderType::Limit => "limit",
        }
    }
}

/// An order as the venue reports it (the fields of Alpaca's Order entity we use).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub id: String,
    pub client_order_id: String,
    pub symbol: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub filled_qty: Decimal,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub filled_avg_price: Option<Decimal>,
    pub side: Side,
    #[serde(rename = "type")]
    pub order_type: OrderType,
    pub time_in_force: String,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub limit_price: Option<Decimal>,
    /// new, partially_filled, filled, canceled, expired, rejected, ...
    pub status: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The API key (account) the order belongs to: not part of Alpaca's entity.
    #[serde(skip)]
    pub account: String,
}

impl Order {
    /// No further fills can come.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            "filled" | "canceled" | "expired" | "rejected" | "replaced" | "done_for_day"
        )
    }
}

/// A fill activity (`GET /v2/account/activities/FILL`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FillActivity {
    /// `<ts>::<uuid>`: unique, the dedupe key of fills.
    pub id: String,
    pub activity_type: String,
    pub transaction_time: DateTime<Utc>,
    /// fill or partial_fill
    #[serde(rename = "type")]
    pub fill_type: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub qty: Decimal,
    pub side: Side,
    pub symbol: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub leaves_qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub cum_qty: Decimal,
    pub order_id: String,
    pub order_status: String,
    /// The API key (account) the fill belongs to: not part of Alpaca's entity.
    #[serde(skip)]
    pub account: String,
}
