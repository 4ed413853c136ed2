//! Latest quotes, kept for a moment per (market data host, symbol): a batch of
//! intents on one symbol asks the venue once, and market data (rate-limited apart from
//! trading at Alpaca) is not asked for every intent.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::Quote;

/// Entries at most; past it the cache starts over (symbols come from clients).
const MAX_ENTRIES: usize = 10_000;

/// (market data host, symbol) -> when asked, and the answer (`None`: the venue has
/// no believable quote for the symbol).
type Entries = HashMap<(String, String), (Instant, Option<Quote>)>;

#[derive(Default)]
pub struct QuoteCache {
    entries: Mutex<Entries>,
}

/// The key of a quote: the host as clients spell it (no trailing slash), the symbol.
fn key(host: &str, symbol: &str) -> (String, String) {
    (host.trim_end_matches('/').to_owned(), symbol.to_owned())
}

impl QuoteCache {
    /// How long a quote is reused.
    pub const TTL: Duration = Duration::from_secs(1);

    /// `Some(None)`: the venue said it has no quote, a moment ago.
    pub fn get(&self, host: &str, symbol: &str) -> Option<Option<Quote>> {
        let entries = self.entries.lock().expect("quote cache");
        entries
            .get(&key(host, symbol))
            .filter(|(at, _)| at.elapsed() < Self::TTL)
            .map(|(_, q)| *q)
    }

    pub fn put(&self, host: &str, symbol: &str, quote: Option<Quote>) {
        let mut entries = self.entries.lock().expect("quote cache");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(key(host, symbol), (Instant::now(), quote));
    }
}
