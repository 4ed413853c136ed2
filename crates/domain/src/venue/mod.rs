//! Venues: where orders go. The OMS speaks to them through [`Venue`]; [`alpaca`] is
//! the Alpaca Trading API (v2), which `pulse-fleet paper` also speaks, so pointing
//! the fleet at Alpaca's own paper endpoint is a configuration change only.
//!
//! Every call's outcome is classified for the OMS: accepted, definitively rejected
//! (the venue says no, and nothing exists there), not found, rate limited, or
//! **unknown** (timeout, lost connection, 5xx after sending): the order may or may
//! not exist, and the OMS must look it up by client order id, never resend blindly.

pub mod alpaca;
pub mod binance;
mod quotes;

pub use quotes::QuoteCache;

use std::{future::Future, pin::Pin, time::Duration};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::status::OrderStatus;

/// An order to send (each client writes it in its venue's dialect).
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRequest {
    pub symbol: String,
    pub qty: Decimal,
    pub side: Side,
    pub order_type: OrderType,
    pub time_in_force: TimeInForce,
    pub limit_price: Option<Decimal>,
    pub client_order_id: String,
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

/// How long an order stays working.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeInForce {
    /// Until the end of the trading day.
    Day,
    /// Good till cancelled.
    Gtc,
    /// Immediate or cancel: what does not fill at once is cancelled.
    Ioc,
    /// Fill or kill: filled whole at once, or cancelled.
    Fok,
    /// At the market's opening auction.
    Opg,
    /// At the market's closing auction.
    Cls,
}

impl TimeInForce {
    pub const ALL: [TimeInForce; 6] = [
        TimeInForce::Day,
        TimeInForce::Gtc,
        TimeInForce::Ioc,
        TimeInForce::Fok,
        TimeInForce::Opg,
        TimeInForce::Cls,
    ];

    /// The spelling of intents' legs and of the `orders` table.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeInForce::Day => "day",
            TimeInForce::Gtc => "gtc",
            TimeInForce::Ioc => "ioc",
            TimeInForce::Fok => "fok",
            TimeInForce::Opg => "opg",
            TimeInForce::Cls => "cls",
        }
    }
}

crate::text_column!(TimeInForce, "time_in_force");

/// An order as the venue reports it, in the OMS's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VenueOrder {
    /// The venue's id of the order.
    pub id: String,
    pub client_order_id: String,
    pub symbol: String,
    pub qty: Decimal,
    pub filled_qty: Decimal,
    pub filled_avg_price: Option<Decimal>,
    pub side: Side,
    pub order_type: OrderType,
    pub time_in_force: TimeInForce,
    pub limit_price: Option<Decimal>,
    pub status: OrderStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl VenueOrder {
    /// No further fills can come.
    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }
}

/// What an account holds of one symbol at the venue.
#[derive(Debug, Clone, PartialEq)]
pub struct Position {
    pub symbol: String,
    /// Signed: negative is short.
    pub qty: Decimal,
    pub avg_entry_price: Decimal,
}

/// One fill of an order, as the venue reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fill {
    /// The venue's own id of the fill (an activity id, a trade id): kept for people;
    /// the dedupe key is [`Fill::key`].
    pub id: String,
    /// The venue's id of the order filled.
    pub order_id: String,
    pub symbol: String,
    pub side: Side,
    pub qty: Decimal,
    pub price: Decimal,
    pub at: DateTime<Utc>,
    /// The fill's key whatever path delivered it (stream or history), set by the
    /// client: see [`Fill::key_by_cumulative`] and [`Fill::key_by_trade`].
    pub key: String,
}

impl Fill {
    /// The fill's key in `fills.venue_fill_id`: one fill, one key, whichever path
    /// (stream, history, reconciliation) reported it.
    pub fn key(&self) -> String {
        self.key.clone()
    }

    /// Alpaca's key: the venue's order id and the order's cumulative filled quantity
    /// after the fill. Alpaca's stream names a fill by an `execution_id` and its FILL
    /// activities by an activity id, two ids for one fill; both carry the order and
    /// `cum_qty` (the stream in the order's `filled_qty`), and an order's cumulative
    /// quantity only grows, so this names one fill either way.
    pub fn key_by_cumulative(order_id: &str, cum_qty: Decimal) -> String {
        format!("{order_id}:{}", cum_qty.normalize())
    }

    /// The fill, if believable: a positive quantity at a positive price within
    /// [`MAX_TRUSTED_PRICE`]. Anything else is an answer the venue does not send.
    pub fn checked(self) -> Result<Fill, VenueError> {
        if self.qty > Decimal::ZERO && self.price > Decimal::ZERO && self.price <= MAX_TRUSTED_PRICE
        {
            return Ok(self);
        }
        Err(VenueError::Unavailable(format!(
            "unreadable venue answer: fill {} of {} at {}",
            self.id, self.qty, self.price
        )))
    }

    /// Binance's key: its trade id, which its trade history (`id`) and its user-data
    /// stream (`t`) both report, unique per symbol. (Its history has no cumulative
    /// quantity to key by.)
    pub fn key_by_trade(symbol: &str, trade_id: i64) -> String {
        format!("{symbol}:t{trade_id}")
    }
}

/// One event of a venue's order-update stream, normalised: what happened, the order
/// as it stands after it, and the fill when it is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeUpdate {
    pub event: UpdateKind,
    pub order: VenueOrder,
    pub fill: Option<Fill>,
}

impl TradeUpdate {
    /// The event's key in the inbox: a fill by [`Fill::key`], anything else by its
    /// kind and order (a status is reached once).
    pub fn key(&self) -> String {
        match &self.fill {
            Some(fill) => format!("fill:{}", fill.key()),
            None => format!("{:?}:{}", self.event, self.order.id).to_lowercase(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateKind {
    /// Accepted and working.
    New,
    Fill,
    PartialFill,
    Cancelled,
    Expired,
    Rejected,
    /// Anything else the venue says (replace, pending states): the order is applied.
    Other,
}

/// The venue's latest quote of a symbol, as far as it can be trusted: both sides
/// positive and within [`MAX_TRUSTED_PRICE`] (a side the venue leaves empty, as
/// outside market hours, is `None`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quote {
    pub ask: Option<Decimal>,
    pub bid: Option<Decimal>,
}

/// Prices above this are not believed, whoever says them.
pub const MAX_TRUSTED_PRICE: Decimal = Decimal::from_parts(100_000_000, 0, 0, false, 0);

impl Quote {
    /// A side of a quote as sent (Alpaca sends JSON numbers): usable only when
    /// positive and believable.
    pub fn side(raw: Option<&serde_json::Value>) -> Option<Decimal> {
        let number = raw?.as_number()?;
        let price: Decimal = number.to_string().parse().ok()?;
        (price > Decimal::ZERO && price <= MAX_TRUSTED_PRICE).then_some(price)
    }

    /// The higher side: what risk checks price a leg at, before the collar.
    pub fn high(&self) -> Option<Decimal> {
        match (self.ask, self.bid) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What went wrong with a venue request, in the OMS's terms. Each client maps its
/// venue's statuses, codes and texts here (Alpaca's in `alpaca.rs`); nothing above the
/// clients reads a venue's own words to decide.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VenueError {
    /// The venue refused the request and nothing exists there; `reason` is its own
    /// account of why, for people.
    #[error("venue rejected the request: {reason}")]
    Rejected { reason: String },
    /// The venue already has an order with this client order id: an earlier
    /// attempt's order, to be looked up and adopted.
    #[error("the venue already has an order with this client order id")]
    DuplicateClientOrderId,
    /// The order can no longer be cancelled (filled, or already done).
    #[error("the order is not cancelable")]
    NotCancelable,
    #[error("not found at the venue")]
    NotFound,
    /// Too many requests: try again after `retry_after`.
    #[error("venue rate limit hit; retry after {retry_after:?}")]
    RateLimited { retry_after: Duration },
    /// The venue banned this client for sending on through its rate limits (Binance's
    /// 418): no request of the account may go until `retry_after` has passed.
    #[error("venue banned our requests for {retry_after:?}")]
    Banned { retry_after: Duration },
    /// Credentials refused.
    #[error("venue refused the credentials")]
    Unauthorized,
    /// The venue could not be reached or failed (timeout, lost connection, 5xx, an
    /// unreadable answer): the request may or may not have taken effect.
    #[error("outcome unknown: {0}")]
    Unavailable(String),
}

impl VenueError {
    /// How long the venue refuses requests for (its rate limit or a ban): the request
    /// was refused unprocessed and may go again after this. `None` for anything else.
    pub fn wait(&self) -> Option<Duration> {
        match self {
            VenueError::RateLimited { retry_after } | VenueError::Banned { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }
}

/// Counts one request of a client to `venue` at `endpoint` in `metrics`, and its
/// failure by kind: rate limits and bans apart from the venue's failures (a refusal
/// of the request itself is the venue's answer, not its failure).
pub(crate) fn count_request<T>(
    metrics: &pulse_contract::metrics::Recorder,
    venue: &str,
    endpoint: &'static str,
    result: &Result<T, VenueError>,
) {
    metrics.add("venue_requests", venue, endpoint, 1.0);
    match result {
        Err(VenueError::RateLimited { .. } | VenueError::Banned { .. }) => {
            metrics.add("venue_rate_limited", venue, endpoint, 1.0)
        }
        Err(VenueError::Unavailable(_) | VenueError::Unauthorized) => {
            metrics.add("venue_errors", venue, endpoint, 1.0)
        }
        _ => {}
    }
}

/// Where and how to reach one account at a venue.
pub struct Connection<'a> {
    pub http: reqwest::Client,
    /// The trading API's base URL.
    pub base_url: &'a str,
    /// Market data's base URL (the trading URL where the venue has no other host).
    pub data_url: &'a str,
    pub key_id: &'a str,
    pub secret: crate::secrets::Secret,
    /// Where the client counts its requests, errors and rate limits.
    pub metrics: pulse_contract::metrics::Recorder,
    /// The process's latest quotes (what the OMS priced legs at a moment ago).
    pub quotes: std::sync::Arc<QuoteCache>,
}

/// The client of venue `venue_id` (the `venues` row), chosen by the dialect the venue
/// speaks: the one place that knows which venues there are. `paper` is the local
/// simulator of Alpaca's dialect; `binance` is Binance.US (or the paper venue's
/// Binance-dialect front).
pub fn connect(venue_id: &str, to: Connection<'_>) -> Result<std::sync::Arc<dyn Venue>, String> {
    match venue_id {
        "alpaca" | "paper" => Ok(std::sync::Arc::new(
            alpaca::AlpacaClient::new(to.http, to.base_url, to.key_id, to.secret)
                .with_data_url(to.data_url)
                .with_metrics(venue_id, to.metrics),
        )),
        "binance" => Ok(std::sync::Arc::new(
            binance::BinanceClient::new(to.http, to.base_url, to.key_id, to.secret)
                .with_metrics(venue_id, to.metrics)
                .with_quotes(to.quotes),
        )),
        other => Err(format!("no client speaks the dialect of venue {other}")),
    }
}

/// The per-minute request budget of an account at venue `venue_id`, in the unit its
/// client's [`Venue::cost`] counts: Binance's request weight; `None` for venues that
/// count requests (the fleet's configured budget, Alpaca's 200).
pub fn budget_per_minute(venue_id: &str) -> Option<i32> {
    match venue_id {
        "binance" => Some(binance::WEIGHT_PER_MINUTE),
        _ => None,
    }
}

/// The most fills one page of Alpaca's fill activities holds (its most).
pub const FILL_PAGE: usize = 100;
/// The most orders one page of Alpaca's order list holds (its most).
pub const ORDER_PAGE: usize = 500;

/// Where a stream listener puts the updates it reads (and learns of being connected).
pub type UpdateSink = tokio::sync::mpsc::Sender<StreamSignal>;

/// What a stream tells its listener.
#[derive(Debug, Clone)]
pub enum StreamSignal {
    /// Authenticated and listening: updates from here on arrive (earlier ones are
    /// for the sync to catch up on).
    Connected,
    Update(Box<TradeUpdate>),
}

pub type VenueFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, VenueError>> + Send + 'a>>;

/// One page of an account's history at a venue, and where the next page starts
/// (`None`: this was the last). The token is the client's own; callers hand it back
/// unread.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Page<T> {
    pub fn last(items: Vec<T>) -> Self {
        Self { items, next: None }
    }
}

/// What a request costs against the account's shared budget (Alpaca counts requests,
/// Binance weighs them): the calls of [`Venue`] that the sync and reconciliation take
/// budget for, by name. (The OMS counts one per order it sends or looks up: a new
/// order weighs 1 at Binance too.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    GetOrder,
    CancelOrder,
    OpenOrders,
    Fills,
    Orders,
    Positions,
}

/// What the OMS and reconciliation need from a venue.
///
/// Calls about one order name its symbol, and history is read for the symbols the
/// platform knows the account trades (`symbols`, venue spelling): Binance keys its
/// orders and trades by symbol and has no account-wide list of them; Alpaca ignores
/// both.
pub trait Venue: Send + Sync {
    /// Where this client's quotes come from (the market-data host): what the quote
    /// cache keys them under, so every client of one host shares its quotes.
    fn quote_source(&self) -> &str;
    /// What `call` costs against the account's per-minute budget (in the unit of
    /// [`budget_per_minute`]).
    fn cost(&self, _call: Call) -> i32 {
        1
    }
    /// Whether [`Venue::fills`] and [`Venue::orders_after`] page through the account's
    /// whole history oldest first (Alpaca), so that a list cut short still ends at a
    /// point everything before has been read; not so when pages go symbol by symbol
    /// (Binance).
    fn pages_in_time_order(&self) -> bool {
        true
    }
    fn create_order<'a>(&'a self, order: &'a OrderRequest) -> VenueFuture<'a, VenueOrder>;
    fn get_order_by_client_id<'a>(
        &'a self,
        symbol: &'a str,
        client_order_id: &'a str,
    ) -> VenueFuture<'a, VenueOrder>;
    fn get_order<'a>(&'a self, symbol: &'a str, id: &'a str) -> VenueFuture<'a, VenueOrder>;
    fn cancel_order<'a>(&'a self, symbol: &'a str, id: &'a str) -> VenueFuture<'a, ()>;
    fn list_open_orders(&self) -> VenueFuture<'_, Vec<VenueOrder>>;
    /// The latest quote (market data); [`VenueError::NotFound`] when it has none.
    fn latest_quote<'a>(&'a self, symbol: &'a str) -> VenueFuture<'a, Quote>;
    /// One page of fills, oldest first (per symbol where the venue lists them per
    /// symbol): those after `since` when given, from `page` (a [`Page::next`]) on.
    fn fills<'a>(
        &'a self,
        symbols: &'a [String],
        since: Option<DateTime<Utc>>,
        page: Option<&'a str>,
    ) -> VenueFuture<'a, Page<Fill>>;
    /// One page of orders created after `after`, open or closed, oldest first (per
    /// symbol where the venue lists them per symbol): what a sync learns the fate of
    /// the account's working orders from.
    fn orders_after<'a>(
        &'a self,
        symbols: &'a [String],
        after: DateTime<Utc>,
        page: Option<&'a str>,
    ) -> VenueFuture<'a, Page<VenueOrder>>;
    /// Follows the account's order updates until the connection ends, sending each to
    /// `updates`; returns why it ended. `Ok` only when `updates` was closed.
    fn stream_updates(&self, updates: UpdateSink) -> VenueFuture<'_, ()>;
    /// Every position the account holds (none for a symbol it holds nothing of).
    fn positions(&self) -> VenueFuture<'_, Vec<Position>>;
}
