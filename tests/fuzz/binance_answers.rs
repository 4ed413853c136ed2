//! The Binance.US client against a server that answers anything: any status (429 and
//! 418 with any `Retry-After`), any body, Binance-shaped or not, for every call the
//! OMS, the sync and reconciliation make. Nothing may panic; an answer that is not what
//! Binance sends is an error, never an order, fill or position made up from it.

use std::sync::{Arc, Mutex, OnceLock};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, response::IntoResponse};
use proptest::prelude::*;
use pulse_domain::{
    secrets::Secret,
    venue::{OrderRequest, OrderType, Side, TimeInForce, Venue, binance::BinanceClient},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// (status, Retry-After, body) of every answer; exchangeInfo always answers one
/// symbol, so that orders get as far as being sent.
type Answer = Arc<Mutex<(u16, String, Vec<u8>)>>;

async fn answer(
    State(a): State<Answer>,
    uri: axum::http::Uri,
    _body: Bytes,
) -> axum::response::Response {
    if uri.path() == "/api/v3/exchangeInfo" {
        return axum::Json(json!({"symbols": [{"symbol": "BTCUSD", "status": "TRADING",
            "baseAsset": "BTC", "quoteAsset": "USD", "filters": [
                {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000", "stepSize": "0.00001000"},
                {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000", "tickSize": "0.01"}]}]}))
        .into_response();
    }
    let (status, retry, body) = a.lock().unwrap().clone();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        [
            ("content-type", "application/json".to_string()),
            ("retry-after", retry),
        ],
        body,
    )
        .into_response()
}

fn server() -> &'static (tokio::runtime::Runtime, Answer, BinanceClient) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, Answer, BinanceClient)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let a: Answer = Arc::new(Mutex::new((200, "1".into(), b"{}".to_vec())));
        let (rt, base) = crate::serve(Router::new().fallback(answer).with_state(a.clone()));
        let client = BinanceClient::new(
            reqwest::Client::new(),
            &base,
            "BNFUZZ",
            Secret::new("fuzz-secret".into()),
        );
        (rt, a, client)
    })
}

fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| json!(n.to_string())),
        any::<f64>().prop_map(|f| json!(f.to_string())),
        Just(json!("1e400")),
        Just(json!("-0.00000001")),
        Just(json!("79228162514264337593543950336")),
        Just(json!(null)),
        any::<String>().prop_map(Value::String),
    ];
    let time = prop_oneof![
        any::<i64>().prop_map(|t| json!(t)),
        Just(json!(1_764_547_200_000_i64)),
        Just(json!("soon"))
    ];
    let status = prop_oneof![
        Just("NEW"),
        Just("FILLED"),
        Just("PARTIALLY_FILLED"),
        Just("CANCELED"),
        Just("EXPIRED_IN_MATCH"),
        Just("WEIRD")
    ];
    let order = (number.clone(), number.clone(), number.clone(), status, any::<i64>(), time.clone())
        .prop_map(|(qty, executed, quote, status, id, time)| {
            json!({"symbol": "BTCUSD", "orderId": id, "clientOrderId": "pf0-0", "price": "60000.00",
                   "origQty": qty, "executedQty": executed, "cummulativeQuoteQty": quote, "status": status,
                   "timeInForce": "GTC", "type": "LIMIT", "side": "BUY", "time": time, "updateTime": time})
        });
    let trade =
        (number.clone(), number.clone(), any::<i64>(), time).prop_map(|(qty, price, id, time)| {
            json!({"symbol": "BTCUSD", "id": id, "orderId": 1, "price": price, "qty": qty,
                   "time": time, "isBuyer": true})
        });
    let account = (number.clone(), number.clone()).prop_map(|(free, locked)| {
        json!({"balances": [{"asset": "BTC", "free": free, "locked": locked}, {"asset": "USD", "free": "1", "locked": "0"}]})
    });
    let book = (number.clone(), number)
        .prop_map(|(bid, ask)| json!({"symbol": "BTCUSD", "bidPrice": bid, "askPrice": ask}));
    let error =
        (any::<i64>(), any::<String>()).prop_map(|(code, msg)| json!({"code": code, "msg": msg}));
    prop_oneof![
        order.clone().prop_map(|o| serde_json::to_vec(&o).unwrap()),
        prop::collection::vec(order, 0..4).prop_map(|o| serde_json::to_vec(&o).unwrap()),
        prop::collection::vec(trade, 0..4).prop_map(|t| serde_json::to_vec(&t).unwrap()),
        account.prop_map(|a| serde_json::to_vec(&a).unwrap()),
        book.prop_map(|b| serde_json::to_vec(&b).unwrap()),
        error.prop_map(|e| serde_json::to_vec(&e).unwrap()),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_binance_call_survives_any_answer(
        status in prop_oneof![Just(200u16), Just(400), Just(401), Just(418), Just(429), Just(500), Just(503), 100u16..600],
        retry in prop_oneof![Just("1".to_string()), Just("-5".into()), Just("1e308".into()), Just("NaN".into()), any::<String>()],
        body in bodies(),
    ) {
        let (rt, a, client) = server();
        *a.lock().unwrap() = (status, retry.chars().filter(|c| !c.is_control()).collect(), body);
        rt.block_on(async {
            let order = OrderRequest {
                symbol: "BTCUSD".into(),
                qty: Decimal::new(1, 3),
                side: Side::Buy,
                order_type: OrderType::Limit,
                time_in_force: TimeInForce::Gtc,
                limit_price: Some(Decimal::new(60_000, 0)),
                client_order_id: "pf0-0".into(),
            };
            if let Ok(o) = client.create_order(&order).await {
                prop_assert!(o.filled_qty >= Decimal::ZERO && o.filled_qty <= o.qty, "{o:?}");
            }
            let _ = client.get_order_by_client_id("BTCUSD", "pf0-0").await;
            let _ = client.get_order("BTCUSD", "1").await;
            let _ = client.cancel_order("BTCUSD", "1").await;
            let _ = client.list_open_orders().await;
            if let Ok(q) = client.latest_quote("BTCUSD").await {
                prop_assert!(q.ask.is_none_or(|p| p > Decimal::ZERO) && q.bid.is_none_or(|p| p > Decimal::ZERO), "{q:?}");
            }
            let symbols = vec!["BTCUSD".to_string()];
            if let Ok(page) = client.fills(&symbols, None, None).await {
                for f in page.items {
                    prop_assert!(f.qty > Decimal::ZERO && f.price > Decimal::ZERO, "{f:?}");
                }
            }
            let _ = client.orders_after(&symbols, chrono::Utc::now(), None).await;
            if let Ok(held) = client.positions().await {
                for p in held {
                    prop_assert!(p.qty > Decimal::ZERO, "spot holdings are positive: {p:?}");
                }
            }
            Ok(())
        })?;
    }
}
