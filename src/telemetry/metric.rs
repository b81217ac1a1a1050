//! Every metric the server exports, named in one place. Hot-path metrics keep their handles
//! (per thread, or in the caller) instead of looking them up by label values on every use.
//!
//! A configured instance of a handler is a *listener*: metrics about one are named
//! `zulip_listeners_listener_*` and carry its name in the label `listener`. The older names
//! (`zulip_listeners_handler_*`, label `handler`) are deprecated: each is still emitted beside
//! its new name, with the same values, until it is removed (docs/deprecations.md says when);
//! a listener series whose name was already right carries both labels, so that a sum over it
//! does not count twice.

use std::cell::RefCell;
use std::collections::HashMap;

use metrics::{Counter, Histogram, counter, gauge, histogram};

/// An HTTP request answered.
/// `route` is a route pattern (or `unmatched`) and `method` one of a fixed set (see
/// `http::method_label`): no label value comes from the client as such.
pub fn http_request(route: &str, method: &'static str, status: u16, seconds: f64) {
    let handles = || {
        let route = route.to_string();
        (
            counter!("zulip_listeners_http_requests_total", "route" => route.clone(), "method" => method, "status" => status.to_string()),
            histogram!("zulip_listeners_http_request_duration_seconds", "route" => route),
        )
    };
    let record = |(requests, duration): &(Counter, Histogram)| {
        requests.increment(1);
        duration.record(seconds);
    };
    if !super::recorder_installed() {
        return record(&handles());
    }
    HTTP_REQUESTS.with_borrow_mut(|by_route| {
        let by_label = match by_route.get_mut(route) {
            Some(by_label) => by_label,
            None => by_route.entry(route.to_string()).or_default(),
        };
        record(by_label.entry((method, status)).or_insert_with(handles));
    });
}

type HttpHandles = HashMap<String, HashMap<(&'static str, u16), (Counter, Histogram)>>;
type EventHandles = HashMap<(&'static str, &'static str, &'static str), Counter>;

// Handles kept per thread and label values once the recorder is installed: a look-up in
// the registry hashes and compares every label of the key, which on the request path costs
// more than the increment itself. The label values are bounded (route patterns, a fixed
// set of methods, statuses, sources, event types and outcomes).
thread_local! {
    static HTTP_REQUESTS: RefCell<HttpHandles> = RefCell::default();
    static EVENTS_RECEIVED: RefCell<EventHandles> = RefCell::default();
}

/// Events received: `outcome` is accepted, duplicate, rate_limited, filtered or expired.
pub fn events_received(source: &'static str, event_type: &str, outcome: &'static str, count: u64) {
    let event_type = event_type_label(event_type);
    let handle = || counter!("zulip_listeners_events_received_total", "source" => source, "type" => event_type, "outcome" => outcome);
    if !super::recorder_installed() {
        return handle().increment(count);
    }
    EVENTS_RECEIVED.with_borrow_mut(|handles| {
        handles
            .entry((source, event_type, outcome))
            .or_insert_with(handle)
            .increment(count);
    });
}

/// Zulip's event types, the only values of the `type` label; any other is `other` (the
/// type is written by the sender, so it must not grow the series without bound).
const EVENT_TYPES: &[&str] = &[
    "alert_words",
    "attachment",
    "channel_folder",
    "custom_profile_fields",
    "default_stream_groups",
    "default_streams",
    "delete_message",
    "drafts",
    "has_zoom_token",
    "heartbeat",
    "invites_changed",
    "message",
    "muted_topics",
    "muted_users",
    "navigation_view",
    "onboarding_steps",
    "presence",
    "reaction",
    "realm",
    "realm_bot",
    "realm_domains",
    "realm_emoji",
    "realm_export",
    "realm_export_consent",
    "realm_linkifiers",
    "realm_playgrounds",
    "realm_user",
    "realm_user_settings_defaults",
    "reminders",
    "restart",
    "saved_snippets",
    "scheduled_messages",
    "stream",
    "submessage",
    "subscription",
    "typing",
    "typing_edit_message",
    "update_display_settings",
    "update_global_notifications",
    "update_message",
    "update_message_flags",
    "user_group",
    "user_settings",
    "user_status",
    "user_topic",
    "web_reload_client",
];

/// The `type` label for an event type: itself when Zulip has such a type, else `other`.
pub fn event_type_label(event_type: &str) -> &'static str {
    EVENT_TYPES
        .iter()
        .find(|t| **t == event_type)
        .copied()
        .unwrap_or("other")
}

/// A connection the HTTP parser gave up on because of the client (a malformed request,
/// a hang-up, a timeout).
pub fn http_client_error() {
    counter!("zulip_listeners_http_client_errors_total").increment(1);
}

/// A request body refused while being read (`reason`: timeout, budget).
pub fn body_refused(reason: &'static str) {
    counter!("zulip_listeners_http_bodies_refused_total", "reason" => reason).increment(1);
}

/// A listener's run counters and latency histogram, looked up once and kept (a look-up
/// hashes the labels; a listener runs for every event it takes). Each is kept twice: under its
/// name and under its deprecated `handler` name.
pub struct ListenerRuns {
    success: [Counter; 2],
    failure: [Counter; 2],
    duration: [Histogram; 2],
}

impl ListenerRuns {
    pub fn new(listener: &str) -> ListenerRuns {
        ListenerRuns {
            success: runs(listener, "success"),
            failure: runs(listener, "failure"),
            duration: [
                histogram!("zulip_listeners_listener_duration_seconds", "listener" => listener.to_string()),
                histogram!("zulip_listeners_handler_duration_seconds", "handler" => listener.to_string()),
            ],
        }
    }

    /// A listener run.
    pub fn record(&self, ok: bool, seconds: f64) {
        for counter in if ok { &self.success } else { &self.failure } {
            counter.increment(1);
        }
        for histogram in &self.duration {
            histogram.record(seconds);
        }
    }
}

/// A reply delivered after the deadline through Zulip's REST API (`outcome`: sent,
/// failed, dropped).
pub fn late_reply(outcome: &'static str) {
    counter!("zulip_listeners_late_replies_total", "outcome" => outcome).increment(1);
}

/// A listener's run counter of one outcome, under the new and the deprecated name.
fn runs(listener: &str, outcome: &'static str) -> [Counter; 2] {
    [
        counter!("zulip_listeners_listener_runs_total", "listener" => listener.to_string(), "outcome" => outcome),
        counter!("zulip_listeners_handler_runs_total", "handler" => listener.to_string(), "outcome" => outcome),
    ]
}

/// A listener's circuit breaker or auto-disable transition.
pub fn listener_transition(listener: &str, to: &'static str) {
    for counter in transitions(listener, to) {
        counter.increment(1);
    }
}

/// The transition counters of a listener, under the new and the deprecated name.
fn transitions(listener: &str, to: &'static str) -> [Counter; 2] {
    [
        counter!("zulip_listeners_listener_transitions_total", "listener" => listener.to_string(), "to" => to),
        counter!("zulip_listeners_handler_transitions_total", "handler" => listener.to_string(), "to" => to),
    ]
}

/// An event skipped by one listener because it was over the listener's own quota.
pub fn listener_rate_limited(listener: &str) {
    counter!("zulip_listeners_listener_rate_limited_total", "listener" => listener.to_string(), "handler" => listener.to_string())
        .increment(1);
}

pub fn rate_limiter_keys(path: &'static str, keys: usize) {
    gauge!("zulip_listeners_rate_limiter_keys", "path" => path).set(keys as f64);
}

/// Forwarded events parked behind a paused or disabled listener, per listener.
pub fn inbox_parked(listener: &str, count: i64) {
    gauge!("zulip_listeners_inbox_parked_events", "listener" => listener.to_string(), "handler" => listener.to_string())
        .set(count as f64);
}

/// Live serving processes that run a forwarder listener (`serve --listeners`); 0 for an
/// enabled listener means its events wait until a process that runs it starts.
pub fn listener_live_processes(listener: &str, count: usize) {
    gauge!("zulip_listeners_listener_live_processes", "listener" => listener.to_string())
        .set(count as f64);
}

/// Claims on listeners' work (PostgreSQL): `taken_over` from a process that stopped renewing
/// them (it died or lost the database), `lost` (a run not started here because another
/// process took its claim).
pub fn claims(outcome: &'static str, count: u64) {
    counter!("zulip_listeners_claims_total", "outcome" => outcome).increment(count);
}

/// Forwarded events in the inbox by status (`dead` are the dead letters).
pub fn inbox_events(status: &str, count: i64) {
    gauge!("zulip_listeners_inbox_events", "status" => status.to_string()).set(count as f64);
}

/// Where memory goes: the configured budget, the most SQLite's page caches may take
/// (per connection × connections), and what SQLite has allocated now.
pub fn memory(plan: crate::config::MemoryPlan, backend: crate::db::Backend) {
    gauge!("zulip_listeners_memory_budget_bytes").set(plan.budget_bytes as f64);
    if backend == crate::db::Backend::Sqlite {
        gauge!("zulip_listeners_sqlite_cache_limit_bytes").set(plan.sqlite_cache_total() as f64);
    }
    if let Some(used) = crate::db::sqlite_memory_used() {
        gauge!("zulip_listeners_sqlite_memory_bytes").set(used as f64);
    }
}

/// Room for the database (see `db::storage`): free bytes on its filesystem and the floor
/// below which intake is refused, the size of SQLite's log, and whether new work is refused
/// now (1) or not (0). Free and log sizes only on SQLite.
pub fn storage(report: &crate::db::storage::StorageReport) {
    if let Some(free) = report.free_bytes {
        gauge!("zulip_listeners_database_free_bytes").set(free as f64);
        gauge!("zulip_listeners_database_min_free_bytes").set(report.min_free_bytes as f64);
    }
    if let Some(wal) = report.wal_bytes {
        gauge!("zulip_listeners_database_wal_bytes").set(wal as f64);
    }
    gauge!("zulip_listeners_storage_refusing").set(if report.refusing.is_some() {
        1.0
    } else {
        0.0
    });
}

pub fn db_pool(in_use: u32, idle: u32) {
    gauge!("zulip_listeners_db_pool_connections", "state" => "in_use").set(f64::from(in_use));
    gauge!("zulip_listeners_db_pool_connections", "state" => "idle").set(f64::from(idle));
}

/// 1 while the server takes traffic and its database answers (as `/readyz`), else 0.
pub fn ready(ready: bool) {
    gauge!("zulip_listeners_ready").set(if ready { 1.0 } else { 0.0 });
}

/// How long the oldest pending forwarded event has waited, in seconds (0 when none is).
pub fn inbox_lag(seconds: f64) {
    gauge!("zulip_listeners_inbox_oldest_pending_age_seconds").set(seconds);
}

/// How long the oldest pending forwarded event of a type a listener takes has waited, in
/// seconds (0 when none is).
pub fn listener_lag(listener: &str, seconds: f64) {
    gauge!("zulip_listeners_listener_queue_lag_seconds", "listener" => listener.to_string(), "handler" => listener.to_string())
        .set(seconds);
}

/// A forwarder batch was verified and stored: the time, in unix seconds.
pub fn forwarder_batch_accepted() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!("zulip_listeners_forwarder_last_batch_timestamp_seconds").set(now);
}

/// Events the forwarder reported as shed (dropped before queueing, its queue being full).
pub fn forwarder_shed(events: u64) {
    counter!("zulip_listeners_forwarder_shed_events_total").increment(events);
}

/// Registers the series that alert rules look at with their starting values, so that
/// they exist before the first event (a rule over a missing series never fires).
pub fn initialise(listeners: &[&str]) {
    for &listener in listeners {
        let outcomes = ["success", "failure"].map(|outcome| runs(listener, outcome));
        let transitions = ["open", "closed", "disabled"].map(|to| transitions(listener, to));
        for counter in outcomes.iter().chain(&transitions).flatten() {
            counter.increment(0);
        }
    }
    for outcome in ["sent", "failed", "dropped"] {
        counter!("zulip_listeners_late_replies_total", "outcome" => outcome).increment(0);
    }
    for path in ["outgoing", "forwarder", "listeners"] {
        rate_limiter_keys(path, 0);
    }
    forwarder_shed(0);
    ready(false);
    inbox_lag(0.0);
}

/// Whether the listener is enabled now (1) or disabled (0), whatever disabled it: the
/// configuration file, an operator, or its failures.
pub fn listener_enabled(listener: &str, enabled: bool) {
    let value = if enabled { 1.0 } else { 0.0 };
    gauge!("zulip_listeners_listener_enabled", "listener" => listener.to_string()).set(value);
    gauge!("zulip_listeners_handler_enabled", "handler" => listener.to_string()).set(value);
}

/// Whether the configuration file enables the listener (1) or turns it off (0), before runtime
/// changes: `zulip_listeners_listener_enabled == 0` with this at 1 is a listener disabled at run
/// time (by an operator, or automatically), which alerts; one off in the file is a choice.
pub fn listener_enabled_in_file(listener: &str, enabled: bool) {
    let value = if enabled { 1.0 } else { 0.0 };
    gauge!("zulip_listeners_listener_enabled_in_file", "listener" => listener.to_string())
        .set(value);
    gauge!("zulip_listeners_handler_enabled_in_file", "handler" => listener.to_string()).set(value);
}

/// 1 while the listener's circuit breaker is open: from its opening until a trial run after
/// the cool-down succeeds (a failed trial opens it again), else 0.
pub fn listener_circuit_open(listener: &str, open: bool) {
    let value = if open { 1.0 } else { 0.0 };
    gauge!("zulip_listeners_listener_circuit_open", "listener" => listener.to_string()).set(value);
    gauge!("zulip_listeners_handler_circuit_open", "handler" => listener.to_string()).set(value);
}
