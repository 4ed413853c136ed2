//! The paper venue's second dialect: Binance.US's spot REST API (`/api/v3/...`) on the
//! same book and matching engine as the Alpaca dialect, so both venues of a
//! cross-venue intent can be local. Written from Binance's documentation, not from the
//! fleet's client.
//!
//! - Signed endpoints take their parameters in the query string, the form body, or
//!   both; `signature` is the hex HMAC-SHA256 of the query string concatenated with the
//!   body (without the signature itself), under the key's secret; `timestamp` must be
//!   within `recvWindow` (default 5000, at most 60000) of the venue's clock, which may
//!   run ahead ([`PaperVenue::set_clock_offset`]): else `-1021`.
//! - Request weight per key per minute (`X-MBX-USED-WEIGHT-1M` on every answer); past
//!   the limit `429` with `Retry-After`; a key that sends again before that wait is
//!   over is banned: `418` with `Retry-After` ([`PaperVenue::ban`] on cue).
//! - Errors `{"code", "msg"}`: -1102 (a mandatory parameter), -1121 (symbol), -1013
//!   (filters), -2010 (rejected: "Duplicate order sent.", insufficient balance, symbols
//!   configured as rejected), -2011 (cancel of an unknown or ended order), -2013 (no
//!   such order), -1022 (signature), -2015 (API key); 5xx with the outcome unknown.
//! - Spot: a sell needs the base asset (fills and deposits, less open sells); quote
//!   balances (USD) are not checked. Fills come from the engine, as for Alpaca; this
//!   dialect has no user-data stream (the fleet follows Binance accounts by polling).

// Helpers refuse with the answer itself (an axum `Response`, 128 bytes): a
// simulator's refusal path, where boxing buys nothing.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;

use axum::{
    Router,
    extract::{RawQuery, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use chrono::Utc;
use hmac::{Hmac, Mac};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{Book, Order, OrderType, PaperVenue, Side, holdings};

/// Quote asset of every pair here, as at Binance.US.
const QUOTE: &str = "USD";
/// Requests a key may send through its 429's wait before it is banned.
const IGNORED_429S: u32 = 3;
/// A day: the longest window of a history request by time.
const DAY_MS: i64 = 86_400_000;

/// One pair's filters (the exchangeInfo this venue serves).
#[derive(Debug, Clone)]
pub struct Pair {
    pub symbol: String,
    pub base: String,
    pub tick: Decimal,
    pub step: Decimal,
    pub min_qty: Decimal,
    pub min_notional: Decimal,
}

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

impl Pair {
    fn new(base: &str, tick: &str, step: &str, min_notional: &str) -> Self {
        Pair {
            symbol: format!("{base}{QUOTE}"),
            base: base.to_owned(),
            tick: d(tick),
            step: d(step),
            min_qty: d(step),
            min_notional: d(min_notional),
        }
    }
}

/// Binance.US's filters for the pairs served (checked 2026-11), then the venue's
/// `binance_extra_pairs` made-up ones (`X0USD`, `X1USD`, ...: benchmarks trade each
/// intent on a symbol of its own).
pub fn pairs(extra: usize) -> Vec<Pair> {
    let mut all = vec![
        Pair::new("BTC", "0.01", "0.00001", "10"),
        Pair::new("ETH", "0.01", "0.0001", "10"),
        Pair::new("SOL", "0.01", "0.001", "10"),
    ];
    all.extend((0..extra).map(|n| Pair::new(&format!("X{n}"), "0.01", "0.00001", "10")));
    all
}

/// What this dialect keeps beside the book.
#[derive(Default)]
pub(super) struct BinanceState {
    /// API key -> secret.
    secrets: HashMap<String, String>,
    /// The venue's clock ahead of real time, in ms.
    clock_offset_ms: i64,
    /// API key -> (weight used, minute as unix seconds / 60).
    weight: HashMap<String, (u32, i64)>,
    /// API key -> until when (unix ms) it was told to wait after a 429, and how many
    /// requests it sent in that wait.
    told_to_wait: HashMap<String, (i64, u32)>,
    /// API key -> until when (unix ms) it is banned.
    banned: HashMap<String, i64>,
    next_order_id: i64,
    /// API key -> requests that reached the venue (refused or not).
    requests: HashMap<String, u64>,
}

impl PaperVenue {
    /// Registers an API key and its secret (Binance dialect).
    pub fn register_key(&self, key: &str, secret: &str) {
        self.binance()
            .secrets
            .insert(key.to_owned(), secret.to_owned());
    }

    /// Sets how far the venue's clock runs ahead of real time (negative: behind).
    pub fn set_clock_offset(&self, ms: i64) {
        self.binance().clock_offset_ms = ms;
    }

    /// Bans `key` for `secs`: every request answers 418 until then.
    pub fn ban(&self, key: &str, secs: i64) {
        let until = Utc::now().timestamp_millis() + secs * 1000;
        self.binance().banned.insert(key.to_owned(), until);
    }

    /// Requests from `key` that reached the venue, refused or not (Binance dialect).
    pub fn binance_requests(&self, key: &str) -> u64 {
        self.binance().requests.get(key).copied().unwrap_or(0)
    }

    /// Gives `key` some of a base asset (a deposit): no order, no fill.
    pub fn deposit(&self, key: &str, asset: &str, qty: Decimal) {
        self.adjust_position(key, &format!("{asset}{QUOTE}"), qty);
    }

    fn binance(&self) -> std::sync::MutexGuard<'_, BinanceState> {
        self.binance.lock().expect("binance state")
    }

    fn server_ms(&self) -> i64 {
        Utc::now().timestamp_millis() + self.binance().clock_offset_ms
    }

    pub(super) fn binance_router(&self) -> Router<PaperVenue> {
        Router::new()
            .route("/api/v3/time", get(time))
            .route("/api/v3/exchangeInfo", get(exchange_info))
            .route("/api/v3/ticker/bookTicker", get(book_ticker))
            .route(
                "/api/v3/order",
                get(query_order).post(new_order).delete(cancel_order),
            )
            .route("/api/v3/openOrders", get(open_orders))
            .route("/api/v3/allOrders", get(all_orders))
            .route("/api/v3/myTrades", get(my_trades))
            .route("/api/v3/account", get(account))
    }

    /// Weight, bans and faults: what every request goes through. The key is `None` for
    /// public endpoints (counted under the caller's address at Binance; here under "").
    async fn weigh(&self, key: Option<&str>, weight: u32) -> Result<u32, Response> {
        if self.options.latency_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(self.options.latency_ms)).await;
        }
        let who = key.unwrap_or("").to_owned();
        let now = Utc::now().timestamp_millis();
        let limit = self.options.binance_weight_per_minute;
        let mut state = self.binance();
        *state.requests.entry(who.clone()).or_default() += 1;
        if let Some(until) = state.banned.get(&who).copied().filter(|u| *u > now) {
            return Err(with_retry(
                StatusCode::IM_A_TEAPOT,
                -1003,
                &format!("Way too many requests; IP banned until {until}."),
                until - now,
            ));
        }
        if let Some((until, ignored)) = state.told_to_wait.get_mut(&who).filter(|(u, _)| *u > now) {
            // Sending on through 429s: a few more are refused, then the key is banned,
            // as Binance does to who ignores them.
            *ignored += 1;
            let wait = *until - now;
            if *ignored > IGNORED_429S {
                let until = now + self.options.binance_ban_secs as i64 * 1000;
                state.banned.insert(who, until);
                return Err(with_retry(
                    StatusCode::IM_A_TEAPOT,
                    -1003,
                    "Way too many requests; banned.",
                    until - now,
                ));
            }
            return Err(with_retry(
                StatusCode::TOO_MANY_REQUESTS,
                -1003,
                "Too much request weight used.",
                wait,
            ));
        }
        let minute = now / 60_000;
        let entry = state.weight.entry(who.clone()).or_insert((0, minute));
        if entry.1 != minute {
            *entry = (0, minute);
        }
        entry.0 += weight;
        let used = entry.0;
        if used > limit {
            let wait = (minute + 1) * 60_000 - now;
            state.told_to_wait.insert(who, (now + wait, 0));
            let mut r = with_retry(
                StatusCode::TOO_MANY_REQUESTS,
                -1003,
                "Too much request weight used; please use WebSocket Streams for live updates to avoid polling the API.",
                wait,
            );
            r.headers_mut()
                .insert("x-mbx-used-weight-1m", HeaderValue::from(used));
            return Err(r);
        }
        drop(state);
        if self.chance(self.options.error_rate) {
            return Err(fail(
                StatusCode::SERVICE_UNAVAILABLE,
                -1001,
                "Internal error; unable to process your request. Please try again.",
            ));
        }
        Ok(used)
    }

    /// A signed request's parameters, once its key, signature and timestamp pass.
    async fn signed(
        &self,
        headers: &HeaderMap,
        query: Option<String>,
        body: &[u8],
        weight: u32,
    ) -> Result<(String, HashMap<String, String>, u32), Response> {
        let key = headers
            .get("x-mbx-apikey")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let used = self.weigh(Some(&key), weight).await?;
        let Some(secret) = self.binance().secrets.get(&key).cloned() else {
            return Err(fail(
                StatusCode::UNAUTHORIZED,
                -2015,
                "Invalid API-key, IP, or permissions for action.",
            ));
        };
        let query = query.unwrap_or_default();
        let body = std::str::from_utf8(body).unwrap_or_default();
        // The signature may be in either part; what it signs is both, without it.
        let (query_rest, in_query) = without_signature(&query);
        let (body_rest, in_body) = without_signature(body);
        let Some(sent) = in_query.or(in_body) else {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                -1102,
                "Mandatory parameter 'signature' was not sent, was empty/null, or malformed.",
            ));
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(query_rest.as_bytes());
        mac.update(body_rest.as_bytes());
        let Ok(sent) = hex::decode(sent) else {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                -1022,
                "Signature for this request is not valid.",
            ));
        };
        if mac.verify_slice(&sent).is_err() {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                -1022,
                "Signature for this request is not valid.",
            ));
        }
        let params: HashMap<String, String> = form_urlencoded::parse(query_rest.as_bytes())
            .chain(form_urlencoded::parse(body_rest.as_bytes()))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let Some(timestamp) = params.get("timestamp").and_then(|t| t.parse::<i64>().ok()) else {
            return Err(mandatory("timestamp"));
        };
        let window = match params.get("recvWindow") {
            None => 5_000,
            Some(w) => match w.parse::<i64>() {
                Ok(w) if (0..=60_000).contains(&w) => w,
                _ => {
                    return Err(fail(
                        StatusCode::BAD_REQUEST,
                        -1131,
                        "recvWindow must be less than 60000",
                    ));
                }
            },
        };
        let server = self.server_ms();
        if timestamp > server + 1_000 || server - timestamp > window {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                -1021,
                "Timestamp for this request is outside of the recvWindow.",
            ));
        }
        Ok((key, params, used))
    }
}

fn without_signature(raw: &str) -> (String, Option<String>) {
    let mut sig = None;
    let rest: Vec<&str> = raw
        .split('&')
        .filter(|part| match part.strip_prefix("signature=") {
            Some(s) => {
                sig = Some(s.to_owned());
                false
            }
            None => true,
        })
        .collect();
    (rest.join("&"), sig)
}

fn fail(status: StatusCode, code: i64, msg: &str) -> Response {
    (status, axum::Json(json!({"code": code, "msg": msg}))).into_response()
}

fn with_retry(status: StatusCode, code: i64, msg: &str, wait_ms: i64) -> Response {
    let mut r = fail(status, code, msg);
    let secs = (wait_ms.max(0) + 999) / 1000;
    r.headers_mut()
        .insert("retry-after", HeaderValue::from(secs.max(1)));
    r
}

fn mandatory(name: &str) -> Response {
    fail(
        StatusCode::BAD_REQUEST,
        -1102,
        &format!("Mandatory parameter '{name}' was not sent, was empty/null, or malformed."),
    )
}

fn ok(used: u32, body: Value) -> Response {
    let mut r = axum::Json(body).into_response();
    r.headers_mut()
        .insert("x-mbx-used-weight-1m", HeaderValue::from(used));
    r
}

fn dec(d: Decimal) -> String {
    format!("{:.8}", d.round_dp(8))
}

fn param_decimal(
    params: &HashMap<String, String>,
    name: &str,
) -> Result<Option<Decimal>, Response> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v
            .parse::<Decimal>()
            .map(Some)
            .map_err(|_| fail(StatusCode::BAD_REQUEST, -1100, &format!("Illegal characters found in parameter '{name}'; legal range is '^([0-9]{{1,20}})(\\.[0-9]{{1,20}})?$'."))),
    }
}

fn param_i64(params: &HashMap<String, String>, name: &str) -> Result<Option<i64>, Response> {
    match params.get(name) {
        None => Ok(None),
        Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
            fail(
                StatusCode::BAD_REQUEST,
                -1100,
                &format!("Illegal characters found in parameter '{name}'."),
            )
        }),
    }
}

impl PaperVenue {
    fn pair(&self, symbol: &str) -> Result<Pair, Response> {
        let extra = self.options.binance_extra_pairs;
        let made_up = symbol
            .strip_prefix('X')
            .and_then(|s| s.strip_suffix(QUOTE))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < extra && symbol == format!("X{n}{QUOTE}"));
        match made_up {
            Some(n) => Ok(Pair::new(&format!("X{n}"), "0.01", "0.00001", "10")),
            None => pairs(0)
                .into_iter()
                .find(|p| p.symbol == symbol)
                .ok_or_else(|| fail(StatusCode::BAD_REQUEST, -1121, "Invalid symbol.")),
        }
    }
}

fn status_name(o: &Order) -> &'static str {
    match o.status.as_str() {
        "partially_filled" => "PARTIALLY_FILLED",
        "filled" => "FILLED",
        "canceled" => "CANCELED",
        "expired" => "EXPIRED",
        "rejected" => "REJECTED",
        _ => "NEW",
    }
}

fn order_json(o: &Order) -> Value {
    let quote = o.filled_avg_price.unwrap_or_default() * o.filled_qty;
    json!({
        "symbol": o.symbol, "orderId": o.id.parse::<i64>().unwrap_or_default(), "orderListId": -1,
        "clientOrderId": o.client_order_id, "price": dec(o.limit_price.unwrap_or_default()),
        "origQty": dec(o.qty), "executedQty": dec(o.filled_qty), "cummulativeQuoteQty": dec(quote),
        "status": status_name(o), "timeInForce": o.time_in_force.to_uppercase(),
        "type": match o.order_type { OrderType::Market => "MARKET", OrderType::Limit => "LIMIT" },
        "side": match o.side { Side::Buy => "BUY", Side::Sell => "SELL" },
        "stopPrice": dec(Decimal::ZERO), "icebergQty": dec(Decimal::ZERO),
        "time": o.created_at.timestamp_millis(), "updateTime": o.updated_at.timestamp_millis(),
        "isWorking": !o.is_terminal(), "workingTime": o.created_at.timestamp_millis(),
        "origQuoteOrderQty": dec(Decimal::ZERO), "selfTradePreventionMode": "NONE",
    })
}

/// A Binance order of `key` by `orderId` or `origClientOrderId` in `symbol`.
fn find(
    book: &Book,
    key: &str,
    params: &HashMap<String, String>,
) -> Result<Option<usize>, Response> {
    let symbol = params.get("symbol").ok_or_else(|| mandatory("symbol"))?;
    let found = match (params.get("orderId"), params.get("origClientOrderId")) {
        (Some(id), _) => book.by_id.get(id).copied(),
        (None, Some(coid)) => book
            .by_client_id
            .get(&(key.to_owned(), coid.clone()))
            .copied(),
        (None, None) => return Err(mandatory("orderId")),
    };
    Ok(found.filter(|i| {
        let o = &book.orders[*i];
        o.account == key && &o.symbol == symbol
    }))
}

async fn time(State(venue): State<PaperVenue>) -> Response {
    match venue.weigh(None, 1).await {
        Ok(used) => ok(used, json!({"serverTime": venue.server_ms()})),
        Err(r) => r,
    }
}

async fn exchange_info(State(venue): State<PaperVenue>) -> Response {
    let used = match venue.weigh(None, 10).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let symbols: Vec<Value> = pairs(venue.options.binance_extra_pairs)
        .into_iter()
        .map(|p| {
            json!({
                "symbol": p.symbol, "status": "TRADING", "baseAsset": p.base, "baseAssetPrecision": 8,
                "quoteAsset": QUOTE, "quotePrecision": 4, "quoteAssetPrecision": 4,
                "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"], "icebergAllowed": true,
                "ocoAllowed": true, "isSpotTradingAllowed": true, "isMarginTradingAllowed": false,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": dec(p.tick), "maxPrice": "1000000.00000000", "tickSize": dec(p.tick)},
                    {"filterType": "LOT_SIZE", "minQty": dec(p.min_qty), "maxQty": "9000.00000000", "stepSize": dec(p.step)},
                    {"filterType": "NOTIONAL", "minNotional": dec(p.min_notional), "applyMinToMarket": true,
                     "maxNotional": "9000000.00000000", "applyMaxToMarket": false, "avgPriceMins": 5},
                ],
                "permissions": ["SPOT"],
            })
        })
        .collect();
    ok(
        used,
        json!({
            "timezone": "UTC", "serverTime": venue.server_ms(),
            "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                            "limit": venue.options.binance_weight_per_minute}],
            "exchangeFilters": [], "symbols": symbols,
        }),
    )
}

async fn book_ticker(State(venue): State<PaperVenue>, RawQuery(query): RawQuery) -> Response {
    let used = match venue.weigh(None, 2).await {
        Ok(u) => u,
        Err(r) => return r,
    };
    let params: HashMap<String, String> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let Some(symbol) = params.get("symbol") else {
        return mandatory("symbol");
    };
    if let Err(r) = venue.pair(symbol) {
        return r;
    }
    let price = venue.book.lock().expect("book").price(symbol);
    let spread = venue.spread();
    ok(
        used,
        json!({
            "symbol": symbol, "bidPrice": dec((price - spread).max(Decimal::new(1, 2))), "bidQty": "10.00000000",
            "askPrice": dec(price + spread), "askQty": "10.00000000",
        }),
    )
}

async fn new_order(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    let (key, p, used) = match venue.signed(&headers, query, &body, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match place(&venue, &key, &p) {
        Ok(placed) => ok(used, placed),
        Err(r) => r,
    }
}

fn place(venue: &PaperVenue, key: &str, p: &HashMap<String, String>) -> Result<Value, Response> {
    let symbol = p.get("symbol").ok_or_else(|| mandatory("symbol"))?;
    let pair = venue.pair(symbol)?;
    let side = match p.get("side").map(String::as_str) {
        Some("BUY") => Side::Buy,
        Some("SELL") => Side::Sell,
        _ => return Err(mandatory("side")),
    };
    let (order_type, tif) = match p.get("type").map(String::as_str) {
        Some("MARKET") => (OrderType::Market, "gtc".to_owned()),
        Some("LIMIT") => {
            let tif = match p.get("timeInForce").map(String::as_str) {
                Some(t @ ("GTC" | "IOC" | "FOK")) => t.to_lowercase(),
                _ => return Err(mandatory("timeInForce")),
            };
            (OrderType::Limit, tif)
        }
        Some("LIMIT_MAKER") => (OrderType::Limit, "gtc".to_owned()),
        Some(_) => return Err(fail(StatusCode::BAD_REQUEST, -1116, "Invalid orderType.")),
        None => return Err(mandatory("type")),
    };
    let price = param_decimal(p, "price")?;
    if order_type == OrderType::Limit && price.is_none() {
        return Err(mandatory("price"));
    }
    let mut book = venue.book.lock().expect("book");
    let market = book.price(symbol);
    let qty = match (
        param_decimal(p, "quantity")?,
        param_decimal(p, "quoteOrderQty")?,
    ) {
        (Some(q), _) => q,
        // Spend this much of the quote asset: the quantity at the ask, down to the step.
        (None, Some(quote)) if order_type == OrderType::Market => {
            let at = market + venue.spread();
            let raw = quote / at;
            (raw / pair.step).round_dp_with_strategy(0, RoundingStrategy::ToZero) * pair.step
        }
        _ => return Err(mandatory("quantity")),
    };
    // Filters: LOT_SIZE, PRICE_FILTER, NOTIONAL (market orders at the book).
    let filter = |name: &str| {
        fail(
            StatusCode::BAD_REQUEST,
            -1013,
            &format!("Filter failure: {name}"),
        )
    };
    if qty < pair.min_qty || !((qty - pair.min_qty) % pair.step).is_zero() {
        return Err(filter("LOT_SIZE"));
    }
    if let Some(price) = price
        && order_type == OrderType::Limit
        && (price < pair.tick || !(price % pair.tick).is_zero())
    {
        return Err(filter("PRICE_FILTER"));
    }
    let notional_price = match order_type {
        OrderType::Limit => price.unwrap_or_default(),
        OrderType::Market => market,
    };
    if notional_price * qty < pair.min_notional {
        return Err(filter("NOTIONAL"));
    }
    if venue.options.lose_symbols.iter().any(|s| s == symbol) {
        return Err(fail(
            StatusCode::GATEWAY_TIMEOUT,
            -1007,
            "Timeout waiting for response from backend server. Send status unknown; execution status unknown.",
        ));
    }
    if venue.options.reject_symbols.iter().any(|s| s == symbol) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            -2010,
            "This action is disabled on this account.",
        ));
    }
    let coid = p
        .get("newClientOrderId")
        .cloned()
        .unwrap_or_else(|| format!("web_{}", uuid::Uuid::new_v4().simple()));
    if coid.len() > 36
        || !coid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            -1100,
            "Illegal characters found in parameter 'newClientOrderId'; legal range is '^[\\.A-Z\\:/a-z0-9_-]{1,36}$'.",
        ));
    }
    let by_coid = (key.to_owned(), coid.clone());
    if book.by_client_id.contains_key(&by_coid) {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            -2010,
            "Duplicate order sent.",
        ));
    }
    if side == Side::Sell {
        // Spot: what is sold must be held, less what open sells have promised.
        let held = holdings(&book, key)
            .get(symbol.as_str())
            .map(|h| h.qty)
            .unwrap_or_default();
        let promised: Decimal = book
            .working
            .iter()
            .map(|i| &book.orders[*i])
            .filter(|o| o.account == key && &o.symbol == symbol && o.side == Side::Sell)
            .map(|o| o.qty - o.filled_qty)
            .sum();
        if held - promised < qty {
            return Err(fail(
                StatusCode::BAD_REQUEST,
                -2010,
                "Account has insufficient balance for requested action.",
            ));
        }
    }
    drop(book);
    let now = Utc::now();
    let id = {
        let mut state = venue.binance();
        state.next_order_id += 1;
        state.next_order_id
    };
    let Some((_, created)) = venue.open(Order {
        id: id.to_string(),
        client_order_id: coid,
        symbol: symbol.clone(),
        qty,
        filled_qty: Decimal::ZERO,
        filled_avg_price: None,
        side,
        order_type,
        time_in_force: tif,
        limit_price: (order_type == OrderType::Limit).then_some(price).flatten(),
        status: "new".into(),
        created_at: now,
        updated_at: now,
        account: key.to_owned(),
    }) else {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            -2010,
            "Duplicate order sent.",
        ));
    };
    if venue.options.drop_symbols.iter().any(|s| s == symbol)
        || venue.chance(venue.options.drop_rate)
    {
        // Created; the answer is lost on the way back.
        return Err(fail(
            StatusCode::BAD_GATEWAY,
            -1000,
            "An unknown error occurred while processing the request.",
        ));
    }
    // The RESULT answer: the order as it stands, stamped with `transactTime`.
    let mut body = order_json(&created);
    let o = body.as_object_mut().expect("object");
    for query_only in [
        "time",
        "updateTime",
        "isWorking",
        "stopPrice",
        "icebergQty",
        "origQuoteOrderQty",
    ] {
        o.remove(query_only);
    }
    o.insert("transactTime".into(), json!(now.timestamp_millis()));
    if p.get("newOrderRespType").map(String::as_str) == Some("ACK") {
        return Ok(
            json!({"symbol": created.symbol, "orderId": o["orderId"], "orderListId": -1,
                         "clientOrderId": created.client_order_id, "transactTime": now.timestamp_millis()}),
        );
    }
    Ok(body)
}

async fn query_order(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (key, p, used) = match venue.signed(&headers, query, &[], 4).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let book = venue.book.lock().expect("book");
    match find(&book, &key, &p) {
        Ok(Some(i)) => ok(used, order_json(&book.orders[i])),
        Ok(None) => fail(StatusCode::BAD_REQUEST, -2013, "Order does not exist."),
        Err(r) => r,
    }
}

async fn cancel_order(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    let (key, p, used) = match venue.signed(&headers, query, &body, 1).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut book = venue.book.lock().expect("book");
    let i = match find(&book, &key, &p) {
        Ok(Some(i)) if !book.orders[i].is_terminal() => i,
        Ok(_) => return fail(StatusCode::BAD_REQUEST, -2011, "Unknown order sent."),
        Err(r) => return r,
    };
    let update = book.end(i, "canceled");
    drop(book);
    let mut body = order_json(&update.order);
    body["origClientOrderId"] = json!(update.order.client_order_id);
    body["clientOrderId"] = json!(
        p.get("newClientOrderId")
            .cloned()
            .unwrap_or_else(|| format!("cancel_{}", uuid::Uuid::new_v4().simple()))
    );
    venue.publish(update);
    ok(used, body)
}

async fn open_orders(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let has_symbol = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|p| p.starts_with("symbol=")));
    let weight = if has_symbol { 6 } else { 80 };
    let (key, p, used) = match venue.signed(&headers, query, &[], weight).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let book = venue.book.lock().expect("book");
    let open: Vec<Value> = book
        .working
        .iter()
        .map(|i| &book.orders[*i])
        .filter(|o| o.account == key && o.id.parse::<i64>().is_ok())
        .filter(|o| p.get("symbol").is_none_or(|s| s == &o.symbol))
        .map(order_json)
        .collect();
    ok(used, Value::Array(open))
}

/// The window of a history request: `[startTime, endTime]`, at most a day (only a
/// start: the day from it).
fn window(p: &HashMap<String, String>) -> Result<Option<(i64, i64)>, Response> {
    let (start, end) = (param_i64(p, "startTime")?, param_i64(p, "endTime")?);
    let (start, end) = match (start, end) {
        (None, None) => return Ok(None),
        (Some(s), None) => (s, s + DAY_MS - 1),
        (None, Some(e)) => (e - DAY_MS + 1, e),
        (Some(s), Some(e)) => (s, e),
    };
    if end - start >= DAY_MS {
        return Err(fail(
            StatusCode::BAD_REQUEST,
            -1127,
            "More than 24 hours between startTime and endTime.",
        ));
    }
    Ok(Some((start, end)))
}

fn limit(p: &HashMap<String, String>) -> Result<usize, Response> {
    match param_i64(p, "limit")? {
        None => Ok(500),
        Some(n) if (1..=1000).contains(&n) => Ok(n as usize),
        Some(_) => Err(fail(
            StatusCode::BAD_REQUEST,
            -1100,
            "Illegal characters found in parameter 'limit'; legal range is '1000'.",
        )),
    }
}

/// A signed history request of `weight`: `list` reads the book for the key's
/// parameters; its items are the answer.
async fn history(
    venue: &PaperVenue,
    headers: &HeaderMap,
    query: Option<String>,
    weight: u32,
    list: impl FnOnce(&Book, &str, &HashMap<String, String>) -> Result<Vec<Value>, Response>,
) -> Response {
    let (key, p, used) = match venue.signed(headers, query, &[], weight).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let listed = {
        let book = venue.book.lock().expect("book");
        list(&book, &key, &p)
    };
    match listed {
        Ok(items) => ok(used, Value::Array(items)),
        Err(r) => r,
    }
}

/// Of ids in ascending order, those a history request asks for: from an id on, in a
/// window of time, or the most recent; at most `limit`.
fn page<T>(mut items: Vec<T>, from_or_window: bool, limit: usize) -> Vec<T> {
    if !from_or_window {
        let skip = items.len().saturating_sub(limit);
        items.drain(..skip);
    }
    items.truncate(limit);
    items
}

async fn all_orders(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    history(&venue, &headers, query, 20, |book, key, p| {
        let symbol = p.get("symbol").ok_or_else(|| mandatory("symbol"))?;
        let (from, window, limit) = (param_i64(p, "orderId")?, window(p)?, limit(p)?);
        let mut mine: Vec<(i64, &Order)> = book
            .orders
            .iter()
            .filter(|o| o.account == key && &o.symbol == symbol)
            .filter_map(|o| Some((o.id.parse::<i64>().ok()?, o)))
            .filter(|(id, o)| match (from, window) {
                (Some(from), _) => *id >= from,
                (None, Some((s, e))) => (s..=e).contains(&o.created_at.timestamp_millis()),
                (None, None) => true,
            })
            .collect();
        mine.sort_by_key(|(id, _)| *id);
        let picked = page(mine, from.is_some() || window.is_some(), limit);
        Ok(picked.into_iter().map(|(_, o)| order_json(o)).collect())
    })
    .await
}

async fn my_trades(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    history(&venue, &headers, query, 20, |book, key, p| {
        let symbol = p.get("symbol").ok_or_else(|| mandatory("symbol"))?;
        let (from, order, window, limit) = (
            param_i64(p, "fromId")?,
            param_i64(p, "orderId")?,
            window(p)?,
            limit(p)?,
        );
        // A trade's id is its place in the venue's fills (ids only grow).
        let mine: Vec<Value> = book
            .fills
            .iter()
            .enumerate()
            .map(|(i, f)| (i as i64 + 1, f))
            .filter(|(_, f)| f.account == key && &f.symbol == symbol)
            .filter(|(_, f)| order.is_none_or(|o| f.order_id == o.to_string()))
            .filter(|(id, f)| match (from, window) {
                (Some(from), _) => *id >= from,
                (None, Some((s, e))) => (s..=e).contains(&f.transaction_time.timestamp_millis()),
                (None, None) => true,
            })
            .map(|(id, f)| {
                json!({
                    "symbol": f.symbol, "id": id, "orderId": f.order_id.parse::<i64>().unwrap_or_default(),
                    "orderListId": -1, "price": dec(f.price), "qty": dec(f.qty), "quoteQty": dec(f.price * f.qty),
                    "commission": dec(Decimal::ZERO), "commissionAsset": QUOTE,
                    "time": f.transaction_time.timestamp_millis(), "isBuyer": f.side == Side::Buy,
                    "isMaker": false, "isBestMatch": true,
                })
            })
            .collect();
        Ok(page(mine, from.is_some() || window.is_some() || order.is_some(), limit))
    })
    .await
}

async fn account(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let (key, _, used) = match venue.signed(&headers, query, &[], 20).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let book = venue.book.lock().expect("book");
    let held = holdings(&book, &key);
    let mut quote = Decimal::new(1_000_000, 0);
    for f in book.fills.iter().filter(|f| f.account == key) {
        match f.side {
            Side::Buy => quote -= f.price * f.qty,
            Side::Sell => quote += f.price * f.qty,
        }
    }
    let mut balances =
        vec![json!({"asset": QUOTE, "free": dec(quote), "locked": dec(Decimal::ZERO)})];
    for p in pairs(venue.options.binance_extra_pairs) {
        let qty = held.get(&p.symbol).map(|h| h.qty).unwrap_or_default();
        let locked: Decimal = book
            .working
            .iter()
            .map(|i| &book.orders[*i])
            .filter(|o| o.account == key && o.symbol == p.symbol && o.side == Side::Sell)
            .map(|o| o.qty - o.filled_qty)
            .sum();
        balances.push(json!({"asset": p.base, "free": dec(qty - locked), "locked": dec(locked)}));
    }
    ok(
        used,
        json!({
            "makerCommission": 0, "takerCommission": 0, "buyerCommission": 0, "sellerCommission": 0,
            "canTrade": true, "canWithdraw": true, "canDeposit": true, "brokered": false,
            "requireSelfTradePrevention": false, "updateTime": Utc::now().timestamp_millis(),
            "accountType": "SPOT", "balances": balances, "permissions": ["SPOT"],
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_taken_out_of_either_part() {
        assert_eq!(
            without_signature("symbol=BTCUSD&timestamp=1&signature=ab"),
            ("symbol=BTCUSD&timestamp=1".into(), Some("ab".into()))
        );
        assert_eq!(without_signature("a=1"), ("a=1".into(), None));
    }
}
