//! A fixed-size table of blocked keys.

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::mix64;
use crate::sync::Backoff;

/// Entries per bucket.
const WAYS: usize = 8;
/// Key value of an empty slot. A real key 0 is stored as [`ZERO_KEY_STAND_IN`].
const EMPTY: u64 = 0;
const ZERO_KEY_STAND_IN: u64 = 1;

/// Fixed-capacity table of blocked keys with expiry (repeat offenders),
/// set-associative (8-way buckets), memory fixed at construction. When a bucket is
/// full, the entry that expires soonest makes room. Thread-safe with `&self`.
///
/// # Cost of a lookup
///
/// [`blocked_until`](Self::blocked_until) runs on every accepted connection, so it
/// takes no lock and writes no shared memory: each bucket is guarded by a sequence
/// counter that writers make odd while they change the bucket. A reader reads the
/// counter, the eight keys (one cache line) and maybe one expiry, then checks that
/// the counter did not move; only a reader that overlapped a write reads again.
/// Writers ([`block`](Self::block), [`unblock`](Self::unblock)) serialise per bucket
/// on the same counter; a bucket is written for a few nanoseconds.
///
/// # When full
///
/// Memory never grows, so under a flood from more addresses than the table holds,
/// something must be forgotten. Within the key's bucket, [`block`](Self::block)
/// replaces, in order of preference: the same key, an empty slot, and otherwise the
/// entry that expires soonest (an expired entry expires sooner than any live one, so
/// expired entries go first). If the newcomer itself would expire sooner than every
/// entry already in the full bucket, it is the one dropped: the table keeps the
/// blocks with the most time left to serve.
///
/// Keys are expected to be keyed hashes ([`KeyHasher`](crate::KeyHasher)), so an
/// attacker cannot aim many addresses at one bucket to flush a block out.
pub struct BlockTable {
    buckets: Box<[Bucket]>,
}

struct Bucket {
    /// Even: stable. Odd: a writer is changing this bucket.
    seq: AtomicU32,
    keys: [AtomicU64; WAYS],
    until: [AtomicU64; WAYS],
}

impl Bucket {
    fn new() -> Self {
        Self {
            seq: AtomicU32::new(0),
            keys: std::array::from_fn(|_| AtomicU64::new(EMPTY)),
            until: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Reads the bucket consistently: runs `read` until it ran with no writer in
    /// between.
    fn read<T>(&self, mut read: impl FnMut(&Self) -> T) -> T {
        let mut backoff = Backoff::new();
        loop {
            let seq = self.seq.load(Ordering::Acquire);
            if seq & 1 == 0 {
                let value = read(self);
                // Sequence-lock reader: keeps the loads in `read` before the second
                // load of `seq`. If `read` saw any store of a writer, that writer's
                // release fence makes its odd `seq` visible here.
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == seq {
                    return value;
                }
            }
            backoff.snooze();
        }
    }

    /// Runs `write` with the bucket locked against other writers and with readers
    /// told to retry.
    fn write<T>(&self, write: impl FnOnce(&Self) -> T) -> T {
        let mut backoff = Backoff::new();
        let seq = loop {
            let seq = self.seq.load(Ordering::Relaxed);
            if seq & 1 == 0
                && self
                    .seq
                    .compare_exchange_weak(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break seq;
            }
            backoff.snooze();
        };
        // Keeps the stores in `write` from becoming visible before the odd `seq`.
        fence(Ordering::Release);
        let value = write(self);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
        value
    }
}

impl BlockTable {
    /// A table for `capacity` keys, rounded up to a whole number of 8-entry buckets
    /// (at least one). Memory is allocated here and never again.
    pub fn new(capacity: usize) -> Self {
        let buckets = capacity.div_ceil(WAYS).max(1);
        Self {
            buckets: (0..buckets).map(|_| Bucket::new()).collect(),
        }
    }

    /// Number of keys the table can hold.
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Blocks `key` until `until_ms`. If the key is already present, its expiry
    /// becomes the later of the two: blocking never shortens a block (use
    /// [`unblock`](Self::unblock) for that).
    pub fn block(&self, key: u64, until_ms: u64) {
        let key = stored_key(key);
        self.bucket(key).write(|b| {
            let mut empty = None;
            let mut soonest: Option<(usize, u64)> = None;
            for i in 0..WAYS {
                let k = b.keys[i].load(Ordering::Relaxed);
                if k == key {
                    let old = b.until[i].load(Ordering::Relaxed);
                    b.until[i].store(old.max(until_ms), Ordering::Relaxed);
                    return;
                }
                if k == EMPTY {
                    empty.get_or_insert(i);
                } else {
                    let until = b.until[i].load(Ordering::Relaxed);
                    if soonest.is_none_or(|(_, u)| until < u) {
                        soonest = Some((i, until));
                    }
                }
            }
            let slot = match (empty, soonest) {
                (Some(i), _) => i,
                (None, Some((i, until))) if until < until_ms => i,
                // Full, and the newcomer would be the first to expire: drop it.
                _ => return,
            };
            b.keys[slot].store(key, Ordering::Relaxed);
            b.until[slot].store(until_ms, Ordering::Relaxed);
        });
    }

    /// Removes `key`; returns whether it was present (expired or not).
    pub fn unblock(&self, key: u64) -> bool {
        let key = stored_key(key);
        self.bucket(key).write(|b| {
            for i in 0..WAYS {
                if b.keys[i].load(Ordering::Relaxed) == key {
                    b.keys[i].store(EMPTY, Ordering::Relaxed);
                    b.until[i].store(0, Ordering::Relaxed);
                    return true;
                }
            }
            false
        })
    }

    /// When `key`'s block ends, if it is blocked at `now_ms`. `None` if the key is
    /// absent or its block expired (`until_ms <= now_ms`).
    pub fn blocked_until(&self, key: u64, now_ms: u64) -> Option<u64> {
        let key = stored_key(key);
        self.bucket(key)
            .read(|b| {
                b.keys
                    .iter()
                    .position(|k| k.load(Ordering::Relaxed) == key)
                    .map(|i| b.until[i].load(Ordering::Relaxed))
            })
            .filter(|&until| until > now_ms)
    }

    /// Number of keys blocked at `now_ms`. Walks the whole table: meant for metrics,
    /// not for the request path. Not a snapshot: blocks added or removed during the
    /// walk may or may not be counted.
    pub fn len(&self, now_ms: u64) -> usize {
        self.buckets
            .iter()
            .map(|b| {
                b.read(|b| {
                    (0..WAYS)
                        .filter(|&i| {
                            b.keys[i].load(Ordering::Relaxed) != EMPTY
                                && b.until[i].load(Ordering::Relaxed) > now_ms
                        })
                        .count()
                })
            })
            .sum()
    }

    /// Whether no key is blocked at `now_ms`. Walks the whole table, like
    /// [`len`](Self::len).
    pub fn is_empty(&self, now_ms: u64) -> bool {
        self.len(now_ms) == 0
    }

    /// Bytes of table memory held (constant after construction).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val::<[Bucket]>(&self.buckets)
    }

    fn bucket(&self, key: u64) -> &Bucket {
        // Multiply-shift range reduction: any bucket count, no modulo, and it uses
        // the mixed key's high bits, which are its best.
        let n = self.buckets.len() as u128;
        let index = (u128::from(mix64(key)) * n) >> 64;
        &self.buckets[index as usize]
    }
}

/// The key as stored: 0 marks an empty slot, so a real key 0 shares a slot value
/// with key 1. Both are then the same client to the table, which for 64-bit hashed
/// keys happens with probability 2^-63.
fn stored_key(key: u64) -> u64 {
    if key == EMPTY { ZERO_KEY_STAND_IN } else { key }
}

impl fmt::Debug for BlockTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockTable")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn block_lookup_expiry() {
        let t = BlockTable::new(64);
        assert_eq!(t.blocked_until(10, 0), None);
        t.block(10, 1_000);
        assert_eq!(t.blocked_until(10, 0), Some(1_000));
        assert_eq!(t.blocked_until(10, 999), Some(1_000));
        assert_eq!(t.blocked_until(10, 1_000), None, "expires at until_ms");
        assert_eq!(t.blocked_until(11, 0), None);
        assert_eq!(t.len(0), 1);
        assert_eq!(t.len(1_000), 0);
        assert!(t.is_empty(1_000));
    }

    #[test]
    fn block_extends_never_shortens() {
        let t = BlockTable::new(64);
        t.block(10, 1_000);
        t.block(10, 5_000);
        assert_eq!(t.blocked_until(10, 0), Some(5_000));
        t.block(10, 2_000);
        assert_eq!(t.blocked_until(10, 0), Some(5_000));
        assert_eq!(t.len(0), 1, "extending must not add a second entry");
        // An expired entry is renewed in place.
        t.block(10, 9_000);
        assert_eq!(t.blocked_until(10, 6_000), Some(9_000));
        assert_eq!(t.len(0), 1);
    }

    #[test]
    fn unblock_removes() {
        let t = BlockTable::new(64);
        t.block(10, 1_000);
        assert!(t.unblock(10));
        assert!(!t.unblock(10));
        assert_eq!(t.blocked_until(10, 0), None);
        t.block(10, 2_000);
        assert_eq!(t.blocked_until(10, 0), Some(2_000));
    }

    #[test]
    fn capacity_rounds_up_to_buckets() {
        assert_eq!(BlockTable::new(0).capacity(), 8);
        assert_eq!(BlockTable::new(1).capacity(), 8);
        assert_eq!(BlockTable::new(9).capacity(), 16);
        assert_eq!(BlockTable::new(1 << 20).capacity(), 1 << 20);
    }

    #[test]
    fn eviction_picks_soonest_expiring() {
        // One bucket, so every key competes for the same eight slots.
        let t = BlockTable::new(8);
        let untils = [800, 300, 700, 100, 600, 500, 400, 200];
        for (key, until) in (1..).zip(untils) {
            t.block(key, until);
        }
        assert_eq!(t.len(0), 8);
        t.block(100, 1_000);
        assert_eq!(t.blocked_until(100, 0), Some(1_000));
        assert_eq!(t.blocked_until(4, 0), None, "until 100 was the soonest");
        for key in [1, 2, 3, 5, 6, 7, 8] {
            assert!(t.blocked_until(key, 0).is_some(), "key {key} evicted");
        }
        t.block(101, 1_000);
        assert_eq!(t.blocked_until(8, 0), None, "until 200 was next");
        assert_eq!(t.len(0), 8);
    }

    #[test]
    fn eviction_prefers_expired_entries() {
        let t = BlockTable::new(8);
        for key in 1..=8 {
            t.block(key, 1_000 + key);
        }
        // Keys 1..=8 expired by now = 5_000; a newcomer takes the soonest.
        t.block(50, 6_000);
        assert_eq!(t.blocked_until(50, 5_000), Some(6_000));
        assert_eq!(t.len(5_000), 1);
    }

    #[test]
    fn newcomer_expiring_first_is_dropped_when_full() {
        let t = BlockTable::new(8);
        for key in 1..=8 {
            t.block(key, 10_000);
        }
        t.block(99, 5_000);
        assert_eq!(t.blocked_until(99, 0), None);
        assert_eq!(t.len(0), 8);
    }

    #[test]
    fn key_zero_works() {
        let t = BlockTable::new(64);
        assert_eq!(t.blocked_until(0, 0), None);
        t.block(0, 1_000);
        assert_eq!(t.blocked_until(0, 0), Some(1_000));
        assert_eq!(t.len(0), 1);
        assert!(t.unblock(0));
        assert_eq!(t.blocked_until(0, 0), None);
        assert_eq!(t.len(0), 0);
    }

    #[test]
    fn million_distinct_inserts_keep_memory_constant() {
        let t = BlockTable::new(4_096);
        let memory = t.memory_bytes();
        for i in 0..1_000_000u64 {
            t.block(mix64(i), 1_000 + i);
            if i % 100_000 == 0 {
                assert_eq!(t.memory_bytes(), memory);
            }
        }
        assert_eq!(t.memory_bytes(), memory);
        let live = t.len(0);
        assert!(live <= t.capacity());
        // Every bucket should be full of the most recent, longest-lasting blocks.
        assert_eq!(live, t.capacity());
        assert!(t.blocked_until(mix64(999_999), 0).is_some());
        assert_eq!(t.blocked_until(mix64(0), 0), None);
    }

    #[test]
    fn concurrent_readers_and_writers() {
        // Writers keep rewriting one bucket while readers check that they never see
        // a key paired with another key's expiry.
        let t = BlockTable::new(8);
        std::thread::scope(|scope| {
            for w in 0..2u64 {
                let t = &t;
                scope.spawn(move || {
                    for i in 0..20_000u64 {
                        let key = 1 + (i * 2 + w) % 32;
                        // Expiry encodes the key, so readers can check pairing.
                        t.block(key, key * 1_000_000 + i);
                        if i % 7 == 0 {
                            t.unblock(key);
                        }
                    }
                });
            }
            for _ in 0..2 {
                let t = &t;
                scope.spawn(move || {
                    for i in 0..40_000u64 {
                        let key = 1 + i % 32;
                        if let Some(until) = t.blocked_until(key, 0) {
                            assert_eq!(until / 1_000_000, key, "torn read");
                        }
                    }
                });
            }
        });
    }

    proptest! {
        /// Against a model with unlimited memory: whatever the table reports as
        /// blocked is blocked in the model, with the same expiry, and with room for
        /// everything it forgets nothing.
        #[test]
        fn agrees_with_unbounded_model(
            ops in prop::collection::vec((1u64..65, 0u64..10_000, any::<bool>()), 1..300),
            now in 0u64..10_000,
        ) {
            let t = BlockTable::new(1024);
            let mut model = std::collections::HashMap::new();
            for (key, until, unblock) in ops {
                if unblock {
                    prop_assert_eq!(t.unblock(key), model.remove(&key).is_some());
                } else {
                    t.block(key, until);
                    let e = model.entry(key).or_insert(until);
                    *e = (*e).max(until);
                }
            }
            for key in 1..65 {
                let expected = model.get(&key).copied().filter(|&u| u > now);
                prop_assert_eq!(t.blocked_until(key, now), expected);
            }
        }
    }
}
