//! JSON of any shape, a few levels deep, with the keys the parsers look for mixed in.

use proptest::prelude::*;
use serde_json::{Value, json};

pub fn json_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("id".to_string()),
        Just("type".to_string()),
        Just("data".to_string()),
        Just("object".to_string()),
        Just("customer".to_string()),
        Just("record".to_string()),
        Just("old_record".to_string()),
        Just("user_id".to_string()),
        Just("symbol".to_string()),
        Just("timeframe".to_string()),
        Just("created".to_string()),
        // Legs, in both forms.
        Just("account_id".to_string()),
        Just("side".to_string()),
        Just("quantity".to_string()),
        Just("size".to_string()),
        Just("venue".to_string()),
        Just("price".to_string()),
        Just("limit_price".to_string()),
        Just("order_type".to_string()),
        Just("buy_leg".to_string()),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![any::<i64>(), Just(i64::MIN), Just(i64::MAX)].prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        prop_oneof![
            Just("INSERT"),
            Just("UPDATE"),
            Just("DELETE"),
            Just("invoice.payment_failed"),
            Just("customer.subscription.updated"),
            Just("buy"),
            Just("sell"),
            Just("limit"),
            Just("market"),
            Just("paper"),
            Just("AAPL"),
            Just("1e30"),
            Just("0.00000000001"),
            Just("00000000-0000-4000-8000-000000000001"),
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}
