//! The command line: `serve`, `migrate`, `check-config`, `listeners`, `gen-secret`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use diesel::RunQueryDsl;

use crate::config::{Config, Sources};
use crate::db::{DbConnection, establish, retention, run_migrations, store};
use crate::handlers::Registry;
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
    /// List every compiled-in handler (event types, users, state, runs and failures), or
    /// enable / disable one; a running server follows within seconds.
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
    /// Enable a handler (also after an automatic disable).
    Enable { name: String },
    /// Disable a handler until it is enabled again.
    Disable {
        name: String,
        #[arg(long, default_value = "disabled from the command line")]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum StatsAction {
    /// Aggregate every completed interval (`retention.aggregation_interval`) now.
    Aggregate,
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

/// Inbox statuses an operator may list or replay.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum InboxStatus {
    Dead,
    /// Waiting for a paused or disabled handler (retried on their own when it is back).
    Parked,
    Expired,
    RateLimited,
    Filtered,
}

impl InboxStatus {
    fn as_str(self) -> &'static str {
        match self {
            InboxStatus::Dead => "dead",
            InboxStatus::Parked => "parked",
            InboxStatus::Expired => "expired",
            InboxStatus::RateLimited => "rate_limited",
            InboxStatus::Filtered => "filtered",
        }
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
            action: Some(action),
            ..
        } => set_listener(&config, action),
        Command::Cleanup { days } => cleanup(&config, days),
        Command::Stats {
            action: StatsAction::Aggregate,
        } => aggregate(&config),
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
    let target = config.database_target()?;
    let mut conn = establish(&target).context("connecting to the database")?;
    run_migrations(&mut conn)?;
    Ok(conn)
}

fn migrate(config: &Config) -> anyhow::Result<()> {
    let target = config.database_target()?;
    let mut conn = establish(&target).context("connecting to the database")?;
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
    Registry::build(config)?;
    println!("Configuration is valid.");
    println!("  listen:    {}", config.server.bind);
    println!("  database:  {}", config.database_target()?);
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
            bot.handler_names().join(", ")
        );
    }
    println!(
        "  forwarder: {} secret(s), handlers {}",
        config.forwarder.secrets.len(),
        config.forwarder.handlers.join(", ")
    );
    Ok(())
}

fn listeners(config: &Config, json: bool) -> anyhow::Result<()> {
    let registry = Registry::build(config)?;
    let mut conn = connect(config)?;
    let counts = store::handler_counts(&mut conn)?;
    let persisted = crate::db::schema::listeners::table
        .load::<crate::db::models::ListenerRow>(&mut conn)
        .map_err(crate::db::DbError::from)?;
    let mut rows = Vec::new();
    for entry in registry.entries() {
        let name = entry.handler.name();
        let mut users: Vec<String> = config
            .bots
            .iter()
            .filter(|(_, b)| b.handler_names().iter().any(|h| h == name))
            .map(|(n, _)| format!("bot:{n}"))
            .collect();
        if config.forwarder.handlers.iter().any(|h| h == name) {
            users.push("forwarder".into());
        }
        let count = counts.iter().find(|c| c.handler == name);
        let row = persisted.iter().find(|r| r.name == name);
        rows.push(serde_json::json!({
            "handler": name,
            "events": entry.handler.interest().describe(),
            "enabled": entry.enabled() && row.is_none_or(|r| r.enabled),
            "runs": count.map_or(0, |c| c.runs),
            "failures": count.map_or(0, |c| c.failures),
            "disabled_reason": row.and_then(|r| r.disabled_reason.clone()),
            "used_by": users,
        }));
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
const LISTENER_COLUMNS: [(&str, &str, bool); 7] = [
    ("handler", "handler", false),
    ("events", "events", false),
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
            let rows = store::inbox_entries(&mut conn, &[status.as_str()], limit)?;
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
            let status = status.as_str();
            let count = store::requeue(&mut conn, &[status], if all { None } else { Some(&ids) })?;
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
    let (name, enabled, reason) = match &action {
        ListenerAction::Enable { name } => (name, true, None),
        ListenerAction::Disable { name, reason } => (name, false, Some(reason.as_str())),
    };
    if !crate::handlers::is_known(name) {
        anyhow::bail!(
            "no handler named `{name}`; compiled-in handlers are: {}",
            crate::handlers::KNOWN.join(", ")
        );
    }
    let mut conn = connect(config)?;
    let registry = Registry::build(config)?;
    let rows = registry.listener_rows();
    store::sync_listeners(&mut conn, &rows)?;
    store::set_listener_enabled(&mut conn, name, enabled, reason)?;
    println!(
        "{name} {}; a running server follows within {} seconds.",
        if enabled { "enabled" } else { "disabled" },
        10
    );
    Ok(())
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
    let interval =
        i64::try_from(config.retention.aggregation_interval.as_millis()).unwrap_or(i64::MAX);
    let rows = retention::aggregate_stats(&mut conn, interval, crate::db::now_ms())?;
    println!("{rows} statistics row(s) written.");
    Ok(())
}

fn cleanup(config: &Config, days: u32) -> anyhow::Result<()> {
    let mut conn = connect(config)?;
    let interval =
        i64::try_from(config.retention.aggregation_interval.as_millis()).unwrap_or(i64::MAX);
    // Summarise first, so that statistics survive the rows they are made from.
    retention::aggregate_stats(&mut conn, interval, crate::db::now_ms())?;
    let before = crate::db::now_ms() - i64::from(days) * 86_400_000;
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
        &config.retention.personal_cutoffs(crate::db::now_ms()),
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
