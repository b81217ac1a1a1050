//! Telemetry: the `tracing` subscriber (pretty or JSON lines, filtered by `telemetry.level`
//! or `RUST_LOG`, to stderr or to a file reopened on SIGHUP), the Prometheus metrics (one
//! place that names them all: [`metric`]), and the scrubbing of personal data from log lines
//! and stored error messages (`data_protection.log_sanitization`).

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use regex::Regex;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{DataProtectionConfig, LogFormat, TelemetryConfig};

/// Installs the global subscriber; a second call (tests) leaves the first in place. Returns
/// the log file, when logs go to one, so that SIGHUP can reopen it.
pub fn init(config: &TelemetryConfig) -> std::io::Result<Option<Arc<LogFile>>> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let file = match &config.file {
        Some(path) => Some(Arc::new(LogFile::open(path)?)),
        None => None,
    };
    let writer = LogWriter(file.clone());
    // Colour codes only for a person at a terminal: never in a file, a pipe or journald.
    let ansi = config.format == LogFormat::Pretty && file.is_none() && {
        use std::io::IsTerminal;
        std::io::stderr().is_terminal()
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let result = match config.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .finish()
            .with(ClientMistakes)
            .try_init(),
        LogFormat::Pretty => builder.compact().finish().with(ClientMistakes).try_init(),
        LogFormat::Plain => builder
            .compact()
            .without_time()
            .finish()
            .with(ClientMistakes)
            .try_init(),
    };
    // Already installed (several servers in one test process): keep the first.
    let _ = result;
    Ok(file)
}

/// The HTTP parser logs every connection it gives up on at ERROR (`stream error: …`), client
/// mistakes included: a bad request line, bad bytes in a header, a client that hung up or
/// timed out. Those are not our errors: they are counted
/// (`zulip_listeners_http_client_errors_total`) and not logged at ERROR. The parser logs each
/// of them at TRACE too (`actix_http=trace` shows them). Its other stream errors stay ERROR.
struct ClientMistakes;

/// The `stream error` texts (actix-http's `DispatchError`) that are the client's doing.
const CLIENT_STREAM_ERRORS: &[&str] = &[
    "stream error: request parse error",
    "stream error: I/O error",
    "stream error: request did not complete",
    "stream error: connection shutdown timeout",
    "stream error: handler dropped payload",
];

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ClientMistakes {
    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::ERROR || !meta.target().starts_with("actix_http::h1") {
            return true;
        }
        let mut message = MessageText(String::new());
        event.record(&mut message);
        if CLIENT_STREAM_ERRORS
            .iter()
            .any(|prefix| message.0.starts_with(prefix))
        {
            metric::http_client_error();
            return false;
        }
        true
    }
}

struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            use std::fmt::Write as _;
            let _ = write!(self.0, "{value:?}");
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }
}

/// A log file that can be reopened (after logrotate moved it away).
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    fn open(path: &Path) -> std::io::Result<LogFile> {
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(Self::append(path)?),
        })
    }

    fn append(path: &Path) -> std::io::Result<File> {
        OpenOptions::new().create(true).append(true).open(path)
    }

    /// Opens the path again; later lines go to the new file.
    pub fn reopen(&self) -> std::io::Result<()> {
        let fresh = Self::append(&self.path)?;
        match self.file.lock() {
            Ok(mut file) => *file = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}

/// Where log lines go: the log file when there is one, else stderr.
#[derive(Clone)]
struct LogWriter(Option<Arc<LogFile>>);

enum LogTarget<'a> {
    File(std::sync::MutexGuard<'a, File>),
    Stderr(std::io::Stderr),
}

impl Write for LogTarget<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            LogTarget::File(f) => f.write(buf),
            LogTarget::Stderr(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            LogTarget::File(f) => f.flush(),
            LogTarget::Stderr(e) => e.flush(),
        }
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LogTarget<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        match &self.0 {
            Some(file) => match file.file.lock() {
                Ok(guard) => LogTarget::File(guard),
                Err(poisoned) => LogTarget::File(poisoned.into_inner()),
            },
            None => LogTarget::Stderr(std::io::stderr()),
        }
    }
}

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus recorder, installed on first use; `None` if another recorder was
/// installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".into()),
                    LATENCY_BUCKETS,
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

pub mod process;

/// Every metric the server exports, named in one place.
pub mod metric {
    use metrics::{counter, gauge, histogram};

    /// An HTTP request answered.
    /// `route` is a route pattern (or `unmatched`) and `method` one of a fixed set (see
    /// `http::method_label`): no label value comes from the client as such.
    pub fn http_request(route: &str, method: &'static str, status: u16, seconds: f64) {
        let route = route.to_string();
        counter!("zulip_listeners_http_requests_total", "route" => route.clone(), "method" => method, "status" => status.to_string())
            .increment(1);
        histogram!("zulip_listeners_http_request_duration_seconds", "route" => route)
            .record(seconds);
    }

    /// Events received: `outcome` is accepted, duplicate, rate_limited, filtered or expired.
    pub fn events_received(
        source: &'static str,
        event_type: &str,
        outcome: &'static str,
        count: u64,
    ) {
        counter!("zulip_listeners_events_received_total", "source" => source, "type" => event_type_label(event_type), "outcome" => outcome)
            .increment(count);
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

    /// A handler's run counters and latency histogram, looked up once and kept (a look-up
    /// hashes the labels; a handler runs for every event).
    pub struct HandlerRuns {
        success: metrics::Counter,
        failure: metrics::Counter,
        duration: metrics::Histogram,
    }

    impl HandlerRuns {
        pub fn new(handler: &str) -> HandlerRuns {
            let handler = handler.to_string();
            HandlerRuns {
                success: counter!("zulip_listeners_handler_runs_total", "handler" => handler.clone(), "outcome" => "success"),
                failure: counter!("zulip_listeners_handler_runs_total", "handler" => handler.clone(), "outcome" => "failure"),
                duration: histogram!("zulip_listeners_handler_duration_seconds", "handler" => handler),
            }
        }

        /// A handler run.
        pub fn record(&self, ok: bool, seconds: f64) {
            if ok { &self.success } else { &self.failure }.increment(1);
            self.duration.record(seconds);
        }
    }

    /// A reply delivered after the deadline through Zulip's REST API (`outcome`: sent,
    /// failed, dropped).
    pub fn late_reply(outcome: &'static str) {
        counter!("zulip_listeners_late_replies_total", "outcome" => outcome).increment(1);
    }

    /// A handler's circuit breaker or auto-disable transition.
    pub fn handler_transition(handler: &str, to: &'static str) {
        counter!("zulip_listeners_handler_transitions_total", "handler" => handler.to_string(), "to" => to)
            .increment(1);
    }

    /// An event skipped by one listener because it was over the listener's own quota.
    pub fn listener_rate_limited(listener: &str) {
        counter!("zulip_listeners_listener_rate_limited_total", "handler" => listener.to_string())
            .increment(1);
    }

    pub fn rate_limiter_keys(path: &'static str, keys: usize) {
        gauge!("zulip_listeners_rate_limiter_keys", "path" => path).set(keys as f64);
    }

    /// Forwarded events parked behind a paused or disabled handler, per handler.
    pub fn inbox_parked(handler: &str, count: i64) {
        gauge!("zulip_listeners_inbox_parked_events", "handler" => handler.to_string())
            .set(count as f64);
    }

    /// Live serving processes that run a forwarder listener (`serve --listeners`); 0 for an
    /// enabled listener means its events wait until a process that runs it starts.
    pub fn listener_live_processes(listener: &str, count: usize) {
        gauge!("zulip_listeners_listener_live_processes", "listener" => listener.to_string())
            .set(count as f64);
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
            gauge!("zulip_listeners_sqlite_cache_limit_bytes")
                .set(plan.sqlite_cache_total() as f64);
        }
        if let Some(used) = crate::db::sqlite_memory_used() {
            gauge!("zulip_listeners_sqlite_memory_bytes").set(used as f64);
        }
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
        gauge!("zulip_listeners_listener_queue_lag_seconds", "handler" => listener.to_string())
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
    pub fn initialise(handlers: &[&str]) {
        for &handler in handlers {
            for outcome in ["success", "failure"] {
                counter!("zulip_listeners_handler_runs_total", "handler" => handler.to_string(), "outcome" => outcome)
                    .increment(0);
            }
            for to in ["open", "closed", "disabled"] {
                counter!("zulip_listeners_handler_transitions_total", "handler" => handler.to_string(), "to" => to)
                    .increment(0);
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

    pub fn handler_enabled(handler: &str, enabled: bool) {
        gauge!("zulip_listeners_handler_enabled", "handler" => handler.to_string())
            .set(if enabled { 1.0 } else { 0.0 });
    }
}

struct Scrubber {
    email: Regex,
    max_chars: usize,
}

static SCRUBBER: OnceLock<Option<Scrubber>> = OnceLock::new();

/// Sets how [`scrub`] treats text, once per process (later calls are ignored).
pub fn configure_scrubbing(config: &DataProtectionConfig) {
    let _ = SCRUBBER.get_or_init(|| {
        config.log_sanitization.then(|| Scrubber {
            // The local part of an address; the domain stays (it tells which system).
            email: Regex::new(r"([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*@([A-Za-z0-9.\-]+)")
                .unwrap_or_else(|_| unreachable!("the pattern is valid")),
            max_chars: config.max_content_length,
        })
    });
}

/// Text fit for a log line or a stored error message: with sanitization on, email addresses
/// are masked (`a…@example.com`) and the text is cut to `max_content_length` characters.
pub fn scrub(text: &str) -> Cow<'_, str> {
    match SCRUBBER.get().and_then(Option::as_ref) {
        None => Cow::Borrowed(text),
        Some(s) => {
            let masked = s.email.replace_all(text, "$1…@$2");
            match crate::events::text::truncate_chars(&masked, s.max_chars) {
                (cut, true) => Cow::Owned(cut),
                (_, false) => masked,
            }
        }
    }
}
