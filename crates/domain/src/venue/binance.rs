//! The Binance.US spot REST API client (also what talks to the Binance-dialect front of
//! `pulse-fleet paper`). Signed requests carry `X-MBX-APIKEY` and `timestamp`,
//! `recvWindow` and `signature` (hex HMAC-SHA256 of every parameter as sent) in the
//! query string, which Binance accepts for every method; the secret is never logged.
//!
//! What the venue's API shapes here:
//! - orders and trades are listed per symbol: history is read over the symbols the
//!   caller names, one symbol per page;
//! - fills are keyed by trade id ([`Fill::key_by_trade`]): the trade history has no
//!   cumulative quantity;
//! - `exchangeInfo`'s filters are checked before an order is sent (kept per host for
//!   [`INFO_TTL`]), so a misfit is a readable refusal that costs no request;
//! - a `-1021` (timestamp outside `recvWindow`) resynchronises with the server's clock
//!   (kept per host) and retries once: the request was refused unprocessed;
//! - `429` is a rate limit and `418` a ban, both with `Retry-After`;
//!   `X-MBX-USED-WEIGHT-1M` is recorded as a gauge.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use reqwest::{Method, Response, StatusCode};
use rust_decimal::Decimal;
use serde::{Deserialize, de::DeserializeOwned};
use sha2::Sha256;

use super::{
    Call, Fill, OrderRequest, OrderType, Page, Position, Quote, Side, TimeInForce, Venue,
    VenueError, VenueFuture, VenueOrder,
};
use crate::{secrets::Secret, status::OrderStatus};

/// Binance's own limits and defaults.
const RECV_WINDOW_MS: i64 = 5_000;
/// Trades and orders per history page (Binance's most is 1000; its default 500).
pub const HISTORY_PAGE: usize = 500;
/// How long a host's `exchangeInfo` is trusted before it is read again.
pub const INFO_TTL: Duration = Duration::from_secs(600);
/// Binance.US's request-weight limit per minute, and what each call weighs there.
pub const WEIGHT_PER_MINUTE: i32 = 1200;

/// Hex HMAC-SHA256 of `total_params` (the query string as sent, then the body) under
/// the API secret: Binance's `signature`.
pub fn signature(secret: &[u8], total_params: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(total_params.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Binance's error body: `{"code": -2010, "msg": "..."}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    msg: String,
}

/// What a host taught this process: its clock's offset from ours, and its symbols.
#[derive(Default)]
struct HostState {
    clock_offset_ms: i64,
    info: Option<(Instant, Arc<HashMap<String, SymbolInfo>>)>,
    /// Held by the one request that reads `exchangeInfo` again: the process's other
    /// orders wait for its answer instead of each asking (it weighs 20, and lists
    /// every symbol of the exchange).
    info_read: Arc<tokio::sync::Mutex<()>>,
}

/// Hosts at most (base URLs come from configuration; a bound all the same).
const MAX_HOSTS: usize = 64;
static HOSTS: LazyLock<Mutex<HashMap<String, HostState>>> = LazyLock::new(Default::default);

fn with_host<T>(base_url: &str, f: impl FnOnce(&mut HostState) -> T) -> T {
    let mut hosts = HOSTS.lock().expect("binance hosts");
    if hosts.len() >= MAX_HOSTS && !hosts.contains_key(base_url) {
        hosts.clear();
    }
    f(hosts.entry(base_url.to_owned()).or_default())
}

/// One symbol's trading rules from `exchangeInfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct SymbolInfo {
    pub symbol: String,
    pub trading: bool,
    pub base_asset: String,
    pub quote_asset: String,
    /// `PRICE_FILTER` (zero: that bound is off).
    pub min_price: Decimal,
    pub max_price: Decimal,
    pub tick_size: Decimal,
    /// `LOT_SIZE`.
    pub min_qty: Decimal,
    pub max_qty: Decimal,
    pub step_size: Decimal,
    /// `NOTIONAL` or `MIN_NOTIONAL`: the least price x quantity, and whether market
    /// orders are held to it.
    pub min_notional: Decimal,
    pub min_notional_market: bool,
}

impl SymbolInfo {
    /// Why `order` (priced at `price`: its limit, or the book for a market order)
    /// breaks the symbol's filters, if it does: Binance's filter names, readable.
    pub fn misfit(&self, order: &OrderRequest, price: Option<Decimal>) -> Option<String> {
        let s = &self.symbol;
        if !self.trading {
            return Some(format!("{s} is not trading at Binance.US"));
        }
        let q = order.qty;
        if q < self.min_qty || (!self.max_qty.is_zero() && q > self.max_qty) {
            return Some(format!(
                "LOT_SIZE: quantity {} is outside [{}, {}] for {s}",
                q.normalize(),
                self.min_qty.normalize(),
                self.max_qty.normalize()
            ));
        }
        if !self.step_size.is_zero() && !((q - self.min_qty) % self.step_size).is_zero() {
            return Some(format!(
                "LOT_SIZE: quantity {} is not a multiple of the step {} for {s}",
                q.normalize(),
                self.step_size.normalize()
            ));
        }
        if let Some(p) = order.limit_price {
            if (!self.min_price.is_zero() && p < self.min_price)
                || (!self.max_price.is_zero() && p > self.max_price)
            {
                return Some(format!(
                    "PRICE_FILTER: price {} is outside [{}, {}] for {s}",
                    p.normalize(),
                    self.min_price.normalize(),
                    self.max_price.normalize()
                ));
            }
            if !self.tick_size.is_zero() && !((p - self.min_price) % self.tick_size).is_zero() {
                return Some(format!(
                    "PRICE_FILTER: price {} is not a multiple of the tick {} for {s}",
                    p.normalize(),
                    self.tick_size.normalize()
                ));
            }
        }
        let held = order.order_type == OrderType::Limit || self.min_notional_market;
        if let Some(p) = price
            && held
            && let Some(notional) = p.checked_mul(q)
            && notional < self.min_notional
        {
            return Some(format!(
                "NOTIONAL: {} x {} = {} is under the minimum {} for {s}",
                q.normalize(),
                p.normalize(),
                notional.normalize(),
                self.min_notional.normalize()
            ));
        }
        None
    }
}

#[derive(Clone)]
pub struct BinanceClient {
    http: reqwest::Client,
    base_url: String,
    key_id: String,
    secret: Secret,
    /// The asset positions are held against (`USD` at Binance.US): a balance of BTC is
    /// a position in `BTCUSD`.
    quote_asset: String,
    venue: String,
    metrics: pulse_contract::metrics::Recorder,
    /// Quotes the OMS read a moment ago: a market order's notional is checked at
    /// them rather than at a quote asked for again.
    quotes: Option<Arc<super::QuoteCache>>,
}

impl std::fmt::Debug for BinanceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinanceClient")
            .field("base_url", &self.base_url)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn unreadable(what: impl std::fmt::Display) -> VenueError {
    VenueError::Unavailable(format!("unreadable venue answer: {what}"))
}

/// A wait the venue asked for in seconds (`Retry-After`), bounded.
fn retry_after(response: &Response) -> Duration {
    let secs = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(1.0);
    crate::bounds::wait_from_secs(secs, crate::bounds::DEFAULT_MAX_EXTERNAL_WAIT)
        .max(Duration::from_secs(1))
}

/// Binance's error codes, in the OMS's terms.
fn classify(status: StatusCode, body: ErrorBody) -> VenueError {
    match body.code {
        -2010 if body.msg.contains("Duplicate order sent") => VenueError::DuplicateClientOrderId,
        // Unknown order (cancel) and no such order (query). Binance says -2011 also
        // to a cancel of an order that has ended: callers look it up either way.
        -2011 | -2013 => VenueError::NotFound,
        // Bad API key, signature or permissions.
        -1022 | -2014 | -2015 => VenueError::Unauthorized,
        _ if status == StatusCode::UNAUTHORIZED => VenueError::Unauthorized,
        code => VenueError::Rejected {
            reason: format!("{} {code}: {}", status.as_u16(), body.msg),
        },
    }
}

impl BinanceClient {
    /// `base_url` e.g. `https://api.binance.us` or the local paper venue.
    pub fn new(http: reqwest::Client, base_url: &str, key_id: &str, secret: Secret) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            key_id: key_id.to_owned(),
            secret,
            quote_asset: "USD".to_owned(),
            venue: "binance".to_owned(),
            metrics: Default::default(),
            quotes: None,
        }
    }

    /// Reads market orders' prices from `quotes` when they are fresh there.
    pub fn with_quotes(mut self, quotes: Arc<super::QuoteCache>) -> Self {
        self.quotes = Some(quotes);
        self
    }

    /// Counts requests under venue id `venue` in `metrics`.
    pub fn with_metrics(mut self, venue: &str, metrics: pulse_contract::metrics::Recorder) -> Self {
        self.venue = venue.to_owned();
        self.metrics = metrics;
        self
    }

    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + with_host(&self.base_url, |h| h.clock_offset_ms)
    }

    /// Reads the server's time and keeps its offset from ours (half the round trip
    /// counted as the way there).
    pub async fn resync_clock(&self) -> Result<i64, VenueError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Time {
            server_time: i64,
        }
        let sent = Utc::now().timestamp_millis();
        let time: Time = self.public("time", "/api/v3/time", &[]).await?;
        let back = Utc::now().timestamp_millis();
        let offset = time.server_time - (sent + back) / 2;
        with_host(&self.base_url, |h| h.clock_offset_ms = offset);
        Ok(offset)
    }

    /// The query string of a signed request: `params`, then `timestamp` and
    /// `recvWindow`, then the signature of all of it.
    pub fn signed_query(&self, params: &[(&str, String)], timestamp_ms: i64) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in params {
            query.append_pair(k, v);
        }
        query.append_pair("timestamp", &timestamp_ms.to_string());
        query.append_pair("recvWindow", &RECV_WINDOW_MS.to_string());
        let mut query = query.finish();
        let signature = signature(self.secret.expose().as_bytes(), &query);
        query.push_str("&signature=");
        query.push_str(&signature);
        query
    }

    /// A signed request; a `-1021` resynchronises the clock and tries once more.
    async fn signed<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<T, VenueError> {
        let mut resynced = false;
        loop {
            let url = format!(
                "{}{path}?{}",
                self.base_url,
                self.signed_query(params, self.now_ms())
            );
            let request = self
                .http
                .request(method.clone(), url)
                .header("X-MBX-APIKEY", &self.key_id);
            match self.send(endpoint, request).await {
                Err(VenueError::Rejected { reason }) if reason.contains(" -1021:") => {
                    if resynced {
                        // Refused unprocessed twice: nothing exists there, but the
                        // caller may look it up all the same.
                        return Err(VenueError::Unavailable(format!(
                            "the venue refused our clock after a resync: {reason}"
                        )));
                    }
                    resynced = true;
                    self.resync_clock().await?;
                }
                Err(e) => return Err(e),
                Ok(response) => return read(response).await,
            }
        }
    }

    async fn public<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        params: &[(&str, String)],
    ) -> Result<T, VenueError> {
        let request = self
            .http
            .get(format!("{}{path}", self.base_url))
            .query(params);
        read(self.send(endpoint, request).await?).await
    }

    /// Sends one request, counting it, and maps a failure to the OMS's terms.
    async fn send(
        &self,
        endpoint: &'static str,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, VenueError> {
        let result = self.send_unmetered(request).await;
        super::count_request(&self.metrics, &self.venue, endpoint, &result);
        result
    }

    async fn send_unmetered(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, VenueError> {
        let response = request
            .send()
            .await
            .map_err(|e| VenueError::Unavailable(e.without_url().to_string()))?;
        // The key's weight used this minute, by every process: the shared budget
        // keeps under it; past most of it, say so.
        if let Some(weight) = response
            .headers()
            .get("x-mbx-used-weight-1m")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            && weight > WEIGHT_PER_MINUTE * 4 / 5
        {
            tracing::debug!(venue = %self.venue, weight, "Binance request weight near its limit");
        }
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        match status {
            StatusCode::TOO_MANY_REQUESTS => Err(VenueError::RateLimited {
                retry_after: retry_after(&response),
            }),
            StatusCode::IM_A_TEAPOT => Err(VenueError::Banned {
                retry_after: retry_after(&response),
            }),
            s if s.is_server_error() => Err(VenueError::Unavailable(format!(
                "venue answered {s}; the outcome is unknown"
            ))),
            s => {
                let body: ErrorBody = response.json().await.unwrap_or_default();
                Err(classify(s, body))
            }
        }
    }

    /// The host's symbols, from `exchangeInfo` (read again after [`INFO_TTL`]).
    pub async fn symbols(&self) -> Result<Arc<HashMap<String, SymbolInfo>>, VenueError> {
        let cached = || {
            with_host(&self.base_url, |h| {
                h.info
                    .as_ref()
                    .filter(|(at, _)| at.elapsed() < INFO_TTL)
                    .map(|(_, i)| i.clone())
            })
        };
        if let Some(info) = cached() {
            return Ok(info);
        }
        let reading = with_host(&self.base_url, |h| h.info_read.clone());
        let _reading = reading.lock().await;
        // Read meanwhile by the request this one waited for.
        if let Some(info) = cached() {
            return Ok(info);
        }
        let body: WireExchangeInfo = self
            .public("exchange_info", "/api/v3/exchangeInfo", &[])
            .await?;
        let info: Arc<HashMap<String, SymbolInfo>> = Arc::new(
            body.symbols
                .into_iter()
                .map(SymbolInfo::from)
                .map(|s| (s.symbol.clone(), s))
                .collect(),
        );
        with_host(&self.base_url, |h| {
            h.info = Some((Instant::now(), info.clone()))
        });
        Ok(info)
    }

    /// One page of a symbol's history (`myTrades`, `allOrders`), oldest first, and
    /// the token of the next.
    #[allow(clippy::too_many_arguments)]
    async fn history<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
        id_param: &'static str,
        symbols: &[String],
        start: Option<i64>,
        page: Option<&str>,
        id: impl Fn(&T) -> i64,
    ) -> Result<(Vec<T>, Option<String>), VenueError> {
        let cursor = Cursor::parse(page, start)?;
        let Some(symbol) = symbols.get(cursor.symbol()) else {
            return Ok((vec![], None));
        };
        let mut params = vec![
            ("symbol", symbol.clone()),
            ("limit", HISTORY_PAGE.to_string()),
        ];
        params.extend(cursor.params(id_param));
        let items: Vec<T> = self.signed(endpoint, Method::GET, path, &params).await?;
        let last = items.last().map(&id);
        let next = cursor
            .after(items.len(), last, symbols.len(), start, self.now_ms())
            .map(Cursor::token);
        Ok((items, next))
    }

    fn order_params(order: &OrderRequest) -> Result<Vec<(&'static str, String)>, VenueError> {
        let mut p = vec![
            ("symbol", order.symbol.clone()),
            ("side", wire::side(order.side).to_owned()),
            ("quantity", order.qty.normalize().to_string()),
            ("newClientOrderId", order.client_order_id.clone()),
            ("newOrderRespType", "RESULT".to_owned()),
        ];
        match (order.order_type, order.limit_price) {
            (OrderType::Market, _) => p.push(("type", "MARKET".to_owned())),
            (OrderType::Limit, Some(price)) => {
                let tif = match order.time_in_force {
                    // A market open around the clock has no trading day to end: a
                    // day order works until cancelled.
                    TimeInForce::Day | TimeInForce::Gtc => "GTC",
                    TimeInForce::Ioc => "IOC",
                    TimeInForce::Fok => "FOK",
                    other => {
                        return Err(VenueError::Rejected {
                            reason: format!(
                                "Binance.US has no {} orders (no auctions)",
                                other.as_str()
                            ),
                        });
                    }
                };
                p.push(("type", "LIMIT".to_owned()));
                p.push(("timeInForce", tif.to_owned()));
                p.push(("price", price.normalize().to_string()));
            }
            (OrderType::Limit, None) => {
                return Err(VenueError::Rejected {
                    reason: "a limit order needs a price".into(),
                });
            }
        }
        Ok(p)
    }
}

/// A day: Binance answers at most this span of history per request by time.
const DAY_MS: i64 = 86_400_000;

/// Where a history page starts: in `symbols[i]`, the day from a time on, or from an
/// id on (ids only grow). The page token spells it `i:t<ms>` or `i:<id>`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cursor {
    At(usize, i64),
    From(usize, i64),
}

impl Cursor {
    /// The first page of symbol `i`: from `start` (ms) when given, else from the first id.
    fn first(i: usize, start: Option<i64>) -> Self {
        match start {
            Some(ms) => Cursor::At(i, ms),
            None => Cursor::From(i, 0),
        }
    }

    fn parse(token: Option<&str>, start: Option<i64>) -> Result<Self, VenueError> {
        let Some(token) = token else {
            return Ok(Self::first(0, start));
        };
        let bad = || VenueError::Unavailable(format!("bad page token {token:?}"));
        let (i, at) = token.split_once(':').ok_or_else(bad)?;
        let i = i.parse().map_err(|_| bad())?;
        Ok(match at.strip_prefix('t') {
            Some(ms) => Cursor::At(i, ms.parse().map_err(|_| bad())?),
            None => Cursor::From(i, at.parse().map_err(|_| bad())?),
        })
    }

    fn token(self) -> String {
        match self {
            Cursor::At(i, ms) => format!("{i}:t{ms}"),
            Cursor::From(i, id) => format!("{i}:{id}"),
        }
    }

    fn symbol(self) -> usize {
        match self {
            Cursor::At(i, _) | Cursor::From(i, _) => i,
        }
    }

    /// The request's parameters besides the symbol: a day's window, or `id_param`.
    fn params(self, id_param: &'static str) -> Vec<(&'static str, String)> {
        match self {
            Cursor::At(_, ms) => vec![
                ("startTime", ms.to_string()),
                ("endTime", (ms.saturating_add(DAY_MS) - 1).to_string()),
            ],
            Cursor::From(_, id) => vec![(id_param, id.to_string())],
        }
    }

    /// Where the page after this one starts, given what it held (`n` items, the last
    /// with id `last`): more of the symbol from the id after the last (a full page, or
    /// a day's window with days after it), the next day, or the next symbol.
    fn after(
        self,
        n: usize,
        last: Option<i64>,
        symbols: usize,
        start: Option<i64>,
        now_ms: i64,
    ) -> Option<Self> {
        let i = self.symbol();
        let next_symbol = || (i + 1 < symbols).then(|| Self::first(i + 1, start));
        match (self, last) {
            (_, Some(last)) if n >= HISTORY_PAGE => Some(Cursor::From(i, last + 1)),
            (Cursor::At(_, ms), Some(last)) if ms.saturating_add(DAY_MS) < now_ms => {
                Some(Cursor::From(i, last + 1))
            }
            (Cursor::At(_, ms), None) if ms.saturating_add(DAY_MS) < now_ms => {
                Some(Cursor::At(i, ms + DAY_MS))
            }
            _ => next_symbol(),
        }
    }
}

async fn read<T: DeserializeOwned>(response: Response) -> Result<T, VenueError> {
    let bytes = response
        .bytes()
        .await
        .map_err(|e| VenueError::Unavailable(e.without_url().to_string()))?;
    serde_json::from_slice(&bytes).map_err(unreadable)
}

fn millis(ms: i64) -> Result<DateTime<Utc>, VenueError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or_else(|| unreadable(format!("time {ms}")))
}

impl Venue for BinanceClient {
    fn quote_source(&self) -> &str {
        &self.base_url
    }

    fn pages_in_time_order(&self) -> bool {
        false
    }

    fn cost(&self, call: Call) -> i32 {
        // Binance.US's weights of the endpoints each call uses.
        match call {
            Call::CancelOrder => 1,
            Call::GetOrder => 4,
            Call::OpenOrders => 80,
            Call::Fills | Call::Orders => 20,
            Call::Positions => 20,
        }
    }

    fn create_order<'a>(&'a self, order: &'a OrderRequest) -> VenueFuture<'a, VenueOrder> {
        Box::pin(async move {
            let params = Self::order_params(order)?;
            let symbols = self.symbols().await?;
            let info = symbols
                .get(&order.symbol)
                .ok_or_else(|| VenueError::Rejected {
                    reason: format!("Binance.US lists no symbol {}", order.symbol),
                })?;
            let cached = || {
                let quotes = self.quotes.as_ref()?;
                quotes.get(&self.base_url, &order.symbol).flatten()?.high()
            };
            let price = match order.limit_price {
                Some(p) => Some(p),
                None if info.min_notional_market => match cached() {
                    Some(p) => Some(p),
                    None => self.latest_quote(&order.symbol).await?.high(),
                },
                None => None,
            };
            if let Some(reason) = info.misfit(order, price) {
                return Err(VenueError::Rejected { reason });
            }
            let placed: wire::Order = self
                .signed("create_order", Method::POST, "/api/v3/order", &params)
                .await?;
            placed.into_venue()
        })
    }

    fn get_order_by_client_id<'a>(
        &'a self,
        symbol: &'a str,
        client_order_id: &'a str,
    ) -> VenueFuture<'a, VenueOrder> {
        Box::pin(async move {
            let params = [
                ("symbol", symbol.to_owned()),
                ("origClientOrderId", client_order_id.to_owned()),
            ];
            let found: wire::Order = self
                .signed("order_by_client_id", Method::GET, "/api/v3/order", &params)
                .await?;
            found.into_venue()
        })
    }

    fn get_order<'a>(&'a self, symbol: &'a str, id: &'a str) -> VenueFuture<'a, VenueOrder> {
        Box::pin(async move {
            let params = [("symbol", symbol.to_owned()), ("orderId", id.to_owned())];
            let found: wire::Order = self
                .signed("get_order", Method::GET, "/api/v3/order", &params)
                .await?;
            found.into_venue()
        })
    }

    fn cancel_order<'a>(&'a self, symbol: &'a str, id: &'a str) -> VenueFuture<'a, ()> {
        Box::pin(async move {
            let params = [("symbol", symbol.to_owned()), ("orderId", id.to_owned())];
            let _: serde_json::Value = self
                .signed("cancel_order", Method::DELETE, "/api/v3/order", &params)
                .await?;
            Ok(())
        })
    }

    fn list_open_orders(&self) -> VenueFuture<'_, Vec<VenueOrder>> {
        Box::pin(async move {
            let open: Vec<wire::Order> = self
                .signed("open_orders", Method::GET, "/api/v3/openOrders", &[])
                .await?;
            open.into_iter().map(wire::Order::into_venue).collect()
        })
    }

    fn latest_quote<'a>(&'a self, symbol: &'a str) -> VenueFuture<'a, Quote> {
        Box::pin(async move {
            let book: wire::BookTicker = self
                .public(
                    "latest_quote",
                    "/api/v3/ticker/bookTicker",
                    &[("symbol", symbol.to_owned())],
                )
                .await?;
            let quote = Quote {
                ask: wire::price(&book.ask_price),
                bid: wire::price(&book.bid_price),
            };
            if quote.high().is_none() {
                return Err(VenueError::NotFound);
            }
            Ok(quote)
        })
    }

    fn fills<'a>(
        &'a self,
        symbols: &'a [String],
        since: Option<DateTime<Utc>>,
        page: Option<&'a str>,
    ) -> VenueFuture<'a, Page<Fill>> {
        Box::pin(async move {
            let start = since.map(|s| s.timestamp_millis());
            let (trades, next) = self
                .history::<wire::Trade>(
                    "fills",
                    "/api/v3/myTrades",
                    "fromId",
                    symbols,
                    start,
                    page,
                    |t| t.id,
                )
                .await?;
            let fills = trades
                .into_iter()
                .map(wire::Trade::into_fill)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page { items: fills, next })
        })
    }

    fn orders_after<'a>(
        &'a self,
        symbols: &'a [String],
        after: DateTime<Utc>,
        page: Option<&'a str>,
    ) -> VenueFuture<'a, Page<VenueOrder>> {
        Box::pin(async move {
            let start = Some(after.timestamp_millis());
            let (orders, next) = self
                .history::<wire::Order>(
                    "orders_after",
                    "/api/v3/allOrders",
                    "orderId",
                    symbols,
                    start,
                    page,
                    |o| o.order_id,
                )
                .await?;
            let orders = orders
                .into_iter()
                .map(wire::Order::into_venue)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page {
                items: orders,
                next,
            })
        })
    }

    fn stream_updates(&self, updates: super::UpdateSink) -> VenueFuture<'_, ()> {
        Box::pin(async move {
            // Followed by polling (the order sync), not by the user-data stream: see
            // ARCHITECTURE.md. Waits until the listener goes away, quietly.
            updates.closed().await;
            Ok(())
        })
    }

    fn positions(&self) -> VenueFuture<'_, Vec<Position>> {
        Box::pin(async move {
            let account: wire::Account = self
                .signed("positions", Method::GET, "/api/v3/account", &[])
                .await?;
            let symbols = self.symbols().await?;
            // Spot holdings: each asset held, as a position in its pair against the
            // quote asset (a balance of an asset with no such pair is not a position).
            let pairs: HashMap<&str, &str> = symbols
                .values()
                .filter(|s| s.quote_asset == self.quote_asset)
                .map(|s| (s.base_asset.as_str(), s.symbol.as_str()))
                .collect();
            let mut held = vec![];
            for b in account.balances {
                if b.free.is_sign_negative() || b.locked.is_sign_negative() {
                    return Err(unreadable(format!("a negative balance of {}", b.asset)));
                }
                let qty = b
                    .free
                    .checked_add(b.locked)
                    .ok_or_else(|| unreadable("balance"))?;
                if qty.is_zero() {
                    continue;
                }
                if let Some(symbol) = pairs.get(b.asset.as_str()) {
                    held.push(Position {
                        symbol: (*symbol).to_owned(),
                        qty,
                        avg_entry_price: Decimal::ZERO,
                    });
                }
            }
            Ok(held)
        })
    }
}

#[derive(Deserialize)]
struct WireExchangeInfo {
    symbols: Vec<wire::Symbol>,
}

impl From<wire::Symbol> for SymbolInfo {
    fn from(s: wire::Symbol) -> Self {
        let mut info = SymbolInfo {
            trading: s.status == "TRADING",
            symbol: s.symbol,
            base_asset: s.base_asset,
            quote_asset: s.quote_asset,
            min_price: Decimal::ZERO,
            max_price: Decimal::ZERO,
            tick_size: Decimal::ZERO,
            min_qty: Decimal::ZERO,
            max_qty: Decimal::ZERO,
            step_size: Decimal::ZERO,
            min_notional: Decimal::ZERO,
            min_notional_market: false,
        };
        let d = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .and_then(|s| s.parse::<Decimal>().ok())
                .filter(|d| !d.is_sign_negative())
                .unwrap_or_default()
        };
        let flag = |v: &serde_json::Value, k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        for f in &s.filters {
            match f.get("filterType").and_then(serde_json::Value::as_str) {
                Some("PRICE_FILTER") => {
                    info.min_price = d(f, "minPrice");
                    info.max_price = d(f, "maxPrice");
                    info.tick_size = d(f, "tickSize");
                }
                Some("LOT_SIZE") => {
                    info.min_qty = d(f, "minQty");
                    info.max_qty = d(f, "maxQty");
                    info.step_size = d(f, "stepSize");
                }
                Some("NOTIONAL") => {
                    info.min_notional = d(f, "minNotional");
                    info.min_notional_market = flag(f, "applyMinToMarket");
                }
                Some("MIN_NOTIONAL") => {
                    info.min_notional = d(f, "minNotional");
                    info.min_notional_market = flag(f, "applyToMarket");
                }
                _ => {}
            }
        }
        info
    }
}

/// Binance's JSON, as the fleet reads it (decimals are strings).
pub mod wire {
    use super::*;

    pub fn side(side: Side) -> &'static str {
        match side {
            Side::Buy => "BUY",
            Side::Sell => "SELL",
        }
    }

    /// A book price as sent: usable only when positive and believable.
    pub fn price(raw: &str) -> Option<Decimal> {
        let p: Decimal = raw.parse().ok()?;
        (p > Decimal::ZERO && p <= super::super::MAX_TRUSTED_PRICE).then_some(p)
    }

    /// Binance's order statuses, mapped to ours.
    pub fn status(s: &str) -> OrderStatus {
        match s {
            "PARTIALLY_FILLED" => OrderStatus::PartiallyFilled,
            "FILLED" => OrderStatus::Filled,
            "CANCELED" => OrderStatus::Cancelled,
            "REJECTED" => OrderStatus::Rejected,
            "EXPIRED" | "EXPIRED_IN_MATCH" => OrderStatus::Expired,
            // NEW, PENDING_NEW, PENDING_CANCEL (still working until it is done).
            _ => OrderStatus::Accepted,
        }
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Symbol {
        pub symbol: String,
        pub status: String,
        pub base_asset: String,
        pub quote_asset: String,
        #[serde(default)]
        pub filters: Vec<serde_json::Value>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct BookTicker {
        pub bid_price: String,
        pub ask_price: String,
    }

    /// An order (query, cancel, `RESULT` of a new order, open and all orders).
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Order {
        pub symbol: String,
        pub order_id: i64,
        pub client_order_id: String,
        #[serde(with = "rust_decimal::serde::str")]
        pub price: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        pub orig_qty: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        pub executed_qty: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        pub cummulative_quote_qty: Decimal,
        pub status: String,
        #[serde(default)]
        pub time_in_force: String,
        #[serde(rename = "type")]
        pub order_type: String,
        pub side: String,
        /// Creation; a new order's answer has `transactTime` instead.
        #[serde(default)]
        pub time: Option<i64>,
        #[serde(default)]
        pub transact_time: Option<i64>,
        #[serde(default)]
        pub update_time: Option<i64>,
    }

    pub(super) fn side_of(s: &str) -> Result<Side, VenueError> {
        match s {
            "BUY" => Ok(Side::Buy),
            "SELL" => Ok(Side::Sell),
            other => Err(unreadable(format!("side {other:?}"))),
        }
    }

    impl Order {
        pub fn into_venue(self) -> Result<VenueOrder, VenueError> {
            let Order {
                symbol,
                order_id,
                client_order_id,
                price,
                orig_qty,
                executed_qty,
                cummulative_quote_qty,
                status,
                time_in_force,
                order_type,
                side,
                time,
                transact_time,
                update_time,
            } = self;
            let time = time
                .or(transact_time)
                .ok_or_else(|| unreadable(format!("order {order_id} without a time")))?;
            if orig_qty <= Decimal::ZERO
                || executed_qty.is_sign_negative()
                || executed_qty > orig_qty
                || cummulative_quote_qty.is_sign_negative()
            {
                return Err(unreadable(format!(
                    "order {order_id}: quantity {orig_qty}, executed {executed_qty}"
                )));
            }
            let limit = order_type != "MARKET" && price > Decimal::ZERO;
            let filled_avg_price = (executed_qty > Decimal::ZERO)
                .then(|| cummulative_quote_qty.checked_div(executed_qty))
                .flatten()
                .map(|p| p.round_dp(8).normalize());
            Ok(VenueOrder {
                id: order_id.to_string(),
                client_order_id,
                symbol,
                qty: orig_qty,
                filled_qty: executed_qty,
                filled_avg_price,
                side: side_of(&side)?,
                order_type: if limit {
                    OrderType::Limit
                } else {
                    OrderType::Market
                },
                time_in_force: match time_in_force.as_str() {
                    "IOC" => TimeInForce::Ioc,
                    "FOK" => TimeInForce::Fok,
                    _ => TimeInForce::Gtc,
                },
                limit_price: limit.then_some(price),
                status: self::status(&status),
                created_at: millis(time)?,
                updated_at: millis(update_time.unwrap_or(time))?,
            })
        }
    }

    /// A trade of the account (`myTrades`).
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Trade {
        pub symbol: String,
        pub id: i64,
        pub order_id: i64,
        #[serde(with = "rust_decimal::serde::str")]
        pub price: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        pub qty: Decimal,
        pub time: i64,
        pub is_buyer: bool,
    }

    impl Trade {
        pub fn into_fill(self) -> Result<Fill, VenueError> {
            Fill {
                key: Fill::key_by_trade(&self.symbol, self.id),
                id: self.id.to_string(),
                order_id: self.order_id.to_string(),
                side: if self.is_buyer { Side::Buy } else { Side::Sell },
                qty: self.qty,
                price: self.price,
                at: millis(self.time)?,
                symbol: self.symbol,
            }
            .checked()
        }
    }

    #[derive(Deserialize)]
    pub struct Account {
        pub balances: Vec<Balance>,
    }

    #[derive(Deserialize)]
    pub struct Balance {
        pub asset: String,
        #[serde(with = "rust_decimal::serde::str")]
        pub free: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        pub locked: Decimal,
    }
}
