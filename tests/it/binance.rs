//! Binance.US behind the `Venue` seam: the client against the paper venue's Binance
//! dialect over real HTTP (signatures, every error code, clock resync, weights and
//! bans), then the OMS, the order sync and reconciliation on a Binance account beside
//! an Alpaca-dialect one.

use std::{io::Write, time::Duration};

use pulse_domain::{
    secrets::Secret,
    venue::{
        OrderRequest, OrderType, Side, TimeInForce, Venue, VenueError, binance::BinanceClient,
    },
};
use pulse_sims::paper::{PaperOptions, PaperVenue};
use rust_decimal::Decimal;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::{
    helpers::wait_until,
    lifecycle::{d, held, no_drift},
    oms::{API_SECRET, Desk, desk},
    platform_intents::{add_account, failed_with, insert_as_platform, reserved},
    reconcile::reconcile_account,
    security::member,
};

const KEY: &str = "BNTESTKEY";

fn secret(s: &str) -> Secret {
    pulse_domain::secrets::resolve_with("env:S", |_| Some(s.to_string()), || unreachable!())
        .unwrap()
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// A paper venue whose Binance dialect knows `KEY`, prices at 60,000 for BTCUSD; its
/// base URL.
async fn venue(options: PaperOptions) -> (PaperVenue, String) {
    let venue = PaperVenue::new(PaperOptions {
        fill_delay_ms: 0,
        price_step_cents: 0,
        spread_cents: 0,
        ..options
    });
    venue.register_key(KEY, API_SECRET);
    venue.set_price("BTCUSD", d("60000"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(venue.clone().serve(listener));
    (venue, base)
}

fn client(base: &str) -> BinanceClient {
    BinanceClient::new(http(), base, KEY, secret(API_SECRET))
}

fn btc(coid: &str, side: Side, qty: &str, limit: Option<&str>) -> OrderRequest {
    OrderRequest {
        symbol: "BTCUSD".into(),
        qty: d(qty),
        side,
        order_type: if limit.is_some() {
            OrderType::Limit
        } else {
            OrderType::Market
        },
        time_in_force: TimeInForce::Gtc,
        limit_price: limit.map(d),
        client_order_id: coid.into(),
    }
}

/// HMAC-SHA256 of `data` under `key`, hex, by OpenSSL.
fn openssl_hmac(key: &str, data: &str) -> String {
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", key])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    // "SHA2-256(stdin)= <hex>" (or "(stdin)= <hex>" on older OpenSSL).
    text.trim().rsplit(' ').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_signed_request_carries_the_key_and_a_signature_openssl_agrees_with_byte_for_byte() {
    // A bare socket, so the request is seen exactly as sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut raw = vec![0u8; 8192];
        let n = socket.read(&mut raw).await.unwrap();
        let body = json!({"symbol": "BTCUSD", "orderId": 7, "orderListId": -1, "clientOrderId": "pf-x",
            "price": "60000.00000000", "origQty": "0.00100000", "executedQty": "0.00000000",
            "cummulativeQuoteQty": "0.00000000", "status": "NEW", "timeInForce": "GTC", "type": "LIMIT",
            "side": "BUY", "time": 1_700_000_000_000_i64, "updateTime": 1_700_000_000_000_i64})
        .to_string();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&raw[..n]).into_owned()
    });
    let secret_text = "NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j";
    let found = BinanceClient::new(
        http(),
        &base,
        "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A",
        secret(secret_text),
    )
    .get_order_by_client_id("BTCUSD", "pf-x")
    .await
    .unwrap();
    assert_eq!((found.id.as_str(), found.qty), ("7", d("0.001")));
    let request = seen.await.unwrap();
    let line = request.lines().next().unwrap();
    assert!(line.starts_with("GET /api/v3/order?"), "{line}");
    assert!(
        request.to_lowercase().contains(
            "x-mbx-apikey: vmpuze6mv9sd5vnhk4hlwfsor6ake2zvsw0muigwcipy6utico14y7ju91dueh8a"
        ),
        "{request}"
    );
    let query = line
        .trim_start_matches("GET /api/v3/order?")
        .trim_end_matches(" HTTP/1.1");
    let (signed, signature) = query.split_once("&signature=").unwrap();
    assert!(
        signed.starts_with("symbol=BTCUSD&origClientOrderId=pf-x&timestamp=")
            && signed.contains("&recvWindow=5000"),
        "{signed}"
    );
    assert_eq!(signature, openssl_hmac(secret_text, signed));
    // And Binance's documented example, whose signature is published.
    assert_eq!(
        pulse_domain::venue::binance::signature(
            secret_text.as_bytes(),
            "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1&recvWindow=5000&timestamp=1499827319559"
        ),
        "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"
    );
}

#[tokio::test]
async fn orders_fill_and_are_read_back_by_symbol_as_orders_trades_and_balances() {
    let (venue, base) = venue(PaperOptions {
        partial_fill_qty: 0,
        ..Default::default()
    })
    .await;
    let client = client(&base);
    let placed = client
        .create_order(&btc("pf-b1-0", Side::Buy, "0.002", None))
        .await
        .unwrap();
    assert_eq!((placed.symbol.as_str(), placed.qty), ("BTCUSD", d("0.002")));
    wait_until("the order fills", Duration::from_secs(5), || async {
        venue.orders().iter().all(|o| o.is_terminal())
    })
    .await;
    let found = client
        .get_order_by_client_id("BTCUSD", "pf-b1-0")
        .await
        .unwrap();
    assert_eq!(found.id, placed.id);
    assert_eq!(
        (found.status, found.filled_qty, found.filled_avg_price),
        (
            pulse_domain::status::OrderStatus::Filled,
            d("0.002"),
            Some(d("60000"))
        )
    );
    assert_eq!(client.get_order("BTCUSD", &placed.id).await.unwrap(), found);
    // History is per symbol: ETHUSD has nothing, BTCUSD one trade keyed by its id.
    let symbols = vec!["BTCUSD".to_string(), "ETHUSD".to_string()];
    let page = client.fills(&symbols, None, None).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].key(), "BTCUSD:t1");
    assert_eq!(
        (page.items[0].qty, page.items[0].price),
        (d("0.002"), d("60000"))
    );
    let rest = client
        .fills(&symbols, None, page.next.as_deref())
        .await
        .unwrap();
    assert_eq!(
        (rest.items.len(), rest.next),
        (0, None),
        "then ETHUSD, the last"
    );
    let orders = client
        .orders_after(
            &symbols,
            chrono::Utc::now() - chrono::TimeDelta::hours(1),
            None,
        )
        .await
        .unwrap();
    assert_eq!(orders.items, vec![found.clone()]);
    let held = client.positions().await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].symbol.as_str(), held[0].qty),
        ("BTCUSD", d("0.002"))
    );

    // A resting limit: open, cancelled, and a second cancel is an unknown order.
    let resting = client
        .create_order(&btc("pf-b2-0", Side::Buy, "0.001", Some("50000")))
        .await
        .unwrap();
    let open = client.list_open_orders().await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].client_order_id, "pf-b2-0");
    client.cancel_order("BTCUSD", &resting.id).await.unwrap();
    assert_eq!(
        client
            .cancel_order("BTCUSD", &resting.id)
            .await
            .unwrap_err(),
        VenueError::NotFound
    );
    assert_eq!(
        client.get_order("BTCUSD", "999").await.unwrap_err(),
        VenueError::NotFound
    );
    // A quote is the book's, both sides.
    let quote = client.latest_quote("BTCUSD").await.unwrap();
    assert_eq!((quote.bid, quote.ask), (Some(d("60000")), Some(d("60000"))));
}

/// Orders sent at once by a process that has not read exchangeInfo yet read it once
/// (it weighs 20 and lists the whole exchange: read by each, it cost the cross-venue
/// benchmark half its throughput).
#[tokio::test]
async fn concurrent_orders_read_exchange_info_once() {
    let (venue, base) = venue(PaperOptions::default()).await;
    let client = client(&base);
    let orders: Vec<OrderRequest> = (0..20)
        .map(|i| btc(&format!("pf-c{i}-0"), Side::Buy, "0.001", Some("50000")))
        .collect();
    let placed =
        futures_util::future::join_all(orders.iter().map(|o| client.create_order(o))).await;
    assert!(placed.iter().all(Result::is_ok), "{placed:?}");
    assert_eq!(
        venue.binance_requests(""),
        1,
        "one public request: exchangeInfo, once"
    );
}

/// Requests as other Binance clients send them: parameters in the form body (signed
/// there), split between query and body, a DELETE with a body; all accepted.
#[tokio::test]
async fn the_paper_venue_takes_parameters_in_the_query_the_body_or_both_as_binance_does() {
    let (venue, base) = venue(PaperOptions::default()).await;
    let http = http();
    let now = || chrono::Utc::now().timestamp_millis();
    let sign =
        |params: &str| pulse_domain::venue::binance::signature(API_SECRET.as_bytes(), params);
    // All in the body, as python-binance posts.
    let body = format!(
        "symbol=BTCUSD&side=BUY&type=LIMIT&timeInForce=GTC&quantity=0.001&price=50000&newClientOrderId=body-1&timestamp={}",
        now()
    );
    let signed = format!("{body}&signature={}", sign(&body));
    let placed: serde_json::Value = http
        .post(format!("{base}/api/v3/order"))
        .header("X-MBX-APIKEY", KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(signed)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(placed["clientOrderId"], "body-1", "{placed}");
    // Split: the signature covers the query string, then the body, concatenated.
    let query = "symbol=BTCUSD&side=BUY&type=LIMIT&timeInForce=GTC";
    let body = format!(
        "quantity=0.001&price=50000&newClientOrderId=mixed-1&recvWindow=10000&timestamp={}",
        now()
    );
    let placed = http
        .post(format!("{base}/api/v3/order?{query}"))
        .header("X-MBX-APIKEY", KEY)
        .body(format!(
            "{body}&signature={}",
            sign(&format!("{query}{body}"))
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), 200, "{}", placed.text().await.unwrap());
    // A cancel with its parameters in the body.
    let body = format!(
        "symbol=BTCUSD&origClientOrderId=mixed-1&timestamp={}",
        now()
    );
    let cancelled: serde_json::Value = http
        .delete(format!("{base}/api/v3/order"))
        .header("X-MBX-APIKEY", KEY)
        .body(format!("{body}&signature={}", sign(&body)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled["status"], "CANCELED", "{cancelled}");
    assert_eq!(cancelled["origClientOrderId"], "mixed-1");
    // A signature over anything else than what was sent is refused.
    let body = format!("symbol=BTCUSD&origClientOrderId=body-1&timestamp={}", now());
    let forged = http
        .delete(format!("{base}/api/v3/order?symbol=ETHUSD"))
        .header("X-MBX-APIKEY", KEY)
        .body(format!("{body}&signature={}", sign(&body)))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);
    assert_eq!(
        forged.json::<serde_json::Value>().await.unwrap()["code"],
        -1022
    );
    assert_eq!(venue.orders().len(), 2);
}

#[tokio::test]
async fn every_binance_error_code_maps_to_its_outcome_and_filters_refuse_before_sending() {
    let (venue, base) = venue(PaperOptions {
        reject_symbols: vec!["ETHUSD".into()],
        ..Default::default()
    })
    .await;
    let client = client(&base);
    client
        .create_order(&btc("pf-e1-0", Side::Buy, "0.001", Some("50000")))
        .await
        .unwrap();
    // -2010 "Duplicate order sent."
    assert_eq!(
        client
            .create_order(&btc("pf-e1-0", Side::Buy, "0.001", Some("50000")))
            .await
            .unwrap_err(),
        VenueError::DuplicateClientOrderId
    );
    // -2010, any other reason: rejected, with the venue's words.
    let mut eth = btc("pf-e2-0", Side::Buy, "0.01", Some("3000"));
    eth.symbol = "ETHUSD".into();
    venue.set_price("ETHUSD", d("3000"));
    let rejected = client.create_order(&eth).await.unwrap_err();
    assert!(
        matches!(&rejected, VenueError::Rejected { reason } if reason.contains("-2010") && reason.contains("disabled")),
        "{rejected:?}"
    );
    // Spot: selling what the account does not hold.
    let short = client
        .create_order(&btc("pf-e3-0", Side::Sell, "0.001", Some("70000")))
        .await
        .unwrap_err();
    assert!(
        matches!(&short, VenueError::Rejected { reason } if reason.contains("insufficient balance")),
        "{short:?}"
    );
    // Filters, from exchangeInfo, before anything is sent.
    let sent = venue.binance_requests(KEY);
    for (order, why) in [
        (
            btc("pf-e4-0", Side::Buy, "0.000015", Some("50000")),
            "LOT_SIZE",
        ),
        (
            btc("pf-e5-0", Side::Buy, "0.001", Some("50000.005")),
            "PRICE_FILTER",
        ),
        (
            btc("pf-e6-0", Side::Buy, "0.0001", Some("50000")),
            "NOTIONAL",
        ),
    ] {
        let refused = client.create_order(&order).await.unwrap_err();
        assert!(
            matches!(&refused, VenueError::Rejected { reason } if reason.starts_with(why)),
            "{refused:?}"
        );
    }
    assert_eq!(venue.binance_requests(KEY), sent, "nothing was sent");
    // -2015 (an unknown key) and -1022 (a wrong secret): credentials refused.
    let stranger = BinanceClient::new(http(), &base, "nobody", secret("x"));
    assert_eq!(
        stranger.get_order("BTCUSD", "1").await.unwrap_err(),
        VenueError::Unauthorized
    );
    let forger = BinanceClient::new(http(), &base, KEY, secret("not-the-secret"));
    assert_eq!(
        forger.get_order("BTCUSD", "1").await.unwrap_err(),
        VenueError::Unauthorized
    );
    // -1021: the venue's clock runs 20 s ahead; the client resyncs and goes on.
    venue.set_clock_offset(20_000);
    let before = venue.binance_requests(KEY);
    let found = client
        .get_order_by_client_id("BTCUSD", "pf-e1-0")
        .await
        .unwrap();
    assert_eq!(found.client_order_id, "pf-e1-0");
    assert_eq!(
        venue.binance_requests(KEY) - before,
        2,
        "refused once, then accepted (the clock read is public)"
    );
    client.list_open_orders().await.unwrap();
    assert_eq!(venue.binance_requests(KEY) - before, 3, "no second resync");
    // 418: banned, for as long as the venue says.
    venue.ban(KEY, 90);
    let banned = client.list_open_orders().await.unwrap_err();
    assert!(
        matches!(banned, VenueError::Banned { retry_after } if retry_after > Duration::from_secs(80)),
        "{banned:?}"
    );
}

#[tokio::test]
async fn weight_past_the_limit_is_a_429_with_its_wait_and_5xx_is_an_unknown_outcome() {
    let (_, base) = venue(PaperOptions {
        binance_weight_per_minute: 25,
        ..Default::default()
    })
    .await;
    let client = client(&base);
    // allOrders weighs 20: the second is over 25.
    let symbols = vec!["BTCUSD".to_string()];
    let now = chrono::Utc::now();
    client.orders_after(&symbols, now, None).await.unwrap();
    let limited = client.orders_after(&symbols, now, None).await.unwrap_err();
    assert!(
        matches!(limited, VenueError::RateLimited { retry_after } if retry_after >= Duration::from_secs(1) && retry_after <= Duration::from_secs(60)),
        "{limited:?}"
    );
    let (_, base) = venue(PaperOptions {
        error_rate: 1.0,
        ..Default::default()
    })
    .await;
    let failing = self::client(&base);
    let unknown = failing
        .create_order(&btc("pf-u1-0", Side::Buy, "0.001", Some("50000")))
        .await
        .unwrap_err();
    assert!(matches!(unknown, VenueError::Unavailable(_)), "{unknown:?}");
}

/// A desk (Alpaca-dialect paper account, default for `paper`) with a Binance account,
/// default for `binance`, on the same paper venue's Binance dialect; both with 10,000.
async fn binance_desk(options: PaperOptions) -> (Desk, Uuid) {
    let mut desk = desk(options, 10_000).await;
    // Stopped before the account exists: a stream listener that found it without a URL
    // for its venue would retry in a loop, and stopping that mid-transaction can hand
    // the pool a connection still inside it.
    desk.halt().await;
    desk.venue.register_key(KEY, API_SECRET);
    for (symbol, price) in [
        ("BTCUSD", "60000"),
        ("BTC/USD", "60000"),
        ("SOLUSD", "150"),
        ("SOL/USD", "150"),
        ("ETHUSD", "3000"),
    ] {
        desk.venue.set_price(symbol, d(price));
    }
    let account = add_account(&desk, "binance", KEY, 10_000).await;
    sqlx::query("UPDATE trading_accounts SET is_default = true WHERE id = ANY($1)")
        .bind(vec![desk.account, account])
        .execute(&desk.db.pool)
        .await
        .unwrap();
    member(&desk.db, desk.tenant, "arb-bot").await;
    let mut services = desk.services();
    services
        .venue_urls
        .insert("binance".into(), desk.base.clone());
    desk.start_worker_with(services).await;
    (desk, account)
}

/// What the scheduler's order sync does: a sync of every account with orders to follow
/// (Binance accounts are followed by polling).
async fn poll(desk: &Desk) {
    sqlx::query("SELECT request_order_syncs(1)")
        .execute(&desk.db.pool)
        .await
        .unwrap();
}

/// (status, filled) of the order of `intent` at `venue`.
async fn leg_at(desk: &Desk, intent: Uuid, venue: &str) -> (String, Decimal) {
    sqlx::query_as(
        "SELECT status, filled_quantity FROM orders WHERE intent_id = $1 AND venue_id = $2",
    )
    .bind(intent)
    .bind(venue)
    .fetch_one(&desk.db.pool)
    .await
    .unwrap()
}

/// One desk for the cross-venue paths (desks are heavy): filled on both venues, a
/// rejected Binance leg unwound on the other venue, a lost answer looked up, and
/// reconciliation of the Binance account.
#[tokio::test]
async fn a_seed_000_cross_exchange_intent_trades_on_alpaca_and_binance_and_reconciliation_follows_binance()
 {
    let (desk, binance) = binance_desk(PaperOptions {
        drop_symbols: vec!["ETHUSD".into()],
        ..held()
    })
    .await;
    // 1. Buy on Binance, sell on the Alpaca-dialect venue, both filled.
    let arb = insert_as_platform(
        &desk,
        json!({
            "buy_leg": {"venue": "binance", "symbol": "BTC/USD", "side": "buy", "size": 0.001, "price": 60000},
            "sell_leg": {"venue": "paper", "symbol": "BTC/USD", "side": "sell", "size": 0.001, "price": 60000},
        }),
    )
    .await;
    let (status, reason) = desk.wait_for(arb, &["submitted", "failed"]).await;
    assert_eq!(status, "submitted", "{reason:?}");
    desk.settle().await;
    assert_eq!(reserved(&desk, binance).await, d("60"));
    assert!(reserved(&desk, desk.account).await > Decimal::ZERO);
    let orders = desk.venue.orders();
    let coids: Vec<(&str, &str)> = orders
        .iter()
        .map(|o| (o.symbol.as_str(), o.client_order_id.as_str()))
        .collect();
    assert_eq!(coids.len(), 2, "{coids:?}");
    for (symbol, coid) in coids {
        assert!(desk.venue.fill(coid, d("0.001"), d("60000")), "{symbol}");
    }
    poll(&desk).await;
    let (status, reason) = desk.wait_for(arb, &["filled", "failed"]).await;
    assert_eq!(status, "filled", "{reason:?}");
    desk.settle().await;
    assert_eq!(
        leg_at(&desk, arb, "binance").await,
        ("filled".into(), d("0.001"))
    );
    assert_eq!(
        leg_at(&desk, arb, "paper").await,
        ("filled".into(), d("0.001"))
    );
    let legs: Vec<(Uuid, String, String, Decimal)> = sqlx::query_as(
        "SELECT account_id, symbol, side, quantity FROM position_legs WHERE closed_at IS NULL ORDER BY symbol",
    )
    .fetch_all(&desk.db.pool)
    .await
    .unwrap();
    assert_eq!(
        legs,
        vec![
            (desk.account, "BTC/USD".into(), "short".into(), d("0.001")),
            (binance, "BTCUSD".into(), "long".into(), d("0.001")),
        ]
    );

    // 2. A sell on Binance of what the account does not hold is rejected there; the
    //    Alpaca-dialect leg, accepted, is cancelled on its own venue.
    let short = insert_as_platform(
        &desk,
        json!({
            "buy_leg": {"venue": "paper", "symbol": "SOL/USD", "side": "buy", "size": 1, "price": 150},
            "sell_leg": {"venue": "binance", "symbol": "SOL/USD", "side": "sell", "size": 1, "price": 150},
        }),
    )
    .await;
    failed_with(&desk, short, "insufficient balance").await;
    desk.settle().await;
    assert_eq!(leg_at(&desk, short, "paper").await.0, "cancelled");
    let at_venue: Vec<String> = desk
        .venue
        .orders()
        .into_iter()
        .filter(|o| o.symbol.starts_with("SOL"))
        .map(|o| format!("{} {}", o.symbol, o.status))
        .collect();
    assert_eq!(
        at_venue,
        vec!["SOL/USD canceled".to_string()],
        "nothing reached Binance's book"
    );

    // 3. The answer to a Binance order is lost: looked up, never sent twice.
    let lost = insert_as_platform(
        &desk,
        json!({"buy_leg": {"venue": "binance", "symbol": "ETH/USD", "side": "buy", "size": 0.01, "price": 3000}}),
    )
    .await;
    let (status, reason) = desk.wait_for(lost, &["submitted", "failed"]).await;
    assert_eq!(status, "submitted", "{reason:?}");
    let eth = desk
        .venue
        .orders()
        .into_iter()
        .filter(|o| o.symbol == "ETHUSD")
        .count();
    assert_eq!(eth, 1);

    // 4. Reconciliation of the Binance account: an order placed behind the fleet's back
    //    and filled, found by symbol, imported, its fill applied.
    let stranger = client(&desk.base);
    let mut sol = btc("manual-sol-1", Side::Buy, "0.1", None);
    sol.symbol = "SOLUSD".into();
    stranger.create_order(&sol).await.unwrap();
    assert!(desk.venue.fill("manual-sol-1", d("0.1"), d("150")));
    let (ok, found, fixed, _) = reconcile_account(&desk, binance).await;
    assert!(ok);
    assert_eq!(found["unknown_order"], 1, "{found}");
    assert_eq!(fixed["unknown_order"], 1, "{fixed}");
    assert_eq!(found["missing_fill"], 1, "{found}");
    let imported: (String, Decimal) = sqlx::query_as(
        "SELECT origin, filled_quantity FROM orders WHERE client_order_id = 'manual-sol-1'",
    )
    .fetch_one(&desk.db.pool)
    .await
    .unwrap();
    assert_eq!(imported, ("external".into(), d("0.1")));
    no_drift(&desk).await;
}

/// A ban of the public endpoints (an IP's) refuses the quote a market leg is priced at:
/// the intent waits for the venue, it is not refused for want of a quote.
#[tokio::test]
async fn a_quote_refused_by_a_ban_keeps_a_market_intent_waiting_not_refused() {
    let (desk, _) = binance_desk(held()).await;
    desk.venue.ban("", 300);
    let id = insert_as_platform(
        &desk,
        json!({"buy_leg": {"venue": "binance", "symbol": "BTC/USD", "side": "buy", "size": 0.001, "order_type": "market"}}),
    )
    .await;
    wait_until("the OMS tried twice", Duration::from_secs(20), || async {
        desk.db
            .count(
                "SELECT count(*) FROM fleet.jobs WHERE job_name = 'execute_intent'
                 AND jsonb_array_length(errors) >= 2",
            )
            .await
            == 1
    })
    .await;
    let (status, reason) = desk.intent_state(id).await;
    assert_eq!(status, "pending", "{reason:?}");
    let errors: serde_json::Value =
        sqlx::query_scalar("SELECT errors FROM fleet.jobs WHERE job_name = 'execute_intent'")
            .fetch_one(&desk.db.pool)
            .await
            .unwrap();
    assert!(
        errors.to_string().contains("no quote for BTCUSD just now"),
        "{errors}"
    );
    assert!(desk.venue.orders().is_empty());
}

#[tokio::test]
async fn a_418_stops_every_request_of_the_account_until_the_ban_ends_and_alerts_once() {
    let (desk, binance) = binance_desk(held()).await;
    desk.venue.ban(KEY, 300);
    let first = insert_as_platform(
        &desk,
        json!({"buy_leg": {"venue": "binance", "symbol": "BTC/USD", "side": "buy", "size": 0.001, "price": 60000}}),
    )
    .await;
    // The order went out, the venue said 418: the ban is recorded, the job waits.
    wait_until("the ban is recorded", Duration::from_secs(20), || async {
        desk.db
            .count("SELECT count(*) FROM venue_request_budgets WHERE banned_until > now() + interval '200 seconds'")
            .await
            == 1
    })
    .await;
    let sent = desk.venue.binance_requests(KEY);
    assert!(sent >= 1);
    // Another intent on the account (another symbol: the first holds its entry lock):
    // its budget refuses, nothing reaches the venue.
    let second = insert_as_platform(
        &desk,
        json!({"buy_leg": {"venue": "binance", "symbol": "ETH/USD", "side": "buy", "size": 0.01, "price": 3000}}),
    )
    .await;
    wait_until(
        "both intents wait for the ban",
        Duration::from_secs(20),
        || async {
            desk.db
                .count(
                    "SELECT count(*) FROM fleet.jobs WHERE job_name = 'execute_intent'
                 AND state = 'available' AND run_at > now() + interval '200 seconds'",
                )
                .await
                == 2
        },
    )
    .await;
    assert_eq!(
        desk.venue.binance_requests(KEY),
        sent,
        "no request during the ban"
    );
    for id in [first, second] {
        let (status, reason) = desk.intent_state(id).await;
        assert!(
            ["pending", "submitted"].contains(&status.as_str()),
            "waiting, not failed: {status} {reason:?}"
        );
    }
    assert!(desk.venue.orders().is_empty());
    let alerts: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM alerts WHERE tenant_id = $1 AND kind = 'system'")
            .bind(desk.tenant)
            .fetch_all(&desk.db.pool)
            .await
            .unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert!(alerts[0]["title"].as_str().unwrap().contains("banned"));
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_events WHERE event_type = 'venue_ban' AND subject_id = $1",
    )
    .bind(binance.to_string())
    .fetch_one(&desk.db.pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    // Operators see it on the console's Trading page (its read model).
    let accounts = pulse_fleet::web::read_model::accounts(&desk.db.pool)
        .await
        .unwrap();
    let banned: Vec<_> = accounts
        .iter()
        .filter(|a| a.venue_banned_until.is_some())
        .map(|a| a.account_id)
        .collect();
    assert_eq!(banned, vec![binance]);
}
