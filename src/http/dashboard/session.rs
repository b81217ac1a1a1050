//! Who may use the dashboard: sign-in with the admin token (failed attempts limited per
//! client address) opening an in-memory session behind a cookie, sign-out, the bearer token
//! as an alternative, and the checks on every form post (session CSRF token, same origin).
//! Also the path prefix the browser sees (`admin.public_path` or `X-Forwarded-Prefix`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::error::InternalError;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use rand::Rng;
use subtle::ConstantTimeEq;

use super::{Ctx, field, pages, see_other};
use crate::http::{AppState, read_body};
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

pub(super) fn base_of(req: &HttpRequest, dashboard: &Dashboard) -> String {
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
pub(super) fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Ctx, HttpResponse> {
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

/// Every page's route takes a [`Ctx`] as its first argument: who is asking is settled before
/// anything else of the request (its body included) is looked at, and a refusal from
/// [`authenticate`] is the answer.
impl FromRequest for Ctx {
    type Error = actix_web::Error;
    type Future = Ready<Result<Ctx, actix_web::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let ctx = match req.app_data::<web::Data<AppState>>() {
            Some(state) => authenticate(req, state),
            None => Err(HttpResponse::InternalServerError().finish()),
        };
        ready(ctx.map_err(|refused| InternalError::from_response("refused", refused).into()))
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
pub(super) async fn read_form(
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
    let body = match read_body(req, payload, FORM_MAX_BODY, &state.body).await {
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

pub(super) async fn login_form(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let base = base_of(&req, &state.dashboard);
    if state.admin_token.is_none() {
        return authenticate(&req, &state)
            .err()
            .unwrap_or_else(|| see_other(&base));
    }
    pages::login(&base, None, StatusCode::OK)
}

pub(super) async fn login(
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
    let body = match read_body(&req, payload, FORM_MAX_BODY, &state.body).await {
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

pub(super) async fn logout(
    ctx: Ctx,
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
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
}
