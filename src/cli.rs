//! The command line: `serve`, `migrate`, `check-config`, `listeners`, `gen-secret`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Config, Sources};
use crate::db::tables::inbox::InboxStatus;
use crate::db::{DbConnection, establish, retention, run_migrations, tables};
use crate::listeners::Registry;
use crate::server::{ServeOptions, start};
use crate::verification::SigningKey;

/// zulip-listeners: event-driven features for a Zulip organisation.
#[derive(Debug, Parser)]
#[command(name = "zulip-listeners", version, about, long_about = None)]
pub struct Cli {
    /// A TOML file layered over config/default.toml (e.g. config/production.example.toml).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "ZULIP_LISTENERS_CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// A `botserverrc` downloaded from Zulip's bot settings; each section becomes a bot.
    #[arg(long, global = true, value_name = "FILE")]
    pub botserverrc: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (applies pending migrations first).
    Serve {
        /// Run handlers but store nothing except the event log, post no reply and call
        /// nothing external.
        #[arg(long)]
        dry_run: bool,
        /// Run only these forwarder listeners in this process (comma-separated, e.g.
        /// `message_logger,user_activity_tracker`); processes sharing one PostgreSQL database
        /// together run every listener once per event. PostgreSQL only. Outgoing-webhook
        /// bots are unaffected: they run in whichever process receives the request.
        #[arg(long, value_delimiter = ',')]
        listeners: Option<Vec<String>>,
    },
    /// Apply pending database migrations and exit.
    Migrate,
    /// Load and validate the configuration, print a summary, and exit.
    CheckConfig,
    /// List every listener (handler, event types, state, runs and failures, who sends it
    /// events), show one with its statistics and history, or change one; a running server
    /// follows within seconds.
    Listeners {
        /// Print the list as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<ListenerAction>,
    },
    /// Delete event-log rows, finished and rate-limited inbox rows, accepted batch ids, retry
    /// records and statistics older than N days, in small batches; also applies the personal-data
    /// periods of [retention] (message content, user activity, keyword-alert history).
    Cleanup {
        #[arg(long, value_name = "N")]
        days: u32,
    },
    /// Summarise the event log per handler and interval into listener_stats.
    Stats {
        #[command(subcommand)]
        action: StatsAction,
    },
    /// Print a new Standard Webhooks signing secret for the forwarder.
    GenSecret,
    /// Check the installation: configuration, database (reachable, migrations, disk space),
    /// each bot's Zulip site and API key, the forwarder secret, the public URL and the clock.
    /// Prints a fix for every failure; exits 0 only when every check passes.
    Doctor {
        /// The URL Zulip calls (the bot's Endpoint URL, e.g.
        /// https://listeners.example.com/zulip/outgoing): checked to reach this server.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Post a signed sample batch (a message and a typing event) to a running server's
    /// /zulip/events with the configured forwarder secret: the forwarder path without Zulip.
    SendSample {
        /// Where to post (default: http://<server.bind>/zulip/events).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Forwarded events that were not processed: list them, or queue them again.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum ListenerAction {
    /// One listener: definition, state, statistics of the last 24 hours, history.
    Show {
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a listener at runtime (stored in the database, wins over the file, recorded in
    /// its history). Lists are comma-separated; an empty value clears the list.
    Set {
        name: String,
        #[arg(long)]
        description: Option<String>,
        /// Event types, narrowing the handler's own.
        #[arg(long, value_name = "TYPES")]
        events: Option<String>,
        /// Realm ids or subdomains.
        #[arg(long, value_name = "REALMS")]
        realms: Option<String>,
        /// Channel ids or names.
        #[arg(long, value_name = "CHANNELS")]
        streams: Option<String>,
        /// User ids or emails.
        #[arg(long, value_name = "USERS")]
        users: Option<String>,
        /// One setting, KEY=VALUE; VALUE is read as JSON when it is JSON, else as text;
        /// KEY=null goes back to the file's value (repeatable).
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Any change as a JSON object, as for PATCH /admin/listeners/{name}.
        #[arg(long, value_name = "OBJECT")]
        json: Option<String>,
    },
    /// Enable a listener (also after an automatic disable).
    Enable { name: String },
    /// Disable a listener until it is enabled again.
    Disable {
        name: String,
        /// Kept with the listener and shown by `listeners`.
        #[arg(long, default_value = "disabled from the command line")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StatsAction {
    /// Aggregate every completed interval (`retention.aggregation_interval`) now.
    Aggregate,
    /// Print the aggregated statistics per interval and listener (runs, failures, success
    /// rate, average and longest run), newest interval first.
    Show {
        /// Only this listener.
        #[arg(long, value_name = "NAME")]
        listener: Option<String>,
        /// How far back, in hours.
        #[arg(long, default_value_t = 24)]
        hours: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// List events with the given status (dead by default), newest first.
    List {
        /// dead (retries used up), expired (too old when received), rate_limited, filtered.
        #[arg(long, default_value = "dead")]
        status: InboxStatus,
        /// Most rows shown.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Queue events again with fresh retries; a running server processes them within a second.
    Replay {
        /// Only these event ids (repeatable).
        #[arg(long = "id", value_name = "EVENT_ID", required_unless_present = "all")]
        ids: Vec<String>,
        /// Every event with the status.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        #[arg(long, default_value = "dead")]
        status: InboxStatus,
    },
}

/// The inbox statuses an operator may list or replay, as command-line values: clap's
/// spelling of enum values (`rate-limited`), in the order `--help` lists them.
impl clap::ValueEnum for InboxStatus {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            InboxStatus::Dead,
            InboxStatus::Parked,
            InboxStatus::Expired,
            InboxStatus::RateLimited,
            InboxStatus::Filtered,
        ]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            InboxStatus::Dead => PossibleValue::new("dead"),
            InboxStatus::Parked => PossibleValue::new("parked").help(
                "Waiting for a paused or disabled handler (retried on their own when it is back)",
            ),
            InboxStatus::Expired => PossibleValue::new("expired"),
            InboxStatus::RateLimited => PossibleValue::new("rate-limited"),
            InboxStatus::Filtered => PossibleValue::new("filtered"),
            InboxStatus::Pending | InboxStatus::Done => return None,
        })
    }
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let sources = Sources {
        config_file: cli.config.clone(),
        botserverrc: cli.botserverrc.clone(),
    };
    if let Command::GenSecret = cli.command {
        println!("{}", SigningKey::generate());
        return ExitCode::SUCCESS;
    }
    if let Command::Doctor { url } = &cli.command {
        return crate::doctor::run(&sources, url.as_deref());
    }
    let config = match Config::load(&sources) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve { dry_run, listeners } => serve(
            config,
            ServeOptions {
                dry_run,
                listeners: listeners.map(|l| l.into_iter().map(|n| n.trim().to_string()).collect()),
            },
        ),
        Command::Migrate => migrate(&config),
        Command::CheckConfig => check_config(&config),
        Command::Listeners { json, action: None } => listeners(&config, json),
        Command::Listeners {
            action: Some(ListenerAction::Show { name, json }),
            ..
        } => show_listener(&config, &name, json),
        Command::Listeners {
            action: Some(action),
            ..
        } => set_listener(&config, action),
        Command::Cleanup { days } => cleanup(&config, days),
        Command::Stats {
            action: StatsAction::Aggregate,
        } => aggregate(&config),
        Command::Stats {
            action:
                StatsAction::Show {
                    listener,
                    hours,
                    json,
                },
        } => show_stats(&config, listener.as_deref(), hours, json),
        Command::GenSecret | Command::Doctor { .. } => Ok(()),
        Command::SendSample { url } => crate::sample::send(&config, url.as_deref()),
        Command::DeadLetters { action } => dead_letters(&config, action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    let log_file = crate::telemetry::init(&config.telemetry).context("telemetry.file")?;
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let server = start(config, options).await?;
        server.run_until_signalled(log_file).await
    })
}

/// One connection for a command-line tool (no pool, no background threads), with the
/// schema brought up to date.
fn connect(config: &Config) -> anyhow::Result<DbConnection> {
    let mut conn = establish(&config.database.url).context("connecting to the database")?;
    run_migrations(&mut conn)?;
    Ok(conn)
}

fn migrate(config: &Config) -> anyhow::Result<()> {
    let mut conn = establish(&config.database.url).context("connecting to the database")?;
    let applied = run_migrations(&mut conn)?;
    if applied.is_empty() {
        println!("The database is up to date.");
    } else {
        for name in applied {
            println!("applied {name}");
        }
    }
    Ok(())
}

fn check_config(config: &Config) -> anyhow::Result<()> {
    let registry = Registry::build(config)?;
    crate::verification::signing_keys(&config.forwarder.secrets)?;
    println!("Configuration is valid.");
    println!("  listen:    {}", config.server.bind);
    println!("  database:  {}", config.database.url);
    if config.bots.is_empty() {
        println!("  bots:      none (outgoing webhooks will be refused)");
    }
    for (name, bot) in &config.bots {
        let late = if bot.site.is_some() {
            "late replies via REST"
        } else {
            "no late replies"
        };
        println!(
            "  bot {name}: {} → {} ({late})",
            bot.email,
            bot.listener_names().join(", ")
        );
    }
    println!(
        "  forwarder: {} secret(s), listeners {}",
        config.forwarder.secrets.len(),
        config.forwarder.listener_names().join(", ")
    );
    for name in config.listeners.keys() {
        if let Some(entry) = registry.by_name(name) {
            let live = entry.live();
            println!(
                "  listener {name}: {} on {}{}",
                live.handler.name(),
                live.describe_events(),
                if live.definition.scope.is_unrestricted() {
                    String::new()
                } else {
                    " (scoped)".to_string()
                }
            );
        }
    }
    Ok(())
}

fn listeners(config: &Config, json: bool) -> anyhow::Result<()> {
    let registry = Registry::build(config)?;
    let mut conn = connect(config)?;
    let counts = tables::event_log::listener_counts(&mut conn)?;
    let persisted = crate::db::tables::listeners::rows(&mut conn)?;
    let mut rows = Vec::new();
    for entry in registry.entries() {
        let name = entry.name();
        let row = persisted.iter().find(|r| r.name == name);
        if let Some(row) = row {
            registry.apply_row(row);
        }
        let count = counts.iter().find(|c| c.listener == name);
        let mut view = registry.view(entry, row);
        let scope: Vec<String> = ["realms", "streams", "users"]
            .iter()
            .filter_map(|k| {
                let list = view[*k].as_array()?;
                (!list.is_empty()).then(|| {
                    let items: Vec<String> = list
                        .iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                        .collect();
                    format!("{k}: {}", items.join(" "))
                })
            })
            .collect();
        view["scope"] = scope.join("; ").into();
        view["runs"] = count.map_or(0, |c| c.runs).into();
        view["failures"] = count.map_or(0, |c| c.failures).into();
        for key in ["breaker", "breaker_open_for_ms", "failures_last_hour"] {
            if let Some(object) = view.as_object_mut() {
                object.remove(key);
            }
        }
        rows.push(view);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Bool(b) => (if *b { "yes" } else { "no" }).to_string(),
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::Array(a) if a.is_empty() => "-".to_string(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|u| u.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    };
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            LISTENER_COLUMNS
                .iter()
                .map(|(key, _, _)| text(&row[*key]))
                .collect()
        })
        .collect();
    print!("{}", align_table(&LISTENER_COLUMNS, &table));
    Ok(())
}

/// The `listeners` table: JSON key, heading, right-aligned.
const LISTENER_COLUMNS: [(&str, &str, bool); 9] = [
    ("name", "listener", false),
    ("handler", "handler", false),
    ("events", "events", false),
    ("scope", "scope", false),
    ("enabled", "enabled", false),
    ("runs", "runs", true),
    ("failures", "failures", true),
    ("disabled_reason", "disabled why", false),
    ("used_by", "used by", false),
];

/// Lays out a table with every column as wide as its widest cell (in characters), two spaces
/// between columns. Control characters in cells are replaced so that nothing can break a line.
fn align_table(columns: &[(&str, &str, bool)], rows: &[Vec<String>]) -> String {
    let clean = |cell: &str| -> String {
        cell.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let heading: Vec<String> = columns.iter().map(|(_, h, _)| (*h).to_string()).collect();
    let cells: Vec<Vec<String>> = std::iter::once(heading)
        .chain(rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()))
        .collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            cells
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, (_, _, right)) in columns.iter().enumerate() {
            let cell = row.get(i).map_or("", String::as_str);
            let pad = " ".repeat(widths[i].saturating_sub(cell.chars().count()));
            if i > 0 {
                line.push_str("  ");
            }
            if *right {
                line.push_str(&pad);
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&pad);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn dead_letters(config: &Config, action: DeadLetterAction) -> anyhow::Result<()> {
    let mut conn = connect(config)?;
    match action {
        DeadLetterAction::List { status, limit } => {
            let rows = tables::inbox::inbox_entries(&mut conn, &[status], limit)?;
            if rows.is_empty() {
                println!("No {} events.", status.as_str());
                return Ok(());
            }
            println!(
                "{:<38} {:>6} {:<12} {:<22} {:>8}  last error",
                "event_id", "realm", "user", "type/op", "attempts"
            );
            for row in rows {
                let kind = match &row.op {
                    Some(op) => format!("{}/{op}", row.event_type),
                    None => row.event_type.clone(),
                };
                println!(
                    "{:<38} {:>6} {:<12} {:<22} {:>8}  {}",
                    row.event_id,
                    row.realm_id,
                    row.user_id.map_or("-".into(), |u| u.to_string()),
                    kind,
                    row.attempts,
                    row.last_error.as_deref().unwrap_or("-"),
                );
            }
        }
        DeadLetterAction::Replay { ids, all, status } => {
            let count = tables::inbox_work::requeue(
                &mut conn,
                &[status],
                if all { None } else { Some(&ids) },
            )?;
            let requested = if all {
                "all".to_string()
            } else {
                format!("{} id(s)", ids.len())
            };
            crate::db::tables::listeners::record(
                &mut conn,
                &[crate::listeners::changes::replay_record(
                    crate::listeners::changes::source::CLI,
                    status.as_str(),
                    &requested,
                    count,
                )],
            )?;
            println!("{count} {status} event(s) queued again.");
            if !all && count < ids.len() {
                println!(
                    "{} id(s) were not {status} events and were left alone.",
                    ids.len() - count
                );
            }
        }
    }
    Ok(())
}

fn set_listener(config: &Config, action: ListenerAction) -> anyhow::Result<()> {
    let mut reason = None;
    let (name, change) = match action {
        ListenerAction::Show { .. } => return Ok(()),
        ListenerAction::Enable { name } => (name, serde_json::json!({ "enabled": true })),
        ListenerAction::Disable { name, reason: why } => {
            reason = Some(why);
            (name, serde_json::json!({ "enabled": false }))
        }
        ListenerAction::Set {
            name,
            description,
            events,
            realms,
            streams,
            users,
            settings,
            json,
        } => {
            let mut change = match json {
                Some(text) => serde_json::from_str(&text)
                    .context("--json must be a JSON object of the fields to change")?,
                None => serde_json::json!({}),
            };
            let Some(object) = change.as_object_mut() else {
                anyhow::bail!("--json must be a JSON object of the fields to change");
            };
            if let Some(text) = description {
                object.insert("description".into(), text.into());
            }
            for (field, list) in [
                ("events", events),
                ("realms", realms),
                ("streams", streams),
                ("users", users),
            ] {
                if let Some(list) = list {
                    object.insert(field.into(), comma_list(&list, field != "events"));
                }
            }
            if !settings.is_empty() {
                let mut map = serde_json::Map::new();
                for pair in settings {
                    let Some((key, value)) = pair.split_once('=') else {
                        anyhow::bail!("--setting `{pair}` is not KEY=VALUE");
                    };
                    let value = serde_json::from_str(value)
                        .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
                    map.insert(key.trim().to_string(), value);
                }
                object.insert("settings".into(), serde_json::Value::Object(map));
            }
            (name, change)
        }
    };
    let registry = Registry::build(config)?;
    let patch = crate::listeners::changes::Overrides::parse(&change)
        .map_err(|e| anyhow::anyhow!("listener `{name}`: {e}"))?;
    let mut conn = connect(config)?;
    crate::db::tables::listeners::sync(&mut conn, &registry.listener_rows())?;
    let (_, history) = crate::listeners::changes::change(
        &mut conn,
        &registry,
        &name,
        &patch,
        crate::listeners::changes::source::CLI,
        reason.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("listener `{name}`: {e}"))?;
    if let Some(enabled) = patch.enabled
        && patch
            == (crate::listeners::changes::Overrides {
                enabled: Some(enabled),
                ..Default::default()
            })
    {
        println!(
            "{name} {}; a running server follows within {} seconds.",
            if enabled { "enabled" } else { "disabled" },
            crate::server::LISTENER_SYNC_SECONDS
        );
        return Ok(());
    }
    if history.is_empty() {
        println!("{name}: nothing changed.");
    }
    for change in &history {
        println!(
            "{name}: {} {} -> {}",
            change.field,
            change.old_value.as_deref().unwrap_or("-"),
            change.new_value.as_deref().unwrap_or("-"),
        );
    }
    println!(
        "A running server follows within {} seconds.",
        crate::server::LISTENER_SYNC_SECONDS
    );
    Ok(())
}

/// A comma-separated list as JSON; with `numbers`, items that are integers become numbers
/// (ids), the others stay text (names, emails).
fn comma_list(text: &str, numbers: bool) -> serde_json::Value {
    serde_json::Value::Array(
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| match item.parse::<i64>() {
                Ok(n) if numbers => n.into(),
                _ => item.into(),
            })
            .collect(),
    )
}

fn show_listener(config: &Config, name: &str, json: bool) -> anyhow::Result<()> {
    let registry = Registry::build(config)?;
    let Some(entry) = registry.by_name(name) else {
        anyhow::bail!(
            "no listener named `{name}`; defined are: {}",
            registry
                .entries()
                .iter()
                .map(|e| e.name())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    let mut conn = connect(config)?;
    let row = crate::db::tables::listeners::row(&mut conn, name)?;
    if let Some(row) = &row {
        registry.apply_row(row);
    }
    let since = crate::clock::now_ms() - 86_400_000;
    let stats = crate::db::tables::event_log::run_stats(&mut conn, name, since)?;
    let history = crate::db::tables::listeners::history(&mut conn, name, 20)?;
    let mut view = registry.view(entry, row.as_ref());
    // The breaker lives in the serving process; this process has not run anything.
    if let Some(object) = view.as_object_mut() {
        for key in ["breaker", "breaker_open_for_ms", "failures_last_hour"] {
            object.remove(key);
        }
    }
    view["stats"] = serde_json::json!(stats);
    view["history"] = serde_json::json!(history);
    if json {
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) if s.is_empty() => "-".to_string(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        serde_json::Value::Array(a) if a.is_empty() => "-".to_string(),
        other => other.to_string(),
    };
    for key in [
        "name",
        "handler",
        "description",
        "state",
        "disabled_reason",
        "events",
        "realms",
        "streams",
        "users",
        "settings",
        "overridden",
        "used_by",
    ] {
        println!("{key:<16} {}", text(&view[key]));
    }
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
    println!(
        "{:<16} {} runs, {} failures, success {}, avg {}, p95 {}",
        "last 24 h",
        stats.runs,
        stats.failures,
        stats
            .success_rate
            .map_or("-".to_string(), |r| format!("{:.1} %", r * 100.0)),
        ms(stats.avg_duration_ms),
        ms(stats.p95_duration_ms),
    );
    if let Some(error) = &stats.last_error {
        println!("{:<16} {error}", "last error");
    }
    if !history.is_empty() {
        println!("history (newest first):");
        for h in &history {
            println!(
                "  {}  {:<10} {:<12} {} -> {}",
                format_ms(h.changed_at_ms),
                h.source,
                h.field,
                h.old_value.as_deref().unwrap_or("-"),
                h.new_value.as_deref().unwrap_or("-"),
            );
        }
    }
    Ok(())
}

/// Unix milliseconds as an RFC 3339 UTC time.
fn format_ms(ms: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    httpdate::fmt_http_date(time)
}

/// Shows progress: redrawn in place on a terminal, one line per step otherwise.
struct Progress {
    terminal: bool,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        Progress {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn update(&mut self, table: &str, done: usize) {
        if self.terminal {
            eprint!("\r\x1b[2K{table}: {done} rows deleted");
        } else {
            eprintln!("{table}: {done} rows deleted");
        }
    }

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

fn aggregate(config: &Config) -> anyhow::Result<()> {
    let mut conn = connect(config)?;
    let interval = crate::clock::millis(config.retention.aggregation_interval);
    let rows =
        tables::listener_stats::aggregate_stats(&mut conn, interval, crate::clock::now_ms())?;
    println!("{rows} statistics row(s) written.");
    Ok(())
}

fn show_stats(
    config: &Config,
    listener: Option<&str>,
    hours: u32,
    json: bool,
) -> anyhow::Result<()> {
    let mut conn = connect(config)?;
    let since = crate::clock::now_ms() - i64::from(hours) * 3_600_000;
    let mut rows = tables::listener_stats::stats_since(&mut conn, since)?;
    rows.retain(|r| listener.is_none_or(|l| r.listener == l));
    rows.reverse();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!(
            "No statistics in the last {hours} h (they are aggregated every \
             retention.aggregation_interval; `stats aggregate` does it now)."
        );
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let rate = if r.runs > 0 {
                format!(
                    "{:.1} %",
                    (r.runs - r.failures) as f64 * 100.0 / r.runs as f64
                )
            } else {
                "-".into()
            };
            let avg = if r.runs > 0 {
                format!("{:.1}", r.total_duration_us as f64 / r.runs as f64 / 1000.0)
            } else {
                "-".into()
            };
            vec![
                format_ms(r.interval_start_ms),
                r.listener.clone(),
                r.runs.to_string(),
                r.failures.to_string(),
                rate,
                avg,
                format!("{:.1}", r.max_duration_us as f64 / 1000.0),
            ]
        })
        .collect();
    print!("{}", align_table(&STATS_COLUMNS, &table));
    Ok(())
}

/// The `stats show` table: heading and right-aligned (the key is unused).
const STATS_COLUMNS: [(&str, &str, bool); 7] = [
    ("", "interval start", false),
    ("", "listener", false),
    ("", "runs", true),
    ("", "failures", true),
    ("", "success", true),
    ("", "avg ms", true),
    ("", "max ms", true),
];

fn cleanup(config: &Config, days: u32) -> anyhow::Result<()> {
    let mut conn = connect(config)?;
    let interval = crate::clock::millis(config.retention.aggregation_interval);
    // Summarise first, so that statistics survive the rows they are made from.
    tables::listener_stats::aggregate_stats(&mut conn, interval, crate::clock::now_ms())?;
    let before = crate::clock::now_ms() - i64::from(days) * 86_400_000;
    let mut progress = Progress::new();
    let report = retention::cleanup(
        &mut conn,
        before,
        config.retention.batch_size,
        &mut |table, n| progress.update(table, n),
    )?;
    progress.finish();
    let mut progress = Progress::new();
    let personal = retention::expire_personal_data(
        &mut conn,
        &retention::PersonalCutoffs::from_config(&config.retention, crate::clock::now_ms()),
        config.retention.batch_size,
        &mut |table, n| progress.update(table, n),
    )?;
    progress.finish();
    let r = &config.retention;
    println!(
        "Personal data (retention settings): {} message(s) erased (older than {} days), {} user_activity row(s) deleted (not seen for {} days), {} keyword_alerts row(s) deleted (older than {} days); 0 days keeps everything.",
        personal.messages_erased,
        r.message_retention_days,
        personal.user_activity,
        r.activity_retention_days,
        personal.keyword_alerts,
        r.alert_retention_days,
    );
    println!(
        "Deleted {} rows older than {days} days: event_log {}, inbox {}, forwarder_batches {}, outgoing_replies {}, listener_stats {}.",
        report.total(),
        report.event_log,
        report.inbox,
        report.forwarder_batches,
        report.outgoing_replies,
        report.listener_stats
    );
    Ok(())
}
