//! The README's examples, run as a user pastes them: every fenced `sh` block after a
//! README marker naming this file, against `pulse-fleet all --demo` on the ports the
//! README names (8080 web, 8070 paper venue, 8090 Discord sink). The README's
//! `target/release/pulse-fleet` is this build's binary.

use std::time::Duration;

use crate::helpers::*;

/// The fenced `sh` blocks that follow the markers naming this file, in order.
fn marked_blocks(readme: &str) -> Vec<String> {
    readme
        .split("<!-- tests/it/readme.rs runs the next block")
        .skip(1)
        .map(|rest| {
            let open = rest.find("```sh\n").expect("a sh block after the marker") + "```sh\n".len();
            let close = rest[open..].find("```").expect("the block's end");
            rest[open..open + close].to_owned()
        })
        .collect()
}

/// Runs a README block in bash from the clone's root, as a user in another shell
/// would (the README's binary path being this build's); its stdout.
async fn run_block(block: &str, db: &TestDb) -> String {
    let bin = env!("CARGO_BIN_EXE_pulse-fleet");
    let out = tokio::process::Command::new("bash")
        .args(["-c", &block.replace("target/release/pulse-fleet", bin)])
        .env("B", bin)
        .env("DATABASE_URL", &db.url)
        .env("APP_ENV", "local")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{block}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn the_readme_examples_work_as_pasted() {
    let db = TestDb::new(&[]).await;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let blocks = marked_blocks(&readme);
    assert_eq!(blocks.len(), 2, "the README's tested blocks");
    // What scripts/run-local.sh sets, on the test's database.
    let mut fleet = fleet_command(
        &db,
        &["all", "--demo"],
        &[
            ("APP_ENV", "local"),
            ("PULSE__STRIPE__WEBHOOK_SECRETS", "whsec_local_dev"),
            ("PULSE__WATCHERS__WEBHOOK_SECRET", "local-dev-secret"),
            ("PULSE__WEB__OPERATOR_TOKEN", "local-operator"),
            ("PULSE_DEMO_PAPER_SECRET", "local-paper-secret"),
            (
                "PULSE_SECRETS_KEY",
                "bG9jYWwtZGV2LWtleS1ub3QtZm9yLXByb2R1Y3Rpb24=",
            ),
            ("PULSE_LOCAL_OAUTH_SECRET", "local-client-secret"),
            ("RUST_LOG", "warn"),
        ],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    wait_until(
        "the web process on :8080 (is something else using it?)",
        Duration::from_secs(30),
        || async {
            reqwest::get("http://localhost:8080/internal/health")
                .await
                .is_ok()
        },
    )
    .await;

    // "Try, in another shell": a canary enqueued, and the job list shows it.
    let tried = run_block(&blocks[0], &db).await;
    assert!(tried.contains("canary"), "{tried}");

    // The webhooks: both answers, then the alert in the sink and the watcher.
    let stdout = run_block(&blocks[1], &db).await;
    assert!(
        stdout.contains(r#"{"duplicate":false,"received":true}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            r#"{"operation":"INSERT","success":true,"symbol":"BTC/USDT","user_id":"demo-trader"}"#
        ),
        "{stdout}"
    );
    wait_until(
        "the payment-failed alert in the sink",
        Duration::from_secs(30),
        || async {
            reqwest::get("http://localhost:8090/messages")
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
                .contains("Payment failed")
        },
    )
    .await;
    wait_until("the watcher", Duration::from_secs(30), || async {
        db.count(
            "SELECT count(*) FROM watchers WHERE user_id = 'demo-trader' AND symbol = 'BTC/USDT'",
        )
        .await
            == 1
    })
    .await;
    // The first run shows a broker token refresh (the demo trader's connection,
    // against the local endpoint in Schwab's dialect).
    wait_until(
        "the demo's broker token refreshed",
        Duration::from_secs(30),
        || async {
            db.count(
                "SELECT count(*) FROM broker_connections
             WHERE user_id = 'demo-trader' AND status = 'active' AND generation >= 1",
            )
            .await
                == 1
        },
    )
    .await;
    // The first run's story: a cross-venue arbitrage per tenant, filled on both
    // venues; the fund's intent with a rejected Binance leg, unwound and failed with
    // Binance's words; Stripe events out of order and twice; a watcher switched off.
    wait_until(
        "both arbitrages filled",
        Duration::from_secs(60),
        || async {
            db.count(
                "SELECT count(*) FROM multi_leg_intents i
             WHERE idempotency_key LIKE 'story-arb-%' AND status = 'filled'
               AND (SELECT count(DISTINCT venue_id) FROM orders o
                    WHERE o.intent_id = i.id AND o.status = 'filled') = 2",
            )
            .await
                == 2
        },
    )
    .await;
    wait_until(
        "the unwound intent failed",
        Duration::from_secs(30),
        || async {
            db.count(
                "SELECT count(*) FROM multi_leg_intents WHERE idempotency_key = 'story-unwound'
               AND status = 'failed' AND reason LIKE '%insufficient balance%'",
            )
            .await
                == 1
        },
    )
    .await;
    assert_eq!(
        db.count("SELECT count(*) FROM orders WHERE symbol = 'SOL/USD' AND status = 'cancelled'")
            .await,
        1,
        "the accepted leg was cancelled on its own venue"
    );
    wait_until("the Stripe story", Duration::from_secs(60), || async {
        db.count(
            "SELECT count(*) FROM billing.stripe_events WHERE event_id LIKE 'evt_story_%'
               AND outcome = CASE event_id WHEN 'evt_story_sub_created' THEN 'stale' ELSE 'applied' END",
        )
        .await
            == 3
    })
    .await;
    assert_eq!(
        db.count(
            "SELECT count(*) FROM billing.subscriptions WHERE status = 'active' AND tier = 'pro'"
        )
        .await,
        1
    );
    wait_until(
        "the watcher switched off",
        Duration::from_secs(30),
        || async {
            db.count("SELECT count(*) FROM watchers WHERE symbol = 'ETH/USDT' AND NOT active")
                .await
                == 1
        },
    )
    .await;
    sigterm(&fleet);
    tokio::time::timeout(Duration::from_secs(30), fleet.wait())
        .await
        .expect("the fleet stops on SIGTERM")
        .unwrap();
}
