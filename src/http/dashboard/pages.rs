//! The dashboard's pages as maud templates (HTML checked when the crate compiles; every value
//! is escaped unless it is our own SVG), and the small formatting helpers they share.

use actix_web::HttpResponse;
use actix_web::http::{StatusCode, header};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::charts::{self, Series};
use super::{Ctx, EventsPage, EventsQuery, ListenerLine, Overview};
use crate::db::tables::{
    event_log::EventLogRow,
    inbox::{InboxEntry, InboxStatus},
    listeners::HistoryRow,
};
use crate::listeners::Definition;

/// Everything the dashboard loads is its own: no inline style or script runs.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn respond(status: StatusCode, page: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::REFERRER_POLICY, "same-origin"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(page.into_string())
}

/// The frame of every page: head, navigation (with sign-out for a session), content.
fn layout(base: &str, ctx: Option<&Ctx>, title: &str, current: &str, body: Markup) -> Markup {
    let nav = [
        ("overview", "Overview", format!("{base}/")),
        ("listeners", "Listeners", format!("{base}/ui/listeners")),
        ("events", "Events", format!("{base}/ui/events")),
        (
            "dead-letters",
            "Dead letters",
            format!("{base}/ui/dead-letters"),
        ),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · zulip-listeners" }
                link rel="stylesheet" href=(format!("{base}/ui/style.css"));
            }
            body {
                header {
                    span.brand { "zulip-listeners" }
                    @if let Some(ctx) = ctx {
                        nav {
                            @for (key, label, href) in &nav {
                                a href=(href) class=[(*key == current).then_some("current")] { (label) }
                            }
                        }
                        @if let Some(csrf) = &ctx.csrf {
                            form.logout method="post" action=(format!("{base}/logout")) {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main id="main" data-page=(current) {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page with one message (errors, refusals).
pub fn message(status: StatusCode, base: &str, title: &str, text: &str) -> HttpResponse {
    let body = html! {
        p.notice { (text) }
        p { a href=(format!("{base}/")) { "Back to the overview" } }
    };
    respond(status, layout(base, None, title, "message", body))
}

pub fn login(base: &str, error: Option<&str>, status: StatusCode) -> HttpResponse {
    let body = html! {
        @if let Some(error) = error {
            p.error id="login-error" { (error) }
        }
        form.card method="post" action=(format!("{base}/login")) {
            label for="token" { "Admin token" }
            input id="token" type="password" name="token" autocomplete="current-password" required autofocus;
            button type="submit" id="sign-in" { "Sign in" }
        }
        p.hint { "The token of " code { "[admin] token" } " in the server's configuration." }
    };
    respond(status, layout(base, None, "Sign in", "login", body))
}

/// A flash message from the query string (`done=`, `replayed=`).
fn flash(pairs: &[(String, String)]) -> Markup {
    html! {
        @if let Some(done) = super::given(pairs, "done") {
            p.ok id="flash" { (done) }
        }
        @if let Some(n) = super::given(pairs, "replayed") {
            p.ok id="flash" { (n) " event(s) queued again." }
        }
    }
}

fn svg(chart: Option<String>) -> Markup {
    match chart {
        Some(svg) => html! { figure.chart { (PreEscaped(svg)) } },
        None => html! { p.notice { "The chart could not be drawn." } },
    }
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
    let hour_start = (data.now_ms - super::HOUR_MS) / 60_000 * 60_000;
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
    let day_start = data.now_ms - super::DAY_MS;
    let minutes_per = data.interval_ms as f64 / 60_000.0;
    let mut ok_runs: Vec<(i64, i64)> = data
        .intervals
        .iter()
        .map(|(at, runs, failures)| (*at, runs - failures))
        .collect();
    let mut failed_runs: Vec<(i64, i64)> =
        data.intervals.iter().map(|(at, _, f)| (*at, *f)).collect();
    for (at, _, success, n) in &data.tail {
        if *success {
            ok_runs.push((*at, *n));
        } else {
            failed_runs.push((*at, *n));
        }
    }
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
                                    td { (s.as_str()) }
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

fn state_badge(view: &serde_json::Value) -> Markup {
    let state = view["state"].as_str().unwrap_or("unknown");
    html! { span.badge.(state) { (state.replace('_', " ")) } }
}

fn scope_text(view: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for key in ["realms", "streams", "users"] {
        if let Some(list) = view[key].as_array()
            && !list.is_empty()
        {
            parts.push(format!("{key}: {}", serde_json::Value::Array(list.clone())));
        }
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join("; ")
    }
}

fn rate(runs: i64, failures: i64) -> String {
    if runs == 0 {
        "–".into()
    } else {
        format!("{:.1} %", failures as f64 * 100.0 / runs as f64)
    }
}

pub fn listeners(ctx: &Ctx, lines: &[ListenerLine], pairs: Vec<(String, String)>) -> HttpResponse {
    let body = html! {
        (flash(&pairs))
        p.hint { "Runs, failure rate and the sparkline cover the last 24 hours (listener_stats); p95 the newest 1,000 runs." }
        div.scroll {
            table.listeners {
                thead {
                    tr {
                        th { "listener" } th { "state" } th { "scope" }
                        th.num { "runs" } th.num { "failed" } th.num { "p95" } th { "runs, 24 h" } th {}
                    }
                }
                tbody {
                    @for line in lines {
                        @let name = line.view["name"].as_str().unwrap_or_default();
                        tr id=(format!("listener-{name}")) {
                            td {
                                a href=(ctx.url(&format!("/ui/listeners/{}", path_segment(name)))) { (name) }
                                br;
                                small { (line.view["handler"].as_str().unwrap_or_default()) }
                            }
                            td.state {
                                (state_badge(&line.view))
                                @if line.view["breaker"] == "open" { " " span.badge.breaker_open { "breaker open" } }
                                @if let Some(reason) = line.view["disabled_reason"].as_str() {
                                    br; small { (reason) }
                                }
                            }
                            td { small { (scope_text(&line.view)) } }
                            td.num { (line.runs) }
                            td.num { (rate(line.runs, line.failures)) }
                            td.num { (line.p95_ms.map_or("–".to_string(), |ms| format!("{ms:.1} ms"))) }
                            td.spark { (PreEscaped(charts::sparkline(&line.runs_series, &line.failures_series).unwrap_or_default())) }
                            td { (toggle(ctx, name, &line.view)) }
                        }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), "Listeners", "listeners", body),
    )
}

/// The enable or disable button of a listener.
fn toggle(ctx: &Ctx, name: &str, view: &serde_json::Value) -> Markup {
    let enabled = view["enabled"].as_bool().unwrap_or(false);
    let (action, label) = if enabled {
        ("disable", "Disable")
    } else {
        ("enable", "Enable")
    };
    html! {
        form.inline method="post" action=(ctx.url(&format!("/ui/listeners/{}", path_segment(name)))) {
            (csrf_field(ctx))
            input type="hidden" name="action" value=(action);
            button type="submit" id=(format!("{action}-{name}")) class=(action) { (label) }
        }
    }
}

fn csrf_field(ctx: &Ctx) -> Markup {
    html! {
        @if let Some(csrf) = &ctx.csrf {
            input type="hidden" name="csrf" value=(csrf);
        }
    }
}

pub fn listener(
    ctx: &Ctx,
    line: &ListenerLine,
    definition: &Definition,
    history: &[HistoryRow],
    pairs: Vec<(String, String)>,
    error: Option<&str>,
) -> HttpResponse {
    let name = line.view["name"].as_str().unwrap_or_default();
    let typed = |key: &str, current: String| -> String {
        super::field(&pairs, key)
            .map(str::to_string)
            .unwrap_or(current)
    };
    let scope = serde_json::to_value(&definition.scope).unwrap_or_default();
    let scope_field =
        |key: &str| -> String { typed(key, scope.get(key).map_or("[]".into(), |v| v.to_string())) };
    let settings = crate::redact::settings(&serde_json::Value::Object(definition.settings.clone()));
    let events_url = ctx.url(&format!("/ui/events?listener={}", query_value(name)));
    let body = html! {
        (flash(&pairs))
        @if let Some(error) = error {
            p.error id="edit-error" { (error) }
        }
        section.card {
            p { "State: " span id="state" { (state_badge(&line.view)) }
                " · breaker " (line.view["breaker"].as_str().unwrap_or("closed"))
                " · failures in the last hour: " (line.view["failures_last_hour"]) }
            @if let Some(reason) = line.view["disabled_reason"].as_str() {
                p { "Reason: " (reason) }
            }
            p { "Handler " code { (line.view["handler"].as_str().unwrap_or_default()) }
                " · events: " (line.view["events"].as_str().unwrap_or_default())
                " · scope: " (scope_text(&line.view)) }
            p { (line.runs) " runs, " (rate(line.runs, line.failures)) " failed in 24 h · p95 "
                (line.p95_ms.map_or("–".to_string(), |ms| format!("{ms:.1} ms")))
                " · " a href=(events_url) { "its events" } }
            (toggle(ctx, name, &line.view))
        }
        @if !line.runs_series.is_empty() {
            section {
                h2 { "Runs, last 24 hours" }
                figure.chart.wide { (PreEscaped(charts::sparkline(&line.runs_series, &line.failures_series).unwrap_or_default())) }
            }
        }
        section {
            h2 { "Edit" }
            form.edit method="post" action=(ctx.url(&format!("/ui/listeners/{}", path_segment(name)))) {
                (csrf_field(ctx))
                input type="hidden" name="action" value="edit";
                label for="description" { "Description" }
                input id="description" name="description" value=(typed("description", definition.description.clone()));
                label for="events" { "Event types (comma-separated; empty: all the handler takes)" }
                input id="events" name="events" value=(typed("events", definition.events.join(", ")));
                label for="realms" { "Realms (JSON list of ids or subdomains, e.g. [2, \"zulip\"]; empty: all)" }
                textarea id="realms" name="realms" rows="2" { (scope_field("realms")) }
                label for="streams" { "Channels (JSON list of ids or names)" }
                textarea id="streams" name="streams" rows="2" { (scope_field("streams")) }
                label for="users" { "Users (JSON list)" }
                textarea id="users" name="users" rows="2" { (scope_field("users")) }
                label for="settings" { "Settings to change (JSON merge patch; null resets a key)" }
                textarea id="settings" name="settings" rows="3" placeholder="{\"key\": \"value\"}" { (typed("settings", String::new())) }
                p.hint { "Current settings (secrets hidden): " code { (settings) } }
                button type="submit" id="save" { "Save" }
            }
        }
        section {
            h2 { "History" }
            @if history.is_empty() {
                p { "No changes recorded." }
            } @else {
                div.scroll {
                    table id="history" {
                        thead { tr { th { "when (UTC)" } th { "source" } th { "field" } th { "old" } th { "new" } } }
                        tbody {
                            @for h in history {
                                tr {
                                    td { (time_text(h.changed_at_ms)) }
                                    td { (h.source) }
                                    td { (h.field) }
                                    td { small { (h.old_value.as_deref().unwrap_or("–")) } }
                                    td { small { (h.new_value.as_deref().unwrap_or("–")) } }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(
            &ctx.base,
            Some(ctx),
            &format!("Listener {name}"),
            "listeners",
            body,
        ),
    )
}

pub fn events(
    ctx: &Ctx,
    names: &[String],
    q: &EventsQuery,
    page: &EventsPage,
    error: Option<&str>,
) -> HttpResponse {
    let f = &q.filter;
    let mut keep: Vec<(&str, String)> = Vec::new();
    if let Some(v) = &f.listener {
        keep.push(("listener", v.clone()));
    }
    if let Some(v) = &f.realm {
        keep.push(("realm", v.clone()));
    }
    if let Some(v) = &f.event_type {
        keep.push(("type", v.clone()));
    }
    if let Some(v) = f.success {
        keep.push(("success", v.to_string()));
    }
    if let Some(v) = &q.since {
        keep.push(("since", v.clone()));
    }
    if let Some(v) = &q.until {
        keep.push(("until", v.clone()));
    }
    let older = page.older.map(|before| {
        let mut pairs = keep.clone();
        pairs.push(("before", before.to_string()));
        ctx.url(&format!("/ui/events?{}", encode_pairs(&pairs)))
    });
    let newest = ctx.url(&format!("/ui/events?{}", encode_pairs(&keep)));
    let body = html! {
        @if let Some(error) = error {
            p.error { (error) }
        }
        form.filters method="get" action=(ctx.url("/ui/events")) {
            label { "Listener "
                select name="listener" {
                    option value="" { "any" }
                    @for n in names {
                        option value=(n) selected[f.listener.as_deref() == Some(n.as_str())] { (n) }
                    }
                }
            }
            label { "Realm " input name="realm" size="10" value=(f.realm.clone().unwrap_or_default()); }
            label { "Type " input name="type" size="10" value=(f.event_type.clone().unwrap_or_default()); }
            label { "Outcome "
                select name="success" {
                    option value="" { "any" }
                    option value="true" selected[f.success == Some(true)] { "ok" }
                    option value="false" selected[f.success == Some(false)] { "failed" }
                }
            }
            label { "From (UTC) " input type="datetime-local" name="since" value=(q.since.clone().unwrap_or_default()); }
            label { "To (UTC) " input type="datetime-local" name="until" value=(q.until.clone().unwrap_or_default()); }
            button type="submit" id="filter" { "Filter" }
        }
        @if let Some((low, high)) = page.searched {
            p.hint { "Event-log ids " (low) "–" (high) ", newest first." }
        }
        @if page.rows.is_empty() {
            p id="no-events" { "No events here." }
        } @else {
            div.scroll {
                table id="events" {
                    thead { tr { th { "id" } th { "when (UTC)" } th { "listener" } th { "source" } th { "type" } th { "realm" } th.num { "ms" } th { "outcome" } } }
                    tbody {
                        @for r in &page.rows {
                            tr class=(if r.success { "ok" } else { "failed" }) {
                                td { a href=(ctx.url(&format!("/ui/events/{}", r.id))) { (r.id) } }
                                td { (time_text(r.created_at_ms)) }
                                td { (r.listener) }
                                td { (r.source) }
                                td { (r.event_type) }
                                td { (r.realm.as_deref().unwrap_or("–")) }
                                td.num { (format!("{:.1}", r.duration_us as f64 / 1000.0)) }
                                td {
                                    @if r.success { "ok" } @else {
                                        "failed"
                                        @if let Some(e) = &r.error { br; small { (shorten(e, 80)) } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.pager {
            @if q.before.is_some() { a href=(newest) { "« Newest" } " " }
            @if let Some(older) = older { a href=(older) id="older" { "Older »" } }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), "Events", "events", body),
    )
}

pub fn event(
    ctx: &Ctx,
    row: &EventLogRow,
    related: &[EventLogRow],
    inbox: Option<&InboxEntry>,
) -> HttpResponse {
    let body = html! {
        dl.detail {
            dt { "listener" } dd { a href=(ctx.url(&format!("/ui/listeners/{}", path_segment(&row.listener)))) { (row.listener) } }
            dt { "when (UTC)" } dd { (time_text(row.created_at_ms)) }
            dt { "source" } dd { (row.source) }
            dt { "type" } dd { (row.event_type) }
            dt { "bot" } dd { (row.bot.as_deref().unwrap_or("–")) }
            dt { "realm" } dd { (row.realm.as_deref().unwrap_or("–")) (row.realm_id.map(|id| format!(" (id {id})")).unwrap_or_default()) }
            dt { "user id" } dd { (row.user_id.map_or("–".to_string(), |u| u.to_string())) }
            dt { "message id" } dd { (row.message_id.map_or("–".to_string(), |u| u.to_string())) }
            dt { "event id" } dd { (row.event_id.as_deref().unwrap_or("–")) }
            dt { "duration" } dd { (format!("{:.3} ms", row.duration_us as f64 / 1000.0)) }
            dt { "outcome" } dd id="outcome" { (if row.success { "ok" } else { "failed" }) }
        }
        @if let Some(error) = &row.error {
            h2 { "Error" }
            pre.error id="error" { (error) }
        }
        @if let Some(entry) = inbox {
            h2 { "In the inbox" }
            p { "Status " strong { (entry.status) } ", " (entry.attempts) " attempt(s), received " (time_text(entry.received_at_ms)) "." }
            @if let Some(e) = &entry.last_error { pre.error { (e) } }
        }
        @if related.len() > 1 {
            h2 { "Runs of the same event" }
            div.scroll {
                table {
                    thead { tr { th { "id" } th { "listener" } th { "outcome" } th { "error" } } }
                    tbody {
                        @for r in related {
                            tr {
                                td { a href=(ctx.url(&format!("/ui/events/{}", r.id))) { (r.id) } }
                                td { (r.listener) }
                                td { (if r.success { "ok" } else { "failed" }) }
                                td { small { (r.error.as_deref().map(|e| shorten(e, 120)).unwrap_or_default()) } }
                            }
                        }
                    }
                }
            }
        }
        p { a href=(ctx.url("/ui/events")) { "« All events" } }
    };
    respond(
        StatusCode::OK,
        layout(
            &ctx.base,
            Some(ctx),
            &format!("Event {}", row.id),
            "events",
            body,
        ),
    )
}

pub fn dead_letters(
    ctx: &Ctx,
    status: InboxStatus,
    counts: &[(InboxStatus, i64)],
    rows: &[InboxEntry],
    pairs: &[(String, String)],
) -> HttpResponse {
    let count = |s: InboxStatus| counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
    let body = html! {
        (flash(pairs))
        nav.tabs {
            @for s in InboxStatus::REPLAYABLE {
                a href=(ctx.url(&format!("/ui/dead-letters?status={s}"))) class=[(s == status).then_some("current")] {
                    (s.as_str().replace('_', " ")) " (" (count(s)) ")"
                }
            }
        }
        @if rows.is_empty() {
            p id="no-dead-letters" { "None." }
        } @else {
            p {
                a.button id="replay-all" href=(ctx.url(&format!("/ui/dead-letters/replay?status={status}&all=1"))) { "Replay all " (count(status)) "…" }
            }
            div.scroll {
                table id="dead-letters" {
                    thead { tr { th { "event" } th { "received (UTC)" } th { "realm" } th { "type" } th.num { "attempts" } th { "last error" } th {} } }
                    tbody {
                        @for r in rows {
                            tr {
                                td { small { (r.event_id) } }
                                td { (time_text(r.received_at_ms)) }
                                td { (r.realm) }
                                td { (r.event_type) (r.op.as_deref().map(|op| format!(" / {op}")).unwrap_or_default()) }
                                td.num { (r.attempts) }
                                td { small { (r.last_error.as_deref().map(|e| shorten(e, 160)).unwrap_or_default()) } }
                                td {
                                    a.button.replay href=(ctx.url(&format!("/ui/dead-letters/replay?status={status}&id={}", query_value(&r.event_id)))) { "Replay…" }
                                }
                            }
                        }
                    }
                }
            }
            @if count(status) > rows.len() as i64 {
                p.hint { "The newest " (rows.len()) " of " (count(status)) " are shown." }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), "Dead letters", "dead-letters", body),
    )
}

pub fn confirm_replay(ctx: &Ctx, status: &str, id: Option<&str>, count: i64) -> HttpResponse {
    let body = html! {
        @if count == 0 {
            p.notice { "Nothing to replay: no " (status) " event matches." }
        } @else {
            form.card method="post" action=(ctx.url("/ui/dead-letters/replay")) {
                (csrf_field(ctx))
                input type="hidden" name="status" value=(status);
                @match id {
                    Some(id) => {
                        input type="hidden" name="id" value=(id);
                        p { "Queue event " code { (id) } " (" (status) ") again with fresh retries?" }
                    }
                    None => {
                        input type="hidden" name="all" value="1";
                        p { "Queue all " strong { (count) } " " (status) " event(s) again with fresh retries?" }
                    }
                }
                button type="submit" id="confirm-replay" { "Replay" }
                " "
                a href=(ctx.url(&format!("/ui/dead-letters?status={status}"))) { "Cancel" }
            }
        }
    };
    respond(
        StatusCode::OK,
        layout(&ctx.base, Some(ctx), "Replay", "dead-letters", body),
    )
}

/// A path segment, percent-encoded (listener names are plain, but never trust that).
pub fn path_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A query-string value, form-encoded.
pub fn query_value(s: &str) -> String {
    serde_urlencoded::to_string([("v", s)])
        .map(|e| e.trim_start_matches("v=").to_string())
        .unwrap_or_default()
}

fn encode_pairs(pairs: &[(&str, String)]) -> String {
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

/// `HH:MM` of a time (UTC), for chart axes.
fn clock(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let day_secs = secs.rem_euclid(86_400);
    format!("{:02}:{:02}", day_secs / 3600, day_secs % 3600 / 60)
}

/// `YYYY-MM-DD HH:MM:SS` of a time (UTC).
pub fn time_text(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

/// A duration in words: `45 s`, `12 min`, `3.5 h`.
pub fn duration_text(ms: i64) -> String {
    let secs = ms / 1000;
    if secs < 120 {
        format!("{secs} s")
    } else if secs < 7200 {
        format!("{} min", secs / 60)
    } else {
        format!("{:.1} h", secs as f64 / 3600.0)
    }
}

/// Reads `YYYY-MM-DDTHH:MM[:SS]` (a `datetime-local` field, taken as UTC) or
/// `YYYY-MM-DD HH:MM[:SS]` or `YYYY-MM-DD` into unix ms.
pub fn parse_time(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a time like 2026-12-02T14:30 (UTC)");
    let text = text.trim();
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, t),
        None => (text, "00:00"),
    };
    let mut date_parts = date.split('-').map(|p| p.parse::<i64>());
    let (Some(Ok(y)), Some(Ok(m)), Some(Ok(d)), None) = (
        date_parts.next(),
        date_parts.next(),
        date_parts.next(),
        date_parts.next(),
    ) else {
        return Err(bad());
    };
    let mut time_parts = time.split(':').map(|p| p.parse::<i64>());
    let (Some(Ok(hh)), Some(Ok(mm))) = (time_parts.next(), time_parts.next()) else {
        return Err(bad());
    };
    let ss = match time_parts.next() {
        Some(Ok(s)) => s,
        Some(Err(_)) => return Err(bad()),
        None => 0,
    };
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&d)
        || !(0..24).contains(&hh)
        || !(0..60).contains(&mm)
        || !(0..60).contains(&ss)
        || !(1970..=9999).contains(&y)
    {
        return Err(bad());
    }
    let days = days_from_civil(y, m, d);
    Ok(((days * 86_400) + hh * 3600 + mm * 60 + ss) * 1000)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        assert_eq!(time_text(0), "1970-01-01 00:00:00");
        let at = parse_time("2026-12-02T14:30").expect("valid");
        assert_eq!(time_text(at), "2026-12-02 14:30:00");
        assert_eq!(
            parse_time("2024-02-29 23:59:59").map(time_text),
            Ok("2024-02-29 23:59:59".into())
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("2026-13-01").is_err());
        assert_eq!(
            clock(parse_time("2026-01-01T07:05").unwrap_or_default()),
            "07:05"
        );
    }

    #[test]
    fn buckets_fill_gaps_with_zero() {
        let points = per_bucket([(120_000, 6)].into_iter(), 0, 180_000, 60_000, 1.0);
        assert_eq!(
            points,
            vec![(0, 0.0), (60_000, 0.0), (120_000, 6.0), (180_000, 0.0)]
        );
    }

    #[test]
    fn encoding() {
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(query_value("x&y=z"), "x%26y%3Dz");
    }
}
