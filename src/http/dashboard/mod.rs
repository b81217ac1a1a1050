//! The admin dashboard in the browser, at `/admin/` (overview) and `/admin/ui/…`, on the
//! listener and behind the token of the admin API.
//!
//! - **Sign-in.** `/admin/login` takes the admin token (compared in constant time, failed
//!   attempts limited per client address) and sets a session cookie: a random token kept in
//!   memory for 12 hours, `HttpOnly`, `SameSite=Strict`, `Path=` the admin prefix, `Secure`
//!   when the request came over HTTPS (`X-Forwarded-Proto`). Every page also accepts the
//!   bearer token. Without either, a page answers 303 to the sign-in form and a form post 401,
//!   before any request body is read.
//! - **Forms.** Every POST carries the session's CSRF token in a hidden field (compared in
//!   constant time) and, when the browser sends `Origin`, must come from the same host.
//!   Changes go through the same code as the admin API ([`changes::change`], recorded in the
//!   history with source `dashboard`) and answer 303 back to a page (post/redirect/get).
//! - **Path prefix.** Links are built from `admin.public_path` or, when that is unset, the
//!   proxy's `X-Forwarded-Prefix`, so the dashboard works under e.g. `/listeners/admin/`.
//! - **No script.** Pages are HTML rendered with maud (checked at compile time), one
//!   stylesheet of our own, charts as inline SVG drawn by [`charts`]; a strict
//!   `Content-Security-Policy` allows nothing else.

mod charts;
mod pages;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use rand::Rng;
use subtle::ConstantTimeEq;

use super::{AppState, method_not_allowed};
use crate::clock::now_ms;
use crate::db::tables::inbox::InboxStatus;
use crate::db::tables::listeners::ListenerRow;
use crate::db::{DbError, tables};
use crate::listeners::changes::{self, ChangeError, Overrides};
use crate::verification::token_matches;

/// Name of the session cookie.
const SESSION_COOKIE: &str = "zl_admin_session";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 1_000;
/// Failed sign-ins allowed per client address within [`LOGIN_WINDOW`].
const LOGIN_FAILURES: u32 = 5;
const LOGIN_WINDOW: Duration = Duration::from_secs(300);
/// Largest form body.
const FORM_MAX_BODY: usize = 64 * 1024;
/// Event-log ids one page of the event log looks at, at most.
const EVENT_WINDOW: i64 = 20_000;
/// Event-log rows per page.
const EVENTS_PER_PAGE: i64 = 50;
/// Dead letters listed per page.
const DEAD_LETTERS_SHOWN: i64 = 100;

const STYLESHEET: &str = include_str!("style.css");

/// The dashboard's own state: sessions and failed sign-ins, in memory.
pub struct Dashboard {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// `admin.public_path`: the prefix in front of `/admin` as the browser sees it.
    public_path: Option<String>,
}

struct Session {
    csrf: String,
    expires: Instant,
}

impl Dashboard {
    pub fn new(public_path: Option<String>) -> Dashboard {
        Dashboard {
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            public_path: public_path
                .as_deref()
                .and_then(clean_prefix)
                .map(str::to_string),
        }
    }

    /// Opens a session: `(cookie token, CSRF token)`.
    fn open_session(&self) -> (String, String) {
        let token = random_token();
        let csrf = random_token();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            token.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_TTL,
            },
        );
        (token, csrf)
    }

    /// The CSRF token of a live session.
    fn session(&self, token: &str) -> Option<String> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(token) {
            Some(s) if s.expires > Instant::now() => Some(s.csrf.clone()),
            Some(_) => {
                sessions.remove(token);
                None
            }
            None => None,
        }
    }

    fn close_session(&self, token: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    /// Whether `client` may try to sign in (fewer than [`LOGIN_FAILURES`] recent failures).
    fn may_try(&self, client: IpAddr) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures
            .get(&client)
            .is_none_or(|(n, since)| *n < LOGIN_FAILURES || since.elapsed() > LOGIN_WINDOW)
    }

    fn record_failure(&self, client: IpAddr) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if failures.len() > 10_000 {
            failures.retain(|_, (_, since)| since.elapsed() <= LOGIN_WINDOW);
        }
        let entry = failures.entry(client).or_insert((0, Instant::now()));
        if entry.1.elapsed() > LOGIN_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A path prefix as given by the configuration or the proxy, if it is a plain path
/// (`/listeners`); the trailing slash is dropped. Anything else is ignored.
fn clean_prefix(raw: &str) -> Option<&str> {
    let trimmed = raw.trim().trim_end_matches('/');
    let plain = trimmed.len() <= 200
        && trimmed.starts_with('/')
        && !trimmed.contains("//")
        && !trimmed.split('/').any(|s| s == "." || s == "..")
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-._~".contains(&b));
    plain.then_some(trimmed)
}

/// Registers the dashboard's routes; they come before the `/admin` scope of the JSON API.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/admin")
            .route(web::get().to(to_overview))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/admin/")
            .route(web::get().to(overview))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/admin/login")
            .route(web::get().to(login_form))
            .route(web::post().to(login))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/admin/logout")
            .route(web::post().to(logout))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::scope("/admin/ui")
            .service(
                web::resource("/style.css")
                    .route(web::get().to(stylesheet))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/listeners")
                    .route(web::get().to(listeners))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/listeners/{name}")
                    .route(web::get().to(listener))
                    .route(web::post().to(change_listener))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/events")
                    .route(web::get().to(events))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/events/{id}")
                    .route(web::get().to(event))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/dead-letters")
                    .route(web::get().to(dead_letters))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/dead-letters/replay")
                    .route(web::get().to(confirm_replay))
                    .route(web::post().to(replay))
                    .default_service(web::to(method_not_allowed)),
            ),
    );
}

/// What a page needs to know about the request.
pub struct Ctx {
    /// `/admin` as the browser reaches it (with any proxy prefix).
    pub base: String,
    /// The session's CSRF token; `None` when the request came with the bearer token.
    pub csrf: Option<String>,
    session: Option<String>,
}

impl Ctx {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn base_of(req: &HttpRequest, dashboard: &Dashboard) -> String {
    let prefix = dashboard.public_path.clone().or_else(|| {
        req.headers()
            .get("x-forwarded-prefix")
            .and_then(|v| v.to_str().ok())
            .and_then(clean_prefix)
            .map(str::to_string)
    });
    format!("{}/admin", prefix.unwrap_or_default())
}

fn cookie<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn over_https(req: &HttpRequest) -> bool {
    req.headers()
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
        || req.connection_info().scheme() == "https"
}

/// Who is asking: the bearer token or a session; otherwise the answer to give (404 while the
/// admin API is off, 303 to the sign-in form for a page, 401 for a form post).
fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Ctx, HttpResponse> {
    let base = base_of(req, &state.dashboard);
    let Some(token) = &state.admin_token else {
        return Err(pages::message(
            StatusCode::NOT_FOUND,
            &base,
            "Dashboard off",
            "The admin API and dashboard are off: set [admin] token or token_file.",
        ));
    };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer
        && token_matches(token, given.trim())
    {
        return Ok(Ctx {
            base,
            csrf: None,
            session: None,
        });
    }
    if let Some(session) = cookie(req, SESSION_COOKIE)
        && let Some(csrf) = state.dashboard.session(session)
    {
        return Ok(Ctx {
            base,
            csrf: Some(csrf),
            session: Some(session.to_string()),
        });
    }
    if req.method() == actix_web::http::Method::GET {
        Err(see_other(&format!("{base}/login")))
    } else {
        let mut refused = pages::message(
            StatusCode::UNAUTHORIZED,
            &base,
            "Sign in first",
            "This form needs a dashboard session (or the bearer token).",
        );
        // The body was not read: do not keep a connection whose next bytes are that body.
        refused
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        Err(refused)
    }
}

/// Whether the browser's `Origin`, when it sends one, is this server as the browser sees it.
fn same_origin(req: &HttpRequest) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let host = req
        .headers()
        .get("x-forwarded-host")
        .or_else(|| req.headers().get(header::HOST))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    // Host names only: a proxy's `X-Forwarded-Host: $host` carries no port.
    let name = |h: &str| -> String {
        let bare = match h.rsplit_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                name
            }
            _ => h,
        };
        bare.to_ascii_lowercase()
    };
    !host.is_empty() && origin_host.is_some_and(|h| name(h) == name(host))
}

/// Reads a posted form after the caller checked who is asking, and checks its CSRF token
/// (sessions only) and origin. `Err`: the answer to give.
async fn read_form(
    req: &HttpRequest,
    state: &AppState,
    ctx: &Ctx,
    payload: web::Payload,
) -> Result<Vec<(String, String)>, HttpResponse> {
    let refuse = |status: StatusCode, text: &str| {
        Err(pages::message(status, &ctx.base, "Form refused", text))
    };
    if !same_origin(req) {
        return refuse(
            StatusCode::FORBIDDEN,
            "The form was sent from another site (Origin does not match).",
        );
    }
    let body = match super::read_body(req, payload, FORM_MAX_BODY, &state.body).await {
        Ok(body) => body,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "The form body is not application/x-www-form-urlencoded.",
        );
    };
    if let Some(expected) = &ctx.csrf {
        let given = field(&form, "csrf").unwrap_or_default();
        if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
            return refuse(
                StatusCode::FORBIDDEN,
                "The form's CSRF token is missing or stale: reload the page and try again.",
            );
        }
    }
    Ok(form)
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn query(req: &HttpRequest) -> Vec<(String, String)> {
    serde_urlencoded::from_str(req.query_string()).unwrap_or_default()
}

/// A non-empty query or form value.
fn given<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    field(pairs, name).map(str::trim).filter(|v| !v.is_empty())
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

fn db_failed(ctx: &Ctx, error: DbError) -> HttpResponse {
    tracing::warn!(%error, "dashboard: a database query failed");
    pages::message(
        StatusCode::SERVICE_UNAVAILABLE,
        &ctx.base,
        "Database unavailable",
        "The database did not answer; see the server log.",
    )
}

async fn to_overview(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    see_other(&format!("{}/", base_of(&req, &state.dashboard)))
}

async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/css; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(STYLESHEET)
}

async fn login_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let base = base_of(&req, &state.dashboard);
    if state.admin_token.is_none() {
        return authenticate(&req, &state)
            .err()
            .unwrap_or_else(|| see_other(&base));
    }
    pages::login(&base, None, StatusCode::OK)
}

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let base = base_of(&req, &state.dashboard);
    let Some(token) = state.admin_token.clone() else {
        return authenticate(&req, &state)
            .err()
            .unwrap_or_else(|| see_other(&base));
    };
    let client = req
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    if !state.dashboard.may_try(client) {
        return pages::login(
            &base,
            Some("Too many failed attempts: wait a few minutes."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    if !same_origin(&req) {
        return pages::login(
            &base,
            Some("The form was sent from another site."),
            StatusCode::FORBIDDEN,
        );
    }
    let body = match super::read_body(&req, payload, FORM_MAX_BODY, &state.body).await {
        Ok(body) => body,
        Err(e) => return pages::login(&base, Some(&e.to_string()), StatusCode::BAD_REQUEST),
    };
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let given = field(&form, "token").unwrap_or_default().trim();
    if given.is_empty() || !token_matches(&token, given) {
        state.dashboard.record_failure(client);
        tracing::info!(%client, "dashboard: failed sign-in");
        return pages::login(&base, Some("Wrong token."), StatusCode::UNAUTHORIZED);
    }
    let (session, _) = state.dashboard.open_session();
    let secure = if over_https(&req) { "; Secure" } else { "" };
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("{base}/")))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::SET_COOKIE,
            format!(
                "{SESSION_COOKIE}={session}; Path={base}; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
                SESSION_TTL.as_secs()
            ),
        ))
        .finish()
}

async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    if let Err(refused) = read_form(&req, &state, &ctx, payload).await {
        return refused;
    }
    if let Some(session) = &ctx.session {
        state.dashboard.close_session(session);
    }
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, format!("{}/login", ctx.base)))
        .insert_header((
            header::SET_COOKIE,
            format!(
                "{SESSION_COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Strict",
                ctx.base
            ),
        ))
        .finish()
}

/// What the overview shows, read in one database visit.
pub struct Overview {
    pub now_ms: i64,
    /// The last hour per minute: (minute, source, success, runs).
    pub minutes: Vec<(i64, String, bool, i64)>,
    /// The last 24 hours from `listener_stats`: (interval start, runs, failures).
    pub intervals: Vec<(i64, i64, i64)>,
    pub interval_ms: i64,
    /// Event-log runs after the newest `listener_stats` interval, in buckets of `interval_ms`.
    pub tail: Vec<(i64, String, bool, i64)>,
    pub inbox: Vec<(InboxStatus, i64)>,
    pub oldest_pending_ms: Option<i64>,
    pub health: serde_json::Value,
    /// Late replies since the server started, by outcome.
    pub late_replies: Vec<(String, u64)>,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const DEFAULT_INTERVAL_MS: i64 = 300_000;

async fn overview(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let now = now_ms();
    let read = state
        .outgoing
        .db()
        .run(move |c| {
            let hour_start = (now - HOUR_MS) / 60_000 * 60_000;
            let minutes = tables::event_log::runs_by_bucket(c, hour_start, 60_000)?;
            let day_start = now - DAY_MS;
            let newest = tables::listener_stats::newest_interval(c)?;
            let interval_ms = newest.map_or(DEFAULT_INTERVAL_MS, |(_, len)| len.max(60_000));
            let intervals = tables::listener_stats::stats_by_interval(c, day_start)?;
            let tail_start = newest
                .map_or(day_start, |(start, len)| start + len)
                .max(day_start)
                / interval_ms
                * interval_ms;
            let tail = tables::event_log::runs_by_bucket(c, tail_start, interval_ms)?;
            Ok((
                minutes,
                intervals,
                interval_ms,
                tail,
                tables::inbox::inbox_counts(c)?,
                tables::inbox::oldest_pending_ms(c)?,
            ))
        })
        .await;
    let (minutes, intervals, interval_ms, tail, inbox, oldest_pending_ms) = match read {
        Ok(read) => read,
        Err(e) => return db_failed(&ctx, e),
    };
    let health = super::admin::health_report(&state).await;
    let data = Overview {
        now_ms: now,
        minutes,
        intervals,
        interval_ms,
        tail,
        inbox,
        oldest_pending_ms,
        health,
        late_replies: late_replies(),
    };
    pages::overview(&ctx, &data)
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

/// One listener's row on the listeners page.
pub struct ListenerLine {
    pub view: serde_json::Value,
    pub runs: i64,
    pub failures: i64,
    pub p95_ms: Option<f64>,
    /// Runs and failures per `listener_stats` interval over the last 24 hours.
    pub runs_series: Vec<f64>,
    pub failures_series: Vec<f64>,
}

/// Durations sampled for a listener's 95th percentile.
const P95_SAMPLE: i64 = 1_000;

fn p95(mut durations: Vec<i64>) -> Option<f64> {
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    let rank = (0.95 * durations.len() as f64).ceil() as usize;
    durations
        .get(rank.clamp(1, durations.len()) - 1)
        .map(|us| *us as f64 / 1000.0)
}

/// Per-interval runs and failures over 24 hours, zeros where no row is stored.
fn series(rows: &[(i64, i64, i64, i64)], now: i64, interval_ms: i64) -> (Vec<f64>, Vec<f64>) {
    let interval_ms = interval_ms.max(60_000);
    let first = (now - DAY_MS) / interval_ms * interval_ms;
    let n = usize::try_from(DAY_MS / interval_ms + 1).unwrap_or(0);
    let mut runs = vec![0.0; n];
    let mut failures = vec![0.0; n];
    for (start, r, f, _) in rows {
        if let Ok(i) = usize::try_from((start - first) / interval_ms)
            && i < n
        {
            runs[i] += *r as f64;
            failures[i] += *f as f64;
        }
    }
    (runs, failures)
}

async fn read_listeners(
    state: &AppState,
    names: Vec<String>,
) -> Result<(Vec<ListenerRow>, Vec<ListenerFigures>, i64), DbError> {
    let now = now_ms();
    state
        .outgoing
        .db()
        .run(move |c| {
            let rows = crate::db::tables::listeners::rows(c)?;
            let interval_ms = tables::listener_stats::newest_interval(c)?
                .map_or(DEFAULT_INTERVAL_MS, |(_, len)| len.max(60_000));
            let mut figures = Vec::new();
            for name in names {
                figures.push(ListenerFigures {
                    intervals: tables::listener_stats::listener_intervals(c, &name, now - DAY_MS)?,
                    durations: tables::event_log::recent_durations(
                        c,
                        &name,
                        now - DAY_MS,
                        P95_SAMPLE,
                    )?,
                });
            }
            Ok((rows, figures, interval_ms))
        })
        .await
}

struct ListenerFigures {
    intervals: Vec<(i64, i64, i64, i64)>,
    durations: Vec<i64>,
}

fn listener_line(
    state: &AppState,
    entry: &crate::listeners::Entry,
    rows: &[ListenerRow],
    figures: ListenerFigures,
    interval_ms: i64,
) -> ListenerLine {
    let view = state
        .registry
        .view(entry, rows.iter().find(|r| r.name == entry.name()));
    let (runs_series, failures_series) = series(&figures.intervals, now_ms(), interval_ms);
    ListenerLine {
        view,
        runs: figures.intervals.iter().map(|r| r.1).sum(),
        failures: figures.intervals.iter().map(|r| r.2).sum(),
        p95_ms: p95(figures.durations),
        runs_series,
        failures_series,
    }
}

async fn listeners(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let names: Vec<String> = state
        .registry
        .entries()
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    let (rows, figures, interval_ms) = match read_listeners(&state, names).await {
        Ok(read) => read,
        Err(e) => return db_failed(&ctx, e),
    };
    let lines: Vec<ListenerLine> = state
        .registry
        .entries()
        .iter()
        .zip(figures)
        .map(|(entry, f)| listener_line(&state, entry, &rows, f, interval_ms))
        .collect();
    pages::listeners(&ctx, &lines, query(&req))
}

async fn listener(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let name = path.into_inner();
    let Some(entry) = state.registry.by_name(&name) else {
        return pages::message(
            StatusCode::NOT_FOUND,
            &ctx.base,
            "No such listener",
            &format!("There is no listener named `{name}`."),
        );
    };
    let key = name.clone();
    let history = state
        .outgoing
        .db()
        .run(move |c| crate::db::tables::listeners::history(c, &key, 50))
        .await;
    let read = read_listeners(&state, vec![name]).await;
    let ((rows, mut figures, interval_ms), history) = match (read, history) {
        (Ok(read), Ok(history)) => (read, history),
        (Err(e), _) | (_, Err(e)) => return db_failed(&ctx, e),
    };
    let Some(figures) = figures.pop() else {
        return db_failed(&ctx, DbError::Invalid("no figures".into()));
    };
    let line = listener_line(&state, entry, &rows, figures, interval_ms);
    let definition = entry.live().definition.clone();
    pages::listener(&ctx, &line, &definition, &history, query(&req), None)
}

/// `POST /admin/ui/listeners/{name}` with `action` = `enable`, `disable` or `edit` (and the
/// edited fields): the same change as the admin API's, recorded with source `dashboard`.
async fn change_listener(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let form = match read_form(&req, &state, &ctx, payload).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let name = path.into_inner();
    let Some(entry) = state.registry.by_name(&name) else {
        return pages::message(
            StatusCode::NOT_FOUND,
            &ctx.base,
            "No such listener",
            &format!("There is no listener named `{name}`."),
        );
    };
    let patch = match field(&form, "action") {
        Some("enable") => Ok(Overrides {
            enabled: Some(true),
            ..Overrides::default()
        }),
        Some("disable") => Ok(Overrides {
            enabled: Some(false),
            ..Overrides::default()
        }),
        Some("edit") => edit_patch(&form, &entry.live().definition),
        _ => Err(changes::FieldError::new(
            "action",
            "use enable, disable or edit",
        )),
    };
    let result = match patch {
        Ok(patch) => apply(&state, &name, patch).await,
        Err(e) => Err(Refusal::Invalid(e)),
    };
    let back = format!("{}/ui/listeners/{}", ctx.base, pages::path_segment(&name));
    match result {
        Ok(changed) => {
            let done = if changed.is_empty() {
                "nothing changed".to_string()
            } else {
                format!("changed: {}", changed.join(", "))
            };
            see_other(&format!("{back}?done={}", pages::query_value(&done)))
        }
        Err(Refusal::Invalid(e)) => {
            // Show the form again with the problem, keeping what was typed.
            let line = ListenerLine {
                view: state.registry.view(entry, None),
                runs: 0,
                failures: 0,
                p95_ms: None,
                runs_series: Vec::new(),
                failures_series: Vec::new(),
            };
            let mut response = pages::listener(
                &ctx,
                &line,
                &entry.live().definition,
                &[],
                form,
                Some(&e.to_string()),
            );
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response
        }
        Err(Refusal::Database(e)) => db_failed(&ctx, e),
    }
}

enum Refusal {
    Invalid(changes::FieldError),
    Database(DbError),
}

/// The fields of the edit form that differ from the listener's definition, as the admin
/// API's PATCH body, checked by [`Overrides::parse`].
fn edit_patch(
    form: &[(String, String)],
    current: &crate::listeners::Definition,
) -> Result<Overrides, changes::FieldError> {
    let mut patch = serde_json::Map::new();
    if let Some(description) = field(form, "description")
        && description.trim() != current.description
    {
        patch.insert("description".into(), description.trim().into());
    }
    if let Some(events) = field(form, "events") {
        let list: Vec<String> = events
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect();
        if list != current.events {
            patch.insert("events".into(), list.into());
        }
    }
    let scope = serde_json::to_value(&current.scope).unwrap_or_default();
    for key in ["realms", "streams", "users"] {
        let Some(text) = field(form, key) else {
            continue;
        };
        let text = if text.trim().is_empty() { "[]" } else { text };
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| changes::FieldError::new(key, format!("not JSON: {e}")))?;
        let unchanged = scope.get(key).is_some_and(|v| *v == value)
            || (scope.get(key).is_none() && value == serde_json::json!([]));
        if !unchanged {
            patch.insert(key.into(), value);
        }
    }
    if let Some(text) = given(form, "settings") {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| changes::FieldError::new("settings", format!("not JSON: {e}")))?;
        patch.insert("settings".into(), value);
    }
    if patch.is_empty() {
        return Ok(Overrides::default());
    }
    Overrides::parse(&serde_json::Value::Object(patch))
}

/// Applies a change through [`changes::change`] (source `dashboard`), then to this server's
/// registry; returns the fields that changed.
async fn apply(state: &AppState, name: &str, patch: Overrides) -> Result<Vec<String>, Refusal> {
    if patch == Overrides::default() {
        return Ok(Vec::new());
    }
    let history =
        match super::admin::apply_change(state, name, patch, changes::source::DASHBOARD).await {
            Ok((_, history)) => history,
            Err(ChangeError::NotFound(name)) => {
                return Err(Refusal::Invalid(changes::FieldError::new(
                    "",
                    format!("no listener named `{name}`"),
                )));
            }
            Err(ChangeError::Invalid(e)) => return Err(Refusal::Invalid(e)),
            Err(ChangeError::Database(e)) => return Err(Refusal::Database(e)),
        };
    Ok(history.into_iter().map(|h| h.field).collect())
}

/// The event-log page's filters, from the query string.
pub struct EventsQuery {
    pub filter: tables::event_log::EventFilter,
    pub since: Option<String>,
    pub until: Option<String>,
    pub before: Option<i64>,
}

/// A page of the event log and where the next one starts.
pub struct EventsPage {
    pub rows: Vec<crate::db::tables::event_log::EventLogRow>,
    /// The ids looked at: `(low, high)`.
    pub searched: Option<(i64, i64)>,
    /// `before=` of the next (older) page.
    pub older: Option<i64>,
}

fn events_query(pairs: &[(String, String)]) -> EventsQuery {
    EventsQuery {
        filter: tables::event_log::EventFilter {
            listener: given(pairs, "listener").map(str::to_string),
            realm: given(pairs, "realm").map(str::to_string),
            event_type: given(pairs, "type").map(str::to_string),
            success: match given(pairs, "success") {
                Some("true" | "ok" | "1") => Some(true),
                Some("false" | "failed" | "0") => Some(false),
                _ => None,
            },
        },
        since: given(pairs, "since").map(str::to_string),
        until: given(pairs, "until").map(str::to_string),
        before: given(pairs, "before").and_then(|b| b.parse().ok()),
    }
}

async fn events(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let pairs = query(&req);
    let q = events_query(&pairs);
    let names: Vec<String> = state
        .registry
        .entries()
        .iter()
        .map(|e| e.name().to_string())
        .collect();
    let times = q
        .since
        .as_deref()
        .map(pages::parse_time)
        .transpose()
        .and_then(|since| {
            Ok((
                since,
                q.until.as_deref().map(pages::parse_time).transpose()?,
            ))
        });
    let (since, until) = match times {
        Ok(times) => times,
        Err(problem) => {
            let empty = EventsPage {
                rows: Vec::new(),
                searched: None,
                older: None,
            };
            let mut response = pages::events(&ctx, &names, &q, &empty, Some(&problem));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            return response;
        }
    };
    let filter = q.filter.clone();
    let before = q.before;
    let read = state
        .outgoing
        .db()
        .run(move |c| {
            let Some(newest) = tables::event_log::newest_event_id(c)? else {
                return Ok(EventsPage {
                    rows: Vec::new(),
                    searched: None,
                    older: None,
                });
            };
            let mut high = before.map_or(newest, |b| b.saturating_sub(1).min(newest));
            if let Some(until) = until {
                high = high.min(tables::event_log::id_at_or_before(c, until)?.unwrap_or(-1));
            }
            let mut floor = tables::event_log::oldest_event_id(c)?.unwrap_or(0);
            if let Some(since) = since {
                floor = floor.max(tables::event_log::id_at_or_after(c, since)?.unwrap_or(i64::MAX));
            }
            if high < floor {
                return Ok(EventsPage {
                    rows: Vec::new(),
                    searched: None,
                    older: None,
                });
            }
            let low = floor.max(high.saturating_sub(EVENT_WINDOW - 1));
            let mut rows =
                tables::event_log::event_window(c, &filter, low, high, EVENTS_PER_PAGE + 1)?;
            let older = if rows.len() > EVENTS_PER_PAGE as usize {
                rows.truncate(EVENTS_PER_PAGE as usize);
                rows.last().map(|r| r.id)
            } else if low > floor {
                Some(low)
            } else {
                None
            };
            let searched_low = if rows.len() == EVENTS_PER_PAGE as usize {
                rows.last().map_or(low, |r| r.id)
            } else {
                low
            };
            Ok(EventsPage {
                rows,
                searched: Some((searched_low, high)),
                older,
            })
        })
        .await;
    match read {
        Ok(page) => pages::events(&ctx, &names, &q, &page, None),
        Err(e) => db_failed(&ctx, e),
    }
}

/// Runs of the same event looked for around one row.
const SAME_EVENT_SPAN: i64 = 5_000;

async fn event(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let Ok(id) = path.into_inner().parse::<i64>() else {
        return pages::message(
            StatusCode::NOT_FOUND,
            &ctx.base,
            "No such event",
            "Event-log ids are numbers.",
        );
    };
    let read = state
        .outgoing
        .db()
        .run(move |c| {
            let Some(row) = tables::event_log::event_by_id(c, id)? else {
                return Ok(None);
            };
            let (related, inbox) = match &row.event_id {
                Some(event_id) => (
                    tables::event_log::runs_of_event(c, event_id, row.id, SAME_EVENT_SPAN)?,
                    tables::inbox::inbox_entry(c, event_id)?,
                ),
                None => (Vec::new(), None),
            };
            Ok(Some((row, related, inbox)))
        })
        .await;
    match read {
        Ok(Some((row, related, inbox))) => pages::event(&ctx, &row, &related, inbox.as_ref()),
        Ok(None) => pages::message(
            StatusCode::NOT_FOUND,
            &ctx.base,
            "No such event",
            &format!("The event log has no row {id} (it may have been cleaned up)."),
        ),
        Err(e) => db_failed(&ctx, e),
    }
}

/// The replayable status a request names; dead by default.
fn status_of(pairs: &[(String, String)]) -> InboxStatus {
    let wanted = given(pairs, "status");
    InboxStatus::REPLAYABLE
        .into_iter()
        .find(|s| Some(s.as_str()) == wanted)
        .unwrap_or(InboxStatus::Dead)
}

async fn dead_letters(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let pairs = query(&req);
    let status = status_of(&pairs);
    let read = state
        .outgoing
        .db()
        .run(move |c| {
            Ok((
                tables::inbox::inbox_counts(c)?,
                tables::inbox::inbox_entries(c, &[status], DEAD_LETTERS_SHOWN)?,
            ))
        })
        .await;
    match read {
        Ok((counts, rows)) => pages::dead_letters(&ctx, status, &counts, &rows, &pairs),
        Err(e) => db_failed(&ctx, e),
    }
}

/// `GET …/dead-letters/replay?status=&id=` (or `all=1`): asks for confirmation.
async fn confirm_replay(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let pairs = query(&req);
    let status = status_of(&pairs);
    let id = given(&pairs, "id").map(str::to_string);
    if id.is_none() && given(&pairs, "all") != Some("1") {
        return see_other(&ctx.url(&format!("/ui/dead-letters?status={status}")));
    }
    let count = match &id {
        Some(id) => {
            let key = id.clone();
            state
                .outgoing
                .db()
                .run(move |c| tables::inbox::inbox_has(c, &key, &[status]).map(i64::from))
                .await
        }
        None => {
            state
                .outgoing
                .db()
                .run(move |c| {
                    Ok(tables::inbox::inbox_counts(c)?
                        .into_iter()
                        .find(|(s, _)| *s == status)
                        .map_or(0, |(_, n)| n))
                })
                .await
        }
    };
    match count {
        Ok(count) => pages::confirm_replay(&ctx, status.as_str(), id.as_deref(), count),
        Err(e) => db_failed(&ctx, e),
    }
}

/// `POST …/dead-letters/replay` with `status` and `id` or `all=1`: queues the events again.
async fn replay(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let ctx = match authenticate(&req, &state) {
        Ok(ctx) => ctx,
        Err(refused) => return refused,
    };
    let form = match read_form(&req, &state, &ctx, payload).await {
        Ok(form) => form,
        Err(refused) => return refused,
    };
    let status = status_of(&form);
    let ids: Vec<String> = form
        .iter()
        .filter(|(k, v)| k == "id" && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_string())
        .collect();
    let all = given(&form, "all") == Some("1");
    if ids.is_empty() != all {
        return pages::message(
            StatusCode::BAD_REQUEST,
            &ctx.base,
            "Nothing to replay",
            "Give either event ids or all=1.",
        );
    }
    let requeued = state
        .outgoing
        .db()
        .run(move |c| tables::inbox_work::requeue(c, &[status], (!all).then_some(ids.as_slice())))
        .await;
    match requeued {
        Ok(n) => {
            tracing::info!(
                requeued = n,
                status = status.as_str(),
                "dead letters replayed through the dashboard"
            );
            see_other(&ctx.url(&format!("/ui/dead-letters?status={status}&replayed={n}")))
        }
        Err(e) => db_failed(&ctx, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_plain_paths_only() {
        assert_eq!(clean_prefix("/listeners/"), Some("/listeners"));
        assert_eq!(clean_prefix("/a/b-c_d.e"), Some("/a/b-c_d.e"));
        assert_eq!(clean_prefix("/"), None);
        assert_eq!(clean_prefix("listeners"), None);
        assert_eq!(clean_prefix("//evil.example"), None);
        assert_eq!(clean_prefix("/a/../b"), None);
        assert_eq!(clean_prefix("/a\"><script>"), None);
    }

    #[test]
    fn sessions_expire_and_close() {
        let dashboard = Dashboard::new(None);
        let (token, csrf) = dashboard.open_session();
        assert_eq!(dashboard.session(&token), Some(csrf));
        assert_eq!(dashboard.session("nope"), None);
        dashboard.close_session(&token);
        assert_eq!(dashboard.session(&token), None);
    }

    #[test]
    fn failed_sign_ins_are_limited_per_address() {
        let dashboard = Dashboard::new(None);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        for _ in 0..LOGIN_FAILURES {
            assert!(dashboard.may_try(a));
            dashboard.record_failure(a);
        }
        assert!(!dashboard.may_try(a));
        assert!(dashboard.may_try(b));
    }

    #[test]
    fn p95_is_nearest_rank() {
        let values: Vec<i64> = (1..=100).map(|v| v * 1000).collect();
        assert_eq!(p95(values), Some(95.0));
        assert_eq!(p95(Vec::new()), None);
    }
}
