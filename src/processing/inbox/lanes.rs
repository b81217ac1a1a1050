//! Per-realm ordered lanes: the worker queues, the in-flight guard that hides an event from
//! the sweeper (and keeps its claims renewed) until its result is committed, and the backlog
//! of pending events per realm and listener that intake checks before accepting a batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use tokio::sync::mpsc;

use super::Inbox;
use super::claims::Held;
use crate::events::Event;
use crate::listeners::ListenerId;
use crate::processing::Processor;

/// One event for a worker, tracked as in flight until its result is committed.
pub(super) struct Work {
    pub(super) event: Event,
    /// This process's listeners that still have to run the event (in configuration order),
    /// with the attempts each has made.
    pub(super) listeners: Vec<(ListenerId, i32)>,
    pub(super) guard: InFlight,
    /// The event's realm, and whether it is counted in that realm's backlog (it is pending,
    /// not parked).
    pub(super) realm_id: i64,
    pub(super) counted: bool,
}

/// Keeps an event id in the in-flight set (with this process's claims on its work), and
/// counted in its lane, until dropped (after the commit of its result).
pub(super) struct InFlight {
    pub(super) set: Arc<DashMap<String, Held>>,
    pub(super) lane: Arc<AtomicUsize>,
    pub(super) event_id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.remove(&self.event_id);
        self.lane.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One worker's queue. Each realm's events go to one lane, so that they are handled in order.
pub(super) struct Lane {
    pub(super) queue: mpsc::Sender<Work>,
    /// Events queued or being processed in this lane, until their result is committed. A lane
    /// with none lets new events of its realms be processed at intake without overtaking any.
    pub(super) outstanding: Arc<AtomicUsize>,
}

/// What a pending event is counted against: its realm, and a non-pure listener it waits for
/// (`None`: it waits only for pure listeners, queued behind earlier events of its realm).
pub(super) type BacklogKey = (i64, Option<ListenerId>);

/// Pending events per [`BacklogKey`]. An event that needs several non-pure listeners is
/// counted against each of them.
#[derive(Default)]
pub(super) struct Backlog(DashMap<BacklogKey, i64>);

impl Backlog {
    pub(super) fn add(&self, key: BacklogKey, n: i64) {
        if n != 0 {
            *self.0.entry(key).or_insert(0) += n;
        }
    }

    /// One fewer; clamped at zero (replays from the command line were never counted in).
    pub(super) fn done(&self, key: BacklogKey) {
        if let Some(mut n) = self.0.get_mut(&key) {
            *n = (*n - 1).max(0);
        }
    }

    pub(super) fn of(&self, key: BacklogKey) -> i64 {
        self.0.get(&key).map_or(0, |n| *n)
    }
}

impl Inbox {
    /// Marks an event in flight, with this process's claims on its listeners' work (taken
    /// until `claim_until`), counted in its lane, and wraps it for the lane's worker: returns
    /// the lane and the work. Dropping the work (a full queue) undoes both.
    pub(super) fn track(
        &self,
        event_id: String,
        event: Event,
        listeners: Vec<(ListenerId, i32)>,
        realm_id: i64,
        counted: bool,
        claim_until: i64,
    ) -> (usize, Work) {
        self.in_flight
            .insert(event_id.clone(), self.held(&listeners, claim_until));
        let lane = self.lane_of(&event);
        let outstanding = self.lanes[lane].outstanding.clone();
        outstanding.fetch_add(1, Ordering::AcqRel);
        let work = Work {
            event,
            listeners,
            realm_id,
            counted,
            guard: InFlight {
                set: self.in_flight.clone(),
                lane: outstanding,
                event_id,
            },
        };
        (lane, work)
    }

    /// The listeners an event of `event_type` is counted against (see [`BacklogKey`]).
    pub(super) fn waits_for(&self, event_type: &str) -> Vec<Option<ListenerId>> {
        waits_for(&self.processor, &self.mine, event_type)
    }

    /// Counts one more pending event of `realm_id` and `event_type`.
    pub(super) fn count_in(&self, realm_id: i64, event_type: &str) {
        for listener in self.waits_for(event_type) {
            self.backlog.add((realm_id, listener), 1);
        }
    }

    /// Each realm's events go to one lane, so that they are handled in order.
    pub(super) fn lane_of(&self, event: &Event) -> usize {
        let realm = event.realm.id.unwrap_or_default().unsigned_abs();
        usize::try_from(realm % self.lanes.len() as u64).unwrap_or(0)
    }
}

/// The non-pure listeners of `listeners` that want `event_type`, or `[None]` when there is
/// none (see [`BacklogKey`]).
pub(super) fn waits_for(
    processor: &Processor,
    listeners: &[ListenerId],
    event_type: &str,
) -> Vec<Option<ListenerId>> {
    let impure = processor.impure_for(event_type, listeners);
    if impure.is_empty() {
        vec![None]
    } else {
        impure.into_iter().map(Some).collect()
    }
}
