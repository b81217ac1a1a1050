//! `dead-letters list|replay`: forwarded events that were not processed, by status, and
//! queueing them again with fresh retries (recorded in the replay history).

use clap::Subcommand;

use super::connect;
use crate::config::Config;
use crate::db::store;

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
    /// Waiting for a paused or disabled listener (retried on their own when it is back).
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

pub(super) fn dead_letters(config: &Config, action: DeadLetterAction) -> anyhow::Result<()> {
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
            let requested = if all {
                "all".to_string()
            } else {
                format!("{} id(s)", ids.len())
            };
            crate::db::listeners::record(
                &mut conn,
                &[crate::listeners::changes::replay_record(
                    crate::listeners::changes::source::CLI,
                    status,
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
