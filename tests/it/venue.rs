//! The Alpaca client against the paper venue, over real HTTP: the dialect, and the
//! outcome classification the OMS relies on.

use std::time::Duration;

use crate::helpers::wait_until;
use pulse_domain::{
    secrets::Secret,
    status::OrderStatus,
    venue::{OrderRequest, OrderType, Side, Venue, VenueError, alpaca::AlpacaClient},
};
use pulse_sims::paper::{PaperOptions, PaperVenue};
use rust_decimal::Decimal;

async fn venue(options: PaperOptions) -> (PaperVenue, AlpacaClient) {
    let (venue, client, _) = venue_at(options).await;
    (venue, client)
}

/// A paper venue whose market orders fill as they are accepted (the answer still
/// says `new`; the fill is in the order and the FILL activities right after).
async fn venue_at(options: PaperOptions) -> (PaperVenue, AlpacaClient, String) {
    let venue = PaperVenue::new(PaperOptions {
        fill_delay_ms: 0,
        ..options
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(venue.clone().serve(listener));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let client = AlpacaClient::new(http, &base, "PKTEST", secret("paper-secret"));
    (venue, client, base)
}

fn secret(s: &str) -> Secret {
    pulse_domain::secrets::resolve_with("env:S", |_| Some(s.to_string()), || unreachable!())
        .unwrap()
}

fn order(
    client_order_id: &str,
    qty: i64,
    order_type: OrderType,
    limit: Option<Decimal>,
) -> OrderRequest {
    OrderRequest {
        symbol: "AAPL".into(),
        qty: Decimal::from(qty),
        side: Side::Buy,
        order_type,
        time_in_force: pulse_domain::venue::TimeInForce::Day,
        limit_price: limit,
        client_order_id: client_order_id.into(),
    }
}

#[tokio::test]
async fn a_market_order_is_accepted_filled_and_found_by_its_client_order_id() {
    let (_, client) = venue(PaperOptions {
        partial_fill_qty: 5,
        fill_interval_ms: 10,
        ..Default::default()
    })
    .await;
    let placed = client
        .create_order(&order("pf-i1-0", 10, OrderType::Market, None))
        .await
        .unwrap();
    // Alpaca's answer: `new`, nothing filled yet; the fills come after.
    assert_eq!(placed.status, OrderStatus::Accepted);
    assert_eq!(placed.filled_qty, Decimal::ZERO);
    wait_until("both parts fill", Duration::from_secs(5), || async {
        client
            .get_order_by_client_id("AAPL", "pf-i1-0")
            .await
            .unwrap()
            .status
            == OrderStatus::Filled
    })
    .await;
    let found = client
        .get_order_by_client_id("AAPL", "pf-i1-0")
        .await
        .unwrap();
    assert_eq!(found.id, placed.id);
    assert_eq!(found.filled_qty, Decimal::from(10));
    assert_eq!(
        client
            .get_order("AAPL", &placed.id)
            .await
            .unwrap()
            .client_order_id,
        "pf-i1-0"
    );
    let fills = client.fills(&[], None, None).await.unwrap().items;
    assert_eq!(fills.len(), 2, "two partial fills");
    // Each keyed by the order and its cumulative quantity after it (5, then 10).
    assert_eq!(
        (fills[0].key(), fills[1].key()),
        (format!("{}:5", placed.id), format!("{}:10", placed.id))
    );
    assert_eq!(fills[0].order_id, placed.id);
    let after_first = client
        .fills(&[], None, Some(&fills[0].id))
        .await
        .unwrap()
        .items;
    assert_eq!(
        after_first,
        vec![fills[1].clone()],
        "page_token pages after that fill"
    );
}

#[tokio::test]
async fn a_reused_client_order_id_is_rejected_and_unknown_ids_are_not_found() {
    let (venue, client) = venue(PaperOptions::default()).await;
    client
        .create_order(&order("pf-i2-0", 1, OrderType::Market, None))
        .await
        .unwrap();
    let again = client
        .create_order(&order("pf-i2-0", 1, OrderType::Market, None))
        .await
        .unwrap_err();
    // Alpaca's 422 "client_order_id must be unique", in the OMS's terms.
    assert_eq!(again, VenueError::DuplicateClientOrderId);
    assert_eq!(venue.orders().len(), 1);
    assert_eq!(
        client
            .get_order_by_client_id("AAPL", "nope")
            .await
            .unwrap_err(),
        VenueError::NotFound
    );
    assert_eq!(
        client.get_order("AAPL", "nope").await.unwrap_err(),
        VenueError::NotFound
    );
}

#[tokio::test]
async fn open_limit_orders_are_listed_and_cancelable_and_filled_ones_are_not() {
    let (_, client) = venue(PaperOptions::default()).await;
    let resting = client
        .create_order(&order(
            "pf-i3-0",
            5,
            OrderType::Limit,
            Some(Decimal::new(1, 0)),
        ))
        .await
        .unwrap();
    // Alpaca answers `new`: working at the venue.
    assert_eq!(resting.status, OrderStatus::Accepted);
    let filled = client
        .create_order(&order("pf-i3-1", 5, OrderType::Market, None))
        .await
        .unwrap();
    let open = client.list_open_orders().await.unwrap();
    assert_eq!(
        open.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
        vec![resting.id.as_str()]
    );
    client.cancel_order("AAPL", &resting.id).await.unwrap();
    assert_eq!(
        client.get_order("AAPL", &resting.id).await.unwrap().status,
        OrderStatus::Cancelled
    );
    let refused = client.cancel_order("AAPL", &filled.id).await.unwrap_err();
    assert!(matches!(refused, VenueError::NotCancelable), "{refused:?}");
}

#[tokio::test]
async fn past_the_rate_limit_the_venue_answers_429_with_its_reset() {
    let (_, client) = venue(PaperOptions {
        rate_limit_per_minute: 3,
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            client.get_order("AAPL", "x").await.unwrap_err(),
            VenueError::NotFound
        );
    }
    let limited = client.get_order("AAPL", "x").await.unwrap_err();
    let VenueError::RateLimited { retry_after } = limited else {
        panic!("expected 429, got {limited:?}");
    };
    assert!(retry_after <= Duration::from_secs(60) && retry_after >= Duration::from_secs(1));
}

#[tokio::test]
async fn an_accepted_order_whose_answer_is_lost_is_unknown_then_found_and_never_duplicated() {
    let (venue, client) = venue(PaperOptions {
        drop_rate: 1.0,
        ..Default::default()
    })
    .await;
    let lost = client
        .create_order(&order("pf-i5-0", 2, OrderType::Market, None))
        .await
        .unwrap_err();
    assert!(matches!(lost, VenueError::Unavailable(_)), "{lost:?}");
    // The OMS looks it up instead of resending...
    let found = client
        .get_order_by_client_id("AAPL", "pf-i5-0")
        .await
        .unwrap();
    assert_eq!(found.qty, Decimal::from(2));
    // ...and a blind resend could not duplicate it anyway.
    let resend = client
        .create_order(&order("pf-i5-0", 2, OrderType::Market, None))
        .await
        .unwrap_err();
    assert!(
        matches!(resend, VenueError::DuplicateClientOrderId),
        "{resend:?}"
    );
    assert_eq!(venue.orders().len(), 1);
}

#[tokio::test]
async fn a_5xx_does_nothing_and_is_unknown_and_bad_credentials_are_refused() {
    let (venue, client) = venue(PaperOptions {
        error_rate: 1.0,
        ..Default::default()
    })
    .await;
    let failed = client
        .create_order(&order("pf-i6-0", 1, OrderType::Market, None))
        .await
        .unwrap_err();
    assert!(matches!(failed, VenueError::Unavailable(_)), "{failed:?}");
    assert!(venue.orders().is_empty());
    let (_, _, base) = venue_at(PaperOptions::default()).await;
    let anonymous = AlpacaClient::new(reqwest::Client::new(), &base, "", secret(""));
    assert_eq!(
        anonymous.get_order("AAPL", "x").await.unwrap_err(),
        VenueError::Unauthorized
    );
}

#[tokio::test]
async fn the_client_never_prints_its_secret() {
    let (_, client) = venue(PaperOptions::default()).await;
    assert!(!format!("{client:?}").contains("paper-secret"));
}

#[tokio::test]
async fn the_paper_venue_takes_decimals_as_numbers_or_strings_as_alpaca_does() {
    // An official Alpaca client sent `"qty": 2` and got 422 "expected a Decimal".
    let (venue, _, base) = venue_at(PaperOptions::default()).await;
    let post = |body: serde_json::Value| {
        reqwest::Client::new()
            .post(format!("{base}/v2/orders"))
            .header("APCA-API-KEY-ID", "PKTEST")
            .header("APCA-API-SECRET-KEY", "paper-secret")
            .json(&body)
            .send()
    };
    for (coid, qty, limit) in [
        ("num-0", serde_json::json!(2), serde_json::json!(150.25)),
        ("str-0", serde_json::json!("2"), serde_json::json!("150.25")),
        ("mix-0", serde_json::json!(1.5), serde_json::json!("150")),
    ] {
        let answer = post(serde_json::json!({
            "symbol": "AAPL", "qty": qty, "side": "buy", "type": "limit",
            "time_in_force": "day", "limit_price": limit, "client_order_id": coid,
        }))
        .await
        .unwrap();
        assert_eq!(
            answer.status(),
            200,
            "{coid}: {}",
            answer.text().await.unwrap()
        );
    }
    assert_eq!(venue.orders().len(), 3);
    let refused = post(serde_json::json!({
        "symbol": "AAPL", "qty": true, "side": "buy", "type": "market",
        "time_in_force": "day", "client_order_id": "bad-0",
    }))
    .await
    .unwrap();
    assert_eq!(refused.status(), 422, "a boolean is no decimal");
}

/// A GET on the paper venue with the key pair, as JSON.
async fn get_json(base: &str, path_and_query: &str) -> (u16, serde_json::Value) {
    let answer = reqwest::Client::new()
        .get(format!("{base}{path_and_query}"))
        .header("APCA-API-KEY-ID", "PKTEST")
        .header("APCA-API-SECRET-KEY", "paper-secret")
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap())
}

#[tokio::test]
async fn positions_follow_the_fills_and_the_client_reads_them_in_the_oms_terms() {
    let (venue, client, base) = venue_at(PaperOptions::default()).await;
    venue.set_price("AAPL", Decimal::from(100));
    client
        .create_order(&order("pos-0", 10, OrderType::Market, None))
        .await
        .unwrap();
    venue.set_price("AAPL", Decimal::from(110));
    client
        .create_order(&order("pos-1", 10, OrderType::Market, None))
        .await
        .unwrap();
    let mut sell = order("pos-2", 5, OrderType::Market, None);
    sell.side = Side::Sell;
    client.create_order(&sell).await.unwrap();

    let fills = client.fills(&[], None, None).await.unwrap().items;
    let bought: Decimal = fills
        .iter()
        .filter(|f| f.side == Side::Buy)
        .map(|f| f.qty * f.price)
        .sum();
    let held = client.positions().await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].symbol, "AAPL");
    assert_eq!(held[0].qty, Decimal::from(15), "20 bought, 5 sold");
    // Average cost of what was bought; a sale does not move it.
    assert_eq!(
        held[0].avg_entry_price,
        (bought / Decimal::from(20)).round_dp(6)
    );

    let (status, one) = get_json(&base, "/v2/positions/AAPL").await;
    assert_eq!((status, one["side"].as_str()), (200, Some("long")));
    let (status, none) = get_json(&base, "/v2/positions/MSFT").await;
    assert_eq!((status, none["code"].as_i64()), (404, Some(40410000)));
    let (status, account) = get_json(&base, "/v2/account").await;
    assert_eq!((status, account["status"].as_str()), (200, Some("ACTIVE")));
    let sold: Decimal = fills
        .iter()
        .filter(|f| f.side == Side::Sell)
        .map(|f| f.qty * f.price)
        .sum();
    assert_eq!(
        account["cash"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        Decimal::from(100_000) - bought + sold
    );
}

#[tokio::test]
async fn orders_and_fills_are_listed_with_alpacas_filters_and_newest_first() {
    let (_, client, base) = venue_at(PaperOptions::default()).await;
    client
        .create_order(&order("list-0", 1, OrderType::Market, None))
        .await
        .unwrap();
    let resting = client
        .create_order(&order("list-1", 1, OrderType::Limit, Some(Decimal::ONE)))
        .await
        .unwrap();
    client
        .create_order(&order("list-2", 1, OrderType::Market, None))
        .await
        .unwrap();
    let ids = |list: &serde_json::Value| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|o| o["client_order_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, open) = get_json(&base, "/v2/orders").await;
    assert_eq!(ids(&open), vec!["list-1"], "open by default");
    assert_eq!(open[0]["id"].as_str(), Some(resting.id.as_str()));
    let (_, closed) = get_json(&base, "/v2/orders?status=closed").await;
    assert_eq!(ids(&closed), vec!["list-2", "list-0"], "newest first");
    let (_, all) = get_json(&base, "/v2/orders?status=all&direction=asc&limit=2").await;
    assert_eq!(ids(&all), vec!["list-0", "list-1"]);
    let (status, _) = get_json(&base, "/v2/orders?direction=sideways").await;
    assert_eq!(status, 422);

    let (_, newest_first) = get_json(&base, "/v2/account/activities/FILL").await;
    let (_, oldest_first) = get_json(&base, "/v2/account/activities/FILL?direction=asc").await;
    let first = |v: &serde_json::Value, i: usize| v[i]["id"].as_str().unwrap().to_string();
    assert_eq!(newest_first.as_array().unwrap().len(), 2);
    assert_eq!(first(&newest_first, 0), first(&oldest_first, 1));
    let after = format!(
        "/v2/account/activities/FILL?page_size=1&page_token={}",
        first(&newest_first, 0)
    );
    let (_, next_page) = get_json(&base, &after).await;
    assert_eq!(first(&next_page, 0), first(&newest_first, 1));
}

#[tokio::test]
async fn a_resting_limit_fills_at_its_limit_once_the_market_crosses_it() {
    let (venue, client) = venue(PaperOptions {
        price_step_cents: 0,
        fill_interval_ms: 10,
        ..Default::default()
    })
    .await;
    venue.set_price("AAPL", Decimal::from(100));
    let resting = client
        .create_order(&order(
            "lim-0",
            3,
            OrderType::Limit,
            Some(Decimal::from(99)),
        ))
        .await
        .unwrap();
    assert_eq!(resting.status, OrderStatus::Accepted);
    // It rests while the market is above its limit.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        client.get_order("AAPL", &resting.id).await.unwrap().status,
        OrderStatus::Accepted
    );
    venue.set_price("AAPL", Decimal::from(98));
    wait_until("the limit fills", Duration::from_secs(5), || async {
        client.get_order("AAPL", &resting.id).await.unwrap().status == OrderStatus::Filled
    })
    .await;
    let filled = client.get_order("AAPL", &resting.id).await.unwrap();
    assert_eq!(filled.filled_avg_price, Some(Decimal::from(99)));
}

#[tokio::test]
async fn day_orders_expire_when_the_simulated_session_ends_and_gtc_orders_do_not() {
    let (_, client) = venue(PaperOptions {
        session_secs: 1,
        hold_fills: true,
        ..Default::default()
    })
    .await;
    let day = client
        .create_order(&order("day-0", 1, OrderType::Market, None))
        .await
        .unwrap();
    let mut gtc = order("gtc-0", 1, OrderType::Limit, Some(Decimal::from(1)));
    gtc.time_in_force = pulse_domain::venue::TimeInForce::Gtc;
    let gtc = client.create_order(&gtc).await.unwrap();
    wait_until("the session ends", Duration::from_secs(5), || async {
        client.get_order("AAPL", &day.id).await.unwrap().status == OrderStatus::Expired
    })
    .await;
    assert_eq!(
        client.get_order("AAPL", &gtc.id).await.unwrap().status,
        OrderStatus::Accepted
    );
}

#[tokio::test]
async fn the_trade_stream_authenticates_and_tells_each_account_only_its_own_updates() {
    let (venue, client, base) = venue_at(PaperOptions {
        hold_fills: true,
        ..Default::default()
    })
    .await;
    let other = AlpacaClient::new(reqwest::Client::new(), &base, "PKOTHER", secret("s"));
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let listening = tokio::spawn(async move { client.stream_updates(tx).await });
    assert!(matches!(
        rx.recv().await,
        Some(pulse_domain::venue::StreamSignal::Connected)
    ));
    let theirs = other
        .create_order(&order("theirs-0", 1, OrderType::Market, None))
        .await
        .unwrap();
    assert!(venue.fill("theirs-0", Decimal::ONE, Decimal::from(100)));
    let mine = AlpacaClient::new(reqwest::Client::new(), &base, "PKTEST", secret("s"));
    let placed = mine
        .create_order(&order("mine-0", 2, OrderType::Market, None))
        .await
        .unwrap();
    assert!(venue.fill("mine-0", Decimal::ONE, Decimal::new(10025, 2)));
    let mut updates = vec![];
    while updates.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
            Ok(Some(pulse_domain::venue::StreamSignal::Update(u))) => updates.push(*u),
            other => panic!("no update: {other:?}"),
        }
    }
    assert!(
        updates.iter().all(|u| u.order.id == placed.id),
        "{updates:?}"
    );
    assert_ne!(placed.id, theirs.id);
    assert_eq!(updates[0].event, pulse_domain::venue::UpdateKind::New);
    let fill = updates[1].fill.as_ref().expect("a fill");
    assert_eq!(
        updates[1].event,
        pulse_domain::venue::UpdateKind::PartialFill
    );
    assert_eq!(
        (fill.qty, fill.price),
        (Decimal::ONE, Decimal::new(10025, 2))
    );
    assert_eq!(fill.key(), format!("{}:1", placed.id));
    // A dropped stream ends the listener with an error, for it to reconnect.
    venue.drop_streams();
    let ended = tokio::time::timeout(Duration::from_secs(5), listening)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(ended, Err(VenueError::Unavailable(_))),
        "{ended:?}"
    );
}
