//! The command line (clap): `serve`, `migrate`, `check-config`, `listeners`, `cleanup`,
//! `stats`, `gen-secret`, `doctor`, `send-sample`, `dead-letters` and `verify`. This file holds the
//! arguments and the dispatch; each command group runs in its own file.

mod dead_letters;
mod doctor;
mod listeners;
pub mod sample;
mod serve;
mod stats;
mod table;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Sources};
use crate::db::{DbConnection, establish, run_migrations};
use crate::output::{self, outln};
use crate::server::ServeOptions;
use crate::verification::SigningKey;

pub use dead_letters::DeadLetterAction;
pub use listeners::ListenerAction;
pub use stats::StatsAction;
pub use verify::VerifyArgs;

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
        /// Run listeners but store nothing except the event log, post no reply and call
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
    /// events), show one with its runtime changes, statistics and history, or change one or
    /// drop its runtime changes; a running server follows within seconds.
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
    /// Summarise the event log per listener and interval into listener_stats.
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
    /// Forwarded events that were not processed: list or show them, queue them again, or
    /// discard them with a reason.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Check the installation end to end against your Zulip: mention the bot as a person
    /// (in --channel, or in a direct message), then wait for the webhook in this server's
    /// event log, the bot's reply in Zulip and, with the forwarder, the forwarded message in
    /// the inbox (both through the admin API); prints each step with its latency and a fix
    /// for every failure, deletes its test messages where allowed; exits 0 only when all
    /// passed.
    Verify(VerifyArgs),
}

/// Runs the parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let sources = Sources {
        config_file: cli.config.clone(),
        botserverrc: cli.botserverrc.clone(),
    };
    let code = run_command(cli, &sources);
    // A closed reader ends the output quietly; another write failure is an error.
    match output::failure() {
        Some(error) => {
            eprintln!("error: could not write to standard output: {error}");
            ExitCode::FAILURE
        }
        None => code,
    }
}

fn run_command(cli: Cli, sources: &Sources) -> ExitCode {
    if let Command::GenSecret = cli.command {
        outln!("{}", SigningKey::generate());
        return ExitCode::SUCCESS;
    }
    if let Command::Doctor { url } = &cli.command {
        return doctor::run(sources, url.as_deref());
    }
    // A configuration that cannot be used, signing keys included, is exit code 2 for every
    // command, before anything else is done.
    let loaded = Config::load(sources).and_then(|config| {
        crate::verification::signing_keys(&config.forwarder.secrets)?;
        Ok(config)
    });
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let command = match cli.command {
        Command::Verify(args) => return verify::run(&config, &args),
        command => command,
    };
    let result = match command {
        Command::Serve { dry_run, listeners } => serve::serve(
            config,
            ServeOptions {
                dry_run,
                listeners: listeners.map(|l| l.into_iter().map(|n| n.trim().to_string()).collect()),
            },
        ),
        Command::Migrate => serve::migrate(&config),
        Command::CheckConfig => serve::check_config(&config),
        Command::Listeners { json, action: None } => listeners::listeners(&config, json),
        Command::Listeners {
            action: Some(ListenerAction::Show { name, json }),
            ..
        } => listeners::show_listener(&config, &name, json),
        Command::Listeners {
            action: Some(action),
            ..
        } => listeners::set_listener(&config, action),
        Command::Cleanup { days } => stats::cleanup(&config, days),
        Command::Stats {
            action: StatsAction::Aggregate,
        } => stats::aggregate(&config),
        Command::Stats {
            action:
                StatsAction::Show {
                    listener,
                    hours,
                    json,
                },
        } => stats::show_stats(&config, listener.as_deref(), hours, json),
        Command::GenSecret | Command::Doctor { .. } | Command::Verify(_) => Ok(()),
        Command::SendSample { url } => sample::send(&config, url.as_deref()),
        Command::DeadLetters { action } => dead_letters::dead_letters(&config, action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// One connection for a command-line tool (no pool, no background threads), with the
/// schema brought up to date.
fn connect(config: &Config) -> anyhow::Result<DbConnection> {
    let mut conn = establish(&config.database.url)?;
    run_migrations(&mut conn)?;
    Ok(conn)
}
