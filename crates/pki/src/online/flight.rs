//! Two guards of network fetches made from blocking threads: a limit on how many run at once,
//! and single flight (concurrent callers with one key share the first caller's fetch).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks leaves counters and maps consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// At most `max` fetches at once, over every responder and distribution point.
#[derive(Debug)]
pub struct FetchLimit {
    running: Mutex<usize>,
    max: usize,
    freed: Condvar,
}

/// A slot of a [`FetchLimit`], given back when dropped.
pub(crate) struct Permit<'a>(&'a FetchLimit);

impl FetchLimit {
    /// A limit of `max` fetches at once (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            running: Mutex::new(0),
            max: max.max(1),
            freed: Condvar::new(),
        }
    }

    /// A slot, waiting at most `wait` for one; `None` when none came free in time.
    pub(crate) fn acquire(&self, wait: Duration) -> Option<Permit<'_>> {
        let deadline = Instant::now() + wait;
        let mut running = lock(&self.running);
        while *running >= self.max {
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())?;
            running = self
                .freed
                .wait_timeout(running, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *running += 1;
        Some(Permit(self))
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut running = lock(&self.0.running);
        *running = running.saturating_sub(1);
        drop(running);
        self.0.freed.notify_one();
    }
}

enum State<V> {
    Running,
    Done(V),
    /// The run ended without a value (it panicked).
    Abandoned,
}

struct Flight<V> {
    state: Mutex<State<V>>,
    done: Condvar,
}

/// Runs in progress, by key.
pub(crate) struct Flights<K, V> {
    running: Mutex<HashMap<K, Arc<Flight<V>>>>,
}

/// Ends the leader's run however it ends: the key is free for a new run and the waiting
/// callers get the value (or learn that there is none).
struct Finish<'a, K: Eq + Hash, V> {
    flights: &'a Flights<K, V>,
    key: &'a K,
    flight: &'a Flight<V>,
    value: Option<V>,
}

impl<K: Eq + Hash, V> Drop for Finish<'_, K, V> {
    fn drop(&mut self) {
        lock(&self.flights.running).remove(self.key);
        *lock(&self.flight.state) = match self.value.take() {
            Some(v) => State::Done(v),
            None => State::Abandoned,
        };
        self.flight.done.notify_all();
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Flights<K, V> {
    pub(crate) fn new() -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` for `key`, unless a run for `key` is in progress: then waits at most `wait` for
    /// that run's value instead. `None` when the wait ended first or that run ended without a
    /// value.
    pub(crate) fn run(&self, key: &K, wait: Duration, f: impl FnOnce() -> V) -> Option<V> {
        let (flight, leader) = {
            let mut running = lock(&self.running);
            match running.get(key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight {
                        state: Mutex::new(State::Running),
                        done: Condvar::new(),
                    });
                    running.insert(key.clone(), f.clone());
                    (f, true)
                }
            }
        };
        if leader {
            let mut finish = Finish {
                flights: self,
                key,
                flight: &flight,
                value: None,
            };
            let v = f();
            finish.value = Some(v.clone());
            drop(finish);
            return Some(v);
        }
        let deadline = Instant::now() + wait;
        let mut state = lock(&flight.state);
        loop {
            match &*state {
                State::Done(v) => return Some(v.clone()),
                State::Abandoned => return None,
                State::Running => {}
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .filter(|d| !d.is_zero())?;
            state = flight
                .done
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn concurrent_callers_share_one_run() {
        let flights = Arc::new(Flights::<u8, u32>::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let (flights, runs, barrier) = (flights.clone(), runs.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    flights.run(&1, Duration::from_secs(5), || {
                        runs.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(300));
                        7
                    })
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), Some(7));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Once it is over, the next caller runs again.
        assert_eq!(flights.run(&1, Duration::from_secs(1), || 8), Some(8));
    }

    #[test]
    fn a_waiter_gives_up_after_its_wait_and_a_panicking_run_frees_the_key() {
        let flights = Arc::new(Flights::<u8, u32>::new());
        let f2 = flights.clone();
        let leader = std::thread::spawn(move || {
            f2.run(&1, Duration::from_secs(5), || {
                std::thread::sleep(Duration::from_millis(500));
                panic!("the fetch failed badly")
            })
        });
        std::thread::sleep(Duration::from_millis(100));
        let started = Instant::now();
        assert_eq!(flights.run(&1, Duration::from_millis(100), || 9), None);
        assert!(started.elapsed() < Duration::from_millis(400));
        // Waiting on: the run panics, and the waiter learns there is no value.
        assert_eq!(flights.run(&1, Duration::from_secs(5), || 9), None);
        assert!(leader.join().is_err());
        assert_eq!(flights.run(&1, Duration::from_secs(1), || 10), Some(10));
    }

    #[test]
    fn the_limit_holds_and_a_slot_frees_on_drop() {
        let limit = FetchLimit::new(2);
        let a = limit.acquire(Duration::ZERO).unwrap();
        let _b = limit.acquire(Duration::ZERO).unwrap();
        let started = Instant::now();
        assert!(limit.acquire(Duration::from_millis(100)).is_none());
        assert!(started.elapsed() >= Duration::from_millis(100));
        drop(a);
        assert!(limit.acquire(Duration::ZERO).is_some());
    }
}
