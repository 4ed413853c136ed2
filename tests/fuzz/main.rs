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
