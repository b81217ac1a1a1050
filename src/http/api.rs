//! The admin API's types: the body of every answer, every request body and query string, and
//! the error body, as the handlers build and read them, as the OpenAPI document
//! (`GET /admin/openapi.json`) describes them, and as clients (the tests among them) read them
//! back. The rows the answers list are the domain's own types, re-exported here.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, IntoResponses, ToSchema};

pub use crate::db::tables::event_log::{EventLogRow, RunStats};
pub use crate::db::tables::inbox::{InboxEntry, InboxStatus};
pub use crate::db::tables::inbox_work::{WorkEntry, WorkStatus};
pub use crate::db::tables::listeners::HistoryRow;
pub use crate::listeners::changes::{Overridden, Overrides as ListenerPatch};
pub use crate::listeners::{Breaker, ListenerState, ListenerView};
pub use crate::processing::dead_letters::DeadLetter;

/// The body of every error answer: `error` is a stable code, `message` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// A stable code: `unauthorized`, `not_found`, `invalid_field`, `wrong_status`, …
    pub error: String,
    /// The field at fault (`invalid_field`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
    /// The state of what the request names (`wrong_status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// The errors any admin route may answer.
#[derive(IntoResponses)]
pub enum CommonErrors {
    /// Missing or wrong bearer token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The admin API is off (no admin token is configured), or what the path names does not
    /// exist.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The database cannot be reached just now (`Retry-After` says when to try again).
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The errors of a dead-letter replay or discard, beside [`CommonErrors`].
#[derive(IntoResponses)]
pub enum ActionErrors {
    /// Neither `ids` nor `all`, or a field at fault (named in `field`).
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// An event named is not a dead letter (`status` names its status).
    #[response(status = 409)]
    WrongStatus(ErrorBody),
}

/// `GET /admin/listeners`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListenerList {
    pub listeners: Vec<ListenerSummary>,
}

/// A listener with its run counts since the event log began (as retention kept it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListenerSummary {
    #[serde(flatten)]
    pub listener: ListenerView,
    pub runs: i64,
    pub failures: i64,
}

/// `GET /admin/listeners/{name}`: the listener, its runs of the last 24 hours and its
/// history of changes (newest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListenerDetail {
    #[serde(flatten)]
    pub listener: ListenerView,
    pub stats: RunStats,
    pub history: Vec<HistoryRow>,
}

/// A change or reset of a listener: the listener as it is now and the fields that changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListenerChanged {
    #[serde(flatten)]
    pub listener: ListenerView,
    pub changed: Vec<String>,
}

/// Where an event-log row came from (the `source` filter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceParam {
    Outgoing,
    Forwarder,
}

impl SourceParam {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceParam::Outgoing => "outgoing",
            SourceParam::Forwarder => "forwarder",
        }
    }
}

/// The query of `GET /admin/events`; every filter is optional.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only runs of this listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// The deprecated name of `listener` (the same filter; both with different values is
    /// refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// Only events of this type (`message`, `reaction`, …).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceParam>,
    /// Only runs about this Zulip message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<i64>,
    /// Only runs at or after this time (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// Page number, from 1 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<i64>,
    /// Rows per page, 1 to 500 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_page: Option<i64>,
}

/// `GET /admin/events`: one page of the event log, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventsPage {
    pub page: i64,
    pub per_page: i64,
    pub events: Vec<EventLogRow>,
}

/// The query of `GET /admin/inbox`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// The Zulip message whose forwarded events to list (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<i64>,
}

/// `GET /admin/inbox`: the forwarded events about one Zulip message, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InboxEvents {
    pub message_id: i64,
    pub events: Vec<InboxEntry>,
}

/// `GET /admin/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// Runs per minute over the last 5 minutes.
    pub events_per_minute: f64,
    /// Failed runs / runs over the last hour; 0 without runs.
    pub error_rate: f64,
    pub runs_last_hour: i64,
    pub failures_last_hour: i64,
    /// When the last run began (milliseconds since the Unix epoch); `null` without runs.
    pub last_event_time_ms: Option<i64>,
    /// Listeners enabled and not held by an open breaker.
    pub active_listeners: Vec<String>,
}

/// The query of `GET /admin/dead-letters`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// `dead` (default), `parked`, `rate_limited`, `expired` or `discarded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Only events with work of this listener left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// Most events listed, 1 to 1000 (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// `GET /admin/dead-letters`: the events, newest first, with the last replays and discards.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetterList {
    pub events: Vec<InboxEntry>,
    pub replays: Vec<HistoryRow>,
    pub discards: Vec<HistoryRow>,
}

/// The body of `POST /admin/dead-letters/replay` and `…/discard`: `ids` (a non-empty list) or
/// `all: true`, which `status` and `listener` narrow; `reason` is kept with a discard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterAction {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// With `all`: the status to act on (default `dead`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// With `all`: only events with work of this listener left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    /// Why (kept in the audit trail of a discard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `POST /admin/dead-letters/replay`: how many events were queued again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Requeued {
    pub requeued: usize,
}

/// `POST /admin/dead-letters/discard`: how many events were set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Discarded {
    pub discarded: usize,
}
