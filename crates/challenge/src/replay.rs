//! The bounded, time-windowed set of spent challenge nonces.

use std::collections::HashSet;
use std::sync::Mutex;

/// Remembers which challenge nonces have been spent, so that one solution buys one clearance.
///
/// **Memory is fixed.** Two generations, each a hash set allocated once with room for `capacity`
/// nonces. The current generation takes new nonces; every `window_secs` it becomes the previous
/// one and the old previous one is forgotten. A nonce spent at time `t` is therefore remembered
/// until at least `t + window_secs`, which covers its token's remaining lifetime as long as that is
/// at most `window_secs` ([`crate::verify_solution`] refuses tokens that would outlive it).
///
/// **When a generation is full, we rotate early, which forgets the oldest nonces.** The
/// alternative, refusing new nonces until the window ends, would let anyone who can solve
/// `capacity` challenges lock every reader out of the challenge: a denial of service on the very
/// thing that is meant to stop one. Forgetting is cheap to reason about instead. Only nonces of
/// tokens that carried a valid signature *and* valid work ever get in, so filling a generation
/// costs `capacity` real solutions; and a nonce just spent is always in the current generation,
/// so replaying it needs at least `capacity` further fresh solutions within the token's lifetime,
/// each of which already buys a clearance of its own. One extra clearance per `capacity` honest
/// solutions is no gain worth defending against with an outage.
///
/// Thread-safe through `&self`; the lock is held only for one lookup and insert.
pub struct ReplayGuard {
    capacity: usize,
    window_secs: u64,
    inner: Mutex<Generations>,
}

struct Generations {
    current: HashSet<u128>,
    previous: HashSet<u128>,
    /// When `current` started taking nonces (unix seconds).
    started_unix: u64,
}

impl ReplayGuard {
    /// A guard holding up to `capacity` nonces per generation (at least 1), rotated every
    /// `window_secs` (at least 1), starting at `now_unix`. `window_secs` must be at least the
    /// challenge lifetime the shield issues with.
    pub fn new(capacity: usize, window_secs: u64, now_unix: u64) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            window_secs: window_secs.max(1),
            inner: Mutex::new(Generations {
                current: HashSet::with_capacity(capacity),
                previous: HashSet::with_capacity(capacity),
                started_unix: now_unix,
            }),
        }
    }

    /// How long a spent nonce is remembered at least, in seconds.
    pub fn window_secs(&self) -> u64 {
        self.window_secs
    }

    /// Nonces per generation.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Marks `nonce` as spent. Returns `false` if it was already spent (a replay).
    pub fn spend(&self, nonce: [u8; 16], now_unix: u64) -> bool {
        let key = u128::from_be_bytes(nonce);
        // A panic elsewhere while holding the lock cannot leave the sets half-updated in a way
        // that matters here, so a poisoned lock is simply taken over.
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now_unix.saturating_sub(g.started_unix);
        if elapsed >= self.window_secs.saturating_mul(2) {
            g.current.clear();
            g.previous.clear();
            g.started_unix = now_unix;
        } else if elapsed >= self.window_secs {
            g.rotate(now_unix);
        }
        if g.current.contains(&key) || g.previous.contains(&key) {
            return false;
        }
        if g.current.len() >= self.capacity {
            g.rotate(now_unix);
        }
        g.current.insert(key);
        true
    }

    /// Nonces remembered right now, both generations together.
    pub fn len(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.current.len() + g.previous.len()
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes held, fixed from construction on: the hash tables never grow past
    /// the capacity they were allocated with.
    pub fn memory_bytes(&self) -> usize {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // hashbrown keeps about 8 buckets for every 7 usable slots, each a 16-byte key plus one
        // control byte.
        let per_slot = std::mem::size_of::<u128>() + 1;
        (g.current.capacity() + g.previous.capacity()) * 8 / 7 * per_slot
    }
}

impl Generations {
    fn rotate(&mut self, now_unix: u64) {
        // Swap and clear keeps both allocations: no memory is freed or allocated here.
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.clear();
        self.started_unix = now_unix;
    }
}

impl std::fmt::Debug for ReplayGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayGuard")
            .field("capacity", &self.capacity)
            .field("window_secs", &self.window_secs)
            .field("len", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u32) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&i.to_be_bytes());
        b
    }

    #[test]
    fn second_spend_is_a_replay() {
        let g = ReplayGuard::new(10, 60, 1000);
        assert!(g.spend(n(1), 1000));
        assert!(!g.spend(n(1), 1001));
        assert!(g.spend(n(2), 1001));
    }

    #[test]
    fn remembered_for_at_least_one_window() {
        let g = ReplayGuard::new(10, 60, 1000);
        assert!(g.spend(n(1), 1059));
        // Rotation at 1060 moves it to the previous generation; still remembered.
        assert!(!g.spend(n(1), 1060));
        assert!(!g.spend(n(1), 1059 + 60));
        // Two windows after its generation began, it is forgotten.
        assert!(g.spend(n(1), 1000 + 60 + 60 + 60));
    }

    #[test]
    fn long_idle_clears_everything() {
        let g = ReplayGuard::new(10, 60, 0);
        assert!(g.spend(n(1), 0));
        assert!(g.spend(n(2), 10_000));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn clock_going_backwards_does_not_forget() {
        let g = ReplayGuard::new(10, 60, 1000);
        assert!(g.spend(n(1), 1000));
        assert!(!g.spend(n(1), 5));
    }

    #[test]
    fn full_generation_rotates_and_memory_stays_fixed() {
        let g = ReplayGuard::new(100, 3600, 0);
        let before = g.memory_bytes();
        for i in 0..100 {
            assert!(g.spend(n(i), 0));
        }
        // The just-spent nonce survives the next `capacity` spends.
        let last = n(99);
        for i in 100..199 {
            assert!(g.spend(n(i), 0));
            assert!(!g.spend(last, 0));
        }
        for i in 1000..100_000 {
            g.spend(n(i), 0);
        }
        assert!(g.len() <= 200);
        assert_eq!(g.memory_bytes(), before);
    }

    #[test]
    fn zero_arguments_are_clamped() {
        let g = ReplayGuard::new(0, 0, 0);
        assert_eq!(g.capacity(), 1);
        assert_eq!(g.window_secs(), 1);
        assert!(g.spend(n(1), 0));
        assert!(!g.spend(n(1), 0));
    }
}
