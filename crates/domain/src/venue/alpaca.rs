//! The Alpaca Trading API v2 client (also what talks to `pulse-fleet paper`).
//! Authentication headers `APCA-API-KEY-ID` / `APCA-API-SECRET-KEY`; the secret is
//! never logged and errors are stripped of URLs.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, de::DeserializeOwned};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use super::{
    Fill, OrderRequest, OrderType, Position, Quote, Side, TimeInForce, Venue, VenueError,
    VenueFuture, VenueOrder,
};
use crate::secrets::Secret;

/// Alpaca's 422 text for a client order id it already has.
const DUPLICATE_CLIENT_ORDER_ID: &str = "client_order_id must be unique";

#[derive(Clone)]
pub struct AlpacaClient {
    http: reqwest::Client,
    base_url: String,
    /// Market data is another host at Alpaca (`https://data.alpaca.markets`); the
    /// paper venue serves both.
    data_url: String,
    key_id: String,
    secret: Secret,
}

impl std::fmt::Debug for AlpacaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlpacaClient")
            .field("base_url", &self.base_url)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Alpaca's error body: `{"code": 40010001, "message": "..."}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

impl AlpacaClient {
    /// `base_url` e.g. `https://paper-api.alpaca.markets` or the local paper venue.
    pub fn new(http: reqwest::Client, base_url: &str, key_id: &str, secret: Secret) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            data_url: base_url.trim_end_matches('/').to_owned(),
            key_id: key_id.to_owned(),
            secret,
        }
    }

    /// Where market data (quotes) comes from, when not the trading host.
    pub fn with_data_url(mut self, data_url: &str) -> Self {
        self.data_url = data_url.trim_end_matches('/').to_owned();
        self
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.authorized(
            self.http
                .request(method, format!("{}{path}", self.base_url)),
        )
    }

    /// Any request to Alpaca (trading or market data) carries the key pair.
    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        request
            .header("APCA-API-KEY-ID", &self.key_id)
            .header("APCA-API-SECRET-KEY", self.secret.expose())
    }

    async fn send(&self, request: RequestBuilder) -> Result<Response, VenueError> {
        let response = request.send().await.map_err(|e| {
            // Sent or not, we cannot tell: the caller must look it up.
            VenueError::Unavailable(e.without_url().to_string())
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get("x-ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .map(|reset| {
                let wait = reset - chrono::Utc::now().timestamp();
                Duration::from_secs(wait.clamp(1, 60) as u64)
            });
        let body: ErrorBody = response.json().await.unwrap_or(ErrorBody {
            code: 0,
            message: String::new(),
        });
        Err(match status {
            StatusCode::NOT_FOUND => VenueError::NotFound,
            StatusCode::TOO_MANY_REQUESTS => VenueError::RateLimited {
                retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            },
            StatusCode::UNAUTHORIZED => VenueError::Unauthorized,
            s if s.is_server_error() => {
                VenueError::Unavailable(format!("venue answered {s}: {}", body.message))
            }
            StatusCode::UNPROCESSABLE_ENTITY
                if body.message.contains(DUPLICATE_CLIENT_ORDER_ID) =>
            {
                VenueError::DuplicateClientOrderId
            }
            s => VenueError::Rejected {
                reason: format!("{} {}: {}", s.as_u16(), body.code, body.message),
            },
        })
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, VenueError> {
        self.send(request).await?.json().await.map_err(|e| {
            VenueError::Unavailable(format!("unreadable venue answer: {}", e.without_url()))
        })
    }
}

impl Venue for AlpacaClient {
    fn quote_source(&self) -> &str {
        &self.data_url
    }

    fn create_order<'a>(&'a self, order: &'a OrderRequest) -> VenueFuture<'a, VenueOrder> {
        Box::pin(async move {
            let body = OrderBody::from(order);
            let placed: WireOrder = self
                .json(self.request(Method::POST, "/v2/orders").json(&body))
                .await?;
            Ok(placed.into())
        })
    }

    fn get_order_by_client_id<'a>(
        &'a self,
        client_order_id: &'a str,
    ) -> VenueFuture<'a, VenueOrder> {
        Box::pin(async move {
            let found: WireOrder = self
                .json(
                    self.request(Method::GET, "/v2/orders:by_client_order_id")
                        .query(&[("client_order_id", client_order_id)]),
                )
                .await?;
            Ok(found.into())
        })
    }

    fn get_order<'a>(&'a self, id: &'a str) -> VenueFuture<'a, VenueOrder> {
        Box::pin(async move {
            let found: WireOrder = self
                .json(self.request(Method::GET, &format!("/v2/orders/{id}")))
                .await?;
            Ok(found.into())
        })
    }

    fn cancel_order<'a>(&'a self, id: &'a str) -> VenueFuture<'a, ()> {
        Box::pin(async move {
            match self
                .send(self.request(Method::DELETE, &format!("/v2/orders/{id}")))
                .await
            {
                Ok(_) => Ok(()),
                // Alpaca answers 422 to a cancel of an order that is filled or done.
                Err(VenueError::Rejected { .. }) => Err(VenueError::NotCancelable),
                Err(e) => Err(e),
            }
        })
    }

    fn list_open_orders(&self) -> VenueFuture<'_, Vec<VenueOrder>> {
        Box::pin(async move {
            let open: Vec<WireOrder> = self
                .json(
                    self.request(Method::GET, "/v2/orders")
                        .query(&[("status", "open"), ("limit", "500")]),
                )
                .await?;
            Ok(open.into_iter().map(VenueOrder::from).collect())
        })
    }

    fn latest_quote<'a>(&'a self, symbol: &'a str) -> VenueFuture<'a, Quote> {
        Box::pin(async move {
            // The symbol is one path segment, encoded: a client's symbol never
            // reaches another path of the API.
            let mut url = reqwest::Url::parse(&self.data_url)
                .map_err(|e| VenueError::Unavailable(format!("bad market data URL: {e}")))?;
            url.path_segments_mut()
                .map_err(|_| VenueError::Unavailable("bad market data URL".into()))?
                .extend(["v2", "stocks", symbol, "quotes", "latest"]);
            let body: serde_json::Value = self.json(self.authorized(self.http.get(url))).await?;
            let quote = body.get("quote").ok_or(VenueError::NotFound)?;
            let quote = Quote {
                ask: Quote::side(quote.get("ap")),
                bid: Quote::side(quote.get("bp")),
            };
            if quote.high().is_none() {
                return Err(VenueError::NotFound);
            }
            Ok(quote)
        })
    }

    fn fills<'a>(&'a self, after: Option<&'a str>) -> VenueFuture<'a, Vec<Fill>> {
        let mut request = self
            .request(Method::GET, "/v2/account/activities/FILL")
            .query(&[("direction", "asc"), ("page_size", "100")]);
        if let Some(token) = after {
            request = request.query(&[("page_token", token)]);
        }
        Box::pin(async move {
            let page: Vec<WireFill> = self.json(request).await?;
            Ok(page.into_iter().map(Fill::from).collect())
        })
    }

    fn positions(&self) -> VenueFuture<'_, Vec<Position>> {
        Box::pin(async move {
            let held: Vec<WirePosition> = self
                .json(self.request(Method::GET, "/v2/positions"))
                .await?;
            Ok(held.into_iter().map(Position::from).collect())
        })
    }
}

/// A position (`GET /v2/positions`): `qty` is negative for a short.
#[derive(Deserialize)]
struct WirePosition {
    symbol: String,
    #[serde(with = "rust_decimal::serde::str")]
    qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    avg_entry_price: Decimal,
}

impl From<WirePosition> for Position {
    fn from(p: WirePosition) -> Self {
        Self {
            symbol: p.symbol,
            qty: p.qty,
            avg_entry_price: p.avg_entry_price,
        }
    }
}

/// Alpaca's `POST /v2/orders` body. Decimals go as strings, as Alpaca's documentation
/// writes them.
#[derive(Serialize)]
struct OrderBody<'a> {
    symbol: &'a str,
    #[serde(with = "rust_decimal::serde::str")]
    qty: Decimal,
    side: Side,
    #[serde(rename = "type")]
    order_type: OrderType,
    time_in_force: TimeInForce,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    limit_price: Option<Decimal>,
    client_order_id: &'a str,
}

impl<'a> From<&'a OrderRequest> for OrderBody<'a> {
    fn from(o: &'a OrderRequest) -> Self {
        Self {
            symbol: &o.symbol,
            qty: o.qty,
            side: o.side,
            order_type: o.order_type,
            time_in_force: o.time_in_force,
            limit_price: o.limit_price,
            client_order_id: &o.client_order_id,
        }
    }
}

/// The fields of Alpaca's Order entity the fleet reads.
#[derive(Deserialize)]
struct WireOrder {
    id: String,
    client_order_id: String,
    symbol: String,
    #[serde(with = "rust_decimal::serde::str")]
    qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    filled_qty: Decimal,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    filled_avg_price: Option<Decimal>,
    side: Side,
    #[serde(rename = "type")]
    order_type: OrderType,
    time_in_force: TimeInForce,
    #[serde(default, with = "rust_decimal::serde::str_option")]
    limit_price: Option<Decimal>,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<WireOrder> for VenueOrder {
    fn from(o: WireOrder) -> Self {
        Self {
            status: wire_status::from_alpaca(&o.status),
            id: o.id,
            client_order_id: o.client_order_id,
            symbol: o.symbol,
            qty: o.qty,
            filled_qty: o.filled_qty,
            filled_avg_price: o.filled_avg_price,
            side: o.side,
            order_type: o.order_type,
            time_in_force: o.time_in_force,
            limit_price: o.limit_price,
            created_at: o.created_at,
            updated_at: o.updated_at,
        }
    }
}

/// A FILL activity (`GET /v2/account/activities/FILL`): `id` is `<ts>::<uuid>`.
#[derive(Deserialize)]
struct WireFill {
    id: String,
    transaction_time: DateTime<Utc>,
    #[serde(with = "rust_decimal::serde::str")]
    price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    qty: Decimal,
    side: Side,
    symbol: String,
    #[serde(with = "rust_decimal::serde::str")]
    leaves_qty: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    cum_qty: Decimal,
    order_id: String,
    order_status: String,
}

impl From<WireFill> for Fill {
    fn from(f: WireFill) -> Self {
        Self {
            order_status: wire_status::from_alpaca(&f.order_status),
            id: f.id,
            order_id: f.order_id,
            symbol: f.symbol,
            side: f.side,
            qty: f.qty,
            price: f.price,
            at: f.transaction_time,
            leaves_qty: f.leaves_qty,
            cum_qty: f.cum_qty,
        }
    }
}

/// Alpaca's order statuses, mapped to ours: every working state (`new`, `accepted`,
/// `pending_new`, `pending_cancel`, `held`, ...) is `accepted`; `canceled` and
/// `replaced` (the order lives on under another id) are `cancelled`; `done_for_day` is
/// `expired` (no fill comes today).
pub mod wire_status {
    use crate::status::OrderStatus;

    pub fn from_alpaca(status: &str) -> OrderStatus {
        match status {
            "filled" => OrderStatus::Filled,
            "partially_filled" => OrderStatus::PartiallyFilled,
            "canceled" | "replaced" => OrderStatus::Cancelled,
            "expired" | "done_for_day" => OrderStatus::Expired,
            "rejected" => OrderStatus::Rejected,
            _ => OrderStatus::Accepted,
        }
    }

    pub fn to_alpaca(status: OrderStatus) -> &'static str {
        match status {
            OrderStatus::PendingSubmit | OrderStatus::Sent | OrderStatus::SubmitUnknown => {
                "pending_new"
            }
            OrderStatus::Accepted => "accepted",
            OrderStatus::PartiallyFilled => "partially_filled",
            OrderStatus::Filled => "filled",
            OrderStatus::Cancelled => "canceled",
            OrderStatus::Expired => "expired",
            OrderStatus::Rejected => "rejected",
        }
    }
}
