//! The admin dashboard: every page and form refuses without a session (303 to the sign-in
//! form, 401 for a post), forms refuse without the CSRF token or from another origin, links
//! follow the proxy's path prefix; and, in headless Chromium driven through chromedriver
//! (WebDriver), an operator signs in, reads the overview, disables and re-enables a listener,
//! replays a dead letter and signs out. The browser test saves a screenshot of each page to
//! `target/screenshots/` (copy them to `docs/screenshots/` to refresh the pictures of docs/admin.md); it runs
//! when `ZULIP_LISTENERS_TEST_BROWSER` is set (`.ci/run` sets it after installing Debian's
//! `chromium` and `chromium-driver`).
//!
//! Long file: every page and form of the dashboard and the browser walk-through that takes the screenshots, each a scenario of its own, read best side by side.

use crate::support::*;
use zulip_listeners::clock::now_ms;
use zulip_listeners::db::event_key::EventKey;
use zulip_listeners::db::tables;
use zulip_listeners::db::tables::{
    event_log::EventLogRow,
    inbox::{InboxStatus, NewInboxRow},
};

const BROWSER_ENV: &str = "ZULIP_LISTENERS_TEST_BROWSER";

/// The bot `helper` with a `keyword_alerts` listener and a `command_bot` one; the dashboard
/// signs in with [`ADMIN`].
fn app(db: &TestDatabase) -> TestApp {
    TestApp::new(db)
        .admin()
        .helper(&["alerts-eng", "pinger"])
        .deploy_alerts(
            "alerts-eng",
            "description = \"Deploy talk in #engineering\"\nevents = [\"message\"]\nstreams = [\"Engineering\"]\n",
            "http://127.0.0.1:9/eng",
        )
        .toml("[listeners.pinger]\nhandler = \"command_bot\"\ndescription = \"Answers ping and help\"\n")
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
                event_key: EventKey::of(&format!("dead-{i}")),
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
                message_id: None,
                erases: Vec::new(),
            })
            .collect();
        tables::inbox::insert_inbox(c, &dead).expect("dead letters");
    })
    .await;
}

/// A response header as text (`None` when absent or not text).
fn header<'a>(answer: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    answer.headers().get(name).and_then(|v| v.to_str().ok())
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
    let set_cookie = header(&answer, "set-cookie")
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
    "/admin/ui/dead-letters/dead-0",
    "/admin/ui/dead-letters/discard?status=dead&id=dead-0",
];

/// The status a request is answered with.
async fn status(request: reqwest::RequestBuilder) -> reqwest::StatusCode {
    request.send().await.expect("request").status()
}

const FORMS: &[(&str, &str)] = &[
    ("/admin/ui/listeners/pinger", "action=disable"),
    ("/admin/ui/dead-letters/replay", "status=dead&all=1"),
    (
        "/admin/ui/dead-letters/discard",
        "status=dead&all=1&reason=gone",
    ),
    ("/admin/logout", ""),
];

backend_test!(async fn every_page_and_form_refuses_without_a_session);
async fn every_page_and_form_refuses_without_a_session(backend: Backend) {
    let db = TestDatabase::new(backend);
    let t = app(&db).start().await;
    seed(&t).await;
    let http = no_redirects();

    for page in PAGES {
        let answer = http
            .get(format!("{}{page}", t.base))
            .send()
            .await
            .expect("page");
        assert_eq!(answer.status(), 303, "{page} without a session");
        assert_eq!(header(&answer, "location"), Some("/admin/login"), "{page}");
        let body = answer.text().await.expect("body");
        assert!(!body.contains("alerts-eng"), "{page} leaks: {body}");
        // A made-up or stale cookie is no session either, and the wrong bearer token neither.
        let url = format!("{}{page}", t.base);
        let made_up = http.get(&url).header("cookie", "zl_admin_session=0123abcd");
        assert_eq!(status(made_up).await, 303, "{page} with a made-up session");
        let wrong = http.get(&url).bearer_auth("wrong-token-wrong-token-wrong");
        assert_eq!(status(wrong).await, 303, "{page} with a wrong bearer token");
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
            header(&answer, "content-type"),
            Some("text/html; charset=utf-8")
        );
        let csp = header(&answer, "content-security-policy")
            .unwrap_or_default()
            .to_string();
        assert!(csp.contains("default-src 'none'"), "{csp}");
    }
    // The JSON API keeps the bearer token only: a session cookie is not enough.
    let (cookie, csrf) = sign_in(&t, &http).await;
    let api = http
        .get(format!("{}/admin/listeners", t.base))
        .header("cookie", &cookie);
    assert_eq!(status(api).await, 401);

    // A form post with the session but without (or with a wrong) CSRF token is refused.
    let pinger = format!("{}/admin/ui/listeners/pinger", t.base);
    for body in ["action=disable", "action=disable&csrf=0000"] {
        let form = http
            .post(&pinger)
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        assert_eq!(status(form).await, 403, "{body}");
    }
    // …and so is one from another origin, even with the token.
    let elsewhere = http
        .post(&pinger)
        .header("cookie", &cookie)
        .header("origin", "https://evil.example")
        .form(&[("action", "disable"), ("csrf", csrf.as_str())]);
    assert_eq!(status(elsewhere).await, 403);
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
        history
            .first()
            .map(|h| (h.source.as_str(), h.actor.as_deref())),
        Some(("dashboard", Some("admin")))
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
    let location = header(&answer, "location").unwrap_or_default().to_string();
    assert_eq!(location, "/admin/ui/listeners/alerts-eng");
    // What changed is said by the page the form leads to (kept in the session, not the URL).
    let shown = http
        .get(format!("{}{location}", t.base))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    assert!(
        shown.contains("changed: description, realms")
            || shown.contains("changed: realms, description"),
        "{shown}"
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
    let logout = http
        .post(format!("{}/admin/logout", t.base))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())]);
    assert_eq!(status(logout).await, 303);
    let after = http
        .get(format!("{}/admin/", t.base))
        .header("cookie", &cookie);
    assert_eq!(status(after).await, 303);

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
    let t = app(&db).start().await;
    let http = no_redirects();
    let answer = http
        .get(format!("{}/admin/ui/events", t.base))
        .header("x-forwarded-prefix", "/zl/")
        .send()
        .await
        .expect("page");
    assert_eq!(header(&answer, "location"), Some("/zl/admin/login"));
    // The events page, signed in with the token, behind a proxy that says `prefix`.
    let events_page = async |prefix: &str| {
        http.get(format!("{}/admin/ui/events", t.base))
            .header("x-forwarded-prefix", prefix)
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("page")
            .text()
            .await
            .expect("body")
    };
    let page = events_page("/zl").await;
    assert!(page.contains("href=\"/zl/admin/ui/style.css\""), "{page}");
    assert!(page.contains("href=\"/zl/admin/ui/listeners\""), "{page}");
    assert!(
        !page.contains("href=\"/admin/"),
        "every link has the prefix: {page}"
    );
    // A prefix that is not a plain path is ignored.
    let page = events_page("/x\"><script>").await;
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
    let cookie = header(&answer, "set-cookie")
        .unwrap_or_default()
        .to_string();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("Path=/zl/admin;"), "{cookie}");
    assert_eq!(header(&answer, "location"), Some("/zl/admin/"));
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

#[tokio::test]
async fn in_a_real_browser() {
    if std::env::var(BROWSER_ENV).is_err() {
        eprintln!(
            "note: {BROWSER_ENV} is not set; the browser test of the dashboard is skipped \
             (install Debian's chromium and chromium-driver, then set it)"
        );
        return;
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        std::path::PathBuf::from,
    );
    let shots = target.join("screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot folder");
    let db = TestDatabase::new(Backend::Sqlite);
    let t = app(&db).start().await;
    seed(&t).await;
    let driver = start_driver().await;
    let browser = Browser::start(&driver.url).await;
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

    // The overview: health, both charts, inbox, lag, late replies; who is signed in.
    let health = wait_text(&browser, "#health-status", "").await;
    assert!(browser.text("#signed-in-as").await.contains("admin"));
    assert_eq!(health, "degraded", "two dead letters make it degraded");
    assert!(browser.text("#health").await.contains("2 dead letter(s)"));
    assert!(browser.text("#inbox").await.contains("dead"));
    browser.find("figure.chart svg").await;
    browser.screenshot(&shots.join("overview.png")).await;

    // Listeners: disable and re-enable one, seeing the state change.
    browser.goto(&format!("{base}/admin/ui/listeners")).await;
    assert!(browser.text("#listener-pinger").await.contains("ok"));
    browser.screenshot(&shots.join("listeners.png")).await;
    browser
        .type_into("#reason-pinger", "noisy until Monday")
        .await;
    browser.click("#disable-pinger").await;
    wait_text(&browser, "#flash", "changed: enabled").await;
    wait_text(&browser, "#state", "disabled").await;
    assert!(!enabled(&t, "pinger").await);
    let shown = browser.text("main").await;
    assert!(
        shown.contains("disabled by admin through the dashboard: noisy until Monday"),
        "{shown}"
    );
    assert!(browser.text("#history").await.contains("admin"));
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
