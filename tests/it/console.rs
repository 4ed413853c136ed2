//! The operators' console: its actions' guards over plain HTTP (CSRF, origin,
//! confirmation, audit), and every page in a real browser (Debian's Chromium through
//! chromedriver): each page reachable from the overview opens without a broken link or
//! a console error, a dead job is retried and a queue paused by clicking, and each page
//! is saved as a screenshot under `$CARGO_TARGET_TMPDIR/console/`.

use std::{collections::BTreeSet, path::PathBuf, time::Duration};

use base64::Engine;
use fantoccini::{Client, ClientBuilder, Locator, wd::WebDriverCompatibleCommand};
use pulse_queue::enqueue::EnqueueOptions;
use serde_json::{Value, json};

use crate::{
    helpers::*,
    lifecycle::{d, held},
    oms::desk,
};

const TOKEN: &str = "console-operator-token";

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"))
    )
}

/// A job that died of a real failed attempt (the canary fails its only attempt).
async fn dead_canary(db: &TestDb) -> i64 {
    let id = db
        .enqueue_with(
            "canary",
            json!({"fail_first_attempts": 1}),
            EnqueueOptions {
                max_attempts: Some(1),
                ..Default::default()
            },
        )
        .await;
    let worker = db.start_worker(vec![canary()], 1).await;
    db.wait_for_state(id, "dead", Duration::from_secs(20)).await;
    worker.shutdown().await.unwrap();
    id
}

/// A console page as the operator gets it.
async fn operator_page(http: &reqwest::Client, url: String) -> String {
    http.get(url)
        .header("authorization", basic())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The CSRF token of the pages served to the operator (read off a rendered form).
async fn csrf_token(http: &reqwest::Client, base: &str) -> String {
    let page = operator_page(http, format!("{base}/jobs")).await;
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a form with a CSRF token")
        + 19;
    page[at..at + 64].to_string()
}

#[tokio::test]
async fn console_actions_need_the_token_the_origin_and_a_confirmation_and_are_audited() {
    let db = TestDb::new(&[]).await;
    let dead = dead_canary(&db).await;
    let base = db.serve_web(|s| s.web.operator_token = TOKEN.into()).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let csrf = csrf_token(&http, &base).await;
    let post = |body: String, extra: Option<(&'static str, &'static str)>| {
        let mut request = http
            .post(format!("{base}/jobs/retry"))
            .header("authorization", basic())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some((k, v)) = extra {
            request = request.header(k, v);
        }
        request.send()
    };
    let state = || async { db.job(dead).await.state };

    // Without the operator credential: nothing.
    let anonymous = http
        .post(format!("{base}/jobs/retry"))
        .body(format!("ids={dead}&confirm=yes"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    // With the credential (a browser sends it by itself) but no token, a wrong token,
    // or from another site: refused, and the job stays dead.
    for (body, extra) in [
        (format!("ids={dead}&confirm=yes"), None),
        (
            format!("ids={dead}&confirm=yes&csrf={}", "0".repeat(64)),
            None,
        ),
        (
            format!("ids={dead}&confirm=yes&csrf={csrf}"),
            Some(("sec-fetch-site", "cross-site")),
        ),
        (
            format!("ids={dead}&confirm=yes&csrf={csrf}"),
            Some(("origin", "https://evil.example")),
        ),
    ] {
        let answer = post(body.clone(), extra).await.unwrap();
        assert_eq!(answer.status(), 403, "{body} {extra:?}");
        assert_eq!(state().await, "dead");
    }
    // The token of another credential is not this one's.
    let other = pulse_fleet::web::csrf_token(b"another-operator");
    let answer = post(format!("ids={dead}&confirm=yes&csrf={other}"), None)
        .await
        .unwrap();
    assert_eq!(answer.status(), 403);

    // The first POST asks; nothing changes until confirmed.
    let ask = post(format!("ids={dead}&csrf={csrf}&back=/jobs"), None)
        .await
        .unwrap();
    assert_eq!(ask.status(), 200);
    let page = ask.text().await.unwrap();
    assert!(
        page.contains("Yes, retry") && page.contains(&format!("job {dead}")),
        "{page}"
    );
    assert_eq!(state().await, "dead");
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.operator_actions")
            .await,
        0
    );

    // An open redirect is not offered: `back` must be a path of this site, also once
    // a browser has dropped the tabs and newlines it would ignore.
    for back in [
        "/%09/evil.example/x",
        "/%0a/evil.example/x",
        "/%5C/evil.example",
    ] {
        let ask = post(format!("ids={dead}&csrf={csrf}&back={back}"), None)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!ask.contains("evil.example"), "{back} kept: {ask}");
    }
    let done = post(
        format!("ids={dead}&csrf={csrf}&confirm=yes&back=//evil.example/x"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(done.status(), 303);
    let location = done.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with("/jobs?notice="), "{location}");
    assert_eq!(state().await, "available");

    // Audited once, naming the operator by a fingerprint, never by the credential.
    let (actor, action, target, affected): (String, String, Value, i64) =
        sqlx::query_as("SELECT actor, action, target, affected FROM fleet.operator_actions")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        actor.starts_with("operator:") && !actor.contains(TOKEN),
        "{actor}"
    );
    assert_eq!((action.as_str(), affected), ("retry", 1));
    assert_eq!(target, json!({"ids": [dead]}));
    let log = operator_page(&http, format!("{base}/audit")).await;
    assert!(log.contains(&actor) && log.contains("retry"), "{log}");

    // Pausing an unknown queue is refused before anything is written.
    let unknown = http
        .post(format!("{base}/queues/no_such_queue/pause"))
        .header("authorization", basic())
        .body(format!("csrf={csrf}&confirm=yes"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.paused_queues").await,
        0
    );
}

#[tokio::test]
async fn job_filters_find_jobs_by_type_state_tenant_key_and_age() {
    let db = TestDb::new(&[]).await;
    let tenant = "00000000-0000-4000-8000-0000000000aa";
    // First (its worker would run the others).
    let dead = dead_canary(&db).await;
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(
            db.enqueue_with(
                "canary",
                json!({"tenant_id": if i % 2 == 0 { tenant } else { "other" }}),
                EnqueueOptions {
                    idempotency_key: Some(format!("k{i}")),
                    ..Default::default()
                },
            )
            .await,
        );
    }
    let list = |filter: pulse_queue::admin::Filter| {
        let pool = db.pool.clone();
        async move {
            pulse_queue::admin::list(&pool, &filter)
                .await
                .unwrap()
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    use pulse_queue::{JobState, admin::Filter};
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(
        list(Filter {
            state: Some(JobState::Available),
            ..Default::default()
        })
        .await,
        newest_first
    );
    assert_eq!(
        list(Filter {
            state: Some(JobState::Dead),
            name: Some("canary".into()),
            ..Default::default()
        })
        .await,
        vec![dead]
    );
    // Every state of one type: the settled states' index and the running jobs' merged.
    let mut all = newest_first.clone();
    all.push(dead);
    all.sort_by(|a, b| b.cmp(a));
    assert_eq!(
        list(Filter {
            name: Some("canary".into()),
            ..Default::default()
        })
        .await,
        all
    );
    assert!(
        list(Filter {
            state: Some(JobState::Running),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        list(Filter {
            tenant: Some(tenant.into()),
            ..Default::default()
        })
        .await,
        vec![ids[4], ids[2], ids[0]]
    );
    assert_eq!(
        list(Filter {
            key: Some("k3".into()),
            ..Default::default()
        })
        .await,
        vec![ids[3]]
    );
    // Pages: two at a time, then the rest below the cursor.
    let first = list(Filter {
        state: Some(JobState::Available),
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(first, vec![ids[4], ids[3]]);
    let next = list(Filter {
        state: Some(JobState::Available),
        before_id: Some(ids[3]),
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(next, vec![ids[2], ids[1]]);
    // Age: everything is newer than a minute; nothing is older.
    let minute_ago = chrono::Utc::now() - chrono::Duration::minutes(1);
    assert_eq!(
        list(Filter {
            created_after: Some(minute_ago),
            ..Default::default()
        })
        .await
        .len(),
        6
    );
    assert!(
        list(Filter {
            created_before: Some(minute_ago),
            name: Some("canary".into()),
            ..Default::default()
        })
        .await
        .is_empty()
    );
}

/// A WebDriver command chromedriver has beyond the standard: a POST to
/// `/session/{id}/{path}` (its browser log, DevTools commands).
#[derive(Debug)]
struct Extension {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for Extension {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/{}",
            session.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

/// Headless Chromium driven through chromedriver, sending the operator credential with
/// every request (as a browser does once its user has typed it).
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    shots: PathBuf,
}

impl Browser {
    async fn open() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver (Debian's chromium-driver; .ci/run installs it)");
        let url = format!("http://127.0.0.1:{port}");
        wait_until("chromedriver answers", Duration::from_secs(20), || async {
            reqwest::get(format!("{url}/status")).await.is_ok()
        })
        .await;
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1366,900"]
            },
            "goog:loggingPrefs": {"browser": "ALL"}
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.as_object().unwrap().clone())
            .connect(&url)
            .await
            .expect("a Chromium session");
        for (cmd, params) in [
            ("Network.enable", json!({})),
            (
                "Network.setExtraHTTPHeaders",
                json!({"headers": {"Authorization": basic()}}),
            ),
        ] {
            client
                .issue_cmd(Extension {
                    path: "goog/cdp/execute",
                    body: json!({"cmd": cmd, "params": params}),
                })
                .await
                .unwrap();
        }
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            client,
            _driver: driver,
            shots,
        }
    }

    /// What the page logged to its console since the last call, at warning or worse.
    async fn console_errors(&self) -> Vec<String> {
        let log = self
            .client
            .issue_cmd(Extension {
                path: "se/log",
                body: json!({"type": "browser"}),
            })
            .await
            .unwrap();
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| matches!(e["level"].as_str(), Some("SEVERE" | "WARNING")))
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    async fn shot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// The element `css` names, waiting (up to 10 s) for the page that has it to load.
    async fn element(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(e) => {
                let page = self.client.source().await.unwrap_or_default();
                panic!(
                    "no {css} ({e}) on {:?}: {page}",
                    self.client.current_url().await
                );
            }
        }
    }

    async fn click(&self, css: &str) {
        self.element(css).await.click().await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.element(css).await.text().await.unwrap()
    }
}

/// The screenshot name of a console path: its route, ids left out.
fn shot_name(path: &str) -> String {
    let route: Vec<&str> = path
        .split('?')
        .next()
        .unwrap()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.chars().any(|c| c.is_ascii_digit()) && s.len() > 6 || s.parse::<i64>().is_ok() {
                "one"
            } else {
                s
            }
        })
        .collect();
    if route.is_empty() {
        "overview".into()
    } else {
        route.join("-")
    }
}

#[tokio::test]
async fn the_console_in_a_real_browser_links_retries_and_pauses() {
    // A desk with an intent submitted and one leg partly filled, and a dead job.
    let desk = desk(held(), 10_000).await;
    let intent = desk
        .intent(
            "console",
            vec![desk.leg("AAPL", "buy", 10), desk.leg("MSFT", "sell", 4)],
        )
        .await;
    desk.submitted(intent).await;
    assert!(desk.venue.fill(&desk.coid(intent, 0), d("3"), d("100")));
    desk.settle().await;
    let db = &desk.db;
    let dead = dead_canary(db).await;
    // A broker connection whose authorisation lapsed (its tokens sealed, as stored).
    sqlx::query(
        "INSERT INTO broker_connections (tenant_id, user_id, broker, status, access_token,
             refresh_token, expires_at, last_error)
         VALUES ($1, 'trader-1', 'schwab', 'needs_reauth', $2, $2, now() - interval '1 hour',
                 'the broker refused the refresh token (invalid_grant)')",
    )
    .bind(desk.tenant)
    .bind(pulse_domain::secrets::seal("never-shown", &[1; 32]))
    .execute(&db.pool)
    .await
    .unwrap();
    let base = db.serve_web(|s| s.web.operator_token = TOKEN.into()).await;
    let browser = Browser::open().await;
    let http = reqwest::Client::new();

    // Every page reachable from the overview by links, once per route: it answers
    // 200, logs nothing to the console, and links only to pages that answer 200.
    let mut seen = BTreeSet::new();
    let mut shots = BTreeSet::new();
    let mut queue = vec!["/".to_string()];
    while let Some(path) = queue.pop() {
        if !seen.insert(path.clone()) || seen.len() > 80 {
            continue;
        }
        let status = http
            .get(format!("{base}{path}"))
            .header("authorization", basic())
            .send()
            .await
            .unwrap()
            .status();
        if path == "/internal/health" {
            // Its status is its answer: 503 while a problem stands (here: no scheduler).
            assert!(status == 200 || status == 503, "{path}: {status}");
            continue;
        }
        assert_eq!(status, 200, "a broken link: {path}");
        if path == "/metrics" {
            continue;
        }
        browser.client.goto(&format!("{base}{path}")).await.unwrap();
        let errors = browser.console_errors().await;
        assert!(errors.is_empty(), "{path}: console errors {errors:?}");
        let name = shot_name(&path);
        if shots.insert(name.clone()) {
            browser.shot(&name).await;
        }
        for link in browser
            .client
            .find_all(Locator::Css("a[href]"))
            .await
            .unwrap()
        {
            let href = link.attr("href").await.unwrap().unwrap_or_default();
            let href = href.strip_prefix(&base).unwrap_or(&href).to_string();
            assert!(
                href.starts_with('/'),
                "{path} links off the console: {href}"
            );
            // Filtered lists differ only by query: follow one of each route.
            if !seen.contains(&href) && !shots.contains(&shot_name(&href)) {
                queue.push(href);
            }
        }
    }
    for route in [
        "overview",
        "jobs",
        "jobs-one",
        "trading",
        "trading-accounts-one",
        "trading-intents-one",
        "alerts",
        "audit",
    ] {
        assert!(
            shots.contains(route),
            "{route} was not reachable by links: {shots:?}"
        );
    }

    // Broker connections show their state and expiry, never their tokens.
    browser
        .client
        .goto(&format!("{base}/trading"))
        .await
        .unwrap();
    let connections = browser.text("#connections").await;
    assert!(
        connections.contains("needs_reauth") && connections.contains("invalid_grant"),
        "{connections}"
    );
    assert!(!browser.client.source().await.unwrap().contains("enc:v1:"));

    // The console-error check is not blind: a page that fails to load logs one.
    browser
        .client
        .goto(&format!("{base}/jobs/987654321"))
        .await
        .unwrap();
    let errors = browser.console_errors().await;
    assert!(
        errors.iter().any(|e| e.contains("404")),
        "a 404 shows in the console log: {errors:?}"
    );

    // The dead job's page shows its failed attempt: error, worker, time.
    browser
        .client
        .goto(&format!("{base}/jobs/{dead}"))
        .await
        .unwrap();
    let attempts = browser.text("#attempts").await;
    assert!(
        attempts.contains("canary fails attempt 1") && attempts.contains("retryable"),
        "{attempts}"
    );
    browser.shot("job-dead").await;

    // Retry the dead job by clicking: tick it, retry, confirm.
    browser
        .client
        .goto(&format!("{base}/jobs?state=dead"))
        .await
        .unwrap();
    browser
        .click(&format!("input[name=ids][value='{dead}']"))
        .await;
    browser.click("button[formaction='/jobs/retry']").await;
    browser.element("#confirm").await;
    assert!(browser.text("h1").await.starts_with("Confirm: retry job"));
    browser.shot("confirm-retry").await;
    assert_eq!(
        db.job(dead).await.state,
        "dead",
        "not before it is confirmed"
    );
    browser.click("#confirm").await;
    assert_eq!(browser.text(".notice").await, "1 job(s) queued again");
    assert_eq!(db.job(dead).await.state, "available");
    browser.shot("after-retry").await;

    // Pause the canary queue by clicking, and see it shown paused.
    browser.client.goto(&format!("{base}/")).await.unwrap();
    browser
        .click("tr[data-queue=canary] form[action='/queues/canary/pause'] button")
        .await;
    browser.click("#confirm").await;
    assert_eq!(browser.text(".notice").await, "queue canary paused");
    assert_eq!(
        db.count("SELECT count(*) FROM fleet.paused_queues WHERE job_name = 'canary'")
            .await,
        1
    );
    assert!(
        browser
            .text("tr[data-queue=canary]")
            .await
            .contains("paused")
    );
    browser.shot("after-pause").await;
    assert!(browser.console_errors().await.is_empty());
    let actions: Vec<String> =
        sqlx::query_scalar("SELECT action FROM fleet.operator_actions ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(actions, ["retry", "pause"]);
    browser.client.close().await.unwrap();
}

#[tokio::test]
async fn throughput_counts_each_finished_job_once_through_roll_ups_and_recounts() {
    let db = TestDb::new(&[]).await;
    let ids: Vec<i64> =
        futures_util::future::join_all((0..7).map(|_| db.enqueue("canary", json!({})))).await;
    let worker = db.start_worker(vec![canary()], 4).await;
    for id in &ids {
        db.wait_for_state(*id, "completed", Duration::from_secs(20))
            .await;
    }
    worker.shutdown().await.unwrap();
    let dead = dead_canary(&db).await;
    assert_eq!(db.job(dead).await.state, "dead");
    // A recount (what prune runs) takes the pending job deltas away: their
    // throughput must be filed, not lost, and a later roll-up must not count it again.
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT fleet.recount_jobs()")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let series = pulse_queue::admin::throughput(&db.pool, 60).await.unwrap();
    let canary = &series["canary"];
    assert_eq!(canary.len(), 60, "an hour, minute by minute");
    let completed: f64 = canary.iter().map(|(c, _)| c).sum();
    let died: f64 = canary.iter().map(|(_, d)| d).sum();
    assert_eq!((completed, died), (7.0, 1.0));
    // Retrying the dead job (a departure from `dead`) is not throughput.
    pulse_queue::admin::retry(
        &db.pool,
        &pulse_queue::admin::Selection::ids(vec![dead]),
        "test",
    )
    .await
    .unwrap();
    let again = pulse_queue::admin::throughput(&db.pool, 60).await.unwrap();
    assert_eq!(&again["canary"], canary);
}
