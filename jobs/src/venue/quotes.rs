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

#[derive(Default)]
pub struct QuoteCache {
    entries: Mutex<HashMap<(String, String), (Instant, Quote)>>,
}

impl QuoteCache {
    /// How long a quote is reused.
    pub const TTL: Duration = Duration::from_secs(1);

    pub fn get(&self, host: &str, symbol: &str) -> Option<Quote> {
        let entries = self.entries.lock().expect("quote cache");
        entries
            .get(&(host.to_owned(), symbol.to_owned()))
            .filter(|(at, _)| at.elapsed() < Self::TTL)
            .map(|(_, q)| *q)
    }

    pub fn put(&self, host: &str, symbol: &str, quote: Quote) {
        let mut entries = self.entries.lock().expect("quote cache");
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(
            (host.to_owned(), symbol.to_owned()),
            (Instant::now(), quote),
        );
    }
}
