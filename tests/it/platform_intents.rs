//! Intents in the platform's own shape (seed 000): inserted by a client exactly as the
//! platform's edge functions insert them (legs keyed by name, each naming a venue, the
//! `intent_id` column, `status: 'pending'`), traded on the tenant's default account of
//! each venue, across two venues with two ledgers; a venue that rejects one leg has
//! the other unwound on its own venue; instruments map symbols and refuse what a venue
//! would.

use std::{collections::HashMap, time::Duration};

use pulse_sims::paper::{PaperOptions, PaperVenue};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::Executor;
use uuid::Uuid;

use crate::{
    helpers::wait_until,
    lifecycle::{d, held},
    oms::{Desk, desk},
    security::{ClientLogin, as_gateway, member},
};

/// A desk with a second venue in Alpaca's dialect registered as `alpaca` (another
/// paper venue), an account there, and both accounts their venue's default.
async fn two_venue_desk(b: PaperOptions) -> (Desk, PaperVenue, Uuid) {
    let mut desk = desk(held(), 10_000).await;
    // Stopped before the second account exists (see binance::binance_desk).
    desk.halt().await;
    let venue_b = PaperVenue::new(PaperOptions {
        price_step_cents: 0,
        spread_cents: 0,
        hold_fills: true,
        ..b
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_b = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(venue_b.clone().serve(listener));
    desk.db
        .pool
        .execute("INSERT INTO venues (id, name, kind) VALUES ('alpaca', 'Alpaca', 'broker') ON CONFLICT DO NOTHING")
        .await
        .unwrap();
    let account_b = add_account(&desk, "alpaca", "PKSECOND", 10_000).await;
    let pool = &desk.db.pool;
    sqlx::query("UPDATE trading_accounts SET is_default = true WHERE id = ANY($1)")
        .bind(vec![desk.account, account_b])
        .execute(pool)
        .await
        .unwrap();
    // The platform's bot, a member of the tenant.
    member(&desk.db, desk.tenant, "arb-bot").await;
    let mut services = desk.services();
    services.venue_urls = HashMap::from([
        ("paper".to_string(), desk.base.clone()),
        ("alpaca".to_string(), base_b),
    ]);
    desk.start_worker_with(services).await;
    (desk, venue_b, account_b)
}

/// Opens another account of the desk's tenant at `venue`, labelled by its API key
/// `key` (with the desk's API secret), with `allocated` of capital; returns its id.
pub(crate) async fn add_account(desk: &Desk, venue: &str, key: &str, allocated: i64) -> Uuid {
    let account = Uuid::new_v4();
    let mut tx = pulse_domain::tenancy::begin(&desk.db.pool, desk.tenant)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO trading_accounts (id, tenant_id, label, venue_id) VALUES ($1, $2, $3, $4)",
    )
    .bind(account)
    .bind(desk.tenant)
    .bind(key)
    .bind(venue)
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO account_credentials (tenant_id, account_id, credential_type, identifier, secret_ref)
         VALUES ($1, $2, 'api_key', $3, $4)",
    )
    .bind(desk.tenant)
    .bind(account)
    .bind(key)
    .bind(pulse_domain::secrets::seal(crate::oms::API_SECRET, &crate::oms::KEY))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("INSERT INTO capital_journal (tenant_id, account_id, entry_type, d_allocated) VALUES ($1, $2, 'allocate', $3)")
        .bind(desk.tenant)
        .bind(account)
        .bind(Decimal::from(allocated))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    account
}

/// Inserts an intent as seed 000's edge function does, as a client of the platform.
pub(crate) async fn insert_as_platform(desk: &Desk, legs: Value) -> Uuid {
    let client = ClientLogin::new(&desk.db).await;
    let mut conn = client.connect().await;
    as_gateway(&mut conn, Some("arb-bot"), desk.tenant).await;
    let intent_id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO multi_leg_intents (id, tenant_id, intent_id, legs_json, status, idempotency_key)
         VALUES ($1, $2, $1, $3, 'pending', $4)",
    )
    .bind(intent_id)
    .bind(desk.tenant)
    .bind(legs)
    .bind(format!("arb_AAPL_{}", intent_id.simple()))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.execute("COMMIT").await.unwrap();
    drop(conn);
    client.drop_in(&desk.db).await;
    intent_id
}

/// reserved_for_orders of an account's ledger.
pub(crate) async fn reserved(desk: &Desk, account: Uuid) -> Decimal {
    sqlx::query_scalar("SELECT reserved_for_orders FROM capital_ledgers WHERE account_id = $1")
        .bind(account)
        .fetch_one(&desk.db.pool)
        .await
        .unwrap()
}

/// Waits until intent `id` has failed and checks its reason says `why`.
pub(crate) async fn failed_with(desk: &Desk, id: Uuid, why: &str) {
    let (status, reason) = desk.wait_for(id, &["failed"]).await;
    assert_eq!(status, "failed", "{reason:?}");
    assert!(
        reason.as_deref().unwrap_or_default().contains(why),
        "{reason:?}"
    );
}

fn spot_arb(size: f64) -> Value {
    json!({
        "buy_leg": {"venue": "paper", "symbol": "AAPL", "side": "buy", "size": size, "price": 100},
        "sell_leg": {"venue": "alpaca", "symbol": "AAPL", "side": "sell", "size": size, "price": 100},
    })
}

/// One desk for everything that does not need a venue to reject (desks are heavy: a
/// worker for every queue).
#[tokio::test]
async fn a_seed_000_spot_arbitrage_trades_both_legs_on_two_venues_from_two_ledgers_and_misfits_are_refused()
 {
    let (desk, venue_b, account_b) = two_venue_desk(PaperOptions::default()).await;
    let id = insert_as_platform(&desk, spot_arb(3.0)).await;
    let (status, reason) = desk
        .wait_for(id, &["submitted", "rejected", "failed"])
        .await;
    assert_eq!(status, "submitted", "{reason:?}");
    // One order at each venue, each a limit at the seed's price.
    desk.settle().await;
    let (a, b) = (desk.venue.orders(), venue_b.orders());
    assert_eq!((a.len(), b.len()), (1, 1));
    assert_eq!((a[0].symbol.as_str(), a[0].qty), ("AAPL", d("3")));
    assert_eq!(a[0].limit_price, Some(d("100")));
    assert_eq!(b[0].qty, d("3"));
    // Each leg reserved on its own account's ledger.
    assert_eq!(reserved(&desk, desk.account).await, d("300"));
    assert!(reserved(&desk, account_b).await > Decimal::ZERO);
    let client_id: Option<Uuid> =
        sqlx::query_scalar("SELECT intent_id FROM multi_leg_intents WHERE id = $1")
            .bind(id)
            .fetch_one(&desk.db.pool)
            .await
            .unwrap();
    assert_eq!(client_id, Some(id));

    // A venue with no default account, and instruments the venue would refuse.
    let id = insert_as_platform(
        &desk,
        json!({"buy_leg": {"venue": "binance_us", "symbol": "BTC/USD", "side": "buy", "size": 1}}),
    )
    .await;
    failed_with(&desk, id, "no default account for venue \"binance_us\"").await;
    // An instrument: the normalised BRK/B is BRK.B at the venue, in lots of 1.
    desk.db
        .pool
        .execute("INSERT INTO instruments (venue_id, symbol, venue_symbol, tick_size, lot_size, min_quantity, min_notional)
                  VALUES ('paper', 'BRK/B', 'BRK.B', 0.01, 1, 1, 50)")
        .await
        .unwrap();
    let half = insert_as_platform(
        &desk,
        json!({"buy_leg": {"venue": "paper", "symbol": "BRK/B", "side": "buy", "size": 1.5, "price": 100}}),
    )
    .await;
    failed_with(&desk, half, "not a multiple of the lot size 1").await;
    let whole = insert_as_platform(
        &desk,
        json!({"buy_leg": {"venue": "paper", "symbol": "BRK/B", "side": "buy", "size": 2, "price": 100}}),
    )
    .await;
    let (status, reason) = desk.wait_for(whole, &["failed", "submitted"]).await;
    assert_eq!(status, "submitted", "{reason:?}");
    desk.settle().await;
    assert!(desk.venue.orders().iter().any(|o| o.symbol == "BRK.B"));

    // The platform's columns, but only a new pending intent.
    let client = ClientLogin::new(&desk.db).await;
    for (status, created) in [("filled", "now()"), ("pending", "now() - interval '1 day'")] {
        let mut conn = client.connect().await;
        as_gateway(&mut conn, Some("arb-bot"), desk.tenant).await;
        let refused = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO multi_leg_intents (tenant_id, intent_id, legs_json, status, idempotency_key, created_at)
             VALUES ($1, gen_random_uuid(), $2, '{status}', 'forged', {created})"
        )))
        .bind(desk.tenant)
        .bind(spot_arb(1.0))
        .execute(&mut conn)
        .await
        .unwrap_err();
        assert!(
            refused.to_string().contains("row-level security"),
            "{status} {created}: {refused}"
        );
    }
    client.drop_in(&desk.db).await;
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM multi_leg_intents WHERE idempotency_key = 'forged'")
            .await,
        0
    );
}

#[tokio::test]
async fn when_the_second_venue_rejects_its_leg_the_first_is_unwound_on_its_own_venue() {
    let (desk, venue_b, account_b) = two_venue_desk(PaperOptions {
        reject_symbols: vec!["AAPL".into()],
        ..PaperOptions::default()
    })
    .await;
    let id = insert_as_platform(&desk, spot_arb(2.0)).await;
    let (status, reason) = desk.wait_for(id, &["failed"]).await;
    assert_ne!(status, "submitted");
    assert!(reason.is_some(), "a reason is given");
    desk.settle().await;
    // The buy was accepted at the first venue, then cancelled there; nothing stays
    // reserved on either ledger.
    let a = desk.venue.orders();
    assert!(venue_b.orders().iter().all(|o| o.status != "new"));
    assert!(
        a.iter().all(|o| o.status == "canceled"),
        "the first venue's leg is unwound: {:?}",
        a.iter().map(|o| &o.status).collect::<Vec<_>>()
    );
    assert_eq!(reserved(&desk, desk.account).await, Decimal::ZERO);
    assert_eq!(reserved(&desk, account_b).await, Decimal::ZERO);
}

#[tokio::test]
async fn a_leg_a_venue_rejects_after_accepting_it_has_its_filled_sibling_closed_on_the_other_venue()
{
    let (desk, venue_b, account_b) = two_venue_desk(PaperOptions::default()).await;
    let id = insert_as_platform(&desk, spot_arb(2.0)).await;
    desk.submitted(id).await;
    // The buy fills on the first venue; then the second venue rejects the sell it had
    // accepted: the bought 2 are no longer hedged.
    assert!(desk.venue.fill(&desk.coid(id, 0), d("2"), d("100")));
    desk.settle().await;
    assert!(venue_b.reject_by_venue(&desk.coid(id, 1)));
    failed_with(
        &desk,
        id,
        "leg 1 was rejected by the venue after it was accepted",
    )
    .await;
    // The OMS closed the filled leg on its own venue with an opposite market order.
    let closing = desk
        .venue
        .orders()
        .into_iter()
        .find(|o| o.client_order_id == desk.coid(id, 1000))
        .expect("a closing order at the first venue");
    assert_eq!((closing.side.as_str(), closing.qty), ("sell", d("2")));
    assert!(
        venue_b
            .orders()
            .iter()
            .all(|o| o.client_order_id != desk.coid(id, 1000))
    );
    assert!(desk.venue.fill(&desk.coid(id, 1000), d("2"), d("100")));
    // (Not `desk.settle()`: it follows the first venue only, and a leg lives on the
    // second.)
    wait_until(
        "flat again on the first venue",
        Duration::from_secs(20),
        || async {
            desk.db
            .count(&format!(
                "SELECT count(*) FROM position_legs WHERE account_id = '{}' AND closed_at IS NULL",
                desk.account
            ))
            .await
            == 0
            && desk
                .db
                .count("SELECT count(*) FROM orders WHERE leg_index = 1000 AND status = 'filled'")
                .await
                == 1
        },
    )
    .await;
    assert_eq!(reserved(&desk, desk.account).await, Decimal::ZERO);
    assert_eq!(reserved(&desk, account_b).await, Decimal::ZERO);
    crate::lifecycle::no_drift(&desk).await;
}
