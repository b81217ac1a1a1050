//! Who may use the dashboard: sign-in with an admin token (failed attempts slowed down per
//! client address, see [`super::throttle`]) opening an in-memory session behind a cookie that
//! knows whose token it was, sign-out, the bearer token as an alternative, and the checks on
//! every form post (session CSRF token, same origin). Also the one-time notice a form leaves
//! in the session for the page it redirects to, and the path prefix the browser sees
//! (`admin.public_path` or `X-Forwarded-Prefix`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::error::InternalError;
use actix_web::http::{StatusCode, header};
use actix_web::{FromRequest, HttpRequest, HttpResponse, web};
use rand::Rng;
use subtle::ConstantTimeEq;

use super::throttle::{self, Failures};
use super::{Ctx, field, pages, see_other};
use crate::config::ProxyRange;
use crate::http::identity::client_address;
use crate::http::{Admin, AppState, read_body};

/// Name of the session cookie.
const SESSION_COOKIE: &str = "zl_admin_session";
/// How long a session lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 1_000;
/// Largest form body.
const FORM_MAX_BODY: usize = 64 * 1024;

/// The dashboard's own state: sessions and failed sign-ins, in memory.
pub struct Dashboard {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Failures,
    /// `admin.public_path`: the prefix in front of `/admin` as the browser sees it.
    public_path: Option<String>,
    /// `admin.trusted_proxies`: peers whose forwarded-for headers name the client.
    trusted_proxies: Vec<ProxyRange>,
}

struct Session {
    csrf: String,
    expires: Instant,
    /// The name of the admin token that opened it.
    admin: String,
    /// The notice of the last form, shown once by the page it redirected to.
    notice: Option<String>,
}

impl Dashboard {
    pub fn new(public_path: Option<String>, trusted_proxies: Vec<ProxyRange>) -> Dashboard {
        Dashboard {
            sessions: Mutex::new(HashMap::new()),
            failures: Failures::new(),
            public_path: public_path
                .as_deref()
                .and_then(clean_prefix)
                .map(str::to_string),
            trusted_proxies,
        }
    }

    /// Opens a session for the admin named `admin`: `(cookie token, CSRF token)`.
    fn open_session(&self, admin: &str) -> (String, String) {
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
                admin: admin.to_string(),
                notice: None,
            },
        );
        (token, csrf)
    }

    /// The CSRF token and the admin's name of a live session.
    fn session(&self, token: &str) -> Option<(String, String)> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match sessions.get(token) {
            Some(s) if s.expires > Instant::now() => Some((s.csrf.clone(), s.admin.clone())),
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

    /// Leaves `notice` for the next page the session's browser loads (after a form's redirect).
    pub(super) fn set_notice(&self, ctx: &Ctx, notice: String) {
        let Some(token) = &ctx.session else {
            return;
        };
        if let Some(session) = self
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(token)
        {
            session.notice = Some(notice);
        }
    }

    /// The notice a form left for this page, once; `None` for the bearer token.
    pub(super) fn take_notice(&self, ctx: &Ctx) -> Option<String> {
        let token = ctx.session.as_ref()?;
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(token)
            .and_then(|s| s.notice.take())
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

/// Who is asking: the bearer token or a session, with the admin's name; otherwise the answer
/// to give (404 while the admin API is off, 303 to the sign-in form for a page, 401 for a form
/// post).
pub(super) fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Ctx, HttpResponse> {
    let base = base_of(req, &state.dashboard);
    if state.admin.is_off() {
        return Err(pages::message(
            StatusCode::NOT_FOUND,
            &base,
            "Dashboard off",
            "The admin API and dashboard are off: set [admin] token or token_file, or [admin.tokens].",
        ));
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer
        && let Some(admin) = state.admin.identify(given.trim())
    {
        return Ok(Ctx {
            base,
            csrf: None,
            session: None,
            admin: Admin::new(admin),
        });
    }
    if let Some(session) = cookie(req, SESSION_COOKIE)
        && let Some((csrf, admin)) = state.dashboard.session(session)
    {
        return Ok(Ctx {
            base,
            csrf: Some(csrf),
            session: Some(session.to_string()),
            admin: Admin::new(admin),
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
    if state.admin.is_off() {
        return authenticate(&req, &state)
            .err()
            .unwrap_or_else(|| see_other(&base));
    }
    pages::login(&base, None, StatusCode::OK)
}

/// `POST /admin/login` with `token`: the token is checked first, so the right one always
/// signs in (whoever failed before, from whatever address); a wrong one is counted for the
/// client address and, past a few, answered slowly.
pub(super) async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    payload: web::Payload,
) -> HttpResponse {
    let base = base_of(&req, &state.dashboard);
    if state.admin.is_off() {
        return authenticate(&req, &state)
            .err()
            .unwrap_or_else(|| see_other(&base));
    }
    let client = client_address(&req, &state.dashboard.trusted_proxies);
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
    let Some(admin) = state.admin.identify(given) else {
        let failures = state.dashboard.failures.record(client, Instant::now());
        tracing::info!(%client, failures, "dashboard: failed sign-in");
        if failures <= throttle::FREE_FAILURES {
            return pages::login(&base, Some("Wrong token."), StatusCode::UNAUTHORIZED);
        }
        let wait = throttle::delay(failures);
        if let Some(_slot) = state.dashboard.failures.wait_slot() {
            tokio::time::sleep(wait).await;
        }
        return pages::login(
            &base,
            Some(&format!(
                "Wrong token. Too many failed attempts from your address: each further one is \
                 answered after up to {} s.",
                wait.as_secs()
            )),
            StatusCode::TOO_MANY_REQUESTS,
        );
    };
    tracing::info!(admin, %client, "dashboard: signed in");
    let (session, _) = state.dashboard.open_session(admin);
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
    fn sessions_know_their_admin_expire_and_close() {
        let dashboard = Dashboard::new(None, Vec::new());
        let (token, csrf) = dashboard.open_session("alice");
        assert_eq!(dashboard.session(&token), Some((csrf, "alice".to_string())));
        assert_eq!(dashboard.session("nope"), None);
        dashboard.close_session(&token);
        assert_eq!(dashboard.session(&token), None);
    }

    #[test]
    fn a_notice_is_shown_once_and_only_to_its_session() {
        let dashboard = Dashboard::new(None, Vec::new());
        let (token, _) = dashboard.open_session("alice");
        let ctx = |session: Option<&str>| Ctx {
            base: "/admin".into(),
            csrf: None,
            session: session.map(str::to_string),
            admin: Admin::new("alice"),
        };
        dashboard.set_notice(&ctx(Some(&token)), "changed: enabled".into());
        assert_eq!(dashboard.take_notice(&ctx(None)), None);
        assert_eq!(dashboard.take_notice(&ctx(Some("other"))), None);
        assert_eq!(
            dashboard.take_notice(&ctx(Some(&token))).as_deref(),
            Some("changed: enabled")
        );
        assert_eq!(dashboard.take_notice(&ctx(Some(&token))), None);
    }
}
