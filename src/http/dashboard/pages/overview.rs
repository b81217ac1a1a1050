//! The overview page: health with its reasons, charts of events per minute (last hour by
//! source and outcome, last 24 hours by outcome), the inbox, queue lag and late replies.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use maud::html;

use super::format::{clock, duration_text};
use super::{layout, respond, svg};
use crate::db::tables::inbox::InboxStatus;
use crate::http::dashboard::Ctx;
use crate::http::dashboard::charts::{self, Series};
use crate::http::dashboard::{DAY_MS, HOUR_MS};

/// What the overview shows, read in one database visit.
pub struct Overview {
    pub now_ms: i64,
    /// The last hour per minute: (minute, source, success, runs).
    pub minutes: Vec<(i64, String, bool, i64)>,
    /// The last 24 hours per interval, from `listener_stats` and the event-log rows not
    /// aggregated yet (`listener_stats::recent_runs`): (interval start, runs, failures).
    pub intervals: Vec<(i64, i64, i64)>,
    pub interval_ms: i64,
    pub inbox: Vec<(InboxStatus, i64)>,
    pub oldest_pending_ms: Option<i64>,
    pub health: serde_json::Value,
    /// Late replies since the server started, by outcome.
    pub late_replies: Vec<(String, u64)>,
}

pub fn overview(ctx: &Ctx, data: &Overview) -> HttpResponse {
    let status = data.health["status"]
        .as_str()
        .unwrap_or("unknown")
        .to_string();
    let reasons: Vec<String> = data.health["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();

    // The last hour, per minute, by source and outcome.
    let hour_start = (data.now_ms - HOUR_MS) / 60_000 * 60_000;
    let mut lines: Vec<Series> = Vec::new();
    let mut hour_total = 0i64;
    for (source, success, label, color) in [
        ("outgoing", true, "outgoing ok", charts::GREEN),
        ("outgoing", false, "outgoing failed", charts::RED),
        ("forwarder", true, "forwarder ok", charts::BLUE),
        ("forwarder", false, "forwarder failed", charts::ORANGE),
    ] {
        let points = per_bucket(
            data.minutes
                .iter()
                .filter(|(_, s, ok, _)| s == source && *ok == success)
                .map(|(at, _, _, n)| (*at, *n)),
            hour_start,
            data.now_ms,
            60_000,
            1.0,
        );
        hour_total += data
            .minutes
            .iter()
            .filter(|(_, s, ok, _)| s == source && *ok == success)
            .map(|r| r.3)
            .sum::<i64>();
        if points.iter().any(|p| p.1 > 0.0) || success {
            lines.push(Series {
                label: label.into(),
                color,
                points,
            });
        }
    }
    // Other sources (none today), if any appear, are counted in the total only.
    let hour_chart = charts::lines(
        &lines,
        (hour_start, data.now_ms),
        "events/min",
        clock,
        (720, 240),
    );

    // The last 24 hours, per statistics interval, by outcome.
    let day_start = data.now_ms - DAY_MS;
    let minutes_per = data.interval_ms as f64 / 60_000.0;
    let ok_runs: Vec<(i64, i64)> = data
        .intervals
        .iter()
        .map(|(at, runs, failures)| (*at, runs - failures))
        .collect();
    let failed_runs: Vec<(i64, i64)> = data.intervals.iter().map(|(at, _, f)| (*at, *f)).collect();
    let day_chart = charts::lines(
        &[
            Series {
                label: "ok".into(),
                color: charts::GREEN,
                points: per_bucket(
                    ok_runs.into_iter(),
                    day_start,
                    data.now_ms,
                    data.interval_ms,
                    minutes_per,
                ),
            },
            Series {
                label: "failed".into(),
                color: charts::RED,
                points: per_bucket(
                    failed_runs.into_iter(),
                    day_start,
                    data.now_ms,
                    data.interval_ms,
                    minutes_per,
                ),
            },
        ],
        (day_start, data.now_ms),
        "events/min",
        clock,
        (720, 240),
    );
    let lag = data
        .oldest_pending_ms
        .map(|at| duration_text(data.now_ms.saturating_sub(at)));
    let body = html! {
        section.health.(status) id="health" {
            h2 { "Health: " span id="health-status" { (status) } }
            @if reasons.is_empty() {
                p { "Nothing to report." }
            } @else {
                ul { @for r in &reasons { li { (r) } } }
            }
        }
        section {
            h2 { "Events per minute, last hour" }
            p.hint { (hour_total) " runs, by source and outcome (event log)." }
            (svg(hour_chart))
        }
        section {
            h2 { "Events per minute, last 24 hours" }
            p.hint { "By outcome, from listener_stats (" (duration_text(data.interval_ms)) " intervals) and the newest event-log rows." }
            (svg(day_chart))
        }
        div.grid {
            section.card id="inbox" {
                h2 { "Inbox" }
                @if data.inbox.is_empty() {
                    p { "Empty." }
                } @else {
                    table {
                        thead { tr { th { "status" } th.num { "events" } } }
                        tbody {
                            @for (s, n) in &data.inbox {
                                tr {
                                    td { (s) }
                                    td.num { (n) }
                                }
                            }
                        }
                    }
                }
            }
            section.card id="lag" {
                h2 { "Queue lag" }
                @match &lag {
                    Some(lag) => {
                        p.big { (lag) }
                        p.hint { "age of the oldest pending event" }
                    }
                    None => {
                        p.big { "none" }
                        p.hint { "no event is pending" }
                    }
                }
            }
            section.card id="late-replies" {
                h2 { "Late replies" }
                @if data.late_replies.iter().all(|(_, n)| *n == 0) {
                    p.big { "0" }
                } @else {
                    ul { @for (outcome, n) in &data.late_replies { li { (outcome) ": " (n) } } }
                }
                p.hint { "replies sent through Zulip's REST API after the deadline, since start" }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), "Overview", "overview", body),
    )
}

/// Counts per bucket as a rate per minute, with zeros where a bucket has no row.
fn per_bucket(
    rows: impl Iterator<Item = (i64, i64)>,
    start: i64,
    end: i64,
    bucket_ms: i64,
    minutes_per_bucket: f64,
) -> Vec<(i64, f64)> {
    let bucket_ms = bucket_ms.max(1);
    let first = start / bucket_ms * bucket_ms;
    let n = usize::try_from((end - first) / bucket_ms + 1).unwrap_or(0);
    let mut values = vec![0i64; n];
    for (at, count) in rows {
        if let Ok(i) = usize::try_from((at - first) / bucket_ms)
            && let Some(v) = values.get_mut(i)
        {
            *v += count;
        }
    }
    let divisor = minutes_per_bucket.max(f64::MIN_POSITIVE);
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| (first + i as i64 * bucket_ms, v as f64 / divisor))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_fill_gaps_with_zero() {
        let points = per_bucket([(120_000, 6)].into_iter(), 0, 180_000, 60_000, 1.0);
        assert_eq!(
            points,
            vec![(0, 0.0), (60_000, 0.0), (120_000, 6.0), (180_000, 0.0)]
        );
    }
}
