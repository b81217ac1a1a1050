//! Processing: running an event through a list of listeners (each a configured instance of a
//! handler). Every run is timed and written to the event log; the first reply is handed back as
//! soon as it exists while later listeners keep running. The outgoing-webhook path (deadline, retries, late replies) is in
//! [`outgoing`], its bots in [`bots`]; the forwarder path (durable inbox, workers, retries,
//! dead letters) in [`inbox`], and what operators do with dead letters in [`dead_letters`].
//! Both paths pass events through the same [`crate::guards`]; [`realms`] matches realm ids with
//! subdomains for both.

pub mod announce;
pub mod bots;
pub mod dead_letters;
pub mod inbox;
pub mod outgoing;
pub mod processes;
pub mod realms;
pub mod tasks;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::clock::now_ms;
use crate::db::tables::event_log::EventLogRow;
use crate::db::writer::{Processed, WriteOp, Writer};
use crate::events::text::{normalize_reply, truncate_chars};
use crate::events::{Event, Origin};
use crate::handlers::{Context, Effect, Effects, HandlerError};
use crate::listeners::{ListenerId, Registry};
use crate::telemetry::scrub;
use announce::Announcer;
use tasks::TaskTracker;

/// How often events waiting for an automatically disabled listener look again.
const AUTO_DISABLED_RECHECK_MS: i64 = 5_000;

/// Longest error text kept in an event-log row.
const MAX_ERROR_CHARS: usize = 1_000;

/// Runs listeners and records each run.
#[derive(Clone)]
pub struct Processor {
    cx: Arc<Context>,
    registry: Arc<Registry>,
    writer: Writer,
    announcer: Arc<Announcer>,
    tasks: TaskTracker,
    /// Realm ids by subdomain, learned from forwarded events.
    realms: Arc<realms::RealmDirectory>,
}

/// How a run begun by [`Processor::start`] stands.
pub enum Started {
    /// Every listener finished at once: the first reply, and the results for the caller to
    /// send to the writer.
    Finished {
        reply: Option<String>,
        processed: Box<Processed>,
    },
    /// A listener is waiting: the run goes on as a task and writes its own results; the
    /// receiver yields the first reply.
    Running(oneshot::Receiver<Option<String>>),
}

/// What running an event through its listeners produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Effects (empty in dry-run mode) and event-log rows, ready for the writer.
    pub processed: Processed,
    /// The first failure, as "listener: error".
    pub first_error: Option<String>,
    /// A listener the event needs has an open circuit breaker (or was disabled automatically):
    /// the listener and when it lets a trial run through (Unix ms). The listener did not run.
    pub deferred: Option<(String, i64)>,
}

impl Processor {
    pub fn new(
        cx: Arc<Context>,
        registry: Arc<Registry>,
        writer: Writer,
        announcer: Arc<Announcer>,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            cx,
            registry,
            writer,
            announcer,
            tasks,
            realms: Arc::default(),
        }
    }

    /// Realm ids by subdomain, as forwarded events have named them.
    pub fn realms(&self) -> &realms::RealmDirectory {
        &self.realms
    }

    /// The background tasks a graceful shutdown waits for.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.cx
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Starts running `listeners` in order: on the calling thread as long as they do not wait
    /// ([`TaskTracker::run_or_spawn`]). When they all finish at once, the caller gets the
    /// first reply and the results, to send to the writer with whatever belongs in the same
    /// commit; otherwise the run goes on as a task that writes its own results, and the
    /// receiver yields the first reply (normalised for Zulip) as soon as a listener produces
    /// one, or `None` once all listeners have finished without one.
    pub fn start(&self, event: Arc<Event>, listeners: Arc<[ListenerId]>) -> Started {
        let (tx, mut rx) = oneshot::channel();
        let this = self.clone();
        let run = async move { this.run(&event, &listeners, None, Some(tx)).await };
        let writer = self.writer.clone();
        // Tracked: the results must be written even when the run ends after the answer and a
        // shutdown has begun.
        let finished = self.tasks.run_or_spawn(run, move |outcome| async move {
            writer
                .send(WriteOp::Processed(Box::new(outcome.processed)))
                .await;
        });
        match finished {
            Some(outcome) => Started::Finished {
                reply: rx.try_recv().ok().flatten(),
                processed: Box::new(outcome.processed),
            },
            None => Started::Running(rx),
        }
    }

    /// Whether every listener in `listeners` that takes `event_type` is pure (its handler's
    /// [`crate::handlers::Handler::PURE`]), so that the event can be processed at once.
    pub fn all_pure(&self, event_type: &str, listeners: &[ListenerId]) -> bool {
        listeners
            .iter()
            .filter_map(|&id| self.registry.get(id))
            .map(|entry| entry.live())
            .filter(|live| live.wants_type(event_type))
            .all(|live| live.handler.is_pure())
    }

    /// The listeners in `listeners` that want `event_type` and are not pure: those an event of
    /// that type waits for in a worker.
    pub fn impure_for(&self, event_type: &str, listeners: &[ListenerId]) -> Vec<ListenerId> {
        listeners
            .iter()
            .copied()
            .filter(|&id| {
                self.registry.get(id).is_some_and(|entry| {
                    let live = entry.live();
                    live.wants_type(event_type) && !live.handler.is_pure()
                })
            })
            .collect()
    }

    /// A listener's name.
    pub fn listener_name(&self, id: ListenerId) -> Option<&'static str> {
        self.registry.get(id).map(|entry| entry.name())
    }

    /// Runs pure listeners to the end on the calling thread. `None` when one of them did not
    /// finish at once (it was not pure after all); nothing of that run is kept.
    pub fn run_now(&self, event: &Event, listeners: &[ListenerId]) -> Option<Outcome> {
        self.run(event, listeners, None, None).now_or_never()
    }

    /// Runs `listeners` in order, each within `timeout` when one is given. Nothing is written
    /// here: the caller sends [`Outcome::processed`] to the writer, together with whatever
    /// else must be committed with it.
    pub async fn run(
        &self,
        event: &Event,
        listeners: &[ListenerId],
        timeout: Option<Duration>,
        mut reply_to: Option<oneshot::Sender<Option<String>>>,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        for &id in listeners {
            let Some(entry) = self.registry.get(id) else {
                continue;
            };
            let live = entry.live();
            if !live.wants(event) {
                continue;
            }
            let name = entry.name();
            if entry.auto_disabled() {
                // Until an operator looks at it, events that need it wait.
                outcome
                    .deferred
                    .get_or_insert((name.to_string(), now_ms() + AUTO_DISABLED_RECHECK_MS));
                continue;
            }
            if !entry.enabled() {
                continue;
            }
            if let Some(until) = entry.health.open_until(Instant::now()) {
                let wait = until.saturating_duration_since(Instant::now());
                let at_ms = now_ms() + crate::clock::millis(wait);
                outcome.deferred.get_or_insert((name.to_string(), at_ms));
                continue;
            }
            // Outgoing webhooks carry no realm id: they count against realm 0 (Zulip user ids
            // are unique across the realms of one server, so user quotas still hold).
            if let Some(limits) = &live.limits
                && let Some(reason) = limits
                    .check(event.realm.id.unwrap_or(0), event.user_id)
                    .reason()
            {
                // Over this listener's own quota: skipped for it alone, and logged.
                tracing::info!(listener = name, %reason, "event skipped: over the listener's quota");
                crate::telemetry::metric::listener_rate_limited(name);
                outcome.processed.logs.push(log_row(
                    event,
                    name,
                    0,
                    Some(format!(
                        "{}{reason}",
                        crate::db::tables::event_log::RATE_LIMITED
                    )),
                ));
                continue;
            }
            let mut effects = Effects::default();
            let started = Instant::now();
            let run =
                AssertUnwindSafe(live.handler.handle(&self.cx, event, &mut effects)).catch_unwind();
            let result = match timeout {
                Some(limit) => match tokio::time::timeout(limit, run).await {
                    Ok(result) => result,
                    Err(_) => Ok(Err(HandlerError::Failed(format!(
                        "timed out after {} ms",
                        limit.as_millis()
                    )))),
                },
                None => run.await,
            }
            .unwrap_or_else(|_| Err(HandlerError::Failed("handler panicked".into())));
            let elapsed = started.elapsed();
            let duration_us = i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX);
            entry.record_run(result.is_ok(), elapsed.as_secs_f64());
            let transitions = entry.health.record(result.is_ok(), Instant::now());
            if !transitions.is_empty() {
                self.announcer.announce(entry, transitions);
            }
            let error = match &result {
                Ok(_) => {
                    if !self.cx.dry_run {
                        outcome.processed.effects.extend(effects.into_inner());
                    }
                    None
                }
                Err(e) => {
                    // What the handler delivered before it failed stays recorded.
                    if !self.cx.dry_run {
                        outcome.processed.effects.extend(
                            effects
                                .into_inner()
                                .into_iter()
                                .filter(Effect::records_delivery),
                        );
                    }
                    let full = e.to_string();
                    let text = truncate_chars(&scrub(&full), MAX_ERROR_CHARS).0;
                    tracing::warn!(handler = name, error = %text, "handler failed");
                    outcome
                        .first_error
                        .get_or_insert_with(|| format!("{name}: {text}"));
                    Some(text)
                }
            };
            outcome
                .processed
                .logs
                .push(log_row(event, name, duration_us, error));
            if let Ok(Some(reply)) = result
                && let Some(reply) = normalize_reply(&reply)
                && let Some(tx) = reply_to.take()
            {
                let _ = tx.send(Some(reply));
            }
        }
        if let Some(tx) = reply_to {
            let _ = tx.send(None);
        }
        outcome
    }
}

/// An event-log row for one run of `listener` (or a guard that refused the event).
pub(crate) fn log_row(
    event: &Event,
    listener: &str,
    duration_us: i64,
    error: Option<String>,
) -> EventLogRow {
    let (bot, event_id) = match &event.origin {
        Origin::Outgoing { bot, .. } => (Some(bot.to_string()), None),
        Origin::Forwarder { event_id } => (None, Some(event_id.clone())),
    };
    EventLogRow {
        id: 0,
        listener: listener.to_string(),
        source: event.origin.source().into(),
        event_type: event.event_type().to_string(),
        bot,
        realm: event.realm.string_id.clone(),
        realm_id: event.realm.id,
        user_id: event.user_id,
        message_id: event.message_id(),
        event_id,
        duration_us,
        success: error.is_none(),
        error,
        created_at_ms: now_ms(),
    }
}
