//! `user_symbols` changes reach `watchers`: by trigger, and by the signed webhook.

use pulse_fleet::web::signature;
use serde_json::{Value, json};

use crate::helpers::*;

const SECRET: &str = "watcher-shared-secret";

fn watcher_jobs() -> Vec<pulse_jobs::JobSpec> {
    vec![job::<pulse_jobs::sync_watcher::SyncWatcher>()]
}

async fn watchers(db: &TestDb) -> Vec<(String, String, String, Value, bool)> {
    sqlx::query_as("SELECT user_id, symbol, timeframe, strategy, active FROM watchers ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn inserts_updates_moves_and_deletes_of_user_symbols_follow_through_the_trigger() {
    let db = TestDb::new(&[]).await;
    let worker = db.start_worker(watcher_jobs(), 4).await;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO user_symbols (tenant_id, user_id, symbol, timeframe) VALUES ($1, 'u1', 'BTC/USDT', '1h') RETURNING id",
    )
    .bind(TENANT)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    db.drain().await;
    assert_eq!(
        watchers(&db).await,
        vec![("u1".into(), "BTC/USDT".into(), "1h".into(), json!({}), true)]
    );

    sqlx::query("UPDATE user_symbols SET strategy = '{\"rsi\": 30}', active = false WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    db.drain().await;
    assert_eq!(
        watchers(&db).await,
        vec![(
            "u1".into(),
            "BTC/USDT".into(),
            "1h".into(),
            json!({"rsi": 30}),
            false
        )]
    );

    sqlx::query("UPDATE user_symbols SET timeframe = '4h' WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    db.drain().await;
    let moved = watchers(&db).await;
    assert_eq!(moved.len(), 1, "moved, not copied: {moved:?}");
    assert_eq!(moved[0].2, "4h");

    sqlx::query("DELETE FROM user_symbols WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap();
    db.drain().await;
    worker.shutdown().await.unwrap();
    assert!(watchers(&db).await.is_empty());
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.jobs WHERE state <> 'completed'")
            .await,
        0
    );
}

async fn serve(db: &TestDb) -> String {
    let base = db
        .serve_web(|s| s.watchers.webhook_secret = SECRET.into())
        .await;
    format!("{base}/webhooks/watchers")
}

async fn deliver(url: &str, body: &Value, secret: &str) -> reqwest::Response {
    let raw = serde_json::to_vec(body).unwrap();
    reqwest::Client::new()
        .post(url)
        .header("x-hmac-sha256", signature::hex_hmac(secret, &raw))
        .body(raw)
        .send()
        .await
        .unwrap()
}

fn change(kind: &str, version: i64, timeframe: &str, strategy: Value) -> Value {
    let record = json!({"id": 77, "tenant_id": TENANT, "user_id": "u2", "symbol": "ETH/USDT", "timeframe": timeframe,
                        "strategy": strategy, "active": true, "version": version});
    match kind {
        "DELETE" => {
            json!({"type": kind, "table": "user_symbols", "schema": "public", "record": null, "old_record": record})
        }
        _ => {
            json!({"type": kind, "table": "user_symbols", "schema": "public", "record": record, "old_record": null})
        }
    }
}

#[tokio::test]
async fn the_signed_webhook_answers_per_contract_and_a_stale_delivery_changes_nothing() {
    let db = TestDb::new(&[]).await;
    let url = serve(&db).await;
    let insert = deliver(&url, &change("INSERT", 1, "1h", json!({})), SECRET).await;
    assert_eq!(insert.status(), 200);
    assert_eq!(
        insert.json::<Value>().await.unwrap(),
        json!({"success": true, "operation": "INSERT", "symbol": "ETH/USDT", "user_id": "u2"})
    );
    // Version 3 arrives before version 2.
    deliver(&url, &change("UPDATE", 3, "1h", json!({"v": 3})), SECRET).await;
    deliver(&url, &change("UPDATE", 2, "1h", json!({"v": 2})), SECRET).await;
    let worker = db.start_worker(watcher_jobs(), 4).await;
    db.drain().await;
    assert_eq!(
        watchers(&db).await[0].3,
        json!({"v": 3}),
        "the stale version 2 did not overwrite 3"
    );

    // A duplicate delivery of the same change is stored once.
    deliver(&url, &change("UPDATE", 3, "1h", json!({"v": 3})), SECRET).await;
    assert_eq!(db.count("SELECT count(*) FROM watcher_events").await, 3);

    deliver(&url, &change("DELETE", 3, "1h", json!({})), SECRET).await;
    db.drain().await;
    assert!(watchers(&db).await.is_empty());
    // An old UPDATE delivered after the delete does not bring the watcher back.
    deliver(
        &url,
        &change("UPDATE", 2, "1h", json!({"late": true})),
        SECRET,
    )
    .await;
    db.drain().await;
    worker.shutdown().await.unwrap();
    assert!(watchers(&db).await.is_empty());
}

#[tokio::test]
async fn bad_signatures_and_bad_bodies_are_refused_and_store_nothing() {
    let db = TestDb::new(&[]).await;
    let url = serve(&db).await;
    let wrong = deliver(
        &url,
        &change("INSERT", 1, "1h", json!({})),
        "not-the-secret",
    )
    .await;
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.json::<Value>().await.unwrap()["error"],
        "invalid_signature"
    );
    let unsigned = reqwest::Client::new()
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(
        unsigned.json::<Value>().await.unwrap()["error"],
        "missing_signature"
    );
    let unknown = deliver(
        &url,
        &json!({"type": "TRUNCATE", "record": {"id": 1}}),
        SECRET,
    )
    .await;
    assert_eq!(unknown.status(), 400);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"],
        "unknown_type"
    );
    // A change that does not say whose it is cannot be applied: refused up front.
    let mut anonymous = change("INSERT", 1, "1h", json!({}));
    anonymous["record"]
        .as_object_mut()
        .unwrap()
        .remove("tenant_id");
    let anonymous = deliver(&url, &anonymous, SECRET).await;
    assert_eq!(anonymous.status(), 400);
    assert_eq!(
        anonymous.json::<Value>().await.unwrap()["error"],
        "missing_tenant_id"
    );
    let raw = b"{oops";
    let malformed = reqwest::Client::new()
        .post(&url)
        .header("x-hmac-sha256", signature::hex_hmac(SECRET, raw))
        .body(raw.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        malformed.json::<Value>().await.unwrap()["error"],
        "malformed_json"
    );
    assert_eq!(db.count("SELECT count(*) FROM watcher_events").await, 0);
}
