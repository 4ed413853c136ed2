//! The queue over more than one database (`docs/scaling.md`, step 5): where a job goes
//! when there are N queue shards, each a PostgreSQL with the same `fleet` schema.
//!
//! A job's shard is chosen by the one key that needs a single place:
//! - its concurrency key (one running at a time is a lock, and a lock lives on one
//!   server);
//! - else its idempotency key (two copies dedupe only where they meet);
//! - else round robin: it needs no place, so it goes where it spreads the load.
//!
//! The key is hashed with FNV-1a 64 (fixed by its definition: the same shard from
//! every process, build and language) and placed with jump consistent hashing
//! (Lamping and Veach, 2014): going from N to N+1 shards moves 1/(N+1) of the keys,
//! all of them to the new shard, where `hash mod N` would move N/(N+1) of them.
//!
//! Workers claim from the shards they are given (`worker::start` with that shard's
//! `QueuePools`) and run handlers against the application's database, as they do with
//! one queue database. The simulation in `tests/it/shards.rs` proves the guarantees
//! hold across shards and that a shard down stops only its share.

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::PgPool;

use crate::enqueue::{EnqueueOptions, enqueue};

/// The shard of `key` among `shards` (> 0).
pub fn shard_of(key: &str, shards: usize) -> usize {
    jump(fnv1a(key.as_bytes()), shards)
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Jump consistent hash: the bucket of `key` among `buckets` (Lamping and Veach,
/// "A Fast, Minimal Memory, Consistent Hash Algorithm", figure 1).
fn jump(mut key: u64, buckets: usize) -> usize {
    assert!(buckets > 0, "a shard map has at least one shard");
    let (mut b, mut j) = (-1_i64, 0_i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1_u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// The queue databases, in shard order (the order is the map: it must be the same in
/// every process).
pub struct ShardMap {
    pools: Vec<PgPool>,
    next: AtomicUsize,
}

/// Where a job went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub shard: usize,
    /// The job's id on its shard (ids are per shard: a job is named by both).
    pub id: i64,
}

/// An enqueue its shard refused or could not take; nothing was stored elsewhere.
#[derive(Debug, thiserror::Error)]
#[error("enqueue on queue shard {shard}: {source}")]
pub struct ShardError {
    pub shard: usize,
    #[source]
    pub source: sqlx::Error,
}

impl ShardMap {
    pub fn new(pools: Vec<PgPool>) -> Self {
        assert!(!pools.is_empty(), "a shard map has at least one shard");
        Self {
            pools,
            next: AtomicUsize::new(0),
        }
    }

    /// The shard a job with these options goes to.
    pub fn route(&self, options: &EnqueueOptions) -> usize {
        match options
            .concurrency_key
            .as_deref()
            .or(options.idempotency_key.as_deref())
        {
            Some(key) => shard_of(key, self.pools.len()),
            None => self.next.fetch_add(1, Ordering::Relaxed) % self.pools.len(),
        }
    }

    /// `fleet.enqueue` on the job's shard. A duplicate key returns the existing job.
    pub async fn enqueue(
        &self,
        job_name: &str,
        payload: &serde_json::Value,
        options: &EnqueueOptions,
    ) -> Result<Routed, ShardError> {
        let shard = self.route(options);
        let id = enqueue(&self.pools[shard], job_name, payload, options)
            .await
            .map_err(|source| ShardError { shard, source })?;
        Ok(Routed { shard, id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_and_the_placement_is_fixed() {
        // FNV-1a's published test vectors: a change here reroutes every live key.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        // Jump hash's test vectors (as the Go and Guava implementations check them).
        assert_eq!(jump(1, 1), 0);
        assert_eq!(jump(42, 57), 43);
        assert_eq!(jump(0xDEAD_10CC, 666), 361);
        assert_eq!(jump(256, 1024), 520);
        // And so these keys' shards among 8, which live jobs rely on.
        let placed: Vec<usize> = ["order:1", "order:2", "tenant:42", "acct:7"]
            .iter()
            .map(|k| shard_of(k, 8))
            .collect();
        assert_eq!(placed, [6, 5, 6, 1]);
    }

    #[test]
    fn adding_a_shard_moves_one_key_in_n_plus_one_all_to_the_new_shard() {
        let keys: Vec<String> = (0..100_000).map(|i| format!("key:{i}")).collect();
        for n in 1..8 {
            let (mut moved, mut counts) = (0, vec![0_usize; n + 1]);
            for key in &keys {
                let (before, after) = (shard_of(key, n), shard_of(key, n + 1));
                counts[after] += 1;
                if before != after {
                    assert_eq!(after, n, "{key} moved between old shards");
                    moved += 1;
                }
            }
            let share = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / (n + 1) as f64;
            assert!((share - ideal).abs() < 0.01, "{n}->{}: {share}", n + 1);
            // And the placement is even: every shard within 3% of its share.
            let fair = keys.len() as f64 / (n + 1) as f64;
            for c in counts {
                assert!((c as f64 - fair).abs() / fair < 0.03, "{n}: {c} vs {fair}");
            }
        }
        // What `mod N` would do from 3 to 4 shards: three keys in four move.
        let modulo = keys
            .iter()
            .filter(|k| fnv1a(k.as_bytes()) % 3 != fnv1a(k.as_bytes()) % 4)
            .count() as f64
            / keys.len() as f64;
        assert!(modulo > 0.7, "{modulo}");
    }
}
