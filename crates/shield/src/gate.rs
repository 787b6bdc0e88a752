//! The origin gate of one route class: at most `limit` requests of the class at the origin, a
//! short bounded queue for the rest, and a light answer from the shield beyond it.
//!
//! The limit is the route's `max_in_flight`, or, with `adaptive_concurrency` on (the default),
//! what the [`Limiter`] learns from the origin's response times, never above `max_in_flight` and
//! never below 1. The queue is the shield's own (FIFO, `queue` long, `queue_timeout` at most), so
//! what waits can still be answered differently: a request that needs a challenge once the mode
//! becomes `under_attack` leaves the queue with the challenge instead of reaching the origin.
//!
//! Memory is fixed by the configuration: the queue holds at most `queue` waiters.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::limiter::Limiter;

/// What a waiter is told when it leaves the queue.
enum Admit {
    /// Its turn at the origin: `(in flight including it, limit)` at that moment.
    Go(usize, usize),
}

struct Waiter {
    id: u64,
    tx: oneshot::Sender<Admit>,
}

struct State {
    in_flight: usize,
    limiter: Limiter,
    waiters: VecDeque<Waiter>,
    next_id: u64,
}

/// The origin gate of one route class.
pub struct Gate {
    state: Mutex<State>,
    ceiling: usize,
    adaptive: bool,
    queue: usize,
    timeout: Duration,
    /// The limit now, readable without the lock (metrics, detector).
    limit_now: AtomicUsize,
    /// When a request last found the gate full (ms), for the per-clearance budget.
    pressed_ms: AtomicU64,
}

/// What [`Gate::enter`] decided.
pub enum Entry {
    /// Go to the origin; the permit is the slot.
    Go(Permit),
    /// The queue is full or the wait timed out: answer from the shield (stale copy or 503).
    Shed,
    /// The mode became `under_attack` while this request waited, and it needs a challenge.
    Challenge,
}

/// One request's slot at the origin. Dropping it frees the slot and lets the next waiter in.
pub struct Permit {
    gate: Arc<Gate>,
    in_flight: usize,
    limit: usize,
}

impl Permit {
    /// Reports the origin's response time (to the response head) for this request; `ok` is
    /// false when the origin failed, timed out or answered 503 (a sign of overload).
    pub fn report(&self, rtt: Duration, ok: bool) {
        let g = &self.gate;
        if !g.adaptive {
            return;
        }
        let Ok(mut st) = g.state.lock() else {
            return;
        };
        if ok {
            st.limiter
                .on_sample(rtt.as_secs_f64() * 1000.0, self.in_flight, self.limit);
        } else {
            st.limiter.on_overload();
        }
        g.hand_over(&mut st);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let g = &self.gate;
        if let Ok(mut st) = g.state.lock() {
            st.in_flight = st.in_flight.saturating_sub(1);
            g.hand_over(&mut st);
        }
    }
}

/// Takes a waiter out of the queue when its future ends without its turn (timeout, mode change,
/// or the request task dropped), and gives back a slot that was handed to it meanwhile.
struct WaitGuard {
    gate: Arc<Gate>,
    id: u64,
    rx: Option<oneshot::Receiver<Admit>>,
}

impl WaitGuard {
    /// Leaves the queue. Returns the permit if the turn came just before (the hand-over and the
    /// removal are both done under the gate's lock, so exactly one of them happened).
    fn leave(&mut self) -> Option<Permit> {
        let mut rx = self.rx.take()?;
        {
            let Ok(mut st) = self.gate.state.lock() else {
                return None;
            };
            if let Some(i) = st.waiters.iter().position(|w| w.id == self.id) {
                st.waiters.remove(i);
                return None;
            }
        }
        match rx.try_recv() {
            Ok(Admit::Go(in_flight, limit)) => Some(Permit {
                gate: self.gate.clone(),
                in_flight,
                limit,
            }),
            Err(_) => None,
        }
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        // A slot handed over to a request that is gone is released by the permit's drop.
        drop(self.leave());
    }
}

impl Gate {
    /// A gate with `max_in_flight` as the (ceiling of the) limit, a queue of `queue` waiting at
    /// most `timeout`.
    pub fn new(max_in_flight: usize, queue: usize, timeout: Duration, adaptive: bool) -> Self {
        let ceiling = max_in_flight.max(1);
        let limiter = Limiter::new(ceiling);
        let start = if adaptive { limiter.limit() } else { ceiling };
        Gate {
            state: Mutex::new(State {
                in_flight: 0,
                limiter,
                waiters: VecDeque::with_capacity(queue.min(1024)),
                next_id: 0,
            }),
            ceiling,
            adaptive,
            queue,
            timeout,
            limit_now: AtomicUsize::new(start),
            pressed_ms: AtomicU64::new(0),
        }
    }

    /// Requests allowed at the origin now.
    pub fn limit(&self) -> usize {
        self.limit_now.load(Relaxed)
    }

    /// Requests at the origin now.
    pub fn in_flight(&self) -> usize {
        self.state.lock().map_or(0, |st| st.in_flight)
    }

    /// Requests waiting in the queue now.
    pub fn waiting(&self) -> usize {
        self.state.lock().map_or(0, |st| st.waiters.len())
    }

    /// Whether a request found the gate full at or after `since_ms`.
    pub fn pressed_since(&self, since_ms: u64) -> bool {
        let p = self.pressed_ms.load(Relaxed);
        p != 0 && p >= since_ms
    }

    fn current_limit(&self, st: &State) -> usize {
        let l = if self.adaptive {
            st.limiter.limit().min(self.ceiling)
        } else {
            self.ceiling
        };
        self.limit_now.store(l, Relaxed);
        l
    }

    /// Lets waiters in while there is room under the limit. Called with the lock held; a
    /// waiter whose receiver is gone cannot be in the queue (its guard removed it), but a failed
    /// send is handled anyway.
    fn hand_over(&self, st: &mut State) {
        let limit = self.current_limit(st);
        while st.in_flight < limit {
            let Some(w) = st.waiters.pop_front() else {
                break;
            };
            st.in_flight += 1;
            if w.tx.send(Admit::Go(st.in_flight, limit)).is_err() {
                st.in_flight -= 1;
            }
        }
    }

    /// Waits for a slot at the origin. With `attack` given (a request that would need a
    /// challenge under attack), a change of mode to `under_attack` while waiting ends the wait
    /// with [`Entry::Challenge`].
    pub async fn enter(
        self: &Arc<Self>,
        attack: Option<(&crate::attack::Attack, &std::sync::atomic::AtomicU8)>,
    ) -> Entry {
        let (id, rx) = {
            let Ok(mut st) = self.state.lock() else {
                // A poisoned lock is a bug elsewhere; the reader route fails open.
                return Entry::Go(Permit {
                    gate: self.clone(),
                    in_flight: 1,
                    limit: 1,
                });
            };
            let limit = self.current_limit(&st);
            if st.in_flight < limit && st.waiters.is_empty() {
                st.in_flight += 1;
                return Entry::Go(Permit {
                    gate: self.clone(),
                    in_flight: st.in_flight,
                    limit,
                });
            }
            self.pressed_ms
                .store(qalqan_limits::now_ms().max(1), Relaxed);
            if st.waiters.len() >= self.queue {
                return Entry::Shed;
            }
            let id = st.next_id;
            st.next_id = st.next_id.wrapping_add(1);
            let (tx, rx) = oneshot::channel();
            st.waiters.push_back(Waiter { id, tx });
            (id, rx)
        };
        // From here on, the guard owns the receiver: however this future ends (even dropped
        // by a client that hung up), the waiter leaves the queue and a slot handed to it is
        // given back.
        let mut guard = WaitGuard {
            gate: self.clone(),
            id,
            rx: Some(rx),
        };
        // Woken whenever the site or any route class turns `under_attack`; ends the wait only
        // when the site or this request's route class is under attack.
        let mode_change = async move {
            let Some((a, route_mode)) = attack else {
                return std::future::pending::<()>().await;
            };
            loop {
                let n = a.began().notified();
                let mut n = std::pin::pin!(n);
                n.as_mut().enable();
                if a.mode() == qalqan_detect::Mode::UnderAttack
                    || crate::attack::load_mode(route_mode) == qalqan_detect::Mode::UnderAttack
                {
                    return;
                }
                n.await;
            }
        };
        let outcome = match guard.rx.as_mut() {
            Some(rx) => tokio::select! {
                r = rx => match r {
                    // The guard's drop then finds the waiter gone and the channel empty.
                    Ok(Admit::Go(in_flight, limit)) => {
                        return Entry::Go(Permit { gate: self.clone(), in_flight, limit });
                    }
                    Err(_) => Entry::Shed,
                },
                () = mode_change => Entry::Challenge,
                () = tokio::time::sleep(self.timeout) => Entry::Shed,
            },
            None => Entry::Shed,
        };
        // Not admitted through the channel: leave the queue. A turn that came at the same
        // moment is taken after a timeout (better late than shed) and given back (dropped)
        // for a challenge.
        match (outcome, guard.leave()) {
            (Entry::Shed, Some(p)) => Entry::Go(p),
            (e, _) => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn go(e: Entry) -> Permit {
        match e {
            Entry::Go(p) => p,
            Entry::Shed => panic!("shed"),
            Entry::Challenge => panic!("challenged"),
        }
    }

    #[tokio::test]
    async fn queue_is_bounded_and_slots_pass_in_order() {
        let g = Arc::new(Gate::new(1, 1, Duration::from_secs(60), false));
        let first = go(g.enter(None).await);
        let g2 = g.clone();
        let waiting = tokio::spawn(async move { go(g2.enter(None).await).in_flight });
        // Let the waiter queue up, then the next one finds the queue full.
        while g.state.lock().unwrap().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        assert!(matches!(g.enter(None).await, Entry::Shed));
        drop(first);
        assert_eq!(waiting.await.unwrap(), 1);
        assert_eq!(g.state.lock().unwrap().in_flight, 0);
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_no_slot_behind() {
        let g = Arc::new(Gate::new(1, 4, Duration::from_secs(60), false));
        let first = go(g.enter(None).await);
        let g2 = g.clone();
        let waiting = tokio::spawn(async move {
            let _ = g2.enter(None).await;
        });
        while g.state.lock().unwrap().waiters.is_empty() {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        assert!(g.state.lock().unwrap().waiters.is_empty());
        drop(first);
        assert_eq!(g.state.lock().unwrap().in_flight, 0);
        let again = go(g.enter(None).await);
        assert_eq!(again.in_flight, 1);
    }
}
