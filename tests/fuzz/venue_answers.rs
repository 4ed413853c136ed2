//! The Alpaca client against a server that answers anything: any status, any body,
//! for every call the OMS, the sync and reconciliation make. Nothing may panic; an
//! answer that is not what Alpaca sends is an error, never an order, fill or position
//! made up from it.

use std::sync::{Arc, Mutex, OnceLock};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, response::IntoResponse};
use proptest::prelude::*;
use pulse_domain::{
    secrets::Secret,
    venue::{OrderRequest, OrderType, Side, TimeInForce, Venue, alpaca::AlpacaClient},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

type Answer = Arc<Mutex<(u16, Vec<u8>)>>;

async fn answer(State(a): State<Answer>, _body: Bytes) -> impl IntoResponse {
    let (status, body) = a.lock().unwrap().clone();
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        [("content-type", "application/json")],
        body,
    )
}

/// One server for every case; each case sets what it answers.
fn server() -> &'static (tokio::runtime::Runtime, Answer, AlpacaClient) {
    static SERVER: OnceLock<(tokio::runtime::Runtime, Answer, AlpacaClient)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let a: Answer = Arc::new(Mutex::new((200, b"{}".to_vec())));
        let (rt, base) = crate::serve(Router::new().fallback(answer).with_state(a.clone()));
        let client = AlpacaClient::new(
            reqwest::Client::new(),
            &base,
            "PKFUZZ",
            Secret::new("fuzz-secret".into()),
        );
        (rt, a, client)
    })
}

/// Bodies shaped like Alpaca's (orders, fills, positions, quotes) with hostile values,
/// and anything else.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        any::<i64>().prop_map(|n| json!(n.to_string())),
        any::<f64>().prop_map(|f| json!(f.to_string())),
        Just(json!("1e400")),
        Just(json!("-0")),
        Just(json!("79228162514264337593543950336")),
        Just(json!(null)),
        any::<String>().prop_map(Value::String),
    ];
    let status = prop_oneof![
        Just("new"),
        Just("filled"),
        Just("partially_filled"),
        Just("canceled"),
        Just("rejected"),
        Just("done_for_day"),
        Just("weird"),
    ];
    let order = (
        number.clone(),
        number.clone(),
        number.clone(),
        status,
        any::<String>(),
    )
        .prop_map(|(qty, filled, price, status, id)| {
            json!({"id": id, "client_order_id": "pf0-0", "symbol": "AAPL", "qty": qty,
                   "filled_qty": filled, "filled_avg_price": price, "side": "buy", "type": "limit",
                   "time_in_force": "day", "limit_price": price, "status": status,
                   "created_at": "2026-12-01T00:00:00Z", "updated_at": "not a time"})
        });
    let fill = (number.clone(), number.clone()).prop_map(|(qty, price)| {
        json!({"id": "f1", "activity_type": "FILL", "order_id": "o1", "symbol": "AAPL", "side": "buy",
               "qty": qty, "price": price, "transaction_time": "2026-12-01T00:00:00Z", "type": "fill",
               "cum_qty": qty, "leaves_qty": "0", "order_status": "filled"})
    });
    let position = number
        .clone()
        .prop_map(|qty| json!({"symbol": "AAPL", "qty": qty, "side": "long"}));
    let quote = (number.clone(), number)
        .prop_map(|(ap, bp)| json!({"quote": {"ap": ap, "bp": bp, "t": "2026-12-01T00:00:00Z"}}));
    prop_oneof![
        order.clone().prop_map(|o| serde_json::to_vec(&o).unwrap()),
        prop::collection::vec(order, 0..4).prop_map(|o| serde_json::to_vec(&o).unwrap()),
        prop::collection::vec(fill, 0..4).prop_map(|f| serde_json::to_vec(&f).unwrap()),
        prop::collection::vec(position, 0..4).prop_map(|p| serde_json::to_vec(&p).unwrap()),
        quote.prop_map(|q| serde_json::to_vec(&q).unwrap()),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_call_survives_any_answer(
        status in prop_oneof![Just(200u16), Just(201), Just(204), Just(404), Just(422), Just(429), Just(500), Just(503), 100u16..600],
        body in bodies(),
    ) {
        let (rt, a, client) = server();
        *a.lock().unwrap() = (status, body);
        rt.block_on(async {
            let order = OrderRequest {
                symbol: "AAPL".into(),
                qty: Decimal::ONE,
                side: Side::Buy,
                order_type: OrderType::Limit,
                time_in_force: TimeInForce::Day,
                limit_price: Some(Decimal::ONE_HUNDRED),
                client_order_id: "pf0-0".into(),
            };
            // Whatever comes back: a value that passed the client's checks, or an error.
            if let Ok(o) = client.create_order(&order).await {
                prop_assert!(o.filled_qty >= Decimal::ZERO);
            }
            let _ = client.get_order_by_client_id("AAPL", "pf0-0").await;
            let _ = client.get_order("AAPL", "o1").await;
            let _ = client.cancel_order("AAPL", "o1").await;
            let _ = client.list_open_orders().await;
            if let Ok(q) = client.latest_quote("AAPL").await {
                prop_assert!(q.ask.is_none_or(|p| p > Decimal::ZERO) && q.bid.is_none_or(|p| p > Decimal::ZERO), "{q:?}");
            }
            if let Ok(fills) = client.fills(&[], None, None).await.map(|p| p.items) {
                for f in fills {
                    prop_assert!(f.qty > Decimal::ZERO && f.price > Decimal::ZERO, "{f:?}");
                }
            }
            let _ = client.orders_after(&[], chrono::Utc::now(), None).await;
            let _ = client.positions().await;
            Ok(())
        })?;
    }
}
