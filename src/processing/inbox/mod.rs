//! The forwarder path: durable intake, workers, retries and dead letters.
//!
//! A verified batch is written to the `inbox` table in one transaction and acknowledged only
//! after the commit. Newly stored events then go straight to in-memory worker queues (one
//! queue per worker, chosen by realm, so each realm's events are handled in order). Each
//! event's listener effects, event-log rows and new inbox status are committed together.
//! A failed event is retried with exponential back-off and, once `max_retries` is used up,
//! marked dead; operators replay dead letters with `zulip-listeners dead-letters replay`.
//!
//! Work is tracked per (event, listener): every listener run not completed at intake has an
//! `inbox_work` row, deleted in the transaction that commits that listener's effects and
//! event-log row; the inbox row's status sums up what is left (`done` when nothing is). A
//! retry or a replay runs only the listeners that did not succeed. With `serve --listeners`
//! a process runs only some listeners and leaves the others' work to the processes that run
//! them (PostgreSQL; see [`super::processes`]).
//!
//! Nothing acknowledged is lost: work handed to workers is *claimed* in the database until a
//! lease runs out, and a sweeper picks up whatever of its listeners' work is due and
//! unclaimed — retries, replays, and everything left pending by a crash. On PostgreSQL a
//! process renews the claims of the work it holds for as long as it waits or runs, and does
//! not start a run whose claim another process took (`claims.rs`).
//!
//! By stage: `admission.rs` (backlog and guards), `plan.rs` (rows, runs at intake, work),
//! `intake.rs` (`accept`: admit, plan, write, dispatch), `lanes.rs` (per-realm ordered
//! queues, in-flight guard, backlog counts), `worker.rs`, `retry.rs` (what an attempt comes
//! to), `sweeper.rs`, `claims.rs`; this file holds the service, its start and stop.

mod admission;
mod claims;
mod intake;
mod lanes;
mod plan;
mod retry;
mod sweeper;
mod worker;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use dashmap::DashMap;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::Processor;
use crate::config::ForwarderConfig;
use crate::db::writer::Writer;
use crate::db::{Backend, Db, DbError, tables};
use crate::listeners::ListenerId;
use crate::telemetry::metric;
use claims::Held;
use lanes::{Backlog, Lane, waits_for};

pub use admission::Admission;
pub use intake::{IntakeError, IntakeSummary};

/// Events a worker queue holds before intake leaves the rest to the sweeper.
const QUEUE_CAPACITY: usize = 8_192;

/// The inbox service.
pub struct Inbox {
    processor: Processor,
    writer: Writer,
    db: Db,
    /// Every forwarder listener (`[forwarder] listeners`): each enabled one runs every
    /// forwarded event it wants exactly once, in whichever process runs it.
    listeners: Arc<[ListenerId]>,
    /// The listeners this process runs (`serve --listeners`; all of them by default).
    mine: Arc<[ListenerId]>,
    mine_names: Vec<&'static str>,
    /// `mine` is not every listener: other processes run the rest.
    split: bool,
    /// The enabled listeners no live process runs (PostgreSQL; see [`super::processes`]).
    pub coverage: Arc<super::processes::Coverage>,
    lanes: Vec<Lane>,
    /// Events queued or being processed here, with this process's claims on their work.
    in_flight: Arc<DashMap<String, Held>>,
    /// The process id this process marks its claims with (`inbox_work.claimed_by`) when it
    /// shares the database with other processes (PostgreSQL); empty on SQLite, where one
    /// server owns the database and claims are only about crash recovery.
    owner: String,
    /// Turns true when the workers are asked to stop.
    stopping: watch::Receiver<bool>,
    config: ForwarderConfig,
    admission: Admission,
    /// Pending events this server knows of (stored, not yet done, dead or parked), per
    /// realm and per listener they wait for: a realm whose events pile up behind one listener
    /// is refused new batches of events that need that listener; other listeners' events and
    /// other realms are not.
    backlog: Backlog,
}

/// The running workers and sweeper, to be stopped at shutdown.
pub struct InboxTasks {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The renewal of claims (PostgreSQL), stopped last: the workers' last runs keep theirs.
    renewal: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl InboxTasks {
    /// Lets each worker finish the event in hand, then stops them all.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some((stop, task)) = self.renewal {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }
}

impl Inbox {
    /// Starts the workers and the sweeper. On SQLite (one server per database) claims left
    /// by a previous run are released first, so a crash's leftovers are processed at once.
    pub async fn start(
        processor: Processor,
        db: Db,
        listeners: Vec<ListenerId>,
        mine: Option<Vec<ListenerId>>,
        admission: Admission,
        config: ForwarderConfig,
    ) -> Result<(Arc<Inbox>, InboxTasks), DbError> {
        let mine = mine.unwrap_or_else(|| listeners.clone());
        let split = listeners.iter().any(|id| !mine.contains(id));
        let mine_names: Vec<&'static str> = mine
            .iter()
            .filter_map(|&id| processor.listener_name(id))
            .collect();
        let pending = db.run(tables::inbox::pending_by_realm_and_type).await?;
        let backlog = Backlog::default();
        for (realm_id, event_type, n) in pending {
            for listener in waits_for(&processor, &mine, &event_type) {
                backlog.add((realm_id, listener), n);
            }
        }
        if db.backend() == Backend::Sqlite {
            let released = db.run(tables::inbox_work::release_all_claims).await?;
            if released > 0 {
                tracing::info!(
                    released,
                    "events left in progress by the previous run are due again"
                );
            }
        }
        let identity = super::processes::identity();
        let owner = match db.backend() {
            Backend::Postgres => identity.process_id.clone(),
            Backend::Sqlite => String::new(),
        };
        let (shutdown, watch_rx) = watch::channel(false);
        let mut lanes = Vec::new();
        let mut receivers = Vec::new();
        for _ in 0..config.workers.max(1) {
            let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
            lanes.push(Lane {
                queue,
                outstanding: Arc::new(AtomicUsize::new(0)),
            });
            receivers.push(rx);
        }
        let inbox = Arc::new(Inbox {
            writer: processor.writer().clone(),
            processor,
            db,
            listeners: listeners.into(),
            mine: mine.into(),
            mine_names,
            split,
            coverage: Arc::default(),
            lanes,
            in_flight: Arc::new(DashMap::new()),
            owner,
            stopping: watch_rx.clone(),
            config,
            admission,
            backlog,
        });
        let mut tasks = Vec::new();
        for rx in receivers {
            tasks.push(tokio::spawn(inbox.clone().work(rx, watch_rx.clone())));
        }
        if inbox.db.backend() == Backend::Postgres {
            tasks.push(tokio::spawn(super::processes::run(
                identity,
                inbox.db.clone(),
                inbox.processor.clone(),
                inbox.listeners.clone(),
                inbox.mine_names.clone(),
                inbox.coverage.clone(),
                watch_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(inbox.clone().sweep(watch_rx)));
        let renewal = (inbox.db.backend() == Backend::Postgres).then(|| {
            let (stop, stopped) = watch::channel(false);
            (stop, tokio::spawn(inbox.clone().renew(stopped)))
        });
        Ok((
            inbox,
            InboxTasks {
                shutdown,
                tasks,
                renewal,
            },
        ))
    }

    /// The listeners that get forwarded events.
    pub fn listeners(&self) -> &[ListenerId] {
        &self.listeners
    }

    /// On SQLite this one server runs every forwarder listener: each has one live process
    /// (`zulip_listeners_listener_live_processes`; on PostgreSQL the heartbeat sets it).
    pub fn refresh_gauges(&self) {
        if self.db.backend() == Backend::Sqlite {
            for &id in self.listeners.iter() {
                metric::listener_live_processes(self.name(id), 1);
            }
        }
    }

    /// Forgets idle rate-limit keys; returns the keys still tracked.
    pub fn limiter_housekeeping(&self) -> usize {
        self.admission.housekeeping()
    }

    /// The listeners of `list` that want `event_type`, in order.
    fn wanting(&self, list: &[ListenerId], event_type: &str) -> Vec<ListenerId> {
        let registry = &self.processor.registry();
        list.iter()
            .copied()
            .filter(|&id| registry.get(id).is_some_and(|e| e.wants_type(event_type)))
            .collect()
    }

    /// Whether a listener gets work: it is enabled, or disabled after failures (events wait
    /// for it). A listener disabled by an operator is left out, as it is from a run.
    fn needs_work(&self, id: ListenerId) -> bool {
        self.processor
            .registry()
            .get(id)
            .is_some_and(|e| e.enabled() || e.auto_disabled())
    }

    fn name(&self, id: ListenerId) -> &'static str {
        self.processor.listener_name(id).unwrap_or("unknown")
    }
}
