//! Configuration: what the server reads at start-up and how it is validated.
//!
//! Layers, later ones winning: the documented defaults in `config/default.toml` (compiled into
//! the binary), an optional file given with `--config`, bots imported from a Zulip
//! `botserverrc` (`--botserverrc`), then `ZULIP_LISTENERS_*` environment variables (nested keys
//! joined with `__`, e.g. `ZULIP_LISTENERS_DATABASE__URL`). Secrets may be given inline, as a
//! `*_file` path or through the environment; they are wrapped in [`Secret`] so that they never
//! reach a log line or `Debug` output. [`Config::load`] validates everything and names the key
//! at fault in every error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// The documented defaults, shipped in the repository and compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Prefix of every environment variable the server reads.
pub const ENV_PREFIX: &str = "ZULIP_LISTENERS_";

/// Top-level sections; environment variables outside these are ignored (so that variables such
/// as `ZULIP_LISTENERS_TEST_PG_URL` do not trip the unknown-key check).
const SECTIONS: &[&str] = &[
    "server",
    "database",
    "telemetry",
    "outgoing",
    "data_protection",
    "bots",
    "handlers",
    "listeners",
    "forwarder",
    "filters",
    "rate_limits",
    "metrics",
    "admin",
    "error_handling",
    "retention",
];

/// Handlers a bot runs when its `handlers` key is omitted.
pub const DEFAULT_BOT_HANDLERS: &[&str] = &["command_bot"];

/// A configuration problem, always naming the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
    #[error("cannot read {what} `{path}`: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// A secret value (token, API key, signing secret). `Debug` and `Display` never show it.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(<empty>)"
        } else {
            "Secret(<redacted>)"
        })
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub telemetry: TelemetryConfig,
    pub outgoing: OutgoingConfig,
    pub data_protection: DataProtectionConfig,
    #[serde(default)]
    pub bots: BTreeMap<String, BotConfig>,
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerSettings>,
    /// Named listeners: instances of compiled-in handlers with their own scope and settings.
    #[serde(default)]
    pub listeners: BTreeMap<String, ListenerConfig>,
    pub forwarder: ForwarderConfig,
    pub filters: FiltersConfig,
    pub rate_limits: RateLimitsConfig,
    pub metrics: MetricsConfig,
    pub admin: AdminConfig,
    pub error_handling: ErrorHandlingConfig,
    pub retention: RetentionConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Address of the separate listener that serves `GET /metrics`.
    pub bind: String,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/admin/`; the admin API is off while it is empty.
    #[serde(default)]
    pub token: Secret,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The path in front of `/admin` under which the browser reaches the dashboard through a
    /// reverse proxy (e.g. `/listeners`); unset: the proxy's `X-Forwarded-Prefix`, if any.
    #[serde(default)]
    pub public_path: Option<String>,
}

impl fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorHandlingConfig {
    /// Consecutive failures of a handler that open its circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker keeps the handler from running.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// Failures within an hour above which a handler is disabled until an operator enables it.
    pub max_failures_per_hour: u32,
    /// A URL that receives a JSON POST for every breaker and auto-disable transition.
    #[serde(default)]
    pub notification_webhook: Option<String>,
    /// A bot (with api_key and site) that posts the transitions to `notification_stream`.
    #[serde(default)]
    pub notification_bot: Option<String>,
    #[serde(default)]
    pub notification_stream: Option<String>,
    #[serde(default)]
    pub notification_topic: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Event-log rows, finished inbox rows and statistics older than this many days are
    /// deleted by a daily pass; 0 keeps everything.
    pub retention_days: u32,
    /// Length of one `listener_stats` interval, aggregated in the background.
    #[serde(with = "humantime_serde")]
    pub aggregation_interval: Duration,
    /// Rows deleted per transaction.
    pub batch_size: i64,
    /// Stored messages have their content and personal columns erased this many days after
    /// they were stored; 0 keeps them.
    pub message_retention_days: u32,
    /// `user_activity` rows of users not seen for this many days are deleted; 0 keeps them.
    pub activity_retention_days: u32,
    /// Keyword-alert records older than this many days are deleted; 0 keeps them.
    pub alert_retention_days: u32,
}

/// Shortest admin token accepted, in characters.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 24;

/// Longest retention period accepted, in days (a century).
pub const MAX_RETENTION_DAYS: u32 = 36_500;

impl RetentionConfig {
    /// The cut-offs (Unix ms) of the personal-data retention at `now_ms`; `None` for a kind
    /// kept forever.
    pub fn personal_cutoffs(&self, now_ms: i64) -> crate::db::retention::PersonalCutoffs {
        let before = |days: u32| {
            (days > 0).then(|| now_ms.saturating_sub(i64::from(days).saturating_mul(86_400_000)))
        };
        crate::db::retention::PersonalCutoffs {
            messages: before(self.message_retention_days),
            activity: before(self.activity_retention_days),
            alerts: before(self.alert_retention_days),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `127.0.0.1:8080`.
    pub bind: String,
    /// HTTP worker threads; 0 means one per CPU core.
    pub workers: usize,
    /// Largest request body accepted on the outgoing-webhook routes, in bytes.
    pub max_body_bytes: usize,
    /// How long handlers may take before the HTTP answer is sent without a reply; `None`
    /// derives it from `zulip_outgoing_webhook_timeout` (see [`ServerConfig::reply_deadline`]).
    #[serde(default, with = "humantime_serde")]
    pub reply_deadline: Option<Duration>,
    /// Zulip's `OUTGOING_WEBHOOK_TIMEOUT_SECONDS` (default 10 s): how long Zulip waits for an
    /// answer before it gives up and retries.
    #[serde(with = "humantime_serde")]
    pub zulip_outgoing_webhook_timeout: Duration,
    /// How long a graceful shutdown may take before connections are dropped.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request head, and separately its body (408
    /// after it).
    #[serde(with = "humantime_serde")]
    pub client_timeout: Duration,
    /// Most connections open at once (over all workers); more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Most bytes of request bodies being read (not yet verified) at once, over all
    /// requests; a body that would exceed it is answered 503 with `Retry-After`.
    pub unverified_body_bytes: usize,
    /// The memory the server sizes its caches and pools for, like `"64MiB"`: a quarter of it
    /// is SQLite's page cache, shared evenly by every connection (see [`ServerConfig::memory`]).
    pub memory_budget: String,
}

/// Smallest `server.memory_budget` accepted.
const MIN_MEMORY_BUDGET: u64 = 16 << 20;
/// Smallest SQLite page cache a connection may be left with (16 pages of 16 KiB).
const MIN_SQLITE_CACHE_PER_CONNECTION: u64 = 256 << 10;

/// How `server.memory_budget` is shared out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryPlan {
    /// The whole budget, in bytes.
    pub budget_bytes: u64,
    /// SQLite connections that hold a page cache: the pool, the writer's and the
    /// checkpointer's.
    pub sqlite_connections: u64,
    /// Page cache of each SQLite connection, in bytes (`PRAGMA cache_size = -KiB`).
    pub sqlite_cache_per_connection: u64,
}

impl MemoryPlan {
    /// A quarter of `budget_bytes` for SQLite's page caches, split over the pool's
    /// connections plus the writer's and the checkpointer's. The rest is headroom for what
    /// traffic allocates (bodies being read, batches in flight, rate-limiter keys).
    pub fn new(budget_bytes: u64, pool_size: u32) -> MemoryPlan {
        let sqlite_connections = u64::from(pool_size) + 2;
        MemoryPlan {
            budget_bytes,
            sqlite_connections,
            sqlite_cache_per_connection: budget_bytes / 4 / sqlite_connections,
        }
    }

    /// The value for `PRAGMA cache_size` (negative: KiB rather than pages).
    pub fn sqlite_cache_size_pragma(&self) -> i64 {
        -i64::try_from(self.sqlite_cache_per_connection / 1024).unwrap_or(i64::MAX)
    }

    /// Page-cache bytes of every SQLite connection together, at most.
    pub fn sqlite_cache_total(&self) -> u64 {
        self.sqlite_cache_per_connection * self.sqlite_connections
    }
}

/// Reads a size like `64MiB`, `512 KiB`, `1GiB`, `65536` (bytes); `MB`/`KB`/`GB` are read as
/// their binary counterparts.
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size like \"64MiB\""))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}` (use B, KiB, MiB or GiB)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

impl ServerConfig {
    /// How the memory budget is shared out with a pool of `pool_size` connections.
    /// `memory_budget` was checked at load; an unreadable value falls back to the default.
    pub fn memory(&self, pool_size: u32) -> MemoryPlan {
        MemoryPlan::new(
            parse_byte_size(&self.memory_budget).unwrap_or(64 << 20),
            pool_size,
        )
    }

    /// The reply deadline: `reply_deadline` when set, else four fifths of Zulip's timeout
    /// (8 s for Zulip's default 10 s), which leaves time for the answer to travel back.
    pub fn reply_deadline(&self) -> Duration {
        self.reply_deadline
            .unwrap_or_else(|| derived_deadline(self.zulip_outgoing_webhook_timeout))
    }
}

fn derived_deadline(zulip_timeout: Duration) -> Duration {
    zulip_timeout.mul_f64(0.8)
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path`, a plain file path, or `postgres://…`.
    pub url: String,
    /// Connections in the read pool.
    pub pool_size: u32,
    /// How long to wait for a pooled connection.
    #[serde(with = "humantime_serde")]
    pub connection_timeout: Duration,
    /// Most rows the background writer groups into one transaction.
    pub write_batch_size: usize,
    /// SQLite `synchronous` of the writer's connection: `full` (every commit, intake included,
    /// is on disk before it is acknowledged), `extra`, or `normal` (faster; a power loss or OS
    /// crash may roll back the last commits).
    pub synchronous: String,
}

impl DatabaseConfig {
    /// The `PRAGMA synchronous` value for the writer's SQLite connection.
    pub fn sqlite_synchronous(&self) -> &'static str {
        match self.synchronous.as_str() {
            "normal" => "NORMAL",
            "extra" => "EXTRA",
            _ => "FULL",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines; coloured only when stderr is a terminal.
    Pretty,
    /// Uncoloured lines without a timestamp, for journald (which adds its own).
    Plain,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `info,zulip_listeners=debug`; `RUST_LOG` wins.
    pub level: String,
    /// Write logs to this file instead of stderr; reopened on SIGHUP (for logrotate).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutgoingConfig {
    /// How long a (bot, message id) is remembered so that Zulip's retries are answered from the
    /// record instead of running the handlers again.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataProtectionConfig {
    /// Longest message content (in characters) stored by handlers or written to logs.
    pub max_content_length: usize,
    /// Mask email addresses and cut message content in log lines and stored error messages.
    pub log_sanitization: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ForwarderConfig {
    /// Standard Webhooks signing secrets (`whsec_…`); several during a rotation.
    #[serde(default)]
    pub secrets: Vec<Secret>,
    /// A file with one secret per line, read in addition to `secrets`.
    #[serde(default)]
    pub secrets_file: Option<PathBuf>,
    /// Listeners that receive forwarded events (a handler name is the listener of that name).
    pub handlers: Vec<String>,
    /// Largest batch body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Most events accepted in one batch (413 above it).
    pub max_batch_events: usize,
    /// How far `webhook-timestamp` may be from this server's clock, either way.
    #[serde(with = "humantime_serde")]
    pub tolerance: Duration,
    /// Worker tasks processing events (each realm's events go to one worker, in order).
    pub workers: usize,
    /// Retries after the first failed attempt before an event is dead.
    pub max_retries: u32,
    /// Delay before the first retry; doubled for each further one (at most 1 h).
    #[serde(with = "humantime_serde")]
    pub retry_delay: Duration,
    /// How long one handler may take with one event.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Duration,
    /// How long an event handed to a worker stays claimed; after that (a crash on another
    /// instance sharing PostgreSQL) any instance may take it.
    #[serde(with = "humantime_serde")]
    pub claim_lease: Duration,
    /// Pending events above which new batches are refused with 429 until workers catch up.
    pub max_backlog: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FiltersConfig {
    /// Events emitted longer ago than this are stored as `expired` and not dispatched;
    /// "0s" turns the check off.
    #[serde(with = "humantime_serde")]
    pub max_event_age: Duration,
    /// Realms served (numbers are realm ids, strings subdomains); empty = every realm.
    #[serde(default)]
    pub allowed_realms: Vec<RealmSelector>,
    /// User ids whose events are not processed.
    #[serde(default)]
    pub blocked_users: Vec<i64>,
}

/// A realm named in `filters.allowed_realms` or a listener's scope.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RealmSelector {
    Id(i64),
    Subdomain(String),
}

/// A channel named in a listener's scope.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ChannelSelector {
    Id(i64),
    Name(String),
}

/// A user named in a listener's scope.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum UserSelector {
    Id(i64),
    Email(String),
}

/// A sustained rate with bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Events per minute, sustained.
    pub per_minute: u32,
    /// Events allowed at once after a quiet period.
    pub burst: u32,
}

/// Quotas that replace the defaults for one intake path, one bot or one listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    #[serde(default)]
    pub per_user: Option<QuotaConfig>,
    #[serde(default)]
    pub per_realm: Option<QuotaConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    pub enabled: bool,
    pub per_user: QuotaConfig,
    pub per_realm: QuotaConfig,
    /// Overrides for outgoing webhooks (a bot stands for its realm).
    #[serde(default)]
    pub outgoing: QuotaOverrides,
    /// Overrides for forwarded events.
    #[serde(default)]
    pub forwarder: QuotaOverrides,
    /// The reply a user gets when their outgoing webhook is over quota; empty = no reply.
    pub outgoing_notice: String,
    /// How often idle limiter keys are forgotten.
    #[serde(with = "humantime_serde")]
    pub housekeeping_interval: Duration,
}

impl RateLimitsConfig {
    /// (per realm, per user) quotas for a path, with a bot's own overrides on top.
    pub fn quotas(
        &self,
        path: &QuotaOverrides,
        bot: Option<&QuotaOverrides>,
    ) -> (QuotaConfig, QuotaConfig) {
        let pick = |f: fn(&QuotaOverrides) -> Option<QuotaConfig>, default: QuotaConfig| {
            bot.and_then(f).or_else(|| f(path)).unwrap_or(default)
        };
        (
            pick(|o| o.per_realm, self.per_realm),
            pick(|o| o.per_user, self.per_user),
        )
    }
}

impl FiltersConfig {
    pub fn max_event_age(&self) -> Option<Duration> {
        (!self.max_event_age.is_zero()).then_some(self.max_event_age)
    }
}

/// One outgoing-webhook bot.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BotConfig {
    /// The bot's Zulip email, as sent in `bot_email`.
    #[serde(default)]
    pub email: String,
    #[serde(default)]
    pub token: Secret,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The bot's API key; with `site`, late replies are delivered through Zulip's REST API.
    #[serde(default)]
    pub api_key: Secret,
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The Zulip server, e.g. `https://chat.example.com`.
    #[serde(default)]
    pub site: Option<String>,
    /// The bot's display name, used to strip a leading mention when Zulip does not send it.
    #[serde(default)]
    pub full_name: Option<String>,
    /// Listeners in the order they run (a handler name is the listener of that name); the
    /// first reply wins.
    #[serde(default)]
    pub handlers: Option<Vec<String>>,
    /// Overrides `server.reply_deadline` for this bot.
    #[serde(default, with = "humantime_serde")]
    pub reply_deadline: Option<Duration>,
    /// This bot's own quotas (over `rate_limits.outgoing` and the defaults).
    #[serde(default)]
    pub rate_limits: Option<QuotaOverrides>,
}

impl fmt::Debug for BotConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BotConfig")
            .field("email", &self.email)
            .field("token", &self.token)
            .field("api_key", &self.api_key)
            .field("site", &self.site)
            .field("full_name", &self.full_name)
            .field("handlers", &self.handlers)
            .field("rate_limits", &self.rate_limits)
            .finish_non_exhaustive()
    }
}

/// Per-handler settings: `enabled`, plus whatever keys the handler itself reads. `Debug`
/// shows them through [`crate::redact::settings`] (no secrets, URLs cut to their origin).
#[derive(Clone, Default, Deserialize, Serialize)]
pub struct HandlerSettings {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The listener these settings are for (set by the listener registry; handlers that
    /// record what they did use it to keep listeners of one handler apart).
    #[serde(skip)]
    pub listener: String,
    #[serde(flatten)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Debug for HandlerSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerSettings")
            .field("enabled", &self.enabled)
            .field(
                "settings",
                &crate::redact::settings(&serde_json::Value::Object(self.settings.clone())),
            )
            .finish()
    }
}

fn default_true() -> bool {
    true
}

/// One `[listeners.<name>]`: a named instance of a compiled-in handler. Which handler names
/// exist, and whether `settings` suit the handler, is checked by the listener registry
/// ([`crate::listeners::Registry::build`]), which owns them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The compiled-in handler this listener runs.
    pub handler: String,
    #[serde(default)]
    pub description: String,
    /// Narrows the handler's event types; empty = all of them.
    #[serde(default)]
    pub events: Vec<String>,
    /// Scope: realms (ids or subdomains); empty = every realm.
    #[serde(default)]
    pub realms: Vec<RealmSelector>,
    /// Scope: channels (ids or names); empty = events anywhere, including those in no channel.
    #[serde(default)]
    pub streams: Vec<ChannelSelector>,
    /// Scope: the users events are about (sender, actor or person; ids or emails).
    #[serde(default)]
    pub users: Vec<UserSelector>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The handler's own settings (see `[handlers.<handler>]` in config/default.toml).
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// This listener's own quotas for its outward actions; none when absent.
    #[serde(default)]
    pub rate_limits: Option<QuotaOverrides>,
}

/// Where the configuration comes from, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub config_file: Option<PathBuf>,
    pub botserverrc: Option<PathBuf>,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &crate::redact::database_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connection_timeout", &self.connection_timeout)
            .field("write_batch_size", &self.write_batch_size)
            .finish()
    }
}

/// Which database the URL names. `Debug` and `Display` mask a PostgreSQL password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseTarget {
    Sqlite(PathBuf),
    Postgres(String),
}

impl fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseTarget::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            DatabaseTarget::Postgres(url) => f
                .debug_tuple("Postgres")
                .field(&crate::redact::database_url(url))
                .finish(),
        }
    }
}

impl fmt::Display for DatabaseTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseTarget::Sqlite(path) => write!(f, "SQLite {}", path.display()),
            DatabaseTarget::Postgres(url) => {
                write!(f, "PostgreSQL {}", crate::redact::database_url(url))
            }
        }
    }
}

impl Config {
    /// Reads every layer and validates the result.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        if let Some(path) = &sources.config_file {
            if !path.is_file() {
                return Err(ConfigError::Io {
                    what: "configuration file",
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        if let Some(path) = &sources.botserverrc {
            let bots = read_botserverrc(path)?;
            figment = figment.merge(Serialized::default("bots", bots));
        }
        figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|s| key.starts_with(s))
        }));
        Self::from_figment(figment)
    }

    /// Builds a configuration from TOML text layered over the defaults (used by tests and tools).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(text)))
    }

    pub(crate) fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract().map_err(|e| {
            let messages: Vec<String> = e.into_iter().map(|e| describe_figment_error(&e)).collect();
            ConfigError::Parse(messages.join("; "))
        })?;
        config.resolve_secret_files()?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        for (name, bot) in &mut self.bots {
            if let Some(path) = bot.token_file.take() {
                bot.token =
                    Secret::new(read_secret_file(&path, &format!("bots.{name}.token_file"))?);
            }
            if let Some(path) = bot.api_key_file.take() {
                bot.api_key = Secret::new(read_secret_file(
                    &path,
                    &format!("bots.{name}.api_key_file"),
                )?);
            }
        }
        if let Some(path) = self.admin.token_file.take() {
            self.admin.token = Secret::new(read_secret_file(&path, "admin.token_file")?);
        }
        if let Some(path) = self.forwarder.secrets_file.take() {
            let text = read_secret_file(&path, "forwarder.secrets_file")?;
            self.forwarder.secrets.extend(
                text.split_whitespace()
                    .filter(|s| !s.is_empty())
                    .map(Secret::new),
            );
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.bind",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.server.bind
                ),
            ));
        }
        if self.server.max_body_bytes < 1024 {
            return Err(invalid("server.max_body_bytes", "must be at least 1024"));
        }
        let zulip_timeout = self.server.zulip_outgoing_webhook_timeout;
        if zulip_timeout < Duration::from_secs(1) || zulip_timeout > Duration::from_secs(600) {
            return Err(invalid(
                "server.zulip_outgoing_webhook_timeout",
                "must be between 1s and 600s (Zulip's OUTGOING_WEBHOOK_TIMEOUT_SECONDS)",
            ));
        }
        check_deadline(
            "server.reply_deadline",
            self.server.reply_deadline(),
            zulip_timeout,
        )?;
        if self.server.client_timeout < Duration::from_millis(100)
            || self.server.client_timeout > Duration::from_secs(600)
        {
            return Err(invalid(
                "server.client_timeout",
                "must be between 100ms and 10m",
            ));
        }
        if self.server.max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        let largest_body = self
            .server
            .max_body_bytes
            .max(self.forwarder.max_body_bytes);
        if self.server.unverified_body_bytes < largest_body {
            return Err(invalid(
                "server.unverified_body_bytes",
                format!(
                    "must be at least the largest body allowed ({largest_body} bytes, \
                     server.max_body_bytes / forwarder.max_body_bytes), or such a body could never be read"
                ),
            ));
        }
        if self.database.pool_size == 0 {
            return Err(invalid("database.pool_size", "must be at least 1"));
        }
        let budget = parse_byte_size(&self.server.memory_budget)
            .map_err(|problem| invalid("server.memory_budget", problem))?;
        if budget < MIN_MEMORY_BUDGET {
            return Err(invalid(
                "server.memory_budget",
                format!("must be at least 16MiB (is {budget} bytes)"),
            ));
        }
        let plan = MemoryPlan::new(budget, self.database.pool_size);
        if plan.sqlite_cache_per_connection < MIN_SQLITE_CACHE_PER_CONNECTION {
            return Err(invalid(
                "server.memory_budget",
                format!(
                    "leaves {} KiB of page cache per database connection (a quarter of the budget \
                     over database.pool_size + 2 connections); at least 256 KiB is needed: raise \
                     the budget or lower database.pool_size",
                    plan.sqlite_cache_per_connection / 1024
                ),
            ));
        }
        if self.database.write_batch_size == 0 {
            return Err(invalid("database.write_batch_size", "must be at least 1"));
        }
        if !matches!(
            self.database.synchronous.as_str(),
            "full" | "extra" | "normal"
        ) {
            return Err(invalid(
                "database.synchronous",
                format!(
                    "`{}` is not one of `full`, `extra`, `normal`",
                    self.database.synchronous
                ),
            ));
        }
        self.database_target()?;
        if tracing_subscriber::EnvFilter::try_new(&self.telemetry.level).is_err() {
            return Err(invalid(
                "telemetry.level",
                format!(
                    "`{}` is not a log filter such as `info`",
                    self.telemetry.level
                ),
            ));
        }
        if self.outgoing.dedup_window < Duration::from_secs(60) {
            return Err(invalid(
                "outgoing.dedup_window",
                "must be at least 1m (Zulip retries for about 40 s)",
            ));
        }
        if self.data_protection.max_content_length == 0 {
            return Err(invalid(
                "data_protection.max_content_length",
                "must be at least 1",
            ));
        }
        let mut emails = BTreeMap::new();
        for (name, bot) in &self.bots {
            self.validate_bot(name, bot)?;
            if let Some(other) = emails.insert(bot.email.to_ascii_lowercase(), name) {
                return Err(invalid(
                    format!("bots.{name}.email"),
                    format!("`{}` is also the email of bot `{other}`", bot.email),
                ));
            }
        }
        let admin_token = self.admin.token.expose().trim();
        if !admin_token.is_empty() && admin_token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            return Err(invalid(
                "admin.token",
                format!(
                    "is too short: use at least {MIN_ADMIN_TOKEN_CHARS} random characters \
                     (e.g. `openssl rand -hex 24`)"
                ),
            ));
        }
        for (i, secret) in self.forwarder.secrets.iter().enumerate() {
            if let Err(problem) = crate::verification::SigningKey::parse(secret.expose()) {
                return Err(invalid(
                    format!("forwarder.secrets[{i}]"),
                    problem.to_string(),
                ));
            }
        }
        let f = &self.forwarder;
        if f.max_body_bytes < 1024 {
            return Err(invalid("forwarder.max_body_bytes", "must be at least 1024"));
        }
        if f.max_batch_events == 0 {
            return Err(invalid("forwarder.max_batch_events", "must be at least 1"));
        }
        if f.workers == 0 || f.workers > 256 {
            return Err(invalid("forwarder.workers", "must be between 1 and 256"));
        }
        if f.tolerance < Duration::from_secs(1) {
            return Err(invalid("forwarder.tolerance", "must be at least 1s"));
        }
        if f.retry_delay.is_zero() {
            return Err(invalid("forwarder.retry_delay", "must be more than 0s"));
        }
        if f.handler_timeout < Duration::from_millis(10) {
            return Err(invalid(
                "forwarder.handler_timeout",
                "must be at least 10ms",
            ));
        }
        if f.claim_lease < Duration::from_secs(1) {
            return Err(invalid("forwarder.claim_lease", "must be at least 1s"));
        }
        if f.max_backlog == 0 {
            return Err(invalid("forwarder.max_backlog", "must be at least 1"));
        }
        let r = &self.rate_limits;
        check_quota("rate_limits.per_user", &r.per_user)?;
        check_quota("rate_limits.per_realm", &r.per_realm)?;
        for (path, o) in [("outgoing", &r.outgoing), ("forwarder", &r.forwarder)] {
            check_overrides(&format!("rate_limits.{path}"), o)?;
        }
        if r.housekeeping_interval < Duration::from_secs(1) {
            return Err(invalid(
                "rate_limits.housekeeping_interval",
                "must be at least 1s",
            ));
        }
        if r.outgoing_notice.chars().count() > crate::events::text::MAX_MESSAGE_LENGTH {
            return Err(invalid(
                "rate_limits.outgoing_notice",
                "longer than a Zulip message",
            ));
        }
        if self.metrics.enabled && self.metrics.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.bind",
                format!(
                    "`{}` is not an address like 127.0.0.1:9898",
                    self.metrics.bind
                ),
            ));
        }
        let e = &self.error_handling;
        if e.breaker_failures == 0 {
            return Err(invalid(
                "error_handling.breaker_failures",
                "must be at least 1",
            ));
        }
        if e.max_failures_per_hour == 0 {
            return Err(invalid(
                "error_handling.max_failures_per_hour",
                "must be at least 1",
            ));
        }
        if let Some(bot) = &e.notification_bot {
            if self.bots.get(bot).is_none_or(|b| b.site.is_none()) {
                return Err(invalid(
                    "error_handling.notification_bot",
                    format!("`{bot}` must be a bot under [bots] with api_key and site"),
                ));
            }
            if e.notification_stream.is_none() {
                return Err(invalid(
                    "error_handling.notification_stream",
                    "required with notification_bot",
                ));
            }
        }
        if let Some(url) = &e.notification_webhook {
            crate::outbound::check_url(url)
                .map_err(|p| invalid("error_handling.notification_webhook", p))?;
        }
        if self.retention.aggregation_interval < Duration::from_secs(60) {
            return Err(invalid(
                "retention.aggregation_interval",
                "must be at least 1m",
            ));
        }
        if self.retention.batch_size < 1 {
            return Err(invalid("retention.batch_size", "must be at least 1"));
        }
        for (key, days) in [
            ("retention.retention_days", self.retention.retention_days),
            (
                "retention.message_retention_days",
                self.retention.message_retention_days,
            ),
            (
                "retention.activity_retention_days",
                self.retention.activity_retention_days,
            ),
            (
                "retention.alert_retention_days",
                self.retention.alert_retention_days,
            ),
        ] {
            if days > MAX_RETENTION_DAYS {
                return Err(invalid(
                    key,
                    format!("{days} is more than {MAX_RETENTION_DAYS} days; 0 keeps everything"),
                ));
            }
        }
        let alert_days = self.retention.alert_retention_days;
        if alert_days > 0
            && Duration::from_secs(u64::from(alert_days) * 86_400) <= self.filters.max_event_age
        {
            return Err(invalid(
                "retention.alert_retention_days",
                format!(
                    "{alert_days} day(s) must be longer than filters.max_event_age, or a re-sent \
                     event could alert a second time"
                ),
            ));
        }
        for (name, listener) in &self.listeners {
            check_listener_name(name)?;
            if let Some(overrides) = &listener.rate_limits {
                check_overrides(&format!("listeners.{name}.rate_limits"), overrides)?;
            }
        }
        // Whether listener names and handler settings exist and suit their handlers is
        // checked by the listener registry, which owns the handler names.
        Ok(())
    }

    fn validate_bot(&self, name: &str, bot: &BotConfig) -> Result<(), ConfigError> {
        let key = |k: &str| format!("bots.{name}.{k}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                format!("bots.{name}"),
                "bot names may use only letters, digits, `-` and `_` (they appear in URLs)",
            ));
        }
        if bot.email.trim().is_empty() || !bot.email.contains('@') {
            return Err(invalid(
                key("email"),
                "required: the bot's email as shown in Zulip's bot settings",
            ));
        }
        if bot.token.expose().trim().is_empty() {
            return Err(invalid(
                key("token"),
                "required: the outgoing webhook token from Zulip (or `token_file`)",
            ));
        }
        if let Some(site) = &bot.site {
            crate::outbound::check_url(site).map_err(|p| invalid(key("site"), p))?;
        }
        match (&bot.site, bot.api_key.is_empty()) {
            (Some(_), true) => {
                return Err(invalid(
                    key("api_key"),
                    "`site` is set but `api_key` is not; give both to enable late replies",
                ));
            }
            (None, false) => {
                return Err(invalid(
                    key("site"),
                    "`api_key` is set but `site` is not; give both to enable late replies",
                ));
            }
            _ => {}
        }
        if let Some(deadline) = bot.reply_deadline {
            check_deadline(
                &key("reply_deadline"),
                deadline,
                self.server.zulip_outgoing_webhook_timeout,
            )?;
        }
        if let Some(overrides) = &bot.rate_limits {
            check_overrides(&key("rate_limits"), overrides)?;
        }
        if bot.handler_names().is_empty() {
            return Err(invalid(key("handlers"), "must name at least one listener"));
        }
        Ok(())
    }

    /// Settings of one handler (empty when `[handlers.<name>]` is absent).
    pub fn handler_settings(&self, name: &str) -> HandlerSettings {
        self.handlers.get(name).cloned().unwrap_or(HandlerSettings {
            enabled: true,
            listener: String::new(),
            settings: serde_json::Map::new(),
        })
    }

    /// Which database `database.url` names.
    pub fn database_target(&self) -> Result<DatabaseTarget, ConfigError> {
        parse_database_url(&self.database.url).map_err(|problem| invalid("database.url", problem))
    }
}

impl BotConfig {
    /// The bot's handler names, in order.
    pub fn handler_names(&self) -> Vec<String> {
        match &self.handlers {
            Some(list) => list.clone(),
            None => DEFAULT_BOT_HANDLERS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// A reply deadline must end before Zulip stops waiting (`server.zulip_outgoing_webhook_timeout`):
/// otherwise Zulip retries while the first run still holds the request, and that run's reply
/// is lost.
fn check_deadline(
    key: &str,
    deadline: Duration,
    zulip_timeout: Duration,
) -> Result<(), ConfigError> {
    if deadline < Duration::from_millis(100) || deadline >= zulip_timeout {
        return Err(invalid(
            key,
            format!(
                "must be at least 100ms and below server.zulip_outgoing_webhook_timeout ({}): \
                 Zulip gives up after that and retries",
                humantime::format_duration(zulip_timeout)
            ),
        ));
    }
    Ok(())
}

fn check_quota(key: &str, quota: &QuotaConfig) -> Result<(), ConfigError> {
    if quota.per_minute == 0 {
        return Err(invalid(format!("{key}.per_minute"), "must be at least 1"));
    }
    if quota.burst == 0 {
        return Err(invalid(format!("{key}.burst"), "must be at least 1"));
    }
    Ok(())
}

fn check_overrides(key: &str, overrides: &QuotaOverrides) -> Result<(), ConfigError> {
    if let Some(q) = &overrides.per_user {
        check_quota(&format!("{key}.per_user"), q)?;
    }
    if let Some(q) = &overrides.per_realm {
        check_quota(&format!("{key}.per_realm"), q)?;
    }
    Ok(())
}

/// Listener names appear in URLs, metrics and the CLI.
fn check_listener_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            format!("listeners.{name}"),
            "listener names are 1 to 64 letters, digits, `-` and `_` (they appear in URLs)",
        ));
    }
    Ok(())
}

fn describe_figment_error(error: &figment::Error) -> String {
    let key = error.path.join(".");
    let origin = error
        .metadata
        .as_ref()
        .map(|m| format!(" (from {})", m.name))
        .unwrap_or_default();
    if key.is_empty() {
        format!("{}{origin}", error.kind)
    } else {
        format!("key `{key}`: {}{origin}", error.kind)
    }
}

fn read_secret_file(path: &Path, key: &str) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        what: "secret file",
        path: path.to_path_buf(),
        source,
    })?;
    let value = text.trim().to_string();
    if value.is_empty() {
        return Err(invalid(key, format!("`{}` is empty", path.display())));
    }
    Ok(value)
}

/// Parses `sqlite://path`, `sqlite:path`, a plain path, or `postgres://…` / `postgresql://…`.
pub fn parse_database_url(url: &str) -> Result<DatabaseTarget, String> {
    let url = url.trim();
    if url.is_empty() {
        return Err("is empty; use sqlite://data/zulip-listeners.db or postgres://…".into());
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(DatabaseTarget::Postgres(url.to_string()));
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.contains("://") {
        return Err(format!(
            "`{url}` has an unsupported scheme; use sqlite:// or postgres://"
        ));
    }
    if path.is_empty() || path == ":memory:" {
        return Err("needs a file: an in-memory SQLite database would lose every event".into());
    }
    Ok(DatabaseTarget::Sqlite(PathBuf::from(path)))
}

/// Reads a Zulip `botserverrc` / `zuliprc` (INI: one `[section]` per bot with `email`, `key`,
/// `site`, `token`) into bot configurations. Section names become bot names; `[api]`, the
/// section of a single bot's zuliprc, is named after the bot's email.
pub fn read_botserverrc(path: &Path) -> Result<BTreeMap<String, BotConfig>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        what: "botserverrc",
        path: path.to_path_buf(),
        source,
    })?;
    parse_botserverrc(&text)
}

pub(crate) fn parse_botserverrc(text: &str) -> Result<BTreeMap<String, BotConfig>, ConfigError> {
    let ini = ini::Ini::load_from_str(text)
        .map_err(|e| ConfigError::Parse(format!("botserverrc: {e}")))?;
    let mut bots = BTreeMap::new();
    // Bot name -> the section it came from, so that two sections never name one bot.
    let mut sections: BTreeMap<String, &str> = BTreeMap::new();
    for (section, props) in ini.iter() {
        let Some(section) = section else { continue };
        let get = |k: &str| props.get(k).map(str::trim).filter(|v| !v.is_empty());
        let email = get("email").ok_or_else(|| {
            invalid(
                format!("botserverrc [{section}].email"),
                "missing; copy the file from Zulip's bot settings",
            )
        })?;
        let token = get("token").ok_or_else(|| {
            invalid(
                format!("botserverrc [{section}].token"),
                "missing; only outgoing-webhook bots have a token (see Zulip's bot settings)",
            )
        })?;
        let name = if section.is_empty() || section == "api" {
            email.split('@').next().unwrap_or(email).to_string()
        } else {
            section.to_string()
        };
        let name: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if let Some(previous) = sections.insert(name.clone(), section) {
            return Err(invalid(
                format!("botserverrc [{section}]"),
                format!(
                    "names the same bot `{name}` as section [{previous}]; give each bot its own section"
                ),
            ));
        }
        let api_key = get("key").map(Secret::new).unwrap_or_default();
        let site = get("site")
            .map(str::to_string)
            .filter(|_| !api_key.is_empty());
        bots.insert(
            name,
            BotConfig {
                email: email.to_string(),
                token: Secret::new(token),
                token_file: None,
                api_key: if site.is_some() {
                    api_key
                } else {
                    Secret::default()
                },
                api_key_file: None,
                site,
                full_name: None,
                handlers: None,
                reply_deadline: None,
                rate_limits: None,
            },
        );
    }
    if bots.is_empty() {
        return Err(ConfigError::Parse(
            "botserverrc: no [bot] sections found".into(),
        ));
    }
    Ok(bots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::from_toml("").expect("defaults load");
        assert_eq!(config.server.bind, "127.0.0.1:8080");
        assert_eq!(config.server.reply_deadline(), Duration::from_secs(8));
        assert_eq!(
            config.server.zulip_outgoing_webhook_timeout,
            Duration::from_secs(10)
        );
        assert!(config.bots.is_empty());
    }

    #[test]
    fn reply_deadline_follows_zulips_outgoing_webhook_timeout() {
        let longer = Config::from_toml("[server]\nzulip_outgoing_webhook_timeout = \"30s\"\n")
            .expect("a longer Zulip timeout loads");
        assert_eq!(longer.server.reply_deadline(), Duration::from_secs(24));
        let explicit = Config::from_toml(
            "[server]\nzulip_outgoing_webhook_timeout = \"30s\"\nreply_deadline = \"20s\"\n",
        )
        .expect("a deadline below a longer Zulip timeout loads");
        assert_eq!(explicit.server.reply_deadline(), Duration::from_secs(20));
        let shorter = Config::from_toml("[server]\nzulip_outgoing_webhook_timeout = \"5s\"\n")
            .expect("a shorter Zulip timeout loads");
        assert_eq!(shorter.server.reply_deadline(), Duration::from_secs(4));

        let err = Config::from_toml(
            "[server]\nzulip_outgoing_webhook_timeout = \"5s\"\nreply_deadline = \"8s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server.reply_deadline") && err.contains("zulip_outgoing_webhook_timeout"),
            "{err}"
        );
        let err = Config::from_toml(
            "[server]\nzulip_outgoing_webhook_timeout = \"5s\"\n[bots.b]\nemail = \"b@x\"\ntoken = \"t\"\nreply_deadline = \"6s\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bots.b.reply_deadline"), "{err}");
        let err = Config::from_toml("[server]\nzulip_outgoing_webhook_timeout = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.zulip_outgoing_webhook_timeout"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("[server]\nbnid = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bnid"), "{err}");
    }

    #[test]
    fn bot_without_token_is_rejected_with_its_key() {
        let err = Config::from_toml("[bots.helper]\nemail = \"helper-bot@example.com\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bots.helper.token"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config =
            Config::from_toml("[bots.h]\nemail = \"h@x.org\"\ntoken = \"supersecrettoken\"")
                .expect("valid");
        let shown = format!("{config:?}");
        assert!(!shown.contains("supersecrettoken"), "{shown}");
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            parse_database_url("sqlite://data/x.db"),
            Ok(DatabaseTarget::Sqlite("data/x.db".into()))
        );
        assert_eq!(
            parse_database_url("/tmp/x.db"),
            Ok(DatabaseTarget::Sqlite("/tmp/x.db".into()))
        );
        assert!(matches!(
            parse_database_url("postgres://u@h/db"),
            Ok(DatabaseTarget::Postgres(_))
        ));
        assert!(parse_database_url("mysql://x").is_err());
        assert!(parse_database_url(":memory:").is_err());
    }

    #[test]
    fn botserverrc_sections_become_bots() {
        let bots = parse_botserverrc(
            "[helloworld]\nemail=hello-bot@zulip.com\nkey=abcdef\nsite=https://chat.example.com\ntoken=abcd1234\n\n\
             [api]\nemail=other-bot@zulip.com\nkey=\nsite=\ntoken=xyz\n",
        )
        .expect("parses");
        let hello = &bots["helloworld"];
        assert_eq!(hello.email, "hello-bot@zulip.com");
        assert_eq!(hello.token.expose(), "abcd1234");
        assert_eq!(hello.site.as_deref(), Some("https://chat.example.com"));
        let other = &bots["other-bot"];
        assert!(other.api_key.is_empty() && other.site.is_none());
    }

    #[test]
    fn botserverrc_without_token_names_the_section() {
        let err = parse_botserverrc("[b]\nemail=b@x.org\nkey=k\nsite=https://x.org\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("[b].token"), "{err}");
    }

    #[test]
    fn botserverrc_sections_naming_one_bot_are_refused() {
        // Found while writing the botserverrc fuzz target: `[a.b]` and `[a_b]` (or one section
        // written twice) became one bot, and the first was dropped without a word.
        for text in [
            "[a.b]\nemail=a@x.org\ntoken=t1\n[a_b]\nemail=b@x.org\ntoken=t2\n",
            "[a]\nemail=a@x.org\ntoken=t1\n[a]\nemail=b@x.org\ntoken=t2\n",
            "[api]\nemail=a@x.org\ntoken=t1\n[a]\nemail=b@x.org\ntoken=t2\n",
        ] {
            let err = parse_botserverrc(text).unwrap_err().to_string();
            assert!(err.contains("names the same bot"), "{text}: {err}");
        }
    }
}
