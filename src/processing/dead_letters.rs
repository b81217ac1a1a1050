//! Dead letters: forwarded events that were not processed (`dead` after `max_retries`,
//! `parked` behind a paused listener, `rate_limited`, `expired`, `filtered`) and what an
//! operator does with them. Each action has its one implementation here; the command line,
//! the admin API, the dashboard and upkeep only parse, call and render.
//!
//! - [`list`] and [`show`]: one event with its work per listener and its envelope, redacted
//!   by the rules of the logs ([`crate::redact::settings`], then [`crate::telemetry::scrub`]).
//! - [`replay`]: queued again with fresh retries.
//! - [`discard`]: set aside for good, with a reason: status `discarded`, envelope erased, the
//!   reason kept as `last_error`, its `inbox_work` rows deleted. Nothing runs it again (no
//!   sweep, retry or replay: `discarded` is not a replayable status), a re-sent copy counts as
//!   a duplicate, and retention deletes the row after `retention.retention_days` like a done
//!   one. It no longer counts in `/health` or the backlog.
//! - [`expire`]: the discard that upkeep makes of dead letters older than
//!   `retention.dead_letter_days`.
//!
//! Every replay and discard is recorded in `listener_history` under the listener
//! [`AUDIT_LISTENER`] (`*`): when, from where (`source`), by whom (`actor`: the admin token's
//! name), what was asked, how many, and why.

use diesel::Connection;
use serde::Serialize;
use serde_json::Value;

use crate::db::tables::inbox::{self, InboxEntry, InboxStatus};
use crate::db::tables::inbox_work::{self, WorkEntry};
use crate::db::tables::listeners::{self as history, HistoryRow};
use crate::db::{DbConnection, DbError};
use crate::listeners::changes::FieldError;

/// The listener name replays and discards are recorded under in `listener_history`: they
/// concern every listener the events wait for.
pub const AUDIT_LISTENER: &str = "*";
/// Longest reason accepted for a discard, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Ids named one by one in an audit record; more are counted.
const IDS_NAMED: usize = 10;
const DAY_MS: i64 = 86_400_000;

/// Which events an action concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These events, each of which must be a dead letter (one of [`InboxStatus::REPLAYABLE`]);
    /// otherwise nothing is done.
    Ids(Vec<String>),
    /// Every event with `status`; given a listener, only those with work of it left.
    All {
        status: InboxStatus,
        listener: Option<String>,
    },
}

/// What an operator does to a dead letter (for the messages of [`DeadLetterError`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Show,
    Replay,
    Discard,
}

impl Action {
    fn allowed(self) -> &'static [InboxStatus] {
        match self {
            Action::Show => &InboxStatus::LISTED,
            Action::Replay | Action::Discard => &InboxStatus::REPLAYABLE,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Action::Show => "shown",
            Action::Replay => "replayed",
            Action::Discard => "discarded",
        }
    }
}

/// Why an action was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("no forwarded event `{0}` in the inbox")]
    NotFound(String),
    #[error("event `{id}` is {status}, not a dead letter: only {} events can be {}", allowed(*.action), .action.verb())]
    NotADeadLetter {
        id: String,
        status: InboxStatus,
        action: Action,
    },
    #[error(transparent)]
    Invalid(FieldError),
    #[error(transparent)]
    Database(#[from] DbError),
}

impl From<diesel::result::Error> for DeadLetterError {
    fn from(e: diesel::result::Error) -> Self {
        DeadLetterError::Database(e.into())
    }
}

fn allowed(action: Action) -> String {
    let names: Vec<&str> = action.allowed().iter().map(|s| s.as_str()).collect();
    names.join(", ")
}

/// One event as `show` gives it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    #[serde(flatten)]
    pub entry: InboxEntry,
    pub webhook_id: String,
    pub emitted_at_ms: Option<i64>,
    pub next_attempt_at_ms: i64,
    /// The work left per listener (none once discarded, or for an event never dispatched).
    pub listeners: Vec<WorkEntry>,
    /// The envelope, redacted; `None` once erased.
    pub payload: Option<Value>,
}

/// Events with `status` (given a listener, those with work of it left), newest first.
pub fn list(
    conn: &mut DbConnection,
    status: InboxStatus,
    listener: Option<&str>,
    limit: i64,
) -> Result<Vec<InboxEntry>, DbError> {
    match listener {
        None => inbox::inbox_entries(conn, &[status], limit),
        Some(listener) => inbox::inbox_entries_of(conn, status, listener, limit),
    }
}

/// One dead letter (or a discarded event) with its work per listener and its envelope,
/// redacted as logs are.
pub fn show(conn: &mut DbConnection, event_id: &str) -> Result<DeadLetter, DeadLetterError> {
    let detail = inbox::inbox_detail(conn, event_id)?
        .ok_or_else(|| DeadLetterError::NotFound(event_id.to_string()))?;
    let status = detail.entry.status;
    if !Action::Show.allowed().contains(&status) {
        return Err(DeadLetterError::NotADeadLetter {
            id: event_id.to_string(),
            status,
            action: Action::Show,
        });
    }
    Ok(DeadLetter {
        listeners: inbox_work::work_of(conn, event_id)?,
        payload: redacted_envelope(&detail.payload),
        entry: detail.entry,
        webhook_id: detail.webhook_id,
        emitted_at_ms: detail.emitted_at_ms,
        next_attempt_at_ms: detail.next_attempt_at_ms,
    })
}

/// A stored envelope as it may be shown: secret-named keys masked and URLs cut to their
/// origin ([`crate::redact::settings`]), then every text as a log line shows it (emails
/// masked and content cut when `data_protection.log_sanitization` is on).
fn redacted_envelope(payload: &str) -> Option<Value> {
    if payload.is_empty() {
        return None;
    }
    Some(match serde_json::from_str::<Value>(payload) {
        Ok(value) => scrub_texts(crate::redact::settings(&value)),
        Err(_) => Value::String(format!("<not JSON: {} bytes>", payload.len())),
    })
}

fn scrub_texts(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(crate::telemetry::scrub(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub_texts).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, scrub_texts(v))).collect())
        }
        other => other,
    }
}

/// Queues events again with fresh retries (only the listeners that did not succeed run) and
/// records the replay, from `source` by `actor` (an admin token's name); returns how many were
/// queued. With ids, every one must be a dead letter, or nothing is replayed.
pub fn replay(
    conn: &mut DbConnection,
    target: &Target,
    source: &str,
    actor: Option<&str>,
) -> Result<usize, DeadLetterError> {
    if let Target::All { status, .. } = target {
        replayable(*status, Action::Replay)?;
    }
    let requeued = conn.transaction::<_, DeadLetterError, _>(|conn| {
        write_lock(conn)?;
        let (what, requeued) = match target {
            Target::Ids(ids) => {
                let ids = distinct(ids);
                check_ids(conn, &ids, Action::Replay)?;
                let n = inbox_work::requeue(conn, &InboxStatus::REPLAYABLE, Some(&ids))?;
                (named(&ids), n)
            }
            Target::All {
                status,
                listener: None,
            } => (
                format!("{status}: all"),
                inbox_work::requeue(conn, &[*status], None)?,
            ),
            Target::All {
                status,
                listener: Some(listener),
            } => {
                let ids = inbox::event_ids_with(conn, *status, Some(listener), None, i64::MAX)?;
                let n = inbox_work::requeue(conn, &[*status], Some(&ids))?;
                (format!("{status}: all of listener `{listener}`"), n)
            }
        };
        history::record(
            conn,
            &[record(
                source,
                actor,
                "replay",
                what,
                format!("{requeued} requeued"),
            )],
        )?;
        Ok(requeued)
    })?;
    tracing::info!(source, admin = actor, requeued, "dead letters replayed");
    Ok(requeued)
}

/// Sets events aside for good with `reason` (required, at most [`MAX_REASON_CHARS`]) and
/// records it, from `source` by `actor` (an admin token's name); returns how many were
/// discarded. With ids, every one must be a dead letter, or nothing is discarded.
pub fn discard(
    conn: &mut DbConnection,
    target: &Target,
    reason: &str,
    source: &str,
    actor: Option<&str>,
) -> Result<usize, DeadLetterError> {
    let reason = checked_reason(reason).map_err(DeadLetterError::Invalid)?;
    if let Target::All { status, .. } = target {
        replayable(*status, Action::Discard)?;
    }
    let note = match actor {
        Some(actor) => format!("discarded by {actor} through the {source}: {reason}"),
        None => format!("discarded through the {source}: {reason}"),
    };
    let discarded = conn.transaction::<_, DeadLetterError, _>(|conn| {
        write_lock(conn)?;
        let (what, ids, statuses) = match target {
            Target::Ids(ids) => {
                let ids = distinct(ids);
                check_ids(conn, &ids, Action::Discard)?;
                (named(&ids), ids, InboxStatus::REPLAYABLE.to_vec())
            }
            Target::All { status, listener } => {
                let what = match listener {
                    None => format!("{status}: all"),
                    Some(l) => format!("{status}: all of listener `{l}`"),
                };
                let ids =
                    inbox::event_ids_with(conn, *status, listener.as_deref(), None, i64::MAX)?;
                (what, ids, vec![*status])
            }
        };
        let n = inbox_work::discard(conn, &statuses, &ids, &note)?.len();
        history::record(
            conn,
            &[record(
                source,
                actor,
                "discard",
                what,
                format!("{n} discarded: {reason}"),
            )],
        )?;
        Ok(n)
    })?;
    tracing::info!(
        source,
        admin = actor,
        discarded,
        reason,
        "dead letters discarded"
    );
    Ok(discarded)
}

/// Discards the dead letters that have not changed for `days` days (none when 0), `batch` at
/// a time, each batch recorded with source `retention` and the reason "expired after N
/// days"; returns how many were discarded.
pub fn expire(
    conn: &mut DbConnection,
    days: u32,
    now_ms: i64,
    batch: i64,
) -> Result<usize, DeadLetterError> {
    if days == 0 {
        return Ok(0);
    }
    let before = now_ms - i64::from(days) * DAY_MS;
    let source = crate::listeners::changes::source::RETENTION;
    let reason = format!("expired after {days} days");
    let note = format!("discarded by {source}: {reason}");
    let batch = batch.max(1);
    let mut total = 0;
    loop {
        let n = conn.transaction::<_, DeadLetterError, _>(|conn| {
            write_lock(conn)?;
            let ids = inbox::event_ids_with(conn, InboxStatus::Dead, None, Some(before), batch)?;
            let n = inbox_work::discard(conn, &[InboxStatus::Dead], &ids, &note)?.len();
            if n > 0 {
                let what = format!("dead: unchanged for {days} days");
                let done = format!("{n} discarded: {reason}");
                history::record(conn, &[record(source, None, "discard", what, done)])?;
            }
            Ok(n)
        })?;
        total += n;
        if i64::try_from(n).unwrap_or(i64::MAX) < batch {
            return Ok(total);
        }
    }
}

/// The last `limit` replays and discards, newest first.
pub fn audit(
    conn: &mut DbConnection,
    limit: i64,
) -> Result<(Vec<HistoryRow>, Vec<HistoryRow>), DbError> {
    Ok((
        history::history_of_field(conn, AUDIT_LISTENER, "replay", limit)?,
        history::history_of_field(conn, AUDIT_LISTENER, "discard", limit)?,
    ))
}

/// A reason as given: trimmed, required, at most [`MAX_REASON_CHARS`].
pub fn checked_reason(reason: &str) -> Result<&str, FieldError> {
    let reason = reason.trim();
    if reason.is_empty() {
        return Err(FieldError::new(
            "reason",
            "required: say why the events are discarded (kept in the audit trail)",
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(FieldError::new(
            "reason",
            format!("at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(reason)
}

/// Refuses a status that cannot be replayed or discarded (`discarded`, `pending`, `done`).
fn replayable(status: InboxStatus, action: Action) -> Result<(), DeadLetterError> {
    if InboxStatus::REPLAYABLE.contains(&status) {
        return Ok(());
    }
    Err(DeadLetterError::Invalid(FieldError::new(
        "status",
        format!(
            "{status} events cannot be {}; use one of {}",
            action.verb(),
            allowed(action)
        ),
    )))
}

/// Takes the database's write lock before anything is read (on SQLite a transaction that
/// reads first and writes later fails when another connection wrote in between): a write
/// that changes nothing, to the listener row that does not exist.
fn write_lock(conn: &mut DbConnection) -> Result<(), DbError> {
    history::lock(conn, AUDIT_LISTENER)
}

/// The ids without repeats, in the order given.
fn distinct(ids: &[String]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.iter()
        .map(|id| id.trim().to_string())
        .filter(|id| !id.is_empty() && seen.insert(id.clone()))
        .collect()
}

/// Every id is stored with a status the action allows: the first that is not, in the order
/// given, is the error.
fn check_ids(
    conn: &mut DbConnection,
    ids: &[String],
    action: Action,
) -> Result<(), DeadLetterError> {
    if ids.is_empty() {
        return Err(DeadLetterError::Invalid(FieldError::new(
            "ids",
            "give at least one event id",
        )));
    }
    let found: std::collections::HashMap<String, InboxStatus> =
        inbox::statuses_of(conn, ids)?.into_iter().collect();
    for id in ids {
        match found.get(id) {
            None => return Err(DeadLetterError::NotFound(id.clone())),
            Some(status) if !action.allowed().contains(status) => {
                return Err(DeadLetterError::NotADeadLetter {
                    id: id.clone(),
                    status: *status,
                    action,
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Ids as an audit record names them: one by one up to [`IDS_NAMED`], else counted.
fn named(ids: &[String]) -> String {
    if ids.len() <= IDS_NAMED {
        format!("ids: {}", ids.join(", "))
    } else {
        format!("{} ids", ids.len())
    }
}

fn record(
    source: &str,
    actor: Option<&str>,
    action: &str,
    what: String,
    done: String,
) -> HistoryRow {
    HistoryRow {
        id: 0,
        listener: AUDIT_LISTENER.to_string(),
        changed_at_ms: crate::clock::now_ms(),
        source: source.to_string(),
        field: action.to_string(),
        old_value: Some(what),
        new_value: Some(done),
        actor: actor.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_required_and_bounded() {
        assert_eq!(checked_reason("  webhook gone  "), Ok("webhook gone"));
        assert_eq!(
            checked_reason(" ").map_err(|e| e.field),
            Err("reason".into())
        );
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(checked_reason(&long).is_err());
    }

    #[test]
    fn ids_are_named_until_there_are_many() {
        let ids: Vec<String> = (0..3).map(|i| format!("e{i}")).collect();
        assert_eq!(named(&ids), "ids: e0, e1, e2");
        let many: Vec<String> = (0..11).map(|i| format!("e{i}")).collect();
        assert_eq!(named(&many), "11 ids");
        assert_eq!(
            distinct(&["a".into(), " a ".into(), "b".into()]),
            vec!["a", "b"]
        );
    }

    #[test]
    fn an_envelope_is_shown_without_its_secrets() {
        let shown = redacted_envelope(
            r#"{"type":"message","api_key":"K3Y","message":{"content":"hi","avatar_url":"https://x.example/a/SECRET"}}"#,
        )
        .map(|v| v.to_string())
        .unwrap_or_default();
        assert!(
            !shown.contains("K3Y") && !shown.contains("SECRET"),
            "{shown}"
        );
        assert!(
            shown.contains("<redacted>") && shown.contains("\"hi\""),
            "{shown}"
        );
        assert_eq!(redacted_envelope(""), None);
        assert_eq!(
            redacted_envelope("{oops"),
            Some(Value::String("<not JSON: 5 bytes>".into()))
        );
    }
}
