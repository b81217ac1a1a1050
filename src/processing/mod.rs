//! Processing: running an event through a list of handlers. Every run is timed and written to
//! the event log; the first reply is handed back as soon as it exists while later handlers
//! keep running. The outgoing-webhook path (deadline, retries, late replies) is in
//! [`outgoing`].

pub mod outgoing;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use tokio::sync::oneshot;

use crate::db::models::NewEventLog;
use crate::db::now_ms;
use crate::db::writer::{WriteOp, Writer};
use crate::events::{Event, Origin, normalize_reply, truncate_chars};
use crate::handlers::{Context, HandlerError, HandlerId};

/// Longest error text kept in an event-log row.
const MAX_ERROR_CHARS: usize = 1_000;

/// Runs handlers and records each run.
#[derive(Clone)]
pub struct Processor {
    cx: Arc<Context>,
    writer: Writer,
}

impl Processor {
    pub fn new(cx: Arc<Context>, writer: Writer) -> Self {
        Self { cx, writer }
    }

    pub fn context(&self) -> &Arc<Context> {
        &self.cx
    }

    /// Starts running `handlers` in order on a task of its own. The receiver yields the first
    /// reply (normalised for Zulip) as soon as a handler produces one, or `None` once all
    /// handlers have finished without one.
    pub fn spawn(
        &self,
        event: Arc<Event>,
        handlers: Arc<[HandlerId]>,
    ) -> oneshot::Receiver<Option<String>> {
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move { this.run(&event, &handlers, Some(tx)).await });
        rx
    }

    /// Runs `handlers` in order; returns how many failed.
    pub async fn run(
        &self,
        event: &Event,
        handlers: &[HandlerId],
        mut reply_to: Option<oneshot::Sender<Option<String>>>,
    ) -> usize {
        let mut failures = 0;
        for &id in handlers {
            let Some(entry) = self.cx.registry.get(id) else {
                continue;
            };
            if !entry.enabled() || !entry.handler.interest().wants(event.event_type()) {
                continue;
            }
            let started = Instant::now();
            let outcome = AssertUnwindSafe(entry.handler.handle(&self.cx, event))
                .catch_unwind()
                .await
                .unwrap_or_else(|_| Err(HandlerError::Failed("handler panicked".into())));
            let duration_us = i64::try_from(started.elapsed().as_micros()).unwrap_or(i64::MAX);
            let error = match &outcome {
                Ok(_) => None,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(handler = entry.handler.name(), error = %e, "handler failed");
                    Some(truncate_chars(&e.to_string(), MAX_ERROR_CHARS).0)
                }
            };
            self.writer
                .send(WriteOp::EventLog(log_row(
                    event,
                    entry.handler.name(),
                    duration_us,
                    error,
                )))
                .await;
            if let Ok(Some(reply)) = outcome
                && let Some(reply) = normalize_reply(&reply)
                && let Some(tx) = reply_to.take()
            {
                let _ = tx.send(Some(reply));
            }
        }
        if let Some(tx) = reply_to {
            let _ = tx.send(None);
        }
        failures
    }
}

fn log_row(event: &Event, handler: &str, duration_us: i64, error: Option<String>) -> NewEventLog {
    let (bot, event_id) = match &event.origin {
        Origin::Outgoing { bot, .. } => (Some(bot.to_string()), None),
        Origin::Forwarder { event_id } => (None, Some(event_id.clone())),
    };
    NewEventLog {
        handler: handler.to_string(),
        source: event.origin.source(),
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
