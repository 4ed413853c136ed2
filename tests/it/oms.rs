//! execute_intent against the paper venue (Alpaca's dialect), end to end: trigger,
//! tenant-confined transactions, risk, capital, submission, unwinding.

use std::{collections::HashMap, time::Duration};

use pulse_domain::{Services, tenancy};
use pulse_jobs::{
    Env, apply_venue_event::ApplyVenueEvent, execute_intent::ExecuteIntent,
    reconcile_account::ReconcileAccount, send_alert::SendAlert, sync_account::SyncAccount,
};
use pulse_queue::worker::WorkerHandle;
use pulse_sims::paper::{PaperOptions, PaperVenue};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::*;

pub(crate) const KEY: [u8; 32] = [42; 32];
pub(crate) const API_SECRET: &str = "paper-api-secret-do-not-log";

pub(crate) struct Desk {
    pub db: TestDb,
    pub venue: PaperVenue,
    pub base: String,
    pub tenant: Uuid,
    pub account: Uuid,
    pub worker: Option<WorkerHandle>,
    /// The trade-stream listener (off: orders are followed by the sync alone).
    pub streams: Option<tokio::task::JoinHandle<()>>,
    /// Held while the listener runs: the listener stops when it is dropped.
    stop_streams: Option<tokio::sync::watch::Sender<bool>>,
    pub follow_streams: bool,
    /// Reconciliation's thresholds for the desk's workers.
    pub reconcile: pulse_jobs::reconcile_account::Settings,
}

pub(crate) async fn desk(options: PaperOptions, allocated: i64) -> Desk {
    let db = TestDb::new(&[]).await;
    // Prices stand at 100.00 and quotes have no spread, so that reservations (at the
    // venue's quote, with no collar here) come out round.
    let venue = PaperVenue::new(PaperOptions {
        price_step_cents: 0,
        spread_cents: 0,
        ..options
    });
    desk_on(db, venue, allocated).await
}

/// The paper venue's defaults for desks: prices stand still at 100.00 with no spread,
/// and a market order's first fill happens as it is accepted (reported by the stream
/// and the REST API, not by the answer).
pub(crate) fn desk_options() -> PaperOptions {
    PaperOptions {
        fill_delay_ms: 0,
        ..PaperOptions::default()
    }
}

pub(crate) async fn desk_on(db: TestDb, venue: PaperVenue, allocated: i64) -> Desk {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(venue.clone().serve(listener));
    let (tenant, account) = (Uuid::new_v4(), Uuid::new_v4());
    let secret_ref = pulse_domain::secrets::seal(API_SECRET, &KEY);
    pulse_fleet::demo::open_desk(
        &db.pool,
        tenant,
        "desk",
        account,
        &secret_ref,
        allocated.into(),
    )
    .await
    .unwrap();
    let mut desk = Desk {
        db,
        venue,
        base,
        tenant,
        account,
        worker: None,
        streams: None,
        stop_streams: None,
        follow_streams: true,
        reconcile: Default::default(),
    };
    desk.start_worker().await;
    desk
}

impl Desk {
    pub fn services(&self) -> Services {
        let mut services = Services::new(Duration::from_secs(5), None);
        services.venue_urls = HashMap::from([("paper".to_string(), self.base.clone())]);
        services.secrets_key = Some(KEY);
        services.price_collar = rust_decimal::Decimal::ZERO;
        services
    }

    pub async fn start_worker(&mut self) {
        let services = self.services();
        self.start_worker_with(services).await;
    }

    /// A worker process of the desk: the OMS and the order lifecycle's jobs, and the
    /// trade-stream listener unless `follow_streams` is off.
    pub async fn start_worker_with(&mut self, services: Services) {
        let s = self.db.settings();
        let mut env = Env::new(services);
        env.reconcile = std::sync::Arc::new(self.reconcile.clone());
        let queues: Vec<_> = [
            pulse_jobs::spec::<ExecuteIntent>(&env),
            pulse_jobs::spec::<ReconcileAccount>(&env),
            pulse_jobs::spec::<ApplyVenueEvent>(&env),
            pulse_jobs::spec::<SyncAccount>(&env),
            pulse_jobs::spec::<SendAlert>(&env),
        ]
        .into_iter()
        .map(|job| pulse_queue::worker::QueueSpec {
            job,
            concurrency: 4,
        })
        .collect();
        let pools = pulse_fleet::db::queue_pools(&s, queues.len())
            .await
            .unwrap();
        let worker = pulse_queue::worker::start_with(
            self.db.pool.clone(),
            pools,
            queues,
            &test_worker_settings(),
            env.services.metrics.clone(),
        )
        .await
        .unwrap();
        self.worker = Some(worker);
        if self.follow_streams {
            let (stop, stop_rx) = tokio::sync::watch::channel(false);
            self.stop_streams = Some(stop);
            self.streams = Some(tokio::spawn(pulse_domain::trade_streams::run(
                self.db.pool.clone(),
                env.services.clone(),
                pulse_domain::trade_streams::StreamSettings {
                    rescan: Duration::from_millis(200),
                    backoff_min: Duration::from_millis(20),
                    backoff_max: Duration::from_millis(200),
                },
                stop_rx,
            )));
        }
    }

    pub fn leg(&self, symbol: &str, side: &str, qty: i64) -> Value {
        json!({"account_id": self.account, "symbol": symbol, "side": side, "quantity": qty,
               "type": "market", "reference_price": "100"})
    }

    pub async fn intent(&self, key: &str, legs: Vec<Value>) -> Uuid {
        self.intent_with_id(Uuid::new_v4(), key, legs).await
    }

    pub async fn intent_with_id(&self, id: Uuid, key: &str, legs: Vec<Value>) -> Uuid {
        let mut tx = tenancy::begin(&self.db.pool, self.tenant).await.unwrap();
        let id = sqlx::query_scalar(
            "INSERT INTO multi_leg_intents (id, tenant_id, idempotency_key, legs_json) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(id)
        .bind(self.tenant)
        .bind(key)
        .bind(Value::Array(legs))
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        id
    }

    pub async fn intent_state(&self, id: Uuid) -> (String, Option<String>) {
        sqlx::query_as("SELECT status::text, reason FROM multi_leg_intents WHERE id = $1")
            .bind(id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    pub async fn wait_for(&self, id: Uuid, statuses: &[&str]) -> (String, Option<String>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.intent_state(id).await;
            if statuses.contains(&state.0.as_str()) {
                return state;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "intent {id} is {state:?} after 20 s, not {statuses:?}: {}",
                    self.lag().await
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn reserved(&self) -> String {
        sqlx::query_scalar(
            "SELECT reserved_for_orders::text FROM capital_ledgers WHERE account_id = $1",
        )
        .bind(self.account)
        .fetch_one(&self.db.pool)
        .await
        .unwrap()
    }

    pub async fn audit_events(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT event_type FROM audit_events WHERE tenant_id = $1 ORDER BY id")
            .bind(self.tenant)
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }

    /// Stops the worker and the stream listener (fills go on at the venue).
    pub async fn stop(mut self) -> Self {
        self.halt().await;
        self
    }

    pub async fn halt(&mut self) {
        if let Some(streams) = self.streams.take() {
            self.stop_streams.take();
            streams.abort();
            let _ = streams.await;
        }
        if let Some(worker) = self.worker.take() {
            worker.shutdown().await.unwrap();
        }
    }

    /// Waits until the database has caught up with the venue: no job due or running,
    /// every fill the venue made recorded, every order the venue ended ended here,
    /// and no reservation waiting for fills still to learn.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let state = self.lag().await;
            if state.is_empty() {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for the lifecycle to settle: {state}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the database has not caught up on yet (empty when nothing).
    async fn lag(&self) -> String {
        let due = self
            .db
            .count(
                "SELECT count(*) FROM fleet.jobs
                 WHERE state = 'running' OR (state = 'available' AND run_at <= now())",
            )
            .await;
        let in_flight = self
            .db
            .count(
                "SELECT count(*) FROM orders WHERE status IN ('sent', 'submit_unknown')
                    OR filled_quantity < coalesce(final_filled_quantity, 0)",
            )
            .await;
        let venue_ended = self
            .venue
            .orders()
            .iter()
            .filter(|o| o.is_terminal())
            .count() as i64;
        let ended = self
            .db
            .count(
                "SELECT count(*) FROM orders WHERE venue_order_id IS NOT NULL
                    AND status IN ('filled', 'cancelled', 'expired', 'rejected')",
            )
            .await;
        let venue_fills = self.venue.all_fills().len() as i64;
        let fills = self.db.count("SELECT count(*) FROM fills").await;
        if due == 0 && in_flight == 0 && ended == venue_ended && fills == venue_fills {
            return String::new();
        }
        let jobs: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
            "SELECT job_name, state::text, errors FROM fleet.jobs
             WHERE state IN ('available', 'running', 'dead') ORDER BY id",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        let orders: Vec<(String, String, Decimal, Option<Decimal>)> = sqlx::query_as(
            "SELECT client_order_id, status, filled_quantity, final_filled_quantity FROM orders ORDER BY created_at",
        )
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        let venue: Vec<(String, String, Decimal)> = self
            .venue
            .orders()
            .into_iter()
            .map(|o| (o.client_order_id, o.status, o.filled_qty))
            .collect();
        format!(
            "{due} jobs due, {in_flight} orders in flight, {ended} of {venue_ended} ended, \
             {fills} of {venue_fills} fills; jobs {jobs:?}; orders {orders:?}; venue {venue:?}"
        )
    }
}

#[tokio::test]
async fn order_statuses_have_one_spelling_and_the_schema_refuses_the_venues() {
    let desk = desk(PaperOptions::default(), 10_000).await;
    let id = desk
        .intent("spelling", vec![desk.leg("AAPL", "buy", 1)])
        .await;
    assert_eq!(desk.wait_for(id, &["filled", "failed"]).await.0, "filled");
    let desk = desk.stop().await;
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM orders WHERE intent_id = $1")
            .bind(id)
            .fetch_all(&desk.db.pool)
            .await
            .unwrap();
    assert_eq!(statuses, vec!["filled".to_string()]);
    // Alpaca's `canceled` (and any spelling the code does not know) is refused.
    for venue_spelling in ["canceled", "new", "done_for_day"] {
        let refused = sqlx::query("UPDATE orders SET status = $2 WHERE intent_id = $1")
            .bind(id)
            .bind(venue_spelling)
            .execute(&desk.db.pool)
            .await
            .unwrap_err();
        let code = refused.as_database_error().and_then(|e| e.code());
        assert_eq!(
            code.as_deref(),
            Some("23514"),
            "{venue_spelling}: {refused}"
        );
    }
}

#[tokio::test]
async fn an_order_the_venue_already_has_is_adopted_not_sent_again() {
    // An attempt sent leg 0 and its record was lost (say the database crashed after
    // the send): the venue has the order, the database does not know. The next run
    // starts as a first attempt; the venue's 422 on the reused client order id makes
    // it look the order up and adopt it.
    let desk = desk(PaperOptions::default(), 10_000).await;
    let id = Uuid::new_v4();
    // The desk's own account at the venue (its API key).
    let venue = pulse_domain::venue::alpaca::AlpacaClient::new(
        reqwest::Client::new(),
        &desk.base,
        "PKPAPER",
        pulse_domain::secrets::resolve_with(
            "env:S",
            |_| Some(API_SECRET.into()),
            || unreachable!(),
        )
        .unwrap(),
    );
    use pulse_domain::venue::Venue;
    let earlier = venue
        .create_order(&pulse_domain::venue::OrderRequest {
            symbol: "AAPL".into(),
            qty: 2.into(),
            side: pulse_domain::venue::Side::Buy,
            order_type: pulse_domain::venue::OrderType::Market,
            time_in_force: pulse_domain::venue::TimeInForce::Day,
            limit_price: None,
            client_order_id: pulse_jobs::execute_intent::client_order_id(desk.tenant, id, 0),
        })
        .await
        .unwrap();
    desk.intent_with_id(
        id,
        "k-adopt",
        vec![desk.leg("AAPL", "buy", 2), desk.leg("MSFT", "sell", 3)],
    )
    .await;
    assert_eq!(desk.wait_for(id, &["filled", "failed"]).await.0, "filled");
    let desk = desk.stop().await;
    assert_eq!(desk.venue.orders().len(), 2, "leg 0 was not sent twice");
    let adopted: Option<String> = sqlx::query_scalar(
        "SELECT venue_order_id FROM orders WHERE intent_id = $1 AND leg_index = 0",
    )
    .bind(id)
    .fetch_one(&desk.db.pool)
    .await
    .unwrap();
    assert_eq!(adopted, Some(earlier.id));
}

#[tokio::test]
async fn intents_planned_in_one_batch_are_judged_one_by_one() {
    // Concurrent intents of a tenant are planned in one transaction; each still gets
    // its own verdict, and an intent that does not fit the capital is refused alone.
    let desk = desk(PaperOptions::default(), 1_000).await.stop().await;
    let services = desk.services();
    let buy = |symbol: &str, qty: i64| vec![desk.leg(symbol, "buy", qty)];
    let a = desk.intent("a", buy("AAPL", 2)).await; // 200
    let b = desk.intent("b", buy("AAPL", 1)).await; // same account and symbol as a
    let c = desk.intent("c", buy("MSFT", 5)).await; // 500
    let d = desk.intent("d", buy("NVDA", 4)).await; // 400: beyond the 1,000
    let e = desk
        .intent("e", vec![json!({"account_id": desk.account})])
        .await;
    let verdicts = pulse_jobs::execute_intent::plan_together(
        &desk.db.pool,
        &services,
        desk.tenant,
        &[a, b, c, d, e],
    )
    .await
    .unwrap();
    assert_eq!(
        verdicts,
        [
            "planned",
            "locked",
            "planned",
            "refused insufficient_capital: reserving 400 would exceed the capital of the account",
            "refused intent_rejected: leg 0: symbol is required",
        ]
    );
    assert_eq!(desk.reserved().await, "700.0000000000");
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM capital_ledger_drift")
            .await,
        0
    );
    let orders: Vec<Uuid> = sqlx::query_scalar("SELECT intent_id FROM orders ORDER BY symbol")
        .fetch_all(&desk.db.pool)
        .await
        .unwrap();
    assert_eq!(orders, [a, c]);
    let locks: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT symbol, owner_token FROM entry_locks ORDER BY symbol")
            .fetch_all(&desk.db.pool)
            .await
            .unwrap();
    assert_eq!(locks, [("AAPL".to_string(), a), ("MSFT".to_string(), c)]);
    // Planned twice is planned once.
    let again =
        pulse_jobs::execute_intent::plan_together(&desk.db.pool, &services, desk.tenant, &[a, c])
            .await
            .unwrap();
    assert_eq!(again, ["not pending: submitted", "not pending: submitted"]);
}

#[tokio::test]
async fn secrets_appear_in_no_log_line_of_a_worker_process_that_trades() {
    // A real worker process, logging at debug, trades through a venue that fails
    // often (5xx, answers lost after the order was made), so failed attempts and
    // their errors are logged; neither the API secret nor the sealing key may appear.
    let mut desk = desk(
        PaperOptions {
            error_rate: 0.3,
            drop_rate: 0.3,
            seed: 11,
            ..Default::default()
        },
        1_000_000,
    )
    .await;
    desk.halt().await;
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, KEY);
    let mut worker = fleet_process(
        &desk.db,
        &[
            "worker",
            "--queues",
            "execute_intent,apply_venue_event,sync_account,send_alert",
        ],
        &[
            ("RUST_LOG", "debug"),
            ("PULSE_SECRETS_KEY", &key),
            ("PULSE__VENUES__PAPER", &desk.base),
        ],
    );
    let mut readers = vec![];
    for pipe in [
        Box::new(worker.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Box::new(worker.stderr.take().unwrap()),
    ] {
        readers.push(tokio::spawn(async move {
            let mut pipe = pipe;
            let mut out = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut out)
                .await
                .unwrap();
            out
        }));
    }
    let mut intents = vec![];
    for i in 0..6 {
        let legs = vec![
            desk.leg(&format!("S{i}A"), "buy", 1),
            desk.leg(&format!("S{i}B"), "sell", 1),
        ];
        intents.push(desk.intent(&format!("logs-{i}"), legs).await);
    }
    for id in &intents {
        assert_eq!(desk.wait_for(*id, &["filled", "failed"]).await.0, "filled");
    }
    sigterm(&worker);
    worker.wait().await.unwrap();
    let mut logs = String::new();
    for r in readers {
        logs.push_str(&r.await.unwrap());
    }
    assert!(
        logs.contains("attempt 1 failed") && logs.contains("outcome unknown"),
        "the venue's failures were logged: {logs}"
    );
    assert!(!logs.contains(API_SECRET), "the API secret was logged");
    assert!(!logs.contains(&key), "the sealing key was logged");
}

#[tokio::test]
async fn an_intent_carried_over_attempts_renews_its_entry_locks() {
    let desk = desk(
        PaperOptions {
            latency_ms: 400,
            ..Default::default()
        },
        10_000,
    )
    .await;
    let mut desk = desk.stop().await;
    let id = desk.intent("renew", vec![desk.leg("AAPL", "buy", 1)]).await;
    let planned = pulse_jobs::execute_intent::plan_together(
        &desk.db.pool,
        &desk.services(),
        desk.tenant,
        &[id],
    )
    .await
    .unwrap();
    assert_eq!(planned, ["planned"]);
    // As if the planning attempt died long ago: its lock is about to expire.
    sqlx::query("UPDATE entry_locks SET expires_at = now() + interval '1 second'")
        .execute(&desk.db.pool)
        .await
        .unwrap();
    desk.start_worker().await;
    wait_until(
        "the next attempt renews the lock",
        Duration::from_secs(10),
        || async {
            desk.db
                .count(
                    "SELECT count(*) FROM entry_locks
                     WHERE owner_token IN (SELECT id FROM multi_leg_intents WHERE status = 'submitted')
                       AND expires_at > now() + interval '30 seconds'",
                )
                .await
                == 1
        },
    )
    .await;
    assert_eq!(desk.wait_for(id, &["filled"]).await.0, "filled");
    assert_eq!(desk.db.count("SELECT count(*) FROM entry_locks").await, 0);
}

#[tokio::test]
async fn many_intents_at_once_are_planned_and_recorded_in_batches_each_exactly_once() {
    let desk = desk(PaperOptions::default(), 1_000_000).await;
    let legs: Vec<Value> = (0..24)
        .map(|i| {
            Value::Array(vec![
                desk.leg(&format!("M{i}A"), "buy", 1),
                desk.leg(&format!("M{i}B"), "sell", 2),
            ])
        })
        .collect();
    let mut tx = tenancy::begin(&desk.db.pool, desk.tenant).await.unwrap();
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json)
         SELECT $1, 'many-' || ord, l FROM unnest($2::jsonb[]) WITH ORDINALITY AS u(l, ord) RETURNING id",
    )
    .bind(desk.tenant)
    .bind(&legs)
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for id in &ids {
        assert_eq!(desk.wait_for(*id, &["filled", "failed"]).await.0, "filled");
    }
    let desk = desk.stop().await;
    assert_eq!(desk.venue.orders().len(), 48);
    let per_intent: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(*) FROM audit_events WHERE subject_type = 'intent'
           AND event_type IN ('capital_reserved', 'intent_submitted')
         GROUP BY event_type, subject_id ORDER BY 1, 2",
    )
    .fetch_all(&desk.db.pool)
    .await
    .unwrap();
    assert_eq!(per_intent.len(), 48, "two events for each intent");
    assert!(per_intent.iter().all(|(_, n)| *n == 1), "{per_intent:?}");
    assert_eq!(
        desk.reserved().await,
        "0.0000000000",
        "filled: nothing left reserved for orders"
    );
    assert_eq!(
        desk.db
            .count("SELECT sum(reserved_for_positions)::bigint FROM capital_ledgers")
            .await,
        7200,
        "the positions hold what the orders reserved (the prices stand still)"
    );
    assert_eq!(desk.db.count("SELECT count(*) FROM entry_locks").await, 0);
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM capital_ledger_drift")
            .await,
        0
    );
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM orders WHERE venue_order_id IS NULL OR status <> 'filled'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_two_leg_intent_trades_through_the_paper_venue() {
    let desk = desk(PaperOptions::default(), 10_000).await;
    let id = desk
        .intent(
            "k1",
            vec![desk.leg("AAPL", "buy", 2), desk.leg("MSFT", "sell", 3)],
        )
        .await;
    assert_eq!(desk.wait_for(id, &["filled"]).await.0, "filled");
    desk.settle().await;
    let desk = desk.stop().await;
    let orders: Vec<(String, Option<String>, String)> =
        sqlx::query_as("SELECT client_order_id, venue_order_id, status FROM orders WHERE intent_id = $1 ORDER BY leg_index")
            .bind(id)
            .fetch_all(&desk.db.pool)
            .await
            .unwrap();
    assert_eq!(orders.len(), 2);
    assert!(
        orders
            .iter()
            .all(|o| o.1.is_some() && o.2 == "filled" && o.0.len() <= 48)
    );
    assert_eq!(
        orders[0].0,
        pulse_jobs::execute_intent::client_order_id(desk.tenant, id, 0)
    );
    assert_eq!(desk.venue.orders().len(), 2);
    assert_eq!(
        desk.reserved().await,
        "0.0000000000",
        "the fills took the orders' reservations"
    );
    assert_eq!(
        desk.db
            .count("SELECT sum(reserved_for_positions)::bigint FROM capital_ledgers")
            .await,
        500,
        "2x100 + 3x100 now held by the positions"
    );
    // (`intent_partially_filled` too when one leg fills before the other.)
    let events: Vec<String> = desk
        .audit_events()
        .await
        .into_iter()
        .filter(|e| e != "intent_partially_filled")
        .collect();
    assert_eq!(
        events,
        vec!["capital_reserved", "intent_submitted", "intent_filled"]
    );
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM capital_ledger_drift")
            .await,
        0
    );
    assert_eq!(
        desk.db.count("SELECT count(*) FROM entry_locks").await,
        0,
        "locks released"
    );
}

#[tokio::test]
async fn the_same_intent_inserted_twice_is_one_intent() {
    let desk = desk(PaperOptions::default(), 10_000).await;
    let id = desk
        .intent("same-key", vec![desk.leg("AAPL", "buy", 1)])
        .await;
    let mut tx = tenancy::begin(&desk.db.pool, desk.tenant).await.unwrap();
    let again = sqlx::query("INSERT INTO multi_leg_intents (tenant_id, idempotency_key, legs_json) VALUES ($1, 'same-key', '[]')")
        .bind(desk.tenant)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(again.as_database_error().unwrap().is_unique_violation());
    drop(tx);
    desk.wait_for(id, &["filled"]).await;
    let desk = desk.stop().await;
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM multi_leg_intents")
            .await,
        1
    );
    assert_eq!(desk.venue.orders().len(), 1);
}

#[tokio::test]
async fn an_order_accepted_whose_answer_is_lost_exists_exactly_once_after_retries() {
    let desk = desk(
        PaperOptions {
            drop_rate: 1.0,
            ..Default::default()
        },
        10_000,
    )
    .await;
    let id = desk
        .intent(
            "lossy",
            vec![desk.leg("AAPL", "buy", 1), desk.leg("MSFT", "buy", 1)],
        )
        .await;
    assert_eq!(desk.wait_for(id, &["filled"]).await.0, "filled");
    let desk = desk.stop().await;
    let venue_orders = desk.venue.orders();
    assert_eq!(
        venue_orders.len(),
        2,
        "one order per leg at the venue: {venue_orders:?}"
    );
    let errors: serde_json::Value =
        sqlx::query_scalar("SELECT errors FROM fleet.jobs WHERE job_name = 'execute_intent'")
            .fetch_one(&desk.db.pool)
            .await
            .unwrap();
    assert!(
        errors.to_string().contains("outcome unknown"),
        "the lost answers failed an attempt, which the next one resolved: {errors}"
    );
}

#[tokio::test]
async fn a_rejected_leg_unwinds_its_filled_sibling_and_restores_the_ledger() {
    let desk = desk(
        PaperOptions {
            reject_symbols: vec!["HALTED".into()],
            ..desk_options()
        },
        10_000,
    )
    .await;
    let id = desk
        .intent(
            "unwind",
            vec![desk.leg("AAPL", "buy", 4), desk.leg("HALTED", "sell", 1)],
        )
        .await;
    let (status, reason) = desk.wait_for(id, &["failed"]).await;
    desk.settle().await;
    let desk = desk.stop().await;
    assert_eq!(status, "failed");
    assert!(reason.unwrap().contains("leg 1 was rejected"));
    let venue_orders = desk.venue.orders();
    assert_eq!(
        venue_orders.len(),
        2,
        "the AAPL buy and its closing sell: {venue_orders:?}"
    );
    assert_eq!(venue_orders[1].side, pulse_sims::paper::Side::Sell);
    assert_eq!(venue_orders[1].qty, rust_decimal::Decimal::from(4));
    assert_eq!(
        desk.reserved().await,
        "0.0000000000",
        "every reservation released"
    );
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM capital_ledgers WHERE reserved_for_positions <> 0")
            .await,
        0,
        "bought and sold back: the position is flat"
    );
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM capital_ledger_drift")
            .await,
        0
    );
    let events = desk.audit_events().await;
    for e in [
        "capital_reserved",
        "leg_rejected",
        "leg_unwound",
        "intent_unwound",
    ] {
        assert!(
            events.contains(&e.to_string()),
            "missing audit event {e}: {events:?}"
        );
    }
}

#[tokio::test]
async fn an_intent_waits_for_the_entry_lock_on_its_account_and_symbol() {
    let desk = desk(PaperOptions::default(), 10_000).await;
    // Another intent holds the lock on (account, AAPL).
    let holder = Uuid::new_v4();
    sqlx::query("INSERT INTO entry_locks (tenant_id, account_id, symbol, owner_token, expires_at) VALUES ($1, $2, 'AAPL', $3, now() + interval '1 minute')")
        .bind(desk.tenant)
        .bind(desk.account)
        .bind(holder)
        .execute(&desk.db.pool)
        .await
        .unwrap();
    let id = desk.intent("waits", vec![desk.leg("AAPL", "buy", 1)]).await;
    // The job runs, finds the lock taken and snoozes: nothing reaches the venue.
    wait_until("the job has tried at least once", Duration::from_secs(10), || async {
        desk.db.count("SELECT count(*) FROM fleet.jobs WHERE job_name = 'execute_intent' AND claims >= 2").await == 1
    })
    .await;
    assert_eq!(desk.intent_state(id).await.0, "pending");
    assert!(desk.venue.orders().is_empty());
    sqlx::query("DELETE FROM entry_locks WHERE owner_token = $1")
        .bind(holder)
        .execute(&desk.db.pool)
        .await
        .unwrap();
    assert_eq!(desk.wait_for(id, &["filled"]).await.0, "filled");
    desk.stop().await;
}

#[tokio::test]
async fn risk_refusals_fail_the_intent_with_a_reason_and_an_audit_event() {
    let desk = desk(PaperOptions::default(), 1_000).await;
    let too_big = desk.intent("big", vec![desk.leg("AAPL", "buy", 50)]).await;
    let bad = desk
        .intent(
            "bad",
            vec![json!({"account_id": desk.account, "symbol": "AAPL", "side": "hold"})],
        )
        .await;
    let (s1, r1) = desk.wait_for(too_big, &["failed"]).await;
    let (s2, r2) = desk.wait_for(bad, &["failed"]).await;
    sqlx::query("INSERT INTO kill_switches (tenant_id, reason) VALUES ($1, 'desk halted')")
        .bind(desk.tenant)
        .execute(&desk.db.pool)
        .await
        .unwrap();
    let halted = desk
        .intent("halted", vec![desk.leg("AAPL", "buy", 1)])
        .await;
    let (s3, r3) = desk.wait_for(halted, &["failed"]).await;
    let desk = desk.stop().await;
    assert_eq!(
        (s1.as_str(), s2.as_str(), s3.as_str()),
        ("failed", "failed", "failed")
    );
    assert!(r1.unwrap().contains("would exceed the capital"));
    assert_eq!(r2.unwrap(), "leg 0: side must be buy or sell");
    assert!(
        r3.unwrap()
            .contains("kill switch engaged for the tenant: desk halted")
    );
    assert!(desk.venue.orders().is_empty());
    assert_eq!(desk.reserved().await, "0.0000000000");
    let mut events = desk.audit_events().await;
    events.sort();
    assert_eq!(
        events,
        vec![
            "insufficient_capital",
            "intent_rejected",
            "kill_switch_blocked"
        ]
    );
    // And the API secret is nowhere in what the fleet recorded.
    let recorded: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(errors::text, ' '), '') || (SELECT coalesce(string_agg(reason, ' '), '') FROM multi_leg_intents)
         FROM fleet.jobs",
    )
    .fetch_one(&desk.db.pool)
    .await
    .unwrap();
    assert!(!recorded.contains(API_SECRET));
}
