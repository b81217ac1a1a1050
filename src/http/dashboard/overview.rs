//! The overview page (`/admin/`): health, events per minute over the last hour and the last
//! 24 hours, the inbox by status, queue lag, and late replies.

use actix_web::{HttpResponse, web};

use super::pages::{self, Overview};
use super::{Ctx, DAY_MS, DEFAULT_INTERVAL_MS, HOUR_MS, db_failed};
use crate::clock::now_ms;
use crate::db::tables;
use crate::http::AppState;

pub(super) async fn overview(ctx: Ctx, state: web::Data<AppState>) -> HttpResponse {
    let now = now_ms();
    let read = state
        .db
        .run(move |c| {
            let hour_start = (now - HOUR_MS) / 60_000 * 60_000;
            let minutes = tables::event_log::runs_by_bucket(c, hour_start, 60_000)?;
            let (interval_ms, runs) =
                tables::listener_stats::recent_runs(c, now - DAY_MS, None, DEFAULT_INTERVAL_MS)?;
            Ok((
                minutes,
                per_interval(&runs),
                interval_ms,
                tables::inbox::inbox_counts(c)?,
                tables::inbox::oldest_pending_ms(c)?,
            ))
        })
        .await;
    let (minutes, intervals, interval_ms, inbox, oldest_pending_ms) = match read {
        Ok(read) => read,
        Err(e) => return db_failed(&ctx, e),
    };
    let health = crate::http::health::health_report(&state).await;
    let data = Overview {
        now_ms: now,
        minutes,
        intervals,
        interval_ms,
        inbox,
        oldest_pending_ms,
        health,
        late_replies: late_replies(),
    };
    pages::overview(&ctx, &data)
}

/// Every listener's runs summed per interval: `(interval start, runs, failures)`, oldest first.
fn per_interval(runs: &[tables::listener_stats::IntervalRuns]) -> Vec<(i64, i64, i64)> {
    let mut sums = std::collections::BTreeMap::<i64, (i64, i64)>::new();
    for row in runs {
        let sum = sums.entry(row.start_ms).or_default();
        sum.0 += row.runs;
        sum.1 += row.failures;
    }
    sums.into_iter()
        .map(|(start, (runs, failures))| (start, runs, failures))
        .collect()
}

/// Late replies counted since start, from the process's metrics.
fn late_replies() -> Vec<(String, u64)> {
    let Some(handle) = crate::telemetry::prometheus() else {
        return Vec::new();
    };
    let text = handle.render();
    let mut out: Vec<(String, u64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("zulip_listeners_late_replies_total{") else {
            continue;
        };
        let outcome = rest
            .split("outcome=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("unknown");
        let count = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0);
        out.push((outcome.to_string(), count as u64));
    }
    out
}
