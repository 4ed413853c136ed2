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

/// Adds `user` to `tenant` (creating the tenant).
async fn member(db: &TestDb, tenant: uuid::Uuid, user: &str) {
    sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $1::text) ON CONFLICT DO NOTHING")
        .bind(tenant)
        .execute(&db.pool)
        .await
        .unwrap();
    crate::security::member(db, tenant, user).await;
}

#[tokio::test]
async fn the_platform_docs_openssl_and_curl_recipe_works_verbatim() {
    let db = TestDb::new(&[]).await;
    let base = db
        .serve_web(|s| s.watchers.webhook_secret = SECRET.into())
        .await;
    let tenant = uuid::Uuid::new_v4();
    member(&db, tenant, "test-uuid").await;
    // Seed 003's "Manual Test via curl", word for word but for the URL.
    let recipe = r#"
PAYLOAD='{"type":"INSERT","record":{"user_id":"test-uuid","symbol":"BTC/USDT","timeframe":"1h","strategy":{},"active":true}}'
SIGNATURE=$(echo -n "$PAYLOAD" | openssl dgst -sha256 -hmac "$WEBHOOK_SECRET" | cut -d' ' -f2)

curl -X POST \
  $SUPABASE_B_URL/functions/v1/watchers-upsert \
  -H "Content-Type: application/json" \
  -H "x-hmac-sha256: $SIGNATURE" \
  -d "$PAYLOAD"
"#;
    let out = tokio::process::Command::new("bash")
        .args(["-c", recipe])
        .env("WEBHOOK_SECRET", SECRET)
        .env("SUPABASE_B_URL", &base)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(
        answer,
        json!({"success": true, "operation": "INSERT", "symbol": "BTC/USDT", "user_id": "test-uuid"})
    );
    let worker = db.start_worker(watcher_jobs(), 2).await;
    db.drain().await;
    let rows: Vec<(uuid::Uuid, String, String, String)> =
        sqlx::query_as("SELECT tenant_id, user_id, symbol, timeframe FROM watchers")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![(tenant, "test-uuid".into(), "BTC/USDT".into(), "1h".into())]
    );

    // The same form, updated then deleted, keyed by (user, symbol, timeframe).
    let url = format!("{base}/functions/v1/watchers-upsert");
    let record = json!({"user_id": "test-uuid", "symbol": "BTC/USDT", "timeframe": "1h",
                        "strategy": {"rsi": 30}, "active": false});
    let update = deliver(&url, &json!({"type": "UPDATE", "record": record}), SECRET).await;
    assert_eq!(update.status(), 200);
    db.drain().await;
    assert_eq!(watchers(&db).await[0].3, json!({"rsi": 30}));
    let delete = deliver(
        &url,
        &json!({"type": "DELETE", "old_record": record}),
        SECRET,
    )
    .await;
    assert_eq!(delete.status(), 200);
    assert_eq!(
        delete.json::<Value>().await.unwrap(),
        json!({"success": true, "operation": "DELETE", "symbol": "BTC/USDT", "user_id": "test-uuid"})
    );
    db.drain().await;
    worker.shutdown().await.unwrap();
    assert!(watchers(&db).await.is_empty());
}

#[tokio::test]
async fn a_contract_change_of_a_user_in_no_tenant_or_several_is_refused_and_a_slow_one_times_out() {
    let db = TestDb::new(&[]).await;
    let url = format!(
        "{}/functions/v1/watchers-upsert",
        db.serve_web(|s| s.watchers.webhook_secret = SECRET.into())
            .await
    );
    let change = |user: &str| json!({"type": "INSERT", "record": {"user_id": user, "symbol": "ETH/USDT", "timeframe": "4h"}});
    let nobody = deliver(&url, &change("nobody"), SECRET).await;
    assert_eq!(nobody.status(), 400);
    assert_eq!(
        nobody.json::<Value>().await.unwrap()["error"],
        "unknown_user"
    );
    member(&db, uuid::Uuid::new_v4(), "twice").await;
    member(&db, uuid::Uuid::new_v4(), "twice").await;
    let twice = deliver(&url, &change("twice"), SECRET).await;
    assert_eq!(twice.status(), 400);
    assert_eq!(
        twice.json::<Value>().await.unwrap()["error"],
        "ambiguous_user_tenant"
    );
    assert_eq!(db.count("SELECT count(*) FROM watcher_events").await, 0);

    // Storing blocks past the 1 s budget (the inbox locked): 408, nothing stored.
    member(&db, uuid::Uuid::new_v4(), "slow").await;
    let mut lock = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE watcher_events IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let slow = deliver(&url, &change("slow"), SECRET).await;
    let took = started.elapsed();
    assert_eq!(slow.status(), 408);
    assert_eq!(
        slow.json::<Value>().await.unwrap(),
        json!({"error": "timeout"})
    );
    assert!(took < std::time::Duration::from_millis(1500), "{took:?}");
    lock.commit().await.unwrap();
    assert_eq!(db.count("SELECT count(*) FROM watcher_events").await, 0);
    // Unblocked, the same delivery is stored once.
    assert_eq!(deliver(&url, &change("slow"), SECRET).await.status(), 200);
    assert_eq!(db.count("SELECT count(*) FROM watcher_events").await, 1);
}
