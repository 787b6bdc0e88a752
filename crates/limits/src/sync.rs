//! Waiting for a short critical section held by another thread.

/// Spins a few times, then yields the CPU.
///
/// The critical sections in this crate are short (a bucket write, a window rotation),
/// so spinning usually wins. But the machines the shield runs on have few cores and
/// many threads: if the holder was preempted, spinning would burn the very core it
/// needs, so after a handful of rounds we hand the core to the scheduler instead.
pub(crate) struct Backoff {
    round: u32,
}

impl Backoff {
    const SPIN_ROUNDS: u32 = 6;

    pub(crate) fn new() -> Self {
        Self { round: 0 }
    }

    pub(crate) fn snooze(&mut self) {
        if self.round < Self::SPIN_ROUNDS {
            for _ in 0..(1u32 << self.round) {
                std::hint::spin_loop();
            }
            self.round += 1;
        } else {
            std::thread::yield_now();
        }
    }
}
