//! `serve`, `migrate` and `check-config`: running the server, bringing the schema up to date,
//! and validating the configuration with a summary of what it sets up (and of the runtime
//! changes the database holds over it).

use anyhow::Context as _;

use crate::config::Config;
use crate::db::{establish, run_migrations};
use crate::listeners::Registry;
use crate::output::outln;
use crate::server::{ServeOptions, start};

pub(super) fn serve(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    let log_file = crate::telemetry::init(&config.telemetry).context("telemetry.file")?;
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let server = start(config, options).await?;
        server.run_until_signalled(log_file).await
    })
}

pub(super) fn migrate(config: &Config) -> anyhow::Result<()> {
    let mut conn = establish(&config.database.url)?;
    let applied = run_migrations(&mut conn)?;
    if applied.is_empty() {
        outln!("The database is up to date.");
    } else {
        for name in applied {
            outln!("applied {name}");
        }
    }
    Ok(())
}

pub(super) fn check_config(config: &Config) -> anyhow::Result<()> {
    let registry = Registry::build(config)?;
    outln!("Configuration is valid.");
    outln!("  listen:    {}", config.server.bind);
    outln!("  database:  {}", config.database.url);
    if config.bots.is_empty() {
        outln!("  bots:      none (outgoing webhooks will be refused)");
    }
    for (name, bot) in &config.bots {
        let late = if bot.site.is_some() {
            "late replies via REST"
        } else {
            "no late replies"
        };
        outln!(
            "  bot {name}: {} → {} ({late})",
            bot.email,
            bot.listener_names().join(", ")
        );
    }
    outln!(
        "  forwarder: {} secret(s), listeners {}",
        config.forwarder.secrets.len(),
        config.forwarder.listener_names().join(", ")
    );
    for name in config.listeners.keys() {
        if let Some(entry) = registry.by_name(name) {
            let live = entry.live();
            outln!(
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
    super::listeners::print_stored_changes(config, &registry);
    Ok(())
}
