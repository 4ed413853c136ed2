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
    Fill, OrderRequest, OrderType, Page, Position, Quote, Side, TimeInForce, Venue, VenueError,
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
    /// The venue id requests are counted under, and where.
    venue: String,
    metrics: pulse_contract::metrics::Recorder,
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
            venue: "alpaca".to_owned(),
            metrics: Default::default(),
        }
    }

    /// Counts requests under venue id `venue` in `metrics`.
    pub fn with_metrics(mut self, venue: &str, metrics: pulse_contract::metrics::Recorder) -> Self {
        self.venue = venue.to_owned();
        self.metrics = metrics;
        self
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

    /// Sends one request of `endpoint` (the metrics' label), counting it, and maps
    /// a failure to the OMS's terms.
    async fn send(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<Response, VenueError> {
        let result = self.send_unmetered(request).await;
        super::count_request(&self.metrics, &self.venue, endpoint, &result);
        result
    }

    async fn send_unmetered(&self, request: RequestBuilder) -> Result<Response, VenueError> {
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

    async fn json<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        request: RequestBuilder,
    ) -> Result<T, VenueError> {
        self.send(endpoint, request)
            .await?
            .json()
            .await
            .map_err(|e| {
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
                .json(
                    "create_order",
                    self.request(Method::POST, "/v2/orders").json(&body),
                )
                .await?;
            Ok(placed.into())
        })
    }

    fn get_order_by_client_id<'a>(
        &'a self,
        _symbol: &'a str,
        client_order_id: &'a str,
    ) -> VenueFuture<'a, VenueOrder> {
        Box::pin(async move {
            let found: WireOrder = self
                .json(
                    "order_by_client_id",
                    self.request(Method::GET, "/v2/orders:by_client_order_id")
                        .query(&[("client_order_id", client_order_id)]),
                )
                .await?;
            Ok(found.into())
        })
    }

    fn get_order<'a>(&'a self, _symbol: &'a str, id: &'a str) -> VenueFuture<'a, VenueOrder> {
        Box::pin(async move {
            let found: WireOrder = self
                .json(
                    "get_order",
                    self.request(Method::GET, &format!("/v2/orders/{id}")),
                )
                .await?;
            Ok(found.into())
        })
    }

    fn cancel_order<'a>(&'a self, _symbol: &'a str, id: &'a str) -> VenueFuture<'a, ()> {
        Box::pin(async move {
            match self
                .send(
                    "cancel_order",
                    self.request(Method::DELETE, &format!("/v2/orders/{id}")),
                )
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
                    "open_orders",
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
            let body: serde_json::Value = self
                .json("latest_quote", self.authorized(self.http.get(url)))
                .await?;
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

    fn fills<'a>(
        &'a self,
        _symbols: &'a [String],
        since: Option<DateTime<Utc>>,
        page_token: Option<&'a str>,
    ) -> VenueFuture<'a, Page<Fill>> {
        let page_size = super::FILL_PAGE.to_string();
        let mut request = self
            .request(Method::GET, "/v2/account/activities/FILL")
            .query(&[("direction", "asc"), ("page_size", page_size.as_str())]);
        if let Some(since) = since {
            request = request.query(&[("after", since.to_rfc3339())]);
        }
        if let Some(token) = page_token {
            request = request.query(&[("page_token", token)]);
        }
        Box::pin(async move {
            let page: Vec<WireFill> = self.json("fills", request).await?;
            let fills = page
                .into_iter()
                .map(|f| Fill::from(f).checked())
                .collect::<Result<Vec<_>, _>>()?;
            // A full page may have more behind it, after its last fill.
            let next = (fills.len() >= super::FILL_PAGE)
                .then(|| fills.last().map(|f| f.id.clone()))
                .flatten();
            Ok(Page { items: fills, next })
        })
    }

    fn orders_after<'a>(
        &'a self,
        _symbols: &'a [String],
        after: DateTime<Utc>,
        page: Option<&'a str>,
    ) -> VenueFuture<'a, Page<VenueOrder>> {
        Box::pin(async move {
            // The page token is the creation time the next page starts after.
            let after = match page {
                Some(token) => DateTime::parse_from_rfc3339(token)
                    .map_err(|_| VenueError::Unavailable(format!("bad page token {token:?}")))?
                    .with_timezone(&Utc),
                None => after,
            };
            let limit = super::ORDER_PAGE.to_string();
            let request = self.request(Method::GET, "/v2/orders").query(&[
                ("status", "all"),
                ("direction", "asc"),
                ("nested", "false"),
                ("limit", limit.as_str()),
                ("after", after.to_rfc3339().as_str()),
            ]);
            let page: Vec<WireOrder> = self.json("orders_after", request).await?;
            let orders: Vec<VenueOrder> = page.into_iter().map(VenueOrder::from).collect();
            // A full page may have more behind it: those created from its last on
            // (a microsecond before, for orders created at the same instant).
            let next = match orders.last() {
                Some(last) if orders.len() >= super::ORDER_PAGE && last.created_at > after => {
                    Some((last.created_at - chrono::TimeDelta::microseconds(1)).to_rfc3339())
                }
                _ => None,
            };
            Ok(Page {
                items: orders,
                next,
            })
        })
    }

    fn stream_updates(&self, updates: super::UpdateSink) -> VenueFuture<'_, ()> {
        Box::pin(stream::follow(self, updates))
    }

    fn positions(&self) -> VenueFuture<'_, Vec<Position>> {
        Box::pin(async move {
            let held: Vec<WirePosition> = self
                .json("positions", self.request(Method::GET, "/v2/positions"))
                .await?;
            Ok(held.into_iter().map(Position::from).collect())
        })
    }
}

/// The `trade_updates` stream: `wss://…/stream` (the trading host, ws for http),
/// authenticate, listen, then one JSON message per update (text or binary frames: the
/// paper stream sends binary).
mod stream {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;

    use super::*;
    use crate::venue::{StreamSignal, TradeUpdate, UpdateKind, UpdateSink};

    /// How long the venue has to answer the handshake's messages.
    const HANDSHAKE: Duration = Duration::from_secs(10);

    pub(super) async fn follow(
        client: &AlpacaClient,
        updates: UpdateSink,
    ) -> Result<(), VenueError> {
        let url = client
            .base_url
            .replacen("https://", "wss://", 1)
            .replacen("http://", "ws://", 1)
            + "/stream";
        let down = |e: tokio_tungstenite::tungstenite::Error| {
            VenueError::Unavailable(format!("trade stream: {e}"))
        };
        let (mut ws, _) = tokio::time::timeout(HANDSHAKE, tokio_tungstenite::connect_async(&url))
            .await
            .map_err(|_| VenueError::Unavailable("trade stream: connect timed out".into()))?
            .map_err(down)?;
        let auth =
            json!({"action": "auth", "key": client.key_id, "secret": client.secret.expose()});
        ws.send(Message::text(auth.to_string()))
            .await
            .map_err(down)?;
        expect(&mut ws, "authorization").await?;
        let listen = json!({"action": "listen", "data": {"streams": ["trade_updates"]}});
        ws.send(Message::text(listen.to_string()))
            .await
            .map_err(down)?;
        expect(&mut ws, "listening").await?;
        if updates.send(StreamSignal::Connected).await.is_err() {
            return Ok(());
        }
        while let Some(message) = ws.next().await {
            let Some(body) = payload(message.map_err(down)?) else {
                continue;
            };
            match parse(&body) {
                Ok(Some(update)) => {
                    if updates
                        .send(StreamSignal::Update(Box::new(update)))
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Ok(None) => {}
                // One unreadable message is logged and skipped: the sync catches up on
                // whatever it described.
                Err(e) => tracing::warn!("trade stream: unreadable update skipped: {e}"),
            }
        }
        Err(VenueError::Unavailable(
            "trade stream closed by the venue".into(),
        ))
    }

    fn payload(message: Message) -> Option<Vec<u8>> {
        match message {
            Message::Text(t) => Some(t.as_bytes().to_vec()),
            Message::Binary(b) => Some(b.to_vec()),
            _ => None,
        }
    }

    /// Waits for the handshake answer on `stream` (`authorization` must say
    /// `authorized`).
    async fn expect<S>(ws: &mut S, stream: &str) -> Result<(), VenueError>
    where
        S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        let deadline = tokio::time::Instant::now() + HANDSHAKE;
        loop {
            let next = tokio::time::timeout_at(deadline, ws.next())
                .await
                .map_err(|_| {
                    VenueError::Unavailable(format!("trade stream: no {stream} answer"))
                })?;
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(VenueError::Unavailable(format!("trade stream: {e}"))),
                None => return Err(VenueError::Unavailable("trade stream closed".into())),
            };
            let Some(body) = payload(message) else {
                continue;
            };
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| VenueError::Unavailable(format!("trade stream: {e}")))?;
            if v.get("stream").and_then(Value::as_str) != Some(stream) {
                continue;
            }
            if stream == "authorization"
                && v.pointer("/data/status").and_then(Value::as_str) != Some("authorized")
            {
                return Err(VenueError::Unauthorized);
            }
            return Ok(());
        }
    }

    /// One `trade_updates` message as a [`TradeUpdate`]; `None` for other streams.
    pub(super) fn parse(body: &[u8]) -> Result<Option<TradeUpdate>, String> {
        #[derive(Deserialize)]
        struct Envelope {
            stream: String,
            data: Option<Value>,
        }
        #[derive(Deserialize)]
        struct Data {
            event: String,
            order: WireOrder,
            #[serde(default)]
            execution_id: Option<String>,
            #[serde(default)]
            timestamp: Option<DateTime<Utc>>,
            #[serde(default, deserialize_with = "loose_decimal")]
            price: Option<Decimal>,
            #[serde(default, deserialize_with = "loose_decimal")]
            qty: Option<Decimal>,
        }
        let envelope: Envelope = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        if envelope.stream != "trade_updates" {
            return Ok(None);
        }
        let data: Data = serde_json::from_value(envelope.data.unwrap_or_default())
            .map_err(|e| format!("trade update: {e}"))?;
        let event = match data.event.as_str() {
            "new" | "accepted" => UpdateKind::New,
            "fill" => UpdateKind::Fill,
            "partial_fill" => UpdateKind::PartialFill,
            "canceled" => UpdateKind::Cancelled,
            "expired" | "done_for_day" => UpdateKind::Expired,
            "rejected" => UpdateKind::Rejected,
            _ => UpdateKind::Other,
        };
        let order = VenueOrder::from(data.order);
        let fill = match event {
            UpdateKind::Fill | UpdateKind::PartialFill => {
                let (Some(price), Some(qty)) = (data.price, data.qty) else {
                    return Err(format!("{} event without price and qty", data.event));
                };
                Some(Fill {
                    id: data.execution_id.unwrap_or_default(),
                    order_id: order.id.clone(),
                    symbol: order.symbol.clone(),
                    side: order.side,
                    qty,
                    price,
                    at: data.timestamp.unwrap_or(order.updated_at),
                    key: Fill::key_by_cumulative(&order.id, order.filled_qty),
                })
            }
            _ => None,
        };
        Ok(Some(TradeUpdate { event, order, fill }))
    }

    /// A decimal sent as a string or a number (Alpaca's stream sends both).
    fn loose_decimal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        let v: Option<Value> = Option::deserialize(d)?;
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
            Some(Value::Number(n)) => n
                .to_string()
                .parse()
                .map(Some)
                .map_err(serde::de::Error::custom),
            Some(other) => Err(serde::de::Error::custom(format!("not a decimal: {other}"))),
        }
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
    cum_qty: Decimal,
    order_id: String,
}

impl From<WireFill> for Fill {
    fn from(f: WireFill) -> Self {
        Self {
            key: Fill::key_by_cumulative(&f.order_id, f.cum_qty),
            id: f.id,
            order_id: f.order_id,
            symbol: f.symbol,
            side: f.side,
            qty: f.qty,
            price: f.price,
            at: f.transaction_time,
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
