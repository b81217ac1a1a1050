//! The admin dashboard: every page and form refuses without a session (303 to the sign-in
//! form, 401 for a post), forms refuse without the CSRF token or from another origin, links
//! follow the proxy's path prefix; and, in headless Chromium driven through chromedriver
//! (WebDriver), an operator signs in, reads the overview, disables and re-enables a listener,
//! replays a dead letter and signs out. The browser test saves a screenshot of each page to
//! `docs/screenshots/`; it runs when `ZULIP_LISTENERS_TEST_BROWSER` is set (`.ci/run` sets it
//! after installing Debian's `chromium` and `chromium-driver`).

use std::time::Duration;

use crate::support::{Backend, TestDatabase, TestServer, start_server};
use zulip_listeners::clock::now_ms;
use zulip_listeners::db::tables;
use zulip_listeners::db::tables::{
    event_log::EventLogRow,
    inbox::{InboxStatus, NewInboxRow},
};

const ADMIN: &str = "dashboard-test-admin-token-0123456789";
const BROWSER_ENV: &str = "ZULIP_LISTENERS_TEST_BROWSER";

fn config() -> String {
    format!(
        r#"[admin]
token = "{ADMIN}"
[bots.helper]
email = "{}"
token = "{}"
handlers = ["alerts-eng", "pinger"]
[listeners.alerts-eng]
handler = "keyword_alerts"
description = "Deploy talk in #engineering"
events = ["message"]
streams = ["Engineering"]
[listeners.alerts-eng.settings]
rules = [{{ name = "deploy", pattern = "(?i)deploy", webhook = "http://127.0.0.1:9/eng" }}]
[listeners.pinger]
handler = "command_bot"
description = "Answers ping and help"
"#,
        crate::support::BOT_EMAIL,
        crate::support::TOKEN
    )
}

/// Event-log rows over the last two hours, some failed, and two dead letters.
async fn seed(t: &TestServer) {
    t.query(|c| {
        let now = now_ms();
        let rows: Vec<EventLogRow> = (0..600)
            .map(|i| EventLogRow {
                id: 0,
                listener: if i % 3 == 0 { "pinger" } else { "alerts-eng" }.into(),
                source: if i % 2 == 0 { "outgoing" } else { "forwarder" }.into(),
                event_type: "message".into(),
                bot: Some("helper".into()),
                realm: Some("zulip".into()),
                realm_id: Some(2),
                user_id: Some(10 + i % 7),
                message_id: Some(1000 + i),
                event_id: Some(format!("ev-{i}")),
                duration_us: 300 + (i * 37) % 5000,
                success: i % 11 != 0,
                error: (i % 11 == 0).then(|| "webhook answered 502 Bad Gateway".to_string()),
                created_at_ms: now - 7_200_000 + i * 12_000,
            })
            .collect();
        let refs: Vec<&EventLogRow> = rows.iter().collect();
        tables::event_log::insert_event_logs(c, &refs).expect("event log rows");
        zulip_listeners::db::tables::listener_stats::aggregate_stats(c, 300_000, now)
            .expect("stats");
        let dead: Vec<NewInboxRow> = (0..2)
            .map(|i| NewInboxRow {
                event_id: format!("dead-{i}"),
                webhook_id: format!("msg_dead{i}"),
                realm_id: 2,
                realm: "zulip".into(),
                user_id: Some(10),
                event_type: "reaction".into(),
                op: Some("add".into()),
                payload: "{}".into(),
                status: InboxStatus::Dead,
                attempts: 5,
                next_attempt_at_ms: 0,
                claimed_until_ms: 0,
                last_error: Some("alerts-eng: webhook answered 502 Bad Gateway".into()),
                emitted_at_ms: Some(now - 60_000),
                received_at_ms: now - 60_000 + i,
                updated_at_ms: now,
            })
            .collect();
        tables::inbox::insert_inbox(c, &dead).expect("dead letters");
    })
    .await;
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in with the form; returns the session cookie (`name=value`) and the CSRF token
/// read from a page.
async fn sign_in(t: &TestServer, http: &reqwest::Client) -> (String, String) {
    let answer = http
        .post(format!("{}/admin/login", t.base))
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(answer.status(), 303);
    let set_cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .expect("a session cookie")
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain http: {set_cookie}");
    let cookie = set_cookie
        .split(';')
        .next()
        .expect("name=value")
        .to_string();
    let page = http
        .get(format!("{}/admin/ui/listeners", t.base))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("listeners page")
        .text()
        .await
        .expect("body");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_string();
    (cookie, csrf)
}

const PAGES: &[&str] = &[
    "/admin/",
    "/admin/ui/listeners",
    "/admin/ui/listeners/pinger",
    "/admin/ui/events",
    "/admin/ui/events?listener=pinger&success=false",
    "/admin/ui/events/1",
    "/admin/ui/dead-letters",
    "/admin/ui/dead-letters?status=parked",
    "/admin/ui/dead-letters/replay?status=dead&id=dead-0",
];

const FORMS: &[(&str, &str)] = &[
    ("/admin/ui/listeners/pinger", "action=disable"),
    ("/admin/ui/dead-letters/replay", "status=dead&all=1"),
    ("/admin/logout", ""),
];

#[tokio::test]
async fn every_page_and_form_refuses_without_a_session() {
    for backend in crate::support::backends() {
        refusals_and_forms(backend).await;
    }
}

async fn refusals_and_forms(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = start_server(&db, &config()).await;
    seed(&t).await;
    let http = no_redirects();

    for page in PAGES {
        let answer = http
            .get(format!("{}{page}", t.base))
            .send()
            .await
            .expect("page");
        assert_eq!(answer.status(), 303, "{page} without a session");
        assert_eq!(
            answer
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok()),
            Some("/admin/login"),
            "{page}"
        );
        let body = answer.text().await.expect("body");
        assert!(!body.contains("alerts-eng"), "{page} leaks: {body}");
        // A made-up or stale cookie is no session either.
        let answer = http
            .get(format!("{}{page}", t.base))
            .header("cookie", "zl_admin_session=0123abcd")
            .send()
            .await
            .expect("page");
        assert_eq!(answer.status(), 303, "{page} with a made-up session");
        // The wrong bearer token neither.
        let answer = http
            .get(format!("{}{page}", t.base))
            .bearer_auth("wrong-token-wrong-token-wrong")
            .send()
            .await
            .expect("page");
        assert_eq!(answer.status(), 303, "{page} with a wrong bearer token");
    }
    for (form, body) in FORMS {
        let answer = http
            .post(format!("{}{form}", t.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(*body)
            .send()
            .await
            .expect("form");
        assert_eq!(answer.status(), 401, "{form} without a session");
    }
    // Nothing was changed or replayed.
    let (still_enabled, dead) = t
        .query(|c| {
            let rows = zulip_listeners::db::tables::listeners::rows(c).expect("rows");
            let enabled = rows
                .iter()
                .find(|r| r.name == "pinger")
                .is_none_or(|r| r.enabled);
            let dead = tables::inbox::inbox_entries(c, &[InboxStatus::Dead], 10)
                .expect("inbox")
                .len();
            (enabled, dead)
        })
        .await;
    assert!(still_enabled);
    assert_eq!(dead, 2);

    // With the bearer token every page answers.
    for page in PAGES {
        let answer = http
            .get(format!("{}{page}", t.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("page");
        assert_eq!(answer.status(), 200, "{page} with the bearer token");
        assert_eq!(
            answer
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/html; charset=utf-8")
        );
        let csp = answer
            .headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(csp.contains("default-src 'none'"), "{csp}");
    }
    // The JSON API keeps the bearer token only: a session cookie is not enough.
    let (cookie, csrf) = sign_in(&t, &http).await;
    let api = http
        .get(format!("{}/admin/listeners", t.base))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("api");
    assert_eq!(api.status(), 401);

    // A form post with the session but without (or with a wrong) CSRF token is refused.
    for body in ["action=disable", "action=disable&csrf=0000"] {
        let answer = http
            .post(format!("{}/admin/ui/listeners/pinger", t.base))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("form");
        assert_eq!(answer.status(), 403, "{body}");
    }
    // …and so is one from another origin, even with the token.
    let answer = http
        .post(format!("{}/admin/ui/listeners/pinger", t.base))
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .form(&[("action", "disable"), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("form");
    assert_eq!(answer.status(), 403);
    assert!(
        enabled(&t, "pinger").await,
        "no refused form changed anything"
    );
    // With both, the change is made and recorded as coming from the dashboard.
    let answer = http
        .post(format!("{}/admin/ui/listeners/pinger", t.base))
        .header("cookie", &cookie)
        .form(&[("action", "disable"), ("csrf", csrf.as_str())])
        .send()
        .await
        .expect("form");
    assert_eq!(answer.status(), 303);
    assert!(!enabled(&t, "pinger").await);
    let history = t
        .query(|c| {
            zulip_listeners::db::tables::listeners::history(c, "pinger", 5).expect("history")
        })
        .await;
    assert_eq!(
        history.first().map(|h| h.source.as_str()),
        Some("dashboard")
    );

    // An edit changes only what differs from the definition, through the admin API's code.
    let answer = http
        .post(format!("{}/admin/ui/listeners/alerts-eng", t.base))
        .header("cookie", &cookie)
        .form(&[
            ("action", "edit"),
            ("csrf", csrf.as_str()),
            ("description", "Deploys, all realms but one"),
            ("events", "message"),
            ("realms", "[2]"),
            ("streams", "[\"Engineering\"]"),
            ("users", ""),
            ("settings", ""),
        ])
        .send()
        .await
        .expect("form");
    assert_eq!(answer.status(), 303);
    let location = answer
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        location.contains("changed%3A+description%2C+realms")
            || location.contains("changed%3A+realms%2C+description"),
        "{location}"
    );
    let view = t
        .send(
            t.http
                .get(format!("{}/admin/listeners/alerts-eng", t.base))
                .bearer_auth(ADMIN),
        )
        .await
        .json;
    assert_eq!(view["realms"], serde_json::json!([2]));
    assert_eq!(view["description"], "Deploys, all realms but one");
    assert_eq!(view["streams"], serde_json::json!(["Engineering"]));
    let sources: Vec<String> = view["history"]
        .as_array()
        .map(|h| h.iter().map(|r| r["source"].to_string()).collect())
        .unwrap_or_default();
    assert!(sources.len() >= 2, "{view}");
    assert!(sources.iter().all(|s| s == "\"dashboard\""), "{sources:?}");

    // An invalid edit names the field and changes nothing.
    let answer = http
        .post(format!("{}/admin/ui/listeners/alerts-eng", t.base))
        .header("cookie", &cookie)
        .form(&[
            ("action", "edit"),
            ("csrf", csrf.as_str()),
            ("realms", "not json"),
        ])
        .send()
        .await
        .expect("form");
    assert_eq!(answer.status(), 400);
    assert!(answer.text().await.expect("body").contains("realms"));

    // Signing out ends the session.
    let answer = http
        .post(format!("{}/admin/logout", t.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("logout");
    assert_eq!(answer.status(), 303);
    let answer = http
        .get(format!("{}/admin/", t.base))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(answer.status(), 303);

    // Wrong tokens: 401, then 429 after five failures from one address.
    for attempt in 0..6 {
        let answer = http
            .post(format!("{}/admin/login", t.base))
            .form(&[("token", "not-the-token")])
            .send()
            .await
            .expect("login");
        let expected = if attempt < 5 { 401 } else { 429 };
        assert_eq!(answer.status().as_u16(), expected, "attempt {attempt}");
        assert!(answer.headers().get("set-cookie").is_none());
    }
    t.stop().await;
}

#[tokio::test]
async fn links_follow_the_proxy_path_prefix_and_https() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start_server(&db, &config()).await;
    let http = no_redirects();
    let answer = http
        .get(format!("{}/admin/ui/events", t.base))
        .header("x-forwarded-prefix", "/zl/")
        .send()
        .await
        .expect("page");
    assert_eq!(
        answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("/zl/admin/login")
    );
    let page = http
        .get(format!("{}/admin/ui/events", t.base))
        .header("x-forwarded-prefix", "/zl")
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    assert!(page.contains("href=\"/zl/admin/ui/style.css\""), "{page}");
    assert!(page.contains("href=\"/zl/admin/ui/listeners\""), "{page}");
    assert!(
        !page.contains("href=\"/admin/"),
        "every link has the prefix: {page}"
    );
    // A prefix that is not a plain path is ignored.
    let page = http
        .get(format!("{}/admin/ui/events", t.base))
        .header("x-forwarded-prefix", "/x\"><script>")
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    assert!(page.contains("href=\"/admin/ui/listeners\""));
    assert!(!page.contains("<script>"));
    // Behind an HTTPS proxy the cookie is Secure, with the prefixed path.
    let answer = http
        .post(format!("{}/admin/login", t.base))
        .header("x-forwarded-prefix", "/zl")
        .header("x-forwarded-proto", "https")
        .form(&[("token", ADMIN)])
        .send()
        .await
        .expect("login");
    assert_eq!(answer.status(), 303);
    let cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("Path=/zl/admin;"), "{cookie}");
    assert_eq!(
        answer
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("/zl/admin/")
    );
    t.stop().await;
}

/// Whether a listener is enabled, as the JSON admin API reports it.
async fn enabled(t: &TestServer, name: &str) -> bool {
    let answer = t
        .send(
            t.http
                .get(format!("{}/admin/listeners/{name}", t.base))
                .bearer_auth(ADMIN),
        )
        .await;
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer.json["enabled"] == true
}

/// A small WebDriver client (W3C protocol over HTTP) for chromedriver.
mod webdriver {
    use serde_json::{Value, json};

    pub struct Browser {
        http: reqwest::Client,
        session: String,
    }

    impl Browser {
        pub async fn start(driver: &str) -> Browser {
            let http = reqwest::Client::new();
            let caps = json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": "/usr/bin/chromium",
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--disable-dev-shm-usage", "--window-size=1280,900",
                             "--hide-scrollbars", "--force-device-scale-factor=1"]
                }
            }}});
            let answer: Value = http
                .post(format!("{driver}/session"))
                .json(&caps)
                .send()
                .await
                .expect("new session")
                .json()
                .await
                .expect("session JSON");
            let session = answer["value"]["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no session: {answer}"))
                .to_string();
            Browser {
                http,
                session: format!("{driver}/session/{session}"),
            }
        }

        async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
            match self.try_call(method, path, body).await {
                Ok(value) => value,
                Err(error) => panic!("webdriver {path}: {error}"),
            }
        }

        /// A WebDriver command; `Err` with WebDriver's error (e.g. no such element while a
        /// page is still loading).
        async fn try_call(
            &self,
            method: reqwest::Method,
            path: &str,
            body: Value,
        ) -> Result<Value, Value> {
            let request = self.http.request(method, format!("{}{path}", self.session));
            let request = if body.is_null() {
                request
            } else {
                request.json(&body)
            };
            let answer: Value = request
                .send()
                .await
                .expect("webdriver call")
                .json()
                .await
                .expect("webdriver JSON");
            if answer["value"]["error"].is_string() {
                return Err(answer["value"].clone());
            }
            Ok(answer["value"].clone())
        }

        /// The text of an element, or `None` while there is none (the page is loading).
        pub async fn try_text(&self, css: &str) -> Option<String> {
            let element = self
                .try_call(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await
                .ok()?;
            let id = element
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)?
                .to_string();
            self.try_call(
                reqwest::Method::GET,
                &format!("/element/{id}/text"),
                Value::Null,
            )
            .await
            .ok()
            .map(|v| v.as_str().unwrap_or_default().to_string())
        }

        pub async fn goto(&self, url: &str) {
            self.call(reqwest::Method::POST, "/url", json!({ "url": url }))
                .await;
        }

        pub async fn url(&self) -> String {
            self.call(reqwest::Method::GET, "/url", Value::Null)
                .await
                .as_str()
                .unwrap_or_default()
                .to_string()
        }

        pub async fn find(&self, css: &str) -> String {
            let element = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    json!({"using": "css selector", "value": css}),
                )
                .await;
            element
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("no element {css}"))
                .to_string()
        }

        pub async fn text(&self, css: &str) -> String {
            let element = self.find(css).await;
            self.call(
                reqwest::Method::GET,
                &format!("/element/{element}/text"),
                Value::Null,
            )
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
        }

        pub async fn click(&self, css: &str) {
            let element = self.find(css).await;
            self.call(
                reqwest::Method::POST,
                &format!("/element/{element}/click"),
                json!({}),
            )
            .await;
        }

        pub async fn type_into(&self, css: &str, text: &str) {
            let element = self.find(css).await;
            self.call(
                reqwest::Method::POST,
                &format!("/element/{element}/value"),
                json!({ "text": text }),
            )
            .await;
        }

        pub async fn resize(&self, width: u32, height: u32) {
            self.call(
                reqwest::Method::POST,
                "/window/rect",
                json!({"width": width, "height": height}),
            )
            .await;
        }

        /// Saves a PNG of the whole page (Chromium's full-page capture through the DevTools
        /// command chromedriver forwards; the viewport alone if that is unavailable).
        pub async fn screenshot(&self, path: &std::path::Path) {
            use base64::Engine as _;
            let full = self
                .http
                .post(format!("{}/goog/cdp/execute", self.session))
                .json(&json!({"cmd": "Page.captureScreenshot",
                              "params": {"captureBeyondViewport": true, "format": "png"}}))
                .send()
                .await
                .ok();
            let mut data = None;
            if let Some(answer) = full
                && let Ok(value) = answer.json::<Value>().await
            {
                data = value["value"]["data"].as_str().map(str::to_string);
            }
            let data = match data {
                Some(data) => data,
                None => self
                    .call(reqwest::Method::GET, "/screenshot", Value::Null)
                    .await
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            };
            let png = base64::engine::general_purpose::STANDARD
                .decode(data)
                .expect("base64 PNG");
            assert!(png.starts_with(b"\x89PNG"), "a PNG");
            std::fs::write(path, png).expect("screenshot written");
        }

        pub async fn quit(self) {
            let _ = self.http.delete(&self.session).send().await;
        }
    }
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts (Debian package chromium-driver)");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let ready = crate::support::eventually(Duration::from_secs(20), async || {
        reqwest::get(format!("{}/status", driver.url))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "chromedriver answers on {}", driver.url);
    driver
}

/// Waits until the text of `css` contains `wanted`.
async fn wait_text(browser: &webdriver::Browser, css: &str, wanted: &str) -> String {
    let mut text = String::new();
    // A click that submits a form navigates: the element may be missing (or stale) until
    // the next page is there.
    for _ in 0..100 {
        if let Some(found) = browser.try_text(css).await {
            text = found;
            if text.contains(wanted) {
                return text;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} never showed {wanted:?}; last: {text:?}")
}

#[tokio::test]
async fn in_a_real_browser() {
    if std::env::var(BROWSER_ENV).is_err() {
        eprintln!(
            "note: {BROWSER_ENV} is not set; the browser test of the dashboard is skipped \
             (install Debian's chromium and chromium-driver, then set it)"
        );
        return;
    }
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let db = TestDatabase::new(Backend::Sqlite);
    let t = start_server(&db, &config()).await;
    seed(&t).await;
    let driver = start_driver().await;
    let browser = webdriver::Browser::start(&driver.url).await;
    let base = &t.base;

    // Without a session the browser lands on the sign-in form.
    browser.goto(&format!("{base}/admin/")).await;
    assert!(browser.url().await.ends_with("/admin/login"));
    browser.type_into("#token", "wrong-token").await;
    browser.click("#sign-in").await;
    wait_text(&browser, "#login-error", "Wrong token").await;
    browser.screenshot(&shots.join("login.png")).await;
    browser.type_into("#token", ADMIN).await;
    browser.click("#sign-in").await;

    // The overview: health, both charts, inbox, lag, late replies.
    let health = wait_text(&browser, "#health-status", "").await;
    assert_eq!(health, "degraded", "two dead letters make it degraded");
    assert!(browser.text("#health").await.contains("2 dead letter(s)"));
    assert!(browser.text("#inbox").await.contains("dead"));
    browser.find("figure.chart svg").await;
    browser.screenshot(&shots.join("overview.png")).await;

    // Listeners: disable and re-enable one, seeing the state change.
    browser.goto(&format!("{base}/admin/ui/listeners")).await;
    assert!(browser.text("#listener-pinger").await.contains("ok"));
    browser.screenshot(&shots.join("listeners.png")).await;
    browser.click("#disable-pinger").await;
    wait_text(&browser, "#flash", "changed: enabled").await;
    wait_text(&browser, "#state", "disabled").await;
    assert!(!enabled(&t, "pinger").await);
    browser.screenshot(&shots.join("listener.png")).await;
    browser.goto(&format!("{base}/admin/ui/listeners")).await;
    assert!(browser.text("#listener-pinger").await.contains("disabled"));
    browser.click("#enable-pinger").await;
    wait_text(&browser, "#state", "ok").await;
    assert!(enabled(&t, "pinger").await);
    browser.goto(&format!("{base}/admin/ui/listeners")).await;
    assert!(browser.text("#listener-pinger").await.contains("ok"));

    // Events: filtered to failures, then one event's detail with its error.
    browser
        .goto(&format!("{base}/admin/ui/events?success=false"))
        .await;
    let rows = browser.text("#events").await;
    assert!(rows.contains("failed") && !rows.contains(" ok"), "{rows}");
    browser.screenshot(&shots.join("events.png")).await;
    browser.click("#events tbody tr a").await;
    wait_text(&browser, "#error", "502 Bad Gateway").await;
    browser.screenshot(&shots.join("event.png")).await;

    // Dead letters: replay one, with a confirmation.
    browser.goto(&format!("{base}/admin/ui/dead-letters")).await;
    browser.screenshot(&shots.join("dead-letters.png")).await;
    browser.click("#dead-letters a.replay").await;
    wait_text(&browser, "main", "again with fresh retries").await;
    browser.screenshot(&shots.join("replay-confirm.png")).await;
    browser.click("#confirm-replay").await;
    wait_text(&browser, "#flash", "1 event(s) queued again").await;
    // The replayed one started over with fresh attempts (the worker may already have run it
    // again: its empty payload fails at once); the other is untouched.
    let rows = t
        .query(|c| {
            tables::inbox::inbox_entries(
                c,
                &[
                    InboxStatus::Dead,
                    InboxStatus::Pending,
                    InboxStatus::Done,
                    InboxStatus::Parked,
                ],
                10,
            )
            .expect("inbox")
        })
        .await;
    let untouched = rows
        .iter()
        .filter(|r| r.status == InboxStatus::Dead && r.attempts == 5)
        .count();
    assert_eq!(
        untouched, 1,
        "one of the two dead letters was replayed: {rows:?}"
    );

    // On a phone.
    browser.resize(390, 844).await;
    browser.goto(&format!("{base}/admin/")).await;
    browser.find("figure.chart svg").await;
    browser.screenshot(&shots.join("overview-phone.png")).await;
    browser.resize(1280, 900).await;

    // Signing out: every page sends the browser back to the sign-in form.
    browser.click("form.logout button").await;
    // Signed out once the sign-in form is there.
    wait_text(&browser, "#sign-in", "").await;
    for page in PAGES {
        browser.goto(&format!("{base}{page}")).await;
        assert!(
            browser.url().await.ends_with("/admin/login"),
            "{page} after signing out"
        );
    }
    browser.quit().await;
    drop(driver);
    t.stop().await;
}
