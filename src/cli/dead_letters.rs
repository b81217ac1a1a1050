//! `dead-letters list|replay`: forwarded events that were not processed, by status, and
//! queueing them again with fresh retries (recorded in the replay history).

use clap::Subcommand;

use super::connect;
use crate::config::Config;
use crate::db::tables;
use crate::db::tables::inbox::InboxStatus;

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
                "Waiting for a paused or disabled listener (retried on their own when it is back)",
            ),
            InboxStatus::Expired => PossibleValue::new("expired"),
            InboxStatus::RateLimited => PossibleValue::new("rate-limited"),
            InboxStatus::Filtered => PossibleValue::new("filtered"),
            InboxStatus::Pending | InboxStatus::Done => return None,
        })
    }
}

pub(super) fn dead_letters(config: &Config, action: DeadLetterAction) -> anyhow::Result<()> {
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
