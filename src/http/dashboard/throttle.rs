//! Failed dashboard sign-ins, counted per client address (the proxy's client behind a trusted
//! proxy, see [`crate::http::identity::client_address`]): a client's first
//! [`FREE_FAILURES`] wrong tokens within [`WINDOW`] are answered at once, each further one
//! after a delay that doubles up to [`MAX_DELAY`]. Nothing here refuses a token: the sign-in
//! checks the token first, so the right one always works, whoever failed before.
//!
//! The map is bounded ([`MAX_CLIENTS`]; the oldest client goes first) and kept in the order
//! the clients' windows started, so expired entries leave from the front: no call scans it.
//! At most [`MAX_WAITING`] delayed answers wait at once (each holds a connection); beyond
//! that, a failure is answered at once.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Wrong tokens per client within [`WINDOW`] answered without delay.
pub(super) const FREE_FAILURES: u32 = 5;
/// How long a client's failures are remembered, from its first.
const WINDOW: Duration = Duration::from_secs(300);
/// The longest a failure's answer waits.
const MAX_DELAY: Duration = Duration::from_secs(8);
/// Clients remembered at most.
pub(super) const MAX_CLIENTS: usize = 4_096;
/// Delayed answers waiting at once, at most.
const MAX_WAITING: usize = 64;

/// The failed sign-ins of the last [`WINDOW`], per client.
pub(super) struct Failures {
    inner: Mutex<Clients>,
    waiting: AtomicUsize,
}

#[derive(Default)]
struct Clients {
    /// A client's failures and when the first of them was.
    by_client: HashMap<IpAddr, (u32, Instant)>,
    /// The clients in the order their first failure came (the same instants as in
    /// `by_client`: an entry is only created, counted up, and removed from the front).
    order: VecDeque<(IpAddr, Instant)>,
}

impl Clients {
    /// Forgets the clients whose window is over (all at the front).
    fn expire(&mut self, now: Instant) {
        while let Some(&(client, since)) = self.order.front() {
            if now.saturating_duration_since(since) < WINDOW {
                break;
            }
            self.order.pop_front();
            self.by_client.remove(&client);
        }
    }
}

/// A delayed answer's place among the [`MAX_WAITING`]; freed when dropped.
pub(super) struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Failures {
    pub(super) fn new() -> Failures {
        Failures {
            inner: Mutex::new(Clients::default()),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Records a wrong token from `client` at `now`; returns how many it has failed within
    /// the window, this one included.
    pub(super) fn record(&self, client: IpAddr, now: Instant) -> u32 {
        let mut clients = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        clients.expire(now);
        if let Some((count, _)) = clients.by_client.get_mut(&client) {
            *count = count.saturating_add(1);
            return *count;
        }
        if clients.by_client.len() >= MAX_CLIENTS
            && let Some((oldest, _)) = clients.order.pop_front()
        {
            clients.by_client.remove(&oldest);
        }
        clients.by_client.insert(client, (1, now));
        clients.order.push_back((client, now));
        1
    }

    /// Clients remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        let clients = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        debug_assert_eq!(clients.by_client.len(), clients.order.len());
        clients.by_client.len()
    }

    /// A place for a delayed answer, unless [`MAX_WAITING`] already wait.
    pub(super) fn wait_slot(&self) -> Option<Waiting<'_>> {
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        let slot = Waiting(&self.waiting);
        (before < MAX_WAITING).then_some(slot)
    }
}

/// How long the answer to a client's `failures`-th wrong token in the window waits: nothing
/// for the first [`FREE_FAILURES`], then 1 s, doubling up to [`MAX_DELAY`].
pub(super) fn delay(failures: u32) -> Duration {
    let over = failures.saturating_sub(FREE_FAILURES);
    if over == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (over - 1).min(10)).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_slow_down_per_client_and_are_forgotten() {
        let failures = Failures::new();
        let start = Instant::now();
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let counts: Vec<u32> = (0..7).map(|_| failures.record(a, start)).collect();
        assert_eq!(counts, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(failures.record(b, start), 1, "another client counts alone");
        let delays: Vec<u64> = [1, 5, 6, 7, 8, 9, 10, 40]
            .map(|n| delay(n).as_secs())
            .to_vec();
        assert_eq!(delays, [0, 0, 1, 2, 4, 8, 8, 8]);
        // After the window, a client starts over.
        assert_eq!(failures.record(a, start + WINDOW), 1);
        assert_eq!(failures.len(), 1, "b was forgotten as well");
    }

    #[test]
    fn the_map_stays_bounded() {
        let failures = Failures::new();
        let now = Instant::now();
        for i in 0..(MAX_CLIENTS as u32 * 3) {
            failures.record(IpAddr::from(i.to_be_bytes()), now);
        }
        assert_eq!(failures.len(), MAX_CLIENTS);
        // The newest are kept.
        let newest = IpAddr::from((MAX_CLIENTS as u32 * 3 - 1).to_be_bytes());
        assert_eq!(failures.record(newest, now), 2);
    }

    #[test]
    fn delayed_answers_are_bounded() {
        let failures = Failures::new();
        let slots: Vec<_> = (0..MAX_WAITING)
            .map(|_| failures.wait_slot().expect("a slot"))
            .collect();
        assert!(failures.wait_slot().is_none());
        drop(slots);
        assert!(failures.wait_slot().is_some());
    }
}
