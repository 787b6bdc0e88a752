//! Space-Saving heavy hitters: the most frequent keys of a stream in fixed memory.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::mem::size_of;

use serde::Serialize;

/// Keys a [`SpaceSaving`] can hold, with the heap memory each one owns.
pub trait Key: Clone + Eq + Hash {
    /// Bytes this key owns on the heap (not counting `size_of::<Self>()`).
    fn heap_bytes(&self) -> usize {
        0
    }
}

impl Key for u8 {}
impl Key for u16 {}
impl Key for u32 {}
impl Key for u64 {}
impl Key for u128 {}
impl Key for [u8; 2] {}
impl Key for String {
    fn heap_bytes(&self) -> usize {
        self.capacity()
    }
}

/// One monitored key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeavyHitter<K> {
    /// The key.
    pub key: K,
    /// Estimated count: never below the true count.
    pub count: u64,
    /// Maximum over-count: the true count is at least `count - error`.
    pub error: u64,
}

impl<K> HeavyHitter<K> {
    /// The count this key certainly reached.
    pub fn guaranteed(&self) -> u64 {
        self.count - self.error
    }
}

/// The Space-Saving algorithm (Metwally, Agrawal, El Abbadi, 2005) with a fixed number
/// of counters.
///
/// Guarantees, for a stream of `N` observations and `capacity` counters:
/// - a reported count is never below the key's true count, and at most `error` above it;
/// - every key whose true count exceeds `N / capacity` is reported.
///
/// The counters form a binary min-heap with a key -> position index, so an
/// observation costs O(log capacity) whether the key is known or evicts the least
/// counted one.
///
/// **Architecture invariant:** memory is fixed at construction (plus whatever the
/// keys themselves own, which callers cap); a million distinct keys cost what
/// `capacity` keys cost.
#[derive(Debug, Clone)]
pub struct SpaceSaving<K: Key> {
    capacity: usize,
    /// Min-heap on `count`.
    heap: Vec<HeavyHitter<K>>,
    position: HashMap<K, usize>,
    /// The map's capacity when it was made: its table never grows (see `new`), and its
    /// `capacity()` reports free room, which tombstones shrink until the next in-place rehash.
    position_slots: usize,
    total: u64,
}

impl<K: Key> SpaceSaving<K> {
    /// A summary with `capacity` counters (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let position = HashMap::with_capacity(2 * capacity);
        Self {
            capacity,
            heap: Vec::with_capacity(capacity),
            position_slots: position.capacity(),
            // Twice the counters: hashbrown rehashes in place (instead of growing) only while
            // at most half its capacity is used, and evictions leave tombstones that force
            // such rehashes. With the slack, memory never changes after construction.
            position,
            total: 0,
        }
    }

    /// The number of counters.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many observations were made.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// How many keys are monitored now.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing was observed yet.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Counts one occurrence of `key`. Only allocates when a new key is monitored.
    pub fn observe<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.total = self.total.saturating_add(1);
        if let Some(&i) = self.position.get(key) {
            self.heap[i].count = self.heap[i].count.saturating_add(1);
            self.sift_down(i);
        } else if self.heap.len() < self.capacity {
            let i = self.heap.len();
            self.heap.push(HeavyHitter {
                key: key.to_owned(),
                count: 1,
                error: 0,
            });
            self.position.insert(key.to_owned(), i);
            self.sift_up(i);
        } else {
            // Evict the least counted key; the newcomer inherits its count as the
            // error bound, since it may have occurred that often unseen.
            let key = key.to_owned();
            let root = &mut self.heap[0];
            let old = std::mem::replace(&mut root.key, key.clone());
            root.error = root.count;
            root.count = root.count.saturating_add(1);
            self.position.remove::<K>(&old);
            self.position.insert(key, 0);
            self.sift_down(0);
        }
    }

    /// The `n` most counted keys, most counted first (ties: smaller error first).
    pub fn top(&self, n: usize) -> Vec<HeavyHitter<K>> {
        let mut all = self.heap.clone();
        all.sort_by(|a, b| b.count.cmp(&a.count).then(a.error.cmp(&b.error)));
        all.truncate(n);
        all
    }

    /// The estimate for `key`, if it is monitored.
    pub fn get<Q>(&self, key: &Q) -> Option<&HeavyHitter<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.position.get(key).map(|&i| &self.heap[i])
    }

    /// Estimated bytes used, including what the keys own on the heap.
    ///
    /// The index's overhead is estimated from its capacity (one control byte per
    /// bucket, as in hashbrown); keys are stored twice, in the heap and the index.
    pub fn memory_bytes(&self) -> usize {
        let keys: usize = self.heap.iter().map(|h| h.key.heap_bytes()).sum();
        size_of::<Self>()
            + self.heap.capacity() * size_of::<HeavyHitter<K>>()
            // A table that did grow (it should not) would report more free room than it had.
            + self.position_slots.max(self.position.capacity()) * (size_of::<(K, usize)>() + 1)
            + 2 * keys
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[parent].count <= self.heap[i].count {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let left = 2 * i + 1;
            let right = left + 1;
            let mut smallest = i;
            if left < self.heap.len() && self.heap[left].count < self.heap[smallest].count {
                smallest = left;
            }
            if right < self.heap.len() && self.heap[right].count < self.heap[smallest].count {
                smallest = right;
            }
            if smallest == i {
                return;
            }
            self.swap(i, smallest);
            i = smallest;
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        for i in [a, b] {
            if let Some(pos) = self.position.get_mut(&self.heap[i].key) {
                *pos = i;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// A deterministic permutation of a multiset, so the heavy keys are spread over
    /// the stream as in real traffic instead of arriving in blocks.
    fn shuffled(counts: &[(u32, u64)], seed: u64) -> Vec<u32> {
        let mut stream: Vec<u32> = counts
            .iter()
            .flat_map(|&(k, c)| std::iter::repeat_n(k, c as usize))
            .collect();
        let mut state = seed;
        for i in (1..stream.len()).rev() {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let j = ((state >> 33) % (i as u64 + 1)) as usize;
            stream.swap(i, j);
        }
        stream
    }

    #[test]
    fn finds_true_top_of_zipf_mix() {
        // Key i occurs 50_000 / (i + 1) times: a Zipf(1) tail over 1000 keys.
        let counts: Vec<(u32, u64)> = (0..1000u32)
            .map(|i| (i, 50_000 / (u64::from(i) + 1)))
            .collect();
        let truth: HashMap<u32, u64> = counts.iter().copied().collect();
        let stream = shuffled(&counts, 7);
        let n = stream.len() as u64;
        let mut ss = SpaceSaving::<u32>::new(64);
        for k in &stream {
            ss.observe(k);
        }
        assert_eq!(ss.total(), n);
        assert_eq!(ss.len(), 64);

        for hit in ss.top(64) {
            let true_count = truth[&hit.key];
            assert!(hit.count >= true_count, "{hit:?} under-counts {true_count}");
            assert!(
                hit.guaranteed() <= true_count,
                "{hit:?} error bound broken ({true_count})"
            );
            assert!(hit.error <= n / 64, "{hit:?} error above N/capacity");
        }
        // Every key above N / capacity is guaranteed to be reported.
        let threshold = n / 64;
        let heavy: Vec<u32> = counts
            .iter()
            .filter(|(_, c)| *c > threshold)
            .map(|(k, _)| *k)
            .collect();
        assert!(heavy.len() >= 5, "test mix should have several heavy keys");
        for k in &heavy {
            assert!(ss.get(k).is_some(), "heavy key {k} not reported");
        }
        // The clearly separated head comes out in the true order.
        let top: Vec<u32> = ss.top(4).iter().map(|h| h.key).collect();
        assert_eq!(top, [0, 1, 2, 3]);
    }

    #[test]
    fn strings_are_looked_up_without_allocating_on_hits() {
        let mut ss = SpaceSaving::<String>::new(2);
        ss.observe("/search");
        ss.observe("/search");
        ss.observe("/");
        ss.observe("/feed");
        let top = ss.top(2);
        assert_eq!(
            top[0],
            HeavyHitter {
                key: "/search".to_owned(),
                count: 2,
                error: 0
            }
        );
        assert_eq!(
            top[1],
            HeavyHitter {
                key: "/feed".to_owned(),
                count: 2,
                error: 1
            }
        );
    }

    #[test]
    fn memory_does_not_grow_with_distinct_keys() {
        let mut ss = SpaceSaving::<u128>::new(64);
        for k in 0..64u128 {
            ss.observe(&k);
        }
        let before = ss.memory_bytes();
        for k in 64..200_000u128 {
            ss.observe(&k);
        }
        assert_eq!(ss.memory_bytes(), before);
    }

    proptest! {
        #[test]
        fn never_under_counts_and_reports_every_heavy_key(
            stream in proptest::collection::vec(0u8..40, 0..2000),
            capacity in 1usize..16,
        ) {
            let mut ss = SpaceSaving::<u8>::new(capacity);
            let mut truth = HashMap::<u8, u64>::new();
            for k in &stream {
                ss.observe(k);
                *truth.entry(*k).or_default() += 1;
            }
            let n = stream.len() as u64;
            for hit in ss.top(capacity) {
                let t = truth[&hit.key];
                prop_assert!(hit.count >= t);
                prop_assert!(hit.guaranteed() <= t);
            }
            for (k, t) in &truth {
                if *t * capacity as u64 > n {
                    prop_assert!(ss.get(k).is_some(), "key {} with {} of {} missing", k, t, n);
                }
            }
        }
    }
}
