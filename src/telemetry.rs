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

/// Whether a global metrics recorder is installed (this process's Prometheus recorder, or one
/// installed before it): until then the `metrics` macros hand out handles that record nothing,
/// which must not be kept.
fn recorder_installed() -> bool {
    PROMETHEUS.get().is_some()
}

pub mod process;

pub mod metric;

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
