//! Who did it, and what a stranger cannot make an admin do: every admin action (admin API and
//! dashboard: listener changes, dead-letter replays and discards, sign-ins) records the name
//! of the admin token that made it (`[admin.tokens]`, from the file too; `admin.token` is
//! "admin"); a link can neither fill the dashboard's edit form nor make it show a notice; and
//! behind a proxy the right token signs in whatever other clients failed, each client counted
//! under the address the trusted proxy names.

use std::time::{Duration, Instant};

use crate::support::*;
use zulip_listeners::clock::now_ms;
use zulip_listeners::config::Config;
use zulip_listeners::db::event_key::EventKey;
use zulip_listeners::db::tables;
use zulip_listeners::db::tables::inbox::{InboxStatus, NewInboxRow};

const ALICE: &str = "alice-token-0123456789abcdef";
const BOB: &str = "bob-token-0123456789abcdefghi";

/// A `command_bot` listener `pinger`, the admin token [`ADMIN`], and `extra`.
pub(crate) fn app(db: &TestDatabase, extra: &str) -> TestApp {
    TestApp::new(db)
        .admin()
        .helper(&["pinger"])
        .toml("[listeners.pinger]\nhandler = \"command_bot\"\ndescription = \"Answers ping\"\n")
        .toml(extra)
}

/// Dead letters `dead-0` … `dead-{n-1}`.
pub(crate) async fn seed_dead_letters(t: &TestServer, n: usize) {
    t.query(move |c| {
        let now = now_ms();
        let rows: Vec<NewInboxRow> = (0..n)
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
                last_error: Some("pinger: failed".into()),
                emitted_at_ms: Some(now - 60_000),
                received_at_ms: now - 60_000,
                updated_at_ms: now,
                message_id: None,
                erases: Vec::new(),
            })
            .collect();
        tables::inbox::insert_inbox(c, &rows).expect("dead letters");
    })
    .await;
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Posts the sign-in form with `token` (from the client `forwarded_for`, as a proxy would
/// say); the answer's status.
async fn try_sign_in(t: &TestServer, token: &str, forwarded_for: Option<&str>) -> u16 {
    let mut request = no_redirects()
        .post(t.url("/admin/login"))
        .form(&[("token", token)]);
    if let Some(client) = forwarded_for {
        request = request
            .header("x-forwarded-for", client)
            .header("x-real-ip", client);
    }
    request.send().await.expect("sign-in").status().as_u16()
}

/// Signs in with `token`: the session cookie and the CSRF token of its pages.
async fn sign_in(t: &TestServer, token: &str) -> (String, String) {
    let answer = no_redirects()
        .post(t.url("/admin/login"))
        .form(&[("token", token)])
        .send()
        .await
        .expect("sign in");
    assert_eq!(answer.status(), 303);
    let cookie = answer
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string();
    let page = page(t, &cookie, "/admin/ui/listeners").await;
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_string();
    (cookie, csrf)
}

/// A dashboard page's HTML, with the session `cookie`.
async fn page(t: &TestServer, cookie: &str, path: &str) -> String {
    let answer = no_redirects()
        .get(t.url(path))
        .header("cookie", cookie)
        .send()
        .await
        .expect("page");
    assert_eq!(answer.status(), 200, "{path}");
    answer.text().await.expect("body")
}

/// Posts a dashboard form with the session; the answer's status and `Location`.
async fn post_form(
    t: &TestServer,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (u16, String) {
    let answer = no_redirects()
        .post(t.url(path))
        .header("cookie", cookie)
        .form(form)
        .send()
        .await
        .expect("form");
    let location = answer
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (answer.status().as_u16(), location)
}

/// `(field, actor, source)` of history rows as the admin API lists them.
fn who(rows: &serde_json::Value) -> Vec<(String, String, String)> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("–").to_string();
    rows.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| (text(&r["field"]), text(&r["actor"]), text(&r["source"])))
                .collect()
        })
        .unwrap_or_default()
}

fn triple(field: &str, actor: &str, source: &str) -> (String, String, String) {
    (field.into(), actor.into(), source.into())
}

backend_test!(async fn every_admin_action_records_whose_token_made_it);
async fn every_admin_action_records_whose_token_made_it(backend: Backend) {
    let db = TestDatabase::new(backend);
    let dir = tempfile::tempdir().expect("temporary folder");
    let bob_file = dir.path().join("bob.token");
    std::fs::write(&bob_file, format!("{BOB}\n")).expect("bob's token file");
    let extra = format!(
        "[admin.tokens]\nalice = \"{ALICE}\"\n[admin.token_files]\nbob = {}\n",
        toml::Value::from(bob_file.display().to_string())
    );
    let t = app(&db, &extra).start().await;
    seed_dead_letters(&t, 4).await;
    let json = |builder: reqwest::RequestBuilder, body: &str| {
        builder
            .header("content-type", "application/json")
            .body(body.to_string())
    };

    // Admin API: alice edits, bob (his token read from the file) disables, `admin.token`
    // enables again.
    let patch = t
        .http
        .patch(t.url("/admin/listeners/pinger"))
        .bearer_auth(ALICE);
    let answer = t.send(json(patch, r#"{"description": "by alice"}"#)).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    let disable = t.http.post(t.url("/admin/listeners/pinger/disable"));
    let answer = t.send(disable.bearer_auth(BOB)).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    assert_eq!(
        answer.json["disabled_reason"], "disabled by bob through the admin API",
        "{}",
        answer.json
    );
    let answer = t
        .send(t.admin(reqwest::Method::POST, "/admin/listeners/pinger/enable"))
        .await;
    assert_eq!(answer.status, 200);
    let view = t
        .send(t.admin(reqwest::Method::GET, "/admin/listeners/pinger"))
        .await
        .json;
    assert_eq!(
        who(&view["history"]),
        [
            triple("enabled", "admin", "admin API"),
            triple("enabled", "bob", "admin API"),
            triple("description", "alice", "admin API"),
        ],
        "{view}"
    );

    // Dead letters through the API: alice replays one, bob discards one.
    let replay = t.http.post(t.url("/admin/dead-letters/replay"));
    let answer = t
        .send(json(replay.bearer_auth(ALICE), r#"{"ids": ["dead-0"]}"#))
        .await;
    assert_eq!(answer.json["requeued"], 1, "{}", answer.json);
    let discard = t.http.post(t.url("/admin/dead-letters/discard"));
    let body = r#"{"ids": ["dead-1"], "reason": "webhook retired"}"#;
    let answer = t.send(json(discard.bearer_auth(BOB), body)).await;
    assert_eq!(answer.json["discarded"], 1, "{}", answer.json);
    let shown = t
        .send(t.admin(reqwest::Method::GET, "/admin/dead-letters/dead-1"))
        .await
        .json;
    assert_eq!(
        shown["last_error"], "discarded by bob through the admin API: webhook retired",
        "{shown}"
    );

    // The dashboard: alice signs in; the pages say so; her disable keeps her reason, and her
    // replay and discard are audited under her name (D5).
    let (cookie, csrf) = sign_in(&t, ALICE).await;
    let overview = page(&t, &cookie, "/admin/").await;
    assert!(
        overview.contains("signed in as <strong>alice</strong>"),
        "{overview}"
    );
    let form = [
        ("action", "disable"),
        ("csrf", csrf.as_str()),
        ("reason", "noisy until Monday"),
    ];
    let (status, _) = post_form(&t, &cookie, "/admin/ui/listeners/pinger", &form).await;
    assert_eq!(status, 303);
    let shown = page(&t, &cookie, "/admin/ui/listeners/pinger").await;
    assert!(
        shown.contains("disabled by alice through the dashboard: noisy until Monday"),
        "{shown}"
    );
    let form = [
        ("status", "dead"),
        ("id", "dead-2"),
        ("csrf", csrf.as_str()),
    ];
    let (status, _) = post_form(&t, &cookie, "/admin/ui/dead-letters/replay", &form).await;
    assert_eq!(status, 303);
    let form = [
        ("status", "dead"),
        ("id", "dead-3"),
        ("reason", "duplicate"),
        ("csrf", csrf.as_str()),
    ];
    let (status, _) = post_form(&t, &cookie, "/admin/ui/dead-letters/discard", &form).await;
    assert_eq!(status, 303);
    // The bearer token names its admin on the dashboard too.
    let answer = t
        .http
        .get(t.url("/admin/"))
        .bearer_auth(BOB)
        .send()
        .await
        .expect("page");
    let overview = answer.text().await.expect("body");
    assert!(
        overview.contains("signed in as <strong>bob</strong>"),
        "{overview}"
    );

    let view = t
        .send(t.admin(reqwest::Method::GET, "/admin/listeners/pinger"))
        .await
        .json;
    assert_eq!(
        view["disabled_reason"],
        "disabled by alice through the dashboard: noisy until Monday"
    );
    assert_eq!(
        who(&view["history"]).first(),
        Some(&triple("enabled", "alice", "dashboard")),
        "{view}"
    );
    let audit = t
        .send(t.admin(reqwest::Method::GET, "/admin/dead-letters"))
        .await
        .json;
    assert_eq!(
        who(&audit["replays"]),
        [
            triple("replay", "alice", "dashboard"),
            triple("replay", "alice", "admin API"),
        ],
        "{audit}"
    );
    assert_eq!(
        who(&audit["discards"]),
        [
            triple("discard", "alice", "dashboard"),
            triple("discard", "bob", "admin API"),
        ],
        "{audit}"
    );
    t.stop().await;
}

#[test]
fn admin_tokens_are_checked_with_their_key() {
    let error = |toml: &str| match Config::from_toml(toml) {
        Ok(_) => panic!("accepted: {toml}"),
        Err(e) => e.to_string(),
    };
    let err = error("[admin.tokens]\nalice = \"tiny-token\"\n");
    assert!(
        err.contains("admin.tokens.alice") && err.contains("24") && !err.contains("tiny-token"),
        "{err}"
    );
    let err = error(&format!("[admin.tokens]\n\"al ice\" = \"{ALICE}\"\n"));
    assert!(err.contains("admin.tokens.al ice"), "{err}");
    let err = error(&format!(
        "[admin]\ntoken = \"{ADMIN}\"\n[admin.tokens]\nalice = \"{ADMIN}\"\n"
    ));
    assert!(
        err.contains("admin.tokens.alice") && err.contains("same token as `admin`"),
        "{err}"
    );
    let err = error(&format!(
        "[admin]\ntoken = \"{ADMIN}\"\n[admin.tokens]\nadmin = \"{ALICE}\"\n"
    ));
    assert!(err.contains("admin.tokens.admin"), "{err}");
    let err = error(&format!(
        "[admin.tokens]\nalice = \"{ALICE}\"\n[admin.token_files]\nalice = \"/nonexistent\"\n"
    ));
    assert!(err.contains("admin.token_files.alice"), "{err}");
    let err = error("[admin.token_files]\nbob = \"/nonexistent/bob.token\"\n");
    assert!(err.contains("/nonexistent/bob.token"), "{err}");
    let err = error("[admin]\ntrusted_proxies = [\"nginx\"]\n");
    assert!(
        err.contains("admin.trusted_proxies") && err.contains("nginx"),
        "{err}"
    );

    // Named tokens alone turn the admin API on; loopback proxies are trusted by default.
    let config = Config::from_toml(&format!("[admin.tokens]\nalice = \"{ALICE}\"\n"))
        .expect("named tokens alone");
    let names: Vec<String> = config
        .admin
        .named_tokens()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names, ["alice"]);
    let loopback = config
        .admin
        .trusted_proxies
        .iter()
        .any(|range| range.contains(std::net::IpAddr::from([127, 0, 0, 1])));
    assert!(loopback);
}

#[tokio::test]
async fn a_link_can_neither_fill_a_form_nor_show_a_notice() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = app(&db, "").start().await;
    seed_dead_letters(&t, 1).await;
    let (cookie, csrf) = sign_in(&t, ADMIN).await;
    let staged = [
        ("description", "Staged by a link"),
        ("events", "message, typing"),
        ("realms", "[9]"),
        (
            "settings",
            r#"{"rules": [{"name": "all", "pattern": ".", "webhook": "https://collector.attacker.invalid/"}]}"#,
        ),
        ("done", "Settings loaded: press Save to apply them"),
        ("replayed", "999"),
        ("discarded", "998"),
    ];
    for path in [
        "/admin/ui/listeners/pinger",
        "/admin/ui/listeners",
        "/admin/ui/dead-letters",
    ] {
        let answer = no_redirects()
            .get(t.url(path))
            .query(&staged)
            .header("cookie", &cookie)
            .send()
            .await
            .expect("page");
        assert_eq!(answer.status(), 200);
        let body = answer.text().await.expect("body");
        for staged_text in [
            "Staged by a link",
            "typing",
            "attacker",
            "press Save",
            "999",
            "998",
            "id=\"flash\"",
        ] {
            assert!(
                !body.contains(staged_text),
                "{path} shows {staged_text}: {body}"
            );
        }
        if path == "/admin/ui/listeners/pinger" {
            assert!(body.contains("value=\"Answers ping\""), "{body}");
        }
    }

    // A form's notice comes from the server, through the session, once.
    let form = [("action", "disable"), ("csrf", csrf.as_str())];
    let (status, location) = post_form(&t, &cookie, "/admin/ui/listeners/pinger", &form).await;
    assert_eq!(
        (status, location.as_str()),
        (303, "/admin/ui/listeners/pinger")
    );
    let shown = page(&t, &cookie, &location).await;
    assert!(
        shown.contains("<p class=\"ok\" id=\"flash\">changed: enabled</p>"),
        "{shown}"
    );
    let again = page(&t, &cookie, &location).await;
    assert!(!again.contains("id=\"flash\""), "shown once: {again}");
    let form = [("status", "dead"), ("all", "1"), ("csrf", csrf.as_str())];
    let (status, location) = post_form(&t, &cookie, "/admin/ui/dead-letters/replay", &form).await;
    assert_eq!(
        (status, location.as_str()),
        (303, "/admin/ui/dead-letters?status=dead")
    );
    let shown = page(&t, &cookie, &location).await;
    assert!(shown.contains("1 event(s) queued again."), "{shown}");
    t.stop().await;
}

#[tokio::test]
async fn the_right_token_signs_in_whatever_others_failed() {
    let db = TestDatabase::new(Backend::Sqlite);
    let t = app(&db, "").start().await;
    // Behind the proxy (loopback, trusted by default) each client counts for itself: six
    // clients with a wrong token each are all answered at once…
    for i in 0..6 {
        let client = format!("203.0.113.{i}");
        assert_eq!(
            try_sign_in(&t, "wrong", Some(&client)).await,
            401,
            "{client}"
        );
    }
    // …and one client's sixth failure is slowed down (429 after a second).
    let attacker = Some("198.51.100.7");
    for attempt in 0..5 {
        assert_eq!(try_sign_in(&t, "wrong", attacker).await, 401, "{attempt}");
    }
    let started = Instant::now();
    assert_eq!(try_sign_in(&t, "wrong", attacker).await, 429);
    assert!(started.elapsed() >= Duration::from_secs(1));
    // The right token signs in, from anywhere, the attacker's address included.
    assert_eq!(try_sign_in(&t, ADMIN, Some("203.0.113.9")).await, 303);
    assert_eq!(try_sign_in(&t, ADMIN, attacker).await, 303);
    assert_eq!(try_sign_in(&t, ADMIN, None).await, 303);
    t.stop().await;

    // With no trusted proxy, the headers are the client's own word: every failure counts for
    // the TCP peer, and the right token still signs in.
    let db = TestDatabase::new(Backend::Sqlite);
    let t = TestApp::new(&db)
        .toml(&format!(
            "[admin]\ntrusted_proxies = []\n[admin.tokens]\nalice = \"{ALICE}\"\n"
        ))
        .start()
        .await;
    for i in 0..6 {
        let client = format!("203.0.113.{i}");
        let expected = if i < 5 { 401 } else { 429 };
        assert_eq!(
            try_sign_in(&t, "wrong", Some(&client)).await,
            expected,
            "{client}"
        );
    }
    assert_eq!(try_sign_in(&t, ALICE, Some("203.0.113.0")).await, 303);
    t.stop().await;
}
