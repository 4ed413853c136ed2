//! The whole fleet under faults, then killed and restarted: three worker processes
//! trade two-leg intents against a paper venue that fails requests (5xx), loses
//! answers after making the order, fills in parts over time and drops its streams,
//! while a worker is SIGKILLed and restarted every few seconds. Then every process is
//! killed, the venue goes on filling, and the fleet starts again. In the end the
//! database must equal the venue: orders, fills, positions; no order sent twice; the
//! ledger equal to its journal; every job ended, and no dead job without a reason.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use pulse_sims::paper::PaperOptions;
use rust_decimal::Decimal;
use serde_json::json;

use crate::{helpers::*, oms::desk};

const INTENTS: usize = 200;
const SYMBOLS: [&str; 12] = [
    "AAA", "BBB", "CCC", "DDD", "EEE", "FFF", "GGG", "HHH", "III", "JJJ", "KKK", "LLL",
];

/// A worker process of the fleet (the trading queues), its output discarded.
fn worker(db: &TestDb, venue: &str, key: &str) -> tokio::process::Child {
    // The trading queues only, and small pools: three processes and the test share
    // the server's 100 connections.
    fleet_command(
        db,
        &[
            "worker",
            "--queues",
            "execute_intent,apply_venue_event,sync_account,send_alert,reconcile_account",
        ],
        &[
            ("PULSE__DATABASE__MAX_CONNECTIONS", "6"),
            ("RUST_LOG", "warn"),
            ("PULSE_SECRETS_KEY", key),
            ("PULSE__VENUES__PAPER", venue),
            // The venue's limit is lifted below; the fleet's budget with it.
            ("PULSE__OMS__REQUESTS_PER_MINUTE_PER_ACCOUNT", "1000000"),
            ("PULSE__OMS__STREAM_RESCAN_SECS", "1"),
            ("PULSE__RECONCILE__IN_FLIGHT_AFTER_SECS", "2"),
            ("PULSE__RECONCILE__NEVER_RECEIVED_AFTER_SECS", "5"),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .expect("spawn a worker")
}

#[tokio::test]
async fn the_fleet_killed_mid_trading_and_restarted_converges_to_the_venue() {
    let mut desk = desk(
        PaperOptions {
            error_rate: 0.05,
            drop_rate: 0.05,
            fill_delay_ms: 50,
            partial_fill_qty: 1,
            fill_interval_ms: 150,
            rate_limit_per_minute: 1_000_000,
            seed: 7,
            ..PaperOptions::default()
        },
        10_000_000,
    )
    .await;
    desk.halt().await;
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [42u8; 32]);
    let mut workers: Vec<_> = (0..3).map(|_| worker(&desk.db, &desk.base, &key)).collect();

    // Intents arrive over a few seconds while workers die and streams drop.
    let mut intents = vec![];
    let mut rng_state = 0x5eed_u64;
    let mut next = |n: usize| {
        rng_state = rng_state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng_state >> 33) as usize % n
    };
    let started = tokio::time::Instant::now();
    let mut last_kill = started;
    let mut last_drop = started;
    let mut killed = 0;
    for i in 0..INTENTS {
        let (a, b) = (next(SYMBOLS.len()), next(SYMBOLS.len()));
        let legs = vec![
            json!({"account_id": desk.account, "symbol": SYMBOLS[a], "side": "buy", "quantity": 1 + next(3),
                   "type": "market", "reference_price": "100"}),
            json!({"account_id": desk.account, "symbol": SYMBOLS[(a + 1 + b % 11) % 12], "side": "sell",
                   "quantity": 1 + next(3), "type": "market", "reference_price": "100"}),
        ];
        intents.push(desk.intent(&format!("chaos-{i}"), legs).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
        if last_kill.elapsed() > Duration::from_secs(3) {
            let victim = next(workers.len());
            sigkill(&workers[victim]);
            let _ = workers[victim].wait().await;
            workers[victim] = worker(&desk.db, &desk.base, &key);
            last_kill = tokio::time::Instant::now();
            killed += 1;
        }
        if last_drop.elapsed() > Duration::from_secs(2) {
            desk.venue.drop_streams();
            last_drop = tokio::time::Instant::now();
        }
    }
    assert!(killed >= 2, "only {killed} workers were killed");

    // Everything stops at once, mid-trading; the venue goes on filling.
    for w in &workers {
        sigkill(w);
    }
    for w in &mut workers {
        let _ = w.wait().await;
    }
    wait_until(
        "the venue ends every order",
        Duration::from_secs(60),
        || async { desk.venue.orders().iter().all(|o| o.is_terminal()) },
    )
    .await;

    // The fleet starts again and converges.
    let workers: Vec<_> = (0..3).map(|_| worker(&desk.db, &desk.base, &key)).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let pending = desk
            .db
            .count("SELECT count(*) FROM fleet.jobs WHERE state IN ('available', 'running')")
            .await;
        let open = desk
            .db
            .count("SELECT count(*) FROM orders WHERE status NOT IN ('filled', 'cancelled', 'expired', 'rejected')")
            .await;
        let fills = desk.db.count("SELECT count(*) FROM fills").await;
        let venue_fills = desk.venue.all_fills().len() as i64;
        if pending == 0 && open == 0 && fills == venue_fills {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let jobs: Vec<(String, String, String, serde_json::Value)> = sqlx::query_as(
                "SELECT job_name, state::text, run_at::text, errors FROM fleet.jobs
                 WHERE state IN ('available', 'running') ORDER BY id LIMIT 10",
            )
            .fetch_all(&desk.db.pool)
            .await
            .unwrap();
            let orders: Vec<(String, String, Decimal)> = sqlx::query_as(
                "SELECT client_order_id, status, filled_quantity FROM orders
                 WHERE status NOT IN ('filled', 'cancelled', 'expired', 'rejected') LIMIT 10",
            )
            .fetch_all(&desk.db.pool)
            .await
            .unwrap();
            let locks: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT symbol, owner_token::text, (expires_at - now())::text FROM entry_locks",
            )
            .fetch_all(&desk.db.pool)
            .await
            .unwrap();
            let holders: Vec<(String, String, i32, serde_json::Value)> = sqlx::query_as(
                "SELECT j.idempotency_key, j.state::text, j.attempts, j.errors FROM fleet.jobs j
                 WHERE j.idempotency_key IN (SELECT 'intent:' || owner_token FROM entry_locks)",
            )
            .fetch_all(&desk.db.pool)
            .await
            .unwrap();
            let jobs: Vec<_> = jobs.into_iter().map(|j| (j.0, j.1, j.2)).collect();
            panic!(
                "not converged: {pending} jobs pending, {open} orders open, {fills} of {venue_fills} fills; \
                 orders {orders:?}; locks {locks:?}; lock holders' jobs {holders:?}; jobs {jobs:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in &workers {
        sigterm(w);
    }

    // Orders: every venue order is one of ours, once, with the venue's status and
    // quantity; every order of ours that reached the venue is there.
    let venue_orders = desk.venue.orders();
    let coids: HashSet<&str> = venue_orders
        .iter()
        .map(|o| o.client_order_id.as_str())
        .collect();
    assert_eq!(
        coids.len(),
        venue_orders.len(),
        "a client order id twice at the venue"
    );
    let ours: HashMap<String, (String, Decimal, Option<String>)> =
        sqlx::query_as::<_, (String, String, Decimal, Option<String>)>(
            "SELECT client_order_id, status, filled_quantity, venue_order_id FROM orders",
        )
        .fetch_all(&desk.db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(c, s, q, v)| (c, (s, q, v)))
        .collect();
    for o in &venue_orders {
        let (status, filled, venue_id) = ours
            .get(&o.client_order_id)
            .unwrap_or_else(|| panic!("venue order {} unknown to the database", o.client_order_id));
        let theirs = if o.status == "canceled" {
            "cancelled"
        } else {
            o.status.as_str()
        };
        assert_eq!(
            (status.as_str(), *filled),
            (theirs, o.filled_qty),
            "{}",
            o.client_order_id
        );
        assert_eq!(venue_id.as_deref(), Some(o.id.as_str()));
    }
    let placed = ours.values().filter(|o| o.2.is_some()).count();
    assert_eq!(
        placed,
        venue_orders.len(),
        "orders of ours with a venue id the venue lacks"
    );
    for (coid, (status, _, venue_id)) in &ours {
        if venue_id.is_none() {
            assert!(
                status == "rejected" || status == "cancelled",
                "{coid} never reached the venue yet is {status}"
            );
        }
    }

    // Fills: the same set, quantity and price.
    let db_fills: HashMap<String, (Decimal, Decimal)> =
        sqlx::query_as::<_, (String, Decimal, Decimal)>(
            "SELECT venue_fill_id, quantity, price FROM fills",
        )
        .fetch_all(&desk.db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, q, p)| (k, (q, p)))
        .collect();
    let fills = desk.venue.all_fills();
    assert_eq!(db_fills.len(), fills.len());
    for f in &fills {
        let key = format!("{}:{}", f.order_id, f.cum_qty.normalize());
        assert_eq!(db_fills.get(&key), Some(&(f.qty, f.price)), "fill {key}");
    }

    // Positions per symbol: the database's open legs against the venue's holdings.
    // (From the venue's own record of fills: its REST API fails requests on purpose.)
    let mut theirs: BTreeMap<String, Decimal> = BTreeMap::new();
    for f in &fills {
        let signed = match f.side {
            pulse_sims::paper::Side::Buy => f.qty,
            pulse_sims::paper::Side::Sell => -f.qty,
        };
        *theirs.entry(f.symbol.clone()).or_default() += signed;
    }
    theirs.retain(|_, q| !q.is_zero());
    let theirs: BTreeMap<String, Decimal> = theirs
        .into_iter()
        .map(|(s, q)| (s, q.normalize()))
        .collect();
    let ours: BTreeMap<String, Decimal> = sqlx::query_as::<_, (String, Decimal)>(
        "SELECT symbol, sum(CASE side WHEN 'long' THEN quantity ELSE -quantity END)
         FROM position_legs WHERE closed_at IS NULL GROUP BY symbol",
    )
    .fetch_all(&desk.db.pool)
    .await
    .unwrap()
    .into_iter()
    .filter(|(_, q)| !q.is_zero())
    .map(|(s, q)| (s, q.normalize()))
    .collect();
    assert_eq!(ours, theirs, "positions");

    // Capital: the live ledger is its journal; nothing stays reserved for orders.
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM capital_ledger_drift")
            .await,
        0
    );
    let reserved: Decimal = sqlx::query_scalar("SELECT reserved_for_orders FROM capital_ledgers")
        .fetch_one(&desk.db.pool)
        .await
        .unwrap();
    assert_eq!(reserved, Decimal::ZERO);

    // Jobs: all ended; a dead one always says why.
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM fleet.jobs WHERE state IN ('available', 'running')")
            .await,
        0
    );
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM fleet.jobs WHERE state = 'dead' AND jsonb_array_length(errors) = 0")
            .await,
        0
    );
    // Every intent ended one way or the other, and the start-up reconciliations ran.
    let unsettled = desk
        .db
        .count("SELECT count(*) FROM multi_leg_intents WHERE status IN ('pending', 'submitted', 'partially_filled')")
        .await;
    assert_eq!(unsettled, 0);
    assert!(
        desk.db
            .count("SELECT count(*) FROM reconciliation_runs WHERE reason = 'startup' AND ok")
            .await
            >= 2
    );
}
