//! `pulse-fleet paper`: a venue that speaks the Alpaca Trading API v2 for the
//! endpoints the fleet uses (paths, JSON fields, status strings, string decimals,
//! Alpaca's error bodies `{code, message}`), so that local runs and tests trade
//! against it and production points the same client at Alpaca.
//!
//! - Orders: `POST /v2/orders` answers `new` (422 on a reused `client_order_id`, on
//!   bad fields and on symbols configured as not tradable), `GET /v2/orders` (`status`,
//!   `limit`, `after`, `until`, `direction`, `nested`), `GET /v2/orders/{id}`,
//!   `GET /v2/orders:by_client_order_id`, `DELETE /v2/orders/{id}` (422 when no longer
//!   cancelable); 404 `order not found`. Each API key is an account of its own.
//! - Fills come later, from the matching engine (`engine.rs`): market orders after a
//!   delay at the ask (buys) or the bid (sells), large ones in parts over time; limit
//!   orders rest until the price walk crosses them; day orders expire at the end of a
//!   simulated session; orders may be rejected or cancelled by the venue. Tests can
//!   hold every fill and drive them by hand (`hold_fills`, [`PaperVenue::fill`]).
//! - `GET /v2/account/activities/FILL`, `GET /v2/positions`, `/v2/positions/{symbol}`,
//!   `GET /v2/account`, and the `trade_updates` stream on `/stream` (`stream.rs`).
//! - Market data: `GET /v2/stocks/{symbol}/quotes/latest`, outside the trading rate
//!   limit as at Alpaca.
//! - The same book also speaks Binance.US's spot API under `/api/v3` (`binance.rs`).
//! - Limits and faults, chosen per run: requests per minute per key (429 with
//!   `X-Ratelimit-Limit/Remaining/Reset` on every answer), latency, a 5xx rate
//!   (nothing done), accept-then-drop (the order is created, the answer is a 502), and
//!   dropped streams ([`PaperVenue::drop_streams`]). Fills happen whether or not
//!   anyone listens: the stream never replays.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

mod binance;
mod engine;
mod stream;
pub mod wire;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{delete, get},
};
use chrono::{DateTime, Utc};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

pub use wire::{FillActivity, Order, OrderBody, OrderType, Side};

#[derive(Debug, Clone, clap::Args)]
pub struct PaperOptions {
    #[arg(long, default_value = "127.0.0.1:8070")]
    pub bind: String,
    /// Seed of the price simulation and of the faults.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Requests per minute per API key (Alpaca: 200).
    #[arg(long, default_value_t = 200)]
    pub rate_limit_per_minute: u32,
    /// Added to every answer.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Share of requests answered 503 without doing anything.
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Share of order submissions created and then answered 502 (the answer is lost).
    #[arg(long, default_value_t = 0.0)]
    pub drop_rate: f64,
    /// How long after acceptance a market order starts filling (0: its first fill
    /// happens as it is accepted, before the answer, which still says `new`, as
    /// Alpaca's answers usually do).
    #[arg(long, default_value_t = 50)]
    pub fill_delay_ms: u64,
    /// Orders larger than this fill in parts of at most this quantity, one part every
    /// `fill_interval_ms` (0: in one fill).
    #[arg(long, default_value_t = 0)]
    pub partial_fill_qty: u64,
    /// Between two parts of a large order, and between two looks at a resting limit.
    #[arg(long, default_value_t = 200)]
    pub fill_interval_ms: u64,
    /// Nothing fills by itself: fills, cancels and expiries happen when a test says.
    #[arg(long)]
    pub hold_fills: bool,
    /// Length of a simulated trading session: day orders still open at its end
    /// expire (0: sessions never end by themselves).
    #[arg(long, default_value_t = 0)]
    pub session_secs: u64,
    /// Symbols whose orders are rejected (422, not tradable).
    #[arg(long, value_delimiter = ',')]
    pub reject_symbols: Vec<String>,
    /// Symbols whose orders are accepted and then rejected by the venue.
    #[arg(long, value_delimiter = ',')]
    pub late_reject_symbols: Vec<String>,
    /// Symbols whose order submissions are created and then answered 502 (the answer
    /// is lost), every time: `drop_rate` for one symbol, on cue.
    #[arg(long, value_delimiter = ',')]
    pub drop_symbols: Vec<String>,
    /// Symbols whose order submissions never reach the venue: answered 504 (a
    /// gateway timeout) and nothing is created, every time.
    #[arg(long, value_delimiter = ',')]
    pub lose_symbols: Vec<String>,
    /// Largest step of the price walk, in cents (0: prices stand still).
    #[arg(long, default_value_t = 10)]
    pub price_step_cents: i64,
    /// Quotes' distance from the price on each side, in cents: market buys fill at
    /// the ask, sells at the bid.
    #[arg(long, default_value_t = 1)]
    pub spread_cents: i64,
    /// Binance dialect: API keys and their secrets, `key:secret`.
    #[arg(long, value_delimiter = ',')]
    pub binance_keys: Vec<String>,
    /// Binance dialect: request weight per key per minute (Binance.US: 1200).
    #[arg(long, default_value_t = 1200)]
    pub binance_weight_per_minute: u32,
    /// Binance dialect: how long a key that sends on through its 429s is banned (418).
    #[arg(long, default_value_t = 120)]
    pub binance_ban_secs: u64,
    /// Binance dialect: made-up pairs `X0USD` .. listed besides the real ones.
    #[arg(long, default_value_t = 0)]
    pub binance_extra_pairs: usize,
}

impl Default for PaperOptions {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:0".into(),
            seed: 42,
            rate_limit_per_minute: 200,
            latency_ms: 0,
            error_rate: 0.0,
            drop_rate: 0.0,
            fill_delay_ms: 50,
            partial_fill_qty: 0,
            fill_interval_ms: 200,
            hold_fills: false,
            session_secs: 0,
            reject_symbols: vec![],
            late_reject_symbols: vec![],
            drop_symbols: vec![],
            lose_symbols: vec![],
            price_step_cents: 10,
            spread_cents: 1,
            binance_keys: vec![],
            binance_weight_per_minute: 1200,
            binance_ban_secs: 120,
            binance_extra_pairs: 0,
        }
    }
}

/// Everything the venue holds, behind one lock.
#[derive(Default)]
struct Book {
    orders: Vec<Order>,
    /// (api key, client order id) -> index: client order ids are unique per account.
    by_client_id: HashMap<(String, String), usize>,
    by_id: HashMap<String, usize>,
    fills: Vec<FillActivity>,
    prices: HashMap<String, Decimal>,
    /// Orders not yet ended (indexes into `orders`).
    working: std::collections::BTreeSet<usize>,
    /// When each working order may next fill, and the same in time order: a tick of
    /// the engine reads only the orders that are due.
    next_fill: HashMap<usize, tokio::time::Instant>,
    due: std::collections::BTreeSet<(tokio::time::Instant, usize)>,
    /// (api key, symbol) -> signed quantity held.
    held: HashMap<(String, String), Decimal>,
    /// Position changes that are not fills (a transfer, a correction by the broker):
    /// (api key, symbol, signed quantity).
    adjustments: Vec<(String, String, Decimal)>,
    /// api key -> (requests in the minute, minute start as unix seconds)
    rate: HashMap<String, (u32, i64)>,
    /// api key -> requests admitted since the start.
    requests: HashMap<String, u64>,
}

#[derive(Clone)]
pub struct PaperVenue {
    options: Arc<PaperOptions>,
    book: Arc<Mutex<Book>>,
    rng: Arc<Mutex<StdRng>>,
    /// Every order update, for the streams: (api key, message).
    updates: broadcast::Sender<Arc<(String, Value)>>,
    /// Bumped to drop every open stream connection.
    drops: Arc<watch::Sender<u64>>,
    /// Requests per minute per key, changeable while serving.
    rate_limit: Arc<std::sync::atomic::AtomicU32>,
    /// The Binance dialect's keys, clock, weights and bans.
    binance: Arc<Mutex<binance::BinanceState>>,
}

fn error(status: StatusCode, code: i64, message: &str) -> Response {
    (status, Json(json!({ "code": code, "message": message }))).into_response()
}

fn order_json(o: &Order) -> Value {
    let terminal_at = |s: &str| (o.status == s).then(|| o.updated_at.to_rfc3339());
    json!({
        "id": o.id, "client_order_id": o.client_order_id,
        "created_at": o.created_at, "updated_at": o.updated_at, "submitted_at": o.created_at,
        "filled_at": terminal_at("filled"), "expired_at": terminal_at("expired"),
        "canceled_at": terminal_at("canceled"), "failed_at": terminal_at("rejected"),
        "replaced_at": null, "replaced_by": null, "replaces": null,
        "asset_id": format!("paper-{}", o.symbol), "symbol": o.symbol, "asset_class": "us_equity",
        "notional": null, "qty": o.qty.to_string(), "filled_qty": o.filled_qty.to_string(),
        "filled_avg_price": o.filled_avg_price.map(|p| p.to_string()),
        "order_class": "", "order_type": o.order_type, "type": o.order_type, "side": o.side,
        "time_in_force": o.time_in_force, "limit_price": o.limit_price.map(|p| p.to_string()),
        "stop_price": null, "status": o.status, "extended_hours": false, "legs": null,
        "trail_percent": null, "trail_price": null, "hwm": null,
    })
}

impl PaperVenue {
    pub fn new(options: PaperOptions) -> Self {
        let rng = StdRng::seed_from_u64(options.seed);
        let rate_limit = options.rate_limit_per_minute;
        let venue = Self {
            options: Arc::new(options),
            book: Arc::default(),
            rng: Arc::new(Mutex::new(rng)),
            updates: broadcast::channel(65_536).0,
            drops: Arc::new(watch::channel(0).0),
            rate_limit: Arc::new(rate_limit.into()),
            binance: Arc::default(),
        };
        for pair in &venue.options.binance_keys {
            if let Some((key, secret)) = pair.split_once(':') {
                venue.register_key(key, secret);
            }
        }
        venue
    }

    pub fn router(&self) -> Router {
        let trading = Router::new()
            .route("/v2/orders", get(list_orders).post(create_order))
            .route("/v2/orders:by_client_order_id", get(by_client_id))
            .route("/v2/orders/{id}", delete(cancel_order).get(get_order))
            .route("/v2/account/activities/FILL", get(fills))
            .route("/v2/positions", get(list_positions))
            .route("/v2/positions/{symbol}", get(get_position))
            .route("/v2/account", get(account))
            .layer(axum::middleware::from_fn_with_state(
                self.clone(),
                admission,
            ));
        // Market data is another host with its own limits at Alpaca: not counted
        // against the trading budget here either. The stream authenticates in-band.
        let data = Router::new().route("/v2/stocks/{symbol}/quotes/latest", get(latest_quote));
        trading
            .merge(data)
            .merge(self.binance_router())
            .route("/stream", get(stream::upgrade))
            .with_state(self.clone())
    }

    /// Changes the requests per minute per key (a benchmark lifts the limit for its
    /// setup, then puts Alpaca's back).
    /// Every key starts a fresh minute.
    pub fn set_rate_limit(&self, per_minute: u32) {
        self.rate_limit
            .store(per_minute, std::sync::atomic::Ordering::Relaxed);
        self.book.lock().expect("book").rate.clear();
    }

    /// Sets a symbol's price (tests move the market on cue).
    pub fn set_price(&self, symbol: &str, price: Decimal) {
        self.book
            .lock()
            .expect("book")
            .prices
            .insert(symbol.to_owned(), price);
    }

    /// Serves the API and runs the matching engine until the server stops.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let engine = tokio::spawn(engine::run(self.clone()));
        let served = axum::serve(listener, self.router()).await;
        engine.abort();
        served
    }

    /// Every order the venue holds (tests count them).
    pub fn orders(&self) -> Vec<Order> {
        self.book.lock().expect("book").orders.clone()
    }

    /// Every fill the venue has made (tests compare them with the database).
    pub fn all_fills(&self) -> Vec<FillActivity> {
        self.book.lock().expect("book").fills.clone()
    }

    /// Trading requests admitted for `api_key` since the start (market data and the
    /// stream are not counted, as at Alpaca).
    pub fn requests(&self, api_key: &str) -> u64 {
        let book = self.book.lock().expect("book");
        book.requests.get(api_key).copied().unwrap_or(0)
    }

    /// Fills `qty` of the order with this client order id at `price` now (tests and
    /// benchmarks driving a held venue). False when there is no such working order or
    /// `qty` is more than it has left.
    pub fn fill(&self, client_order_id: &str, qty: Decimal, price: Decimal) -> bool {
        let mut book = self.book.lock().expect("book");
        let Some(i) = book.find_client_id(client_order_id) else {
            return false;
        };
        let o = &book.orders[i];
        if o.is_terminal() || qty <= Decimal::ZERO || qty > o.qty - o.filled_qty {
            return false;
        }
        let update = book.fill(i, qty, price);
        drop(book);
        self.publish(update);
        true
    }

    /// The broker changes a position by hand (a transfer in or out, a correction):
    /// no order and no fill, only the position moves.
    pub fn adjust_position(&self, api_key: &str, symbol: &str, qty: Decimal) {
        self.book.lock().expect("book").adjustments.push((
            api_key.to_owned(),
            symbol.to_owned(),
            qty,
        ));
    }

    /// The venue cancels a working order on its own (a halt, a corporate action).
    pub fn cancel_by_venue(&self, client_order_id: &str) -> bool {
        self.end(client_order_id, "canceled")
    }

    /// The venue rejects an order it had accepted.
    pub fn reject_by_venue(&self, client_order_id: &str) -> bool {
        self.end(client_order_id, "rejected")
    }

    fn end(&self, client_order_id: &str, status: &str) -> bool {
        let mut book = self.book.lock().expect("book");
        let Some(i) = book.find_client_id(client_order_id) else {
            return false;
        };
        if book.orders[i].is_terminal() {
            return false;
        }
        let update = book.end(i, status);
        drop(book);
        self.publish(update);
        true
    }

    /// The session ends: every working day order expires. Returns how many did.
    pub fn end_session(&self) -> usize {
        let mut book = self.book.lock().expect("book");
        let day: Vec<usize> = book
            .working
            .iter()
            .copied()
            .filter(|i| book.orders[*i].time_in_force == "day")
            .collect();
        let updates: Vec<_> = day.into_iter().map(|i| book.end(i, "expired")).collect();
        drop(book);
        let n = updates.len();
        updates.into_iter().for_each(|u| self.publish(u));
        n
    }

    /// Drops every open stream connection (the fault of a lost stream); clients must
    /// reconnect and catch up through REST, as the stream does not replay.
    pub fn drop_streams(&self) {
        self.drops.send_modify(|n| *n += 1);
    }

    /// Opens `order` on the book, unless its account already has an order with its
    /// client order id (`None`): working from now, looked at by the engine once the
    /// fill delay is over (at once when there is none), the stream told. The order as
    /// accepted, and as it stands after a fill made at once.
    fn open(&self, order: Order) -> Option<(Order, Order)> {
        let (accepted, now, at_once) = {
            let mut book = self.book.lock().expect("book");
            let key = (order.account.clone(), order.client_order_id.clone());
            if book.by_client_id.contains_key(&key) {
                return None;
            }
            let i = book.orders.len();
            book.by_client_id.insert(key, i);
            book.by_id.insert(order.id.clone(), i);
            book.orders.push(order);
            book.working.insert(i);
            book.schedule(
                i,
                tokio::time::Instant::now() + Duration::from_millis(self.options.fill_delay_ms),
            );
            let accepted = book.orders[i].clone();
            let at_once = (self.options.fill_delay_ms == 0 && !self.options.hold_fills)
                .then(|| engine::step_one(self, &mut book, i))
                .flatten();
            (accepted, book.orders[i].clone(), at_once)
        };
        self.publish(Update {
            account: accepted.account.clone(),
            event: "new",
            order: accepted.clone(),
            fill: None,
        });
        if let Some(update) = at_once {
            self.publish(update);
        }
        Some((accepted, now))
    }

    /// Tells the stream listeners of `update`, whether or not anyone listens.
    fn publish(&self, update: Update) {
        let _ = self
            .updates
            .send(Arc::new((update.account.clone(), update.message())));
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().expect("rng").random::<f64>() < p
    }

    /// Auth, rate limit, latency and the 5xx fault: what every request goes through.
    async fn admit(&self, headers: &HeaderMap) -> Result<HeaderMap, Response> {
        if self.options.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.options.latency_ms)).await;
        }
        let Some(key) = api_key(headers) else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                40110000,
                "request is not authorized",
            ));
        };
        let limit = self.rate_limit.load(std::sync::atomic::Ordering::Relaxed);
        let now = Utc::now().timestamp();
        let (used, start) = {
            let mut book = self.book.lock().expect("book");
            *book.requests.entry(key.clone()).or_default() += 1;
            let entry = book.rate.entry(key).or_insert((0, now));
            if now - entry.1 >= 60 {
                *entry = (0, now);
            }
            entry.0 += 1;
            *entry
        };
        let mut out = HeaderMap::new();
        out.insert("x-ratelimit-limit", HeaderValue::from(limit));
        out.insert(
            "x-ratelimit-remaining",
            HeaderValue::from(limit.saturating_sub(used)),
        );
        out.insert("x-ratelimit-reset", HeaderValue::from(start + 60));
        if used > limit {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                42910000,
                "rate limit exceeded",
            );
            r.headers_mut().extend(out);
            return Err(r);
        }
        if self.chance(self.options.error_rate) {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                50010000,
                "internal server error",
            ));
        }
        Ok(out)
    }

    fn spread(&self) -> Decimal {
        Decimal::new(self.options.spread_cents.max(0), 2)
    }
}

/// One change of an order, as the stream tells it.
struct Update {
    account: String,
    event: &'static str,
    /// The order after the change (its JSON is made only for a stream that listens).
    order: Order,
    /// For fills: (execution id, price, qty, time, position after).
    fill: Option<(String, Decimal, Decimal, DateTime<Utc>, Decimal)>,
}

impl Update {
    /// Alpaca's `trade_updates` message.
    fn message(&self) -> Value {
        let mut data = json!({"event": self.event, "order": order_json(&self.order)});
        if let Some((id, price, qty, at, position)) = &self.fill {
            data["execution_id"] = json!(id);
            data["price"] = json!(price.to_string());
            data["qty"] = json!(qty.to_string());
            data["timestamp"] = json!(at);
            data["position_qty"] = json!(position.to_string());
        } else {
            data["timestamp"] = json!(self.order.updated_at);
        }
        json!({"stream": "trade_updates", "data": data})
    }
}

impl Book {
    fn price(&mut self, symbol: &str) -> Decimal {
        *self
            .prices
            .entry(symbol.to_owned())
            .or_insert_with(|| Decimal::new(10_000, 2))
    }

    /// One step of a symbol's random walk (it starts at 100.00); its new price.
    fn step(&mut self, rng: &mut StdRng, symbol: &str, cents: i64) -> Decimal {
        let cents = cents.max(0);
        let step = Decimal::new(rng.random_range(-cents..=cents), 2);
        let p = self.price(symbol);
        let next = (p + step).max(Decimal::new(1, 2));
        self.prices.insert(symbol.to_owned(), next);
        next
    }

    /// A client order id of any account (tests name orders by their client ids, which
    /// the fleet makes unique across accounts).
    fn find_client_id(&self, client_order_id: &str) -> Option<usize> {
        self.by_client_id
            .iter()
            .find(|((_, c), _)| c == client_order_id)
            .map(|(_, i)| *i)
    }

    fn fill(&mut self, i: usize, qty: Decimal, price: Decimal) -> Update {
        let now = Utc::now();
        let o = &mut self.orders[i];
        let before = o.filled_qty;
        o.filled_qty += qty;
        let avg = o.filled_avg_price.unwrap_or(price);
        o.filled_avg_price = Some(((avg * before + price * qty) / o.filled_qty).round_dp(6));
        let done = o.filled_qty >= o.qty;
        o.status = if done { "filled" } else { "partially_filled" }.into();
        o.updated_at = now;
        let execution = uuid::Uuid::new_v4().to_string();
        let signed = match o.side {
            Side::Buy => qty,
            Side::Sell => -qty,
        };
        let fill = FillActivity {
            id: format!("{}::{execution}", now.format("%Y%m%d%H%M%S%6f")),
            activity_type: "FILL".into(),
            transaction_time: now,
            fill_type: if done { "fill" } else { "partial_fill" }.into(),
            price,
            qty,
            side: o.side,
            symbol: o.symbol.clone(),
            leaves_qty: o.qty - o.filled_qty,
            cum_qty: o.filled_qty,
            order_id: o.id.clone(),
            order_status: o.status.clone(),
            account: o.account.clone(),
        };
        let (account, symbol) = (o.account.clone(), o.symbol.clone());
        let order = o.clone();
        self.fills.push(fill);
        let held = self.held.entry((account.clone(), symbol)).or_default();
        *held += signed;
        let position = *held;
        if done {
            self.retire(i);
        }
        Update {
            account,
            event: if done { "fill" } else { "partial_fill" },
            order,
            fill: Some((execution, price, qty, now, position)),
        }
    }

    /// Ends a working order: `canceled`, `expired` or `rejected`.
    fn end(&mut self, i: usize, status: &str) -> Update {
        let o = &mut self.orders[i];
        o.status = status.into();
        o.updated_at = Utc::now();
        let update = Update {
            account: o.account.clone(),
            event: match status {
                "canceled" => "canceled",
                "expired" => "expired",
                _ => "rejected",
            },
            order: o.clone(),
            fill: None,
        };
        self.retire(i);
        update
    }

    /// When working order `i` is next looked at.
    fn schedule(&mut self, i: usize, at: tokio::time::Instant) {
        if let Some(before) = self.next_fill.insert(i, at) {
            self.due.remove(&(before, i));
        }
        self.due.insert((at, i));
    }

    fn retire(&mut self, i: usize) {
        self.working.remove(&i);
        if let Some(at) = self.next_fill.remove(&i) {
            self.due.remove(&(at, i));
        }
    }
}

/// The API key of a request that carries a key pair (the paper venue accepts any).
fn api_key(headers: &HeaderMap) -> Option<String> {
    let key = headers
        .get("apca-api-key-id")
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())?;
    headers
        .get("apca-api-secret-key")
        .is_some_and(|v| !v.is_empty())
        .then(|| key.to_owned())
}

/// The account of an admitted request (admission has checked the key is there).
fn account_of(headers: &HeaderMap) -> String {
    api_key(headers).unwrap_or_default()
}

/// A limit order fills once the price reaches its limit: at or below it for a buy,
/// at or above it for a sell.
fn crosses(side: Side, price: Decimal, limit: Decimal) -> bool {
    match side {
        Side::Buy => price <= limit,
        Side::Sell => price >= limit,
    }
}

/// What every request goes through first: auth, the rate limit, latency and the 5xx
/// fault. Admitted answers carry the rate-limit headers, as every answer of Alpaca's does.
async fn admission(
    State(venue): State<PaperVenue>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match venue.admit(request.headers()).await {
        Err(refused) => refused,
        Ok(rate) => with_headers(rate, next.run(request).await),
    }
}

fn with_headers(headers: HeaderMap, response: impl IntoResponse) -> Response {
    let mut r = response.into_response();
    r.headers_mut().extend(headers);
    r
}

async fn create_order(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: OrderBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                40010000,
                &format!("invalid order request: {e}"),
            );
        }
    };
    if venue.options.lose_symbols.contains(&request.symbol) {
        // Lost on the way in: the venue never sees it.
        return error(StatusCode::GATEWAY_TIMEOUT, 50400000, "gateway timeout");
    }
    if request.qty <= Decimal::ZERO {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            40010000,
            "qty must be > 0",
        );
    }
    if request.order_type == OrderType::Limit && request.limit_price.is_none() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            40010000,
            "limit_price is required for limit orders",
        );
    }
    if request.client_order_id.len() > 128 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            40010000,
            "client_order_id must be no more than 128 characters",
        );
    }
    if venue
        .options
        .reject_symbols
        .iter()
        .any(|s| s == &request.symbol)
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42210000,
            &format!("asset {} is not tradable", request.symbol),
        );
    }
    let account = account_of(&headers);
    let now: DateTime<Utc> = Utc::now();
    let Some((created, _)) = venue.open(Order {
        id: uuid::Uuid::new_v4().to_string(),
        client_order_id: request.client_order_id.clone(),
        symbol: request.symbol.clone(),
        qty: request.qty,
        filled_qty: Decimal::ZERO,
        filled_avg_price: None,
        side: request.side,
        order_type: request.order_type,
        time_in_force: request.time_in_force.clone(),
        limit_price: request.limit_price,
        status: "new".into(),
        created_at: now,
        updated_at: now,
        account,
    }) else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            40010001,
            "client_order_id must be unique",
        );
    };
    if venue.options.drop_symbols.contains(&created.symbol) || venue.chance(venue.options.drop_rate)
    {
        // The order exists; the answer is lost on the way back.
        return error(
            StatusCode::BAD_GATEWAY,
            50200000,
            "upstream connection reset",
        );
    }
    Json(order_json(&created)).into_response()
}

/// `GET /v2/stocks/{symbol}/quotes/latest`, in Alpaca's market-data dialect: the
/// current price of the walk, the spread either side, as JSON numbers (as Alpaca sends).
async fn latest_quote(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    Path(symbol): Path<String>,
) -> Response {
    if api_key(&headers).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "unauthorized."})),
        )
            .into_response();
    }
    let price = venue.book.lock().expect("book").price(&symbol);
    let spread = venue.spread();
    let cent = Decimal::new(1, 2);
    let number = |d: Decimal| -> Value {
        serde_json::from_str(&d.normalize().to_string()).unwrap_or(Value::Null)
    };
    Json(json!({
        "symbol": symbol,
        "quote": {
            "ap": number(price + spread), "as": 3, "ax": "V",
            "bp": number((price - spread).max(cent)), "bs": 2, "bx": "V",
            "c": ["R"], "t": Utc::now(), "z": "C"
        }
    }))
    .into_response()
}

#[derive(Deserialize)]
struct ClientIdQuery {
    client_order_id: String,
}

async fn by_client_id(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    Query(q): Query<ClientIdQuery>,
) -> Response {
    let book = venue.book.lock().expect("book");
    match book
        .by_client_id
        .get(&(account_of(&headers), q.client_order_id))
    {
        Some(i) => Json(order_json(&book.orders[*i])).into_response(),
        None => error(StatusCode::NOT_FOUND, 40410000, "order not found"),
    }
}

/// The index of the account's order with venue id `id` (another account's order is
/// not found, as at Alpaca).
fn own(book: &Book, headers: &HeaderMap, id: &str) -> Option<usize> {
    let account = account_of(headers);
    book.by_id
        .get(id)
        .copied()
        .filter(|i| book.orders[*i].account == account)
}

async fn get_order(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let book = venue.book.lock().expect("book");
    match own(&book, &headers, &id) {
        Some(i) => Json(order_json(&book.orders[i])).into_response(),
        None => error(StatusCode::NOT_FOUND, 40410000, "order not found"),
    }
}

async fn cancel_order(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut book = venue.book.lock().expect("book");
    let Some(i) = own(&book, &headers, &id) else {
        return error(StatusCode::NOT_FOUND, 40410000, "order not found");
    };
    if book.orders[i].is_terminal() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            42210000,
            "order is not cancelable",
        );
    }
    let update = book.end(i, "canceled");
    drop(book);
    venue.publish(update);
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /v2/orders`: `status` open (default), closed or all; `limit` (default 50, at
/// most 500); `after` and `until` bound `created_at` (exclusive); `direction` desc
/// (default) or asc by `created_at`; `nested` is accepted (no order here has legs).
#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<DateTime<Utc>>,
    #[serde(default)]
    until: Option<DateTime<Utc>>,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    nested: Option<bool>,
}

/// Alpaca's sort order: `asc` or `desc` (the default); `None` for anything else.
fn ascending(direction: Option<&str>) -> Option<bool> {
    match direction.unwrap_or("desc") {
        "asc" => Some(true),
        "desc" => Some(false),
        _ => None,
    }
}

/// Alpaca's 422 for a query parameter it does not know the value of.
fn invalid(name: &str, value: Option<&str>) -> Response {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        40010001,
        &format!("invalid {name}: {}", value.unwrap_or_default()),
    )
}

async fn list_orders(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    let account = account_of(&headers);
    let Some(ascending) = ascending(q.direction.as_deref()) else {
        return invalid("direction", q.direction.as_deref());
    };
    let wanted = q.status.as_deref().unwrap_or("open");
    if !["open", "closed", "all"].contains(&wanted) {
        return invalid("status", Some(wanted));
    }
    let book = venue.book.lock().expect("book");
    let mut list: Vec<&Order> = book
        .orders
        .iter()
        .filter(|o| o.account == account)
        .filter(|o| match wanted {
            "open" => !o.is_terminal(),
            "closed" => o.is_terminal(),
            _ => true,
        })
        .filter(|o| q.after.is_none_or(|t| o.created_at > t))
        .filter(|o| q.until.is_none_or(|t| o.created_at < t))
        .collect();
    list.sort_by_key(|o| o.created_at);
    if !ascending {
        list.reverse();
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let page: Vec<Value> = list.into_iter().take(limit).map(order_json).collect();
    Json(page).into_response()
}

/// FILL activities: newest first unless `direction=asc`; `page_size` (default 100, at
/// most 100); `page_token` is the id of the last activity of the previous page;
/// `after` and `until` bound `transaction_time`.
#[derive(Deserialize)]
struct FillQuery {
    #[serde(default)]
    page_token: Option<String>,
    #[serde(default)]
    page_size: Option<usize>,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    after: Option<DateTime<Utc>>,
    #[serde(default)]
    until: Option<DateTime<Utc>>,
}

async fn fills(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    Query(q): Query<FillQuery>,
) -> Response {
    let account = account_of(&headers);
    let Some(ascending) = ascending(q.direction.as_deref()) else {
        return invalid("direction", q.direction.as_deref());
    };
    let book = venue.book.lock().expect("book");
    let mut all: Vec<&FillActivity> = book
        .fills
        .iter()
        .filter(|f| f.account == account)
        .filter(|f| q.after.is_none_or(|t| f.transaction_time > t))
        .filter(|f| q.until.is_none_or(|t| f.transaction_time < t))
        .collect();
    if !ascending {
        all.reverse();
    }
    let start = q
        .page_token
        .as_ref()
        .and_then(|t| all.iter().position(|f| &f.id == t).map(|p| p + 1))
        .unwrap_or(0);
    let page: Vec<&FillActivity> = all
        .into_iter()
        .skip(start)
        .take(q.page_size.unwrap_or(100).clamp(1, 100))
        .collect();
    Json(page).into_response()
}

/// What the account holds of one symbol, from its fills: signed quantity and average
/// entry price (a reduction keeps the average; crossing zero starts a new one).
#[derive(Debug, Clone, Copy, Default)]
struct Holding {
    qty: Decimal,
    avg_entry_price: Decimal,
}

fn holdings(book: &Book, account: &str) -> BTreeMap<String, Holding> {
    let mut out: BTreeMap<String, Holding> = Default::default();
    for f in book.fills.iter().filter(|f| f.account == account) {
        let h = out.entry(f.symbol.clone()).or_default();
        let signed = match f.side {
            Side::Buy => f.qty,
            Side::Sell => -f.qty,
        };
        let next = h.qty + signed;
        if h.qty.is_zero() || (h.qty.is_sign_positive() == signed.is_sign_positive()) {
            // Opening or adding: the average moves.
            h.avg_entry_price =
                ((h.avg_entry_price * h.qty.abs() + f.price * f.qty) / next.abs()).round_dp(6);
        } else if !next.is_zero() && next.is_sign_positive() != h.qty.is_sign_positive() {
            // Crossed zero: what is left was opened at this fill's price.
            h.avg_entry_price = f.price;
        }
        h.qty = next;
    }
    for (key, symbol, qty) in &book.adjustments {
        if key == account {
            out.entry(symbol.clone()).or_default().qty += *qty;
        }
    }
    out.retain(|_, h| !h.qty.is_zero());
    out
}

fn position_json(book: &mut Book, symbol: &str, h: Holding) -> Value {
    let price = book.price(symbol);
    let market_value = h.qty * price;
    let cost_basis = h.qty * h.avg_entry_price;
    json!({
        "asset_id": format!("paper-{symbol}"), "symbol": symbol, "exchange": "PAPER",
        "asset_class": "us_equity", "asset_marginable": false,
        "qty": h.qty.to_string(), "qty_available": h.qty.to_string(),
        "side": if h.qty.is_sign_positive() { "long" } else { "short" },
        "avg_entry_price": h.avg_entry_price.to_string(),
        "market_value": market_value.to_string(), "cost_basis": cost_basis.to_string(),
        "unrealized_pl": (market_value - cost_basis).to_string(),
        "current_price": price.to_string(),
    })
}

async fn list_positions(State(venue): State<PaperVenue>, headers: HeaderMap) -> Response {
    let mut book = venue.book.lock().expect("book");
    let held = holdings(&book, &account_of(&headers));
    let list: Vec<Value> = held
        .into_iter()
        .map(|(symbol, h)| position_json(&mut book, &symbol, h))
        .collect();
    Json(list).into_response()
}

async fn get_position(
    State(venue): State<PaperVenue>,
    headers: HeaderMap,
    Path(symbol): Path<String>,
) -> Response {
    let mut book = venue.book.lock().expect("book");
    match holdings(&book, &account_of(&headers)).remove(&symbol) {
        Some(h) => Json(position_json(&mut book, &symbol, h)).into_response(),
        None => error(StatusCode::NOT_FOUND, 40410000, "position does not exist"),
    }
}

/// The paper account: 100,000 of cash at the start, moved by every fill.
async fn account(State(venue): State<PaperVenue>, headers: HeaderMap) -> Response {
    let account = account_of(&headers);
    let mut book = venue.book.lock().expect("book");
    let mut cash = Decimal::from(100_000);
    for f in book.fills.iter().filter(|f| f.account == account) {
        match f.side {
            Side::Buy => cash -= f.qty * f.price,
            Side::Sell => cash += f.qty * f.price,
        }
    }
    let held = holdings(&book, &account);
    let mut long = Decimal::ZERO;
    let mut short = Decimal::ZERO;
    for (symbol, h) in held {
        let value = h.qty * book.price(&symbol);
        if value.is_sign_positive() {
            long += value;
        } else {
            short += value;
        }
    }
    let equity = cash + long + short;
    Json(json!({
        "id": "paper-account", "account_number": "PA0000000", "status": "ACTIVE",
        "currency": "USD", "cash": cash.to_string(), "buying_power": cash.max(Decimal::ZERO).to_string(),
        "equity": equity.to_string(), "portfolio_value": equity.to_string(),
        "long_market_value": long.to_string(), "short_market_value": short.to_string(),
        "pattern_day_trader": false, "trading_blocked": false, "transfers_blocked": false,
        "account_blocked": false, "shorting_enabled": true, "multiplier": "1",
    }))
    .into_response()
}
