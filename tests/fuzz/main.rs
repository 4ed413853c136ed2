//! Fuzzing the doors with proptest: what comes from outside (webhook signatures and
//! bodies, venue answers, intents' legs, job payloads) is generated at random, and nothing may panic, a forged
//! input may not pass, and a refused one may not be stored. Each target runs a bounded
//! number of cases (`PROPTEST_CASES` raises it); a failing case is saved by proptest
//! under `tests/proptest-regressions/` (committed: replayed first on every run),
//! and the cases that found defects are kept as named examples below.

mod binance_answers;
mod json;
mod payloads;
mod signatures;
mod venue_answers;
mod webhooks;

/// A runtime of its own serving `app` on a free local port (venue answer targets: one
/// server for every case), and the server's base URL.
fn serve(app: axum::Router) -> (tokio::runtime::Runtime, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        base
    });
    (rt, base)
}
