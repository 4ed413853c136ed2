//! Reconciliation (`reconcile_account`) and restart durability against the paper
//! venue: what the database missed while the fleet was down, orders it never knew,
//! orders the venue never got, positions and ledgers changed behind its back. Each
//! test turns the trade stream and the sync off where they would fix things first, so
//! that what converges is reconciliation's doing.

use std::time::Duration;

use pulse_domain::venue::{OrderRequest, OrderType, Side, TimeInForce};
use pulse_sims::paper::PaperOptions;
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    helpers::*,
    lifecycle::{d, held, ledger, no_drift, order, position},
    oms::{Desk, desk, desk_options},
};

/// Runs one reconciliation of the desk's account to its end; its summary row.
async fn reconcile(desk: &Desk) -> (bool, Value, Value, Value) {
    reconcile_account(desk, desk.account).await
}

/// Runs one reconciliation of `account` to its end; its summary row.
pub(crate) async fn reconcile_account(desk: &Desk, account: Uuid) -> (bool, Value, Value, Value) {
    let job = pulse_fleet::trading_ops::reconcile(&desk.db.pool, account)
        .await
        .unwrap();
    let row = desk
        .db
        .wait_for_state(job, "completed", Duration::from_secs(30))
        .await;
    assert_eq!(row.state, "completed", "{row:?}");
    sqlx::query_as(
        "SELECT ok, found, fixed, remaining FROM reconciliation_runs WHERE account_id = $1
         ORDER BY id DESC LIMIT 1",
    )
    .bind(account)
    .fetch_one(&desk.db.pool)
    .await
    .unwrap()
}

/// A desk whose orders only reconciliation follows: no stream listener.
async fn quiet_desk(options: PaperOptions) -> Desk {
    let mut desk = desk(options, 10_000).await;
    desk.halt().await;
    desk.follow_streams = false;
    desk.start_worker().await;
    desk
}

async fn audit_count(desk: &Desk, event: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE tenant_id = $1 AND event_type = $2")
        .bind(desk.tenant)
        .bind(event)
        .fetch_one(&desk.db.pool)
        .await
        .unwrap()
}

async fn open_mismatches(desk: &Desk, kind: &str) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT subject, details FROM reconciliation_mismatches
         WHERE account_id = $1 AND kind = $2 AND resolved_at IS NULL ORDER BY subject",
    )
    .bind(desk.account)
    .bind(kind)
    .fetch_all(&desk.db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_order_filled_while_the_fleet_was_down_converges_after_restart_and_new_intents_wait() {
    let mut desk = quiet_desk(held()).await;
    let id = desk
        .intent("before", vec![desk.leg("AAPL", "buy", 10)])
        .await;
    desk.submitted(id).await;
    assert_eq!(order(&desk, id, 0).await.0, "accepted");

    // The fleet stops; the venue fills the order meanwhile.
    desk.halt().await;
    assert!(desk.venue.fill(&desk.coid(id, 0), d("10"), d("100")));
    // An intent arrives while the fleet is down.
    let next = desk.intent("after", vec![desk.leg("MSFT", "buy", 1)]).await;

    // A worker process starts: every active account's gate closes and one
    // reconciliation per account is asked for, however many processes start.
    for _ in 0..3 {
        pulse_fleet::roles::reconcile_at_startup(&desk.db.pool)
            .await
            .unwrap();
    }
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM fleet.jobs WHERE job_name = 'reconcile_account'")
            .await,
        1
    );
    desk.start_worker().await;
    desk.wait_for(id, &["filled"]).await;
    desk.wait_for(next, &["submitted", "partially_filled", "filled"])
        .await;
    desk.db.drain().await;

    assert_eq!(
        order(&desk, id, 0).await,
        ("filled".into(), d("10"), d("0"))
    );
    assert_eq!(
        position(&desk, "AAPL").await,
        Some(("long".into(), d("10"), d("1000"), d("1000")))
    );
    no_drift(&desk).await;
    let (ok, found, _, remaining) = sqlx::query_as::<_, (bool, Value, Value, Value)>(
        "SELECT ok, found, fixed, remaining FROM reconciliation_runs WHERE reason = 'startup'",
    )
    .fetch_one(&desk.db.pool)
    .await
    .unwrap();
    assert!(ok);
    assert_eq!(found["missing_fill"], 1, "{found}");
    assert_eq!(remaining, serde_json::json!({}));
    // The intent that arrived meanwhile waited for the reconciliation, not refused.
    let waited: bool = sqlx::query_scalar(
        "SELECT (SELECT min(created_at) FROM orders WHERE intent_id = $1)
                >= (SELECT finished_at FROM reconciliation_runs WHERE reason = 'startup')",
    )
    .bind(next)
    .fetch_one(&desk.db.pool)
    .await
    .unwrap();
    assert!(
        waited,
        "the new intent was planned before the start-up reconciliation ended"
    );
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM account_reconciliation WHERE gate_since IS NOT NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn a_venue_order_the_database_never_knew_is_imported_audited_and_its_position_appears() {
    let desk = quiet_desk(held()).await;
    // Placed by hand at the venue, with the account's key: a client order id not ours.
    let manual = desk
        .client()
        .create_order(&OrderRequest {
            symbol: "TSLA".into(),
            qty: d("5"),
            side: Side::Buy,
            order_type: OrderType::Market,
            time_in_force: TimeInForce::Day,
            limit_price: None,
            client_order_id: Uuid::new_v4().to_string(),
        })
        .await
        .unwrap();
    assert!(desk.venue.fill(&manual.client_order_id, d("5"), d("100")));

    let (ok, found, fixed, _) = reconcile(&desk).await;
    assert!(ok);
    assert_eq!(found["unknown_order"], 1, "{found}");
    assert_eq!(fixed["unknown_order"], 1, "{fixed}");
    assert_eq!(found["missing_fill"], 1, "{found}");
    let (origin, status, filled, intent_origin): (String, String, Decimal, String) =
        sqlx::query_as(
            "SELECT o.origin, o.status, o.filled_quantity, i.origin FROM orders o
         JOIN multi_leg_intents i ON i.id = o.intent_id WHERE o.client_order_id = $1",
        )
        .bind(&manual.client_order_id)
        .fetch_one(&desk.db.pool)
        .await
        .unwrap();
    assert_eq!(
        (
            origin.as_str(),
            status.as_str(),
            filled,
            intent_origin.as_str()
        ),
        ("external", "filled", d("5"), "external")
    );
    assert_eq!(audit_count(&desk, "external_order_imported").await, 1);
    assert_eq!(
        position(&desk, "TSLA").await,
        Some(("long".into(), d("5"), d("500"), d("500")))
    );
    // The OMS never executed the imported intent, and nothing was sent.
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM fleet.jobs WHERE job_name = 'execute_intent'")
            .await,
        0
    );
    assert_eq!(desk.venue.orders().len(), 1);
    no_drift(&desk).await;

    // A second run finds nothing new.
    let (_, found, _, remaining) = reconcile(&desk).await;
    assert_eq!(found, serde_json::json!({}));
    assert_eq!(remaining, serde_json::json!({}));
}

#[tokio::test]
async fn an_order_the_venue_never_received_resolves_as_rejected_and_its_reservation_comes_back() {
    let mut desk = quiet_desk(PaperOptions {
        lose_symbols: vec!["LOST".into()],
        ..held()
    })
    .await;
    desk.halt().await;
    desk.reconcile.in_flight_after = Duration::ZERO;
    desk.reconcile.never_received_after = Duration::ZERO;
    desk.reconcile.never_received_lookups = 2;
    desk.start_worker().await;
    let before = ledger(&desk).await;
    let id = desk.intent("lost", vec![desk.leg("LOST", "buy", 3)]).await;
    wait_until("the leg is in flight", Duration::from_secs(20), || async {
        desk.db
            .count("SELECT count(*) FROM orders WHERE status = 'submit_unknown'")
            .await
            == 1
    })
    .await;
    assert_eq!(ledger(&desk).await.0, d("300"), "reserved while in flight");

    // While the OMS still works on the intent, reconciliation only looks.
    let (_, _, _, remaining) = reconcile(&desk).await;
    assert_eq!(remaining["in_flight"], 1, "{remaining}");
    assert_eq!(order(&desk, id, 0).await.0, "submit_unknown");

    // The OMS gives up (an operator cancels its job): the next look-ups decide.
    let job: i64 =
        sqlx::query_scalar("SELECT id FROM fleet.jobs WHERE job_name = 'execute_intent'")
            .fetch_one(&desk.db.pool)
            .await
            .unwrap();
    let cancelled = pulse_queue::admin::cancel(
        &desk.db.pool,
        &pulse_queue::admin::Selection::ids(vec![job]),
        "test",
    )
    .await
    .unwrap();
    assert_eq!(cancelled, 1);
    let (_, _, fixed, remaining) = reconcile(&desk).await;
    assert_eq!(fixed["in_flight"], 1, "{fixed}");
    assert_eq!(remaining, serde_json::json!({}));
    assert_eq!(
        order(&desk, id, 0).await,
        ("rejected".into(), d("0"), d("0"))
    );
    assert_eq!(
        ledger(&desk).await,
        before,
        "the reservation came back exactly"
    );
    assert_eq!(desk.intent_state(id).await.0, "failed");
    assert_eq!(audit_count(&desk, "order_never_received").await, 1);
    assert!(desk.venue.orders().is_empty(), "nothing was ever created");
    no_drift(&desk).await;
}

#[tokio::test]
async fn a_position_changed_at_the_venue_by_hand_is_reported_audited_alerted_and_left_alone() {
    let desk = quiet_desk(desk_options()).await;
    let id = desk.intent("buy", vec![desk.leg("AAPL", "buy", 10)]).await;
    desk.wait_for(id, &["submitted", "filled"]).await;
    let (ok, _, _, remaining) = reconcile(&desk).await;
    assert!(ok);
    assert_eq!(remaining, serde_json::json!({}));
    assert_eq!(desk.intent_state(id).await.0, "filled");

    desk.venue.adjust_position("PKPAPER", "AAPL", d("3"));
    let orders_at_venue = desk.venue.orders().len();
    let (_, found, _, remaining) = reconcile(&desk).await;
    assert_eq!(found["position"], 1, "{found}");
    assert_eq!(remaining["position"], 1, "{remaining}");
    let open = open_mismatches(&desk, "position").await;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].0, "AAPL");
    assert_eq!(open[0].1["ours"], serde_json::json!(d("10")));
    assert_eq!(open[0].1["venue"], serde_json::json!(d("13")));
    assert_eq!(audit_count(&desk, "position_mismatch").await, 1);
    let alerts = desk
        .db
        .count("SELECT count(*) FROM alerts WHERE kind = 'system' AND payload->>'title' LIKE 'Position mismatch%'")
        .await;
    assert_eq!(alerts, 1);
    // Never traded to fix it: the platform's position and the venue's orders stand.
    assert_eq!(position(&desk, "AAPL").await.unwrap().1, d("10"));
    assert_eq!(desk.venue.orders().len(), orders_at_venue);

    // Seen again: still one open row, no second audit or alert.
    reconcile(&desk).await;
    assert_eq!(open_mismatches(&desk, "position").await.len(), 1);
    assert_eq!(audit_count(&desk, "position_mismatch").await, 1);

    // Put right at the venue: resolved, and the gauge's source is empty again.
    desk.venue.adjust_position("PKPAPER", "AAPL", d("-3"));
    let (_, _, fixed, remaining) = reconcile(&desk).await;
    assert_eq!(fixed["position"], 1, "{fixed}");
    assert_eq!(remaining, serde_json::json!({}));
}

#[tokio::test]
async fn a_ledger_altered_by_hand_is_drift_that_pauses_trading_until_an_operator_clears_it() {
    let desk = quiet_desk(desk_options()).await;
    // The owner edits the ledger row, bypassing the journal.
    sqlx::query("UPDATE capital_ledgers SET allocated = allocated + 500 WHERE account_id = $1")
        .bind(desk.account)
        .execute(&desk.db.pool)
        .await
        .unwrap();
    let (_, found, _, remaining) = reconcile(&desk).await;
    assert_eq!(found["ledger_drift"], 1, "{found}");
    assert_eq!(remaining["ledger_drift"], 1, "{remaining}");
    assert_eq!(audit_count(&desk, "ledger_drift").await, 1);
    let reason: String =
        sqlx::query_scalar("SELECT reason FROM kill_switches WHERE account_id = $1 AND engaged")
            .bind(desk.account)
            .fetch_one(&desk.db.pool)
            .await
            .unwrap();
    assert!(reason.starts_with("ledger drift"), "{reason}");
    let accounts = pulse_fleet::web::read_model::accounts(&desk.db.pool)
        .await
        .unwrap();
    assert!(accounts[0].trading_paused);
    assert_eq!(accounts[0].ledger_drift, 500.0);

    // Trading is paused: a new intent is refused with the reason.
    let refused = desk
        .intent("paused", vec![desk.leg("AAPL", "buy", 1)])
        .await;
    let (status, why) = desk.wait_for(refused, &["failed"]).await;
    assert_eq!(status, "failed");
    assert!(why.unwrap_or_default().contains("ledger drift"));
    assert!(desk.venue.orders().is_empty());

    // Resuming is refused while the ledger still drifts; rebuilt, it is allowed.
    let err = pulse_fleet::trading_ops::resume(&desk.db.pool, desk.account, "checked")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("differs from its journal"),
        "{err}"
    );
    pulse_fleet::trading_ops::rebuild_ledger(&desk.db.pool, desk.account, "a hand edit, undone")
        .await
        .unwrap();
    pulse_fleet::trading_ops::resume(&desk.db.pool, desk.account, "ledger rebuilt")
        .await
        .unwrap();
    assert_eq!(audit_count(&desk, "ledger_rebuilt").await, 1);
    assert_eq!(audit_count(&desk, "trading_resumed").await, 1);
    no_drift(&desk).await;
    let (_, found, _, remaining) = reconcile(&desk).await;
    assert_eq!(found, serde_json::json!({}));
    assert_eq!(remaining, serde_json::json!({}));
    let resumed = desk
        .intent("resumed", vec![desk.leg("AAPL", "buy", 1)])
        .await;
    desk.wait_for(resumed, &["submitted", "filled"]).await;
}

#[tokio::test]
async fn two_schedulers_and_three_workers_run_one_reconciliation_per_account_per_tick() {
    let mut desk = quiet_desk(desk_options()).await;
    desk.halt().await;
    // Two more accounts at the same venue, in tenants of their own.
    for (n, key) in [(1u128, "PKTWO"), (2, "PKTHREE")] {
        let (tenant, account) = (Uuid::from_u128(0xaa00 + n), Uuid::from_u128(0xbb00 + n));
        pulse_fleet::demo::open_desk(
            &desk.db.pool,
            tenant,
            &format!("tenant {n}"),
            account,
            &pulse_domain::secrets::seal("paper-api-secret-do-not-log", &[42; 32]),
            Decimal::from(1000),
        )
        .await
        .unwrap();
        sqlx::query("UPDATE account_credentials SET identifier = $2 WHERE account_id = $1")
            .bind(account)
            .bind(key)
            .execute(&desk.db.pool)
            .await
            .unwrap();
    }
    // Three worker processes' worth of queues, each with the scheduled fan-out too.
    let mut env = pulse_jobs::Env::new(desk.services());
    env.reconcile = std::sync::Arc::new(desk.reconcile.clone());
    let mut workers = vec![];
    for _ in 0..3 {
        workers.push(
            desk.db
                .start_worker(
                    vec![
                        pulse_jobs::spec::<pulse_jobs::reconcile_account::ReconcileAccount>(&env),
                        pulse_jobs::spec::<pulse_jobs::reconcile_accounts::ReconcileAccounts>(&env),
                    ],
                    2,
                )
                .await,
        );
    }
    // Two schedulers ticking every second; one bucket per 3600 s, so every tick of
    // the test falls in one bucket (or two, at an hour's turn).
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let schedules = pulse_queue::scheduler::parse_all(&std::collections::BTreeMap::from([(
        "reconcile_accounts".to_string(),
        pulse_queue::settings::ScheduleSettings::new(
            "* * * * * *",
            "reconcile_accounts",
            serde_json::json!({"bucket_secs": 3600}),
        ),
    )]))
    .unwrap();
    let schedulers: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(pulse_queue::scheduler::run(
                desk.db.pool.clone(),
                schedules.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    wait_until("three ticks", Duration::from_secs(20), || async {
        desk.db
            .count("SELECT count(*) FROM fleet.jobs WHERE job_name = 'reconcile_accounts' AND state = 'completed'")
            .await
            >= 3
    })
    .await;
    let _ = stop.send(true);
    for s in schedulers {
        s.await.unwrap();
    }
    desk.db.drain().await;
    for w in workers {
        w.shutdown().await.unwrap();
    }
    // One run per account per bucket, never two at once.
    let per_bucket: Vec<(Uuid, i64, i64)> = sqlx::query_as(
        "SELECT account_id, floor(extract(epoch FROM started_at) / 3600)::bigint AS bucket, count(*)
         FROM reconciliation_runs GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&desk.db.pool)
    .await
    .unwrap();
    let accounts: std::collections::BTreeSet<Uuid> = per_bucket.iter().map(|r| r.0).collect();
    assert_eq!(accounts.len(), 3, "{per_bucket:?}");
    assert!(per_bucket.iter().all(|r| r.2 == 1), "{per_bucket:?}");
    let overlapping = desk
        .db
        .count(
            "SELECT count(*) FROM reconciliation_runs a JOIN reconciliation_runs b
               ON a.account_id = b.account_id AND a.id < b.id
              AND a.started_at < b.finished_at AND b.started_at < a.finished_at",
        )
        .await;
    assert_eq!(overlapping, 0);
}

/// One sample of `family` whose labels include `labels`: a counter's total, a gauge's
/// value, a histogram's count.
fn sample(
    exposition: &openmetrics_parser::MetricsExposition<
        openmetrics_parser::OpenMetricsType,
        openmetrics_parser::OpenMetricsValue,
    >,
    family: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    use openmetrics_parser::OpenMetricsValue as V;
    let family = exposition.families.get(family)?;
    family
        .iter_samples()
        .find(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.iter().any(|(n, x)| n == k && x == v))
        })
        .map(|s| match &s.value {
            V::Counter(c) => c.value.as_f64(),
            V::Gauge(n) => n.as_f64(),
            V::Histogram(h) => h.count.unwrap_or_default() as f64,
            other => panic!("unexpected sample {other:?}"),
        })
}

/// Scrapes `/metrics` as an operator, checks the content type, parses the whole
/// exposition with an OpenMetrics parser, and checks that every sample's name is its
/// `# TYPE`'s (plus the type's suffix).
async fn scrape(
    base: &str,
) -> openmetrics_parser::MetricsExposition<
    openmetrics_parser::OpenMetricsType,
    openmetrics_parser::OpenMetricsValue,
> {
    let response = reqwest::Client::new()
        .get(format!("{base}/metrics"))
        .bearer_auth("operator")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = response.text().await.unwrap();
    let mut family: Option<(String, String)> = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            family = Some((name.to_owned(), kind.to_owned()));
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let (fam, kind) = family.as_ref().expect("a sample before any # TYPE");
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            assert!(
                suffixes.iter().any(|s| name == format!("{fam}{s}")),
                "sample {name} under # TYPE {fam} {kind}"
            );
        }
    }
    openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("{e:?} in:\n{body}"))
}

#[tokio::test]
async fn metrics_and_health_report_trading_and_return_to_zero_when_fixed() {
    let mut desk = desk(desk_options(), 10_000).await;
    let id = desk.intent("buy", vec![desk.leg("AAPL", "buy", 10)]).await;
    desk.wait_for(id, &["filled"]).await;
    desk.settle().await;
    desk.venue.adjust_position("PKPAPER", "AAPL", d("2"));
    let (_, found, _, _) = reconcile(&desk).await;
    assert_eq!(found["position"], 1, "{found}");
    // Every job done (health counts a job no worker will run as a problem), then the
    // worker stops: its counters reach the database when it flushes (at the latest,
    // when it stops); the web process reads them from there.
    wait_until("no job left", Duration::from_secs(30), || async {
        desk.db
            .count("SELECT count(*) FROM fleet.jobs WHERE state IN ('available', 'running')")
            .await
            == 0
    })
    .await;
    desk.halt().await;
    let base = desk
        .db
        .serve_web(|s| {
            s.web.operator_token = "operator".into();
            s.reconcile.max_age_secs = 3600;
            // No scheduler or worker runs while the web process is asked.
            s.schedules.clear();
        })
        .await;
    let account = desk.account.to_string();
    let m = scrape(&base).await;
    let at_least_one = [
        (
            "pulse_venue_requests",
            vec![("venue", "paper"), ("endpoint", "create_order")],
        ),
        (
            "pulse_venue_requests",
            vec![("venue", "paper"), ("endpoint", "positions")],
        ),
        ("pulse_fills_recorded", vec![]),
        ("pulse_fill_to_database_seconds", vec![]),
        ("pulse_reconciliation_runs", vec![("outcome", "ok")]),
        ("pulse_reconciliation_duration_seconds", vec![]),
        (
            "pulse_reconciliation_mismatches_found",
            vec![("kind", "position")],
        ),
        ("pulse_alerts", vec![("outcome", "skipped")]),
        ("pulse_stream_connects", vec![("account", account.as_str())]),
    ];
    for (family, labels) in &at_least_one {
        let v = sample(&m, family, labels);
        assert!(v.is_some_and(|v| v >= 1.0), "{family} {labels:?}: {v:?}");
    }
    assert_eq!(
        sample(
            &m,
            "pulse_reconciliation_mismatches",
            &[("kind", "position")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            "pulse_reconciliation_mismatches",
            &[("kind", "ledger_drift")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "pulse_capital_ledger_drift", &[("account", &account)]),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "pulse_trading_paused", &[("account", &account)]),
        Some(0.0)
    );
    assert!(m.families.contains_key("pulse_entry_lock_wait_seconds"));
    assert!(m.families.contains_key("pulse_entry_lock_contention"));

    let health: Value = reqwest::Client::new()
        .get(format!("{base}/internal/health"))
        .bearer_auth("operator")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    let a = &health["accounts"][0];
    assert_eq!(a["account_id"], account.as_str());
    assert_eq!(a["mismatches"]["position"], 1);
    assert_eq!(a["trading_paused"], false);
    assert_eq!(a["venue_reachable"], true);
    assert!(a["reconciled_age_seconds"].as_f64().unwrap() < 60.0);
    let page = reqwest::Client::new()
        .get(format!("{base}/trading"))
        .bearer_auth("operator")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("<td>desk</td><td><a href=\"/trading/accounts/")
            && page.contains("position: 1"),
        "{page}"
    );

    // Fixed at the venue: the gauge returns to zero, the counter of those found stays.
    desk.venue.adjust_position("PKPAPER", "AAPL", d("-2"));
    desk.start_worker().await;
    reconcile(&desk).await;
    desk.halt().await;
    let m = scrape(&base).await;
    assert_eq!(
        sample(
            &m,
            "pulse_reconciliation_mismatches",
            &[("kind", "position")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &m,
            "pulse_reconciliation_mismatches_found",
            &[("kind", "position")]
        ),
        Some(1.0)
    );

    // Health: 503 when a reconciliation is older than the bound, and when the ledger
    // drifts from its journal (the capital invariant broken).
    let strict = desk
        .db
        .serve_web(|s| {
            s.web.operator_token = "operator".into();
            s.reconcile.max_age_secs = 0;
        })
        .await;
    let stale = reqwest::get(format!("{strict}/internal/health"))
        .await
        .unwrap();
    assert_eq!(stale.status(), 503);
    sqlx::query("UPDATE capital_ledgers SET reserved_for_positions = reserved_for_positions + 1 WHERE account_id = $1")
        .bind(desk.account)
        .execute(&desk.db.pool)
        .await
        .unwrap();
    desk.start_worker().await;
    reconcile(&desk).await;
    desk.halt().await;
    let drifted = reqwest::Client::new()
        .get(format!("{base}/internal/health"))
        .bearer_auth("operator")
        .send()
        .await
        .unwrap();
    assert_eq!(drifted.status(), 503);
    let body: Value = drifted.json().await.unwrap();
    assert!(
        body["problems"]
            .to_string()
            .contains("capital invariant broken"),
        "{body}"
    );
    assert_eq!(body["accounts"][0]["trading_paused"], true);
    let m = scrape(&base).await;
    assert_eq!(
        sample(&m, "pulse_capital_ledger_drift", &[("account", &account)]),
        Some(1.0)
    );
    assert_eq!(
        sample(&m, "pulse_trading_paused", &[("account", &account)]),
        Some(1.0)
    );
    assert!(
        sample(
            &m,
            "pulse_capital_invariant_violations",
            &[("cause", "ledger_drift")]
        )
        .is_some_and(|v| v >= 1.0)
    );
}

#[tokio::test]
async fn prune_keeps_open_mismatches_and_each_accounts_latest_run() {
    let desk = quiet_desk(desk_options()).await;
    let old = "now() - interval '40 days'";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO reconciliation_runs (tenant_id, account_id, reason, started_at, finished_at, duration_ms, requests, ok)
         VALUES ('{t}', '{a}', 'schedule', {old}, {old}, 1, 4, true),
                ('{t}', '{a}', 'schedule', {old} + interval '1 minute', {old} + interval '1 minute', 1, 4, true);
         INSERT INTO reconciliation_mismatches (tenant_id, account_id, kind, subject, details, found_at, resolved_at)
         VALUES ('{t}', '{a}', 'missing_fill', 'old-and-fixed', '{{}}', {old}, {old}),
                ('{t}', '{a}', 'position', 'OPEN', '{{}}', {old}, NULL),
                ('{t}', '{a}', 'missing_fill', 'recent', '{{}}', now(), now());",
        t = desk.tenant,
        a = desk.account,
    )))
    .execute(&desk.db.pool)
    .await
    .unwrap();
    let settings = desk.db.settings();
    let specs = pulse_jobs::registry(&pulse_jobs::Env::default());
    let prune = pulse_queue::prune::spec(settings.retention.clone(), &specs);
    (prune.handler)(
        serde_json::json!({}),
        pulse_contract::Attempt {
            pool: desk.db.pool.clone(),
            job_id: 0,
            job_name: "prune",
            attempt: 1,
            attempt_id: Uuid::new_v4(),
            max_attempts: 3,
            enqueued_at: chrono::Utc::now(),
        },
    )
    .await
    .unwrap();
    let subjects: Vec<String> =
        sqlx::query_scalar("SELECT subject FROM reconciliation_mismatches ORDER BY subject")
            .fetch_all(&desk.db.pool)
            .await
            .unwrap();
    assert_eq!(subjects, vec!["OPEN".to_string(), "recent".to_string()]);
    assert_eq!(
        desk.db
            .count("SELECT count(*) FROM reconciliation_runs")
            .await,
        1,
        "the account's latest run stays, however old"
    );
}
