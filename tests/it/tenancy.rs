//! Tenant isolation, the capital ledger invariant and the audit chain, enforced by
//! the database.

use pulse_domain::tenancy;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::*;

struct Tenant {
    id: Uuid,
    account: Uuid,
}

async fn tenant(pool: &PgPool, name: &str) -> Tenant {
    let (id, account) = (Uuid::new_v4(), Uuid::new_v4());
    pulse_fleet::demo::open_desk(
        pool,
        id,
        name,
        account,
        "env:UNUSED_PAPER_SECRET",
        1000.into(),
    )
    .await
    .unwrap();
    Tenant { id, account }
}

#[tokio::test]
async fn a_job_of_tenant_a_can_neither_read_nor_write_tenant_bs_rows() {
    let db = TestDb::new(&[]).await;
    let a = tenant(&db.pool, "A").await;
    let b = tenant(&db.pool, "B").await;
    let mut tx = tenancy::begin(&db.pool, a.id).await.unwrap();
    let visible: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM trading_accounts")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        visible,
        vec![a.account],
        "only tenant A's account is visible"
    );
    let ledgers: i64 = sqlx::query_scalar("SELECT count(*) FROM capital_ledgers")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(ledgers, 1);
    // Updating B's row finds nothing; inserting a row for B is refused.
    let touched = sqlx::query("UPDATE trading_accounts SET label = 'hijacked' WHERE id = $1")
        .bind(b.account)
        .execute(&mut *tx)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(touched, 0);
    let refused = sqlx::query(
        "INSERT INTO trading_accounts (tenant_id, label, venue_id) VALUES ($1, 'x', 'paper')",
    )
    .bind(b.id)
    .execute(&mut *tx)
    .await
    .unwrap_err();
    assert!(
        refused.to_string().contains("row-level security"),
        "{refused}"
    );
    tx.rollback().await.unwrap();

    // The same holds for billing, watchers and alerts: B's rows are invisible to A,
    // and A cannot write rows for B.
    for (t, n) in [(a.id, 1), (b.id, 2)] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "INSERT INTO billing.customers (tenant_id, stripe_customer_id, user_id) VALUES ('{t}', 'cus_{n}', 'u{n}');
             INSERT INTO alerts (tenant_id, user_id, kind) VALUES ('{t}', 'u{n}', 'system');
             INSERT INTO watchers (tenant_id, user_id, symbol, timeframe) VALUES ('{t}', 'u{n}', 'BTC', '1h');"
        )))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let mut tx = tenancy::begin(&db.pool, a.id).await.unwrap();
    for (table, insert_for_b) in [
        (
            "billing.customers",
            "INSERT INTO billing.customers (tenant_id, stripe_customer_id) VALUES ($1, 'cus_x')",
        ),
        (
            "alerts",
            "INSERT INTO alerts (tenant_id, user_id, kind) VALUES ($1, 'u2', 'system')",
        ),
        (
            "watchers",
            "INSERT INTO watchers (tenant_id, user_id, symbol, timeframe) VALUES ($1, 'u2', 'ETH', '1h')",
        ),
    ] {
        let users: Vec<Option<String>> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT user_id FROM {table}")))
                .fetch_all(&mut *tx)
                .await
                .unwrap();
        assert_eq!(users, [Some("u1".to_string())], "{table}: only A's row");
        sqlx::query("SAVEPOINT s").execute(&mut *tx).await.unwrap();
        let refused = sqlx::query(sqlx::AssertSqlSafe(insert_for_b))
            .bind(b.id)
            .execute(&mut *tx)
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("row-level security"),
            "{table}: {refused}"
        );
        sqlx::query("ROLLBACK TO SAVEPOINT s")
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.rollback().await.unwrap();
    // And without a tenant set, a worker sees nothing at all.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE pulse_worker")
        .execute(&mut *tx)
        .await
        .unwrap();
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM trading_accounts")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(none, 0);
}

#[tokio::test]
async fn an_over_reservation_is_refused_by_the_database_and_the_ledger_matches_its_journal() {
    let db = TestDb::new(&[]).await;
    let a = tenant(&db.pool, "A").await;
    let reserve = |amount: i64| {
        let pool = db.pool.clone();
        async move {
            let mut tx = tenancy::begin(&pool, a.id).await?;
            sqlx::query(
                "INSERT INTO capital_journal (tenant_id, account_id, entry_type, d_reserved_for_orders)
                 VALUES ($1, $2, 'reserve_order', $3)",
            )
            .bind(a.id)
            .bind(a.account)
            .bind(rust_decimal::Decimal::from(amount))
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
    };
    reserve(600).await.unwrap();
    let error = reserve(500).await.unwrap_err();
    assert!(error.to_string().contains("capital_invariant"), "{error}");
    let ledger: (String, String) = sqlx::query_as(
        "SELECT allocated::text, reserved_for_orders::text FROM capital_ledgers WHERE account_id = $1",
    )
    .bind(a.account)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(ledger, ("1000.0000000000".into(), "600.0000000000".into()));
    assert_eq!(
        db.count("SELECT count(*) FROM capital_journal").await,
        2,
        "the refused entry left no journal row"
    );
    assert_eq!(
        db.count("SELECT count(*) FROM capital_ledger_drift").await,
        0
    );
    // Workers cannot touch the ledger except through the journal.
    let mut tx = tenancy::begin(&db.pool, a.id).await.unwrap();
    let direct = sqlx::query("UPDATE capital_ledgers SET allocated = 1000000")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(direct.to_string().contains("permission denied"), "{direct}");
}

async fn record(pool: &PgPool, tenant: Uuid, event: &str, subject: &str) {
    let mut tx = tenancy::begin(pool, tenant).await.unwrap();
    tenancy::audit(
        &mut tx,
        event,
        "intent",
        subject,
        &json!({"reason": "limit", "notional": "1250.50"}),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn audit_events_are_append_only_and_verify_catches_a_tampered_or_missing_row() {
    let db = TestDb::new(&[]).await;
    let a = tenant(&db.pool, "A").await;
    let b = tenant(&db.pool, "B").await;
    for i in 0..4 {
        record(&db.pool, a.id, "intent_rejected", &format!("i-{i}")).await;
    }
    record(&db.pool, b.id, "kill_switch_engaged", "acct").await;
    // Appended unsealed; not even the owner can change an unsealed event's contents.
    let report = pulse_domain::audit::verify(&db.pool).await.unwrap();
    assert_eq!((report.events, report.unsealed), (0, 5));
    let refused =
        sqlx::query("UPDATE audit_events SET subject_id = 'i-9' WHERE subject_id = 'i-0'")
            .execute(&db.pool)
            .await
            .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");

    assert_eq!(pulse_domain::audit::seal_all(&db.pool).await.unwrap(), 5);
    assert_eq!(pulse_domain::audit::seal_all(&db.pool).await.unwrap(), 0);
    let report = pulse_domain::audit::verify(&db.pool).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.tenants, report.events, report.unsealed), (2, 5, 0));
    // A sealed event cannot be sealed again with another hash.
    let refused = sqlx::query("UPDATE audit_events SET hash = sha256('x') WHERE seq = 1")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    // Later events continue the chain.
    record(&db.pool, a.id, "intent_rejected", "i-4").await;
    assert_eq!(pulse_domain::audit::seal_all(&db.pool).await.unwrap(), 1);
    let report = pulse_domain::audit::verify(&db.pool).await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.events, report.unsealed), (6, 0));

    let mut tx = tenancy::begin(&db.pool, a.id).await.unwrap();
    let refused = sqlx::query("UPDATE audit_events SET details = '{}' WHERE seq = 2")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("append-only")
            || refused.to_string().contains("permission denied"),
        "{refused}"
    );
    tx.rollback().await.unwrap();
    let refused = sqlx::query("DELETE FROM audit_events WHERE seq = 2")
        .execute(&db.pool)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("append-only"),
        "even the owner: {refused}"
    );

    // Someone with the power to disable triggers edits one event and removes another.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only;
         UPDATE audit_events SET details = '{{\"reason\": \"none\"}}' WHERE tenant_id = '{}' AND seq = 2;
         DELETE FROM audit_events WHERE tenant_id = '{}' AND seq = 3;
         ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only;",
        a.id, a.id
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let report = pulse_domain::audit::verify(&db.pool).await.unwrap();
    let problems = report.problems.join("\n");
    assert!(
        problems.contains("seq 2 (intent i-1) was altered"),
        "{problems}"
    );
    assert!(
        problems.contains("seq 4 follows 2: 1 event(s) missing"),
        "{problems}"
    );
    assert!(
        !problems.contains(&b.id.to_string()),
        "tenant B's chain is intact: {problems}"
    );
}
