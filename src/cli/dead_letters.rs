//! `dead-letters list|show|replay|discard`: forwarded events that were not processed, by
//! status; one of them with its envelope (redacted); queueing them again with fresh retries;
//! setting them aside for good with a reason. The actions are those of
//! [`crate::processing::dead_letters`], recorded in the audit trail with source `CLI`.

use clap::Subcommand;

use super::connect;
use crate::clock::utc_text;
use crate::config::Config;
use crate::db::tables::inbox::InboxStatus;
use crate::listeners::changes::source;
use crate::output::outln;
use crate::processing::dead_letters::{self, DeadLetter, Target};

#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// List events with the given status (dead by default), newest first.
    List {
        /// dead (retries used up), parked, rate-limited, expired (too old when received),
        /// filtered, discarded.
        #[arg(long, default_value = "dead")]
        status: InboxStatus,
        /// Only events with work of this listener left.
        #[arg(long, value_name = "NAME")]
        listener: Option<String>,
        /// Most rows shown.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Show one event: status, listeners with their attempts and errors, times, and its
    /// envelope with secrets masked as in the logs.
    Show {
        #[arg(value_name = "EVENT_ID")]
        id: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Queue events again with fresh retries; a running server processes them within a second.
    Replay {
        /// Only these event ids (repeatable); each must be a dead letter, of any status.
        #[arg(long = "id", value_name = "EVENT_ID", required_unless_present = "all")]
        ids: Vec<String>,
        /// Every event with the status.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: the status replayed.
        #[arg(long, default_value = "dead")]
        status: InboxStatus,
        /// With --all: only events with work of this listener left.
        #[arg(long, value_name = "NAME", requires = "all")]
        listener: Option<String>,
    },
    /// Set events aside for good: never processed again, envelope erased, kept as
    /// `discarded` (a re-sent copy is a duplicate) until retention deletes them.
    Discard {
        /// These event ids; each must be a dead letter, of any status.
        #[arg(value_name = "EVENT_ID", required_unless_present = "all")]
        ids: Vec<String>,
        /// Every event with the status.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
        /// With --all: the status discarded.
        #[arg(long, default_value = "dead")]
        status: InboxStatus,
        /// With --all: only events with work of this listener left.
        #[arg(long, value_name = "NAME", requires = "all")]
        listener: Option<String>,
        /// Why (required; kept in the audit trail).
        #[arg(long)]
        reason: String,
    },
}

/// The inbox statuses an operator may list, replay or discard, as command-line values:
/// clap's spelling of enum values (`rate-limited`), in the order `--help` lists them.
impl clap::ValueEnum for InboxStatus {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            InboxStatus::Dead,
            InboxStatus::Parked,
            InboxStatus::Expired,
            InboxStatus::RateLimited,
            InboxStatus::Filtered,
            InboxStatus::Discarded,
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
            InboxStatus::Discarded => PossibleValue::new("discarded")
                .help("Set aside for good by an operator or by expiry (list and show only)"),
            InboxStatus::Pending | InboxStatus::Done => return None,
        })
    }
}

fn target(ids: Vec<String>, all: bool, status: InboxStatus, listener: Option<String>) -> Target {
    if all {
        Target::All { status, listener }
    } else {
        Target::Ids(ids)
    }
}

pub(super) fn dead_letters(config: &Config, action: DeadLetterAction) -> anyhow::Result<()> {
    crate::telemetry::configure_scrubbing(&config.data_protection);
    let mut conn = connect(config)?;
    match action {
        DeadLetterAction::List {
            status,
            listener,
            limit,
        } => {
            let rows = dead_letters::list(&mut conn, status, listener.as_deref(), limit)?;
            if rows.is_empty() {
                outln!("No {} events.", status.as_str());
                return Ok(());
            }
            outln!(
                "{:<38} {:>6} {:<12} {:<22} {:>8}  last error",
                "event_id",
                "realm",
                "user",
                "type/op",
                "attempts"
            );
            for row in rows {
                let kind = match &row.op {
                    Some(op) => format!("{}/{op}", row.event_type),
                    None => row.event_type.clone(),
                };
                outln!(
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
        DeadLetterAction::Show { id, json } => {
            let shown = dead_letters::show(&mut conn, &id)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&shown)?);
            } else {
                print_dead_letter(&shown)?;
            }
        }
        DeadLetterAction::Replay {
            ids,
            all,
            status,
            listener,
        } => {
            let target = target(ids, all, status, listener);
            let count = dead_letters::replay(&mut conn, &target, source::CLI, None)?;
            match target {
                Target::All { status, .. } => outln!("{count} {status} event(s) queued again."),
                Target::Ids(_) => outln!("{count} event(s) queued again."),
            }
        }
        DeadLetterAction::Discard {
            ids,
            all,
            status,
            listener,
            reason,
        } => {
            let target = target(ids, all, status, listener);
            let count = dead_letters::discard(&mut conn, &target, &reason, source::CLI, None)?;
            outln!("{count} event(s) discarded.");
        }
    }
    Ok(())
}

fn print_dead_letter(d: &DeadLetter) -> anyhow::Result<()> {
    let e = &d.entry;
    let optional = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    outln!("event_id     {}", e.event_id);
    outln!("status       {}", e.status);
    outln!(
        "type         {}{}",
        e.event_type,
        e.op.as_deref()
            .map(|op| format!(" / {op}"))
            .unwrap_or_default()
    );
    outln!("realm        {} (id {})", e.realm, e.realm_id);
    outln!("user_id      {}", optional(e.user_id));
    outln!("attempts     {}", e.attempts);
    outln!("last error   {}", e.last_error.as_deref().unwrap_or("-"));
    outln!("batch        {}", d.webhook_id);
    outln!(
        "emitted      {}",
        d.emitted_at_ms.map_or("-".to_string(), utc_text)
    );
    outln!("received     {}", utc_text(e.received_at_ms));
    outln!("changed      {}", utc_text(e.updated_at_ms));
    if d.listeners.is_empty() {
        outln!("listeners    -");
    } else {
        outln!("listeners");
        for w in &d.listeners {
            outln!(
                "  {:<24} {:<12} {:>3} attempt(s)  {}",
                w.listener,
                w.status.as_str(),
                w.attempts,
                w.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    match &d.payload {
        Some(payload) => outln!(
            "payload (redacted)\n{}",
            serde_json::to_string_pretty(payload)?
        ),
        None => outln!("payload      (erased)"),
    }
    Ok(())
}
