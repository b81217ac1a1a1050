//! `stats aggregate|show` and `cleanup`: statistics per interval and listener, and deleting
//! old rows (statistics are aggregated first, so that they outlive the rows they are made from)
//! with progress shown on the terminal.

use clap::Subcommand;

use super::connect;
use super::table::{align_table, format_ms};
use crate::config::Config;
use crate::db::{retention, tables};
use crate::output::{out, outln};

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

pub(super) fn aggregate(config: &Config) -> anyhow::Result<()> {
    let mut conn = connect(config)?;
    let interval = crate::clock::millis(config.retention.aggregation_interval);
    let rows =
        tables::listener_stats::aggregate_stats(&mut conn, interval, crate::clock::now_ms())?;
    outln!("{rows} statistics row(s) written.");
    Ok(())
}

pub(super) fn show_stats(
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
        outln!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        outln!(
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
    out!("{}", align_table(&STATS_COLUMNS, &table));
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

pub(super) fn cleanup(config: &Config, days: u32) -> anyhow::Result<()> {
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
    outln!(
        "Personal data (retention settings): {} message(s) erased (older than {} days), {} user_activity row(s) deleted (not seen for {} days), {} keyword_alerts row(s) deleted (older than {} days); 0 days keeps everything.",
        personal.messages_erased,
        r.message_retention_days,
        personal.user_activity,
        r.activity_retention_days,
        personal.keyword_alerts,
        r.alert_retention_days,
    );
    outln!(
        "Deleted {} rows older than {days} days: event_log {}, inbox {}, forwarder_batches {}, outgoing_replies {}, listener_stats {}.",
        report.total(),
        report.event_log,
        report.inbox,
        report.forwarder_batches,
        report.outgoing_replies,
        report.listener_stats
    );
    outln!(
        "Erased the content of {} inbox envelope(s) received more than {days} days ago (pending, parked or dead events: kept, replayable without their content).",
        report.inbox_erased
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
