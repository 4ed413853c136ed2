//! The webhook endpoints over real HTTP against a real database: random bodies and
//! signatures. A body not signed with the secret is refused before anything is stored;
//! a signed body of any shape is stored or refused with a 4xx, never a 5xx, and the
//! web process keeps answering.

use std::sync::OnceLock;

use crate::json::json_value;
use proptest::prelude::*;
use pulse_fleet::web::signature::{hex_hmac, stripe_header};

#[path = "../it/helpers.rs"]
#[allow(dead_code)]
mod helpers;

struct Site {
    base: String,
    db: helpers::TestDb,
}

/// One database and web process for every case (a database per case would make the
/// target minutes long); each case counts what it adds.
fn site() -> &'static (tokio::runtime::Runtime, Site) {
    static SITE: OnceLock<(tokio::runtime::Runtime, Site)> = OnceLock::new();
    SITE.get_or_init(|| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let site = rt.block_on(async {
            let db = helpers::TestDb::new(&[]).await;
            let base = db
                .serve_web(|s| {
                    s.stripe.webhook_secrets = "whsec_fuzz".into();
                    s.watchers.webhook_secret = "watch-fuzz".into();
                })
                .await;
            Site { base, db }
        });
        (rt, site)
    })
}

async fn stored(db: &helpers::TestDb) -> i64 {
    db.count("SELECT (SELECT count(*) FROM billing.stripe_events) + (SELECT count(*) FROM watcher_events)")
        .await
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn webhooks_refuse_unsigned_bodies_storing_nothing_and_never_fail_on_signed_ones(
        body in json_value(),
        raw in prop::collection::vec(any::<u8>(), 0..128),
        forged in any::<String>(),
        use_raw in any::<bool>(),
    ) {
        let (rt, site) = site();
        let bytes = if use_raw { raw } else { serde_json::to_vec(&body).unwrap() };
        rt.block_on(async {
            let http = reqwest::Client::new();
            let before = stored(&site.db).await;
            // Unsigned (a forged or missing signature): refused, nothing stored.
            for (path, header, value) in [
                ("/webhooks/stripe", "stripe-signature", format!("t={},v1={}", chrono::Utc::now().timestamp(), hex::encode(forged.as_bytes()))),
                ("/webhooks/watchers", "x-hmac-sha256", forged.clone()),
                ("/functions/v1/watchers-upsert", "x-hmac-sha256", hex_hmac("wrong-secret", &bytes)),
            ] {
                let answer = http
                    .post(format!("{}{path}", site.base))
                    .header(header, value)
                    .body(bytes.clone())
                    .send()
                    .await
                    .unwrap();
                prop_assert!(answer.status().is_client_error(), "{path}: {}", answer.status());
            }
            prop_assert_eq!(stored(&site.db).await, before, "an unsigned body was stored");
            // Signed: stored or refused, never a server error.
            let stripe = http
                .post(format!("{}/webhooks/stripe", site.base))
                .header("stripe-signature", stripe_header("whsec_fuzz", &bytes, chrono::Utc::now().timestamp()))
                .body(bytes.clone())
                .send()
                .await
                .unwrap();
            prop_assert!(!stripe.status().is_server_error(), "stripe: {} for {:?}", stripe.status(), String::from_utf8_lossy(&bytes));
            let watchers = http
                .post(format!("{}/webhooks/watchers", site.base))
                .header("x-hmac-sha256", hex_hmac("watch-fuzz", &bytes))
                .body(bytes.clone())
                .send()
                .await
                .unwrap();
            // 408 is the contract's own answer to an over-budget request.
            prop_assert!(
                !watchers.status().is_server_error(),
                "watchers: {} for {:?}", watchers.status(), String::from_utf8_lossy(&bytes)
            );
            Ok(())
        })?;
    }
}
